"""The writer lock of an index directory: one build or append at a time.

A build or an append holds ``index_lock(directory)`` (an OS lock, ``flock``, on the directory itself) from
reading the old index to saving the new one. Without it two appends both read the old index and the last save
silently drops the other's documents; with it the second waits for the first and then reads what the first saved.
The OS releases the lock when its process ends, even on SIGKILL.

The lock is re-entrant in the thread that holds it: ``VectorIndex.save`` takes it for every save, also inside a
caller's ``index_lock`` / ``VectorIndex.edit`` block. Another thread of the same process waits like another
process would (each acquisition opens its own descriptor, and flock locks of two descriptors exclude each other).
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from bertkit.errors import BertkitError

log = logging.getLogger("bertkit")

_held = threading.local()  # .depth: {real path of a directory this thread holds: how many times}


class IndexLocked(BertkitError):
    """Another process is writing the index and did not finish within the wait allowed."""


@contextlib.contextmanager
def index_lock(directory: str | os.PathLike[str], timeout_s: float | None = 600.0,
               on_wait: Callable[[str], None] | None = None) -> Iterator[Path]:
    """Hold the index directory's writer lock (the directory is created if missing) for the block.

    If another process holds it, ``on_wait(message)`` is called once and this waits for it, polling, up to
    ``timeout_s`` seconds (None: for ever), then raises IndexLocked. The lock is ``flock`` on the directory's
    own descriptor: no lock file to leave behind, and the OS drops it when the holder dies. A holder may remove
    the (empty) directory it created when its build fails; a waiter then finds its descriptor no longer names
    the directory at that path, and locks the path anew.
    """
    d = Path(directory)
    key = os.path.realpath(d)
    depth: dict[str, int] = _held.__dict__.setdefault("depth", {})
    if depth.get(key):  # this thread holds it already (a save inside an edit): no second flock, which would wait
        depth[key] += 1
        try:
            yield d
        finally:
            depth[key] -= 1
        return
    deadline = None if timeout_s is None else time.monotonic() + timeout_s
    waited = False
    while True:
        d.mkdir(parents=True, exist_ok=True)
        fd = os.open(d, os.O_RDONLY | os.O_DIRECTORY)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            if not waited:
                limit = "until it finishes" if timeout_s is None else f"up to {timeout_s:g} s"
                (on_wait or log.warning)(f"another process is writing the index at {d}; waiting {limit}")
                waited = True
            if deadline is not None and time.monotonic() >= deadline:
                raise IndexLocked(f"the index at {d} is still being written by another process after "
                                  f"{timeout_s:g} s; nothing was written by this run. Try again when it has "
                                  "finished") from None
            time.sleep(0.1)
            continue
        try:
            current = os.stat(d)
        except FileNotFoundError:
            current = None
        locked = os.fstat(fd)
        if current is None or (current.st_dev, current.st_ino) != (locked.st_dev, locked.st_ino):
            os.close(fd)  # the directory we locked was removed (or replaced) meanwhile: lock the path again
            continue
        break
    depth[key] = 1
    try:
        yield d
    finally:
        depth.pop(key, None)
        os.close(fd)  # closing the descriptor releases the lock
