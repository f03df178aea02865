"""MLM head, sparse prediction, the fused linear cross-entropy, HF BertForMaskedLM layout, and ELECTRA."""

import pytest
import torch
import torch.nn.functional as F

from bertkit.model.attention import Packing
from bertkit.model.bert import BertModel
from bertkit.model.config import EncoderConfig
from bertkit.model.electra import Electra, generator_config, replaced_labels
from bertkit.model.fused_ce import linear_cross_entropy
from bertkit.model.mlm import MaskedLM
from bertkit.model.weights import load_pretrained

pytestmark = pytest.mark.usefixtures("one_thread")


def tiny(**kw):
    d = dict(vocab_size=97, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
             max_position_embeddings=64, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    d.update(kw)
    return EncoderConfig(**d)


def batch(n=3, s=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(5, 97, (n * s,), generator=g)
    positions = torch.randperm(n * s, generator=g)[: n * s // 3].sort().values
    targets = torch.randint(5, 97, (len(positions),), generator=g)
    return ids, Packing.from_lengths([s] * n), positions, targets


def test_sparse_prediction_equals_dense_loss():
    torch.manual_seed(0)
    model = MaskedLM(BertModel(tiny(), add_pooler=False)).train()
    ids, packing, positions, targets = batch()
    dense = F.cross_entropy(model(ids, packing)[positions].float(), targets)  # decoder on every row
    sparse_logits = F.cross_entropy(model(ids, packing, positions).float(), targets)
    sparse_fused = model(ids, packing, positions, targets)
    assert torch.allclose(dense, sparse_logits, atol=1e-6) and torch.allclose(dense, sparse_fused, atol=1e-6)
    g_dense = torch.autograd.grad(dense, list(model.parameters()), allow_unused=True)
    g_fused = torch.autograd.grad(model(ids, packing, positions, targets), list(model.parameters()),
                                  allow_unused=True)
    for a, b in zip(g_dense, g_fused, strict=True):
        if a is not None:
            assert torch.allclose(a, b, atol=1e-6, rtol=1e-4)


@pytest.mark.parametrize("rows", [1, 31, 32, 33, 70])
def test_fused_cross_entropy_matches_reference(rows):
    torch.manual_seed(rows)
    h = torch.randn(rows, 16, requires_grad=True)
    w = torch.randn(50, 16, requires_grad=True)
    b = torch.randn(50, requires_grad=True)
    t = torch.randint(0, 50, (rows,))
    ref = F.cross_entropy(F.linear(h, w, b), t)
    out = linear_cross_entropy(h, w, b, t)
    assert torch.allclose(ref, out, atol=1e-6)
    for a, c in zip(torch.autograd.grad(ref * 3, (h, w, b)), torch.autograd.grad(out * 3, (h, w, b)), strict=True):
        assert torch.allclose(a, c, atol=1e-6)
    with torch.autocast("cpu", dtype=torch.bfloat16):  # bf16 matmuls, fp32 softmax: close, not equal
        out16 = linear_cross_entropy(h, w, b, t)
    assert abs(out16.item() - ref.item()) < 0.05 * max(1.0, ref.item())
    with torch.no_grad():  # evaluation takes the plain path
        assert torch.allclose(linear_cross_entropy(h, w, b, t), ref, atol=1e-6)


def test_decoder_is_tied_to_word_embeddings():
    model = MaskedLM(BertModel(tiny(), add_pooler=False))
    assert model.head.word_embeddings.weight is model.encoder.embeddings.word.weight
    n_unique = len({id(p) for p in model.parameters()})
    assert n_unique == len(list(model.parameters()))


def test_saved_layout_loads_in_transformers_and_back(tmp_path):
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    model = MaskedLM(BertModel(tiny(), add_pooler=False)).eval()
    with torch.no_grad():
        model.head.bias.normal_()
    model.save_pretrained(tmp_path / "ours")
    hf = transformers.BertForMaskedLM.from_pretrained(tmp_path / "ours", attn_implementation="eager").eval()
    ids = torch.randint(5, 97, (2, 12))
    with torch.no_grad():
        theirs = hf(input_ids=ids).logits.reshape(-1, 97)
        mine = model(ids.reshape(-1), Packing.from_lengths([12, 12]))
    assert (theirs - mine).abs().max() < 1e-4
    # and a head written by transformers loads into ours
    hf.save_pretrained(tmp_path / "hf")
    again = MaskedLM.from_pretrained(tmp_path / "hf").eval()
    with torch.no_grad():
        assert (again(ids.reshape(-1), Packing.from_lengths([12, 12])) - theirs).abs().max() < 1e-4


def test_headless_checkpoint_gets_a_new_head(tmp_path, caplog, minilm_dir):
    from tests.conftest import save_tiny_hf_model

    pytest.importorskip("transformers")
    save_tiny_hf_model(tmp_path, minilm_dir)
    with caplog.at_level("INFO", logger="bertkit"):
        model = MaskedLM.from_pretrained(tmp_path)
    assert "no MLM head" in caplog.text
    assert model.head.bias.shape == (30522,)
    assert not any(p.requires_grad for p in model.encoder.pooler.parameters())  # kept, not trained


def test_electra_labels_and_sharing(tmp_path):
    ids = torch.tensor([10, 11, 3, 13, 3, 15])
    positions, targets = torch.tensor([2, 4]), torch.tensor([12, 14])
    corrupted, replaced = replaced_labels(ids, positions, torch.tensor([12, 99]), targets)
    # a sample equal to the original counts as original, as in ELECTRA
    assert corrupted.tolist() == [10, 11, 12, 13, 99, 15]
    assert replaced.tolist() == [False, False, False, False, True, False]

    gcfg = generator_config(tiny(), 0.25)
    assert (gcfg.hidden_size, gcfg.num_attention_heads, gcfg.intermediate_size) == (8, 1, 16)
    torch.manual_seed(0)
    disc = BertModel(tiny(), add_pooler=False)
    model = Electra(disc, generator_fraction=0.5).train()
    assert model.generator.embeddings.shared is disc.embeddings
    assert model.generator_head.word_embeddings is disc.embeddings.word
    ids, packing, positions, targets = batch()
    out = model(ids, packing, positions, targets)
    out.loss.backward()
    assert disc.embeddings.word.weight.grad is not None
    assert model.generator.layers[0].Wqkv.weight.grad is not None
    assert out.replaced.sum() <= len(positions)
    disc.config.save(tmp_path)
    from bertkit.model.weights import save_weights

    save_weights(disc, tmp_path)
    loaded, _ = load_pretrained(tmp_path)  # the discriminator is a plain encoder
    assert loaded.num_parameters() == disc.num_parameters()


def test_generator_fraction_out_of_range():
    with pytest.raises(ValueError, match="generator_fraction"):
        generator_config(tiny(), 0.0)
