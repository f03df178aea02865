"""Pretraining corpus: reading documents, the token cache, packing, held-out split, epoch order and sharding."""

import json
import logging
import os
from itertools import islice

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bertkit.data import packaged
from bertkit.data.corpus import (
    PackedSequences,
    ReadStats,
    TokenCache,
    build_token_cache,
    describe_corpus,
    epoch_order,
    iter_documents,
    shard_batches,
)
from bertkit.data.tokenizer import WordPieceTokenizer
from bertkit.data.wordpiece import train_wordpiece
from bertkit.errors import BertkitError, ConfigError, InputFileError


@pytest.fixture(scope="module")
def tok(minilm_dir):
    return WordPieceTokenizer.from_dir(minilm_dir)


@pytest.fixture
def folder(tmp_path):
    d = tmp_path / "docs"
    (d / "sub" / "deeper").mkdir(parents=True)
    (d / "b.txt").write_text("Second file, a plain text document.", encoding="utf-8")
    (d / "a.md").write_text("# First\n\nA markdown document.", encoding="utf-8")
    (d / "sub" / "deeper" / "page.rst.txt").write_text("A reST page\n===========\n\nDeep down.", encoding="utf-8")
    (d / "sub" / "c.jsonl").write_text('{"text": "json one"}\n\n{"text": "json two", "id": 2}\n', encoding="utf-8")
    (d / "sub" / "empty.txt").write_text("  \n\t", encoding="utf-8")
    (d / "ignored.csv").write_text("text\nnot read\n", encoding="utf-8")
    return d


def test_documents_from_folder_file_and_jsonl(folder):
    stats = ReadStats()
    docs = list(iter_documents([folder, folder / "b.txt"], stats))
    # sorted paths: a.md, b.txt, sub/c.jsonl (two lines), sub/deeper/page.rst.txt; empty.txt skipped; then b.txt
    assert docs == ["# First\n\nA markdown document.", "Second file, a plain text document.", "json one",
                    "json two", "A reST page\n===========\n\nDeep down.", "Second file, a plain text document."]
    assert stats.n_docs == 6 and stats.n_replaced_bytes == 0


def test_jsonl_errors_name_file_and_line(tmp_path):
    f = tmp_path / "c.jsonl"
    for body, problem in [('{"text": "ok"}\n\n{"text": "ok",\n', r"c\.jsonl, line 3: not valid JSON"),
                          ('{"text": "ok"}\n{"body": "x"}\n', r"c\.jsonl, line 2: missing field 'text' \(fields: body"),
                          ('{"text": 3}\n', r"c\.jsonl, line 1: field 'text' is int, expected a string"),
                          ('["text"]\n', r"c\.jsonl, line 1: expected a JSON object, got list")]:
        f.write_text(body, encoding="utf-8")
        with pytest.raises(InputFileError, match=problem):
            list(iter_documents([f]))


def test_bad_sources(tmp_path, monkeypatch):
    with pytest.raises(BertkitError, match="'nope': no such file or folder, and not a built-in corpus"):
        list(iter_documents(["nope"]))
    (tmp_path / "x.csv").write_text("text\n", encoding="utf-8")
    with pytest.raises(InputFileError, match=r"x\.csv: unsupported corpus file '\.csv'"):
        list(iter_documents([tmp_path / "x.csv"]))
    (tmp_path / "none").mkdir()
    with pytest.raises(InputFileError, match="folder holds no corpus files"):
        list(iter_documents([tmp_path / "none"]))
    monkeypatch.setattr(packaged, "PYTHON_DOCS_DIRS", [tmp_path / "absent"])
    with pytest.raises(BertkitError, match=r"python3\.11-doc.*apt-get download python3\.11-doc && dpkg-deb -x"):
        list(iter_documents(["python-docs"]))


def test_non_utf8_bytes_are_replaced_and_counted(tmp_path, tok, caplog):
    (tmp_path / "a.txt").write_text("clean", encoding="utf-8")
    (tmp_path / "b.txt").write_bytes(b"caf\xe9 au lait \xff\xfe, and a real \xef\xbf\xbd, cut \xe2\x82")
    (tmp_path / "c.jsonl").write_bytes(b'{"text": "ok"}\n{"text": "na\xefve"}\n')
    stats = ReadStats()
    with caplog.at_level(logging.WARNING, logger="bertkit"):
        docs = list(iter_documents([tmp_path], stats))
    assert docs[1] == "caf\ufffd au lait \ufffd\ufffd, and a real \ufffd, cut \ufffd"
    assert docs[3] == "na\ufffdve"
    assert stats.n_replaced_bytes == 6 and stats.first_replaced == str(tmp_path / "b.txt")
    assert f"replaced 6 bytes that are not valid UTF-8 with U+FFFD (first in {tmp_path / 'b.txt'})" in caplog.text
    cache = build_token_cache([tmp_path], tok, tmp_path / "cache")
    assert cache.meta["n_replaced_bytes"] == 6 and cache.n_docs == 4


def test_builtin_bbc_and_tweets():
    bbc = list(iter_documents(["bbc-news"]))
    assert len(bbc) == 2127 and bbc[0].split("\n")[0] == "Ad sales boost Time Warner profit"
    tweets = list(islice(iter_documents(["tweets"]), 3))
    assert len(tweets) == 3 and all(isinstance(t, str) and t.strip() for t in tweets)


def test_cache_build_reuse_and_contents(folder, tok, caplog):
    cache_dir = folder.parent / "cache"
    with caplog.at_level(logging.INFO, logger="bertkit"):
        cache = build_token_cache([folder], tok, cache_dir, batch_docs=2)  # several batches
        assert "token cache built" in caplog.text
        caplog.clear()
        again = build_token_cache([folder], tok, cache_dir)
        assert "token cache reused" in caplog.text
    docs = list(iter_documents([folder]))
    expected = tok.encode_plain(docs)
    assert cache.n_docs == len(docs) == 5 and cache.n_tokens == sum(map(len, expected))
    assert cache.tokens.dtype == np.uint16 and cache.doc_offsets.dtype == np.int64
    assert isinstance(again.tokens, np.memmap)
    assert [again.doc(i).tolist() for i in range(again.n_docs)] == expected
    meta = json.loads((cache_dir / "meta.json").read_text())
    assert meta["tokenizer"] == tok.fingerprint() and meta["n_docs"] == 5 and meta["n_tokens"] == cache.n_tokens
    assert sorted(p.name for p in cache_dir.iterdir()) == ["doc_offsets.npy", "meta.json", "tokens.npy"]
    assert "documents       5" in describe_corpus(again)


def test_cache_rebuilt_for_another_tokenizer_or_changed_sources(folder, tok, caplog, one_thread):
    cache_dir = folder.parent / "cache"
    first = build_token_cache([folder], tok, cache_dir)
    other = WordPieceTokenizer.from_dir(train_wordpiece([folder], 100, folder.parent / "tok", min_frequency=1))
    with caplog.at_level(logging.INFO, logger="bertkit"):
        rebuilt = build_token_cache([folder], other, cache_dir)
    assert "built with another tokenizer; rebuilding" in caplog.text
    assert rebuilt.doc(0).tolist() == other.encode_plain(["# First\n\nA markdown document."])[0]
    assert rebuilt.meta["tokenizer"] != first.meta["tokenizer"]

    caplog.clear()
    (folder / "b.txt").write_text("Changed text, longer than before: " * 10, encoding="utf-8")
    with caplog.at_level(logging.INFO, logger="bertkit"):
        changed = build_token_cache([folder], other, cache_dir)
    assert "sources changed; rebuilding" in caplog.text and changed.n_tokens > rebuilt.n_tokens

    caplog.clear()
    with caplog.at_level(logging.INFO, logger="bertkit"):
        fewer = build_token_cache([folder / "a.md"], other, cache_dir)
    assert "built from other sources; rebuilding" in caplog.text and fewer.n_docs == 1


def test_empty_and_too_small_corpus(tmp_path, tok):
    (tmp_path / "e").mkdir()
    (tmp_path / "e" / "blank.txt").write_text(" \n", encoding="utf-8")
    (tmp_path / "e" / "ctrl.txt").write_text("\x00\x01", encoding="utf-8")  # text, but no tokens
    with pytest.raises(BertkitError, match=r"corpus .*e: no documents with any tokens \(1 non-empty"):
        build_token_cache([tmp_path / "e"], tok, tmp_path / "cache")
    assert not (tmp_path / "cache" / "meta.json").exists()
    (tmp_path / "small.txt").write_text("one two three four five", encoding="utf-8")
    cache = build_token_cache([tmp_path / "small.txt"], tok, tmp_path / "cache")
    assert cache.n_tokens == 5
    with pytest.raises(BertkitError, match=r"too small for one sequence of 128: it has 5 tokens in 1 documents, "
                                           r"6 with a \[SEP\] after each; a sequence needs 127"):
        PackedSequences(cache, 128, tok.cls_id, tok.sep_id)
    assert len(PackedSequences(cache, 7, tok.cls_id, tok.sep_id)) == 1


def fake_cache(tmp_path, lengths, vocab=1000, seed=0):
    rng = np.random.default_rng(seed)
    tokens = rng.integers(10, vocab, size=sum(lengths)).astype(np.uint16)  # never CLS=1 or SEP=2
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    return TokenCache(tmp_path, tokens, offsets, {"sources": ["fake"], "n_tokens": len(tokens)})


@settings(max_examples=60, deadline=None)
@given(lengths=st.lists(st.integers(1, 40), min_size=1, max_size=30), max_length=st.integers(2, 50))
def test_packing_invariants(tmp_path_factory, lengths, max_length):
    cache = fake_cache(tmp_path_factory.getbasetemp(), lengths)
    stream = [t for d in range(cache.n_docs) for t in [*cache.doc(d).tolist(), 2]]
    if len(stream) < max_length - 1:
        with pytest.raises(BertkitError, match="too small"):
            PackedSequences(cache, max_length, cls_id=1, sep_id=2)
        return
    packed = PackedSequences(cache, max_length, cls_id=1, sep_id=2)
    assert len(packed) == len(stream) // (max_length - 1)
    rows = packed.take(np.arange(len(packed)))
    assert rows.shape == (len(packed), max_length) and rows.dtype == np.int64
    assert (rows[:, 0] == 1).all()
    # without their [CLS], the rows are the stream doc1 [SEP] doc2 [SEP] ..., the last partial row dropped
    assert rows[:, 1:].ravel().tolist() == stream[:rows[:, 1:].size]
    assert packed[len(packed) - 1].tolist() == rows[-1].tolist() == packed[-1].tolist()
    assert packed.take([len(packed) - 1, 0]).tolist() == [rows[-1].tolist(), rows[0].tolist()]
    with pytest.raises(IndexError):
        packed[len(packed)]
    with pytest.raises(IndexError):
        packed.take([0, len(packed)])


def test_packing_a_built_cache(folder, tok):
    (folder / "long.txt").write_text(" ".join(f"word{i}" for i in range(300)), encoding="utf-8")
    cache = build_token_cache([folder], tok, folder.parent / "cache")
    packed = PackedSequences(cache, 64, tok.cls_id, tok.sep_id)
    rows = packed.take(np.arange(len(packed)))
    assert len(packed) == (cache.n_tokens + cache.n_docs) // 63 and (rows[:, 0] == tok.cls_id).all()
    text = tok.decode(rows[0].tolist())
    assert text.startswith("# first a markdown document. second file")  # decode drops [CLS]/[SEP]
    assert (rows[:, 1:] == tok.sep_id).sum() <= cache.n_docs


def test_split_is_disjoint_and_deterministic(tmp_path):
    packed = PackedSequences(fake_cache(tmp_path, [50] * 40), 10, cls_id=1, sep_id=2)  # 2040 // 9 = 226 rows
    train, held = packed.split(eval_fraction=0.05, seed=3)
    assert len(held) == 11 and len(train) == 226 - 11
    assert not set(train) & set(held) and sorted({*train, *held}) == list(range(226))
    again_train, again_held = packed.split(eval_fraction=0.05, seed=3)
    assert (again_held == held).all() and (again_train == train).all()
    assert not (packed.split(eval_fraction=0.05, seed=4)[1] == held).all()
    assert len(packed.split(eval_sequences=7)[1]) == 7 and len(packed.split(eval_fraction=0.0)[1]) == 0
    assert len(packed.split(eval_fraction=0.001)[1]) == 1  # a positive fraction holds out at least one
    with pytest.raises(ConfigError, match="cannot hold out 226 of 226"):
        packed.split(eval_sequences=226)
    with pytest.raises(ConfigError, match="eval_fraction"):
        packed.split(eval_fraction=1.5)


def test_epoch_order():
    a = epoch_order(1000, seed=1, epoch=0)
    assert sorted(a.tolist()) == list(range(1000))
    assert (a == epoch_order(1000, seed=1, epoch=0)).all()
    assert not (a == epoch_order(1000, seed=1, epoch=1)).all()
    assert not (a == epoch_order(1000, seed=2, epoch=0)).all()


@pytest.mark.parametrize("world", [1, 2, 4])
def test_shard_batches_reassemble_the_global_batches(world):
    order = epoch_order(103, seed=0, epoch=5) + 1000  # any index values, not positions
    single = shard_batches(order, 16, rank=0, world=1)
    assert len(single) == 6  # 103 // 16; the last 7 are dropped
    per_rank = [shard_batches(order, 16, rank=r, world=world) for r in range(world)]
    for step in range(6):
        assert all(len(steps[step]) == 16 // world for steps in per_rank)
        assert np.concatenate([steps[step] for steps in per_rank]).tolist() == single[step].tolist()
        assert single[step].tolist() == order[step * 16:(step + 1) * 16].tolist()
    with pytest.raises(ConfigError, match="does not split evenly over 3 ranks"):
        shard_batches(order, 16, rank=0, world=3)
    with pytest.raises(ConfigError, match="rank 4 out of range"):
        shard_batches(order, 16, rank=4, world=4)


@pytest.mark.slow  # about 5 s: 3.3M tokens
@pytest.mark.skipif(not any(d.is_dir() for d in packaged.PYTHON_DOCS_DIRS), reason="python3.11-doc not unpacked")
def test_python_docs(tmp_path, tok):
    cache = build_token_cache(["python-docs"], tok, tmp_path / "cache")
    assert cache.n_docs == 497 and 3_000_000 < cache.n_tokens < 3_500_000
    assert cache.meta["n_replaced_bytes"] == 0
    assert all(os.path.getsize(tmp_path / "cache" / n) > 0 for n in ("tokens.npy", "doc_offsets.npy"))
    packed = PackedSequences(cache, 128, tok.cls_id, tok.sep_id)
    assert len(packed) == (cache.n_tokens + cache.n_docs) // 127
