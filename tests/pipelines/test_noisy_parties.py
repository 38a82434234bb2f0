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


def test_default_adaptive_runs_keep_the_plain_key():
    jobs = noisy_parties.build_jobs(_args())
    assert all({k for k, _ in j.labels} == {"mode", "strategy", "seed"} for j in jobs)
