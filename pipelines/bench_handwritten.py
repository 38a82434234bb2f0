"""FedAvg on FEMNIST written by hand in plain PyTorch: the reference that ``pipelines/bench.py`` times.

This is the script a careful user would write without a framework. It
imports only torch and numpy (nothing from fedlight) and does the work of a
fedlight FedAvg run and nothing more:

* FEMNIST's ``train.npz``/``test.npz``, natural partition: one client per
  writer, every writer; pixels scaled to [0, 1] (1 = ink);
* ``small_cnn`` or ``leaf_cnn`` written out as an ``nn.Sequential`` with the
  same layer shapes as fedlight's built-ins;
* one global model and one reusable local model; each round samples
  ``--clients-per-round`` clients without replacement (a seeded numpy
  generator), copies the global weights into the local model, trains one
  local epoch of plain SGD over mini-batches taken straight from the client's
  tensors in ``torch.randperm`` order (no DataLoader, no validation split),
  and averages the local weights weighted by the clients' sample counts;
* the global model is evaluated on the test set every ``--eval-every`` rounds
  and after the last round.

It prints (and with ``--output-json`` writes) ``wall_time_s`` (from the
process start, imports included), ``rounds_time_s`` (the sum of the rounds'
times, each including its evaluation when it has one) and the final test
accuracy and loss.

    python pipelines/bench_handwritten.py --data-dir ../shared/data/femnist --model leaf_cnn --rounds 20
"""

import time

STARTED = time.perf_counter()  # before the imports: wall_time_s counts them

import argparse  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import sys  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from torch import nn  # noqa: E402

MODELS = ("small_cnn", "leaf_cnn")


def load_femnist(data_dir):
    """Per-writer training tensors and the pooled test set: (clients, test_x, test_y, num_classes).

    ``clients`` is a list of ``(x [n, 1, 28, 28] float32, y [n] int64)``, one per
    writer that has training rows, in writer order.
    """
    with np.load(os.path.join(data_dir, "train.npz")) as train, np.load(os.path.join(data_dir, "test.npz")) as test:
        train_x, train_y, writer = train["x"], train["y"], train["writer"]
        test_x, test_y = test["x"], test["y"]
    x = torch.from_numpy(train_x).float().div_(255.0).unsqueeze_(1)
    y = torch.from_numpy(train_y.astype(np.int64))
    order = np.argsort(writer, kind="stable")
    writers, starts, counts = np.unique(writer[order], return_index=True, return_counts=True)
    clients = []
    for start, count in zip(starts, counts):
        rows = torch.from_numpy(np.sort(order[start:start + count]))
        clients.append((x[rows].contiguous(), y[rows].contiguous()))
    num_classes = int(max(train_y.max(), test_y.max())) + 1
    tx = torch.from_numpy(test_x).float().div_(255.0).unsqueeze_(1)
    ty = torch.from_numpy(test_y.astype(np.int64))
    return clients, tx, ty, num_classes


def build_model(name, num_classes):
    """The two FEMNIST CNNs for 1x28x28 inputs."""
    if name == "small_cnn":  # 3x3 convs of 16 and 32 channels, dense 128
        return nn.Sequential(
            nn.Conv2d(1, 16, kernel_size=3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(16, 32, kernel_size=3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Flatten(), nn.Linear(32 * 7 * 7, 128), nn.ReLU(),
            nn.Linear(128, num_classes),
        )
    if name == "leaf_cnn":  # LEAF's CNN: 5x5 "same" convs of 32 and 64 channels, dense 2048
        return nn.Sequential(
            nn.Conv2d(1, 32, kernel_size=5, padding=2), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(32, 64, kernel_size=5, padding=2), nn.ReLU(), nn.MaxPool2d(2),
            nn.Flatten(), nn.Linear(64 * 7 * 7, 2048), nn.ReLU(),
            nn.Linear(2048, num_classes),
        )
    raise ValueError(f"unknown model {name!r}; choose from {', '.join(MODELS)}")


def train_local(model, x, y, *, batch_size, lr, generator):
    """One epoch of plain SGD over (x, y) in a random order; returns the number of steps."""
    model.train()
    optimizer = torch.optim.SGD(model.parameters(), lr=lr)
    order = torch.randperm(len(y), generator=generator)
    steps = 0
    for start in range(0, len(y), batch_size):
        rows = order[start:start + batch_size]
        optimizer.zero_grad(set_to_none=True)
        F.cross_entropy(model(x[rows]), y[rows]).backward()
        optimizer.step()
        steps += 1
    return steps


def fedavg_round(global_model, local_model, clients, chosen, *, batch_size, lr, generator):
    """Train each chosen client from the global weights and load their sample-weighted average into the global model."""
    global_state = {k: v.detach().clone() for k, v in global_model.state_dict().items()}
    total = sum(len(clients[c][1]) for c in chosen)
    average = {k: torch.zeros_like(v) for k, v in global_state.items()}
    for c in chosen:
        x, y = clients[c]
        local_model.load_state_dict(global_state)
        train_local(local_model, x, y, batch_size=batch_size, lr=lr, generator=generator)
        weight = len(y) / total
        with torch.no_grad():
            for k, v in local_model.state_dict().items():
                average[k].add_(v, alpha=weight)
    global_model.load_state_dict(average)


@torch.no_grad()
def evaluate(model, x, y, batch_size=2048):
    """Test loss and accuracy of ``model``."""
    model.eval()
    loss, correct = 0.0, 0
    for start in range(0, len(y), batch_size):
        logits = model(x[start:start + batch_size])
        target = y[start:start + batch_size]
        loss += float(F.cross_entropy(logits, target, reduction="sum"))
        correct += int((logits.argmax(1) == target).sum())
    model.train()
    return {"loss": loss / len(y), "accuracy": correct / len(y)}


def run(clients, test_x, test_y, num_classes, *, model_name, rounds, clients_per_round, batch_size, lr,
        eval_every, seed, log=None):
    """FedAvg for ``rounds`` rounds; returns (global model, summary without wall_time_s)."""
    if not 1 <= clients_per_round <= len(clients):
        raise ValueError(f"--clients-per-round must be in 1..{len(clients)}, got {clients_per_round}")
    torch.manual_seed(seed)
    global_model = build_model(model_name, num_classes)
    local_model = build_model(model_name, num_classes)
    sampler = np.random.default_rng(seed)
    batches = torch.Generator().manual_seed(seed)
    history, rounds_time = [], 0.0
    final = None
    for server_round in range(1, rounds + 1):
        start = time.perf_counter()
        chosen = sampler.choice(len(clients), size=clients_per_round, replace=False)
        fedavg_round(global_model, local_model, clients, chosen, batch_size=batch_size, lr=lr, generator=batches)
        row = {"round": server_round}
        if server_round % eval_every == 0 or server_round == rounds:
            final = evaluate(global_model, test_x, test_y)
            row.update({f"test_{k}": v for k, v in final.items()})
        row["round_time_s"] = time.perf_counter() - start
        rounds_time += row["round_time_s"]
        history.append(row)
        if log is not None and "test_accuracy" in row:
            log(f"round {server_round}/{rounds}: test accuracy {row['test_accuracy']:.4f} ({rounds_time:.1f}s)")
    summary = {
        "model": model_name, "rounds": rounds, "clients": len(clients), "clients_per_round": clients_per_round,
        "batch_size": batch_size, "lr": lr, "eval_every": eval_every, "seed": seed,
        "threads": torch.get_num_threads(), "final": final, "rounds_time_s": rounds_time, "history": history,
    }
    return global_model, summary


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", default="../shared/data/femnist")
    parser.add_argument("--model", choices=MODELS, default="small_cnn")
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--clients-per-round", type=int, default=10)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--lr", type=float, default=0.05)
    parser.add_argument("--eval-every", type=int, default=10)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="torch threads (default: all cores)")
    parser.add_argument("--output-json", help="write the summary here")
    parser.add_argument("--save-model", help="save the final global state_dict here (torch.save)")
    args = parser.parse_args(argv)
    for name in ("rounds", "batch_size", "eval_every", "threads"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1")
    if args.lr < 0:
        parser.error("--lr must be non-negative")
    if not os.path.isfile(os.path.join(args.data_dir, "train.npz")):
        parser.error(f"no train.npz in {args.data_dir}")
    torch.set_num_threads(args.threads)
    clients, test_x, test_y, num_classes = load_femnist(args.data_dir)
    try:
        model, summary = run(
            clients, test_x, test_y, num_classes, model_name=args.model, rounds=args.rounds,
            clients_per_round=args.clients_per_round, batch_size=args.batch_size, lr=args.lr,
            eval_every=args.eval_every, seed=args.seed, log=lambda line: print(line, file=sys.stderr, flush=True),
        )
    except ValueError as exc:
        parser.error(str(exc))
    if args.save_model:
        torch.save(model.state_dict(), args.save_model)
    summary["wall_time_s"] = time.perf_counter() - STARTED
    if args.output_json:
        with open(args.output_json, "w") as handle:
            json.dump(summary, handle, indent=2)
    print(f"{args.model}: {args.rounds} rounds, accuracy {summary['final']['accuracy']:.4f}, "
          f"rounds {summary['rounds_time_s']:.2f}s, process {summary['wall_time_s']:.2f}s ({summary['threads']} threads)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
