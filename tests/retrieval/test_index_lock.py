"""Concurrent index writers (issue 15, finding 3): two appends into one index both keep their documents, and a
writer that cannot get the lock in time exits 2 having written nothing."""

import subprocess
import sys
import threading
import time

import pytest

from bertkit.cli.main import main
from bertkit.retrieval.index import IndexLocked, VectorIndex, index_lock


def write_tsv(path, prefix, n):
    path.write_text("".join(f"{prefix}{i}\t{prefix} document number {i}\n" for i in range(n)))
    return path


def test_two_concurrent_appends_keep_every_document(tmp_path, tiny_dir, monkeypatch, capsys):
    out = tmp_path / "idx"
    assert main(["index", "build", str(tiny_dir), "-i", str(write_tsv(tmp_path / "base.tsv", "base", 3)),
                 "-o", str(out)]) == 0
    # Widen the read-modify-write window so that, without a lock, both appends read the 3-document index and the
    # second save drops the first one's documents (what happened in 5 of 5 trials before the lock).
    add_texts = VectorIndex.add_texts

    def slow_add_texts(self, *args, **kwargs):
        time.sleep(0.5)
        return add_texts(self, *args, **kwargs)
    monkeypatch.setattr(VectorIndex, "add_texts", slow_add_texts)

    codes = {}

    def append(prefix):
        codes[prefix] = main(["index", "build", "-i", str(write_tsv(tmp_path / f"{prefix}.tsv", prefix, 4)),
                              "-o", str(out), "--append"])
    threads = [threading.Thread(target=append, args=(p,)) for p in ("a", "b")]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert codes == {"a": 0, "b": 0}
    index = VectorIndex.load(out)
    assert sorted(index.ids) == sorted([f"base{i}" for i in range(3)] + [f"{p}{i}" for p in "ab" for i in range(4)])
    assert "another process is writing the index" in capsys.readouterr().err  # the second one said it waited


def test_a_writer_that_cannot_get_the_lock_gives_up_with_exit_2(tmp_path, tiny_dir, capsys):
    out = tmp_path / "idx"
    out.mkdir()
    # another process holds the directory's flock (as a running `bertkit index build` would)
    holder = subprocess.Popen([sys.executable, "-c", (
        "import fcntl, os, sys, time\n"
        f"fd = os.open({str(out)!r}, os.O_RDONLY)\n"
        "fcntl.flock(fd, fcntl.LOCK_EX)\n"
        "print('locked', flush=True)\n"
        "time.sleep(60)\n")], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        docs = write_tsv(tmp_path / "docs.tsv", "d", 2)
        t0 = time.monotonic()
        assert main(["index", "build", str(tiny_dir), "-i", str(docs), "-o", str(out), "--lock-timeout", "0.5"]) == 2
        assert time.monotonic() - t0 < 30
        err = capsys.readouterr().err
        assert "waiting up to 0.5 s" in err and "still being written by another process" in err
        assert "nothing was written" in err and list(out.iterdir()) == []
        with pytest.raises(IndexLocked), index_lock(out, timeout_s=0.2, on_wait=lambda m: None):
            pass
    finally:
        holder.kill()
        holder.wait()
    with index_lock(out, timeout_s=1):  # released when its holder died
        pass


def test_a_failed_build_leaves_no_directory_and_a_waiter_relocks_the_path(tmp_path, capsys):
    docs = write_tsv(tmp_path / "docs.tsv", "d", 2)
    assert main(["index", "build", str(tmp_path / "no-such-model"), "-i", str(docs), "-o", str(tmp_path / "idx")]) == 2
    assert not (tmp_path / "idx").exists()  # the lock made it; the failure removed it again
    # a holder that removes the directory it locked: the waiter locks the directory now at that path
    d = tmp_path / "gone"
    got = threading.Event()
    with index_lock(d, timeout_s=5):
        def waiter():
            with index_lock(d, timeout_s=10, on_wait=lambda m: None) as locked:
                got.set()
                assert locked.is_dir()
        t = threading.Thread(target=waiter)
        t.start()
        time.sleep(0.3)
        assert not got.is_set()
        d.rmdir()
    t.join(10)
    assert got.is_set() and d.is_dir()


def test_concurrent_deletes_and_upserts_keep_every_change(tmp_path, tiny_dir, monkeypatch, capsys):
    out = tmp_path / "idx"
    assert main(["index", "build", str(tiny_dir), "-i", str(write_tsv(tmp_path / "base.tsv", "base", 6)),
                 "-o", str(out)]) == 0
    # widen each writer's read-modify-write window: without the lock the later save would drop the other's change
    remove = VectorIndex.remove

    def slow_remove(self, *args, **kwargs):
        time.sleep(0.5)
        return remove(self, *args, **kwargs)
    monkeypatch.setattr(VectorIndex, "remove", slow_remove)
    codes = {}
    runs = {"delete": ["index", "delete", str(out), "base0", "base1"],
            "upsert": ["index", "upsert", str(out), "-i", str(write_tsv(tmp_path / "up.tsv", "base", 1))],
            "delete2": ["index", "delete", str(out), "base5"]}
    threads = [threading.Thread(target=lambda n=n: codes.__setitem__(n, main(runs[n]))) for n in runs]
    for t in threads:
        t.start()
        time.sleep(0.05)
    for t in threads:
        t.join(120)
    assert codes == {"delete": 0, "upsert": 0, "delete2": 0}
    index = VectorIndex.load(out)
    # base0 was deleted and upserted again, in whichever order the writers got the lock
    assert {"base1", "base5"}.isdisjoint(index.ids) and {"base2", "base3", "base4"} <= set(index.ids)
    assert "another process is writing the index" in capsys.readouterr().err


def test_a_delete_that_cannot_get_the_lock_gives_up_and_changes_nothing(tmp_path, tiny_dir, capsys):
    out = tmp_path / "idx"
    docs = write_tsv(tmp_path / "d.tsv", "d", 3)
    assert main(["index", "build", str(tiny_dir), "-i", str(docs), "-o", str(out)]) == 0
    before = sorted(p.name for p in out.iterdir())
    with index_lock(out):  # this thread holds it: the CLI below runs in another thread, as another writer would
        codes = {}
        t = threading.Thread(target=lambda: codes.setdefault("rc", main(["index", "delete", str(out), "d0",
                                                                         "--lock-timeout", "0.3"])))
        t.start()
        t.join(30)
    assert codes == {"rc": 2}
    err = capsys.readouterr().err
    assert "still being written by another process after 0.3 s; nothing was written" in err
    assert sorted(p.name for p in out.iterdir()) == before and "d0" in VectorIndex.load(out)
    with index_lock(out), index_lock(out):  # re-entrant in the holding thread: a save inside an edit does not wait
        VectorIndex.load(out).save(out)
