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
