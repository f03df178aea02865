"""Which model made an index's vectors, and how: what its manifest records (``model_info``), the checks that a
query model (or more vectors) match it, and the index's own model loaded back (``retrieval/index.py``).

The manifest records the model (a built-in's name, or a local model's resolved directory), its pooling, the
documents' prompt and the prompt queries get, and the length texts were cut to, so appends and searches embed the
same way, whatever the model's defaults later are.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from bertkit.encoder import Encoder
from bertkit.errors import BertkitError, CheckpointError
from bertkit.hub import ALIASES, BUILTIN_MODELS
from bertkit.loader import load
from bertkit.model.pooling import pooling_modes

log = logging.getLogger("bertkit")


def model_key(name: str, directory: str | None) -> str:
    """What identifies a model: a built-in's name (its install path varies), else its resolved directory."""
    name = ALIASES.get(name, name)
    if name in BUILTIN_MODELS or not directory:
        return name
    return str(Path(directory).resolve())


def model_info(encoder: Encoder, pooling: str | Sequence[str] | None = None, doc_prompt: str | None = None,
               query_prompt: str | None = None, long_inputs: str = "truncate",
               stride: int | None = None) -> dict[str, Any]:
    """What the manifest records about the model that made the vectors, and how it embeds: pooling (None:
    the model's own), the literal prompts of documents and queries (None: the model's own for the role), and how a
    document past max_length is read (``long_inputs`` "chunk": the length-weighted mean of its windows)."""
    directory = str(encoder.source_dir.resolve()) if encoder.source_dir else None
    s = encoder.sentence
    if s.similarity == "dot":
        log.warning("model %s was trained for dot-product similarity; the index stores unit vectors and "
                    "searches by cosine", encoder.name)
    return {"name": encoder.name, "directory": directory,
            "pooling": list(s.modes if pooling is None else pooling_modes(pooling)), "normalized": True,
            "max_length": encoder.max_length, "document_prompt": s.role_prompt("document", prompt=doc_prompt),
            "query_prompt": s.role_prompt("query", prompt=query_prompt),
            **({"long_inputs": long_inputs, "stride": stride} if long_inputs != "truncate" else {})}


def embed(model: dict[str, Any] | None, encoder: Encoder, texts: list[str], role: str, batch_size: int,
          progress: bool | None, prompt: str | None = None) -> np.ndarray:
    """Unit vectors of ``texts`` as ``model`` (a manifest's entry) says the index makes them ("document" or "query"
    side; ``prompt`` replaces the recorded one). Manifests from before prompts were recorded: the model's own.
    Documents are read as the manifest's ``long_inputs`` says; queries are truncated."""
    m = model or {}
    prompt = m.get(f"{role}_prompt") if prompt is None else prompt
    chunk = {"long_inputs": m.get("long_inputs", "truncate"), "stride": m.get("stride")} if role == "document" else {}
    return encoder.embed(texts, batch_size=batch_size, pooling=m.get("pooling"), normalize=True,
                         progress=progress, prompt=encoder.sentence.role_prompt(role, prompt=prompt), **chunk)


def check_encoder(model: dict[str, Any] | None, dim: int, encoder: Encoder) -> None:
    """Refuse an encoder other than the one the vectors were made with: its scores would be meaningless."""
    made = encoder.sentence.dim(model.get("pooling") if model else None)
    if made != dim:
        built = f"model {model['name']!r}" if model else "vectors"
        raise BertkitError(f"the index holds {dim}-dimensional {built}; model {encoder.name!r} makes "
                           f"{made}-dimensional vectors")
    if model is None:
        return
    source = str(encoder.source_dir) if encoder.source_dir else None
    if model_key(encoder.name, source) != model_key(model["name"], model.get("directory")):
        raise BertkitError(f"the index was built with model {model['name']!r} ({model.get('directory')}); the query "
                           f"model is {encoder.name!r} ({source}): search with the model the index was built with")


def check_same_model(ours: dict[str, Any], theirs: dict[str, Any], where: object) -> None:
    """Refuse vectors made (``theirs``, from ``where``) with another model, pooling or document prompt."""
    differ = [k for k in ("pooling", "document_prompt") if ours.get(k) is not None and ours[k] != theirs.get(k)]
    if model_key(ours["name"], ours.get("directory")) != model_key(theirs["name"], theirs.get("directory")):
        differ.insert(0, "model")
    if differ:
        raise BertkitError(f"the vectors in {where} were made with {theirs['name']!r} (pooling {theirs['pooling']}, "
                           f"prompt {theirs['document_prompt']!r}), the index with {ours['name']!r} (pooling "
                           f"{ours.get('pooling')}, prompt {ours.get('document_prompt')!r}): their {', '.join(differ)} "
                           "differ")


def load_encoder(model: dict[str, Any] | None, dim: int, name: str | None = None) -> Encoder:
    """The index's own model (or ``name``, which must be the same one), truncating as at build time."""
    if model is None and name is None:
        raise BertkitError("the index records no model; name the model that made its vectors")
    if name is None:  # a built-in by name (its install path varies), a local model by its recorded path
        assert model is not None
        builtin = ALIASES.get(model["name"], model["name"]) in BUILTIN_MODELS
        directory = model.get("directory")
        name = directory if directory and not builtin and Path(directory).is_dir() else model["name"]
        try:
            encoder = load(name)
        except CheckpointError as e:
            raise CheckpointError(f"cannot load the index's model: {e}") from None
    else:
        encoder = load(name)
    check_encoder(model, dim, encoder)
    if model and model.get("max_length"):
        encoder.max_length = int(model["max_length"])
    return encoder
