"""On a tiny synthetic problem an attack hurts FedAvg, and the median and the oracle hold; the adaptive
aggregator's label-based rule misses an update attack that its update-based rule catches."""

import pytest
import torch

from fedlight.attacks import ByzantineAttack
from fedlight.faults import RoundFaults
from fedlight.loop import FederatedLoop
from fedlight.models import build_model
from fedlight.strategies import build_strategy
from tests.conftest import make_tiny_federated


@pytest.fixture(scope="module")
def accuracies():
    data = make_tiny_federated(num_clients=5, per_client=16)
    out = {}
    variants = {"fedavg": ("fedavg", {}), "median": ("median", {}), "oracle": ("oracle", {}),
                "adaptive_quality": ("adaptive", {}), "adaptive_similarity": ("adaptive", {"alpha_rule": "similarity"})}
    for label, (strategy, options) in variants.items():
        torch.manual_seed(0)
        attack = ByzantineAttack("ipm", num_clients=5, fraction=0.4, seed=0, ipm_epsilon=2.0)
        loop = FederatedLoop(model=build_model("logreg", data.input_shape, data.num_classes), data=data,
                             strategy=build_strategy(strategy, options), rounds=3, clients_per_round=5, local_epochs=1,
                             batch_size=4, lr=0.5, seed=0, faults=RoundFaults(attack=attack))
        out[label] = loop.run()[-1]["test_accuracy"]
    return out


def test_ipm_hurts_fedavg_but_not_the_median_or_the_oracle(accuracies):
    # 2 of 5 parties send -2 x the honest mean: FedAvg moves by (3 - 4) / 5 of it, backwards; the median (of three
    # honest updates and two attackers below them) and the oracle move forwards
    assert accuracies["oracle"] >= 0.9 and accuracies["median"] >= 0.9
    assert accuracies["fedavg"] <= accuracies["oracle"] - 0.2, accuracies


def test_the_adaptive_label_rule_misses_ipm_and_its_update_rule_catches_it(accuracies):
    # the attackers' data is clean, so the label surprise (quality) trusts them; their update points against the
    # median update, so its cosine (similarity) is floored at 0
    assert accuracies["adaptive_quality"] <= accuracies["oracle"] - 0.2, accuracies
    assert accuracies["adaptive_similarity"] >= 0.9, accuracies
