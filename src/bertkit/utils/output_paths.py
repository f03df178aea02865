"""Checking where a command will write, before it does any work.

A command that embeds for an hour and then cannot write its result has wasted the hour, so every CLI
command that writes calls ``check_output_file`` or ``check_output_dir`` on its output first, before it
loads a model. The check is made by trying: a probe file is created (and removed) in the directory that
will receive the output, or in the deepest ancestor that exists when the directory is still to be made,
so read-only filesystems, missing permissions and pseudo-filesystems such as /sys fail here, whatever
``os.access`` would have said (it says "writable" to root everywhere).
"""

from __future__ import annotations

import errno
import os
import tempfile
from collections.abc import Sequence
from pathlib import Path

from bertkit.errors import BertkitError


class OutputPathError(BertkitError, ValueError):
    """An output location that cannot be written: the message names the path and why."""


def check_output_file(path: str | os.PathLike[str], suffixes: Sequence[str] | None = None) -> Path:
    """``path`` as a Path if a file can be written there (replacing one that exists), else OutputPathError.

    suffixes: the extensions the command writes (".npy", ...), compared case-insensitively.
    """
    p = Path(path)
    if suffixes is not None and p.suffix.lower() not in suffixes:
        raise OutputPathError(f"{p}: unsupported output format {p.suffix or '(no extension)'!r}; expected "
                              f"{' or '.join(suffixes)}")
    if p.is_dir():
        raise OutputPathError(f"{p} is a directory; give a file name for the output")
    if p.name in ("", ".", ".."):
        raise OutputPathError(f"{p} names a directory; give a file name for the output")
    _check_writable_dir(p.parent, p)
    return p


def check_output_dir(path: str | os.PathLike[str]) -> Path:
    """``path`` as a Path if it is a writable directory or one that can be created, else OutputPathError."""
    p = Path(path)
    if p.exists() and not p.is_dir():
        raise OutputPathError(f"{p} exists and is not a directory; give a directory for the output")
    _check_writable_dir(p, p)
    return p


def _check_writable_dir(directory: Path, target: Path) -> None:
    """Fail unless a file can be created in ``directory`` (or, while it does not exist, in its deepest
    existing ancestor, which must be a directory)."""
    existing = directory if str(directory) else Path(".")
    while not existing.exists():
        if existing.parent == existing:
            break
        existing = existing.parent
    if not existing.is_dir():
        raise OutputPathError(f"cannot write {target}: {existing} is a file, not a directory")
    try:
        fd, probe = tempfile.mkstemp(prefix=".bertkit-write-check.", dir=existing)
    except OSError as e:
        raise OutputPathError(f"cannot write {target}: {_reason(e, existing)}") from None
    os.close(fd)
    os.unlink(probe)


def _reason(e: OSError, directory: Path) -> str:
    if e.errno in (errno.EACCES, errno.EPERM):
        return f"no permission to create files in {directory}"
    if e.errno == errno.EROFS:
        return f"{directory} is on a read-only filesystem"
    if e.errno == errno.ENOSPC:
        return f"no space left on the device of {directory}"
    return f"creating a file in {directory} fails ({e.strerror or e})"
