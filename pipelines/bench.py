"""Benchmark: fedlight's FedAvg against a plain-PyTorch FedAvg doing the same work.

Both sides train the same model from the same initial weights on the same
FEMNIST clients, sampled the same way, with the same shuffled batches, plain
SGD, sample-weighted averaging and the same test evaluation. The difference
is what fedlight adds: a fresh Lightning Trainer per client fit, the strategy
interface, client validation and metric bookkeeping (MLflow is off on both
sides). A third run measures fedlight's FedAvg with sample-level DP-SGD
(Opacus, Poisson sampling, per-party accountants) against the plain one.

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
from fedlight.privacy import GRAD_SAMPLE_MODES, SampleLevelDP
from fedlight.state import ClientStateStore
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


def make_loop(init, data, args, privacy: bool = False) -> FederatedLoop:
    store = ClientStateStore()
    dp = None
    if privacy:
        dp = SampleLevelDP(store=store, clip=args.dp_clip, delta=1e-5, noise=args.dp_noise,
                           grad_sample_mode=args.dp_grad_sample_mode)
        dp.calibrate(batches_per_epoch=[1] * len(data.clients), local_epochs=1, rounds=args.rounds)
    return FederatedLoop(
        model=copy.deepcopy(init), data=data, strategy=build_strategy("fedavg"), rounds=args.rounds,
        clients_per_round=args.clients_per_round, local_epochs=1, batch_size=args.batch_size,
        lr=args.lr, eval_every=args.eval_every, seed=0, store=store, privacy=dp,
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", default="../shared/data/femnist")
    parser.add_argument("--models", default="small_cnn,leaf_cnn")
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--clients-per-round", type=int, default=10)
    parser.add_argument("--batch-size", type=int, default=10)
    parser.add_argument("--lr", type=float, default=0.1)
    parser.add_argument("--eval-every", type=int, default=10)
    parser.add_argument("--dp-noise", type=float, default=1.0)
    parser.add_argument("--dp-rounds", type=int, default=None,
                        help="rounds of the DP run (default: --rounds, so that both runs evaluate equally often)")
    parser.add_argument("--dp-clip", type=float, default=1.0)
    parser.add_argument("--dp-grad-sample-mode", choices=GRAD_SAMPLE_MODES, default="ghost",
                        help="ghost clipping (fedlight's default) or Opacus' per-sample gradient hooks")
    parser.add_argument("--repeats", type=int, default=2, help="alternating repeats; the best time of each side counts")
    args = parser.parse_args()
    args.dp_rounds = args.dp_rounds or args.rounds
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
        times = {"fedlight": [], "plain": [], "fedlight+dp": []}
        for _ in range(args.repeats):
            loop = make_loop(init, data, args)
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
            start = time.perf_counter()
            dp_loop = make_loop(init, data, args, privacy=True)
            dp_loop.rounds = args.dp_rounds
            dp_loop.run()
            # per-round time scaled to the same number of rounds as the other two
            times["fedlight+dp"].append((time.perf_counter() - start) * args.rounds / args.dp_rounds)
            dp_acc, dp_eps = dp_loop.final_metrics()["accuracy"], dp_loop.privacy.epsilon_max()
            dp_loop.store.close()
        best = {k: min(v) for k, v in times.items()}
        per_round = {k: 1000 * v / args.rounds for k, v in best.items()}
        print(
            f"{model_name:10s} fedlight {best['fedlight']:7.2f}s ({per_round['fedlight']:.0f} ms/round, acc {fedlight_acc:.4f})  "
            f"plain {best['plain']:7.2f}s ({per_round['plain']:.0f} ms/round, acc {plain['accuracy']:.4f})  "
            f"ratio {best['fedlight'] / best['plain']:.3f}"
        )
        print(
            f"{'':10s} DP-SGD ({args.dp_grad_sample_mode}, sigma {args.dp_noise}, clip {args.dp_clip}, {args.dp_rounds} rounds) "
            f"{per_round['fedlight+dp']:.0f} ms/round (acc {dp_acc:.4f}, epsilon_max {dp_eps:.2f})  "
            f"DP round / plain fedlight round {best['fedlight+dp'] / best['fedlight']:.2f}x"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
