"""Every encoder family, bertkit's padding-free path against HF transformers, in one run.

Models: per family, a base-width random-init encoder (6 layers x 768 hidden x 12 heads, FFN 3072; ModernBERT
1152 with GeGLU) with the family's own options (``FAMILIES``), built by transformers with seed 0 (1-D parameters -
biases, norms - moved off their 0 / 1 init by N(0, 0.05), as the tests do, so none is trivially zero) and saved with
``save_pretrained``; every family uses one vocabulary size (30,522: the ids only index a random table) so that the
embedding table does not dominate peak RSS differently per family. Each engine loads the saved directory itself:

  transformers  ``AutoModel.from_pretrained(dir, attn_implementation=...)``: ``sdpa`` where the family supports it,
                else its default ``eager`` (DeBERTa-v2, MPNet); padded batches (pad id from the config), fp32
  bertkit       ``bertkit.model.weights.load_pretrained(dir)`` then ``BertModel.forward_packed(ids, packing)``:
                the padding-free path on the same batches, packed. Timed: the forward pass only; both engines get
                their tensors (padded ids + mask / packed ids + ``Packing``) built before the clock starts, and
                tokenization is excluded for both.

Workload: paragraphs of BBC News articles (real text, real lengths; the default 512 of them: 52,089 tokens, median 85,
5%-95% 18-239, the longest 390; 61% longer than 65 tokens, where ModernBERT's sliding window (64 either way) masks,
32% longer than 129, where DeBERTa's log buckets begin), in a seeded random order, tokenized by the bundled WordPiece
vocabulary, max_length 512; batches of 32:

  unsorted  in input order (what a plain transformers loop does)
  sorted    length-sorted (what sentence-transformers does)

XLM-RoBERTa is not run separately: transformers' XLMRobertaModel is RobertaModel's code (generated from it), and
bertkit maps both model types to one family module with the same options, so its numbers are RoBERTa's.

Each engine runs in its own process (its own peak RSS), 2 threads, both under bertkit's allocator setting. In a
round the two engines of a family start together, prepare every batch and warm up, then the parent feeds them the
same batches alternately, one batch at a time (transformers then bertkit, then the other way round), so that a busy
moment of a shared machine falls on both; each worker times its own forward calls. Ratios are taken per round
(fresh processes each round), medians over rounds reported. Outputs: after the timed passes each engine runs the
first ``--parity-batches`` unsorted batches once more and saves the last hidden states of the real tokens; the
parent reports the max abs difference (fp32).

    python benchmarks/families.py [--rounds 3] [--texts 512] [--families bert,deberta-v2] [--quick]
    python benchmarks/families.py --profile deberta-v2 [--mode unsorted]   # torch.profiler table of bertkit
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from workers import cpu_info, spawn, write_report

HERE = Path(__file__).resolve().parent
MODELS = HERE.parent / "runs" / "bench" / "families"  # built once, reused while the spec is unchanged
VOCAB = 30522
MAX_LENGTH = 512
BASE = dict(vocab_size=VOCAB, hidden_size=768, num_hidden_layers=6, num_attention_heads=12, intermediate_size=3072,
            max_position_embeddings=512)

# family -> (transformers model_type, config kwargs, transformers attention implementation)
FAMILIES: dict[str, tuple[str, dict, str]] = {
    "bert": ("bert", BASE, "sdpa"),
    "roberta": ("roberta", {**BASE, "max_position_embeddings": 514, "type_vocab_size": 1, "pad_token_id": 1,
                            "bos_token_id": 0, "eos_token_id": 2}, "sdpa"),
    # DeBERTa-v3-base's options: log buckets (256), no absolute positions, no token types, keys shared with content
    "deberta-v2": ("deberta-v2", {**BASE, "relative_attention": True, "position_buckets": 256,
                                  "max_relative_positions": -1, "pos_att_type": "p2c|c2p", "share_att_key": True,
                                  "norm_rel_ebd": "layer_norm", "position_biased_input": False, "type_vocab_size": 0,
                                  "layer_norm_eps": 1e-7, "pad_token_id": 0}, "eager"),
    # ModernBERT-base's options: GeGLU (1152), global attention every 3rd layer, sliding window 128 elsewhere,
    # rope thetas 160000 (global) / 10000 (local), no biases, pre-norm with embedding and final norms
    "modernbert": ("modernbert", {**BASE, "intermediate_size": 1152, "global_attn_every_n_layers": 3,
                                  "local_attention": 128, "global_rope_theta": 160000.0, "local_rope_theta": 10000.0,
                                  "max_position_embeddings": 8192, "pad_token_id": 0, "bos_token_id": 101,
                                  "eos_token_id": 102, "cls_token_id": 101, "sep_token_id": 102}, "sdpa"),
    "electra": ("electra", {**BASE, "embedding_size": 768}, "sdpa"),  # ELECTRA-base: no embeddings_project
    "distilbert": ("distilbert", dict(vocab_size=VOCAB, dim=768, n_layers=6, n_heads=12, hidden_dim=3072,
                                      max_position_embeddings=512), "sdpa"),
    "mpnet": ("mpnet", {**BASE, "max_position_embeddings": 514, "pad_token_id": 1}, "eager"),
}
SHARED = {"xlm-roberta": "roberta"}  # family -> the family whose measurement it shares (see the docstring)
ENGINES = ("transformers", "bertkit")
GOALS = {"unsorted": 2.5, "sorted": 1.1}


# ---- models and workload ------------------------------------------------------------------------------
def spec(family: str) -> dict:
    import transformers

    model_type, kwargs, attn = FAMILIES[family]
    return {"model_type": model_type, "config": kwargs, "attn": attn, "transformers": transformers.__version__,
            "seed": 0}


def build(family: str, directory: Path) -> None:
    """Save the family's random-init base model (transformers' own init, seed 0) to ``directory``."""
    import torch
    from transformers import AutoConfig, AutoModel

    s = spec(family)
    torch.manual_seed(s["seed"])
    cfg = AutoConfig.for_model(s["model_type"], **s["config"])
    model = AutoModel.from_config(cfg).eval()
    g = torch.Generator().manual_seed(s["seed"] + 1)
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 1:  # biases and norms start at 0 / 1: move them so each one matters
                p.add_(torch.randn(p.shape, generator=g) * 0.05)
    tmp = directory.with_name(directory.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp)
    (tmp / "bench_spec.json").write_text(json.dumps(s, indent=2))
    shutil.rmtree(directory, ignore_errors=True)
    tmp.replace(directory)


def model_dir(family: str) -> Path:
    """The family's saved model, built (in a child process) unless one of the same spec exists."""
    d = MODELS / family
    stamp = d / "bench_spec.json"
    if not (stamp.is_file() and json.loads(stamp.read_text()) == spec(family)):
        print(f"building the {family} model in {d}", file=sys.stderr)
        spawn(__file__, ["--build", family])
    return d


def make_workload(n_texts: int, seed: int = 0) -> list[list[int]]:
    """``n_texts`` BBC News paragraphs in a seeded random order, as [CLS] ... [SEP] WordPiece ids, max 512."""
    from bertkit.data.corpora import load_bbc_news
    from bertkit.data.tokenizer import WordPieceTokenizer
    from bertkit.hub import resolve_model_dir

    paragraphs = [p.strip() for a in load_bbc_news(dedupe=True) for p in a.body.split("\n") if p.strip()]
    order = np.random.default_rng(seed).permutation(len(paragraphs))[:n_texts]
    tok = WordPieceTokenizer.from_dir(resolve_model_dir())
    return tok.encode([paragraphs[i] for i in order], max_length=MAX_LENGTH).ids


def batches(seqs: list[list[int]], mode: str, bs: int) -> list[list[list[int]]]:
    order = list(range(len(seqs)))
    if mode == "sorted":
        order.sort(key=lambda i: -len(seqs[i]))
    return [[seqs[i] for i in order[s:s + bs]] for s in range(0, len(order), bs)]


# ---- one engine in its own process ----------------------------------------------------------------------
def load_engine(engine: str, family: str, directory: Path):
    """(prepare(batch) -> inputs, run(inputs) -> outputs, real(inputs, outputs) -> (total_tokens, hidden) states of
    the real tokens); only ``run`` is timed."""
    import torch

    if engine == "transformers":
        from transformers import AutoModel

        model = AutoModel.from_pretrained(directory, attn_implementation=FAMILIES[family][2]).eval()
        pad = model.config.pad_token_id or 0

        def prepare(batch):
            n = max(map(len, batch))
            ids = torch.full((len(batch), n), pad, dtype=torch.long)
            mask = torch.zeros(len(batch), n, dtype=torch.long)
            for i, s in enumerate(batch):
                ids[i, :len(s)] = torch.tensor(s)
                mask[i, :len(s)] = 1
            return ids, mask

        def run(inputs):
            ids, mask = inputs
            return model(input_ids=ids, attention_mask=mask).last_hidden_state

        return prepare, run, lambda inputs, out: out[inputs[1].bool()]

    from bertkit.model.attention import Packing
    from bertkit.model.weights import load_pretrained

    model, _ = load_pretrained(directory)

    def prepare(batch):
        return torch.tensor([t for s in batch for t in s]), Packing.from_lengths([len(s) for s in batch])

    def run(inputs):
        return model.forward_packed(*inputs)

    return prepare, run, lambda inputs, out: out


def serve(engine: str, family: str, args: argparse.Namespace) -> None:
    """A worker: load the engine, prepare every batch, then run the batches the parent names, one per line of stdin
    (``mode index``), answering each with its seconds; ``parity`` saves the outputs of the first unsorted batches,
    ``done`` answers the peak RSS and exits. Timing is this process's own ``perf_counter`` around the forward."""
    import torch

    from bertkit.utils.runtime import tune_allocator

    torch.set_num_threads(args.threads)
    tune_allocator()  # every engine, the peer too, under the same allocator setting
    seqs = json.loads(Path(args.workload).read_text())
    prepare, run, real = load_engine(engine, family, MODELS / family)

    def reply(obj: dict) -> None:
        print(json.dumps(obj), flush=True)

    with torch.inference_mode():
        prepared = {mode: [prepare(b) for b in batches(seqs, mode, args.batch_size)] for mode in ("unsorted", "sorted")}
        for mode in prepared:
            for b in prepared[mode][:2]:
                run(b)  # warm-up
        reply({"ready": True, "cpu_capability": torch.backends.cpu.get_cpu_capability()})
        for line in sys.stdin:
            cmd = line.split()
            if cmd[0] == "run":
                b = prepared[cmd[1]][int(cmd[2])]
                t = time.perf_counter()
                run(b)
                reply({"seconds": time.perf_counter() - t})
            elif cmd[0] == "parity":
                states = [real(b, run(b)) for b in prepared["unsorted"][:args.parity_batches]]
                np.save(Path(args.out_dir) / f"{family}-{engine}.npy", torch.cat(states).numpy())
                reply({"saved": True})
            elif cmd[0] == "done":
                reply({"peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024})
                return


class Worker:
    """One engine in its own process (``serve``), driven line by line."""

    def __init__(self, engine: str, family: str, common: list[str], log: Path) -> None:
        self.log = log.open("w")
        self.proc = subprocess.Popen([sys.executable, __file__, "--worker", engine, family, *common], text=True,
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self.log,
                                     env={**os.environ, "TOKENIZERS_PARALLELISM": "false"})
        self.path = log
        self.hello = self.ask(None)

    def ask(self, command: str | None) -> dict:
        if command is not None:
            self.proc.stdin.write(command + "\n")
            self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        if not line:
            self.proc.wait()
            raise RuntimeError(f"worker failed (exit {self.proc.returncode}):\n{self.path.read_text()[-3000:]}")
        return json.loads(line)

    def close(self) -> dict:
        out = self.ask("done")
        self.proc.wait()
        self.log.close()
        return out


def paired_round(family: str, n_batches: int, common: list[str], work: Path, first: int) -> dict[str, dict]:
    """Both engines of ``family`` in their own processes, started together and fed the same batches alternately
    (A B, then B A, ...), so a busy moment of the machine falls on both: per engine, tokens/s per mode."""
    workers = {e: Worker(e, family, common, work / f"{family}-{e}.log") for e in ENGINES}
    seconds = {e: {"unsorted": 0.0, "sorted": 0.0} for e in ENGINES}
    for mode in ("unsorted", "sorted"):
        for i in range(n_batches):
            order = ENGINES if (i + first) % 2 == 0 else ENGINES[::-1]
            for e in order:
                seconds[e][mode] += workers[e].ask(f"run {mode} {i}")["seconds"]
    out = {}
    for e, w in workers.items():
        w.ask("parity")
        out[e] = {"engine": e, "family": family, "cpu_capability": w.hello["cpu_capability"], **w.close(),
                  **{f"{m}_seconds": seconds[e][m] for m in seconds[e]}}
    return out


def profile(family: str, mode: str, args: argparse.Namespace) -> str:
    """torch.profiler table of bertkit's padding-free path on the ``mode`` batches of the workload."""
    import torch
    from torch.profiler import profile as torch_profile

    from bertkit.utils.runtime import tune_allocator

    torch.set_num_threads(args.threads)
    tune_allocator()
    model_dir(family)
    seqs = make_workload(args.texts)
    prepare, run, _ = load_engine("bertkit", family, MODELS / family)
    prepared = [prepare(b) for b in batches(seqs, mode, args.batch_size)]
    with torch.inference_mode():
        for b in prepared[:2]:
            run(b)
        with torch_profile() as prof:
            for b in prepared:
                run(b)
    return prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=25)


# ---- the run ---------------------------------------------------------------------------------------------
def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--texts", type=int, default=512)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--families", default=",".join(FAMILIES), help=f"comma-separated, of {', '.join(FAMILIES)}")
    p.add_argument("--parity-batches", type=int, default=4, help="unsorted batches whose outputs are compared")
    p.add_argument("--quick", action="store_true", help="96 texts, 1 round (a smoke test; nothing written)")
    p.add_argument("--output", default=str(HERE / "results" / "families.json"))
    p.add_argument("--profile", metavar="FAMILY", help="print a torch.profiler table of bertkit on FAMILY")
    p.add_argument("--mode", default="sorted", choices=("sorted", "unsorted"), help="batches --profile uses")
    p.add_argument("--worker", nargs=2, metavar=("ENGINE", "FAMILY"), help=argparse.SUPPRESS)
    p.add_argument("--build", help=argparse.SUPPRESS)
    p.add_argument("--workload", help=argparse.SUPPRESS)
    p.add_argument("--out-dir", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.quick:
        args.texts, args.rounds = 96, 1
    if args.build:
        build(args.build, MODELS / args.build)
        print("{}")
        return
    if args.worker:
        serve(*args.worker, args)
        return
    if args.profile:
        print(profile(args.profile, args.mode, args))
        return

    families = args.families.split(",")
    unknown = set(families) - set(FAMILIES) - set(SHARED)
    if unknown:
        p.error(f"unknown families {sorted(unknown)}; choose from {', '.join([*FAMILIES, *SHARED])}")
    measured = [f for f in FAMILIES if f in families or any(SHARED.get(x) == f for x in families)]
    for f in measured:
        model_dir(f)
    work = MODELS / "work"
    work.mkdir(parents=True, exist_ok=True)
    seqs = make_workload(args.texts)
    (work / "workload.json").write_text(json.dumps(seqs))
    common = ["--workload", str(work / "workload.json"), "--out-dir", str(work), "--batch-size",
              str(args.batch_size), "--threads", str(args.threads), "--parity-batches", str(args.parity_batches)]
    n_batches = -(-len(seqs) // args.batch_size)
    tokens = sum(map(len, seqs))
    raw: dict[str, dict[str, list[dict]]] = {f: {e: [] for e in ENGINES} for f in measured}
    for r in range(args.rounds):
        for f in measured:
            for e, res in paired_round(f, n_batches, common, work, r).items():
                for mode in ("unsorted", "sorted"):
                    res[f"{mode}_tokens_per_s"] = tokens / res[f"{mode}_seconds"]
                raw[f][e].append(res)
                print(f"round {r + 1}: {f} {e}: unsorted {res['unsorted_tokens_per_s']:.0f} tok/s, sorted "
                      f"{res['sorted_tokens_per_s']:.0f} tok/s, peak RSS {res['peak_rss_mb']:.0f} MB", file=sys.stderr)
    results = {}
    for f in measured:
        ref, ours = raw[f]["transformers"], raw[f]["bertkit"]
        a, b = (np.load(work / f"{f}-{e}.npy") for e in ENGINES)
        row: dict = {"transformers_attention": FAMILIES[f][2]}
        for mode in ("unsorted", "sorted"):
            key = f"{mode}_tokens_per_s"
            ratios = [o[key] / t[key] for o, t in zip(ours, ref, strict=True)]
            row[f"transformers_{key}"] = statistics.median(x[key] for x in ref)
            row[f"bertkit_{key}"] = statistics.median(x[key] for x in ours)
            row[f"x_transformers_{mode}"] = statistics.median(ratios)
            row[f"x_transformers_{mode}_range"] = [min(ratios), max(ratios)]
        row["max_abs_diff"] = float(np.abs(a - b).max())
        row["compared_tokens"] = int(a.shape[0])
        row["transformers_peak_rss_mb"] = statistics.median(x["peak_rss_mb"] for x in ref)
        row["bertkit_peak_rss_mb"] = statistics.median(x["peak_rss_mb"] for x in ours)
        row["goals_met"] = {"unsorted": row["x_transformers_unsorted"] >= GOALS["unsorted"],
                            "sorted": row["x_transformers_sorted"] >= GOALS["sorted"],
                            "outputs_1e-5": row["max_abs_diff"] <= 1e-5}
        results[f] = row
    for f, same in SHARED.items():
        if f in families and same in results:
            results[f] = {"same_as": same}
    lengths = [len(s) for s in seqs]
    report = {
        "benchmark": "families",
        "texts": args.texts, "tokens": sum(lengths), "batch_size": args.batch_size, "threads": args.threads,
        "rounds": args.rounds, "max_length": MAX_LENGTH,
        "lengths": {"median": float(np.median(lengths)), "p5": float(np.percentile(lengths, 5)),
                    "p95": float(np.percentile(lengths, 95)), "max": max(lengths)},
        "models": {f: spec(f) for f in measured},
        "machine": {"cpu": cpu_info()["cpu_model"], "cpus": os.cpu_count(), "python": platform.python_version(),
                    "torch_cpu_capability": raw[measured[0]]["bertkit"][0]["cpu_capability"]},
        "goals": GOALS,
        "results": results,
        "raw": raw,
    }
    if not args.quick:  # a smoke test never replaces the committed measurement
        write_report(args.output, report)
    print(markdown(report))


def markdown(report: dict) -> str:
    m, n = report["machine"], report["lengths"]
    lines = [
        f"Measured {report['texts']} BBC paragraphs, {report['tokens']:,} real tokens (median {n['median']:.0f}, "
        f"5-95% {n['p5']:.0f}-{n['p95']:.0f}, max {n['max']}), batch {report['batch_size']}, {report['threads']} "
        f"threads, median of {report['rounds']} rounds; {m['cpu']}, torch CPU capability "
        f"{m['torch_cpu_capability']}.",
        "",
        "| family | transformers attention | unsorted tok/s (transformers / bertkit) | vs transformers unsorted "
        "| sorted tok/s (transformers / bertkit) | vs transformers sorted | max abs diff | peak RSS MB "
        "(transformers / bertkit) |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for f, r in report["results"].items():
        if "same_as" in r:
            lines.append(f"| {f} | = {r['same_as']} (same code in both engines) | | | | | | |")
            continue
        cells = []
        for mode in ("unsorted", "sorted"):
            lo, hi = r[f"x_transformers_{mode}_range"]
            mark = "" if r["goals_met"][mode] else " (goal " + f"{report['goals'][mode]}x)"
            cells.append(f"{r[f'transformers_{mode}_tokens_per_s']:,.0f} / {r[f'bertkit_{mode}_tokens_per_s']:,.0f} "
                         f"| {r[f'x_transformers_{mode}']:.2f}x ({lo:.2f}-{hi:.2f}){mark}")
        lines.append(f"| {f} | {r['transformers_attention']} | {cells[0]} | {cells[1]} | {r['max_abs_diff']:.1e} "
                     f"| {r['transformers_peak_rss_mb']:.0f} / {r['bertkit_peak_rss_mb']:.0f} |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
