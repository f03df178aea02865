"""Atomic file writes: a reader sees the old file or the whole new one, never a partial one."""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path

_UMASK = os.umask(0o022)
os.umask(_UMASK)  # read once at import: the umask can only be read by setting it


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temp path in the target's folder; on success rename it over ``path``.

    The temp file lives in the same directory so that ``os.replace`` is a rename on one
    filesystem (atomic on POSIX). On any exception the temp file is removed and ``path``
    is left untouched.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        with open(tmp_path, "rb+") as f:
            os.fsync(f.fileno())
        os.chmod(tmp_path, 0o666 & ~_UMASK)  # mkstemp makes it owner-only; give it an ordinary file's mode
        os.replace(tmp_path, path)
    except BaseException:
        tmp_path.unlink(missing_ok=True)
        raise


def atomic_write_text(path: str | os.PathLike[str], text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike[str], stale: Sequence[str] = ()) -> Iterator[Path]:
    """Yield an empty temp directory beside ``path``; on success its files take their place in ``path``.

    A new (or empty) ``path`` appears whole, in one rename. Into an existing one each file is renamed over its
    namesake, so every file is whole, old or new; files of ``path`` the new set lacks stay, except the names in
    ``stale`` (files or folders), removed first: what an older save of another kind left, which would
    misdescribe the new one. On any exception the temp directory is removed and ``path`` is left untouched.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    build = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    try:
        yield build
        os.chmod(build, 0o777 & ~_UMASK)  # mkdtemp makes it owner-only
        if not path.exists() or (path.is_dir() and not any(path.iterdir())):
            os.replace(build, path)
            return
        for name in stale:
            old = path / name
            if old.is_dir() and not old.is_symlink():
                shutil.rmtree(old)
            else:
                old.unlink(missing_ok=True)
        # in the order they were written, so a file written last to mark a complete save (a manifest) moves last
        for src in sorted((q for q in build.rglob("*") if q.is_file()), key=lambda q: (q.stat().st_mtime_ns, str(q))):
            dst = path / src.relative_to(build)
            dst.parent.mkdir(parents=True, exist_ok=True)
            os.replace(src, dst)
    finally:
        shutil.rmtree(build, ignore_errors=True)


def sha256_file(path: str | os.PathLike[str]) -> str:
    """The hex sha256 of a file, read in 4 MiB blocks (manifests record it; a reader checks what it loads)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 22):
            h.update(chunk)
    return h.hexdigest()
