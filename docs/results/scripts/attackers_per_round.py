"""How many Byzantine parties each round of `pipelines/byzantine.py` draws, beside a run's test accuracy.

The seeded Byzantine set (fedlight.attacks.ByzantineAttack) against the loop's seeded party
sampling (FederatedLoop.sample_clients), FEMNIST's 300 writers, 10 parties a round. For each
grid run of the given strategy and attack, prints the first round whose test accuracy falls
below --floor, and the attackers drawn in the rounds up to it.

    python docs/results/scripts/attackers_per_round.py --strategy multi_krum --attack gaussian
"""
import argparse
import json
from collections import Counter
from pathlib import Path
from types import SimpleNamespace

from fedlight.attacks import ByzantineAttack
from fedlight.loop import FederatedLoop

GRID = Path(__file__).resolve().parents[3] / "pipelines/results/byzantine/grid/runs.jsonl"


def attackers_by_round(seed: int, fraction: float, rounds: int, num_clients: int = 300, per_round: int = 10):
    members = set(ByzantineAttack("gaussian", num_clients=num_clients, fraction=fraction, seed=seed).byzantine)
    loop = SimpleNamespace(seed=seed, data=SimpleNamespace(clients=range(num_clients)), client_sampling="uniform",
                           clients_per_round=per_round)
    return [len(members.intersection(FederatedLoop.sample_clients(loop, r))) for r in range(1, rounds + 1)]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--strategy", default="multi_krum")
    parser.add_argument("--attack", default="gaussian")
    parser.add_argument("--fraction", type=float, default=0.2)
    parser.add_argument("--floor", type=float, default=0.3, help="test accuracy that counts as collapsed")
    args = parser.parse_args()
    for line in GRID.read_text().splitlines():
        run = json.loads(line)
        key = json.loads(run["key"])
        if (key["strategy"], key["attack"], key["fraction"]) != (args.strategy, args.attack, args.fraction):
            continue
        drawn = attackers_by_round(key["seed"], args.fraction, len(run["history"]))
        accuracy = [row["test_accuracy"] for row in run["history"]]
        collapsed = next((i for i, a in enumerate(accuracy) if i > 0 and a < args.floor <= max(accuracy[:i])), None)
        print(f"seed {key['seed']}: attackers a round over {len(drawn)} rounds {dict(sorted(Counter(drawn).items()))}; "
              f"first round with 3 or more: {next((i + 1 for i, n in enumerate(drawn) if n >= 3), None)}")
        print(f"  test accuracy rounds 1-8: {[round(a, 3) for a in accuracy[:8]]}; attackers rounds 1-8: {drawn[:8]}")
        if collapsed is not None:
            print(f"  accuracy fell below {args.floor} at round {collapsed + 1} after {accuracy[collapsed - 1]:.3f}; "
                  f"attackers that round: {drawn[collapsed]}")


if __name__ == "__main__":
    main()
