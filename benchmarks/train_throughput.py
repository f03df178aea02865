"""Fine-tuning throughput: bertkit's training engine against a plain transformers training loop.

Both fine-tune all-MiniLM-L6-v2 with a sequence-classification head, fp32, 2 threads, on the same
batches of the same examples (seeded shuffle), with the same recipe: AdamW (lr 5e-5, no decay on
biases/LayerNorm, the fused kernel that transformers' Trainer picks by default for torch >= 2.8),
linear schedule, clipping at 1.0, dropout 0.1 as configured by the model.

  bertkit        ``bertkit.train.trainer.Trainer`` on packed batches (the padding-free path)
  transformers   ``BertForSequenceClassification`` (SDPA attention), each batch padded to its
                 longest sequence as ``DataCollatorWithPadding`` does; a plain loop of
                 forward, backward, clip, step, schedule, zero_grad

Workloads: ``tweets`` (tweet-sentiment training examples at their natural lengths, batch 32) and
``bbc`` (BBC News articles truncated to 128 tokens, batch 16: nearly no padding to save).
Tokens/s counts real (non-pad) tokens. Each engine runs in its own subprocess; engines alternate
round by round and the ratio is the median of per-round ratios. Warm-up steps are not timed.

    python benchmarks/train_throughput.py [--rounds 3] [--steps 15] [--quick]
"""

from __future__ import annotations

import argparse
import itertools
import json
import platform
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

from workers import spawn

HERE = Path(__file__).resolve().parent
ENGINES = ["transformers", "bertkit"]
WORKLOADS = {"tweets": ("tweet-sentiment", 32), "bbc": ("bbc-news", 16)}
WARMUP = 3


def workload(name: str, n_batches: int) -> tuple[list[list[int]], list[int], int]:
    """(token ids per example, example labels, batch size): the first n_batches * bs shuffled examples."""
    from bertkit.data.tasks import load_builtin
    from bertkit.data.tokenizer import WordPieceTokenizer
    from bertkit.hub import resolve_model_dir

    dataset, bs = WORKLOADS[name]
    train = load_builtin(dataset)["train"]
    order = np.random.default_rng(0).permutation(len(train))[:n_batches * bs]
    names = train.label_names()
    tok = WordPieceTokenizer.from_dir(resolve_model_dir())
    ids = tok.encode([train.texts[i] for i in order], max_length=128).ids
    return ids, [names.index(train.labels[i]) for i in order], bs


def worker(engine: str, name: str, steps: int) -> dict:
    import torch

    torch.set_num_threads(2)
    from bertkit.hub import resolve_model_dir
    from bertkit.utils.runtime import tune_allocator

    tune_allocator()
    ids, labels, bs = workload(name, steps + WARMUP)
    num_labels = max(labels) + 1
    groups = [list(range(s, s + bs)) for s in range(0, len(ids), bs)]
    tokens = [sum(len(ids[i]) for i in g) for g in groups]
    step_times: list[float] = []
    if engine == "bertkit":
        from bertkit.data.features import Features, make_batch
        from bertkit.model.weights import load_pretrained
        from bertkit.task_model import build_head
        from bertkit.train.trainer import TrainConfig, Trainer

        torch.manual_seed(0)
        encoder, _ = load_pretrained(resolve_model_dir())
        head = build_head(encoder, "classification", num_labels)
        feats = Features(ids, [[0] * len(x) for x in ids], labels, None, 0)
        batches = [make_batch(feats, g) for g in groups]
        stamps: list[float] = []
        cfg = TrainConfig(max_steps=len(groups), batch_size=bs, lr=5e-5, warmup_ratio=0.0, progress=False,
                          log_every=1000, device="cpu")
        with tempfile.TemporaryDirectory() as out:
            trainer = Trainer(head, cfg, batches=lambda epoch: batches,
                              loss_fn=lambda m, b: m.loss(m(b.input_ids, b.packing, b.token_type_ids), b.labels),
                              output_dir=out, callbacks=[lambda t: stamps.append(time.perf_counter())])
            start = time.perf_counter()
            trainer.fit()
        stamps.insert(0, start)
        step_times = [b - a for a, b in itertools.pairwise(stamps)]
    else:
        from transformers import BertForSequenceClassification, get_linear_schedule_with_warmup

        torch.manual_seed(0)
        model = BertForSequenceClassification.from_pretrained(resolve_model_dir(), num_labels=num_labels,
                                                              attn_implementation="sdpa").train()
        decay = [p for n, p in model.named_parameters() if p.ndim > 1]
        no_decay = [p for n, p in model.named_parameters() if p.ndim <= 1]
        opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.01}, {"params": no_decay, "weight_decay": 0.0}],
                                lr=5e-5, fused=True)
        sched = get_linear_schedule_with_warmup(opt, 0, len(groups))
        padded = []
        for g in groups:  # DataCollatorWithPadding: pad to the longest sequence of the batch
            width = max(len(ids[i]) for i in g)
            x = torch.zeros(len(g), width, dtype=torch.long)
            mask = torch.zeros(len(g), width, dtype=torch.long)
            for r, i in enumerate(g):
                x[r, :len(ids[i])] = torch.tensor(ids[i])
                mask[r, :len(ids[i])] = 1
            padded.append((x, mask, torch.tensor([labels[i] for i in g])))
        for x, mask, y in padded:
            t0 = time.perf_counter()
            loss = model(input_ids=x, attention_mask=mask, labels=y).loss
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            sched.step()
            opt.zero_grad(set_to_none=True)
            step_times.append(time.perf_counter() - t0)
    timed = slice(WARMUP, len(groups) - 1)  # the last bertkit step also writes the final checkpoint
    tok = sum(tokens[timed])
    secs = sum(step_times[timed])
    padded_tokens = sum(len(g) * max(len(ids[i]) for i in g) for g in groups[timed])
    return {"engine": engine, "workload": name, "tokens_per_s": tok / secs, "steps_timed": len(tokens[timed]),
            "real_tokens": tok, "padded_tokens": padded_tokens, "seconds": secs}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--steps", type=int, default=15)
    ap.add_argument("--quick", action="store_true", help="1 round, 6 steps, tweets only")
    ap.add_argument("--worker", nargs=2, metavar=("ENGINE", "WORKLOAD"))
    ap.add_argument("--out", default=str(HERE / "results" / "train_throughput.json"))
    args = ap.parse_args()
    if args.worker:
        print(json.dumps(worker(args.worker[0], args.worker[1], args.steps)))
        return
    rounds, steps, loads = (1, 6, ["tweets"]) if args.quick else (args.rounds, args.steps, list(WORKLOADS))
    runs: dict[str, dict[str, list[dict]]] = {w: {e: [] for e in ENGINES} for w in loads}
    for r in range(rounds):
        for w in loads:
            for e in ENGINES if r % 2 == 0 else ENGINES[::-1]:
                res = spawn(__file__, ["--worker", e, w, "--steps", str(steps)])
                runs[w][e].append(res)
                print(f"round {r + 1} {w:<7} {e:<13} {res['tokens_per_s']:8.0f} tokens/s", flush=True)
    report = {"machine": {"cpu": platform.processor() or platform.machine(), "threads": 2},
              "settings": {"rounds": rounds, "steps_timed": steps - 1, "warmup": WARMUP, "precision": "fp32"},
              "workloads": {}}
    for w in loads:
        med = {e: statistics.median(x["tokens_per_s"] for x in runs[w][e]) for e in ENGINES}
        ratios = [b["tokens_per_s"] / t["tokens_per_s"] for b, t in zip(runs[w]["bertkit"], runs[w]["transformers"],
                                                                        strict=True)]
        first = runs[w]["transformers"][0]
        report["workloads"][w] = {
            "dataset": WORKLOADS[w][0], "batch_size": WORKLOADS[w][1], "tokens_per_s": med,
            "ratio": statistics.median(ratios), "ratio_range": [min(ratios), max(ratios)],
            "padding_fraction": 1 - first["real_tokens"] / first["padded_tokens"], "runs": runs[w]}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    if not args.quick:
        Path(args.out).write_text(json.dumps(report, indent=2) + "\n")
    print(markdown(report))


def markdown(report: dict) -> str:
    lines = ["| workload | padding in HF batches | transformers tokens/s | bertkit tokens/s | ratio (range) |",
             "|---|---|---|---|---|"]
    for w, r in report["workloads"].items():
        lo, hi = r["ratio_range"]
        lines.append(f"| {w} ({r['dataset']}, batch {r['batch_size']}) | {r['padding_fraction']:.0%} | "
                     f"{r['tokens_per_s']['transformers']:,.0f} | {r['tokens_per_s']['bertkit']:,.0f} | "
                     f"{r['ratio']:.2f}x ({lo:.2f}-{hi:.2f}) |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
