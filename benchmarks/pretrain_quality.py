"""Does pretraining help? Three measurements, one script, each step a `bertkit` command in a subprocess.

1. ``tiny-cpu``: the recipe as written (4 layers, 256 wide, 8k vocabulary trained on the corpus, 30% masking,
   bf16, a 20-minute budget on 2 cores); held-out masked-token accuracy.
2. Fine-tune on ``bbc-news`` (recipes/bbc-news.yaml settings, same seed) from (a) the pretrained tiny model and
   (b) the same architecture and tokenizer from random initialisation; test accuracy and macro-F1 of each.
3. Continued MLM pretraining of all-MiniLM-L6-v2 (a sentence model shipped without an MLM head) on the corpus:
   held-out MLM accuracy at the start (a new, untrained head), after training the head alone (encoder frozen:
   what the encoder already knows), and after training everything for the same budget.

    python benchmarks/pretrain_quality.py [--budget 20m] [--continued-budget 5m] [--reuse]

The corpus (python-docs + BBC News + tweets) contains the BBC articles' text, test split included, without
labels: the fine-tuning comparison measures unsupervised pretraining on in-domain text.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
RUNS = HERE.parent / "runs" / "pretrain_quality"


def bertkit(*args: str) -> float:
    t0 = time.perf_counter()
    cmd = [sys.executable, "-m", "bertkit.cli.main", "-q", *args]
    print("$ bertkit " + " ".join(args), flush=True)
    done = subprocess.run(cmd, check=False)
    if done.returncode != 0:
        raise SystemExit(f"command failed ({done.returncode}): {' '.join(cmd)}")
    return time.perf_counter() - t0


def random_init_copy(pretrained: Path, out: Path) -> None:
    """The pretrained model's architecture and tokenizer with freshly initialised weights."""
    import torch

    from bertkit.data.tokenizer import WordPieceTokenizer
    from bertkit.model.bert import BertModel
    from bertkit.model.config import EncoderConfig
    from bertkit.model.heads import strip_task_keys
    from bertkit.model.weights import save_weights

    cfg = EncoderConfig.from_json_file(pretrained / "config.json")
    strip_task_keys(cfg)
    cfg.extra["architectures"] = ["BertModel"]
    torch.manual_seed(42)
    model = BertModel(cfg, add_pooler=False)
    out.mkdir(parents=True, exist_ok=True)
    cfg.save(out)
    save_weights(model, out)
    WordPieceTokenizer.from_dir(pretrained).save(out)


def run_once(out: Path, reuse: bool, *args: str) -> dict:
    """``bertkit *args`` writing ``out``, unless ``reuse`` and ``out`` holds a finished run; its results.json."""
    if not (reuse and (out / "results.json").is_file()):
        bertkit(*args)
    return json.loads((out / "results.json").read_text())


def finetune(model: Path, out: Path, lr: str, reuse: bool) -> dict:
    r = run_once(out, reuse, "finetune", "--recipe", str(HERE.parent / "recipes" / "bbc-news.yaml"), "--model",
                 str(model), "--output", str(out), "--overwrite", "--no-progress", "--lr", lr)
    return {"test": r["test"], "dev": r["dev"], "train_seconds": r["train_seconds"]}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--budget", default="20m", help="tiny-cpu pretraining budget")
    ap.add_argument("--continued-budget", default="5m", help="each continued-pretraining run's budget")
    ap.add_argument("--reuse", action="store_true", help="keep runs in runs/pretrain_quality that finished")
    ap.add_argument("--out", default=str(HERE / "results" / "pretrain_quality.json"))
    args = ap.parse_args()
    report: dict = {"settings": {"budget": args.budget, "continued_budget": args.continued_budget}}
    tiny = RUNS / "tiny-cpu"
    r = run_once(tiny, args.reuse, "pretrain", "--recipe", "tiny-cpu", "--output", str(tiny), "--overwrite",
                 f"training.time_budget={args.budget}", "training.progress=false")
    report["tiny_cpu"] = {k: r[k] for k in ("steps", "train_seconds", "train_tokens", "train_tokens_per_s",
                                            "eval_at_start", "eval", "global_batch_size")}
    print(json.dumps(report["tiny_cpu"], indent=1), flush=True)

    random_init_copy(tiny, RUNS / "tiny-random")
    # the recipe's lr (1e-4, chosen for MiniLM) and 1e-3, which a small or random model may prefer
    report["bbc_finetune"] = {f"{init} lr {lr}": finetune(model, RUNS / f"ft-{init}-{lr}", lr, args.reuse)
                              for lr in ("1e-4", "1e-3")
                              for init, model in (("pretrained", tiny), ("random_init", RUNS / "tiny-random"))}
    print(json.dumps(report["bbc_finetune"], indent=1), flush=True)

    cont = {}
    # the head alone at the full run's lr and at 1e-3 (a new head may want more), then everything
    for name, extra in (("head_only", ["freeze_encoder=true"]),
                        ("head_only_lr_1e-3", ["freeze_encoder=true", "training.lr=1e-3"]), ("full", [])):
        out = RUNS / f"minilm-{name}"
        r = run_once(out, args.reuse, "pretrain", "--recipe", "tiny-cpu", "--output", str(out), "--overwrite",
                     "init_from=all-MiniLM-L6-v2", "model={}", "training.lr=1e-4",
                     f"training.time_budget={args.continued_budget}", "training.batch_size=32", "global_batch_size=32",
                     "training.eval_every=50", "training.progress=false", *extra)
        cont[name] = {k: r[k] for k in ("steps", "train_seconds", "train_tokens_per_s", "eval_at_start", "eval")}
    report["minilm_continued"] = cont
    print(json.dumps(cont, indent=1), flush=True)
    Path(args.out).write_text(json.dumps(report, indent=2) + "\n")
    print(markdown(report))


def markdown(report: dict) -> str:
    t = report["tiny_cpu"]
    ft = report["bbc_finetune"]
    c = report["minilm_continued"]
    lines = [
        f"tiny-cpu: {t['steps']} steps in {t['train_seconds']:.0f} s ({t['train_tokens_per_s']:,.0f} tokens/s), "
        f"held-out masked-token accuracy {t['eval_at_start']['mlm_accuracy']:.3f} -> {t['eval']['mlm_accuracy']:.3f}"
        f" (loss {t['eval_at_start']['loss']:.2f} -> {t['eval']['loss']:.2f})",
        "",
        "| bbc-news fine-tune of the tiny-cpu architecture | test accuracy | test macro-F1 |",
        "|---|---|---|",
    ]
    for k in ft:
        lines.append(f"| {k} | {ft[k]['test']['accuracy']:.4f} | {ft[k]['test']['macro_f1']:.4f} |")
    lines += ["", "| all-MiniLM-L6-v2 continued MLM | steps | held-out MLM accuracy (start -> end) |", "|---|---|---|"]
    for k, v in c.items():
        lines.append(f"| {k} | {v['steps']} | {v['eval_at_start']['mlm_accuracy']:.3f} -> "
                     f"{v['eval']['mlm_accuracy']:.3f} |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
