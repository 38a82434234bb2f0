"""FLamby's Fed-Heart-Disease benchmark: local, pooled and every registered strategy on the four hospitals.

The UCI Heart Disease data of Cleveland, Hungary, Switzerland and Long Beach
VA, one party each (``--dataset heart_disease``), with FLamby's protocol
(Terrail et al., NeurIPS 2022 Datasets and Benchmarks): FLamby's
preprocessing and split, batch 4, 100 local updates a round, 15 rounds,
every party every round, FLamby's learning rates (FedAvg, FedProx and
SCAFFOLD local SGD lr 0.001; FedAdam local lr 0.01, server lr 0.01, betas
0.9/0.999, tau 1e-8; strategies FLamby has no setting for use FedAvg's).
Local training (each hospital alone) and pooled training (all training rows
together, z-scored with the pooled statistics) use Adam, lr 0.001, 50
epochs, batch 4, as FLamby's baselines do.

The metric is FLamby's: the mean over the four hospitals of the accuracy on
each hospital's own test set; the pooled test accuracy (254 rows) is
reported beside it. ``--model mlp`` and ``--mode impute`` (every row kept,
missing values imputed, so the hospitals differ in missingness) repeat the
benchmark outside FLamby's setting; the adaptive aggregator's trust weights
are reported per hospital.

    python pipelines/heart_disease.py --workers 2
    python pipelines/heart_disease.py --model mlp --out pipelines/results/heart_disease_mlp --workers 2
    python pipelines/heart_disease.py --mode impute --out pipelines/results/heart_disease_impute --workers 2
    python pipelines/heart_disease.py --quick
"""

from __future__ import annotations

import argparse
import datetime
import json
import sys
from pathlib import Path
from typing import Any

from common import REPO, Job, guard, log_summary_run, markdown_table, mean_std, run_grid, write_table

from fedlight.config import STRATEGY_NAMES as STRATEGIES  # the built-ins, without importing torch
from fedlight.errors import FedlightError

HOSPITALS = ("cleveland", "hungarian", "switzerland", "va")
# FLamby's published results (mean of the four hospitals' test accuracies over seeds 42-46, and pooled test accuracy).
FLAMBY = {
    "pooled": (0.7353, 0.7953), "local cleveland": (0.7221, 0.7843), "local hungarian": (0.6287, 0.7268),
    "local switzerland": (0.5670, 0.4827), "local va": (0.6366, 0.6110),
    "fedavg": (0.6850, 0.7480), "fedprox": (0.6850, 0.7480), "scaffold": (0.6840, 0.7480), "fedadam": (0.7255, 0.7787),
    "cyclic": (0.7180, 0.7850), "fedyogi": (0.7314, 0.7787), "fedadagrad": (0.7314, 0.7787),
}
# FLamby's flamby/config_heart_disease.json; other strategies take FedAvg's local learning rate.
STRATEGY_SETTINGS: dict[str, dict[str, Any]] = {
    "fedavg": {"lr": 0.001},
    "fedprox": {"lr": 0.001, "options": {"prox_mu": 0.01}},
    "scaffold": {"lr": 0.001, "options": {"server_lr": 1.0}},
    "fedadam": {"lr": 0.01, "options": {"server_lr": 0.01, "server_beta1": 0.9, "server_beta2": 0.999, "server_tau": 1e-8}},
}


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", default=str(REPO.parent / "shared" / "data" / "heart_disease"))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    parser.add_argument("--strategies", nargs="+", default=sorted(STRATEGIES))
    parser.add_argument("--model", default="logreg", help="logreg (FLamby's baseline) or mlp")
    parser.add_argument("--mode", default="flamby", choices=("flamby", "impute"), help="--heart-disease-mode")
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--local-steps", type=int, default=100)
    parser.add_argument("--baseline-epochs", type=int, default=50)
    parser.add_argument("--no-baselines", action="store_true", help="skip local and pooled training")
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--experiment", default="heart-disease")
    parser.add_argument("--tracking-uri", default=None)
    parser.add_argument("--out", default=str(REPO / "pipelines" / "results" / "heart_disease"))
    parser.add_argument("--quick", action="store_true", help="2 rounds, 5 local steps, 2 baseline epochs, 1 seed")
    args = parser.parse_args()
    if args.quick:
        args.seeds, args.rounds, args.local_steps, args.baseline_epochs = args.seeds[:1], 2, 5, 2
    if not Path(args.data_dir).is_dir():
        raise FedlightError(f"data directory not found: {args.data_dir}")
    unknown = sorted(set(args.strategies) - set(STRATEGIES))
    if unknown:
        raise FedlightError(f"unknown strategies {unknown}; choose from {', '.join(STRATEGIES)}")
    return args


def build_jobs(args: argparse.Namespace) -> list[Job]:
    jobs = []
    for strategy in args.strategies:
        settings = STRATEGY_SETTINGS.get(strategy, STRATEGY_SETTINGS["fedavg"])
        for seed in args.seeds:
            sections = {
                "data": {"dataset": "heart_disease", "data_dir": args.data_dir, "heart_disease_mode": args.mode,
                         "val_fraction": 0.0},
                "training": {"model": args.model, "rounds": args.rounds, "clients_per_round": len(HOSPITALS),
                             "local_steps": args.local_steps, "batch_size": 4, "lr": settings["lr"], "seed": seed},
                "strategy": {"name": strategy, **settings.get("options", {})},
                "tracking": {"experiment": args.experiment, "tracking_uri": args.tracking_uri, "registered_model": None,
                             "run_name": f"{strategy}-{args.model}-{args.mode}-s{seed}"},
            }
            labels = (("strategy", strategy), ("model", args.model), ("mode", args.mode), ("seed", seed))
            jobs.append(Job(labels=labels, sections=sections))
    return jobs


def baseline(args: argparse.Namespace, *, hospital: str | None, seed: int) -> dict[str, Any]:
    """Adam on one hospital's training rows (or all of them: ``hospital`` None), evaluated on every hospital's test set."""
    import mlflow
    import torch

    from fedlight.client import ClientModule, fit_client, make_loader
    from fedlight.config import build_config
    from fedlight.experiment import load_federated_data
    from fedlight.models import build_model
    from fedlight.tracking import resolve_tracking_uri

    def hospitals(scaling: str):
        return load_federated_data(build_config({
            "data": {"dataset": "heart_disease", "data_dir": args.data_dir, "heart_disease_mode": args.mode,
                     "val_fraction": 0.0, "scaling": scaling},
            "training": {"seed": seed},
        }))

    # FLamby's pooled training z-scores with the pooled training statistics, which the federated scaling computes
    data = hospitals("federated" if hospital is None else "party")
    clients = [c for c in data.clients if hospital is None or c.name == hospital]
    x, y = torch.cat([c.train_x for c in clients]), torch.cat([c.train_y for c in clients])
    torch.manual_seed(seed)
    model = build_model(args.model, data.input_shape, data.num_classes)
    module = ClientModule(model, lr=0.001, optimizer=torch.optim.Adam(model.parameters(), lr=0.001))
    fit_client(module, make_loader(x, y, batch_size=4, seed=seed), epochs=args.baseline_epochs)
    final = _evaluate(model, data)
    if hospital is None:
        # FLamby scores its pooled model on each hospital's test set as that hospital's loader gives it, z-scored
        # with the hospital's own statistics rather than the pooled ones the model was trained on
        final["flamby_evaluation_party_mean_accuracy"] = _evaluate(model, hospitals("party"))["party_mean_accuracy"]
    mlflow.set_tracking_uri(resolve_tracking_uri(args.tracking_uri))
    mlflow.set_experiment(args.experiment)
    name = f"{'pooled' if hospital is None else 'local-' + hospital}-{args.model}-{args.mode}-s{seed}"
    with mlflow.start_run(run_name=name, tags={"baseline": "pooled" if hospital is None else "local", "dataset": "heart_disease"}):
        mlflow.log_params({"hospital": hospital or "all", "model": args.model, "mode": args.mode, "seed": seed,
                           "epochs": args.baseline_epochs, "optimizer": "adam", "lr": 0.001, "batch_size": 4})
        mlflow.log_metrics({f"final_{k}": v for k, v in final.items()})
    return final


def _evaluate(model, data) -> dict[str, Any]:
    from fedlight.metrics import classification_metrics, predict_logits

    logits = predict_logits(model, data.test_x)
    final = classification_metrics(logits, data.test_y, data.num_classes)
    for cid, client in enumerate(data.clients):
        rows = data.test_client == cid
        final[f"accuracy_party/{client.name}"] = float((logits[rows].argmax(1) == data.test_y[rows]).double().mean())
    final["party_mean_accuracy"] = sum(final[f"accuracy_party/{h}"] for h in HOSPITALS) / len(HOSPITALS)
    return final


def run_baselines(args: argparse.Namespace, path: Path) -> dict[str, list[dict[str, Any]]]:
    """Local and pooled results by method name; finished ones are kept in ``path`` (JSONL) and not rerun."""
    done = {}
    if path.exists():
        for line in path.read_text().splitlines():
            row = json.loads(line)
            done[row["key"]] = row["final"]
    results: dict[str, list[dict[str, Any]]] = {}
    for hospital in (None, *HOSPITALS):
        method = "pooled" if hospital is None else f"local {hospital}"
        for seed in args.seeds:
            key = json.dumps({"method": method, "model": args.model, "mode": args.mode, "seed": seed,
                              "epochs": args.baseline_epochs, "scaling": "federated" if hospital is None else "party",
                              "flamby_evaluation": hospital is None},
                             sort_keys=True)
            if key not in done:
                done[key] = baseline(args, hospital=hospital, seed=seed)
                with path.open("a") as handle:
                    handle.write(json.dumps({"key": key, "final": done[key]}) + "\n")
                print(f"  {method} seed {seed}: mean of hospitals {done[key]['party_mean_accuracy']:.4f}", flush=True)
            results.setdefault(method, []).append(done[key])
    return results


def summarise(args: argparse.Namespace, federated: dict[str, dict], baselines: dict[str, list[dict]]) -> tuple[str, list[dict]]:
    by_method: dict[str, list[dict]] = dict(baselines)
    alphas: dict[str, list[dict[int, float]]] = {}
    for row in federated.values():
        by_method.setdefault(row["labels"]["strategy"], []).append(row["final"])
        alphas.setdefault(row["labels"]["strategy"], []).append({int(k): v for k, v in (row.get("final_alphas") or {}).items()})
    flamby_setting = args.model == "logreg" and args.mode == "flamby"
    header = ["method", "mean of 4 hospitals", "pooled test", *HOSPITALS]
    if flamby_setting:
        header[3:3] = ["FLamby mean", "FLamby pooled"]
    rows, csv_rows = [], []
    for method, finals in by_method.items():
        mean, sd = mean_std(f["party_mean_accuracy"] for f in finals)
        pooled, pooled_sd = mean_std(f["accuracy"] for f in finals)
        per_hospital = [mean_std(f[f"accuracy_party/{h}"] for f in finals) for h in HOSPITALS]
        row = [method, f"{mean:.4f} ± {sd:.4f}", f"{pooled:.4f} ± {pooled_sd:.4f}", *(f"{m:.3f}" for m, _ in per_hospital)]
        if flamby_setting:
            reference = FLAMBY.get(method)
            row[3:3] = [f"{reference[0]:.4f}", f"{reference[1]:.4f}"] if reference else ["-", "-"]
        rows.append(row)
        csv_rows.append({"method": method, "model": args.model, "mode": args.mode, "seeds": len(finals),
                         "mean_of_hospitals": mean, "mean_of_hospitals_sd": sd, "pooled_test": pooled,
                         **{f"accuracy_{h}": m for h, (m, _) in zip(HOSPITALS, per_hospital)}})
    if "pooled" in baselines:
        flamby_eval = mean_std(f["flamby_evaluation_party_mean_accuracy"] for f in baselines["pooled"])
        row = ["pooled, scored as FLamby does (hospital-scaled test sets)", f"{flamby_eval[0]:.4f} ± {flamby_eval[1]:.4f}",
               "-", *("-" for _ in HOSPITALS)]
        if flamby_setting:
            row[3:3] = [f"{FLAMBY['pooled'][0]:.4f}", "-"]
        rows.insert(1, row)
    text = (
        f"# Fed-Heart-Disease ({args.model}, {args.mode} preprocessing)\n\n"
        f"Command: `python pipelines/heart_disease.py {' '.join(sys.argv[1:])}`  \n"
        f"Date: {datetime.date.today().isoformat()}; seeds {list(args.seeds)}; {args.rounds} rounds of "
        f"{args.local_steps} local steps, batch 4, all four hospitals every round; local and pooled: Adam lr 0.001, "
        f"{args.baseline_epochs} epochs. Accuracies: mean ± sd over seeds; per hospital: mean over seeds.\n\n"
        + markdown_table(header, rows)
    )
    if "adaptive" in alphas:
        text += "\nAdaptive aggregator: each hospital's trust weight alpha after the last round (mean over seeds).\n\n"
        runs = alphas["adaptive"]
        values = [sum(run.get(cid, float("nan")) for run in runs) / len(runs) for cid in range(len(HOSPITALS))]
        text += markdown_table(list(HOSPITALS), [[f"{v:.3f}" for v in values]])
    return text, csv_rows


def main() -> int:
    args = parse_args()
    out = Path(args.out)
    federated = run_grid(build_jobs(args), results_path=out / "runs.jsonl", workers=args.workers)
    baselines = {} if args.no_baselines else run_baselines(args, out / "baselines.jsonl")
    text, csv_rows = summarise(args, federated, baselines)
    files = write_table(out, text, csv_rows)
    log_summary_run(experiment=args.experiment, tracking_uri=args.tracking_uri, run_name=f"{out.name}-summary",
                    files=files, params={"command": " ".join(sys.argv[1:]) or "(defaults)"})
    print(text)
    print(f"wrote {out / 'table.md'} and {out / 'table.csv'}")
    return 0


if __name__ == "__main__":
    sys.exit(guard(main))
