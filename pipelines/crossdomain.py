"""Cross-domain fusion: FEMNIST writers' digits and scikit-learn's digits as parties of one federation.

The two sources share the label space 0-9 but differ in resolution (28x28 vs
8x8 upsampled), style and size (294 FEMNIST writers with about 90 digits
each; 30 scikit-learn parties with about 43). Compared: each domain's
parties trained alone, FedAvg over all parties, and the adaptive
aggregator; test accuracy on each domain's own test data.

    python pipelines/crossdomain.py --data-dir ../shared/data/femnist
    python pipelines/crossdomain.py --data-dir ../shared/data/femnist --quick
"""

from __future__ import annotations

import datetime
import sys
from pathlib import Path

from common import (
    Job,
    finish,
    guard,
    markdown_table,
    mean_std,
    parse_pipeline_args,
    pipeline_parser,
    run_grid,
    run_sections,
)

SETUPS = {
    "femnist parties alone": ("fedavg", "femnist"),
    "digits parties alone": ("fedavg", "digits"),
    "fedavg, all parties": ("fedavg", None),
    "adaptive, all parties": ("adaptive", None),
}


def build_jobs(args) -> list[Job]:
    jobs = []
    for setup, (strategy, domain) in SETUPS.items():
        for seed in args.seeds:
            data = {"dataset": "crossdomain", "domain": domain}
            if domain == "digits":
                data["num_clients"] = None  # the 30 scikit-learn parties, whatever --num-clients says
            sections = run_sections(args, data=data, strategy=strategy, seed=seed,
                                    run_name=f"{setup.replace(', ', '-').replace(' ', '-')}-s{seed}")
            jobs.append(Job(labels=(("setup", setup), ("seed", seed)), sections=sections))
    return jobs


def main() -> int:
    args = parse_pipeline_args(pipeline_parser(__doc__, name="crossdomain", seeds=(0,)))
    out = Path(args.out)
    results = run_grid(build_jobs(args), results_path=out / "runs.jsonl", workers=args.workers)
    grouped: dict[str, list[dict]] = {}
    for row in results.values():
        grouped.setdefault(row["labels"]["setup"], []).append(row["final"])
    rows, csv_rows = [], []
    for setup in SETUPS:
        finals = grouped[setup]
        stats = {k: mean_std(f[k] for f in finals) for k in ("accuracy_femnist", "accuracy_digits", "accuracy")}
        rows.append([setup, *[f"{m:.4f} ± {s:.4f}" for m, s in stats.values()]])
        csv_rows.append({"setup": setup, **{f"{k}_mean": m for k, (m, _) in stats.items()},
                         **{f"{k}_std": s for k, (_, s) in stats.items()}})
    text = (
        "# Cross-domain fusion: FEMNIST digits + scikit-learn digits\n\n"
        f"Command: `python pipelines/crossdomain.py {' '.join(sys.argv[1:])}`  \n"
        f"Date: {datetime.date.today().isoformat()}; {args.rounds} rounds, {args.clients_per_round} parties per round, "
        f"small CNN, lr 0.1, batch 10; seeds {args.seeds}. Accuracy on each domain's test data "
        "(FEMNIST: 3,370 digit images of its writers; scikit-learn: 359 held-out digits), and pooled.\n\n"
        + markdown_table(["setup", "FEMNIST-digits test", "sklearn-digits test", "pooled test"], rows)
    )
    return finish(args, out, text, csv_rows)


if __name__ == "__main__":
    sys.exit(guard(main))
