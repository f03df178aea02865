import os
import stat

import pytest

from bertkit.utils.atomic import atomic_dir, atomic_path, atomic_write_text


def test_write_replaces_whole_file_with_an_ordinary_mode(tmp_path):
    target = tmp_path / "a.json"
    atomic_write_text(target, "old")
    atomic_write_text(target, "new")
    umask = os.umask(0o022)
    os.umask(umask)
    assert target.read_text() == "new"
    assert stat.S_IMODE(target.stat().st_mode) == 0o666 & ~umask  # not mkstemp's owner-only 0600
    assert [p.name for p in tmp_path.iterdir()] == ["a.json"]


def test_a_failed_write_leaves_the_old_file_and_no_temp(tmp_path):
    target = tmp_path / "a.json"
    atomic_write_text(target, "old")
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        tmp.write_text("half")
        raise RuntimeError("killed")
    assert target.read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["a.json"]


def test_atomic_dir_new_existing_and_failed(tmp_path):
    out = tmp_path / "model"
    with atomic_dir(out) as build:
        (build / "a.txt").write_text("1")
        (build / "sub").mkdir()
        (build / "sub" / "b.txt").write_text("2")
        assert not out.exists()  # nothing shows until the block ends
    assert (out / "a.txt").read_text() == "1" and (out / "sub" / "b.txt").read_text() == "2"
    (out / "mine.txt").write_text("keep")
    (out / "old.json").write_text("stale")
    with atomic_dir(out, stale=("old.json", "sub")) as build:
        (build / "a.txt").write_text("new")
    assert (out / "a.txt").read_text() == "new" and (out / "mine.txt").read_text() == "keep"
    assert not (out / "old.json").exists() and not (out / "sub").exists()
    with pytest.raises(RuntimeError), atomic_dir(out, stale=("mine.txt",)) as build:
        (build / "a.txt").write_text("half")
        raise RuntimeError
    assert (out / "a.txt").read_text() == "new" and (out / "mine.txt").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]  # no temp directory left
