"""Modern-encoder options (pre-norm, GLU, RoPE, ALiBi, no bias, final norm): paths agree, files round-trip."""

import dataclasses
import json

import pytest
import torch

from bertkit.errors import ConfigError
from bertkit.model.attention import PATHS, Packing, alibi_bias, alibi_slopes, apply_rope, rope_cos_sin
from bertkit.model.bert import BertModel
from bertkit.model.config import OPTION_FIELDS, EncoderConfig
from bertkit.model.weights import hf_key_map, hf_state_dict, load_pretrained, save_weights

TOL = 1e-5
LENGTHS = [1, 17, 5, 5, 30]

OPTIONS = {
    "plain": {},
    "prenorm": {"prenorm": True},
    "glu": {"ffn_type": "glu"},
    "rope": {"position_embedding_type": "rope"},
    "alibi": {"position_embedding_type": "alibi"},
    "no-bias": {"use_bias": False},
    "final-norm": {"final_norm": True},
    "modernbert-like": {"prenorm": True, "ffn_type": "glu", "position_embedding_type": "rope",
                        "use_bias": False, "final_norm": True, "hidden_act": "gelu_pytorch_tanh",
                        "rope_theta": 160000.0},
    "mosaicbert-like": {"position_embedding_type": "alibi", "ffn_type": "glu"},
}


def tiny_config(**options) -> EncoderConfig:
    return EncoderConfig(vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                         intermediate_size=64, max_position_embeddings=64, hidden_dropout_prob=0.0,
                         attention_probs_dropout_prob=0.0, **options)


def tiny_model(options: dict, seed: int = 0) -> BertModel:
    torch.manual_seed(seed)
    model = BertModel(tiny_config(**options)).eval()
    with torch.no_grad():  # non-trivial LayerNorm and bias values, so a misplaced one shows
        for name, p in model.named_parameters():
            if "norm" in name or name.endswith("bias"):
                p.add_(torch.randn_like(p) * 0.1)
    return model


def padded_batch(lengths, vocab=100, seed=0):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(1, vocab, (len(lengths), max(lengths)), generator=g)
    mask = torch.zeros_like(ids)
    tt = torch.zeros_like(ids)
    for i, n in enumerate(lengths):
        mask[i, :n] = 1
        ids[i, n:] = 0
        tt[i, n // 2:n] = 1
    return ids, mask, tt


def run_paths(model, ids, mask, tt):
    return {p: model(ids, mask, tt, path=p) for p in PATHS}


def assert_paths_agree(outs, mask):
    m = mask.bool()
    ref = outs["reference"]
    for p, out in outs.items():
        diff = (out.last_hidden_state[m] - ref.last_hidden_state[m]).abs().max().item()
        assert diff <= TOL, f"path {p}: differs from reference by {diff:.2e}"
        assert (out.pooler_output - ref.pooler_output).abs().max().item() <= TOL, p
    assert (outs["unpadded"].last_hidden_state[~m] == 0).all()


@pytest.mark.parametrize("name", OPTIONS)
def test_paths_agree_inference_and_training(one_thread, name):
    model = tiny_model(OPTIONS[name])
    ids, mask, tt = padded_batch(LENGTHS)
    with torch.inference_mode():  # in-place fast path on sdpa / unpadded
        fused = run_paths(model, ids, mask, tt)
    assert_paths_agree(fused, mask)
    model.train()  # dropout 0: the training-style path gives the same numbers
    with torch.enable_grad():
        plain = run_paths(model, ids, mask, tt)
    assert_paths_agree(plain, mask)
    m = mask.bool()
    for p in PATHS:
        assert (fused[p].last_hidden_state[m] - plain[p].last_hidden_state[m]).abs().max() <= TOL, p


@pytest.mark.parametrize("name", OPTIONS)
def test_forward_packed_equals_padded(one_thread, name):
    model = tiny_model(OPTIONS[name])
    ids, mask, tt = padded_batch(LENGTHS)
    m = mask.bool()
    with torch.inference_mode():
        packed = model.forward_packed(ids[m], Packing.from_lengths(LENGTHS), tt[m])
        ref = model(ids, mask, tt, path="reference").last_hidden_state[m]
    assert (packed - ref).abs().max() <= TOL


@pytest.mark.parametrize("name", OPTIONS)
def test_save_load_round_trip(one_thread, tmp_path, name):
    model = tiny_model(OPTIONS[name])
    model.config.save(tmp_path)
    save_weights(model, tmp_path)
    back, heads = load_pretrained(tmp_path)
    assert back.config == dataclasses.replace(model.config, extra=back.config.extra) and heads == {}
    assert back.config.extra == {"architectures": ["BertModel"]}
    for k, v in model.state_dict().items():
        assert torch.equal(back.state_dict()[k], v), k
    ids, mask, tt = padded_batch(LENGTHS)
    with torch.inference_mode():
        a, b = model(ids, mask, tt), back(ids, mask, tt)
    assert torch.equal(a.last_hidden_state, b.last_hidden_state)
    assert torch.equal(a.pooler_output, b.pooler_output)


@pytest.mark.parametrize("name", OPTIONS)
def test_key_map_fills_every_tensor_once(name):
    cfg = tiny_config(**OPTIONS[name])
    for pooler in (True, False):
        model = BertModel(cfg, add_pooler=pooler)
        km = hf_key_map(cfg, pooler)
        assert {ours for ours, _ in km.values()} == set(model.state_dict())
        assert set(hf_state_dict(model)) == set(km)
    keys = set(km)
    assert ("embeddings.position_embeddings.weight" in keys) == (cfg.position_embedding_type == "absolute")
    assert ("encoder.layer.0.attention.self.query.bias" in keys) == cfg.use_bias
    assert ("encoder.final_norm.weight" in keys) == cfg.final_norm
    assert "encoder.layer.1.output.LayerNorm.bias" in keys  # LayerNorms keep their bias
    mlp_in = hf_state_dict(model)["encoder.layer.0.intermediate.dense.weight"]
    assert mlp_in.shape == ((128 if cfg.ffn_type == "glu" else 64), 32)


def test_config_json_round_trip(tmp_path):
    cfg = tiny_config(**OPTIONS["modernbert-like"], extra={"architectures": ["BertModel"]})
    cfg.save(tmp_path)
    written = json.loads((tmp_path / "config.json").read_text())
    assert {k: written[k] for k in ("prenorm", "ffn_type", "use_bias", "final_norm", "rope_theta")} == {
        "prenorm": True, "ffn_type": "glu", "use_bias": False, "final_norm": True, "rope_theta": 160000.0}
    assert EncoderConfig.from_json_file(tmp_path / "config.json") == cfg
    assert EncoderConfig.from_dict(cfg.to_dict()) == cfg
    one = tiny_config(use_bias=False, extra={"architectures": ["BertModel"]})
    assert {k for k in one.to_dict() if k in OPTION_FIELDS} == {"use_bias"}
    assert EncoderConfig.from_dict(one.to_dict()) == one


def test_plain_config_writes_no_option_keys(tmp_path):
    EncoderConfig().save(tmp_path)
    written = json.loads((tmp_path / "config.json").read_text())
    assert not set(written) & set(OPTION_FIELDS)
    assert written["position_embedding_type"] == "absolute"


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"ffn_type": "swiglu2"}, "ffn_type"),
        ({"position_embedding_type": "relative_key"}, "position_embedding_type"),
        ({"prenorm": "yes"}, "prenorm"),
        ({"use_bias": 0}, "use_bias"),
        ({"rope_theta": 0.0}, "rope_theta"),
        ({"final_norm": None}, "final_norm"),
        ({"position_embedding_type": "rope", "hidden_size": 36, "num_attention_heads": 4},
         "position_embedding_type"),
    ],
)
def test_bad_option_is_named(tmp_path, change, field):
    (tmp_path / "config.json").write_text(json.dumps(EncoderConfig().to_dict() | change))
    with pytest.raises(ConfigError, match=field):
        EncoderConfig.from_json_file(tmp_path / "config.json")


def test_rope_scores_depend_only_on_relative_position(one_thread):
    torch.manual_seed(0)
    hd, n = 16, 40
    cos, sin = rope_cos_sin(torch.arange(n), hd, 10000.0)  # (n, hd)
    q, k = torch.randn(hd, dtype=torch.float64), torch.randn(hd, dtype=torch.float64)
    rq, rk = apply_rope(q.expand(n, hd), k.expand(n, hd), cos.double(), sin.double())
    scores = rq @ rk.T  # (n, n): q at position i against k at position j
    for offset in (-7, 0, 3, 25):
        diag = torch.diagonal(scores, offset)
        assert (diag - diag[0]).abs().max() < 1e-5, offset  # tables are fp32
    assert (scores[0, 0] - q @ k).abs() < 1e-12  # position 0 is unrotated
    assert not torch.allclose(torch.diagonal(scores, 1)[0], torch.diagonal(scores, 2)[0])


def test_alibi_slopes_and_bias():
    assert alibi_slopes(8).tolist() == [2.0 ** -i for i in range(1, 9)]
    assert alibi_slopes(4).tolist() == [2.0 ** -i for i in (2, 4, 6, 8)]
    # 12 heads: the 8-head slopes, then every other one of the 16-head slopes (ALiBi paper, MosaicBERT)
    want = [2.0 ** -i for i in (1, 2, 3, 4, 5, 6, 7, 8, 0.5, 1.5, 2.5, 3.5)]
    assert torch.allclose(alibi_slopes(12), torch.tensor(want), rtol=1e-6, atol=0)
    bias = alibi_bias(alibi_slopes(4), 6)
    assert bias.shape == (4, 6, 6)
    assert torch.equal(bias, bias.transpose(1, 2))
    assert (torch.diagonal(bias, dim1=1, dim2=2) == 0).all()
    assert bias[1, 0, 5] == -5 * 2.0 ** -4


@pytest.mark.parametrize("name", OPTIONS)
def test_gradients_flow_on_unpadded_path(one_thread, name):
    model = tiny_model(OPTIONS[name]).train()
    ids, mask, tt = padded_batch(LENGTHS)
    out = model(ids, mask, tt, path="unpadded")
    loss = out.last_hidden_state.pow(2).mean() + out.pooler_output.sum()
    loss.backward()
    for k, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), k
    assert model.layers[0].Wqkv.weight.grad.abs().sum() > 0


@pytest.mark.parametrize("kind", ["rope", "alibi"])
def test_relative_positions_reach_the_model(one_thread, kind):
    """Without a position table, only rope / alibi break permutation equivariance: permuting the tokens
    must not just permute the outputs."""
    model = tiny_model({"position_embedding_type": kind, "initializer_range": 0.2})
    assert model.embeddings.position is None
    g = torch.Generator().manual_seed(1)
    ids, perm = torch.randint(1, 100, (1, 12), generator=g), torch.randperm(12, generator=g)
    with torch.inference_mode():
        out = model(ids, path="sdpa").last_hidden_state
        permuted = model(ids[:, perm], path="sdpa").last_hidden_state
    assert (out[:, perm] - permuted).abs().max() > 1e-2


def test_glu_is_act_gate_times_up(one_thread):
    model = tiny_model({"ffn_type": "glu"})
    layer = model.layers[0]
    x = torch.randn(7, 32)
    w, b = layer.mlp_in.weight, layer.mlp_in.bias  # rows [gate; up], each 64
    want = torch.nn.functional.gelu(x @ w[:64].T + b[:64]) * (x @ w[64:].T + b[64:])
    with torch.no_grad():
        assert (layer.ffn_hidden(x, layer.act) - want).abs().max() < 1e-6
