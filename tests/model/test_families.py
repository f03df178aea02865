"""Every family against transformers itself, on tiny random models (tests/families/models.py): the three execution
paths on hypothesis-drawn lengths, the base model and each task head saved by bertkit and loaded by transformers
(and back), and the config translation both ways."""

import json

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bertkit.errors import CheckpointError, ConfigError
from bertkit.model.attention import PATHS, Packing
from bertkit.model.families import FAMILIES, hf_config, read_config, write_config
from bertkit.model.heads import SequenceClassifier, TokenClassifier, strip_task_keys
from bertkit.model.mlm import MaskedLM
from bertkit.model.weights import load_pretrained, save_weights
from tests.families.models import FAMILY_OF, HF_ATTN, VARIANTS, build_hf, random_batch, save_tiny

transformers = pytest.importorskip("transformers")
TOL = 1e-5


def type_ids_for(ours, types):
    """Token types go in only where the family has a type table with more than one row."""
    return types if ours.config.type_vocab_size > 1 else None


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """variant -> (directory of the saved HF base model, the HF model)"""
    cache = {}

    def get(variant):
        if variant not in cache:
            d = tmp_path_factory.mktemp(variant)
            cache[variant] = (d, save_tiny(variant, d))
        return cache[variant]

    return get


def hf_forward(hf, ids, mask, types):
    kw = {"token_type_ids": types} if types is not None else {}
    return hf(input_ids=ids, attention_mask=mask, **kw)


@pytest.mark.parametrize("variant", VARIANTS)
@settings(max_examples=4, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(lengths=st.lists(st.integers(1, 64), min_size=1, max_size=8), pair=st.booleans(), seed=st.integers(0, 999))
def test_three_paths_match_transformers(one_thread, saved, variant, lengths, pair, seed):
    d, hf = saved(variant)
    ours, _ = load_pretrained(d)
    ids, mask, types = random_batch(lengths, seed, pair)
    types = type_ids_for(ours, types)
    m = mask.bool()
    with torch.inference_mode():
        refs = {}
        for attn in HF_ATTN.get(FAMILY_OF[variant], ("eager", "sdpa")):
            hf.config._attn_implementation = attn
            refs[attn] = hf_forward(hf, ids, mask, types).last_hidden_state
        outs = {p: ours(ids, mask, types, path=p).last_hidden_state for p in PATHS}
    for attn, ref in refs.items():
        for p, out in outs.items():
            diff = (out[m] - ref[m]).abs().max().item()
            assert diff <= TOL, f"{variant}: path {p} differs from transformers {attn} by {diff:.2e}"
    assert (outs["unpadded"][~m] == 0).all()


@pytest.mark.parametrize("variant", VARIANTS)
def test_packed_training_path_matches(one_thread, saved, variant):
    """With gradients on (no in-place fast path) the packed forward equals the padded reference, and gradients
    reach every parameter."""
    d, _ = saved(variant)
    ours, _ = load_pretrained(d)
    lengths = [9, 33, 33, 4]
    ids, mask, types = random_batch(lengths, 3, pair=True)
    types = type_ids_for(ours, types)
    m = mask.bool()
    ours.train()
    packed = ours.forward_packed(ids[m], Packing.from_lengths(lengths), None if types is None else types[m])
    with torch.no_grad():
        ref = ours(ids, mask, types, path="reference").last_hidden_state[m]
    assert (packed - ref).abs().max() <= TOL
    packed.pow(2).mean().backward()
    frozen = {"embeddings.position.weight"} if ours.config.sinusoidal_positions else set()
    for name, p in ours.named_parameters():
        if name.startswith("pooler") or name in frozen:
            continue
        assert p.grad is not None and torch.isfinite(p.grad).all(), f"{variant}: no gradient for {name}"


@pytest.mark.parametrize("variant", VARIANTS)
def test_saved_encoder_loads_in_transformers_identically(one_thread, saved, variant, tmp_path):
    d, hf = saved(variant)
    hf.config._attn_implementation = "eager"  # the same kernel as the reloaded copy (another test switches it)
    ours, _ = load_pretrained(d)
    write_config(ours.config, tmp_path)
    save_weights(ours, tmp_path)
    back = type(hf).from_pretrained(tmp_path, attn_implementation="eager").eval()
    ids, mask, types = random_batch([5, 20, 1], 1, pair=True)
    types = type_ids_for(ours, types)
    with torch.inference_mode():
        assert torch.equal(hf_forward(back, ids, mask, types).last_hidden_state,
                           hf_forward(hf, ids, mask, types).last_hidden_state)
    written = json.loads((tmp_path / "config.json").read_text())
    assert written["model_type"] == hf.config.model_type
    assert written["architectures"] == [type(hf).__name__]
    again = read_config(tmp_path / "config.json")
    assert again == ours.config  # and the translation reads its own output back unchanged


def _task_round_trip(variant, role, tmp_path, num_labels=3):
    hf = build_hf(variant, role, seed=5, num_labels=num_labels)
    hf.save_pretrained(tmp_path / "hf")
    encoder, heads = load_pretrained(tmp_path / "hf")
    strip_task_keys(encoder.config)
    head = (SequenceClassifier if role == "sequence" else TokenClassifier)(encoder, num_labels).eval()
    head.load_head_state(heads, str(tmp_path))
    lengths = [6, 17, 17, 2]
    ids, mask, types = random_batch(lengths, 2, pair=True)
    types = type_ids_for(encoder, types)
    m = mask.bool()
    with torch.inference_mode():
        want = hf_forward(hf, ids, mask, types).logits
        got = head(ids[m], Packing.from_lengths(lengths), None if types is None else types[m])
        if role == "token":
            want = want[m]
        assert (got - want).abs().max() <= TOL, f"{variant} {role}: logits differ from transformers"
    head.save_pretrained(tmp_path / "ours", {i: f"L{i}" for i in range(num_labels)})
    back = type(hf).from_pretrained(tmp_path / "ours", attn_implementation="eager").eval()
    with torch.inference_mode():
        again = hf_forward(back, ids, mask, types).logits
        assert torch.equal(again, hf_forward(hf, ids, mask, types).logits)
    assert back.config.id2label == {i: f"L{i}" for i in range(num_labels)}


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("role", ["sequence", "token"])
def test_task_heads_match_and_round_trip(one_thread, variant, role, tmp_path):
    _task_round_trip(variant, role, tmp_path)


def test_modernbert_mean_pooling_head(one_thread, tmp_path):
    hf = build_hf("modernbert", "sequence", seed=2, num_labels=2, classifier_pooling="mean")
    hf.save_pretrained(tmp_path)
    encoder, heads = load_pretrained(tmp_path)
    strip_task_keys(encoder.config)
    head = SequenceClassifier(encoder, 2).eval()
    assert head.pooling == "mean"
    head.load_head_state(heads)
    lengths = [3, 12]
    ids, mask, _ = random_batch(lengths, 4)
    with torch.inference_mode():
        got = head(ids[mask.bool()], Packing.from_lengths(lengths))
        assert (got - hf(input_ids=ids, attention_mask=mask).logits).abs().max() <= TOL


@pytest.mark.parametrize("variant", VARIANTS)
def test_mlm_head_matches_and_round_trips(one_thread, variant, tmp_path):
    hf = build_hf(variant, "mlm", seed=7)
    hf.save_pretrained(tmp_path / "hf")
    mlm = MaskedLM.from_pretrained(tmp_path / "hf").eval()
    lengths = [8, 3]
    ids, mask, _ = random_batch(lengths, 5)
    m = mask.bool()
    with torch.inference_mode():
        want = hf(input_ids=ids, attention_mask=mask).logits[m]
        got = mlm(ids[m], Packing.from_lengths(lengths))
        assert (got - want).abs().max() <= 1e-4, f"{variant}: MLM logits differ"
    mlm.save_pretrained(tmp_path / "ours")
    back = type(hf).from_pretrained(tmp_path / "ours", attn_implementation="eager").eval()
    with torch.inference_mode():
        assert torch.equal(back(input_ids=ids, attention_mask=mask).logits,
                           hf(input_ids=ids, attention_mask=mask).logits)


def test_electra_discriminator_checkpoint_loads(one_thread, tmp_path):
    """ElectraForPreTraining: the discriminator encoder loads, its head tensors are set aside for the ELECTRA
    objective (``discriminator_predictions.*``)."""
    hf = build_hf("electra", "pretraining", seed=1)
    hf.save_pretrained(tmp_path)
    encoder, heads = load_pretrained(tmp_path)
    assert set(heads) == {f"discriminator_predictions.{n}.{p}" for n in ("dense", "dense_prediction")
                          for p in ("weight", "bias")}
    ids, mask, _ = random_batch([7, 4], 0)
    with torch.inference_mode():
        want = hf.electra(input_ids=ids, attention_mask=mask).last_hidden_state
        got = encoder(ids, mask).last_hidden_state
    assert (got[mask.bool()] - want[mask.bool()]).abs().max() <= TOL


# ---- config translation and bad input -------------------------------------------------------------
def test_every_model_type_has_a_family():
    assert set(FAMILIES) == {"bert", "roberta", "deberta-v2", "modernbert", "electra", "distilbert", "mpnet"}


def test_unknown_model_type_lists_the_supported(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "gpt2", "n_layer": 2}))
    with pytest.raises(ConfigError, match=r"model_type 'gpt2' is not supported; supported: bert, roberta"):
        read_config(tmp_path / "config.json")


@pytest.mark.parametrize(("variant", "change", "field"), [
    ("deberta-v3", {"pos_att_type": "p2c|c2p|p2p"}, "pos_att_type"),
    ("deberta-v3", {"conv_kernel_size": 3}, "conv_kernel_size"),
    ("deberta-v3", {"norm_rel_ebd": "batch_norm"}, "norm_rel_ebd"),
    ("modernbert", {"mlp_bias": True}, "mlp_bias"),
    ("modernbert", {"rope_parameters": {"full_attention": {"rope_type": "yarn", "rope_theta": 1e4}}},
     "rope_parameters"),
    ("roberta", {"position_embedding_type": "relative_key"}, "position_embedding_type"),
    ("distilbert", {"activation": "mish"}, "hidden_act"),
])
def test_unsupported_family_option_is_named(tmp_path, variant, change, field):
    d = hf_config_dict(variant) | change
    (tmp_path / "config.json").write_text(json.dumps(d))
    with pytest.raises(ConfigError, match=field):
        read_config(tmp_path / "config.json")


def hf_config_dict(variant):
    from tests.families.models import hf_config as make

    return make(variant).to_dict()


def test_family_refuses_options_it_cannot_express():
    cfg = read_config_from(hf_config_dict("roberta"))
    cfg.prenorm = True
    with pytest.raises(ConfigError, match=r"family roberta cannot express these settings: prenorm=True"):
        hf_config(cfg)


def read_config_from(d):
    from bertkit.model.families import config_from_hf

    return config_from_hf(d)


@pytest.mark.parametrize("variant", ["modernbert", "deberta-v3", "roberta"])
def test_config_with_absurd_sizes_is_refused_before_allocating(saved, variant, tmp_path):
    """A config that disagrees with its weights is refused by field from the weights file's header alone."""
    import shutil

    d, _ = saved(variant)
    for change, field in (({"num_hidden_layers": 1000000}, "num_hidden_layers"),
                          ({"vocab_size": 10**10}, "vocab_size")):
        bad = tmp_path / field
        shutil.copytree(d, bad)
        cfg = json.loads((d / "config.json").read_text()) | change
        if "layer_types" in cfg:
            cfg.pop("layer_types")
        (bad / "config.json").write_text(json.dumps(cfg))
        with pytest.raises(CheckpointError, match=field):
            load_pretrained(bad)
