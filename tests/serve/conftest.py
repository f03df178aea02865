"""Tiny random models for the server tests: a plain encoder, a masked LM, and task models (all with
MiniLM's tokenizer), loaded once per session on one thread."""

from __future__ import annotations

import pytest
import torch

from bertkit.data.tokenizer import WordPieceTokenizer
from bertkit.model.weights import load_pretrained
from bertkit.serve import ServerConfig, create_app, load_service
from bertkit.serve.service import Service
from bertkit.task_model import TaskModel, build_head

LABELS = {"classification": ["neg", "neu", "pos"], "regression": [],
          "ner": ["O", "B-PER", "I-PER", "B-LOC", "I-LOC"]}


@pytest.fixture(scope="session", autouse=True)
def serve_one_thread():
    """Tiny models gain nothing from threads (and the machine is shared); the batcher's worker thread
    inherits torch's global setting."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def save_task_model(directory, base_dir, task: str, max_length: int = 64):
    encoder, _ = load_pretrained(base_dir)
    torch.manual_seed(1)
    labels = LABELS[task]
    head = build_head(encoder, task, max(len(labels), 1))
    TaskModel(head, WordPieceTokenizer.from_dir(base_dir), task, labels, max_length).save_pretrained(directory)
    return directory


@pytest.fixture(scope="session")
def services(tmp_path_factory, tiny_dir, mlm_dir) -> dict[str, Service]:
    """name -> Service: "encoder" (embeddings only), "mlm" (+ fill-mask), "classification", "regression", "ner"."""
    out = {"encoder": load_service(str(tiny_dir)), "mlm": load_service(str(mlm_dir))}
    for task in ("classification", "regression", "ner"):
        out[task] = load_service(str(save_task_model(tmp_path_factory.mktemp(task), tiny_dir, task)))
    return out


@pytest.fixture(scope="session")
def make_app():
    """create_app with small limits; the config fields can be overridden."""
    def make(service: Service, **config):
        return create_app(service, ServerConfig(**{"max_texts_per_request": 8, "max_body_bytes": 4096, **config}))
    return make
