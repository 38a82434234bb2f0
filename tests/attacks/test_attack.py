"""ByzantineAttack: the seeded Byzantine set, what the attackers send, label flipping."""

import pytest
import torch

from fedlight.attacks import ATTACKS, ByzantineAttack
from tests.conftest import make_tiny_federated
from tests.strategies.helpers import result

GLOBAL = {"w": torch.tensor([1.0, 1.0]), "steps": torch.tensor(3)}


def _results(num=10):
    # party i's update is (i, -i); non-float entries as the global model's
    return [result(i, {"w": GLOBAL["w"] + torch.tensor([float(i), -float(i)]), "steps": torch.tensor(3)}) for i in range(num)]


def test_attack_names_match_config():
    from fedlight import config

    assert config.ATTACK_NAMES == ("none", *ATTACKS)


def test_the_byzantine_set_is_seeded_and_sized():
    a = ByzantineAttack("sign_flip", num_clients=300, fraction=0.2, seed=0)
    assert len(a.byzantine) == 60 and a.byzantine == sorted(set(a.byzantine))
    assert ByzantineAttack("ipm", num_clients=300, fraction=0.2, seed=0).byzantine == a.byzantine
    assert ByzantineAttack("sign_flip", num_clients=300, fraction=0.2, seed=1).byzantine != a.byzantine
    assert a.describe()["byzantine_clients"] == a.byzantine
    with pytest.raises(ValueError):
        ByzantineAttack("flip", num_clients=10, fraction=0.2, seed=0)


@pytest.mark.parametrize("attack, expected", [
    # honest parties' updates (i, -i) over the honest i; the attackers' own are theirs
    ("sign_flip", lambda honest, own: -honest.mean(0)),
    ("ipm", lambda honest, own: -0.5 * honest.mean(0)),
    ("scale", lambda honest, own: 10 * own),
])
def test_attackers_replace_their_updates(attack, expected):
    a = ByzantineAttack(attack, num_clients=10, fraction=0.3, seed=0)
    out = a.apply(_results(), GLOBAL, server_round=1)
    bad = set(a.byzantine)
    honest = torch.stack([torch.tensor([float(i), -float(i)]) for i in range(10) if i not in bad])
    for i, r in enumerate(out):
        if i in bad:
            own = torch.tensor([float(i), -float(i)])
            assert r.extras["byzantine"] is True
            assert torch.allclose(r.params["w"] - GLOBAL["w"], expected(honest, own)), (attack, i)
        else:
            assert "byzantine" not in r.extras and torch.equal(r.params["w"], GLOBAL["w"] + torch.tensor([float(i), -float(i)]))
        assert int(r.params["steps"]) == 3


def test_alie_uses_the_papers_z_and_gaussian_is_seeded():
    a = ByzantineAttack("alie", num_clients=10, fraction=0.2, seed=0)
    out = a.apply(_results(), GLOBAL, server_round=1)
    honest = torch.tensor([[float(i), -float(i)] for i in range(10) if i not in a.byzantine])
    # n = 10 sampled, f = 2 of them attack: z = Phi^-1(0.6)
    expected = honest.mean(0) + 0.2533471 * honest.std(0)
    assert torch.allclose(out[a.byzantine[0]].params["w"] - GLOBAL["w"], expected, atol=1e-5)
    g = ByzantineAttack("gaussian", num_clients=10, fraction=0.2, seed=0)
    first, again = g.apply(_results(), GLOBAL, 1), g.apply(_results(), GLOBAL, 1)
    later = g.apply(_results(), GLOBAL, 2)
    c = g.byzantine[0]
    assert torch.equal(first[c].params["w"], again[c].params["w"]) and not torch.equal(first[c].params["w"], later[c].params["w"])


def test_a_round_without_attackers_is_unchanged():
    a = ByzantineAttack("sign_flip", num_clients=10, fraction=0.2, seed=0)
    honest_only = [r for r in _results() if r.client_id not in a.byzantine]
    assert a.apply(honest_only, GLOBAL, 1) is honest_only


def test_label_flip_poisons_only_the_byzantine_parties_data():
    data = make_tiny_federated(num_clients=5)
    before = [c.train_y.clone() for c in data.clients]
    a = ByzantineAttack("label_flip", num_clients=5, fraction=0.4, seed=0)
    a.poison_data(data)
    for cid, client in enumerate(data.clients):
        if cid in a.byzantine:
            assert torch.equal(client.train_y, (before[cid] + 1) % data.num_classes)
        else:
            assert torch.equal(client.train_y, before[cid])
    # the updates are sent as trained, marked
    out = a.apply(_results(5), GLOBAL, 1)
    assert all(out[c].extras["byzantine"] and torch.equal(out[c].params["w"], _results(5)[c].params["w"]) for c in a.byzantine)
