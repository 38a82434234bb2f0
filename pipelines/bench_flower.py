"""FedAvg on FEMNIST on Flower 1.42's simulation engine: the Flower side of ``pipelines/bench.py``.

The same work as ``pipelines/bench_handwritten.py`` (and fedlight's FedAvg
in the benchmark), written the way Flower 1.42's PyTorch quickstart writes
it, with Flower's message API (``flwr.serverapp.ServerApp`` running
``flwr.serverapp.strategy.FedAvg``, a ``flwr.clientapp.ClientApp``) on the
Ray-backed Simulation Runtime (``flwr.simulation.run_simulation``):

* one virtual SuperNode per FEMNIST writer (natural partition, all of them);
  the node's ``partition-id`` indexes the writers in writer order;
* the client (a ClientApp's ``train`` function) loads the global arrays into
  its model and trains one local epoch of plain SGD, mini-batches taken
  straight from the writer's tensors in ``torch.randperm`` order (the
  hand-written script's ``train_local``; no DataLoader, no validation split),
  and replies with its arrays and ``num-examples``;
* the server samples ``--clients-per-round`` nodes a round (Flower's own
  sampling), averages the replies weighted by ``num-examples`` (Flower's
  ``FedAvg``; a round with a failed client stops the run) and evaluates the global model on the test set every
  ``--eval-every`` rounds and after the last (``evaluate_fn``, centralised;
  no federated evaluation).

The models and the data loading are the hand-written script's (imported,
not copied), with the same initial weights (``torch.manual_seed(seed)``).
Each Ray actor loads FEMNIST once, on its first message. ``--client-cpus``
is Flower's ``client_resources["num_cpus"]``: the default, every core, gives
one actor using all ``--threads`` torch threads, as the other sides of the
benchmark; half of it gives two actors side by side.

Nothing here needs the internet: Flower's telemetry and Ray's usage stats
are switched off (``FLWR_TELEMETRY_ENABLED=0``, ``RAY_USAGE_STATS_ENABLED=0``)
and Ray runs a local cluster without its dashboard.

Reported (printed, and written with ``--output-json``) like the hand-written
script: ``wall_time_s`` from the process start (imports, Ray's start-up and
shut-down included), ``rounds_time_s`` (the sum of the rounds' times, each
with its evaluation when it has one) and the final test accuracy and loss;
and ``startup_s``, the time from calling ``run_simulation`` until a warm-up
message has been answered (Ray's start-up, the actor pool, the first
actor's data loading), which ``rounds_time_s`` therefore leaves out.

    python pipelines/bench_flower.py --data-dir ../shared/data/femnist --model leaf_cnn --rounds 20
"""

import time

STARTED = time.perf_counter()  # before the imports: wall_time_s counts them

import argparse  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import random  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402

# before flwr and ray are imported: both read these at import time
os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO", "0")
sys.path.insert(0, str(Path(__file__).resolve().parent))  # bench_handwritten, here and in the Ray actors

if __name__ == "__main__":
    # Run as the module ``bench_flower`` (imported here, once) so that Ray pickles the ClientApp's functions by
    # reference (the actors import this file) and each actor keeps its loaded data across messages.
    import bench_flower

    sys.exit(bench_flower.main(started=STARTED))

import bench_handwritten as hw  # noqa: E402
import torch  # noqa: E402
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MessageType, MetricRecord, RecordDict  # noqa: E402
from flwr.clientapp import ClientApp  # noqa: E402
from flwr.serverapp import Grid, ServerApp  # noqa: E402
from flwr.serverapp.strategy import FedAvg  # noqa: E402

# One copy per Ray actor process: the writers' tensors and a model to train in, loaded on the first message.
_ACTOR: dict = {}


def batch_generator(seed: int, server_round: int, partition_id: int) -> torch.Generator:
    """The generator of one client's batch order in one round (a pure function of its arguments)."""
    return torch.Generator().manual_seed(seed * 1_000_003 + server_round * 10_007 + partition_id)


def _actor_state(config: ConfigRecord) -> dict:
    key = (config["data-dir"], config["model"])
    if _ACTOR.get("key") != key:
        torch.set_num_threads(int(config["threads"]))
        clients, _, _, num_classes = hw.load_femnist(config["data-dir"])
        _ACTOR.update(key=key, clients=clients, model=hw.build_model(config["model"], num_classes))
    return _ACTOR


client_app = ClientApp()


@client_app.train()
def client_train(msg: Message, context: Context) -> Message:
    """One local epoch of plain SGD from the global arrays on this node's writer."""
    config = msg.content["config"]
    state = _actor_state(config)
    partition_id = int(context.node_config["partition-id"])
    x, y = state["clients"][partition_id]
    model = state["model"]
    model.load_state_dict(msg.content["arrays"].to_torch_state_dict())
    generator = batch_generator(int(config["seed"]), int(config["server-round"]), partition_id)
    hw.train_local(model, x, y, batch_size=int(config["batch-size"]), lr=float(config["lr"]), generator=generator)
    content = RecordDict({"arrays": ArrayRecord(model.state_dict()), "metrics": MetricRecord({"num-examples": len(y)})})
    return Message(content=content, reply_to=msg)


@client_app.query()
def client_warm_up(msg: Message, context: Context) -> Message:
    """Load the data in the actor that answers; the server sends one before timing the rounds."""
    _actor_state(msg.content["config"])
    return Message(content=RecordDict({"metrics": MetricRecord({"ready": 1})}), reply_to=msg)


class CheckedFedAvg(FedAvg):
    """Flower's FedAvg, stopping the run where a round lost a client (a benchmark must not average fewer silently)."""

    def aggregate_train(self, server_round, replies):
        replies = list(replies)
        errors = [m.error.reason for m in replies if m.has_error()]
        if errors or len(replies) != self.min_train_nodes:
            raise RuntimeError(f"round {server_round}: {len(replies) - len(errors)} of {self.min_train_nodes} clients "
                               f"replied{'; ' + errors[0] if errors else ''}")
        return super().aggregate_train(server_round, replies)


def make_server_app(args: argparse.Namespace, num_nodes: int, test_x, test_y, num_classes: int, out: dict) -> ServerApp:
    """The ServerApp: a warm-up message, then Flower's FedAvg for ``args.rounds`` rounds; fills ``out``."""
    server_app = ServerApp()

    @server_app.main()
    def main(grid: Grid, context: Context) -> None:
        random.seed(args.seed)  # Flower samples nodes with the random module
        config = ConfigRecord({"data-dir": args.data_dir, "model": args.model, "threads": args.threads,
                               "seed": args.seed, "batch-size": args.batch_size, "lr": args.lr})
        while len(nodes := sorted(grid.get_node_ids())) < num_nodes:  # the runtime registers them beside this thread
            time.sleep(0.01)
        node = nodes[0]
        replies = list(grid.send_and_receive(
            [Message(content=RecordDict({"config": config}), message_type=MessageType.QUERY, dst_node_id=node)]))
        if len(replies) != 1 or replies[0].has_error():
            raise RuntimeError(f"the warm-up message failed: {replies[0].error.reason if replies else 'no reply'}")
        out["startup_s"] = time.perf_counter() - out["simulation_started"]

        torch.manual_seed(args.seed)
        global_model = hw.build_model(args.model, num_classes)
        out["history"], out["final"] = [], None
        clock = {}

        def evaluate(server_round: int, arrays: ArrayRecord) -> MetricRecord | None:
            # called before round 1 (server_round 0) and after every round: the time between two calls is a round
            if server_round == 0:
                clock["last"] = time.perf_counter()
                return None
            row = {"round": server_round}
            metrics = None
            if server_round % args.eval_every == 0 or server_round == args.rounds:
                global_model.load_state_dict(arrays.to_torch_state_dict())
                out["final"] = hw.evaluate(global_model, test_x, test_y)
                row.update({f"test_{k}": v for k, v in out["final"].items()})
                metrics = MetricRecord(out["final"])
                print(f"round {server_round}/{args.rounds}: test accuracy {out['final']['accuracy']:.4f}",
                      file=sys.stderr, flush=True)
            now = time.perf_counter()
            row["round_time_s"], clock["last"] = now - clock["last"], now
            out["history"].append(row)
            return metrics

        strategy = CheckedFedAvg(fraction_train=args.clients_per_round / num_nodes,
                                 min_train_nodes=args.clients_per_round, min_available_nodes=num_nodes,
                                 fraction_evaluate=0.0)
        result = strategy.start(grid=grid, initial_arrays=ArrayRecord(global_model.state_dict()),
                                num_rounds=args.rounds, train_config=config, evaluate_fn=evaluate)
        out["final_state"] = result.arrays.to_torch_state_dict()

    return server_app


def run(args: argparse.Namespace) -> dict:
    """The whole simulation; returns the summary without ``wall_time_s``."""
    import flwr
    import ray
    from flwr.simulation import run_simulation

    clients, test_x, test_y, num_classes = hw.load_femnist(args.data_dir)
    if not 1 <= args.clients_per_round <= len(clients):
        raise ValueError(f"--clients-per-round must be in 1..{len(clients)}, got {args.clients_per_round}")
    num_clients = len(clients)
    del clients  # the actors load their own copy
    out: dict = {}
    backend_config = {"client_resources": {"num_cpus": args.client_cpus, "num_gpus": 0.0},
                      "init_args": {"num_cpus": args.threads, "include_dashboard": False, "logging_level": "ERROR"}}
    out["simulation_started"] = time.perf_counter()
    run_simulation(server_app=make_server_app(args, num_clients, test_x, test_y, num_classes, out), client_app=client_app,
                   num_supernodes=num_clients, backend_config=backend_config)
    ray.shutdown()
    if out.get("final") is None or len(out.get("history", [])) != args.rounds:
        raise RuntimeError(f"the simulation ended after {len(out.get('history', []))} of {args.rounds} rounds")
    return {
        "model": args.model, "rounds": args.rounds, "clients": num_clients,
        "clients_per_round": args.clients_per_round, "batch_size": args.batch_size, "lr": args.lr,
        "eval_every": args.eval_every, "seed": args.seed, "threads": args.threads, "client_cpus": args.client_cpus,
        "flwr_version": flwr.__version__, "ray_version": ray.__version__, "final": out["final"],
        "startup_s": out["startup_s"], "rounds_time_s": sum(row["round_time_s"] for row in out["history"]),
        "history": out["history"], "final_state": out["final_state"],
    }


def main(argv=None, started: float | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", default="../shared/data/femnist")
    parser.add_argument("--model", choices=hw.MODELS, default="small_cnn")
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--clients-per-round", type=int, default=10)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--lr", type=float, default=0.05)
    parser.add_argument("--eval-every", type=int, default=10)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1,
                        help="torch threads per actor, and the CPUs of Ray's local cluster (default: all cores)")
    parser.add_argument("--client-cpus", type=float, default=None,
                        help="Flower's client_resources num_cpus (default: --threads, one actor at a time)")
    parser.add_argument("--output-json", help="write the summary here")
    parser.add_argument("--save-model", help="save the final global state_dict here (torch.save)")
    args = parser.parse_args(argv)
    for name in ("rounds", "batch_size", "eval_every", "threads"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1")
    if args.lr < 0:
        parser.error("--lr must be non-negative")
    if args.client_cpus is None:
        args.client_cpus = float(args.threads)
    if not 0 < args.client_cpus <= args.threads:
        parser.error(f"--client-cpus must be in (0, --threads {args.threads}], got {args.client_cpus:g}")
    if not os.path.isfile(os.path.join(args.data_dir, "train.npz")):
        parser.error(f"no train.npz in {args.data_dir}")
    args.data_dir = os.path.abspath(args.data_dir)  # the actors resolve it, not this process
    torch.set_num_threads(args.threads)
    try:
        summary = run(args)
    except ValueError as exc:
        parser.error(str(exc))
    final_state = summary.pop("final_state")
    if args.save_model:
        torch.save(final_state, args.save_model)
    summary["wall_time_s"] = time.perf_counter() - (STARTED if started is None else started)
    if args.output_json:
        with open(args.output_json, "w") as handle:
            json.dump(summary, handle, indent=2)
    print(f"{args.model}: {args.rounds} rounds on Flower {summary['flwr_version']}, accuracy "
          f"{summary['final']['accuracy']:.4f}, rounds {summary['rounds_time_s']:.2f}s, start-up "
          f"{summary['startup_s']:.2f}s, process {summary['wall_time_s']:.2f}s ({summary['threads']} threads)")
    return 0

