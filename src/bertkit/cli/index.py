"""``bertkit index build MODEL --input FILE --output DIR`` (or ``--input PARTS_DIR...``: embedding parts),
``bertkit index search DIR "query"``, ``bertkit index upsert DIR --input ...``, ``bertkit index delete DIR ID...``
and ``bertkit index compact DIR``."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

from bertkit.cli.long_input_args import add_long_input_args, check_stride_flag
from bertkit.data.embedding_parts import is_parts_directory
from bertkit.data.text_files import read_lines
from bertkit.encoder import Encoder
from bertkit.errors import BertkitError
from bertkit.loader import load
from bertkit.model.pooling import POOLING_MODES
from bertkit.retrieval import index_model
from bertkit.retrieval.data import bbc_documents, read_documents
from bertkit.retrieval.index import KINDS, VectorIndex, index_lock
from bertkit.retrieval.passages import PASSAGES, best_per_document, build_passage_index, is_passage_index
from bertkit.utils.output_paths import check_output_dir

KIND_HELP = ("auto (default: exact below 20,000 vectors, HNSW above), exact, hnsw, ivfpq (compressed 16x, for "
             "collections beyond RAM) or ivfsq (compressed 4x)")
INPUT_HELP = (".jsonl (id + text, optional title, other fields kept as metadata), .tsv (id<TAB>text) or .txt (one "
              "document a line, id = line number); or one or more directories of embedding parts (bertkit embed "
              "--output DIR; shards' directories together): their vectors are indexed as they are, ids = row numbers")


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("index", help="build and search a vector index of documents")
    actions = p.add_subparsers(dest="index_command", required=True, metavar="ACTION")
    build = actions.add_parser("build", help="embed documents and save an index (exact, or HNSW from 20,000 on)")
    build.add_argument("model", nargs="?", default=None,
                       help="built-in name or local HF directory (default all-MiniLM-L6-v2; with --append, the "
                            "index's own model)")
    build.add_argument("--input", "-i", nargs="+", action="extend", metavar="INPUT", help=INPUT_HELP)
    build.add_argument("--dataset", choices=["bbc-news"], help="built-in documents: BBC News article bodies")
    build.add_argument("--output", "-o", required=True, help="index directory")
    mode = build.add_mutually_exclusive_group()
    mode.add_argument("--append", action="store_true", help="add the documents to the index at --output")
    mode.add_argument("--overwrite", action="store_true", help="replace the index at --output")
    build.add_argument("--kind", choices=KINDS, default=None, help=KIND_HELP)
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
    add_long_input_args(build, pooling=False, saved=False)  # documents past max_length: truncate, or window mean
    build.add_argument("--passages", choices=PASSAGES, default="documents",
                       help="documents: one vector per document (default); windows: one per window of each "
                            "document (--stride sets their overlap), a search returning each document once, by its "
                            "best window")
    add_lock_timeout(build)
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
    search.add_argument("--nprobe", type=int, default=None,
                        help="ivfpq/ivfsq: inverted lists searched (default: the index's, 16)")
    search.add_argument("--refine", type=int, default=None,
                        help="ivfpq/ivfsq: re-rank the top k x REFINE exactly (default: the index's, 10; 1: off)")
    search.add_argument("--ef-search", type=int, default=None, help="hnsw: candidate list size (default: 64)")
    search.add_argument("--json", action="store_true", help="print one JSON object")

    upsert = actions.add_parser("upsert", help="add documents to an index, replacing those whose id it has")
    upsert.add_argument("index", metavar="DIR", help="index directory")
    upsert.add_argument("--input", "-i", nargs="+", action="extend", required=True, metavar="INPUT", help=INPUT_HELP)
    upsert.add_argument("--model", default=None, help="must be the index's own (default: it)")
    upsert.add_argument("--batch-size", type=int, default=32)
    upsert.add_argument("--id-field", default=None, help=".jsonl id field (default: _id, else id)")
    upsert.add_argument("--text-field", default="text", help=".jsonl text field (default: text)")
    add_lock_timeout(upsert)

    delete = actions.add_parser("delete", help="delete documents from an index by id")
    delete.add_argument("index", metavar="DIR", help="index directory")
    delete.add_argument("ids", nargs="*", metavar="ID", help="ids to delete")
    delete.add_argument("--ids-file", help="a file of ids to delete, one a line")
    delete.add_argument("--missing", choices=["error", "ignore"], default="error",
                        help="an id the index does not have: an error, nothing deleted (default), or skipped")
    add_lock_timeout(delete)

    compact = actions.add_parser("compact", help="rewrite an index without its deleted documents (a save does "
                                                 "this by itself once a fifth of its slots are deleted)")
    compact.add_argument("index", metavar="DIR", help="index directory")
    add_lock_timeout(compact)
    p.set_defaults(func=run)


def add_lock_timeout(p: argparse.ArgumentParser) -> None:
    p.add_argument("--lock-timeout", type=float, default=600.0, metavar="SECONDS",
                   help="while another process writes the index, wait this long for it, then give up with exit 2 "
                        "(default 600)")


def run(args: argparse.Namespace) -> int:
    commands = {"build": run_build, "search": run_search, "upsert": run_upsert, "delete": run_delete,
                "compact": run_compact}
    if getattr(args, "lock_timeout", 0) < 0:
        raise ValueError(f"--lock-timeout must be >= 0, got {args.lock_timeout:g}")
    return commands[args.index_command](args)


def parts_inputs(inputs: list[str] | None) -> list[str] | None:
    """The inputs when they are embedding-parts directories, None when one documents file; else an error."""
    if not inputs:
        return None
    parts = [i for i in inputs if is_parts_directory(i)]
    if parts and len(parts) < len(inputs):
        raise BertkitError(f"{', '.join(i for i in inputs if i not in parts)}: not an embedding-parts directory "
                           "(no manifest.json); give either one documents file or embedding-parts directories")
    if not parts and len(inputs) > 1:
        raise BertkitError(f"give one documents file, not {len(inputs)} (several inputs must be embedding-parts "
                           "directories)")
    return parts or None


def on_wait(message: str) -> None:
    print(message, file=sys.stderr)


def given_prompt(enc: Encoder, name: str | None, text: str | None) -> str | None:
    """The literal prompt a --*-prompt-name / --*-prompt pair asks for; None when neither is given (the model's own
    prompt for the role then applies)."""
    return None if name is None and text is None else enc.sentence.resolve_prompt(name, text)


def run_build(args: argparse.Namespace) -> int:
    if bool(args.input) == bool(args.dataset):
        raise ValueError("give the documents with either --input FILE or --dataset bbc-news")
    out = check_output_dir(args.output)  # fail before any work, naming the path
    if args.passages == "documents" and not args.append:  # (an append reads as the index records)
        check_stride_flag(args)
    check_destination(out, args)  # fail fast; checked again under the lock, where it counts
    parts = parts_inputs(args.input)
    if parts:
        given = [f for f in ("model", "pooling", "doc_prompt_name", "doc_prompt", "query_prompt_name", "long_inputs",
                             "stride") + (("passages",) if args.passages != "documents" else ())
                 if getattr(args, f) is not None]
        if given:
            raise BertkitError(f"{', '.join('--' + g.replace('_', '-') if g != 'model' else 'MODEL' for g in given)}: "
                               "embedding parts record how they were made (model, pooling, prompt) and are indexed "
                               "as they are; leave it out (--query-prompt sets the query prompt)")
        return build_from_parts(args, out, parts)
    # inputs are checked before any model is loaded or text embedded, and before the directory is made
    ids, texts, metadata = bbc_documents() if args.dataset else read_documents(args.input[0], args.id_field,
                                                                               args.text_field)
    created = not out.exists()
    # One writer at a time, from reading the old index to saving the new one (see retrieval/index.py): a second
    # build or append waits here, then sees what the first one saved.
    with index_lock(out, args.lock_timeout, on_wait=on_wait):
        try:
            exists = check_destination(out, args)
            t0 = time.perf_counter()
            if args.append and exists:
                index = VectorIndex.load(out)
                if args.long_inputs is not None or args.stride is not None or args.passages != "documents":
                    raise BertkitError("--long-inputs/--stride: an appended document is read as the index records "
                                       f"({index.model.get('long_inputs', 'truncate') if index.model else 'truncate'}"
                                       "); leave them out")
                present = [i for i in ids if i in index]
                if present:
                    more = f" (and {len(present) - 5} more)" if len(present) > 5 else ""
                    raise BertkitError(f"{len(present)} id(s) of {args.input[0] if args.input else args.dataset} are "
                                       f"already in the index at {out}: {', '.join(map(repr, present[:5]))}{more}")
                enc = index.load_encoder(args.model)
                index.add_texts(enc, ids, texts, metadata, batch_size=args.batch_size)
                if args.kind:
                    index.set_kind(args.kind)
            elif args.passages == "windows":  # windows whatever --long-inputs says (truncate is refused)
                given = [f for f in ("pooling", "doc_prompt_name", "doc_prompt", "query_prompt_name", "query_prompt")
                         if getattr(args, f) is not None]
                if given:
                    raise BertkitError(f"{', '.join('--' + g.replace('_', '-') for g in given)}: not supported with "
                                       "--passages windows (windows are embedded with the model's own pooling and "
                                       "no prompt)")
                if args.long_inputs == "truncate":
                    raise BertkitError("--passages windows reads every window: leave out --long-inputs truncate")
                index = build_passage_index(load(args.model), ids, texts, metadata, kind=args.kind or "auto",
                                            batch_size=args.batch_size, stride=args.stride)
            else:
                enc = load(args.model)
                index = VectorIndex.build(enc, ids, texts, metadata, kind=args.kind or "auto",
                                          batch_size=args.batch_size, pooling=args.pooling,
                                          doc_prompt=given_prompt(enc, args.doc_prompt_name, args.doc_prompt),
                                          query_prompt=given_prompt(enc, args.query_prompt_name, args.query_prompt),
                                          long_inputs=args.long_inputs or "truncate", stride=args.stride)
            index.save(out)
        except BaseException:
            if created and out.is_dir() and not any(out.iterdir()):
                out.rmdir()  # leave no empty directory behind a failed build
            raise
    seconds = time.perf_counter() - t0
    print(f"index      {out}")
    print(f"model      {index.model['name'] if index.model else enc.name}")
    if is_passage_index(index):
        print(f"passages   {len(index):,} windows of {len(ids):,} documents")
    else:
        print(f"documents  {len(index):,} ({len(ids):,} added)")
    print(f"dimension  {index.dim}")
    print(f"kind       {index.active_kind}")
    print(f"seconds    {seconds:.1f} (embedding, indexing and saving)")
    return 0


def build_from_parts(args: argparse.Namespace, out: Path, parts: list[str]) -> int:
    """``index build --input PARTS...``: stream the parts' vectors into a new index (or add them, ``--append``)."""
    created = not out.exists()
    with index_lock(out, args.lock_timeout, on_wait=on_wait):
        try:
            exists = check_destination(out, args)
            t0 = time.perf_counter()
            if args.append and exists:
                index = VectorIndex.load(out)
                added, _ = index.add_parts(parts)
                if args.kind:
                    index.set_kind(args.kind)
                index.save(out)
            else:
                index = VectorIndex.from_parts(parts, out, args.kind or "auto", query_prompt=args.query_prompt)
                added = len(index)
        except BaseException:
            if created and out.is_dir() and not any(out.iterdir()):
                out.rmdir()
            raise
    print(f"index      {out}")
    print(f"model      {index.model['name'] if index.model else '?'}")
    print(f"documents  {len(index):,} ({added:,} added, from {', '.join(parts)})")
    print(f"dimension  {index.dim}")
    print(f"kind       {index.active_kind}")
    print(f"seconds    {time.perf_counter() - t0:.1f} (reading parts, indexing and saving)")
    return 0


def run_upsert(args: argparse.Namespace) -> int:
    parts = parts_inputs(args.input)
    if not parts:  # checked before the lock is waited for or a model loaded
        ids, texts, metadata = read_documents(args.input[0], args.id_field, args.text_field)
    t0 = time.perf_counter()
    with VectorIndex.edit(args.index, args.lock_timeout, on_wait) as index:
        if parts:
            added, replaced = index.add_parts(parts, upsert=True)
        else:
            enc = index.load_encoder(args.model)
            added, replaced = index.add_texts(enc, ids, texts, metadata, batch_size=args.batch_size, upsert=True)
    print(f"index      {args.index}")
    print(f"documents  {len(index):,} ({added:,} added, {replaced:,} replaced)")
    print(f"kind       {index.active_kind}")
    print(f"seconds    {time.perf_counter() - t0:.1f}")
    return 0


def run_delete(args: argparse.Namespace) -> int:
    ids = list(args.ids)
    if args.ids_file:
        ids += [line.strip() for line in read_lines(Path(args.ids_file)) if line.strip()]
    if not ids:
        raise BertkitError("no ids to delete; give them as arguments or with --ids-file FILE")
    with VectorIndex.edit(args.index, args.lock_timeout, on_wait) as index:
        deleted = index.remove(ids, missing=args.missing)
    print(f"index      {args.index}")
    print(f"deleted    {deleted:,} of {len(set(ids)):,} id(s) given")
    print(f"documents  {len(index):,}")
    return 0


def run_compact(args: argparse.Namespace) -> int:
    with VectorIndex.edit(args.index, args.lock_timeout, on_wait, compact=True) as index:
        deleted = index.deleted
    print(f"index      {args.index}")
    print(f"removed    {deleted:,} deleted slot(s)")
    print(f"documents  {len(index):,}")
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
    for name in ("nprobe", "refine", "ef_search"):
        value = getattr(args, name)
        if value is not None:
            if value < 1:
                raise ValueError(f"--{name.replace('_', '-')} must be >= 1, got {value}")
            setattr(index, name, value)
    enc = index.load_encoder(args.model)
    top = max(args.k, args.rerank_top) if args.rerank else args.k
    prompt = given_prompt(enc, args.query_prompt_name, args.query_prompt)
    if is_passage_index(index):  # each document once, by its best window
        query = index_model.embed(index.model, enc, [args.query], "query", 32, False, prompt)
        hits = best_per_document(index, query, top)[0]
    else:
        scores, found = index.search_text(enc, [args.query], top, prompt=prompt)
        hits = [{"id": i, "score": float(s)} for i, s in zip(found[0], scores[0], strict=True)]
    if args.rerank:
        from bertkit.retrieval.reranker import Reranker

        reranker = Reranker.from_pretrained(args.rerank)
        fuse = [h["score"] for h in hits] if reranker.fusion_weight is not None else None  # weight chosen on dev
        order = reranker.rank(args.query, [index.document(h.get("passage", h["id"])) for h in hits], top_k=args.k,
                              first_stage_scores=fuse)
        hits = [{**hits[j], "score": float(s), "retrieval_score": hits[j]["score"]} for j, s in order]
    hits = hits[:args.k]
    if args.json:
        print(json.dumps({"index": args.index, "query": args.query, "kind": index.active_kind,
                          "model": index.model["name"] if index.model else enc.name, "reranker": args.rerank,
                          "results": [{"rank": r, **h, "metadata": index.get(h.get("passage", h["id"]))}
                                      for r, h in enumerate(hits, start=1)]}, ensure_ascii=False))
        return 0
    width = max(len(h["id"]) for h in hits)
    for r, h in enumerate(hits, start=1):
        print(f"{r:>3}. {h['score']:7.4f}  {h['id']:<{width}}  {_snippet(index.get(h.get('passage', h['id'])))}")
    return 0
