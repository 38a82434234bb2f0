"""noisy_parties: adaptive settings given on the command line reach the adaptive runs and their result keys."""

import noisy_parties


def _args(*argv):
    return noisy_parties.build_parser().parse_args(["--seeds", "0", *argv])


def test_adaptive_options_reach_only_the_adaptive_runs():
    jobs = noisy_parties.build_jobs(_args("--alpha-momentum", "1.0", "--alpha-temperature", "0.25"))
    adaptive = [j for j in jobs if dict(j.labels)["strategy"] == "adaptive"]
    others = [j for j in jobs if dict(j.labels)["strategy"] != "adaptive"]
    assert len(adaptive) == 3 and len(others) == 5
    for job in adaptive:
        assert job.sections["strategy"]["alpha_momentum"] == 1.0 and job.sections["strategy"]["alpha_temperature"] == 0.25
        assert ("alpha_momentum", 1.0) in job.labels and ("alpha_temperature", 0.25) in job.labels
    for job in others:
        assert not any(k.startswith("alpha_") for k in job.sections["strategy"])
        assert not any(k.startswith("alpha_") for k, _ in job.labels)


def test_run_keys_carry_local_momentum_unless_zero():
    jobs = noisy_parties.build_jobs(_args())
    assert all({k for k, _ in j.labels} == {"mode", "strategy", "seed", "momentum"} for j in jobs)
    assert all(j.sections["training"]["momentum"] == 0.5 and j.sections["training"]["eval_every"] == 1 for j in jobs)
    # runs with plain SGD keep the key they were recorded under before momentum became an option
    plain = noisy_parties.build_jobs(_args("--momentum", "0"))
    assert all({k for k, _ in j.labels} == {"mode", "strategy", "seed"} for j in plain)
    assert all(j.sections["training"]["momentum"] == 0.0 for j in plain)


def test_late_mean_needs_every_one_of_the_last_rounds():
    history = [{"round": r, "test_accuracy": r / 100} for r in range(1, 21)]
    assert abs(noisy_parties.late_mean(history, 10) - 0.155) < 1e-12  # rounds 11-20
    assert noisy_parties.late_mean(history[:-1] + [{"round": 20}], 10) is None  # round 20 not evaluated
    assert noisy_parties.late_mean(history[:5], 10) is None  # fewer rounds than asked


def _fake_results(jobs, accuracy_by_round):
    """A pipeline results dict whose runs evaluated every round of 12, at accuracy_by_round(labels, round)."""
    results = {}
    for job in jobs:
        labels = dict(job.labels)
        history = [{"round": r, "test_accuracy": accuracy_by_round(labels, r)} for r in range(1, 13)]
        results[job.key] = {"labels": labels, "history": history, "final": {"accuracy": history[-1]["test_accuracy"]}}
    return results


def test_summary_reports_the_final_round_and_the_late_mean():
    args = _args()
    level = {"fedavg": 0.70, "adaptive": 0.75, "oracle": 0.80}

    def accuracy(labels, r):
        if labels["mode"] == "clean":
            return 0.80
        # the last round lifts FedAvg by 6 points; rounds 1-2 fall outside the late mean
        return level[labels["strategy"]] + (0.06 if labels["strategy"] == "fedavg" and r == 12 else 0.0) - (0.5 if r <= 2 else 0.0)

    text, csv_rows = noisy_parties.summarise(_fake_results(noisy_parties.build_jobs(args), accuracy), args)
    final_part, late_part = text.split("Mean test accuracy over the last 10 rounds")
    # final round: fedavg 0.76, adaptive 0.75, oracle 0.80 -> adaptive closes -25% of the gap
    assert "| adaptive: share of the FedAvg→oracle gap closed | – | -25% | -25% |" in final_part
    # rounds 3-12: fedavg 0.706, adaptive 0.75, oracle 0.80 -> 44 / 94 of the gap
    assert "| fedavg | 0.8000 ± 0.0000 | 0.7060 ± 0.0000 | 0.7060 ± 0.0000 |" in late_part
    assert "| adaptive: share of the FedAvg→oracle gap closed | – | 47% | 47% |" in late_part
    late_rows = [r for r in csv_rows if r["measure"] == "mean_last_10"]
    assert len(late_rows) == 9 and {r["measure"] for r in csv_rows} == {"final", "mean_last_10"}


def test_summary_without_every_round_evaluated_has_no_late_table():
    args = _args()
    results = _fake_results(noisy_parties.build_jobs(args), lambda labels, r: 0.7)
    for row in results.values():
        row["history"] = row["history"][::2]
    text, csv_rows = noisy_parties.summarise(results, args)
    assert "Mean test accuracy" not in text and {r["measure"] for r in csv_rows} == {"final"}
