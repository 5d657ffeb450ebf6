"""PNG plots written beside results: the search's trials, and a retrain's learning curves."""

from __future__ import annotations

import io
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only; no display is needed or assumed
import matplotlib.pyplot as plt  # noqa: E402

from nas import results  # noqa: E402


def pareto_front(points: list[tuple[int, float]]) -> list[tuple[int, float]]:
    """Points no other point beats on both fewer parameters and higher accuracy, by parameters."""
    front: list[tuple[int, float]] = []
    for params, accuracy in sorted(points, key=lambda p: (p[0], -p[1])):
        if not front or accuracy > front[-1][1]:
            front.append((params, accuracy))
    return front


def _save(figure: plt.Figure, path: Path) -> None:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=110, bbox_inches="tight")
    plt.close(figure)
    results.write_bytes(path, buffer.getvalue())


def plot_search(rows: list[dict], max_params: int, path: Path) -> None:
    """Parameters vs validation accuracy (budget line, Pareto front), and the best value over trials.

    `rows`: one dict per finished trial: number, params, outcome ("complete", "pruned",
    "over budget", "failed") and accuracy (the final value; a pruned trial's last report; else None).
    """
    figure, (scatter, history) = plt.subplots(1, 2, figsize=(12, 4.5))
    completed = [r for r in rows if r["outcome"] == "complete"]
    if not completed:
        plt.close(figure)
        return
    # Weak pruned trials would stretch the axis; the range of the completed ones is what matters.
    bottom = min(r["accuracy"] for r in completed) - 1.0
    for outcome, colour, marker in (("complete", "tab:blue", "o"), ("pruned", "tab:orange", "v")):
        chosen = [r for r in rows if r["outcome"] == outcome]
        if chosen:
            ys = [max(r["accuracy"], bottom) for r in chosen]
            scatter.scatter([r["params"] for r in chosen], ys, c=colour, marker=marker, label=outcome, alpha=0.8)
    over = [r["params"] for r in rows if r["outcome"] == "over budget"]
    if over:
        scatter.scatter(over, [bottom] * len(over), c="tab:gray", marker="x", label="over budget (not trained)")
    front = pareto_front([(r["params"], r["accuracy"]) for r in completed])
    scatter.step([p for p, _ in front], [a for _, a in front], where="post", color="tab:green", label="Pareto front")
    scatter.axvline(max_params, color="tab:red", linestyle="--", label=f"budget {max_params:,}")
    scatter.set(xlabel="parameters", ylabel="validation accuracy %", title="Trials: size vs accuracy")
    scatter.legend(loc="lower right", fontsize=8)

    best: list[float] = []
    for r in completed:
        best.append(max(r["accuracy"], best[-1]) if best else r["accuracy"])
    numbers = [r["number"] for r in completed]
    history.scatter(numbers, [r["accuracy"] for r in completed], c="tab:blue", s=14, label="completed trial")
    history.step(numbers, best, where="post", color="tab:green", label="best so far")
    history.set(xlabel="trial", ylabel="validation accuracy %", title="Optimisation history", ylim=(bottom, None))
    history.legend(loc="lower right", fontsize=8)
    _save(figure, path)


def plot_training(history: list[dict], path: Path) -> None:
    """Loss and accuracy per epoch, train (augmented batches) vs validation."""
    figure, (loss, accuracy) = plt.subplots(1, 2, figsize=(11, 4))
    epochs = [h["epoch"] for h in history]
    loss.plot(epochs, [h["train_loss"] for h in history], marker="o", label="train")
    loss.plot(epochs, [h["val_loss"] for h in history], marker="o", label="validation")
    loss.set(xlabel="epoch", ylabel="cross-entropy", yscale="log", title="Loss")
    accuracy.plot(epochs, [h["train_accuracy"] for h in history], marker="o", label="train")
    accuracy.plot(epochs, [h["val_accuracy"] for h in history], marker="o", label="validation")
    accuracy.set(xlabel="epoch", ylabel="accuracy %", title="Accuracy", ylim=(97, 100))
    for axes in (loss, accuracy):
        axes.legend()
        axes.grid(alpha=0.3)
    _save(figure, path)
