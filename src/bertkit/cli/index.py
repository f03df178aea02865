"""``bertkit index build MODEL --input FILE --output DIR`` and ``bertkit index search DIR "query"``."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

from bertkit.errors import BertkitError
from bertkit.loader import load
from bertkit.model.pooling import POOLING_MODES
from bertkit.retrieval.data import bbc_documents, read_documents
from bertkit.retrieval.index import KINDS, VectorIndex, index_lock
from bertkit.utils.output_paths import check_output_dir


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("index", help="build and search a vector index of documents")
    actions = p.add_subparsers(dest="index_command", required=True, metavar="ACTION")
    build = actions.add_parser("build", help="embed documents and save an index (exact, or HNSW from 20,000 on)")
    build.add_argument("model", nargs="?", default=None,
                       help="built-in name or local HF directory (default all-MiniLM-L6-v2; with --append, the "
                            "index's own model)")
    build.add_argument("--input", "-i", help=".jsonl (id + text, optional title, other fields kept as metadata), "
                                             ".tsv (id<TAB>text) or .txt (one document a line, id = line number)")
    build.add_argument("--dataset", choices=["bbc-news"], help="built-in documents: BBC News article bodies")
    build.add_argument("--output", "-o", required=True, help="index directory")
    mode = build.add_mutually_exclusive_group()
    mode.add_argument("--append", action="store_true", help="add the documents to the index at --output")
    mode.add_argument("--overwrite", action="store_true", help="replace the index at --output")
    build.add_argument("--kind", choices=KINDS, default=None,
                       help="auto (default: exact below 20,000 vectors, HNSW above), exact or hnsw")
    build.add_argument("--batch-size", type=int, default=32)
    build.add_argument("--id-field", default=None, help=".jsonl id field (default: _id, else id)")
    build.add_argument("--text-field", default="text", help=".jsonl text field (default: text)")
    build.add_argument("--pooling", choices=POOLING_MODES, default=None,
                       help="override the model's own pooling (recorded: searches pool the same way)")
    build.add_argument("--doc-prompt-name", "--prompt-name", dest="doc_prompt_name", default=None,
                       help="the model's prompt for documents (default: its 'document' prompt, if any)")
    build.add_argument("--doc-prompt", "--prompt", dest="doc_prompt", default=None, help="a literal document prompt")
    build.add_argument("--query-prompt-name", default=None,
                       help="the prompt searches give queries, recorded in the index (default: the model's 'query')")
    build.add_argument("--query-prompt", default=None, help="a literal query prompt, recorded in the index")
    build.add_argument("--lock-timeout", type=float, default=600.0, metavar="SECONDS",
                       help="while another process writes the index, wait this long for it, then give up with "
                            "exit 2 (default 600)")
    search = actions.add_parser("search", help="the nearest documents to a query")
    search.add_argument("index", metavar="DIR", help="index directory")
    search.add_argument("query", help="the text to search for")
    search.add_argument("-k", type=int, default=10, help="results to show (default 10)")
    search.add_argument("--model", default=None, help="query model; must be the one the index was built with")
    search.add_argument("--query-prompt-name", "--prompt-name", dest="query_prompt_name", default=None,
                        help="one of the model's prompts for the query (default: the one the index records)")
    search.add_argument("--query-prompt", "--prompt", dest="query_prompt", default=None,
                        help="a literal query prompt (default: the one the index records)")
    search.add_argument("--rerank", metavar="RERANKER_DIR", help="re-score the top candidates with a cross-encoder")
    search.add_argument("--rerank-top", type=int, default=50, help="candidates the reranker sees (default 50)")
    search.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    return run_build(args) if args.index_command == "build" else run_search(args)


def run_build(args: argparse.Namespace) -> int:
    if bool(args.input) == bool(args.dataset):
        raise ValueError("give the documents with either --input FILE or --dataset bbc-news")
    if args.lock_timeout < 0:
        raise ValueError(f"--lock-timeout must be >= 0, got {args.lock_timeout:g}")
    out = check_output_dir(args.output)  # fail before any work, naming the path
    check_destination(out, args)  # fail fast; checked again under the lock, where it counts
    # inputs are checked before any model is loaded or text embedded, and before the directory is made
    ids, texts, metadata = bbc_documents() if args.dataset else read_documents(args.input, args.id_field,
                                                                               args.text_field)
    created = not out.exists()
    # One writer at a time, from reading the old index to saving the new one (see retrieval/index.py): a second
    # build or append waits here, then sees what the first one saved.
    with index_lock(out, args.lock_timeout, on_wait=lambda message: print(message, file=sys.stderr)):
        try:
            exists = check_destination(out, args)
            t0 = time.perf_counter()
            if args.append and exists:
                index = VectorIndex.load(out)
                present = [i for i in ids if i in index]
                if present:
                    more = f" (and {len(present) - 5} more)" if len(present) > 5 else ""
                    raise BertkitError(f"{len(present)} id(s) of {args.input or args.dataset} are already in the "
                                       f"index at {out}: {', '.join(map(repr, present[:5]))}{more}")
                enc = index.load_encoder(args.model)
                index.add_texts(enc, ids, texts, metadata, batch_size=args.batch_size)
                if args.kind:
                    index.set_kind(args.kind)
            else:
                enc = load(args.model)
                index = VectorIndex.build(enc, ids, texts, metadata, kind=args.kind or "auto",
                                          batch_size=args.batch_size)
            index.save(out)
        except BaseException:
            if created and out.is_dir() and not any(out.iterdir()):
                out.rmdir()  # leave no empty directory behind a failed build
            raise
    seconds = time.perf_counter() - t0
    print(f"index      {out}")
    print(f"model      {index.model['name'] if index.model else enc.name}")
    print(f"documents  {len(index):,} ({len(ids):,} added)")
    print(f"dimension  {index.dim}")
    print(f"kind       {index.active_kind}")
    print(f"seconds    {seconds:.1f} (embedding, indexing and saving)")
    return 0


def check_destination(out: Path, args: argparse.Namespace) -> bool:
    """Whether ``out`` holds an index; refuse a destination the flags do not allow writing to."""
    exists = (out / "index.json").is_file()
    if exists and not (args.append or args.overwrite):
        raise BertkitError(f"{out} already holds an index; pass --append to add to it or --overwrite to replace it")
    if not exists and out.is_dir() and any(out.iterdir()) and not args.overwrite:
        raise BertkitError(f"{out} exists, is not empty and holds no index; choose a new directory or pass "
                           "--overwrite to write the index beside its files")
    return exists


def _snippet(meta: dict[str, Any], width: int = 90) -> str:
    title, text = meta.get("title"), meta.get("text")
    s = " ".join(str(x) for x in (f"{title} —" if title else None, text) if x)
    s = " ".join(s.split())
    return s if len(s) <= width else s[:width - 1] + "…"


def run_search(args: argparse.Namespace) -> int:
    if not args.query.strip():
        raise BertkitError("the query is empty; give some text to search for")
    if args.k < 1 or args.rerank_top < 1:
        raise ValueError("-k and --rerank-top must be >= 1")
    index = VectorIndex.load(args.index)
    enc = index.load_encoder(args.model)
    top = max(args.k, args.rerank_top) if args.rerank else args.k
    prompt = None if args.query_prompt_name is None and args.query_prompt is None else \
        enc.sentence.resolve_prompt(args.query_prompt_name, args.query_prompt)
    scores, found = index.search_text(enc, [args.query], top, prompt=prompt)
    hits = [{"id": i, "score": float(s)} for i, s in zip(found[0], scores[0], strict=True)]
    if args.rerank:
        from bertkit.retrieval.reranker import Reranker

        reranker = Reranker.from_pretrained(args.rerank)
        fuse = [h["score"] for h in hits] if reranker.fusion_weight is not None else None  # weight chosen on dev
        order = reranker.rank(args.query, [index.document(h["id"]) for h in hits], top_k=args.k,
                              first_stage_scores=fuse)
        hits = [{"id": hits[j]["id"], "score": float(s), "retrieval_score": hits[j]["score"]} for j, s in order]
    hits = hits[:args.k]
    if args.json:
        print(json.dumps({"index": args.index, "query": args.query, "kind": index.active_kind,
                          "model": index.model["name"] if index.model else enc.name, "reranker": args.rerank,
                          "results": [{"rank": r, **h, "metadata": index.get(h["id"])}
                                      for r, h in enumerate(hits, start=1)]}, ensure_ascii=False))
        return 0
    width = max(len(h["id"]) for h in hits)
    for r, h in enumerate(hits, start=1):
        print(f"{r:>3}. {h['score']:7.4f}  {h['id']:<{width}}  {_snippet(index.get(h['id']))}")
    return 0
