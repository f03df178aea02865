"""``Encoder``: a loaded model plus its tokenizer: ``embed`` / ``encode`` (sentence embeddings, ``encode`` with
sentence-transformers' signature) and ``token_states`` (per-token outputs).

Texts are tokenized once, sorted by length (longest first) and cut into batches; each batch is
packed into one ``(total_tokens,)`` id tensor and run on the padding-free path, so no FLOP is spent
on padding. Results come back in input order.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor
from tqdm.auto import tqdm

from bertkit.data.chunking import Windows, check_long_inputs, chunk_texts
from bertkit.data.tokenizer import Batch, Tokenizer
from bertkit.data.windows import weighted_mean
from bertkit.errors import CheckpointError, ConfigError
from bertkit.hub import DEFAULT_MODEL
from bertkit.inference.engine import Engine, EngineOptions
from bertkit.model.attention import Packing, attn_implementation_of, to_grid
from bertkit.model.bert import BertModel
from bertkit.model.directory import ModelDir, default_max_length, inspect_model_dir, load_encoder
from bertkit.model.families import describe_architecture, read_config, write_config
from bertkit.model.pooling import POOLING_MODES, pool  # noqa: F401  (pool: re-exported, benchmarks import it here)
from bertkit.model.sentence import SentenceConfig
from bertkit.model.weights import find_weights_file, save_weights
from bertkit.utils.runtime import pick_device, tune_allocator

if TYPE_CHECKING:
    from bertkit.inference.onnx import OnnxModel

log = logging.getLogger("bertkit")

# default_max_length, pick_device and to_grid lived here; imported above, kept importable from here for one release
__all__ = ["Encoder", "check_vocabulary", "default_max_length", "engine_options", "load", "pick_device", "to_grid"]

POOLINGS = POOLING_MODES
PROGRESS_MIN_TEXTS = 1000  # show a progress bar from this many texts on (unless told otherwise)


def check_vocabulary(tokenizer: Tokenizer, model: BertModel, directory: Path) -> None:
    """A tokenizer that emits ids past the embedding table would index out of it: refuse, naming both sizes."""
    if tokenizer.vocab_size > model.config.vocab_size:
        raise CheckpointError(
            f"{directory}: the tokenizer has {tokenizer.vocab_size} tokens but config.json's vocab_size (the "
            f"embedding table) is {model.config.vocab_size}"
        )


class Encoder:
    def __init__(self, model: BertModel, tokenizer: Tokenizer, max_length: int,
                 name: str = "", source_dir: Path | None = None, engine: Engine | None = None) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.max_length = max_length
        self.name = name
        self.source_dir = source_dir
        self.head_state: dict[str, Tensor] = {}
        self.engine = engine or Engine()
        self.onnx: OnnxModel | None = None  # set by from_pretrained(backend="onnx")
        self.model_dir: ModelDir | None = None  # what the directory held (set by from_pretrained)
        # pooling, Dense, Normalize and prompts (a directory's sentence-transformers files, else the defaults)
        self.sentence = SentenceConfig.defaults(model.config.hidden_size)

    @classmethod
    def from_pretrained(cls, name_or_path: str | os.PathLike[str] | None = None, *,
                        attn_implementation: str | None = None, device: str | torch.device | None = None,
                        engine: EngineOptions | None = None, dtype: str | None = None, int8: bool | None = None,
                        backend: str | None = None, path: str | None = None) -> Encoder:
        """Load a built-in name or a local HF BERT directory.

        engine: how inference runs (precision, int8, backend, batch token budget, threads); ``dtype``,
        ``int8`` and ``backend`` are shortcuts that override its fields. attn_implementation: "unpadded" (default),
        "sdpa" or "reference" (``path``: its deprecated name).
        """
        path = attn_implementation_of(attn_implementation, path)
        info = inspect_model_dir(name_or_path)
        options = engine_options(engine, dtype=dtype, int8=int8, backend=backend)
        if info.format == "onnx" and options.backend != "onnx":  # no torch weights: onnxruntime runs it
            options = dataclasses.replace(options, backend="onnx")
        if pick_device(device).type == "cpu":
            tune_allocator()
        name = str(name_or_path or DEFAULT_MODEL)
        tokenizer = Tokenizer.from_dir(info.weights_dir)
        eng = Engine(options)
        if info.format == "onnx":  # the config's shapes on the meta device: nothing allocated, nothing run
            with torch.device("meta"):
                model, heads = BertModel(read_config(info.weights_dir / "config.json"), add_pooler=False), {}
        else:
            model, heads, _ = load_encoder(info, path=path, who="Encoder.from_pretrained (bertkit.load runs it)")
        check_vocabulary(tokenizer, model, info.weights_dir)
        if info.format != "onnx":
            model = eng.prepare(model, tokenizer, pick_device(device), name)
        # sentence_bert_config.json sits with the Transformer module (the root, or 0_Transformer/ in older models)
        enc = cls(model, tokenizer, default_max_length(info.weights_dir, model.config.max_tokens),
                  name=name, source_dir=info.path, engine=eng)
        enc.head_state = heads
        enc.model_dir = info
        enc.sentence = SentenceConfig.read(info.path, model.config.hidden_size)
        if options.backend == "onnx":
            from bertkit.inference.onnx import OnnxModel

            enc.onnx = OnnxModel.from_options(info.path, options)
        return enc

    @property
    def device(self) -> torch.device:
        device = next(self.model.parameters()).device
        return torch.device("cpu") if device.type == "meta" else device  # an ONNX-only directory

    @property
    def hidden_size(self) -> int:
        return self.model.config.hidden_size

    # ---- tokenization and batching --------------------------------------------------------
    def tokenize(self, texts: Sequence[str], pairs: Sequence[str] | None = None) -> Batch:
        batch = self.tokenizer.encode(list(texts), None if pairs is None else list(pairs), self.max_length)
        if batch.n_truncated:
            log.warning("%d of %d texts were longer than max_length=%d tokens and were truncated",
                        batch.n_truncated, len(batch.ids), self.max_length)
        return batch

    def _batches(self, batch: Batch, batch_size: int | None) -> Iterator[tuple[np.ndarray, Tensor, Tensor, Packing]]:
        """Yield (input indices, ids (T,), type ids (T,), packing): the engine's token-budget batches,
        longest texts first; ``batch_size`` caps the sequences per batch."""
        return self.engine.batches(batch.ids, batch.type_ids, self.device, batch_size)

    def _hidden(self, ids: Tensor, types: Tensor, packing: Packing) -> Tensor:
        """Token states (total_tokens, hidden) on the model's execution path (or onnxruntime)."""
        if self.onnx is None and self.model.path == "unpadded":
            return self.model.forward_packed(ids, packing, types)
        if self.onnx is not None:  # padded grid and gather in numpy (inference/onnx.py)
            out = self.onnx.run_packed(ids.cpu().numpy(), types.cpu().numpy(), packing.lengths, self.tokenizer.pad_id)
            return torch.from_numpy(out["last_hidden_state"]).to(ids.device)
        # Padded paths: scatter into (batch, max_len), run, gather real tokens back.
        grid, mask, grid_types, (seg, pos) = to_grid(ids, types, packing, self.tokenizer.pad_id)
        return self.model(grid, mask, grid_types).last_hidden_state[seg, pos]

    # ---- public API -----------------------------------------------------------------------
    def embed(self, texts: Sequence[str], batch_size: int | None = None, pooling: str | Sequence[str] | None = None,
              normalize: bool | None = None, progress: bool | None = None, *, prompt_name: str | None = None,
              prompt: str | None = None, long_inputs: str = "truncate", stride: int | None = None) -> np.ndarray:
        """Sentence embeddings, float32 ``(len(texts), dim)``, rows in input order.

        Each argument left None means the model's own setting (its sentence-transformers files; for a plain
        HF directory: mean pooling, normalized, no prompt); a given one overrides it.

        batch_size: at most this many texts per batch (default: the engine's token budget alone decides).
        pooling: one of bertkit.model.pooling.POOLING_MODES ("mean", "cls", "max", ...), or several,
            concatenated. The model's Dense modules, if any, still follow it.
        normalize: L2-normalize each row (cosine similarity becomes a dot product).
        prompt_name: one of the model's prompts (``self.sentence.prompts``), prepended to every text.
        prompt: a literal prompt, e.g. "query: ". Neither: the model's default prompt, if it has one.
        long_inputs: "truncate" (the first max_length tokens), or "chunk": a longer text is cut into windows
            overlapping by ``stride`` tokens (None: a quarter of the window) and its embedding is the mean of the
            window embeddings weighted by their token counts, normalized after averaging when the model normalizes.
            A text that fits in one window gets its truncation embedding. ``embed_windows`` keeps every window.
        """
        if isinstance(texts, str):
            raise TypeError("embed() takes a list of texts; wrap a single text in a list")
        if check_long_inputs(long_inputs) == "chunk":
            raw, normed, win = self._window_vectors(texts, stride, batch_size, pooling, normalize, progress,
                                                    prompt_name, prompt)
            out = np.empty((len(texts), normed.shape[1]), np.float32)
            do_normalize = self.sentence.normalize if normalize is None else normalize
            lengths = win.lengths
            for i, (a, b) in enumerate(win.ranges()):
                if b - a == 1:  # one window: exactly what truncation gives
                    out[i] = normed[a]
                    continue
                v = weighted_mean(raw[a:b], lengths[a:b])
                out[i] = F.normalize(torch.from_numpy(v)[None], p=2, dim=-1)[0].numpy() if do_normalize else v
            return out
        settings = self.sentence
        out = np.zeros((len(texts), settings.dim(pooling)), dtype=np.float32)  # checks pooling first
        prompt = settings.resolve_prompt(prompt_name, prompt)
        if len(texts) == 0:
            return out
        prompt_length = self._prompt_length(prompt)
        batch = self.tokenize(settings.prepare(texts, prompt))
        show = progress if progress is not None else len(texts) >= PROGRESS_MIN_TEXTS
        self.model.eval()
        with self.engine.running(self.device), tqdm(total=len(texts), disable=not show, unit="text",
                                                    desc="embed", mininterval=1.0) as bar:
            for idx, ids, types, packing in self._batches(batch, batch_size):
                h = self._hidden(ids, types, packing).float()  # (total_tokens, hidden)
                out[idx] = settings.embed(h, packing, prompt_length, pooling, normalize).float().cpu().numpy()
                bar.update(len(idx))
        return out

    def _prompt_length(self, prompt: str | None) -> int:
        """Tokens of the prompt that pooling leaves out (0 when it has none or pools over it)."""
        if prompt and not self.sentence.pooling.include_prompt:  # measured as sentence-transformers does: alone
            prompt_ids = self.tokenize(self.sentence.prepare([prompt])).ids[0]
            return self.sentence.prompt_length(prompt_ids, self.tokenizer.special_ids)
        return 0

    def embed_windows(self, texts: Sequence[str], stride: int | None = None, batch_size: int | None = None,
                      pooling: str | Sequence[str] | None = None, normalize: bool | None = None,
                      progress: bool | None = None, *, prompt_name: str | None = None, prompt: str | None = None
                      ) -> tuple[np.ndarray, np.ndarray, list[tuple[int, int]]]:
        """Every window's embedding, for passage retrieval over long documents.

        Returns (vectors float32 ``(n_windows, dim)``, owner int64 ``(n_windows,)`` the text each window comes
        from (non-decreasing), spans ``[(start, end)]`` each window's content tokens in its text, end exclusive).
        A text that fits in ``max_length`` is one window; ``stride`` as in ``embed``.
        """
        if isinstance(texts, str):
            raise TypeError("embed_windows() takes a list of texts; wrap a single text in a list")
        _, normed, win = self._window_vectors(texts, stride, batch_size, pooling, normalize, progress, prompt_name,
                                              prompt)
        return normed, win.owner, list(win.spans)

    def _window_vectors(self, texts: Sequence[str], stride: int | None, batch_size: int | None,
                        pooling: str | Sequence[str] | None, normalize: bool | None, progress: bool | None,
                        prompt_name: str | None, prompt: str | None) -> tuple[np.ndarray, np.ndarray, Windows]:
        """(raw, normalized as the model does) window embeddings ``(n_windows, dim)`` and the windows."""
        settings = self.sentence
        dim = settings.dim(pooling)
        prompt = settings.resolve_prompt(prompt_name, prompt)
        if prompt:  # the prompt would open the first window only; the later ones would be read without it
            raise ConfigError("long_inputs='chunk' does not take a prompt yet: embed with long_inputs='truncate', "
                              "or without a prompt")
        win = chunk_texts(self.tokenizer, settings.prepare(list(texts)), None, self.max_length, stride)
        win.log("embed", self.max_length)
        raw = np.zeros((len(win), dim), np.float32)
        normed = np.zeros((len(win), dim), np.float32)
        if len(win) == 0:
            return raw, normed, win
        do_normalize = settings.normalize if normalize is None else normalize
        batch = Batch(win.ids, win.type_ids, 0)
        show = progress if progress is not None else len(texts) >= PROGRESS_MIN_TEXTS
        self.model.eval()
        with self.engine.running(self.device), tqdm(total=len(win), disable=not show, unit="window",
                                                    desc="embed", mininterval=1.0) as bar:
            for idx, ids, types, packing in self._batches(batch, batch_size):
                h = self._hidden(ids, types, packing).float()  # (total_tokens, hidden)
                x = settings.embed(h, packing, 0, pooling, normalize=False).float()  # (batch, dim)
                raw[idx] = x.cpu().numpy()
                # the same op on the same tensor as embed(normalize=True): a one-window text is bit for bit its
                # truncation embedding
                normed[idx] = (F.normalize(x, p=2, dim=-1) if do_normalize else x).cpu().numpy()
                bar.update(len(idx))
        return raw, normed, win

    def token_states(self, texts: Sequence[str], pairs: Sequence[str] | None = None,
                     batch_size: int | None = None) -> list[np.ndarray]:
        """Token states per text: a list of float32 ``(n_tokens_i, hidden)`` arrays, in input order (``pairs``: a
        second text per row, joined with the family's pair template)."""
        if isinstance(texts, str):
            raise TypeError("token_states() takes a list of texts; wrap a single text in a list")
        result: list[np.ndarray] = [np.zeros((0, self.hidden_size), np.float32)] * len(texts)
        if len(texts) == 0:
            return result
        batch = self.tokenize(texts, pairs)
        self.model.eval()
        with self.engine.running(self.device):
            for idx, ids, types, packing in self._batches(batch, batch_size):
                h = self._hidden(ids, types, packing).float().cpu().numpy()
                cu = packing.cu_seqlens.tolist()
                for j, i in enumerate(idx):
                    result[i] = h[cu[j]:cu[j + 1]].copy()
        return result

    def encode(self, sentences: str | Sequence[str], batch_size: int | None = None,
               show_progress_bar: bool | None = None, output_value: str = "sentence_embedding",
               normalize_embeddings: bool = False, *, prompt_name: str | None = None, prompt: str | None = None,
               pairs: Sequence[str] | None = None, long_inputs: str = "truncate",
               stride: int | None = None) -> np.ndarray | list[np.ndarray]:
        """sentence-transformers' ``encode``: sentence embeddings ``(len(sentences), dim)`` float32 (a single string:
        ``(dim,)``), the model's own pooling, Dense and Normalize modules applied, as ``embed`` computes them.

        output_value: "sentence_embedding", or "token_embeddings" for ``token_states`` (a list of
            ``(n_tokens_i, hidden)`` arrays).
        normalize_embeddings: True L2-normalizes on top of what the model does (False leaves the model's own setting).
        long_inputs, stride: as ``embed`` ("chunk": a long text's embedding is its windows' length-weighted mean).
        pairs: deprecated (``encode`` returned token states before 0.2): use ``token_states(texts, pairs)``.
        """
        if pairs is not None or (isinstance(batch_size, Sequence) and not isinstance(batch_size, str)):
            warnings.warn("Encoder.encode(texts, pairs) returning token states is deprecated: use "
                          "Encoder.token_states(texts, pairs); encode() now returns sentence embeddings as "
                          "sentence-transformers' does", DeprecationWarning, stacklevel=2)
            if pairs is None:  # the old positional form encode(texts, pairs)
                pairs, batch_size = batch_size, None  # type: ignore[assignment]
            return self.token_states(sentences, pairs)  # type: ignore[arg-type]
        single = isinstance(sentences, str)
        texts = [sentences] if single else list(sentences)
        if output_value == "token_embeddings":
            states = self.token_states(texts, batch_size=batch_size)
            return states[0] if single else states
        if output_value != "sentence_embedding":
            raise ValueError(f"output_value must be 'sentence_embedding' or 'token_embeddings', got {output_value!r}")
        out = self.embed(texts, batch_size, normalize=True if normalize_embeddings else None,
                         progress=show_progress_bar, prompt_name=prompt_name, prompt=prompt,
                         long_inputs=long_inputs, stride=stride)
        return out[0] if single else out

    def save_pretrained(self, directory: str | os.PathLike[str]) -> Path:
        """Write config.json, model.safetensors and tokenizer files (HF BertModel layout), and the model's
        sentence-transformers files (modules.json, pooling, Dense, Normalize, prompts) when it has them."""
        d = Path(directory)
        d.mkdir(parents=True, exist_ok=True)
        write_config(self.model.config, d)
        save_weights(self.model, d)
        self.tokenizer.save(d)
        self.sentence.save(d, self.max_length)
        return d

    def info(self) -> dict[str, Any]:
        cfg = self.model.config
        n_params = self.model.num_parameters()
        info: dict[str, Any] = {
            "name": self.name,
            "directory": str(self.source_dir) if self.source_dir else None,
            "family": cfg.model_type,
            "format": self.model_dir.describe() if self.model_dir is not None else "in memory",
            "architecture": describe_architecture(cfg),
            "layers": cfg.num_hidden_layers,
            "hidden_size": cfg.hidden_size,
            "attention_heads": cfg.num_attention_heads,
            "intermediate_size": cfg.intermediate_size,
            "activation": cfg.hidden_act,
            "max_position_embeddings": cfg.max_position_embeddings,
            "max_length": self.max_length,
            "vocab_size": cfg.vocab_size,
            "tokenizer_vocab_size": self.tokenizer.vocab_size,
            "pooler": self.model.pooler is not None,
            "parameters": n_params,
            "size_in_memory_mb": round(sum(p.numel() * p.element_size() for p in self.model.parameters()) / 2**20, 2),
            "execution_path": "onnxruntime" if self.onnx is not None else self.model.path,
            "engine": self.engine.options.describe(),
            "device": str(self.device),
            "threads": torch.get_num_threads(),
        }
        if self.model_dir is not None and self.model_dir.has_torch_weights:
            weights = find_weights_file(self.model_dir.weights_dir)
            info["weights_file"] = weights.name
            info["size_on_disk_mb"] = round(weights.stat().st_size / 2**20, 2)
        return info


def engine_options(engine: EngineOptions | None = None, **overrides: Any) -> EngineOptions:
    """``engine`` (or the defaults) with the non-None keyword overrides applied."""
    base = engine or EngineOptions()
    return dataclasses.replace(base, **{k: v for k, v in overrides.items() if v is not None})


def load(name_or_path: str | os.PathLike[str] | None = None, *, attn_implementation: str | None = None,
         device: str | torch.device | None = None, engine: EngineOptions | None = None,
         dtype: str | None = None, int8: bool | None = None, backend: str | None = None,
         path: str | None = None) -> Encoder:
    """Load an encoder: ``load()`` or ``load("all-MiniLM-L6-v2")`` for the built-in default,
    else a local Hugging Face BERT directory. See ``Encoder.from_pretrained`` for the engine options."""
    return Encoder.from_pretrained(name_or_path, attn_implementation=attn_implementation_of(attn_implementation, path),
                                   device=device, engine=engine, dtype=dtype,
                                   int8=int8, backend=backend)
