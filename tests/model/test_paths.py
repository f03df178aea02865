"""The three execution paths agree with each other and with HF transformers' BertModel."""

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bertkit.model.attention import PATHS, Packing
from bertkit.model.weights import load_pretrained
from tests.conftest import save_tiny_hf_model

transformers = pytest.importorskip("transformers")
TOL = 1e-5


def padded_batch(lengths, vocab=30522, types=True, seed=0):
    g = torch.Generator().manual_seed(seed)
    b, s = len(lengths), max(lengths)
    ids = torch.randint(1000, vocab, (b, s), generator=g)
    mask = torch.zeros(b, s, dtype=torch.long)
    tt = torch.zeros(b, s, dtype=torch.long)
    for i, n in enumerate(lengths):
        mask[i, :n] = 1
        ids[i, n:] = 0
        if types and n > 2:
            tt[i, n // 2:n] = 1  # a second segment, as a text pair has
    return ids, mask, (tt if types else None)


def compare(ours, hf, lengths, types):
    ids, mask, tt = padded_batch(lengths, ours.config.vocab_size, types)
    with torch.inference_mode():
        ref = hf(input_ids=ids, attention_mask=mask, token_type_ids=tt)
        m = mask.bool()
        outs = {p: ours(ids, mask, tt, path=p) for p in PATHS}
    for p, out in outs.items():
        diff = (out.last_hidden_state[m] - ref.last_hidden_state[m]).abs().max().item()
        assert diff <= TOL, f"path {p}: last_hidden_state differs from transformers by {diff:.2e}"
        if ours.pooler is not None:
            pdiff = (out.pooler_output - ref.pooler_output).abs().max().item()
            assert pdiff <= TOL, f"path {p}: pooler differs by {pdiff:.2e}"
    # and with each other, padding included for the padded paths
    a, b = outs["reference"].last_hidden_state[m], outs["unpadded"].last_hidden_state[m]
    assert (a - b).abs().max().item() <= TOL
    assert (outs["unpadded"].last_hidden_state[~m] == 0).all()


# eager with token types and sdpa without run in `make test`; the other two pairs (~25 s) in `make test-slow`
@pytest.mark.parametrize(("hf_attn", "types"), [
    ("eager", True), ("sdpa", False),
    pytest.param("eager", False, marks=pytest.mark.slow), pytest.param("sdpa", True, marks=pytest.mark.slow)])
def test_real_checkpoint_mixed_lengths(minilm_dir, hf_attn, types):
    ours, _ = load_pretrained(minilm_dir)
    hf = transformers.BertModel.from_pretrained(minilm_dir, attn_implementation=hf_attn).eval()
    # 1 token, the maximum length (512 positions), and lengths between; equal lengths form runs.
    compare(ours, hf, [1, 512, 7, 7, 7, 128, 2, 33, 33], types)


def test_reference_path_is_bit_exact_with_hf_eager(minilm_dir, hf_minilm):
    ours, _ = load_pretrained(minilm_dir)
    ids, mask, tt = padded_batch([5, 17, 64])
    with torch.inference_mode():
        a = ours(ids, mask, tt, path="reference").last_hidden_state
        b = hf_minilm(input_ids=ids, attention_mask=mask, token_type_ids=tt).last_hidden_state
    assert torch.equal(a, b)


configs = st.fixed_dictionaries({
    "num_hidden_layers": st.integers(1, 3),
    "num_attention_heads": st.sampled_from([1, 2, 4]),
    "head_dim": st.sampled_from([4, 8, 16]),
    "intermediate_size": st.sampled_from([16, 48, 96]),
    "hidden_act": st.sampled_from(["gelu", "relu", "gelu_new", "silu"]),
    "type_vocab_size": st.sampled_from([1, 2, 3]),
})


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(cfg=configs, lengths=st.lists(st.integers(1, 64), min_size=1, max_size=9), types=st.booleans(),
       seed=st.integers(0, 2**16))
def test_random_tiny_configs(tmp_path_factory, minilm_dir, cfg, lengths, types, seed):
    d = tmp_path_factory.mktemp("tiny")
    head_dim = cfg.pop("head_dim")
    hf = save_tiny_hf_model(d, minilm_dir, seed=seed, hidden_size=head_dim * cfg["num_attention_heads"],
                            max_position_embeddings=64, vocab_size=2000, **cfg)
    hf.config._attn_implementation = "eager"
    ours, _ = load_pretrained(d)
    compare(ours, hf, lengths, types and cfg["type_vocab_size"] > 1)


def test_packed_entry_matches_padded(minilm_dir):
    ours, _ = load_pretrained(minilm_dir)
    lengths = [9, 9, 3, 30]
    ids, mask, _ = padded_batch(lengths, types=False)
    packed = torch.cat([ids[i, :n] for i, n in enumerate(lengths)])
    with torch.inference_mode():
        h = ours.forward_packed(packed, Packing.from_lengths(lengths))
        ref = ours(ids, mask, path="reference").last_hidden_state[mask.bool()]
    assert (h - ref).abs().max() <= TOL


def test_packing_runs_and_positions():
    p = Packing.from_lengths([3, 3, 1, 2, 2, 2])
    assert p.runs == [(0, 2, 3), (6, 1, 1), (7, 3, 2)]
    assert p.cu_seqlens.tolist() == [0, 3, 6, 7, 9, 11, 13]
    assert p.position_ids().tolist() == [0, 1, 2, 0, 1, 2, 0, 0, 1, 0, 1, 0, 1]
    with pytest.raises(ValueError, match="at least one token"):
        Packing.from_lengths([3, 0])


def test_long_runs_are_split_without_changing_results(minilm_dir, monkeypatch):
    from bertkit.model import attention

    ours, _ = load_pretrained(minilm_dir)
    ids, mask, _ = padded_batch([40] * 6, types=False)
    with torch.inference_mode():
        whole = ours(ids, mask, path="unpadded").last_hidden_state
        monkeypatch.setattr(attention, "SCORE_BLOCK_ELEMENTS", 12 * 40 * 40 * 2)  # 2 sequences per block
        split = ours(ids, mask, path="unpadded").last_hidden_state
    assert (whole - split).abs().max() <= 1e-6


def test_bad_path_and_inputs(minilm_dir):
    ours, _ = load_pretrained(minilm_dir)
    ids, mask, _ = padded_batch([4, 2], types=False)
    with pytest.raises(ValueError, match="unknown execution path"):
        ours(ids, mask, path="flash")
    left_padded = mask.flip(1)
    with pytest.raises(ValueError, match="right-padded"):
        ours(ids, left_padded, path="unpadded")
    with pytest.raises(ValueError, match="max_position_embeddings"):
        ours(torch.ones(1, 513, dtype=torch.long))


@pytest.mark.parametrize("path", ["sdpa", "unpadded"])
def test_fused_inference_equals_autograd_path(minilm_dir, path):
    """Inference accumulates GEMMs into the residual in place; with grad on, the plain formula runs."""
    ours, _ = load_pretrained(minilm_dir)
    ids, mask, tt = padded_batch([6, 19, 19, 40])
    with torch.inference_mode():
        fused = ours(ids, mask, tt, path=path).last_hidden_state
    with torch.enable_grad():
        plain = ours(ids, mask, tt, path=path).last_hidden_state
    m = mask.bool()
    assert (fused[m] - plain[m]).abs().max() <= 1e-5
