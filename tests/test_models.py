import pytest
import torch

from fedlight.errors import ConfigError
from fedlight.models import build_model


@pytest.mark.parametrize("name", ["small_cnn", "leaf_cnn"])
@pytest.mark.parametrize("shape", [(1, 28, 28), (1, 8, 8)])
def test_models_forward_and_embed(name, shape):
    model = build_model(name, shape, 62)
    x = torch.rand(3, *shape)
    assert model(x).shape == (3, 62)
    assert torch.allclose(model.head(model.embed(x)), model(x))
    assert not any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in model.modules())


def test_leaf_cnn_size():
    params = sum(p.numel() for p in build_model("leaf_cnn", (1, 28, 28), 62).parameters())
    assert 6_500_000 < params < 6_700_000


def test_unknown_model():
    with pytest.raises(ConfigError, match="unknown model"):
        build_model("resnet", (1, 28, 28), 10)


@pytest.mark.parametrize("num_classes", [2, 3])
@pytest.mark.parametrize("shape", [(13,), (1, 8, 8), (2, 3, 4, 5)])
def test_logreg_is_one_linear_layer_over_the_flattened_input(shape, num_classes):
    model = build_model("logreg", shape, num_classes)
    features = 1
    for d in shape:
        features *= d
    outputs = 1 if num_classes == 2 else num_classes  # binary: one weight vector, as FLamby's Linear(13, 1)
    linears = [m for m in model.modules() if isinstance(m, torch.nn.Linear)]
    assert len(linears) == 1 and (linears[0].in_features, linears[0].out_features) == (features, outputs)
    assert sum(p.numel() for p in model.parameters()) == features * outputs + outputs
    x = torch.rand(4, *shape)
    assert torch.equal(model.embed(x), x.reshape(4, -1))
    z = x.reshape(4, -1) @ linears[0].weight.T + linears[0].bias
    expected = torch.cat([torch.zeros_like(z), z], dim=1) if num_classes == 2 else z
    assert torch.allclose(model(x), expected)
    assert torch.equal(model.head(model.embed(x)), model(x))


def test_binary_logreg_cross_entropy_is_the_logistic_loss():
    model = build_model("logreg", (3,), 2)
    x, y = torch.rand(5, 3), torch.tensor([0, 1, 1, 0, 1])
    z = model.linear(x).squeeze(1)
    bce = torch.nn.functional.binary_cross_entropy_with_logits(z, y.double().to(z.dtype))
    assert torch.allclose(torch.nn.functional.cross_entropy(model(x), y), bce)


@pytest.mark.parametrize("shape", [(13,), (1, 8, 8)])
@pytest.mark.parametrize(("hidden", "sizes"), [(None, [64]), (32, [32]), ([32, 16], [32, 16]), ((), [])])
def test_mlp_hidden_sizes(shape, hidden, sizes):
    spec = "mlp" if hidden is None else {"class_path": "mlp", "init_args": {"hidden": hidden}}
    model = build_model(spec, shape, 3)
    features = 1
    for d in shape:
        features *= d
    linears = [m for m in model.modules() if isinstance(m, torch.nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linears] == list(zip([features, *sizes], [*sizes, 3]))
    assert sum(isinstance(m, torch.nn.ReLU) for m in model.modules()) == len(sizes)
    x = torch.rand(5, *shape)
    assert model(x).shape == (5, 3)
    assert model.embed(x).shape == (5, sizes[-1] if sizes else features)
    assert torch.equal(model.head(model.embed(x)), model(x))


@pytest.mark.parametrize("name", ["small_cnn", "leaf_cnn"])
def test_cnns_refuse_tabular_inputs(name):
    with pytest.raises(ConfigError, match=rf"{name} needs images"):
        build_model(name, (13,), 2)


def test_builtin_construction_draws_the_same_random_numbers_as_before():
    # build_model checks the output on a dummy batch; the weights must be those of the bare constructor
    from fedlight.models import SmallCNN

    torch.manual_seed(3)
    built = build_model("small_cnn", (1, 8, 8), 4)
    next_draw = torch.rand(2)
    torch.manual_seed(3)
    bare = SmallCNN((1, 8, 8), 4)
    assert all(torch.equal(a, b) for a, b in zip(built.state_dict().values(), bare.state_dict().values()))
    assert torch.equal(next_draw, torch.rand(2))
