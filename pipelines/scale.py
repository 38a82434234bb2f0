"""Scale: a fedlight run's driver memory and seconds per round from 300 to 30,000 parties, sequential and on Ray.

FEMNIST's training rows split into many parties (``--partition iid
--num-clients N``), SCAFFOLD (which keeps a control variate per party), the
small CNN, 5 rounds of 10 parties, one local epoch, every row of a party
training (``--val-fraction 0``), the test set evaluated once, after the
last round. Each run compares against a run with a tenth or a hundredth of
the parties holding the same data per party, made with ``--volume``:

* 300 parties at ``--volume 0.1`` (about 14 rows each) against 3,000
  parties at full volume (about 14 rows each);
* 300 parties at ``--volume 0.01`` (1 row each) against 30,000 parties at
  ``--volume 0.5`` (1 row each: FEMNIST's 41,904 rows make 30,000 parties
  of 1 or 2 rows, and half of 1 or 2 rows rounds to 1).

The rows per party in the table are computed with fedlight's own
partition functions. Per-party state and per-round time should grow with
the parties sampled, not with all parties; what this measures is how far
the driver's memory and a round's time move with the parties' count.

Each run is its own ``fedlight run`` process (MLflow tracking on, into a
temporary store; the model logged, not registered), sequential or
``--executor ray --workers 2``. Memory is read from ``/proc`` (Linux) every
``--poll-interval`` seconds while it runs: the driver's peak resident set
(``VmHWM``, the kernel's high-water mark), and apart from it those of its
descendant processes: Ray's workers (``ray::IDLE``, ``ray::<actor>`` or
``python default_worker.py``; the peak of one worker, and the peak of their
summed resident sets) and the rest (Ray's own services and agents). Pages of Ray's shared-memory object store
count in every process that maps them. ``wait4``'s ``ru_maxrss`` is kept
as an upper bound: the largest peak among the driver and every process
it reaped, and a child forked by the driver (a ``subprocess`` call, say)
counts the driver's pages until it execs. Seconds per round are
the mean of the run's ``round_time_s``, over all rounds and over the rounds
after the first (which also pays one-time costs, such as the first fit's
lazy set-up; the ratios use these); with ``--warm-up`` (the default) one
unmeasured run goes first, so that the first measured run does not pay for
a cold file cache. The Ray executor's start-up is its
own report (``executor_startup_s``, logged with the first round).

    python pipelines/scale.py --data-dir ../shared/data/femnist
    python pipelines/scale.py --data-dir ../shared/data/femnist --executors sequential --runs 300@0.1,3000
    python pipelines/scale.py --data-dir ../shared/data/femnist --quick     # a smoke test, about a minute
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from bench import check_ray_support, execution_of, fedlight_prefix, thread_env, uptime
from common import REPO, guard, markdown_table

from fedlight.errors import FedlightError

EXPERIMENT = "scale"
EXECUTORS = ("sequential", "ray")
DEFAULT_RUNS = "300@0.1,3000,300@0.01,30000@0.5"
QUICK_RUNS = "30@0.1,300"


@dataclass(frozen=True)
class Federation:
    """``parties`` iid parties of FEMNIST's training rows, each keeping ``volume`` of its rows."""

    parties: int
    volume: float

    @property
    def label(self) -> str:
        return f"{self.parties}@{self.volume:g}"


def parse_runs(text: str) -> list[Federation]:
    """``300@0.1,3000`` -> the federations, in order (a missing ``@volume`` is 1)."""
    runs = []
    for item in (t.strip() for t in text.split(",")):
        if not item:
            continue
        parties, _, volume = item.partition("@")
        try:
            runs.append(Federation(int(parties), float(volume) if volume else 1.0))
        except ValueError:
            raise FedlightError(f"--runs: expected PARTIES[@VOLUME], comma-separated, got {item!r}") from None
        if runs[-1].parties < 1 or not 0 < runs[-1].volume <= 1:
            raise FedlightError(f"--runs: {item!r} needs at least 1 party and a volume in (0, 1]")
    if not runs:
        raise FedlightError("--runs: no run given")
    return runs


def rows_per_party(num_rows: int, federation: Federation, val_fraction: float = 0.0) -> np.ndarray:
    """The training rows of each party, as fedlight's iid partition, volume and local split make them.

    The sizes do not depend on the seed, so any generator gives fedlight's.
    """
    from fedlight.data.partition import apply_volume, iid_partition, train_val_split

    rng = np.random.default_rng(0)
    parts = apply_volume(iid_partition(num_rows, federation.parties, rng), federation.volume, rng)
    return np.array([len(train_val_split(p, val_fraction, rng)[0]) for p in parts])


def baseline_of(index: int, runs: list[Federation], sizes: list[np.ndarray]) -> int | None:
    """The first earlier run with fewer parties and the same rows per party (mean within 2%), if any."""
    mean = sizes[index].mean()
    for j in range(index):
        if runs[j].parties < runs[index].parties and abs(sizes[j].mean() - mean) <= 0.02 * mean:
            return j
    return None


# ---- memory of a process tree, from /proc ------------------------------------------------------------------------


def _status_kb(pid: int, keys: tuple[str, ...] = ("VmRSS", "VmHWM")) -> dict[str, int]:
    values = {}
    try:
        with open(f"/proc/{pid}/status") as handle:
            for line in handle:
                name, _, rest = line.partition(":")
                if name in keys:
                    values[name] = int(rest.split()[0])
    except (OSError, ValueError, IndexError):
        return {}
    return values


def _parents() -> dict[int, int]:
    parents = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as handle:
                    parents[int(entry)] = int(handle.read().rsplit(")", 1)[1].split()[1])
            except (OSError, ValueError, IndexError):
                pass
    return parents


def _descendants(root: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for pid, parent in _parents().items():
        children.setdefault(parent, []).append(pid)
    found, todo = [], [root]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def _cmdline(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as handle:
            return handle.read().replace(b"\0", b" ").decode(errors="replace").strip()
    except OSError:
        return ""


def _is_ray_worker(cmdline: str) -> bool:
    """A Ray worker process: titled ``ray::IDLE``, ``ray::<actor class>[.<method>]`` or ``ray::<task>``, or still
    ``python .../default_worker.py`` before it titles itself; not Ray's agents (``ray::DashboardAgent``, ...) nor
    the raylet, whose arguments name default_worker.py."""
    program = cmdline.split(" ")
    if program[0].startswith("ray::"):
        return not program[0].endswith("Agent")
    return len(program) > 1 and program[1].endswith("default_worker.py")


class TreeMemory:
    """Peaks of a process and its descendants, sampled from /proc: the root apart, Ray workers apart, the rest.

    A descendant is classified by its current command line at every sample, and its peak is kept per
    (process, kind): a child forked as a copy of its parent that then execs a Ray worker (whose high-water
    mark starts afresh at the exec) counts as "other" before and as a worker after.
    """

    def __init__(self, root: int) -> None:
        self.root = root
        self.root_peak_kb = 0
        self.peak_kb: dict[tuple[int, str], int] = {}
        self.names: dict[tuple[int, str], set[str]] = {}
        self.sum_peak_kb = {"workers": 0, "other": 0}

    def sample(self) -> None:
        root = _status_kb(self.root)
        self.root_peak_kb = max(self.root_peak_kb, root.get("VmHWM", 0), root.get("VmRSS", 0))
        sums = {"workers": 0, "other": 0}
        for pid in _descendants(self.root):
            cmdline = _cmdline(pid)
            status = _status_kb(pid)
            if not status or not cmdline:
                continue
            key = (pid, "workers" if _is_ray_worker(cmdline) else "other")
            self.peak_kb[key] = max(self.peak_kb.get(key, 0), status.get("VmHWM", 0), status.get("VmRSS", 0))
            # a worker's title (ray::IDLE, ray::<actor class>); another process's program
            self.names.setdefault(key, set()).add(cmdline.split(" ")[0] if key[1] == "workers"
                                                  else Path(cmdline.split(" ")[0]).name)
            sums[key[1]] += status.get("VmRSS", 0)
        for kind, total in sums.items():
            self.sum_peak_kb[kind] = max(self.sum_peak_kb[kind], total)

    def summary(self) -> dict[str, Any]:
        def of(kind: str) -> list[tuple[int, str]]:
            return [key for key in self.peak_kb if key[1] == kind]

        workers = [self.peak_kb[key] for key in of("workers")]
        return {
            "driver_peak_mb": self.root_peak_kb / 1024,
            "workers": len(workers),
            "worker_peak_mb": max(workers) / 1024 if workers else None,
            "workers_sum_peak_mb": self.sum_peak_kb["workers"] / 1024 if workers else None,
            "other_processes": len(of("other")),
            "other_sum_peak_mb": self.sum_peak_kb["other"] / 1024,
            "worker_names": sorted(set().union(*(self.names[key] for key in of("workers")))),
            "other_names": sorted(set().union(*(self.names[key] for key in of("other")))),
        }


def run_measured(command: list[str], env: dict[str, str], poll_interval: float) -> tuple[int, float, dict[str, Any], str]:
    """Run ``command``, sampling its memory; (exit code, wall seconds, memory summary, the output's last line)."""
    with tempfile.TemporaryFile("w+") as log:
        start = time.perf_counter()
        proc = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT, text=True)
        memory = TreeMemory(proc.pid)
        while True:
            memory.sample()
            pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
            if pid:
                break
            time.sleep(poll_interval)
        wall = time.perf_counter() - start
        proc.returncode = code = os.waitstatus_to_exitcode(status)  # reaped here: Popen must not wait again
        log.seek(0)
        lines = [line for line in log.read().splitlines() if line.strip()]
    result = memory.summary()
    result["wait4_maxrss_mb"] = usage.ru_maxrss / 1024  # Linux: kilobytes
    return code, wall, result, (lines[-1] if lines else "no output")


# ---- the runs ----------------------------------------------------------------------------------------------------


def fedlight_command(args: argparse.Namespace, federation: Federation, executor: str, output_json: Path,
                     tracking_uri: str) -> list[str]:
    command = fedlight_prefix() + [
        "run", "--dataset", "femnist", "--data-dir", args.data_dir, "--partition", "iid",
        "--num-clients", str(federation.parties), "--volume", f"{federation.volume:g}",
        "--val-fraction", f"{args.val_fraction:g}",
        "--model", "small_cnn", "--strategy", "scaffold", "--rounds", str(args.rounds),
        "--clients-per-round", str(args.clients_per_round), "--local-epochs", "1", "--batch-size", str(args.batch_size),
        "--lr", str(args.lr), "--eval-every", str(args.rounds), "--seed", str(args.seed), "--dp-mode", "off",
        "--experiment", EXPERIMENT, "--tracking-uri", tracking_uri, "--registered-model", "",
        "--run-name", f"scale-{federation.label}-{executor}", "--output-json", str(output_json), "--no-progress",
    ]
    if args.executor_flags:
        command += ["--executor", executor]
        if executor == "ray":
            command += ["--workers", str(args.ray_workers), "--worker-cpus", f"{args.worker_cpus:g}"]
    return command


def measure(args: argparse.Namespace, federation: Federation, executor: str, work: Path, tracking_uri: str) -> dict[str, Any]:
    output = work / "run.json"
    output.unlink(missing_ok=True)
    load = os.getloadavg()[0]
    code, wall, memory, last_line = run_measured(fedlight_command(args, federation, executor, output, tracking_uri),
                                                 thread_env(args.threads), args.poll_interval)
    if code != 0 or not output.is_file():
        raise FedlightError(f"the run {federation.label} ({executor}) failed (exit {code}): {last_line}")
    summary = json.loads(output.read_text())
    times = [row["round_time_s"] for row in summary["history"]]
    startup = execution_of(summary, executor).get("startup_s") if args.executor_flags else None
    return {"process_wall_s": wall, "s_per_round": statistics.fmean(times),
            "s_per_round_later": statistics.fmean(times[1:]) if len(times) > 1 else None, "round_times_s": times,
            "startup_s": startup, "accuracy": summary["final"]["accuracy"], "load_before": load, **memory}


def run_all(args: argparse.Namespace, sizes: list[np.ndarray]) -> list[dict[str, Any]]:
    rows = []
    with tempfile.TemporaryDirectory(prefix="fedlight-scale-") as work:
        from fedlight.tracking import prepare_tracking_store

        tracking_uri = f"sqlite:///{Path(work) / 'mlflow.db'}"
        prepare_tracking_store(tracking_uri, [EXPERIMENT])
        if args.warm_up:
            print(f"  warm-up run {args.runs[0].label} ({args.executors[0]}), not measured", flush=True)
            measure(args, args.runs[0], args.executors[0], Path(work), tracking_uri)
        for executor in args.executors:
            for index, federation in enumerate(args.runs):
                repeats = [measure(args, federation, executor, Path(work), tracking_uri) for _ in range(args.repeats)]
                row: dict[str, Any] = {
                    "executor": executor, "run_index": index, "parties": federation.parties, "volume": federation.volume,
                    "rows_per_party_mean": float(sizes[index].mean()), "rows_per_party_min": int(sizes[index].min()),
                    "rows_per_party_max": int(sizes[index].max()), "baseline": baseline_of(index, args.runs, sizes),
                    "repeats": repeats,
                }
                for key in ("process_wall_s", "s_per_round", "driver_peak_mb", "wait4_maxrss_mb", "other_sum_peak_mb",
                            "accuracy"):
                    row[key] = statistics.median(r[key] for r in repeats)
                for key in ("worker_peak_mb", "workers_sum_peak_mb", "startup_s", "s_per_round_later"):
                    values = [r[key] for r in repeats if r[key] is not None]
                    row[key] = statistics.median(values) if values else None
                row["workers"] = max(r["workers"] for r in repeats)
                row["worker_names"] = sorted({name for r in repeats for name in r["worker_names"]})
                row["other_names"] = sorted({name for r in repeats for name in r["other_names"]})
                row["load_before"] = [r["load_before"] for r in repeats]
                print(f"  {executor:10s} {federation.label:>10s}: {row['rows_per_party_mean']:.2f} rows/party, driver peak "
                      f"{row['driver_peak_mb']:.0f} MB, {row['s_per_round']:.3f} s/round, process {row['process_wall_s']:.1f} s"
                      + (f", workers' peak {row['worker_peak_mb']:.0f} MB" if row["worker_peak_mb"] else "")
                      + f" (load before {row['load_before'][0]:.2f})", flush=True)
                rows.append(row)
    by_run = {(row["executor"], row["run_index"]): row for row in rows}
    for row in rows:  # ratios against the baseline run of the same executor
        base = None if row["baseline"] is None else by_run[(row["executor"], row["baseline"])]
        row["baseline_label"] = None if base is None else args.runs[row["baseline"]].label
        row["driver_peak_ratio"] = None if base is None else row["driver_peak_mb"] / base["driver_peak_mb"]
        # the first round also pays one-time costs (the first fit's lazy set-up): the later rounds are compared
        key = "s_per_round_later" if row["s_per_round_later"] is not None else "s_per_round"
        row["s_per_round_ratio"] = None if base is None else row[key] / base[key]
    return rows


def _opt(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def report(args: argparse.Namespace, rows: list[dict[str, Any]], loads: tuple[str, str], command: str) -> str:
    lines = [
        f"# fedlight at scale: driver memory and seconds per round ({datetime.datetime.now().isoformat(timespec='minutes')})",
        "",
        f"Command: `{command}`.",
        f"{os.cpu_count()} cores, {args.threads} torch threads; machine load (`uptime`) before: `{loads[0]}`; "
        f"after: `{loads[1]}`.",
        "",
        f"FEMNIST iid, SCAFFOLD, small CNN, {args.rounds} rounds of {args.clients_per_round} parties, 1 local epoch "
        f"(batch {args.batch_size}, lr {args.lr:g}), val-fraction {args.val_fraction:g}, test evaluation after the last round; "
        f"Ray: `--executor ray --workers {args.ray_workers} --worker-cpus {args.worker_cpus:g}`. "
        f"{args.repeats} repeat(s), medians{', after one unmeasured warm-up run' if args.warm_up else ''}. "
        "Driver peak: the fedlight process's VmHWM; workers: Ray's worker processes "
        "(peak of one, and peak of their summed resident sets; the object store's shared pages count in each); "
        "other: the run's other descendant processes (Ray's services), summed. Ratios against the run with fewer parties "
        "holding the same rows per party.",
        "",
        markdown_table(
            ["executor", "parties", "volume", "rows per party (mean, min-max)", "driver peak RSS (MB)",
             "driver peak / baseline", "s per round (all)", "s per round (rounds 2+)", "rounds 2+ / baseline",
             "baseline", "Ray start-up (s)",
             "worker peak RSS (MB)", "workers' summed peak (MB)", "other processes' summed peak (MB)",
             "other processes", "wait4 maxrss, upper bound (MB)", "process wall (s)", "accuracy",
             "load (1 min) before"],
            [[r["executor"], f"{r['parties']:,}", f"{r['volume']:g}",
              f"{r['rows_per_party_mean']:.2f} ({r['rows_per_party_min']}-{r['rows_per_party_max']})",
              f"{r['driver_peak_mb']:.0f}", _opt(r["driver_peak_ratio"], ".3f"), f"{r['s_per_round']:.3f}",
              _opt(r["s_per_round_later"], ".3f"),
              _opt(r["s_per_round_ratio"], ".3f"), r["baseline_label"] or "-", _opt(r["startup_s"], ".1f"),
              _opt(r["worker_peak_mb"], ".0f"), _opt(r["workers_sum_peak_mb"], ".0f"), f"{r['other_sum_peak_mb']:.0f}",
              ", ".join(r["other_names"]) or "-", f"{r['wait4_maxrss_mb']:.0f}", f"{r['process_wall_s']:.1f}",
              f"{r['accuracy']:.4f}",
              ", ".join(f"{x:.2f}" for x in r["load_before"])] for r in rows],
        ),
    ]
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", default=str(REPO.parent / "shared" / "data" / "femnist"))
    parser.add_argument("--runs", default=DEFAULT_RUNS,
                        help="comma-separated PARTIES[@VOLUME]; each is compared with an earlier one with fewer parties "
                             "and the same rows per party")
    parser.add_argument("--executors", default=",".join(EXECUTORS), help=f"comma-separated, of {', '.join(EXECUTORS)}")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--clients-per-round", type=int, default=10)
    parser.add_argument("--batch-size", type=int, default=10)
    parser.add_argument("--lr", type=float, default=0.05)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--val-fraction", type=float, default=0.0,
                        help="each party's local validation split (0: every row trains, the same rows per party)")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="torch threads (default: all cores)")
    parser.add_argument("--ray-workers", type=int, default=2)
    parser.add_argument("--ray-worker-cpus", type=float, default=None, help="CPUs per Ray worker (default: threads / workers)")
    parser.add_argument("--repeats", type=int, default=1, help="runs per configuration; medians are reported")
    parser.add_argument("--poll-interval", type=float, default=0.1,
                        help="seconds between memory samples (each costs about 2-3 ms of CPU)")
    parser.add_argument("--warm-up", action=argparse.BooleanOptionalAction, default=True,
                        help="one unmeasured run first (default; --quick: off)")
    parser.add_argument("--out", default=str(REPO / "pipelines" / "results" / "scale"))
    parser.add_argument("--quick", action="store_true",
                        help=f"runs {QUICK_RUNS}, 2 rounds of 2 parties, sequential unless --executors is given, into OUT/quick "
                             "(a smoke test)")
    args = parser.parse_args(argv)
    given = {a.split("=")[0] for a in (argv if argv is not None else sys.argv[1:])}
    if args.quick:
        args.rounds, args.clients_per_round, args.repeats = 2, 2, 1
        if "--runs" not in given:
            args.runs = QUICK_RUNS
        if "--executors" not in given:
            args.executors = "sequential"
        if not given & {"--warm-up", "--no-warm-up"}:
            args.warm_up = False
        if "--out" not in given:  # a smoke test's numbers never replace the real table
            args.out = str(Path(args.out) / "quick")
    args.runs = parse_runs(args.runs)
    args.executors = [e.strip() for e in args.executors.split(",") if e.strip()]
    unknown = [e for e in args.executors if e not in EXECUTORS]
    if unknown or not args.executors:
        raise FedlightError(f"--executors: choose from {', '.join(EXECUTORS)}; got {','.join(unknown) or 'none'}")
    for name in ("rounds", "clients_per_round", "batch_size", "threads", "ray_workers", "repeats"):
        if getattr(args, name) < 1:
            raise FedlightError(f"--{name.replace('_', '-')} must be at least 1, got {getattr(args, name)}")
    if not args.lr > 0 or not args.poll_interval > 0:
        raise FedlightError("--lr and --poll-interval must be positive")
    if not 0 <= args.val_fraction < 1:
        raise FedlightError(f"--val-fraction must be in [0, 1), got {args.val_fraction}")
    too_few = [f.label for f in args.runs if f.parties < args.clients_per_round]
    if too_few:
        raise FedlightError(f"--runs {too_few[0]}: fewer parties than --clients-per-round {args.clients_per_round}")
    args.worker_cpus = args.ray_worker_cpus or max(1, args.threads // args.ray_workers)
    if not args.worker_cpus > 0:
        raise FedlightError(f"--ray-worker-cpus must be positive, got {args.ray_worker_cpus}")
    # the executor flags go to fedlight only where Ray is asked for: a sequential-only run works with any fedlight
    args.executor_flags = "ray" in args.executors
    if not (Path(args.data_dir) / "train.npz").is_file():
        raise FedlightError(f"data directory not found (no train.npz): {args.data_dir}")
    if not Path("/proc/self/status").is_file():
        raise FedlightError("scale.py reads memory from /proc: it needs Linux")
    return args


def main() -> int:
    args = parse_args()
    if args.executor_flags:
        check_ray_support()
    with np.load(Path(args.data_dir) / "train.npz") as train:
        num_rows = len(train["y"])
    sizes = [rows_per_party(num_rows, f, args.val_fraction) for f in args.runs]
    for federation, size in zip(args.runs, sizes):
        if size.min() < 1 or len(size) != federation.parties:
            raise FedlightError(f"--runs {federation.label}: {num_rows} training rows make parties with no row")
    command = "python pipelines/scale.py " + " ".join(sys.argv[1:])
    loads_before = uptime()
    print(f"{len(args.runs)} federation(s) x {', '.join(args.executors)}; {num_rows} training rows; {loads_before}", flush=True)
    rows = run_all(args, sizes)
    loads_after = uptime()
    text = report(args, rows, (loads_before, loads_after), command)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    settings = {k: v for k, v in vars(args).items() if k != "runs"} | {"runs": [f.label for f in args.runs]}
    payload = {"command": command, "date": datetime.datetime.now().isoformat(timespec="seconds"), "settings": settings,
               "cpu_count": os.cpu_count(), "uptime_before": loads_before, "uptime_after": loads_after, "rows": rows}
    (out / "scale.json").write_text(json.dumps(payload, indent=2))
    (out / "scale.md").write_text(text)
    print(text)
    print(f"wrote {out / 'scale.md'} and {out / 'scale.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(guard(main))
