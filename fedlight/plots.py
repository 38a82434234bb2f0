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


def alpha_series(history: Sequence[dict[str, float]]) -> dict[int, list[tuple[int, float]]]:
    """client id -> [(round, alpha), ...] from the loop's ``alpha/<client>`` metrics, in round order."""
    series: dict[int, list[tuple[int, float]]] = {}
    for row in history:
        for key, value in row.items():
            if key.startswith("alpha/"):
                series.setdefault(int(key.split("/", 1)[1]), []).append((row["round"], value))
    return series


def alpha_figure(series: dict[int, list[tuple[int, float]]], corrupted: Sequence[int] = ()) -> Figure:
    """Each party's trust weight alpha over the rounds it took part in (``series`` from :func:`alpha_series`)."""
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


def grouped_bar_figure(
    groups: Sequence[str], series: dict[str, Sequence[tuple[float, float]]], *, xlabel: str, ylabel: str, title: str
) -> Figure:
    """Bars of mean ± std: one cluster per group, one bar per series."""
    import numpy as np

    fig, ax = plt.subplots(figsize=(8, 4.5), constrained_layout=True)
    width = 0.8 / max(len(series), 1)
    x = np.arange(len(groups))
    for i, (label, values) in enumerate(series.items()):
        means = [v[0] for v in values]
        stds = [v[1] for v in values]
        bars = ax.bar(x + (i - (len(series) - 1) / 2) * width, means, width, yerr=stds, capsize=3, label=label)
        ax.bar_label(bars, labels=[f"{m:.3f}" for m in means], fontsize=7, padding=2)
    ax.set_xticks(x, groups)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.set_ylim(0, 1)
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=8, ncols=2)
    return fig


def band_figure(curves: dict[str, dict[str, Sequence[Sequence[float]]]], rounds: Sequence[int], title: str) -> Figure:
    """Mean and min-max band over seeds of test accuracy and loss against round, one line per label.

    ``curves[label]["accuracy"]`` is a list (one per seed) of per-round values.
    """
    import numpy as np

    fig, (ax_acc, ax_loss) = plt.subplots(1, 2, figsize=(11, 4.5), constrained_layout=True)
    for label, metrics in curves.items():
        for ax, key in ((ax_acc, "accuracy"), (ax_loss, "loss")):
            values = np.asarray(metrics[key], dtype=float)
            mean = values.mean(axis=0)
            line = ax.plot(rounds, mean, label=label)[0]
            ax.fill_between(rounds, values.min(axis=0), values.max(axis=0), color=line.get_color(), alpha=0.15)
    ax_acc.set_ylabel("test accuracy")
    ax_loss.set_ylabel("test loss (cross-entropy)")
    for ax in (ax_acc, ax_loss):
        ax.set_xlabel("round")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(title)
    return fig
