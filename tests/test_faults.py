"""Injected faults, the non-finite screen, and RoundFaults."""

import torch

from fedlight.attacks import ByzantineAttack
from fedlight.faults import FaultInjector, RoundFaults, screen_non_finite
from fedlight.strategies import ClientFailure
from tests.strategies.helpers import result

GLOBAL = {"w": torch.zeros(2)}


def _results(num=20):
    return [result(i, {"w": torch.full((2,), float(i)), "steps": torch.tensor(1)}) for i in range(num)]


def test_screen_turns_non_finite_results_into_failures():
    rs = _results(3)
    rs[1].params["w"] = torch.tensor([1.0, float("nan")])
    rs[2].params["w"] = torch.tensor([float("inf"), 0.0])
    kept, failed = screen_non_finite(rs, [ClientFailure(9, "RuntimeError: boom")])
    assert [r.client_id for r in kept] == [0]
    assert [f.client_id for f in failed] == [9, 1, 2] and "NaN or Inf in w" in failed[1].error


def test_injected_rates_are_seeded_per_round_and_party():
    injector = FaultInjector(seed=0, client_failure_rate=0.3)
    kept, failed = injector.apply(1, _results(), [])
    again = injector.apply(1, _results(), [])
    assert [f.client_id for f in failed] == [f.client_id for f in again[1]] and 0 < len(failed) < 20
    assert len(kept) + len(failed) == 20 and all("InjectedFailure" in f.error for f in failed)
    assert [f.client_id for f in injector.apply(2, _results(), [])[1]] != [f.client_id for f in failed]
    assert FaultInjector(seed=0).apply(1, _results(), [])[1] == []


def test_nan_parties_become_failures_and_stragglers_miss_the_deadline():
    faults = RoundFaults(FaultInjector(seed=0, client_nan_rate=1.0))
    kept, failed = faults.process(1, GLOBAL, _results(4), [])
    assert kept == [] and len(failed) == 4 and all(f.error.startswith("NonFiniteUpdate") for f in failed)
    assert faults.failure_table()["client"] == [0, 1, 2, 3] and faults.failure_table()["round"] == [1] * 4
    # every party late; exponential delays with mean 60 s: a 1e9 s deadline keeps them all, 1e-9 s none
    patient = FaultInjector(seed=0, straggler_rate=1.0, straggler_delay=60.0, round_deadline=1e9)
    kept, failed = patient.apply(1, _results(), [])
    assert len(kept) == 20 and all(r.extras["simulated_delay_s"] > 0 for r in kept)
    kept, failed = FaultInjector(seed=0, straggler_rate=1.0, round_deadline=1e-9).apply(1, _results(), [])
    assert kept == [] and all("deadline" in f.error for f in failed)
    # a deadline of the mean delay drops about e^-1 of them, the same ones each time
    _, some = FaultInjector(seed=0, straggler_rate=1.0, straggler_delay=60.0, round_deadline=60.0).apply(1, _results(200), [])
    assert 50 < len(some) < 100


def test_round_faults_screen_an_attack_that_overflows():
    attack = ByzantineAttack("scale", num_clients=4, fraction=0.5, seed=0, scale=float("inf"))
    kept, failed = RoundFaults(attack=attack).process(1, GLOBAL, _results(4), [])
    # party 0's update is 0 (inf * 0 is NaN too): every attacker is screened out
    assert sorted(f.client_id for f in failed) == attack.byzantine
    assert all(not r.extras.get("byzantine") for r in kept)


def test_bad_fault_and_attack_flags_are_one_line(capsys):
    from fedlight.cli import main

    cases = [
        (["--attack", "flip", "--byzantine-fraction", "0.2"], "unknown --attack 'flip'"),
        (["--attack", "alie"], "--attack alie needs a --byzantine-fraction above 0"),
        (["--byzantine-fraction", "0.2"], "--byzantine-fraction needs an --attack"),
        (["--straggler-rate", "0.1"], "--straggler-rate needs --round-deadline"),
        (["--client-nan-rate", "1.5"], "--client-nan-rate must be in [0, 1], got 1.5"),
        (["--strategy", "bulyan", "--clients-per-round", "5"], "bulyan needs --clients-per-round >= 4 * --byzantine-f + 3 = 7"),
        (["--pre-aggregation", "mix"], "unknown --pre-aggregation 'mix'"),
    ]
    for flags, message in cases:
        code = main(["run", "--dataset", "digits", *flags])
        err = capsys.readouterr().err
        assert code == 2 and err.count("\n") == 1 and message in err, (flags, err)


def _loop(data, strategy, faults, rounds=3, clients_per_round=4, model="logreg", lr=0.5):
    from fedlight.loop import FederatedLoop
    from fedlight.models import build_model
    from fedlight.strategies import build_strategy

    torch.manual_seed(0)
    return FederatedLoop(model=build_model(model, data.input_shape, data.num_classes), data=data,
                         strategy=build_strategy(strategy), rounds=rounds, clients_per_round=clients_per_round,
                         local_epochs=1, batch_size=4, lr=lr, seed=0, faults=faults)


def test_a_nan_party_becomes_a_failure_and_does_not_poison_fedavg():
    from tests.conftest import make_tiny_federated

    data = make_tiny_federated(num_clients=4)
    faults = RoundFaults(FaultInjector(seed=0, client_nan_rate=0.4))
    loop = _loop(data, "fedavg", faults)
    history = loop.run()
    assert sum(row["clients_failed"] for row in history) > 0 and all(row["clients_ok"] > 0 for row in history)
    assert all(bool(torch.isfinite(v).all()) for v in loop.global_params().values() if torch.is_floating_point(v))
    assert all(row["reason"].startswith("NonFiniteUpdate") for row in faults.failure_log)
    # without the screen's failures the run is the same as one over the parties that stayed finite
    assert len(faults.failure_log) == sum(row["clients_failed"] for row in history)


def test_build_round_faults_from_config():
    import pytest

    from fedlight.config import FaultsConfig
    from fedlight.errors import ConfigError
    from fedlight.faults import build_round_faults

    plain = build_round_faults(FaultsConfig(), num_clients=10, seed=0)
    assert plain.injector is None and plain.attack is None  # the screen alone
    built = build_round_faults(FaultsConfig(attack="ipm", byzantine_fraction=0.2, ipm_epsilon=2.0, client_nan_rate=0.1),
                               num_clients=10, seed=3)
    assert built.attack.ipm_epsilon == 2.0 and len(built.attack.byzantine) == 2 and built.injector.client_nan_rate == 0.1
    with pytest.raises(ConfigError, match="makes no Byzantine party"):
        build_round_faults(FaultsConfig(attack="alie", byzantine_fraction=0.01), num_clients=10, seed=0)
    built.failure_log.append({"round": 1, "client": 2, "reason": "x"})
    again = build_round_faults(FaultsConfig(), num_clients=10, seed=0)
    again.load_state_dict(built.state_dict())
    assert again.failure_log == built.failure_log


def test_all_finite_catches_nan_and_inf_and_keeps_finite_values_whose_sum_overflows():
    from fedlight.faults import all_finite

    big = torch.full((4,), torch.finfo(torch.float32).max)
    assert not bool(torch.isfinite(big.sum()))  # the sum overflows, the entries are finite
    assert all_finite(big) and all_finite(torch.zeros(0)) and all_finite(torch.randn(3, 3))
    for bad in (float("nan"), float("inf"), -float("inf")):
        x = torch.randn(5)
        x[2] = bad
        assert not all_finite(x)
    both = torch.tensor([float("inf"), -float("inf")])  # a NaN sum
    assert not all_finite(both)
