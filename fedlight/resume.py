"""``fedlight run --resume RUN_ID``: continue a killed run in its own MLflow run, from its last checkpoint.

Every run records, as tags, a digest of its config (:func:`config_digest`),
fedlight's version and git commit (:func:`code_version`), its checkpoint
folder (:data:`fedlight.checkpoints.CHECKPOINT_TAG`) and the process and
host running it. :func:`plan_resume` reads them back and refuses, with one
line, a run that does not exist, that finished, that a live process on
this machine still runs, or whose config or code differs from the resumed
one (unless forced). The resumed config is the run's own
``config/resolved.yaml``, so the run id alone is enough.

Metrics: MLflow cannot delete a logged value, so a resumed run never logs a
(metric, round) pair again. Rounds trained after the last checkpoint and
logged before the kill are trained again, bit for bit the same, and only
the values the run lacks are logged (:attr:`ResumePlan.logged`).
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import yaml

from fedlight.checkpoints import CHECKPOINT_TAG, Checkpointer, checkpoint_root, latest_checkpoint, remove_checkpoints
from fedlight.config import RunConfig, build_config
from fedlight.errors import ConfigError

DIGEST_TAG = "fedlight.config_digest"
VERSION_TAG = "fedlight.version"
COMMIT_TAG = "fedlight.git_commit"
PID_TAG = "fedlight.pid"
HOST_TAG = "fedlight.host"
RESUMES_TAG = "fedlight.resumes"
RESUMED_FROM_TAG = "fedlight.resumed_from_round"
FORCED_TAG = "fedlight.forced_resume"
# options that change where things are kept or what they are called, not what is trained
_NOT_DIGESTED = {("tracking", "tracking_uri"), ("tracking", "run_name"), ("tracking", "checkpoint_every"),
                 ("tracking", "keep_checkpoints")}


def _digested(config: RunConfig) -> dict[str, Any]:
    return {f"{s}.{k}": v for s, values in config.to_dict().items() for k, v in values.items() if (s, k) not in _NOT_DIGESTED}


def config_digest(config: RunConfig) -> str:
    """SHA-256 (16 hex digits) of the config, leaving out where the run is tracked and checkpointed and its name."""
    text = json.dumps(_digested(config), sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def config_changes(old: RunConfig, new: RunConfig) -> list[str]:
    before, after = _digested(old), _digested(new)
    return [f"{k} {before.get(k)!r} -> {after.get(k)!r}" for k in sorted(set(before) | set(after)) if before.get(k) != after.get(k)]


def code_version() -> dict[str, str]:
    """fedlight's package version and, in a git checkout, its commit ("" otherwise)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        package_version = version("fedlight")
    except PackageNotFoundError:
        package_version = "unknown"
    commit = ""
    source = Path(__file__).resolve().parent.parent
    if (source / ".git").exists():
        try:
            done = subprocess.run(["git", "-C", str(source), "rev-parse", "HEAD"], capture_output=True, text=True,
                                  timeout=10, check=False)
            commit = done.stdout.strip() if done.returncode == 0 else ""
        except (OSError, subprocess.SubprocessError):
            commit = ""
    return {VERSION_TAG: package_version, COMMIT_TAG: commit}


def run_identity_tags(config: RunConfig, checkpoint_dir: Path | None) -> dict[str, str]:
    """The tags a run carries so that it can be resumed (see the module docstring)."""
    tags = {DIGEST_TAG: config_digest(config), **code_version(), PID_TAG: str(os.getpid()), HOST_TAG: socket.gethostname()}
    if checkpoint_dir is not None:
        tags[CHECKPOINT_TAG] = str(checkpoint_dir)
    return tags


@dataclass
class ResumePlan:
    """What a resumed run needs: its id, its config, its last checkpoint and what it has logged."""

    run_id: str
    config: RunConfig
    checkpoint: tuple[int, Path] | None
    checkpoint_dir: Path | None
    # metric -> steps already logged; a resumed run logs no (metric, step) twice
    logged: dict[str, set[int]] = field(default_factory=dict)
    forced: list[str] = field(default_factory=list)

    @property
    def start_round(self) -> int:
        return self.checkpoint[0] if self.checkpoint is not None else 0


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _stored_config(client: Any, run_id: str) -> dict[str, Any]:
    from mlflow.exceptions import MlflowException

    previous = os.environ.get("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR")
    os.environ["MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"] = "false"  # one small file: no progress bar on stderr
    try:
        with tempfile.TemporaryDirectory(prefix="fedlight-resume-") as folder:
            try:
                path = client.download_artifacts(run_id, "config/resolved.yaml", folder)
            except (MlflowException, OSError):
                raise ConfigError(f"--resume {run_id}: the run has no config/resolved.yaml; only runs of fedlight run "
                                  "resume") from None
            loaded = yaml.safe_load(Path(path).read_text())
    finally:
        if previous is None:
            os.environ.pop("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", None)
        else:
            os.environ["MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"] = previous
    if not isinstance(loaded, dict):
        raise ConfigError(f"--resume {run_id}: its config/resolved.yaml is not a config mapping")
    return loaded


def logged_steps(client: Any, run_id: str, metric_keys: list[str]) -> dict[str, set[int]]:
    return {key: {m.step for m in client.get_metric_history(run_id, key)} for key in metric_keys}


def plan_resume(
    run_id: str,
    *,
    tracking_uri: str | None,
    yaml_values: dict[str, Any] | None = None,
    overrides: dict[str, Any] | None = None,
    force: bool = False,
) -> ResumePlan:
    """Check that run ``run_id`` can be resumed with this config and code; what resuming it needs.

    ``yaml_values`` (a ``--config`` file) replaces the run's stored config as
    the base that ``overrides`` (flags) apply to; either may change only the
    options that :func:`config_digest` leaves out, unless ``force``.
    """
    import mlflow
    from mlflow.exceptions import MlflowException

    from fedlight.tracking import resolve_tracking_uri

    uri = resolve_tracking_uri(tracking_uri)
    client = mlflow.MlflowClient(tracking_uri=uri)
    try:
        run = client.get_run(run_id)
    except MlflowException:
        raise ConfigError(f"--resume {run_id}: no such run in {uri}") from None
    tags, status = run.data.tags, run.info.status
    if status == "FINISHED":
        raise ConfigError(f"--resume {run_id}: the run is FINISHED; there is nothing to resume")
    if run.info.lifecycle_stage != "active":
        raise ConfigError(f"--resume {run_id}: the run is deleted")
    pid = tags.get(PID_TAG, "")
    if (status == "RUNNING" and not force and pid.isdigit() and tags.get(HOST_TAG) == socket.gethostname()
            and int(pid) != os.getpid() and _pid_alive(int(pid))):
        raise ConfigError(f"--resume {run_id}: the run is RUNNING in process {pid} on this machine; "
                          "stop it first (or pass --force if that process is not fedlight)")
    stored = _stored_config(client, run_id)
    try:
        original = build_config(stored)
        wanted = build_config(yaml_values if yaml_values is not None else stored, overrides or {})
    except ConfigError as exc:
        raise ConfigError(f"--resume {run_id}: {exc}") from None
    wanted.tracking.tracking_uri = uri  # the store the run was found in, whatever the config said
    forced: list[str] = []
    changes = config_changes(original, wanted)
    if changes:
        if not force:
            shown = "; ".join(changes[:3]) + (f"; and {len(changes) - 3} more" if len(changes) > 3 else "")
            raise ConfigError(f"--resume {run_id}: the config differs from the run's ({shown}); "
                              "pass --force to resume with it anyway")
        forced += changes
    here = code_version()
    then = {key: tags.get(key, "") for key in here}
    if then != here:
        described = {label: " ".join(f"{k.removeprefix('fedlight.')} {v[:12] or '-'}" for k, v in version.items())
                     for label, version in (("then", then), ("now", here))}
        if not force:
            raise ConfigError(f"--resume {run_id}: the run was made by fedlight {described['then']}, this is "
                              f"{described['now']}; pass --force to resume anyway")
        forced.append(f"code {described['then']} -> {described['now']}")
    checkpoint_dir = Path(tags[CHECKPOINT_TAG]) if tags.get(CHECKPOINT_TAG) else None
    checkpoint = latest_checkpoint(checkpoint_dir) if checkpoint_dir is not None else None
    return ResumePlan(run_id=run_id, config=wanted, checkpoint=checkpoint, checkpoint_dir=checkpoint_dir,
                      logged=logged_steps(client, run_id, sorted(run.data.metrics)), forced=forced)


def params_digest(params: dict[str, Any]) -> str:
    """SHA-256 of a model's parameters in key order (names, dtypes, shapes and bytes): equal runs give equal digests."""
    digest = hashlib.sha256()
    for key in sorted(params):
        tensor = params[key].detach().cpu().contiguous()
        digest.update(f"{key}:{tensor.dtype}:{tuple(tensor.shape)}".encode())
        digest.update(tensor.view(-1).view(torch.uint8).numpy().tobytes() if tensor.numel() else b"")
    return digest.hexdigest()


def begin_run_checkpoints(tracker: Any, config: RunConfig, resume: ResumePlan | None) -> Checkpointer | None:
    """Tag the started (or resumed) run for resuming; the round listener that checkpoints it, if any.

    A new run's checkpoints go to :func:`fedlight.checkpoints.checkpoint_root` / run id; a resumed
    run keeps its folder.
    """
    import mlflow

    every = config.tracking.checkpoint_every
    directory = resume.checkpoint_dir if resume is not None and resume.checkpoint_dir is not None else None
    if directory is None and every > 0:
        directory = checkpoint_root(tracker.tracking_uri) / tracker.run_id
    tags = run_identity_tags(config, directory)
    if resume is not None:
        client = mlflow.MlflowClient()
        previous = client.get_run(resume.run_id).data.tags.get(RESUMES_TAG, "0")
        tags[RESUMES_TAG] = str(int(previous) + 1 if previous.isdigit() else 1)
        tags[RESUMED_FROM_TAG] = str(resume.start_round)
        if resume.forced:
            tags[FORCED_TAG] = "; ".join(resume.forced)[:5000]
    mlflow.set_tags(tags)
    if every <= 0 or directory is None:
        return None
    return Checkpointer(directory, every=every, rounds=config.training.rounds)


def restore_run(loop: Any, tracker: Any, checkpointer: Checkpointer | None, resume: ResumePlan | None) -> None:
    """Load the resumed run's last checkpoint into ``loop`` and log what the run lacks of its rounds.

    The replay through the tracker also rebuilds what it keeps across rounds
    (the per-party table); values the run holds are not logged again.
    """
    if checkpointer is not None:
        checkpointer.attach(loop)
    if resume is None or resume.checkpoint is None:
        return
    loop.load_checkpoint(resume.checkpoint[1])
    for row in loop.history:
        tracker.on_round_end(int(row["round"]), {k: v for k, v in row.items() if k != "round"})


def finish_run_checkpoints(checkpointer: Checkpointer | None, config: RunConfig) -> None:
    """Remove a finished run's checkpoints unless ``tracking.keep_checkpoints``."""
    if checkpointer is not None and not config.tracking.keep_checkpoints:
        remove_checkpoints(checkpointer.directory)
