"""Matplotlib figures logged as MLflow artifacts (headless backend)."""

from __future__ import annotations

from collections.abc import Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402


def convergence_figure(history: Sequence[dict[str, float]], title: str = "") -> Figure:
    """Test accuracy and loss (and mean local training loss) against round."""
    evaluated = [row for row in history if "test_accuracy" in row]
    fig, (ax_acc, ax_loss) = plt.subplots(1, 2, figsize=(10, 4), constrained_layout=True)
    ax_acc.plot([r["round"] for r in evaluated], [r["test_accuracy"] for r in evaluated], marker="o", ms=3, label="test accuracy")
    ax_acc.set_xlabel("round")
    ax_acc.set_ylabel("accuracy")
    ax_acc.set_ylim(0, 1)
    ax_acc.grid(alpha=0.3)
    ax_acc.legend()
    ax_loss.plot([r["round"] for r in evaluated], [r["test_loss"] for r in evaluated], marker="o", ms=3, label="test loss")
    trained = [row for row in history if "train_loss" in row]
    ax_loss.plot([r["round"] for r in trained], [r["train_loss"] for r in trained], alpha=0.6, label="mean local train loss")
    ax_loss.set_xlabel("round")
    ax_loss.set_ylabel("cross-entropy")
    ax_loss.grid(alpha=0.3)
    ax_loss.legend()
    if title:
        fig.suptitle(title)
    return fig


def alpha_figure(history: Sequence[dict[str, float]], corrupted: Sequence[int] = ()) -> Figure | None:
    """Each party's trust weight alpha over the rounds it took part in; None without alphas."""
    series: dict[int, list[tuple[int, float]]] = {}
    for row in history:
        for key, value in row.items():
            if key.startswith("alpha/"):
                series.setdefault(int(key.split("/", 1)[1]), []).append((row["round"], value))
    if not series:
        return None
    bad = set(corrupted)
    fig, ax = plt.subplots(figsize=(8, 4.5), constrained_layout=True)
    for cid, points in sorted(series.items()):
        rounds, alphas = zip(*points)
        ax.plot([0, *rounds], [1.0, *alphas], marker=".", ms=4, lw=0.8,
                color="tab:red" if cid in bad else "tab:gray", alpha=0.8 if cid in bad else 0.35)
    ax.plot([], [], color="tab:gray", label="clean party")
    if bad:
        ax.plot([], [], color="tab:red", label="corrupted party")
    ax.set_xlabel("round")
    ax.set_ylabel("trust weight alpha")
    ax.set_title("Adaptive aggregator: alpha per party (starts at 1)")
    ax.grid(alpha=0.3)
    ax.legend()
    return fig


def optimization_figure(study) -> Figure:
    """Objective value of each complete trial and the best so far (the first objective)."""
    import optuna

    trials = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
    numbers = [t.number for t in trials]
    values = [t.values[0] for t in trials]
    maximize = study.directions[0] == optuna.study.StudyDirection.MAXIMIZE
    best, running = [], None
    for value in values:
        running = value if running is None else (max(running, value) if maximize else min(running, value))
        best.append(running)
    fig, ax = plt.subplots(figsize=(7, 4), constrained_layout=True)
    ax.scatter(numbers, values, s=18, label="trial")
    ax.step(numbers, best, where="post", color="tab:red", label="best so far")
    ax.set_xlabel("trial number")
    ax.set_ylabel("test accuracy" if maximize else "objective")
    ax.set_title(f"Optuna study {study.study_name}: optimisation history")
    ax.grid(alpha=0.3)
    ax.legend()
    return fig
