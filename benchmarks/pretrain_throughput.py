"""MLM pretraining throughput: bertkit against transformers' ``BertForMaskedLM`` on the same batches.

Model: the all-MiniLM-L6-v2 shape (6 layers, 384 hidden, 12 heads, FFN 1536, vocabulary 30,522) from the same
random initialisation (saved once by transformers, loaded by both). Data: python-docs packed into sequences of
128 tokens, batch 32, 30% masking (80/10/10), the same rows and masks for every engine. Optimizer: fused AdamW
lr 5e-4, no decay on biases/LayerNorm, clipping at 1.0, dropout 0.1 as the config says.

  transformers        ``BertForMaskedLM`` (SDPA attention), labels -100 off the masked positions: the decoder
                      (384 x 30,522) runs on every position, as in transformers' MLM examples
  bertkit             ``MaskedLM`` on the padding-free path, decoder on masked rows only, fp32
  bertkit-bf16        the same under bf16 autocast (this CPU has AVX-512 BF16)

Each engine runs in its own subprocess (2 threads); the first steps are warm-up and not timed. Peak memory is
the subprocess's maximum resident set. The bertkit engines also run ``--curve-steps`` steps so that the fp32 and
bf16 loss curves can be compared step by step.

    python benchmarks/pretrain_throughput.py [--steps 20] [--curve-steps 200] [--quick]
"""

from __future__ import annotations

import argparse
import itertools
import json
import platform
import resource
import tempfile
import time
from pathlib import Path

import numpy as np

from workers import spawn

HERE = Path(__file__).resolve().parent
ENGINES = ["transformers", "bertkit", "bertkit-bf16"]
WARMUP = 3
BATCH, SEQ, RATE, LR = 32, 128, 0.3, 5e-4
MODEL = dict(vocab_size=30522, hidden_size=384, num_hidden_layers=6, num_attention_heads=12, intermediate_size=1536,
             max_position_embeddings=512)


def init_dir() -> Path:
    """A random MiniLM-shaped BertForMaskedLM saved by transformers (the shared starting point)."""
    d = Path(tempfile.gettempdir()) / "bertkit-bench-mlm-init"
    if not (d / "model.safetensors").is_file():
        import torch
        from transformers import BertConfig, BertForMaskedLM

        torch.manual_seed(0)
        BertForMaskedLM(BertConfig(**MODEL)).save_pretrained(d)
    return d


def batches(n: int) -> list:
    """n masked batches of (BATCH, SEQ) rows from python-docs: (ids, masked ids, flat positions, targets)."""
    from bertkit.data.corpus import PackedSequences, build_token_cache
    from bertkit.data.masking import MaskingConfig, VocabInfo, mask_sequences
    from bertkit.data.tokenizer import WordPieceTokenizer
    from bertkit.hub import resolve_model_dir
    from bertkit.train.pretrain import default_cache_dir

    tok = WordPieceTokenizer.from_dir(resolve_model_dir())
    cache = build_token_cache(["python-docs"], tok, default_cache_dir(["python-docs"], tok))
    seqs = PackedSequences(cache, SEQ, tok.cls_id, tok.sep_id)
    rows = np.random.default_rng(0).permutation(len(seqs))[:n * BATCH]
    vocab, cfg = VocabInfo.from_tokenizer(tok), MaskingConfig(rate=RATE)
    out = []
    for i in range(n):
        r = rows[i * BATCH:(i + 1) * BATCH]
        m = mask_sequences(seqs.take(r), r, 0, 0, vocab, cfg)
        out.append(m)
    return out


def worker(engine: str, steps: int) -> dict:
    import torch

    torch.set_num_threads(2)
    from bertkit.utils.runtime import tune_allocator

    tune_allocator()
    d = init_dir()
    data = batches(steps)
    losses: list[float] = []
    step_times: list[float] = []
    if engine.startswith("bertkit"):
        from bertkit.model.attention import Packing
        from bertkit.model.mlm import MaskedLM
        from bertkit.train.plot import read_metrics
        from bertkit.train.pretrain import MLMBatch, mlm_loss
        from bertkit.train.trainer import TrainConfig, Trainer

        model = MaskedLM.from_pretrained(d)
        packing = Packing.from_lengths([SEQ] * BATCH)
        mb = [MLMBatch(torch.from_numpy(m.input_ids.reshape(-1)), packing, torch.from_numpy(m.positions),
                       torch.from_numpy(m.targets), BATCH * SEQ, len(m.positions)) for m in data]
        cfg = TrainConfig(max_steps=steps, batch_size=BATCH, lr=LR, warmup_ratio=0.0, schedule="constant",
                          progress=False, log_every=1, device="cpu", precision="bf16" if "bf16" in engine else "fp32")
        stamps: list[float] = []
        with tempfile.TemporaryDirectory() as out:
            trainer = Trainer(model, cfg, batches=lambda epoch: mb, loss_fn=mlm_loss, output_dir=out,
                              callbacks=[lambda t: stamps.append(time.perf_counter())])
            start = time.perf_counter()
            trainer.fit()
            losses = [r["loss"] for r in read_metrics(Path(out) / "metrics.jsonl") if r["kind"] == "train"]
        stamps.insert(0, start)
        step_times = [b - a for a, b in itertools.pairwise(stamps)]
    else:
        from transformers import BertForMaskedLM

        torch.manual_seed(0)
        model = BertForMaskedLM.from_pretrained(d, attn_implementation="sdpa").train()
        decay = [p for n, p in model.named_parameters() if p.ndim > 1]
        no_decay = [p for n, p in model.named_parameters() if p.ndim <= 1]
        opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.01}, {"params": no_decay, "weight_decay": 0.0}],
                                lr=LR, fused=True)
        for m in data:
            x = torch.from_numpy(m.input_ids)
            labels = torch.full((BATCH * SEQ,), -100, dtype=torch.long)
            labels[torch.from_numpy(m.positions)] = torch.from_numpy(m.targets)
            t0 = time.perf_counter()
            loss = model(input_ids=x, attention_mask=torch.ones_like(x), labels=labels.view(BATCH, SEQ)).loss
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            opt.zero_grad(set_to_none=True)
            step_times.append(time.perf_counter() - t0)
            losses.append(loss.item())
    timed = step_times[WARMUP:steps - 1]  # the last bertkit step also writes the final checkpoint
    return {"engine": engine, "steps": steps, "tokens_per_s": len(timed) * BATCH * SEQ / sum(timed),
            "step_seconds_median": float(np.median(timed)), "losses": losses,
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=20, help="steps of the transformers run")
    ap.add_argument("--curve-steps", type=int, default=200, help="steps of each bertkit run (loss curves)")
    ap.add_argument("--quick", action="store_true", help="8 steps each, nothing written")
    ap.add_argument("--worker", metavar="ENGINE")
    ap.add_argument("--out", default=str(HERE / "results" / "pretrain_throughput.json"))
    args = ap.parse_args()
    if args.worker:
        print(json.dumps(worker(args.worker, args.steps)))
        return
    steps = {"transformers": args.steps, "bertkit": args.curve_steps, "bertkit-bf16": args.curve_steps}
    if args.quick:
        steps = dict.fromkeys(ENGINES, 8)
    init_dir()
    runs = {}
    for e in ENGINES:
        runs[e] = spawn(__file__, ["--worker", e, "--steps", str(steps[e])])
        print(f"{e:<13} {runs[e]['tokens_per_s']:8.0f} tokens/s  peak RSS {runs[e]['peak_rss_mb']:,.0f} MB", flush=True)
    base = runs["transformers"]["tokens_per_s"]
    fp32, bf16 = np.array(runs["bertkit"]["losses"]), np.array(runs["bertkit-bf16"]["losses"])
    n = min(len(fp32), len(bf16))
    diff = np.abs(fp32[:n] - bf16[:n])
    report = {
        "machine": {"cpu": platform.processor() or platform.machine(), "threads": 2},
        "settings": {"model": MODEL, "batch": BATCH, "seq": SEQ, "mask_rate": RATE, "lr": LR, "warmup_steps": WARMUP,
                     "steps": steps},
        "tokens_per_s": {e: r["tokens_per_s"] for e, r in runs.items()},
        "ratio_vs_transformers": {e: r["tokens_per_s"] / base for e, r in runs.items()},
        "peak_rss_mb": {e: r["peak_rss_mb"] for e, r in runs.items()},
        "loss_curve": {"steps_compared": n, "fp32_first": float(fp32[0]), "fp32_last10_mean": float(fp32[-10:].mean()),
                       "bf16_last10_mean": float(bf16[n - 10:n].mean()), "max_abs_diff": float(diff.max()),
                       "mean_abs_diff_last50": float(diff[-50:].mean()),
                       "fp32_step_to_step_noise_last50": float(np.abs(np.diff(fp32[n - 51:n])).mean())},
        "runs": runs,
    }
    if not args.quick:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(report, indent=2) + "\n")
        plot_curves(runs, Path(args.out).with_suffix(".png"))
    print(markdown(report))


def plot_curves(runs: dict, png: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4), dpi=100)
    for e in ("bertkit", "bertkit-bf16", "transformers"):
        ax.plot(range(1, len(runs[e]["losses"]) + 1), runs[e]["losses"], label=e, lw=1)
    ax.set_xlabel("step")
    ax.set_ylabel("MLM loss")
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(png)
    plt.close(fig)


def markdown(report: dict) -> str:
    lines = ["| engine | tokens/s | vs transformers fp32 | peak RSS |", "|---|---|---|---|"]
    for e, v in report["tokens_per_s"].items():
        lines.append(f"| {e} | {v:,.0f} | {report['ratio_vs_transformers'][e]:.2f}x | "
                     f"{report['peak_rss_mb'][e]:,.0f} MB |")
    c = report["loss_curve"]
    lines.append(f"\nloss over {c['steps_compared']} steps: fp32 {c['fp32_first']:.3f} -> {c['fp32_last10_mean']:.3f}, "
                 f"bf16 -> {c['bf16_last10_mean']:.3f}; |fp32 - bf16| max {c['max_abs_diff']:.3f}, mean of last 50 "
                 f"{c['mean_abs_diff_last50']:.3f} (fp32 step-to-step noise {c['fp32_step_to_step_noise_last50']:.3f})")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
