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
