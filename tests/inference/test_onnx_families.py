"""ONNX export of every encoder family (the padded reference path through the dynamo exporter, dynamic batch and
length): the export's own parity check, then onnxruntime against torch on lengths the export never saw (longer than
ModernBERT's window, DeBERTa's buckets), and task graphs through the family's head (RoBERTa's classifier.dense,
ModernBERT's mean pooling, a DeBERTa token head).

Each export takes 10-30 s on a shared 2-core machine, so the default run exports the two hardest families: DeBERTa-v3
(its gathers) as an encoder and ModernBERT (windows, per-layer rope, mean pooling) as a task graph; the others are
``slow`` (``pytest -m slow tests/inference/test_onnx_families.py``: 12 exports, about 5 minutes there).
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from bertkit.inference.onnx import META_FILE, OnnxModel, export_onnx
from bertkit.model.attention import Packing
from bertkit.model.directory import load_encoder
from bertkit.model.families import family_of
from bertkit.task_model import TaskModel
from tests.compress.family_dirs import WITH_POS_PROJ, checkpoint, task_model
from tests.families.models import random_batch

pytestmark = pytest.mark.usefixtures("one_thread")
FAST = ("deberta-v3",)  # ModernBERT is exported by the default task-graph test
ENCODERS = [v if v in FAST else pytest.param(v, marks=pytest.mark.slow) for v in WITH_POS_PROJ]
TOL = 1e-4
LENGTHS = [40, 33, 17, 9, 1]  # the export traced length 8 and checked 16


def feed(model, lengths=LENGTHS, seed=0) -> dict[str, np.ndarray]:
    ids, mask, types = random_batch(lengths, seed, pair=True)
    if model.config.type_vocab_size < 2:
        types = torch.zeros_like(types)
    return {"input_ids": ids.numpy(), "attention_mask": mask.numpy(), "token_type_ids": types.numpy()}


@pytest.mark.parametrize("variant", ENCODERS)
def test_every_family_exports_and_matches_torch(tmp_path, variant):
    src = checkpoint(variant, tmp_path / "src")
    out = export_onnx(src, tmp_path / "onnx")
    meta = json.loads((out / META_FILE).read_text())
    model, _, _ = load_encoder(src)
    assert meta["family"] == family_of(model.config).name
    assert meta["kind"] == "encoder" and meta["parity_max_abs_diff"] <= TOL
    assert meta["max_length"] == model.config.max_tokens
    runner = OnnxModel(out, threads=1)
    batch = feed(model)
    h = runner.run(**batch)["last_hidden_state"]
    real = batch["attention_mask"].astype(bool)
    with torch.inference_mode():
        want = model(*(torch.from_numpy(batch[k]) for k in ("input_ids", "attention_mask", "token_type_ids")),
                     path="unpadded").last_hidden_state.numpy()
    assert np.abs(h[real] - want[real]).max() <= TOL


def head_logits(tm: TaskModel, batch: dict[str, np.ndarray]) -> np.ndarray:
    real = batch["attention_mask"].astype(bool)
    packing = Packing.from_lengths(real.sum(1).tolist())
    types = batch["token_type_ids"][real] if tm.head.encoder.config.type_vocab_size > 1 else None
    with torch.inference_mode():
        return tm.head(torch.from_numpy(batch["input_ids"][real]), packing,
                       None if types is None else torch.from_numpy(types)).numpy()


@pytest.mark.parametrize("variant, role, extra", [
    ("modernbert", "sequence", {"classifier_pooling": "mean"}),  # mean pooling, dense + norm head
    pytest.param("roberta", "sequence", {}, marks=pytest.mark.slow),  # classifier.dense -> tanh -> out_proj on <s>
    pytest.param("deberta-v3", "token", {}, marks=pytest.mark.slow),
])
def test_task_graphs_use_the_family_head(tmp_path, variant, role, extra):
    """A transformers task checkpoint of the family exports with a ``logits`` output equal to our head's."""
    src = checkpoint(variant, tmp_path / "src", role=role, num_labels=3, **extra)
    with torch.no_grad():  # logits of size ~1, so a wrong head shows
        tm = TaskModel.from_pretrained(src)
        for name, p in tm.head.named_parameters():
            if not name.startswith("encoder.") and p.dim() == 2:
                torch.nn.init.normal_(p, std=0.5)
    tm.save_pretrained(src)
    tm = TaskModel.from_pretrained(src)
    if extra.get("classifier_pooling"):
        assert tm.head.pooling == "mean"
    out = export_onnx(src, tmp_path / "onnx")
    runner = OnnxModel(out, threads=1)
    assert runner.output_names == ["last_hidden_state", "logits"]
    batch = feed(tm.head.encoder, [30, 12, 12, 1])
    logits = runner.run(**batch)["logits"]
    want = head_logits(tm, batch)
    if role == "token":
        logits = logits[batch["attention_mask"].astype(bool)]  # (total_tokens, labels), as the packed head
    assert logits.shape == want.shape and np.abs(logits - want).max() <= TOL
    assert TaskModel.from_pretrained(out).labels == tm.labels  # the copied files keep it a task model


@pytest.mark.slow
def test_a_bertkit_task_model_of_another_family_exports(tmp_path):
    """bertkit's own task directory (bertkit_task.json, RoBERTa layout): its task is read from the ModelDir."""
    tm = task_model("roberta", tmp_path / "task")
    out = export_onnx(tmp_path / "task", tmp_path / "onnx")
    assert json.loads((out / META_FILE).read_text())["kind"] == "sequence"
    batch = feed(tm.head.encoder, [20, 7, 1])
    assert np.abs(OnnxModel(out, threads=1).run(**batch)["logits"] - head_logits(tm, batch)).max() <= TOL
