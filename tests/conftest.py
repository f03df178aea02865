from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch

from bertkit.hub import resolve_model_dir

torch.set_num_threads(2)


@pytest.fixture
def one_thread():
    """For tests on tiny models: they gain nothing from threads, and two threads on a busy 2-core machine
    stall for seconds."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="session")
def minilm_dir() -> Path:
    return resolve_model_dir("all-MiniLM-L6-v2")


@pytest.fixture(scope="session")
def minilm(minilm_dir):
    import bertkit

    return bertkit.load("all-MiniLM-L6-v2")


@pytest.fixture(scope="session")
def hf_minilm(minilm_dir):
    transformers = pytest.importorskip("transformers")
    return transformers.BertModel.from_pretrained(minilm_dir, attn_implementation="eager").eval()


def copy_tokenizer(src: Path, dst: Path) -> None:
    for name in ("tokenizer.json", "vocab.txt", "tokenizer_config.json", "special_tokens_map.json"):
        if (src / name).is_file():
            shutil.copyfile(src / name, dst / name)


def save_tiny_hf_model(directory: Path, minilm_dir: Path, seed: int = 0, **overrides):
    """A random tiny BERT saved by transformers itself (weights, config) plus MiniLM's tokenizer."""
    from transformers import BertConfig, BertModel

    kw = dict(vocab_size=30522, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
              intermediate_size=64, max_position_embeddings=128, hidden_dropout_prob=0.0,
              attention_probs_dropout_prob=0.0)
    kw.update(overrides)
    torch.manual_seed(seed)
    model = BertModel(BertConfig(**kw)).eval()
    model.save_pretrained(directory)
    copy_tokenizer(minilm_dir, directory)
    return model


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory, minilm_dir):
    """A tiny random BERT (save_tiny_hf_model, seed 0), shared by every test that only needs some encoder."""
    d = tmp_path_factory.mktemp("tiny_encoder")
    save_tiny_hf_model(d, minilm_dir)
    return d


@pytest.fixture(scope="session")
def mlm_dir(tmp_path_factory, minilm_dir):
    """A tiny random BERT with a random (but saved, so 'trained') MLM head in BertForMaskedLM layout."""
    from bertkit.model.mlm import MaskedLM

    d = tmp_path_factory.mktemp("tiny_mlm")
    save_tiny_hf_model(d, minilm_dir)
    torch.manual_seed(0)
    MaskedLM.from_pretrained(d).save_pretrained(d)
    return d


@pytest.fixture(scope="session")
def ray_local():
    """One local Ray instance for the whole session (starting one costs ~15 s on 2 cores): the Ray Data and the
    Ray Serve tests share it. Skipped where the `ray` extra is not installed (`make test` installs it)."""
    ray = pytest.importorskip("ray")
    started = not ray.is_initialized()
    if started:
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False,
                 runtime_env={"env_vars": {"OMP_NUM_THREADS": "1"}})
    yield ray
    if started:
        ray.shutdown()
