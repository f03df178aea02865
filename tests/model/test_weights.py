"""Strict checkpoint loading, and saving that transformers loads back with identical outputs."""

import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file

import bertkit
from bertkit.errors import CheckpointError
from bertkit.model.weights import hf_key_map, load_pretrained
from tests.conftest import copy_tokenizer, save_tiny_hf_model

transformers = pytest.importorskip("transformers")


def run_hf(model, lengths=(5, 12, 1)):
    torch.manual_seed(0)
    ids = torch.randint(1000, 2000, (len(lengths), max(lengths)))
    mask = torch.zeros_like(ids)
    for i, n in enumerate(lengths):
        mask[i, :n] = 1
    with torch.inference_mode():
        return model(input_ids=ids, attention_mask=mask).last_hidden_state * mask[..., None]


def clone_dir(src, dst):
    shutil.copytree(src, dst)
    return dst


def test_key_map_covers_every_parameter_once(minilm_dir):
    model, _ = load_pretrained(minilm_dir)
    km = hf_key_map(model.config, pooler=True)
    assert set(model.state_dict()) == {ours for ours, _ in km.values()}
    assert len(km) == 6 * 16 + 5 + 2


def test_save_loads_in_transformers_identically(minilm, hf_minilm, tmp_path):
    minilm.save_pretrained(tmp_path / "out")
    back = transformers.BertModel.from_pretrained(tmp_path / "out", attn_implementation="eager").eval()
    assert torch.equal(run_hf(back), run_hf(hf_minilm))
    for k, v in hf_minilm.state_dict().items():
        if k != "embeddings.position_ids":
            assert torch.equal(back.state_dict()[k], v), k
    # and bertkit loads its own output back
    again = bertkit.load(tmp_path / "out")
    assert again.max_length == minilm.max_length == 256


def test_bert_prefix_and_heads(minilm_dir, tmp_path):
    torch.manual_seed(0)
    clf = transformers.BertForSequenceClassification.from_pretrained(minilm_dir, num_labels=3).eval()
    clf.save_pretrained(tmp_path)
    copy_tokenizer(minilm_dir, tmp_path)
    assert any(k.startswith("bert.") for k in load_file(tmp_path / "model.safetensors"))
    model, heads = load_pretrained(tmp_path)
    assert set(heads) == {"classifier.weight", "classifier.bias"}
    hf = transformers.BertModel.from_pretrained(minilm_dir).eval()
    ids = torch.randint(1000, 2000, (2, 9))
    with torch.inference_mode():
        assert (model(ids).last_hidden_state - hf(input_ids=ids).last_hidden_state).abs().max() < 1e-5


def test_pytorch_bin_and_tf_names(minilm_dir, tmp_path):
    d = clone_dir(minilm_dir, tmp_path / "bin")
    state = load_file(d / "model.safetensors")
    (d / "model.safetensors").unlink()
    state = {k.replace("LayerNorm.weight", "LayerNorm.gamma").replace("LayerNorm.bias", "LayerNorm.beta"): v
             for k, v in state.items()}
    torch.save(state, d / "pytorch_model.bin")
    model, _ = load_pretrained(d)
    ref, _ = load_pretrained(minilm_dir)
    for k, v in ref.state_dict().items():
        assert torch.equal(model.state_dict()[k], v), k


def test_pickle_with_code_is_refused(tmp_path, minilm_dir):
    d = clone_dir(minilm_dir, tmp_path / "evil")
    (d / "model.safetensors").unlink()
    torch.save({"x": object()}, d / "pytorch_model.bin")  # not loadable with weights_only=True
    with pytest.raises(CheckpointError, match=r"pytorch_model\.bin"):
        load_pretrained(d)


@pytest.mark.parametrize("problem", ["missing", "unexpected", "shape"])
def test_strict_loading_names_the_tensor(minilm_dir, tmp_path, problem):
    d = clone_dir(minilm_dir, tmp_path / problem)
    state = load_file(d / "model.safetensors")
    key = "encoder.layer.2.attention.self.key.weight"
    if problem == "missing":
        del state[key]
    elif problem == "unexpected":
        state["encoder.layer.2.attention.self.extra.weight"] = torch.zeros(2)
    else:
        state[key] = torch.zeros(384, 380)
    save_file(state, d / "model.safetensors")
    name = "extra.weight" if problem == "unexpected" else key
    with pytest.raises(CheckpointError, match=name.replace(".", r"\.")):
        load_pretrained(d)


def test_layer_count_mismatch_is_reported(minilm_dir, tmp_path):
    d = clone_dir(minilm_dir, tmp_path / "cfg")
    import json

    cfg = json.loads((d / "config.json").read_text())
    cfg["num_hidden_layers"] = 7
    (d / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match=r"missing tensors: encoder\.layer\.6\."):
        load_pretrained(d)


def test_corrupt_safetensors(minilm_dir, tmp_path):
    d = clone_dir(minilm_dir, tmp_path / "corrupt")
    data = (d / "model.safetensors").read_bytes()
    (d / "model.safetensors").write_bytes(data[: len(data) // 3])
    with pytest.raises(CheckpointError, match=r"model\.safetensors"):
        bertkit.load(d)


def test_missing_files_name_what_was_looked_for(minilm_dir, tmp_path):
    with pytest.raises(CheckpointError, match=r"config\.json"):
        bertkit.load(tmp_path)
    d = clone_dir(minilm_dir, tmp_path / "noweights")
    (d / "model.safetensors").unlink()
    with pytest.raises(CheckpointError, match=r"model\.safetensors or pytorch_model\.bin"):
        bertkit.load(d)
    with pytest.raises(CheckpointError, match="no such local directory"):
        bertkit.load(tmp_path / "does-not-exist")


def test_tiny_model_without_pooler(minilm_dir, tmp_path):
    from transformers import BertConfig, BertModel

    hf = BertModel(BertConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64),
                   add_pooling_layer=False).eval()
    hf.save_pretrained(tmp_path)
    copy_tokenizer(minilm_dir, tmp_path)
    enc = bertkit.load(tmp_path)
    assert enc.model.pooler is None
    assert enc.embed(["a pooler-free model"]).shape == (1, 32)


def test_save_tiny_round_trip(minilm_dir, tmp_path):
    hf = save_tiny_hf_model(tmp_path / "a", minilm_dir)
    enc = bertkit.load(tmp_path / "a")
    enc.save_pretrained(tmp_path / "b")
    back = transformers.BertModel.from_pretrained(tmp_path / "b").eval()
    assert torch.equal(run_hf(back), run_hf(hf))
