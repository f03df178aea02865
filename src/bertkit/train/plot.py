"""The training-curve PNG drawn from ``metrics.jsonl``: train loss by step, eval metrics on a second axis."""

from __future__ import annotations

import json
from pathlib import Path

from bertkit.utils.atomic import atomic_path


def read_metrics(path: Path) -> list[dict]:
    """Records of metrics.jsonl; a last line cut short by a kill is dropped."""
    if not path.is_file():
        return []
    records = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return records


def plot_training_curve(metrics_file: Path, png: Path, metric: str | None = None) -> Path | None:
    """Draw train loss (and ``metric`` from eval records) against step; None when there is nothing yet."""
    records = read_metrics(metrics_file)
    train = [r for r in records if r.get("kind") == "train"]
    evals = [r for r in records if r.get("kind") == "eval"]
    if not train and not evals:
        return None
    import matplotlib

    matplotlib.use("Agg")  # files only; no display on a server
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4), dpi=100)
    if train:
        ax.plot([r["step"] for r in train], [r["loss"] for r in train], color="tab:blue", label="train loss")
    if evals and "loss" in evals[0]:
        ax.plot([r["step"] for r in evals], [r["loss"] for r in evals], "o--", color="tab:orange", label="eval loss")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("loss")
    ax.grid(alpha=0.3)
    handles, labels = ax.get_legend_handles_labels()
    if metric and evals and metric in evals[0]:
        ax2 = ax.twinx()
        ax2.plot([r["step"] for r in evals], [r[metric] for r in evals], "s-", color="tab:green",
                 label=f"eval {metric}")
        ax2.set_ylabel(metric)
        h2, l2 = ax2.get_legend_handles_labels()
        handles, labels = handles + h2, labels + l2
    ax.legend(handles, labels, loc="center right")
    ax.set_title(metrics_file.parent.name)
    fig.tight_layout()
    with atomic_path(png) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)
    return png
