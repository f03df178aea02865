"""The pipeline's report: a markdown table, report.md, report.json and the Pareto plot (pareto.png).

One row per step (the original is step 0): its metric on the eval split and test, the points lost, size on disk,
parameters, sparsity and throughput, with ratios to step 0; a failed step's row carries its error. Every file is
written atomically, after every step.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml

from bertkit.utils.atomic import atomic_path, atomic_write_text

REPORT_JSON, REPORT_MD, PARETO_PNG = "report.json", "report.md", "pareto.png"


def _params(n: int) -> str:
    return f"{n / 1e6:.2f}M" if n >= 1e5 else f"{n:,}"


def format_table(report: dict[str, Any]) -> str:
    """The report's rows as a markdown table (what the CLI prints)."""
    split, metric = report["eval_split"], report["metric"]
    head = ["step", "model", f"{split} {metric}", f"test {metric}", "drop (pts)", "size MB", "size ×", "params",
            "sparsity", "tokens/s", "speed ×"]
    lines = ["| " + " | ".join(head) + " |", "|---:|---|" + "---:|" * (len(head) - 2)]
    for r in report["steps"]:
        if r["status"] != "ok":
            cells = [str(r["step"]), r["label"], f"**failed**: {r['error']}"] + [""] * (len(head) - 3)
        else:
            cells = [str(r["step"]), r["label"], f"{100 * r['eval']:.2f}",
                     "" if r["test"] is None else f"{100 * r['test']:.2f}", f"{r['drop_points']:.2f}",
                     f"{r['size_mb']:.2f}", f"{r['size_x']:.2f}", _params(r["parameters"]),
                     f"{100 * r['sparsity']:.0f}%", f"{r['tokens_per_s']:,.0f}", f"{r['speed_x']:.2f}"]
        lines.append("| " + " | ".join(c.replace("|", "\\|").replace("\n", " ") for c in cells) + " |")
    return "\n".join(lines)


def _markdown(report: dict[str, Any]) -> str:
    m, t = report["machine"], report["throughput"]
    failed = [r for r in report["steps"] if r["status"] != "ok"]
    return "\n".join([
        f"# Compression of {report['model']}", "",
        f"Status: **{report['status']}**" + (f" (step {failed[0]['step']}: {failed[0]['error']})" if failed else ""),
        "",
        f"{report['metric']} on {report['eval_split']} (and test) of {report['data']['source']}, split seed "
        f"{report['data']['split_seed']}; drop = points lost on {report['eval_split']} vs step 0. Size: the files of "
        f"each step directory. Throughput: engine tokens/s over {t['texts']} {t['split']} texts, median of "
        f"{t['timed_passes']} passes after a warm-up, on {m['cpu']} ({m['torch_threads']} threads, {m['device']}).",
        "", format_table(report), "", "## Recipe", "", "```yaml",
        yaml.safe_dump(report["recipe"], sort_keys=False).rstrip(), "```", ""])


def plot_pareto(report: dict[str, Any], png: Path) -> Path | None:
    """Two panels, metric vs size MB and metric vs speedup; every step a labelled point, the original a star."""
    rows = [r for r in report["steps"] if r["status"] == "ok"]
    if not rows:
        return None
    import matplotlib

    matplotlib.use("Agg")  # files only; no display on a server
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.5), dpi=100)
    y = [100 * r["eval"] for r in rows]
    for ax, key, xlabel in ((axes[0], "size_mb", "size on disk (MB)"), (axes[1], "speed_x", "speedup (×)")):
        x = [r[key] for r in rows]
        ax.plot(x, y, "-", color="0.75", zorder=1)
        ax.scatter(x[1:], y[1:], color="tab:blue", zorder=2)
        ax.scatter(x[:1], y[:1], marker="*", s=180, color="tab:red", zorder=3, label="original")
        for r, xi, yi in zip(rows, x, y, strict=True):
            ax.annotate(f"{r['step']} {r['label']}", (xi, yi), textcoords="offset points", xytext=(5, 5), fontsize=8)
        ax.set_xlabel(xlabel)
        ax.set_ylabel(f"{report['eval_split']} {report['metric']} (%)")
        ax.grid(alpha=0.3)
        ax.legend(loc="lower right")
    axes[0].invert_xaxis()  # smaller is better: the frontier runs to the right in both panels
    fig.suptitle(f"compression of {Path(report['model']).name}")
    fig.tight_layout()
    with atomic_path(png) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)
    return png


def write_report(out: Path, report: dict[str, Any]) -> None:
    """report.json, report.md and pareto.png, each written atomically."""
    atomic_write_text(out / REPORT_JSON, json.dumps(report, indent=2) + "\n")
    atomic_write_text(out / REPORT_MD, _markdown(report))
    plot_pareto(report, out / PARETO_PNG)
