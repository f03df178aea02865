"""Training checkpoints: everything a killed run needs to continue as if it had never stopped.

One file per checkpoint, ``checkpoints/step-0000120.pt``, holding the model, optimizer, schedule
position (step, elapsed time), RNG states, data position (epoch, micro-batch) and a fingerprint of
the run's settings. Files are written atomically (temp file, fsync, rename), so a ``kill -9`` leaves
either the previous checkpoint or the new one, never half of one. Loading uses
``torch.load(weights_only=True)``: a checkpoint holds tensors and plain Python values only.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Any

import torch

from bertkit.errors import CheckpointError
from bertkit.utils.atomic import atomic_path

log = logging.getLogger("bertkit")

FORMAT_VERSION = 1
_NAME = re.compile(r"^step-(\d+)\.pt$")


def checkpoint_dir(output_dir: Path) -> Path:
    return output_dir / "checkpoints"


def list_checkpoints(output_dir: Path) -> list[Path]:
    """Checkpoint files of a run, oldest first (by step)."""
    d = checkpoint_dir(output_dir)
    if not d.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in d.iterdir() if (m := _NAME.match(p.name))]
    return [p for _, p in sorted(found)]


def save_checkpoint(output_dir: Path, step: int, state: dict[str, Any], keep: int) -> Path:
    """Write ``state`` as the checkpoint of ``step`` and delete all but the newest ``keep``."""
    path = checkpoint_dir(output_dir) / f"step-{step:07d}.pt"
    with atomic_path(path) as tmp:
        torch.save({"format_version": FORMAT_VERSION, "step": step, **state}, tmp)
    for old in list_checkpoints(output_dir)[:-max(1, keep)]:
        old.unlink(missing_ok=True)
    log.debug("checkpoint written: %s", path)
    return path


def load_checkpoint(path: Path, fingerprint: dict[str, Any]) -> dict[str, Any]:
    """Read a checkpoint and check it belongs to a run with the same settings.

    A file torch cannot read, or one whose fingerprint differs from this run's, is refused with
    an error that names the file (and the settings that differ): resuming from it would silently
    train something other than what was asked for.
    """
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises RuntimeError, UnpicklingError, EOFError... on a bad file
        raise CheckpointError(
            f"{path}: cannot read checkpoint ({type(e).__name__}: {str(e).splitlines()[0][:200]}); "
            "it is corrupt or not a bertkit checkpoint. Delete it to resume from an older one."
        ) from None
    if not isinstance(state, dict) or state.get("format_version") != FORMAT_VERSION:
        raise CheckpointError(f"{path}: not a bertkit checkpoint (format version "
                              f"{state.get('format_version') if isinstance(state, dict) else None}, "
                              f"expected {FORMAT_VERSION})")
    # Compare nested settings (the training config, the encoder config) key by key, so that the
    # message names the setting that differs, not a whole truncated dict.
    saved, fingerprint = _flatten(state.get("fingerprint", {})), _flatten(fingerprint)
    diff = sorted(k for k in set(saved) | set(fingerprint) if saved.get(k) != fingerprint.get(k))
    if diff:
        detail = "; ".join(f"{k}: checkpoint {_short(saved.get(k))}, now {_short(fingerprint.get(k))}"
                           for k in diff[:6])
        raise CheckpointError(f"{path}: checkpoint is from a run with different settings ({detail}); "
                              "resume with the original settings or start a new output directory")
    return state


def _flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """{"train": {"lr": 1e-4}} -> {"train.lr": 1e-4}."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, dict) and v:
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."
