"""The ``fedlight`` command line.

User errors (bad flags, config, data) print one line ``fedlight: error: ...``
to stderr and exit with status 2, without a traceback.

This module imports nothing heavy: every check that needs no data, torch or
MLflow (ranges, built-in names, paths, argument forms) runs before a command
imports its implementation (:mod:`fedlight.experiment`, :mod:`fedlight.sweep`,
:mod:`fedlight.export`), so bad input is refused, and ``--help`` answers, at
once. ``tests/test_cli_startup.py`` checks that torch, Lightning, MLflow and
Opacus stay unimported.
"""

from __future__ import annotations

import argparse
import re
import sys
import warnings
from collections.abc import Sequence
from pathlib import Path

from fedlight.config import CLI_FIELDS, LABEL_NOISE_MODES, PARTITIONS, build_config, load_yaml, precheck
from fedlight.errors import ConfigError, DataError, FedlightError
from fedlight.interrupts import Terminated, terminate_as_interrupt

EXIT_USAGE = 2


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line instead of usage + error
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message}\n")


# flag -> (type, help)
_FLAG_TYPES: dict[str, tuple[type, str]] = {
    "dataset": (str, "data source: digits (embedded), femnist, crossdomain (FEMNIST digits + digits), "
                     "heart_disease (four hospitals), table (CSV/Parquet), folder (ImageFolder per party) "
                     "or python (--data-factory)"),
    "data_dir": (str, "the dataset's directory, or the table's file"),
    "partition": (str, f"one of {', '.join(PARTITIONS)} (default: natural where the data has parties, else dirichlet)"),
    "num_clients": (int, "number of clients (natural: a seeded subset of writers)"),
    "dirichlet_beta": (float, "Dirichlet concentration for label skew"),
    "shards_per_client": (int, "classes per client for the shards partition"),
    "volume": (float, "share of every client's data to keep, in (0, 1]"),
    "val_fraction": (float, "share of each client's data held out for local validation"),
    "noisy_client_fraction": (float, "share of clients whose data is corrupted"),
    "label_noise": (float, "probability that a noisy client's label is corrupted"),
    "label_noise_mode": (str, f"one of {', '.join(LABEL_NOISE_MODES)}"),
    "image_noise_std": (float, "std of Gaussian pixel noise on noisy clients"),
    "domain": (str, "crossdomain dataset: keep only this domain's parties (femnist or digits)"),
    "party_column": (str, "table: the column naming each row's party"),
    "label_column": (str, "table: the label column"),
    "split_column": (str, "table: a column of train/test (default: a seeded stratified split per party)"),
    "feature_columns": (str, "table: comma-separated input columns (default: every other column)"),
    "categorical_columns": (str, "table: comma-separated columns to one-hot encode (default: the non-numeric ones)"),
    "scaling": (str, "table: party (each party its own statistics), federated (a federated mean and variance) or none"),
    "test_fraction": (float, "table, folder, python: share of each party's rows held out when the data has no split"),
    "data_factory": (str, "python dataset: module:function returning the parties' train/test datasets"),
    "heart_disease_mode": (str, "heart_disease: flamby (FLamby's preprocessing) or impute (every row, missing imputed)"),
    "model": (str, "small_cnn, leaf_cnn, logreg, mlp, or an import path module:Class (nn.Module or LightningModule)"),
    "rounds": (int, "federated rounds"),
    "clients_per_round": (int, "clients sampled each round"),
    "local_epochs": (int, "local epochs per round"),
    "local_steps": (int, "local optimizer steps per round (instead of --local-epochs)"),
    "batch_size": (int, "local batch size"),
    "lr": (float, "local learning rate"),
    "momentum": (float, "local SGD momentum"),
    "eval_every": (int, "evaluate the global model every N rounds"),
    "seed": (int, "random seed (partition, sampling, initialisation)"),
    "strategy": (str, "aggregation strategy"),
    "prox_mu": (float, "FedProx proximal weight mu"),
    "server_lr": (float, "server learning rate (SCAFFOLD, FedAdam)"),
    "server_beta1": (float, "FedAdam beta1"),
    "server_beta2": (float, "FedAdam beta2"),
    "server_tau": (float, "FedAdam adaptivity tau"),
    "moon_mu": (float, "MOON contrastive weight mu"),
    "moon_tau": (float, "MOON temperature tau"),
    "alpha_rule": (str, "adaptive aggregator's score rule"),
    "alpha_momentum": (float, "adaptive aggregator's EMA momentum m"),
    "alpha_min": (float, "lower clip of alpha"),
    "alpha_max": (float, "upper clip of alpha"),
    "alpha_temperature": (float, "temperature of the loss-based alpha rules"),
    "alpha_tolerance": (float, "excess not penalised: of CE - H (quality), of the larger shortfall (label_fit) or of the loss ratio to the median above 1 (global_loss)"),
    "byzantine_f": (int, "Byzantine parties per round that the robust rules tolerate"),
    "pre_aggregation": (str, "robust rules: none, nnm (nearest-neighbour mixing) or bucketing"),
    "bucket_size": (int, "bucketing: parties per bucket"),
    "clip_tau": (float, "centered_clipping: clipping radius (default: the median of the n - f smallest distances, capped by --clip-tau-growth)"),
    "clip_iterations": (int, "centered_clipping: clipping iterations per round"),
    "clip_tau_growth": (float, "centered_clipping: the most the default radius grows from one round to the next (factor)"),
    "attack": (str, "injected attack: none, sign_flip, gaussian, scale, alie, ipm or label_flip"),
    "byzantine_fraction": (float, "share of parties that attack (a seeded set, fixed for the run)"),
    "alie_z": (float, "alie: the z of mean + z * std (default: the paper's z for the round's n and f)"),
    "ipm_epsilon": (float, "ipm: the epsilon of -epsilon * the honest mean (0.5 or 2 in the paper)"),
    "gaussian_std": (float, "gaussian: std of the attackers' random updates"),
    "attack_scale": (float, "scale: factor on the attackers' own updates"),
    "client_failure_rate": (float, "share of party fits that raise (seeded per round and party)"),
    "client_nan_rate": (float, "share of party fits that return NaN or Inf parameters"),
    "straggler_rate": (float, "share of party fits that are late by a simulated delay"),
    "straggler_delay": (float, "mean simulated delay of a straggler, seconds (exponential)"),
    "round_deadline": (float, "simulated seconds after which a late party is dropped"),
    "dp_mode": (str, "differential privacy: off, sample (DP-SGD per party) or client (DP-FedAvg)"),
    "dp_noise": (float, "noise multiplier sigma"),
    "dp_epsilon": (float, "target epsilon; calibrates sigma before training (instead of --dp-noise)"),
    "dp_clip": (float, "clipping norm (per sample, or per party update in client mode)"),
    "dp_delta": (float, "delta of the (epsilon, delta) guarantee"),
    "dp_accountant": (str, "privacy accountant: rdp or prv"),
    "dp_grad_sample_mode": (str, "how DP-SGD clips per-sample gradients: ghost (ghost clipping, default) or hooks"),
    "executor": (str, "where client tasks run: sequential (in process) or ray (worker actors)"),
    "workers": (int, "Ray worker actors (default: as many as the cluster's CPUs and GPUs hold)"),
    "worker_cpus": (float, "CPUs (and torch threads) per Ray worker"),
    "worker_gpus": (float, "GPUs per Ray worker (fractional, e.g. 0.25)"),
    "ray_address": (str, "a running Ray cluster (host:port or auto); default: $RAY_ADDRESS if set, else a local one for the run"),
    "accelerator": (str, "client fits and evaluation on: auto, cpu or gpu"),
    "min_clients": (int, "results below which a round is not aggregated (the model is kept; logged round_skipped)"),
    "experiment": (str, "MLflow experiment name"),
    "tracking_uri": (str, "MLflow tracking URI (default sqlite:///mlruns/mlflow.db)"),
    "run_name": (str, "MLflow run name (default: <strategy>[-<alpha rule>]-<dataset>[-dp...]-s<seed>)"),
    "registered_model": (str, "register the final model under this name (\"\" for none)"),
    "checkpoint_every": (int, "checkpoint every N rounds for --resume (default 1; 0: none)"),
    "keep_checkpoints": (bool, "keep the run's checkpoints after it finishes"),
    "log_party_metrics": (bool, "also log each party's series (alpha/<client>, dp_epsilon/<client>, ...) as MLflow "
                                "metrics; they are always in the run's party_metrics.json table"),
}
assert set(_FLAG_TYPES) == set(CLI_FIELDS)


def _add_run_parser(subparsers) -> None:
    parser = subparsers.add_parser("run", help="train one federated run and log it to MLflow")
    parser.add_argument("--config", help="YAML config file (flags override it)")
    for name, (type_, help_) in _FLAG_TYPES.items():
        if type_ is bool:  # a switch: True when given, None (the config's value) otherwise
            parser.add_argument("--" + name.replace("_", "-"), dest=name, action="store_true", default=None, help=help_)
        else:
            parser.add_argument("--" + name.replace("_", "-"), dest=name, type=type_, default=None, help=help_)
    parser.add_argument("--resume", metavar="RUN_ID",
                        help="continue this killed or failed run from its last checkpoint, with its own config")
    parser.add_argument("--force", action="store_true",
                        help="with --resume: continue even though the config or fedlight's version differs")
    parser.add_argument("--output-json", help="write a JSON summary of the run here")
    parser.add_argument("--no-progress", action="store_true", help="no per-round progress output")
    parser.set_defaults(handler=_cmd_run)


def _check_output_json(output_json: str | None) -> None:
    if output_json is not None and not Path(output_json).parent.is_dir():
        raise ConfigError(f"--output-json: directory {Path(output_json).parent} does not exist")


def _cmd_run(args: argparse.Namespace) -> int:
    yaml_values = load_yaml(args.config) if args.config else {}
    overrides = {name: getattr(args, name) for name in CLI_FIELDS}
    if args.force and args.resume is None:
        raise ConfigError("--force only goes with --resume RUN_ID")
    if args.resume is not None:
        return _resume_run(args, yaml_values if args.config else None, overrides)
    config = build_config(yaml_values, overrides)
    # the checks run_experiment would make before loading data, without its imports
    _check_output_json(args.output_json)
    precheck(config)

    from fedlight.experiment import run_experiment  # torch, Lightning, MLflow, Opacus: only for a run

    summary = run_experiment(
        config, config_path=args.config, output_json=args.output_json, progress=not args.no_progress
    )
    return _report_run(summary)


def _resume_run(args: argparse.Namespace, yaml_values: dict | None, overrides: dict) -> int:
    """``fedlight run --resume RUN_ID``: the run's own config (flags or --config may only repeat it, unless --force)."""
    _require_text(args.resume, "--resume")
    _check_output_json(args.output_json)
    tracking_uri = overrides.get("tracking_uri") or ((yaml_values or {}).get("tracking") or {}).get("tracking_uri")

    from fedlight.experiment import run_experiment
    from fedlight.resume import plan_resume

    plan = plan_resume(args.resume.strip(), tracking_uri=tracking_uri, yaml_values=yaml_values,
                       overrides={k: v for k, v in overrides.items() if v is not None}, force=args.force)
    precheck(plan.config)
    start = f"from the checkpoint of round {plan.start_round}" if plan.checkpoint else "from round 1 (no checkpoint)"
    print(f"resuming run {plan.run_id} {start}", file=sys.stderr, flush=True)
    summary = run_experiment(plan.config, config_path=args.config, output_json=args.output_json,
                             progress=not args.no_progress, resume=plan)
    return _report_run(summary)


def _report_run(summary: dict) -> int:
    final = summary["final"]
    print(
        f"run {summary['run_id']} finished: accuracy={final['accuracy']:.4f} "
        f"precision={final['precision']:.4f} recall={final['recall']:.4f} f1={final['f1']:.4f} "
        f"loss={final['loss']:.4f} ({summary['wall_time_s']:.0f}s)"
    )
    if summary["tracking_uri"].startswith(("http://", "https://")):  # a tracking server serves its own UI
        print(f"next: open {summary['tracking_uri'].rstrip('/')}/{summary['ui_path']} (experiment {summary['experiment']})")
    else:
        print(f"next: `make ui` (or `mlflow ui --backend-store-uri {summary['tracking_uri']}`) and open "
              f"http://127.0.0.1:5000/{summary['ui_path']} (experiment {summary['experiment']})")
    return 0


def _add_sweep_parser(subparsers) -> None:
    parser = subparsers.add_parser("sweep", help="run or continue an Optuna study defined in sweeps/*.yaml")
    parser.add_argument("--config", required=True, help="sweep YAML (study, objectives, space, base)")
    parser.add_argument("--storage", help="Optuna storage URL (default sqlite:///sweeps/optuna.db)")
    parser.add_argument("--tracking-uri", help="MLflow tracking URI")
    parser.add_argument("--n-trials", type=int, help="finished trials the study should hold")
    parser.set_defaults(handler=_cmd_sweep)


def _cmd_sweep(args: argparse.Namespace) -> int:
    if args.n_trials is not None and args.n_trials <= 0:
        raise ConfigError(f"--n-trials must be positive, got {args.n_trials}")
    load_yaml(args.config)  # a missing or malformed file, before Optuna and MLflow are imported

    from fedlight.sweep import format_results, load_sweep, run_sweep

    sweep = load_sweep(args.config)
    study = run_sweep(sweep, storage=args.storage, tracking_uri=args.tracking_uri, n_trials=args.n_trials)
    print(format_results(study, sweep.objectives))
    return 0


def _add_register_parser(subparsers) -> None:
    parser = subparsers.add_parser("register", help="register a run's global model with an alias")
    parser.add_argument("--run-id", required=True)
    parser.add_argument("--name", required=True, help="registered model name")
    parser.add_argument("--alias", default="champion")
    parser.add_argument("--tracking-uri")
    parser.set_defaults(handler=_cmd_register)


def _require_text(value: str, flag: str) -> None:
    if not value.strip():
        raise ConfigError(f"{flag} must not be empty")


def _cmd_register(args: argparse.Namespace) -> int:
    _require_text(args.run_id, "--run-id")
    _require_text(args.name, "--name")
    _require_text(args.alias, "--alias")

    import mlflow

    from fedlight.sweep import register_champion
    from fedlight.tracking import resolve_tracking_uri

    mlflow.set_tracking_uri(resolve_tracking_uri(args.tracking_uri))
    client = mlflow.MlflowClient()
    try:
        run = client.get_run(args.run_id)
    except mlflow.exceptions.MlflowException:
        raise FedlightError(f"run {args.run_id} not found") from None
    model_uri = run.data.tags.get("model_uri")
    if not model_uri:
        raise FedlightError(f"run {args.run_id} has no logged fedlight model")
    version = register_champion(model_uri, args.name, client=client, alias=args.alias, source_run_id=args.run_id)
    print(f"registered {args.name} version {version} with alias {args.alias}")
    return 0


def _add_export_parser(subparsers) -> None:
    parser = subparsers.add_parser("export", help="export a registry model (torch.export, ONNX, TorchScript) and verify it")
    parser.add_argument("--model", required=True, help="NAME@ALIAS or NAME/VERSION (NAME alone means @champion)")
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument("--format", dest="formats", action="append", choices=(*_EXPORT_FILES, "all"),
                        help="pt2 (torch.export), onnx or torchscript (deprecated by torch); repeat for several "
                             "(default: all three)")
    parser.add_argument("--tracking-uri")
    parser.set_defaults(handler=_cmd_export)


# fedlight.export._registry_uri's form of a registry model, and the files of an exported folder
# (fedlight.export.FORMAT_FILES, INFO_FILE); tests/test_export.py checks that they agree.
_REGISTRY_SPEC = re.compile(r"([^@/]+)(?:@([\w-]+)|/(\d+))?")
_EXPORT_FILES = {"pt2": "model.pt2", "onnx": "model.onnx", "torchscript": "model.pt"}
_EXPORT_INFO = "model.json"


def _cmd_export(args: argparse.Namespace) -> int:
    if not _REGISTRY_SPEC.fullmatch(args.model):
        raise ConfigError(f"--model must be NAME, NAME@ALIAS or NAME/VERSION, got {args.model!r}")
    if Path(args.out).exists() and not Path(args.out).is_dir():
        raise ConfigError(f"--out {args.out} exists and is not a folder")

    from fedlight.export import FORMAT_NAMES, export_model

    info = export_model(args.model, args.out, args.formats, tracking_uri=args.tracking_uri)
    files = ", ".join(f"{name} ({FORMAT_NAMES[fmt]})" for fmt, name in info["formats"].items())
    sizes = " and ".join(str(n) for n in info["verified_on"])
    print(f"exported {info['registered_model']} version {info['version']} to {args.out}: {files}, {_EXPORT_INFO}; "
          f"each reproduces the registry model's predictions on batches of {sizes}")
    if "torchscript" in info["formats"]:
        print("note: torch deprecates TorchScript (model.pt); it is written for consumers that still load it")
    return 0


def _add_predict_parser(subparsers) -> None:
    parser = subparsers.add_parser("predict", help="classify PNG images or npz arrays")
    parser.add_argument("--model", required=True,
                        help="an exported folder (model.pt2, else model.onnx, else model.pt), one exported file "
                             "(.pt2, .onnx, .pt) or an MLflow model URI")
    parser.add_argument("inputs", nargs="+", help="PNG files or npz files (array 'x' or the first array)")
    parser.add_argument("--invert", choices=("auto", "yes", "no"), default="auto",
                        help="flip dark-on-light images to light-on-dark (auto: when the image is mostly light)")
    parser.add_argument("--tracking-uri")
    parser.set_defaults(handler=_cmd_predict)


def _check_predict_args(model: str, inputs: Sequence[str]) -> None:
    """fedlight.export's checks of the model's form and the inputs' presence, in its order."""
    path, files = Path(model), list(_EXPORT_FILES.values())
    if path.is_dir():
        if not (path / _EXPORT_INFO).is_file() or not any((path / name).is_file() for name in files):
            raise DataError(f"{path} is not an exported model folder (needs {_EXPORT_INFO} and "
                            f"{', '.join(files[:-1])} or {files[-1]})")
    elif "://" in model or ":/" in model:
        pass
    elif path.suffix.lower() in {Path(name).suffix for name in files}:
        if not path.is_file():
            raise DataError(f"model file not found: {path}")
    elif path.is_file():
        raise DataError(f"--model {path}: not an exported model file (.pt2, .onnx or .pt)")
    else:
        raise DataError(f"--model {model!r} is neither an exported folder nor a model URI (models:/NAME@ALIAS) "
                        "nor an exported model file (.pt2, .onnx, .pt)")
    for item in inputs:
        if not Path(item).is_file():
            raise DataError(f"input not found: {Path(item)}")


def _cmd_predict(args: argparse.Namespace) -> int:
    _check_predict_args(args.model, args.inputs)

    from fedlight.export import load_for_prediction, load_inputs, predict

    model, info = load_for_prediction(args.model, tracking_uri=args.tracking_uri)
    if info["format"] == "torchscript":
        print(f"fedlight: note: reading TorchScript, which torch deprecates; `fedlight export` also writes "
              f"{_EXPORT_FILES['pt2']} and {_EXPORT_FILES['onnx']}", file=sys.stderr)
    batch, labels = load_inputs(args.inputs, info["input_shape"], invert=args.invert)
    for label, (name, confidence) in zip(labels, predict(model, info, batch)):
        print(f"{label}\t{name}\t{confidence:.3f}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="fedlight", description="Federated-learning experiments on Lightning, tracked in MLflow.")
    subparsers = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    _add_run_parser(subparsers)
    _add_sweep_parser(subparsers)
    _add_register_parser(subparsers)
    _add_export_parser(subparsers)
    _add_predict_parser(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        with terminate_as_interrupt(), warnings.catch_warnings():
            if not sys.warnoptions:
                # libraries' warnings (Opacus, MLflow, Lightning) would break the one-line error rule;
                # `python -W default -m fedlight.cli ...` or PYTHONWARNINGS shows them
                warnings.simplefilter("ignore")
            return args.handler(args)
    except FedlightError as exc:
        print(f"fedlight: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except Terminated:
        print("fedlight: terminated", file=sys.stderr)
        return 143
    except KeyboardInterrupt:
        print("fedlight: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
