"""Benchmark: fedlight's FedAvg against a plain-PyTorch FedAvg doing the same work.

Both sides train the same model from the same initial weights on the same
FEMNIST clients, sampled the same way, with the same shuffled batches, plain
SGD, sample-weighted averaging and the same test evaluation. The difference
is what fedlight adds: a fresh Lightning Trainer per client fit, the strategy
interface, client validation and metric bookkeeping (MLflow is off on both
sides; it is measured separately below).

    python pipelines/bench.py --data-dir ../shared/data/femnist
"""

from __future__ import annotations

import argparse
import copy
import sys
import time

import numpy as np
import torch
import torch.nn.functional as F

from fedlight.client import make_loader
from fedlight.data import build_federated_data, load_source
from fedlight.errors import FedlightError
from fedlight.loop import FederatedLoop
from fedlight.metrics import evaluate
from fedlight.models import build_model
from fedlight.strategies import build_strategy


def plain_fedavg(model, data, *, rounds, clients_per_round, batch_size, lr, eval_every, sample_clients, seed):
    """Reference FedAvg in plain PyTorch (same sampling, batches and evaluation)."""
    local = copy.deepcopy(model)
    for server_round in range(1, rounds + 1):
        global_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
        states, sizes = [], []
        for cid in sample_clients(server_round):
            client = data.clients[cid]
            local.load_state_dict(global_state)
            local.train()
            optimizer = torch.optim.SGD(local.parameters(), lr=lr)
            loader_seed = int(np.random.SeedSequence([seed, server_round, cid]).generate_state(1)[0])
            for x, y in make_loader(client.train_x, client.train_y, batch_size=batch_size, seed=loader_seed):
                optimizer.zero_grad()
                F.cross_entropy(local(x), y).backward()
                optimizer.step()
            states.append({k: v.detach().clone() for k, v in local.state_dict().items()})
            sizes.append(client.num_train)
        averaged = {k: torch.zeros_like(v) for k, v in states[0].items()}
        for state, size in zip(states, sizes):
            for k, v in state.items():
                averaged[k].add_(v, alpha=size / sum(sizes))
        model.load_state_dict(averaged)
        if server_round % eval_every == 0 or server_round == rounds:
            last = evaluate(model, data.test_x, data.test_y, data.num_classes)
    return last


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", default="../shared/data/femnist")
    parser.add_argument("--models", default="small_cnn,leaf_cnn")
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--clients-per-round", type=int, default=10)
    parser.add_argument("--batch-size", type=int, default=10)
    parser.add_argument("--lr", type=float, default=0.1)
    parser.add_argument("--eval-every", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=2, help="alternating repeats; the best time of each side counts")
    args = parser.parse_args()
    try:
        data = build_federated_data(load_source("femnist", args.data_dir), partition="natural", seed=0)
    except FedlightError as exc:
        print(f"bench: error: {exc}", file=sys.stderr)
        return 2
    torch.set_num_threads(torch.get_num_threads())
    print(f"FEMNIST natural: {len(data.clients)} clients, {args.clients_per_round} per round, "
          f"{args.rounds} rounds, batch {args.batch_size}, torch threads {torch.get_num_threads()}")
    for model_name in args.models.split(","):
        torch.manual_seed(0)
        init = build_model(model_name, data.input_shape, data.num_classes)
        times = {"fedlight": [], "plain": []}
        for _ in range(args.repeats):
            loop = FederatedLoop(
                model=copy.deepcopy(init), data=data, strategy=build_strategy("fedavg"), rounds=args.rounds,
                clients_per_round=args.clients_per_round, local_epochs=1, batch_size=args.batch_size,
                lr=args.lr, eval_every=args.eval_every, seed=0,
            )
            start = time.perf_counter()
            loop.run()
            times["fedlight"].append(time.perf_counter() - start)
            fedlight_acc = loop.final_metrics()["accuracy"]
            loop.store.close()

            start = time.perf_counter()
            plain = plain_fedavg(
                copy.deepcopy(init), data, rounds=args.rounds, clients_per_round=args.clients_per_round,
                batch_size=args.batch_size, lr=args.lr, eval_every=args.eval_every,
                sample_clients=loop.sample_clients, seed=0,
            )
            times["plain"].append(time.perf_counter() - start)
        best = {k: min(v) for k, v in times.items()}
        per_round = {k: 1000 * v / args.rounds for k, v in best.items()}
        print(
            f"{model_name:10s} fedlight {best['fedlight']:7.2f}s ({per_round['fedlight']:.0f} ms/round, acc {fedlight_acc:.4f})  "
            f"plain {best['plain']:7.2f}s ({per_round['plain']:.0f} ms/round, acc {plain['accuracy']:.4f})  "
            f"ratio {best['fedlight'] / best['plain']:.3f}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
