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
    "byzantine_f": (int, "Byzantine parties per round that trimmed_mean, krum and multi_krum tolerate"),
    "dp_mode": (str, "differential privacy: off, sample (DP-SGD per party) or client (DP-FedAvg)"),
    "dp_noise": (float, "noise multiplier sigma"),
    "dp_epsilon": (float, "target epsilon; calibrates sigma before training (instead of --dp-noise)"),
    "dp_clip": (float, "clipping norm (per sample, or per party update in client mode)"),
    "dp_delta": (float, "delta of the (epsilon, delta) guarantee"),
    "dp_accountant": (str, "privacy accountant: rdp or prv"),
    "dp_grad_sample_mode": (str, "how DP-SGD clips per-sample gradients: ghost (ghost clipping, default) or hooks"),
    "experiment": (str, "MLflow experiment name"),
    "tracking_uri": (str, "MLflow tracking URI (default sqlite:///mlruns/mlflow.db)"),
    "run_name": (str, "MLflow run name"),
    "registered_model": (str, "register the final model under this name (\"\" for none)"),
}
assert set(_FLAG_TYPES) == set(CLI_FIELDS)


def _add_run_parser(subparsers) -> None:
    parser = subparsers.add_parser("run", help="train one federated run and log it to MLflow")
    parser.add_argument("--config", help="YAML config file (flags override it)")
    for name, (type_, help_) in _FLAG_TYPES.items():
        parser.add_argument("--" + name.replace("_", "-"), dest=name, type=type_, default=None, help=help_)
    parser.add_argument("--output-json", help="write a JSON summary of the run here")
    parser.add_argument("--no-progress", action="store_true", help="no per-round progress output")
    parser.set_defaults(handler=_cmd_run)


def _check_output_json(output_json: str | None) -> None:
    if output_json is not None and not Path(output_json).parent.is_dir():
        raise ConfigError(f"--output-json: directory {Path(output_json).parent} does not exist")


def _cmd_run(args: argparse.Namespace) -> int:
    yaml_values = load_yaml(args.config) if args.config else {}
    overrides = {name: getattr(args, name) for name in CLI_FIELDS}
    config = build_config(yaml_values, overrides)
    # the checks run_experiment would make before loading data, without its imports
    _check_output_json(args.output_json)
    precheck(config)

    from fedlight.experiment import run_experiment  # torch, Lightning, MLflow, Opacus: only for a run

    summary = run_experiment(
        config, config_path=args.config, output_json=args.output_json, progress=not args.no_progress
    )
    final = summary["final"]
    print(
        f"run {summary['run_id']} finished: accuracy={final['accuracy']:.4f} "
        f"precision={final['precision']:.4f} recall={final['recall']:.4f} f1={final['f1']:.4f} "
        f"loss={final['loss']:.4f} ({summary['wall_time_s']:.0f}s)"
    )
    print(f"next: `make ui` (or `mlflow ui --backend-store-uri {summary['tracking_uri']}`) and open "
          f"http://127.0.0.1:5000, experiment {summary['experiment']}")
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
    parser = subparsers.add_parser("export", help="export a registry model to TorchScript and verify it")
    parser.add_argument("--model", required=True, help="NAME@ALIAS or NAME/VERSION (NAME alone means @champion)")
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument("--tracking-uri")
    parser.set_defaults(handler=_cmd_export)


# fedlight.export._registry_uri's form of a registry model, and the files of an exported folder
# (fedlight.export.MODEL_FILE, INFO_FILE); tests/test_cli_startup.py checks that they agree.
_REGISTRY_SPEC = re.compile(r"([^@/]+)(?:@([\w-]+)|/(\d+))?")
_EXPORT_FILES = ("model.pt", "model.json")


def _cmd_export(args: argparse.Namespace) -> int:
    if not _REGISTRY_SPEC.fullmatch(args.model):
        raise ConfigError(f"--model must be NAME, NAME@ALIAS or NAME/VERSION, got {args.model!r}")
    if Path(args.out).exists() and not Path(args.out).is_dir():
        raise ConfigError(f"--out {args.out} exists and is not a folder")

    from fedlight.export import export_model

    info = export_model(args.model, args.out, tracking_uri=args.tracking_uri)
    print(f"exported {info['registered_model']} version {info['version']} to {args.out} "
          f"(TorchScript; predictions match the registry model on {info['verified_on']} inputs)")
    return 0


def _add_predict_parser(subparsers) -> None:
    parser = subparsers.add_parser("predict", help="classify PNG images or npz arrays")
    parser.add_argument("--model", required=True, help="an exported folder or an MLflow model URI")
    parser.add_argument("inputs", nargs="+", help="PNG files or npz files (array 'x' or the first array)")
    parser.add_argument("--invert", choices=("auto", "yes", "no"), default="auto",
                        help="flip dark-on-light images to light-on-dark (auto: when the image is mostly light)")
    parser.add_argument("--tracking-uri")
    parser.set_defaults(handler=_cmd_predict)


def _check_predict_args(model: str, inputs: Sequence[str]) -> None:
    """fedlight.export's checks of the model's form and the inputs' presence, in its order."""
    folder = Path(model)
    if folder.is_dir():
        if not all((folder / name).is_file() for name in _EXPORT_FILES):
            raise DataError(f"{folder} is not an exported model folder (needs {' and '.join(_EXPORT_FILES)})")
    elif "://" not in model and ":/" not in model:
        raise DataError(f"--model {model!r} is neither an exported folder nor a model URI (models:/NAME@ALIAS)")
    for item in inputs:
        if not Path(item).is_file():
            raise DataError(f"input not found: {Path(item)}")


def _cmd_predict(args: argparse.Namespace) -> int:
    _check_predict_args(args.model, args.inputs)

    from fedlight.export import load_for_prediction, load_inputs, predict

    model, info = load_for_prediction(args.model, tracking_uri=args.tracking_uri)
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
