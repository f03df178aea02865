"""An index directory's manifest (``index.json``) and the files it names (``retrieval/index.py`` has the layout):
reading and checking it, and telling our own files from others'.

Format 2 adds to format 1 the ids and deleted files, items as Arrow instead of JSON lines, the slot and deleted
counts and the search settings; a format-1 manifest still reads (its index is written in format 2 by its next
save); a newer format is refused, naming both versions.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

import numpy as np

from bertkit.errors import BertkitError, InputFileError
from bertkit.retrieval.index_kinds import IVF_KINDS, KINDS
from bertkit.utils.atomic import sha256_file

FORMAT, FORMAT_VERSION = "bertkit-index", 2
EXT = {"vectors": "npy", "items": "arrow", "ids": "npy", "deleted": "npy", "hnsw": "faiss", "ivf": "faiss"}
# our data files, and the temp files of killed saves (atomic_path names them ".<name>.<random>.tmp")
OWN_FILE = re.compile(r"^(\.?(vectors|items|ids|deleted|hnsw|ivf)-[0-9a-f]{8}\.(npy|jsonl|arrow|faiss)|\.index\.json)"
                      r"(\.[^.]+\.tmp)?$")


def ann_role(kind: str) -> str | None:
    """The file role of a kind's faiss structure (None: the kind has none)."""
    return "hnsw" if kind == "hnsw" else "ivf" if kind in IVF_KINDS else None


def read_manifest(directory: str | os.PathLike[str]) -> dict[str, Any]:
    d = Path(directory)
    path = d / "index.json"
    if not path.is_file():
        raise BertkitError(f"no index at {d}; build one with bertkit index build MODEL --input FILE --output {d}")
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise InputFileError(path, f"not a valid index manifest ({e})") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise InputFileError(path, f"not a bertkit index manifest (no \"format\": \"{FORMAT}\")")
    if manifest.get("format_version", 0) > FORMAT_VERSION:
        raise InputFileError(path, f"index format {manifest['format_version']} is newer than this bertkit "
                                   f"reads ({FORMAT_VERSION}); upgrade bertkit")
    for key in ("dim", "count", "kind", "files"):
        if key not in manifest:
            raise InputFileError(path, f"missing field {key!r}")
    if manifest["kind"] not in KINDS:
        raise InputFileError(path, f"unknown kind {manifest['kind']!r}; this bertkit knows {', '.join(KINDS)}")
    return manifest


def check_files(d: Path, manifest: dict[str, Any], verify: bool) -> list[str]:
    """The roles of the files ``manifest`` names, each checked to be there with its size (and, ``verify``,
    its sha256: reading it whole); an error names the file."""
    files = manifest["files"]
    roles = ["vectors", "items"] + (["ids"] if manifest.get("format_version", 1) >= 2 else [])
    roles += ["deleted"] if "deleted" in files else []
    roles += [r for r in [ann_role(manifest["kind"])] if r]
    for role in roles:
        if role not in files:
            raise InputFileError(d / "index.json", f"lists no {role} file")
        f, entry = d / files[role]["name"], files[role]
        if not f.is_file():
            raise InputFileError(f, "missing (index.json lists it); the index is incomplete")
        if f.stat().st_size != entry["bytes"] or (verify and sha256_file(f) != entry["sha256"]):
            raise InputFileError(f, "corrupt: its size or checksum differs from index.json")
    return roles


def read_deleted(path: Path, slots: int) -> np.ndarray:
    """(slots,) bool: the slots ``deleted-<gen>.npy`` lists."""
    listed = np.load(path, allow_pickle=False)
    if listed.dtype != np.int64 or listed.ndim != 1 or (len(listed) and not 0 <= listed.min() <= listed.max() < slots):
        raise InputFileError(path, f"expected int64 slots in [0, {slots}), got {listed.dtype} {listed.shape}")
    dead = np.zeros(slots, bool)
    dead[listed] = True
    return dead


def named_files(d: Path) -> set[str]:
    """The files the manifest in ``d`` names (none when there is none)."""
    try:
        return {e["name"] for e in json.loads((d / "index.json").read_text(encoding="utf-8"))["files"].values()}
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return set()


def remove_unnamed(d: Path, names: set[str]) -> None:
    """Remove our files in ``d`` other than ``names``: a previous generation, leftovers of killed saves."""
    for f in d.iterdir():
        if OWN_FILE.match(f.name) and f.name not in names:
            f.unlink(missing_ok=True)
