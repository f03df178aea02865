from __future__ import annotations

import pytest


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory, minilm_dir):
    """A random 2-layer, 32-wide BERT saved by transformers, with MiniLM's tokenizer."""
    pytest.importorskip("transformers")
    from tests.conftest import save_tiny_hf_model

    d = tmp_path_factory.mktemp("tiny")
    save_tiny_hf_model(d, minilm_dir)
    return d
