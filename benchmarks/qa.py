"""Extractive QA smoke benchmark: bertkit's QAModel against transformers' question-answering pipeline, on the same
model and the same questions.

Model: all-MiniLM-L6-v2 with a QA head (``BertForQuestionAnswering``), fine-tuned for ``--train-steps`` steps on the
synthetic BBC News set's train split (``bertkit.data.qa_synthetic``; ``--train-steps 0``: a random head, seed 0 -
decoding parity still holds, EM/F1 are then near 0). Data: the synthetic set over BBC News test articles (cloze
questions, contexts up to 2,000 characters: most run over two windows at max_length 384, doc_stride 128).

  transformers  transformers 5 has no "question-answering" pipeline any more; the reference is transformers 4.x
                ``QuestionAnsweringPipeline`` rebuilt around the scoring it kept
                (``pipelines.document_question_answering.select_starts_ends``), in tests/qa_reference.py: the fast
                tokenizer's overflowing windows, one window per forward pass (the pipeline's default batch size 1),
                ``AutoModelForQuestionAnswering`` (sdpa), word-aligned spans
  bertkit       ``bertkit.load_task_model(dir).predict(questions, contexts)``: every window of every question packed
                padding-free into token-budget batches, the same decoding in numpy

Both are timed end to end (tokenization, forward passes, decoding), in one process, 2 threads, alternating
rounds; examples/s are medians over ``--rounds``. Decoding parity: the answers (text, start, end) must be identical
and the scores equal within rtol 1e-4; mismatches are counted. EM/F1: the official SQuAD normalisation
(``bertkit.metrics.squad_scores``).

    python benchmarks/qa.py [--train-steps 300] [--questions 400] [--rounds 3]
    python benchmarks/qa.py --quick      # random head, 24 questions, 1 round: proves the script runs
    python benchmarks/qa.py --int8       # adds bertkit int8 (load_task_model(dir, int8=True)) to the same rounds

``--int8``: a third engine, the same model with int8 linear layers. Its scores differ from fp32, so it is not
held to decoding parity; reported are its EM/F1, how many answers equal the (fp32) pipeline's, and its speed
against the pipeline.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # tests/qa_reference.py: the pipeline reference the tests check against

from benchmarks.workers import write_report  # noqa: E402


def build_model(directory: Path, train_steps: int) -> dict:
    """The QA model both engines load from ``directory``; returns how it was made."""
    from bertkit.data.tokenizer import Tokenizer
    from bertkit.model.directory import load_encoder
    from bertkit.model.heads import QuestionAnsweringHead
    from bertkit.qa_model import QAModel
    from bertkit.train.finetune import finetune

    if train_steps > 0:
        t0 = time.perf_counter()
        result = finetune(directory, task="qa", dataset="bbc-news-qa", model="all-MiniLM-L6-v2",
                          max_length=256, doc_stride=64, max_steps=train_steps, batch_size=16, lr=1e-4,
                          progress=False, eval_every=train_steps, overwrite=True)
        head = "fine-tuned"
        info = {"train_steps": train_steps, "train_seconds": round(time.perf_counter() - t0, 1), "dev": result.dev}
    else:
        encoder, _, d = load_encoder("all-MiniLM-L6-v2")
        torch.manual_seed(0)
        QAModel(QuestionAnsweringHead(encoder), Tokenizer.from_dir(d.weights_dir)).save_pretrained(directory)
        head, info = "random (seed 0)", {}
    return {"head": head, **info}


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--train-steps", type=int, default=300)
    ap.add_argument("--questions", type=int, default=400)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--max-length", type=int, default=384)
    ap.add_argument("--doc-stride", type=int, default=128)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--int8", action="store_true", help="also time bertkit with int8 linear layers")
    ap.add_argument("--output", default=str(ROOT / "benchmarks/results/qa.json"))
    args = ap.parse_args()
    if args.quick:
        args.train_steps, args.questions, args.rounds = 0, 24, 1
        if args.output == str(ROOT / "benchmarks/results/qa.json"):
            args.output = str(ROOT / "benchmarks/results/qa_quick.json")
    if args.int8 and args.output == str(ROOT / "benchmarks/results/qa.json"):
        args.output = str(ROOT / "benchmarks/results/qa_int8.json")
    torch.set_num_threads(args.threads)

    import transformers
    from tests.qa_reference import pipeline_answers

    import bertkit
    from bertkit import metrics as M
    from bertkit.data.qa_synthetic import bbc_news_qa

    data = bbc_news_qa("test")
    examples = data.examples[:args.questions]
    questions, contexts = [e.question for e in examples], [e.context for e in examples]
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp) / "qa"
        model_info = build_model(d, args.train_steps)
        engines = {"transformers": None, "bertkit": bertkit.load_task_model(d)}
        if args.int8:
            engines["bertkit-int8"] = bertkit.load_task_model(d, int8=True)
        for engine in engines.values():
            if engine is not None:  # bertkit's: read windows as the pipeline does
                engine.max_length, engine.doc_stride = args.max_length, args.doc_stride
        tok = transformers.AutoTokenizer.from_pretrained(d)
        hf = transformers.AutoModelForQuestionAnswering.from_pretrained(d, attn_implementation="sdpa").eval()

        def run_hf() -> tuple[list[dict], int]:
            out, windows = [], 0
            for q, c in zip(questions, contexts, strict=True):
                ans, n = pipeline_answers(hf, tok, q, c, max_seq_len=args.max_length, doc_stride=args.doc_stride)
                out.append(ans[0])
                windows += n
            return out, windows

        times: dict[str, list[float]] = {k: [] for k in engines}
        answers: dict[str, list[dict]] = {}
        windows = 0
        for r in range(args.rounds):  # alternating order: neither engine always runs first
            for name in (list(engines) if r % 2 == 0 else list(engines)[::-1]):
                t0 = time.perf_counter()
                if name == "transformers":
                    with torch.inference_mode():
                        answers[name], windows = run_hf()
                else:
                    answers[name] = engines[name].predict(questions, contexts)
                times[name].append(time.perf_counter() - t0)
    hf_answers, our_answers = answers["transformers"], answers["bertkit"]
    def span(a: dict) -> tuple:
        return a["answer"], a["start"], a["end"]

    mismatch = [i for i, (a, b) in enumerate(zip(our_answers, hf_answers, strict=True))
                if span(a) != span(b) or not np.isclose(a["score"], b["score"], rtol=1e-4, atol=1e-7)]
    gold = [e.answers for e in examples]
    rate = {k: len(examples) / statistics.median(v) for k, v in times.items()}
    report = {
        "benchmark": "qa", "model": "all-MiniLM-L6-v2 + QA head", **model_info,
        "data": f"synthetic SQuAD-style from BBC News test articles ({len(examples)} questions, {windows} windows)",
        "max_length": args.max_length, "doc_stride": args.doc_stride, "threads": args.threads,
        "rounds": args.rounds, "transformers": transformers.__version__, "torch": torch.__version__,
        "decoding_mismatches": len(mismatch), "mismatched_examples": mismatch[:20],
        "bertkit": {**M.squad_scores(gold, [a["answer"] for a in our_answers]),
                    "examples_per_s": round(rate["bertkit"], 2), "seconds": times["bertkit"]},
        "transformers_pipeline": {**M.squad_scores(gold, [a["answer"] for a in hf_answers]),
                                  "examples_per_s": round(rate["transformers"], 2), "seconds": times["transformers"]},
        "speedup": round(rate["bertkit"] / rate["transformers"], 2),
    }
    if args.int8:
        int8 = answers["bertkit-int8"]
        report["bertkit_int8"] = {
            **M.squad_scores(gold, [a["answer"] for a in int8]),
            "examples_per_s": round(rate["bertkit-int8"], 2), "seconds": times["bertkit-int8"],
            "speedup": round(rate["bertkit-int8"] / rate["transformers"], 2),
            "same_answer_as_pipeline": sum(span(a) == span(b) for a, b in zip(int8, hf_answers, strict=True))}
    write_report(args.output, report)
    print(f"{len(examples)} questions, {windows} windows: decoding mismatches {len(mismatch)}; "
          f"EM/F1 bertkit {report['bertkit']['exact_match']:.1f}/{report['bertkit']['f1']:.1f}, "
          f"pipeline {report['transformers_pipeline']['exact_match']:.1f}/{report['transformers_pipeline']['f1']:.1f}; "
          f"examples/s bertkit {rate['bertkit']:.2f}, pipeline {rate['transformers']:.2f}: {report['speedup']}x "
          f"-> {args.output}")
    if args.int8:
        r8 = report["bertkit_int8"]
        print(f"bertkit int8: EM/F1 {r8['exact_match']:.1f}/{r8['f1']:.1f}, {r8['same_answer_as_pipeline']} of "
              f"{len(examples)} answers equal the fp32 pipeline's, {r8['examples_per_s']:.2f} examples/s = "
              f"{r8['speedup']}x the pipeline")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
