"""Pretraining on every encoder family, against transformers itself: continued MLM from each family's checkpoint
(saved as its XxxForMaskedLM, which transformers loads with our logits), a new model of each family from a recipe,
ELECTRA continued from ElectraForPreTraining and from scratch as the electra family, and the bad input.

Checkpoints are tiny random models saved by transformers (tests/families/models.py) with a tokenizer of the family
trained here (tests/families/tokenizers.py); the embedding table has a row for every token of the tokenizer."""

import json
import math
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bertkit.data.tokenizer import Tokenizer
from bertkit.errors import ConfigError
from bertkit.model.attention import Packing
from bertkit.model.bert import BertModel
from bertkit.model.directory import load_encoder
from bertkit.model.electra import Electra
from bertkit.model.families import FAMILIES, family_for_model_type, hf_config
from bertkit.model.mlm import MaskedLM
from bertkit.model.weights import hf_state_dict, load_pretrained
from bertkit.train.plot import read_metrics
from bertkit.train.pretrain import PretrainConfig, family_settings, new_encoder_config, pretrain
from tests.families.models import FAMILY_OF, VOCAB, hf_model_class, save_tiny
from tests.families.tokenizers import corpus as english_paragraphs
from tests.families.tokenizers import make_tokenizer

transformers = pytest.importorskip("transformers")
pytestmark = pytest.mark.usefixtures("one_thread")

TEXTS = ["The parser returns a value when the list is empty.", "Every module imports its own names",
         "a generator yields the result, then raises StopIteration"]
# the base-model sizes of a new model of each family, in the family's own config.json names
SIZES = {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 4, "intermediate_size": 64}
NEW_MODELS = {
    "bert": SIZES,
    "roberta": SIZES,
    "deberta-v2": {**SIZES, "position_buckets": 8, "max_relative_positions": 32},
    "modernbert": {**SIZES, "num_hidden_layers": 3, "global_attn_every_n_layers": 2, "local_attention": 8},
    "electra": {**SIZES, "embedding_size": 16},
    "distilbert": {"dim": 32, "n_layers": 2, "n_heads": 4, "hidden_dim": 64},
    "mpnet": SIZES,
}


@pytest.fixture(autouse=True)
def no_training_curve(monkeypatch):
    """Drawing training_curve.png takes most of a 2-step run (test_pretrain.py checks it): skipped here."""
    monkeypatch.setattr("bertkit.train.engine.plot_training_curve", lambda *args, **kwargs: None)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("corpus")
    for i, text in enumerate(english_paragraphs()[:150]):
        (d / f"{i}.txt").write_text(text + "\n")
    return d


@pytest.fixture(scope="module")
def tokenizers(tmp_path_factory):
    """family (tests/families/tokenizers.py name) -> a directory holding that family's tokenizer"""
    made = {}

    def get(family: str) -> Path:
        if family not in made:
            made[family] = make_tokenizer(family, tmp_path_factory.mktemp(f"tok-{family}"))
        return made[family]

    return get


def checkpoint(variant: str, directory: Path, role: str, **overrides) -> Path:
    """The variant's tiny transformers model (base model or with a head) plus its family's tokenizer."""
    make_tokenizer(FAMILY_OF[variant], directory)
    tok = Tokenizer.from_dir(directory)
    kw = {"vocab_size": max(VOCAB, tok.vocab_size), "pad_token_id": tok.pad_id, **overrides}
    save_tiny(variant, directory, role=role, seed=3, **kw)
    return directory


def run_config(corpus: Path, tmp_path: Path, **settings) -> dict:
    return {"corpus": [str(corpus)], "cache_dir": str(tmp_path / "cache"), "max_length": 32, "global_batch_size": 8,
            "eval_sequences": 8, "training": {"batch_size": 4, "max_steps": 2, "eval_every": 2, "lr": 3e-3,
                                              "warmup_ratio": 0.0, "progress": False, "precision": "fp32",
                                              "log_every": 1},
            **settings}


def padded(tok: Tokenizer, texts: list[str], max_length: int = 32) -> tuple[torch.Tensor, torch.Tensor, list[int]]:
    """(ids, mask) right-padded with the tokenizer's pad id, and the lengths."""
    batch = tok.encode(texts, max_length=max_length)
    n = max(batch.lengths)
    ids = torch.tensor([x + [tok.pad_id] * (n - len(x)) for x in batch.ids])
    mask = torch.tensor([[1] * len(x) + [0] * (n - len(x)) for x in batch.ids])
    return ids, mask, batch.lengths


def assert_transformers_loads_mlm(out: Path, cls) -> None:
    """``cls`` (an XxxForMaskedLM) loads ``out`` with nothing missing, the tokenizer gives transformers' ids, and
    the masked-LM logits are ours to 1e-4."""
    assert json.loads((out / "config.json").read_text())["architectures"] == [cls.__name__]
    hf, info = cls.from_pretrained(out, output_loading_info=True, attn_implementation="eager")
    assert not info["missing_keys"] and not info["mismatched_keys"], info
    assert all(".pooler." in k for k in info["unexpected_keys"]), info  # a kept pooler is the only extra
    tok = Tokenizer.from_dir(out)
    assert transformers.AutoTokenizer.from_pretrained(out)(TEXTS)["input_ids"] == tok.encode(TEXTS).ids
    ids, mask, lengths = padded(tok, TEXTS)
    ours = MaskedLM.from_pretrained(out).eval()
    with torch.inference_mode():
        want = hf.eval()(input_ids=ids, attention_mask=mask).logits[mask.bool()]
        got = ours(ids[mask.bool()], Packing.from_lengths(lengths))
    assert (got - want).abs().max() <= 1e-4


def assert_weights_changed(before: Path, after: Path) -> None:
    """Most encoder tensors moved (a frozen pooler or sinusoidal table stays), and every head tensor the checkpoint
    had was carried on and trained."""
    (a, heads_a), (b, heads_b) = load_pretrained(before), load_pretrained(after)
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    changed = [k for k in sb if not torch.equal(sa[k], sb[k])]
    assert len(changed) > len(sb) // 2, f"only {len(changed)} of {len(sb)} encoder tensors changed"
    assert set(heads_a) <= set(heads_b)
    assert all(not torch.equal(heads_a[k], heads_b[k]) for k in heads_a if "weight" in k), "a head did not train"


def final_losses(out: Path) -> list[float]:
    return [r["loss"] for r in read_metrics(out / "metrics.jsonl") if r["kind"] == "train"]


# ---- continued MLM from every family -------------------------------------------------------------------
@pytest.mark.parametrize(("variant", "role"), [
    ("bert", "mlm"), ("roberta", "mlm"), ("xlm-roberta", "mlm"), ("electra", "mlm"), ("distilbert", "mlm"),
    ("mpnet", "mlm"), ("deberta-v3", "mlm"), ("deberta-v2", "mlm"), ("modernbert", "mlm"),
    ("roberta", "encoder"), ("modernbert", "encoder"),  # base models: a new MLM head in the family's layout
])
def test_continued_mlm_on_every_family(variant, role, corpus, tmp_path, caplog):
    base = checkpoint(variant, tmp_path / "base", role)
    out = tmp_path / "out"
    with caplog.at_level("INFO", logger="bertkit"):
        result = pretrain(out, PretrainConfig.from_dict(run_config(corpus, tmp_path, init_from=str(base))))
    assert ("no MLM head" in caplog.text) == (role == "encoder")
    assert result.state.step == 2 and math.isfinite(result.eval["mlm_loss"])
    assert len(final_losses(out)) == 2 and all(math.isfinite(x) for x in final_losses(out))
    assert_weights_changed(base, out)
    assert_transformers_loads_mlm(out, hf_model_class(variant, "mlm"))
    results = json.loads((out / "results.json").read_text())
    assert results["family"] == family_for_model_type(FAMILY_OF[variant]).name
    assert results["architecture"] == hf_model_class(variant, "mlm").__name__


def test_continued_mlm_from_a_sentence_transformers_directory(corpus, tmp_path):
    """all-mpnet-base-v2's layout, its Transformer module in a subfolder: the encoder and tokenizer come from there."""
    st = tmp_path / "st"
    checkpoint("mpnet", st / "0_Transformer", "encoder")
    (st / "modules.json").write_text(json.dumps([
        {"idx": 0, "name": "0", "path": "0_Transformer", "type": "sentence_transformers.models.Transformer"},
        {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"}]))
    (st / "1_Pooling").mkdir()
    (st / "1_Pooling" / "config.json").write_text(json.dumps({"word_embedding_dimension": 32,
                                                              "pooling_mode_mean_tokens": True}))
    out = tmp_path / "out"
    pretrain(out, PretrainConfig.from_dict(run_config(corpus, tmp_path, init_from=str(st))))
    assert_weights_changed(st / "0_Transformer", out)
    assert_transformers_loads_mlm(out, transformers.MPNetForMaskedLM)


def test_rows_use_every_position_and_no_more(corpus, tmp_path):
    """RoBERTa's positions start at pad_token_id + 1: a 96-position model takes 94 tokens. Rows of exactly 94 train
    (one more would index past the position table); 95 is refused naming both numbers."""
    base = checkpoint("roberta", tmp_path / "base", "mlm")
    cfg = run_config(corpus, tmp_path, init_from=str(base), max_length=94)
    assert pretrain(tmp_path / "fits", PretrainConfig.from_dict(cfg)).state.step == 2
    cfg["max_length"] = 95
    with pytest.raises(ConfigError, match=r"max_length is 95 .* at most 94 tokens \(max_position_embeddings 96 - "
                                          r"position offset 2\)"):
        pretrain(tmp_path / "long", PretrainConfig.from_dict(cfg))


# ---- a new model of each family from a recipe ------------------------------------------------------------
@pytest.mark.parametrize("family", list(NEW_MODELS))
def test_recipe_builds_each_family_from_scratch(family, corpus, tokenizers, tmp_path):
    out = tmp_path / "out"
    cfg = run_config(corpus, tmp_path, model={"family": family, **NEW_MODELS[family]},
                     tokenizer=str(tokenizers(family)))
    result = pretrain(out, PretrainConfig.from_dict(cfg))
    assert result.state.step == 2 and math.isfinite(result.eval["mlm_loss"])
    encoder, _ = load_pretrained(out)
    assert encoder.config.model_type == family and encoder.config.vocab_size == Tokenizer.from_dir(out).vocab_size
    assert_transformers_loads_mlm(out, getattr(transformers, FAMILIES[family].architecture(family, "mlm")))


@pytest.mark.parametrize("family", list(NEW_MODELS))
@settings(max_examples=6, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(layers=st.integers(1, 5), heads=st.integers(1, 4), head_dim=st.sampled_from([4, 8]),
       max_length=st.integers(8, 600), pad=st.integers(0, 3))
def test_new_model_configs_are_the_family_s_transformers_model(family, layers, heads, head_dim, max_length, pad):
    """Whatever the sizes, the config a recipe builds is exactly its family's transformers model: our weights under
    the family's names load into it strictly, and the longest row fits its positions."""
    names = {"distilbert": ("n_layers", "n_heads", "dim", "hidden_dim")}.get(
        family, ("num_hidden_layers", "num_attention_heads", "hidden_size", "intermediate_size"))
    section = {"family": family, **dict(zip(names, (layers, heads, heads * head_dim, 2 * heads * head_dim),
                                            strict=True))}
    cfg = new_encoder_config(section, 50, pad, max_length)
    assert cfg.max_tokens >= max_length and cfg.pad_token_id == pad and cfg.vocab_size == 50
    hf_cfg = transformers.AutoConfig.for_model(**hf_config(cfg))
    hf = transformers.AutoModel.from_config(hf_cfg)
    hf.load_state_dict(hf_state_dict(BertModel(cfg, add_pooler=getattr(hf, "pooler", None) is not None)),
                       strict=True)


# ---- ELECTRA -------------------------------------------------------------------------------------------
def disc_logits(model: Electra, tok: Tokenizer) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(ours (total_tokens,), ids, mask) of the replaced-token head on TEXTS"""
    ids, mask, lengths = padded(tok, TEXTS)
    with torch.inference_mode():
        h = model.discriminator.forward_packed(ids[mask.bool()], Packing.from_lengths(lengths))
        return model.disc_head(h), ids, mask


def assert_transformers_loads_discriminator(out: Path) -> None:
    assert json.loads((out / "config.json").read_text())["architectures"] == ["ElectraForPreTraining"]
    hf, info = transformers.ElectraForPreTraining.from_pretrained(out, output_loading_info=True)
    assert not any(info.values()), info
    encoder, heads, _ = load_encoder(out)
    got, ids, mask = disc_logits(Electra.from_encoder(encoder, heads, str(out)).eval(), Tokenizer.from_dir(out))
    with torch.inference_mode():
        want = hf.eval()(input_ids=ids, attention_mask=mask).logits[mask.bool()]
    assert (got - want).abs().max() <= 1e-4


def test_electra_continues_from_electra_for_pretraining(corpus, tmp_path, caplog):
    base = checkpoint("electra", tmp_path / "base", "pretraining")
    # the checkpoint's discriminator head is the one continued: its logits are transformers'
    encoder, heads, _ = load_encoder(base)
    with caplog.at_level("INFO", logger="bertkit"):
        model = Electra.from_encoder(encoder, heads, str(base)).eval()
    assert "continuing with its discriminator head" in caplog.text
    got, ids, mask = disc_logits(model, Tokenizer.from_dir(base))
    hf = transformers.ElectraForPreTraining.from_pretrained(base).eval()
    with torch.inference_mode():
        assert (got - hf(input_ids=ids, attention_mask=mask).logits[mask.bool()]).abs().max() <= 1e-5

    out = tmp_path / "out"
    result = pretrain(out, PretrainConfig.from_dict(run_config(corpus, tmp_path, init_from=str(base),
                                                               objective="electra")))
    assert result.state.step == 2 and math.isfinite(result.eval["disc_loss"])
    assert_weights_changed(base, out)  # the discriminator head among them
    assert_transformers_loads_discriminator(out)


def test_electra_from_scratch_is_an_electra_model(corpus, tokenizers, tmp_path):
    out = tmp_path / "out"
    cfg = run_config(corpus, tmp_path, objective="electra", model={"family": "electra", **NEW_MODELS["electra"]},
                     tokenizer=str(tokenizers("electra")), generator_fraction=0.5)
    result = pretrain(out, PretrainConfig.from_dict(cfg))
    assert {"disc_accuracy", "mlm_accuracy"} <= set(result.eval)
    assert json.loads((out / "results.json").read_text())["architecture"] == "ElectraForPreTraining"
    assert_transformers_loads_discriminator(out)
    # the generator shares the narrow embedding tables and their norm (projected only where the widths differ)
    gen = result.model.generator.embeddings
    assert gen.shared is result.model.discriminator.embeddings and gen.in_width == 16  # 16 wide: no projection


@pytest.mark.parametrize("family", [f for f in NEW_MODELS if f != "electra"])
def test_electra_objective_on_other_families_saves_their_base_model(family, corpus, tokenizers, tmp_path):
    """Transformers has no replaced-token head outside ELECTRA: the discriminator is saved as the family's base
    model, which transformers loads with our hidden states."""
    out = tmp_path / "out"
    cfg = run_config(corpus, tmp_path, objective="electra", model={"family": family, **NEW_MODELS[family]},
                     tokenizer=str(tokenizers(family)))
    assert math.isfinite(pretrain(out, PretrainConfig.from_dict(cfg)).eval["disc_loss"])
    name = FAMILIES[family].architecture(family, "encoder")
    assert json.loads((out / "config.json").read_text())["architectures"] == [name]
    hf, info = getattr(transformers, name).from_pretrained(out, output_loading_info=True, attn_implementation="eager")
    # a new encoder has no pooler (pretraining never trains one): transformers initializes BERT's, RoBERTa's, MPNet's
    assert all(k.startswith("pooler.") for k in info["missing_keys"]), info
    assert not info["unexpected_keys"] and not info["mismatched_keys"], info
    ids, mask, _ = padded(Tokenizer.from_dir(out), TEXTS)
    encoder, heads = load_pretrained(out)
    assert heads == {}
    with torch.inference_mode():
        want = hf.eval()(input_ids=ids, attention_mask=mask).last_hidden_state[mask.bool()]
        got = encoder(ids, mask).last_hidden_state[mask.bool()]
    assert (got - want).abs().max() <= 1e-4


def test_cli_names_a_bad_family_in_one_line(tmp_path, capsys):
    from bertkit.cli.main import main

    assert main(["pretrain", "--recipe", "tiny-roberta", "--output", str(tmp_path / "o"), "model.family=gpt2"]) == 2
    err = capsys.readouterr().err.strip()
    assert "model.family is 'gpt2'" in err and len(err.splitlines()) == 1
    assert main(["pretrain", "--recipe", "tiny-deberta", "--output", str(tmp_path / "o"), "--print-config"]) == 0
    assert json.loads(capsys.readouterr().out)["model"]["family"] == "deberta-v2"


# ---- bad input -----------------------------------------------------------------------------------------
@pytest.mark.parametrize(("model", "match"), [
    ({"family": "gpt2"}, r"model\.family is 'gpt2'; choose one of bert, roberta, deberta-v2, modernbert"),
    ({"family": "roberta", "model_type": "bert"}, r"model\.model_type is 'bert'; family roberta has roberta, "
                                                  r"xlm-roberta, camembert"),
    ({"family": "roberta", "position_embedding_type": "rope"}, r"position_embedding_type.*family roberta"),
    ({"family": "roberta", "prenorm": True}, r"model\.prenorm is not a setting of family roberta; its settings: "
                                             r"attention_probs_dropout_prob"),
    ({"family": "modernbert", "ffn_type": "mlp"}, r"model\.ffn_type is not a setting of family modernbert"),
    ({"family": "modernbert", "mlp_bias": True}, r"mlp_bias"),
    ({"family": "deberta-v2", "pos_att_type": ["c2p", "p2p"]}, r"pos_att_type.*p2p"),
    ({"family": "deberta-v2", "conv_kernel_size": 3}, r"conv_kernel_size"),
    ({"family": "distilbert", "hidden_size": 64}, r"model\.hidden_size is not a setting of family distilbert; "
                                                  r"its settings: activation, attention_dropout, dim"),
    ({"family": "electra", "hidden_size": 30, "num_attention_heads": 4}, r"hidden_size.*num_attention_heads"),
    ({"family": "modernbert", "max_position_embeddings": 64}, r"max_length is 128 but the model takes at most 64"),
    ({"family": "bert", "vocab_size": "big"}, r"vocab_size"),
])
def test_bad_model_settings_are_named_when_the_recipe_is_read(model, match):
    with pytest.raises(ConfigError, match=match):
        PretrainConfig.from_dict({"model": model})


def test_every_family_lists_its_settings():
    assert "global_attn_every_n_layers" in family_settings("modernbert")
    assert {"position_buckets", "share_att_key", "pos_att_type"} <= set(family_settings("deberta-v2"))
    assert "ffn_type" in family_settings("bert") and "model_type" not in family_settings("roberta")


def test_vocabulary_too_small_for_the_tokenizer_names_both_sizes(corpus, tokenizers, tmp_path):
    n = Tokenizer.from_dir(tokenizers("roberta")).vocab_size
    cfg = run_config(corpus, tmp_path, model={"family": "roberta", **SIZES, "vocab_size": 300},
                     tokenizer=str(tokenizers("roberta")))
    with pytest.raises(ConfigError, match=rf"model\.vocab_size is 300 but the tokenizer has {n} tokens"):
        pretrain(tmp_path / "small", PretrainConfig.from_dict(cfg))
    base = tmp_path / "base"
    save_tiny("roberta", base, vocab_size=500, pad_token_id=1)
    cfg = run_config(corpus, tmp_path, init_from=str(base), tokenizer=str(tokenizers("roberta")))
    with pytest.raises(ConfigError, match=rf"the tokenizer has {n} tokens but the model's embedding table only "
                                          r"500 rows"):
        pretrain(tmp_path / "cont", PretrainConfig.from_dict(cfg))
    assert not (tmp_path / "cache").exists()  # refused before the corpus was read


@pytest.mark.parametrize("fraction", [0.5, 0.25])  # generator 16 wide (= the embeddings: no projection), 8 wide
def test_electra_generator_is_saved_as_electra_for_masked_lm_and_continued(fraction, corpus, tokenizers, tmp_path,
                                                                            caplog):
    """The generator goes to <out>/generator as transformers' ElectraForMaskedLM (same MLM logits as ours), and
    continued ELECTRA training from <out> takes it back instead of starting a new one."""
    out = tmp_path / "out"
    cfg = run_config(corpus, tmp_path, objective="electra", model={"family": "electra", **NEW_MODELS["electra"]},
                     tokenizer=str(tokenizers("electra")), generator_fraction=fraction)
    model = pretrain(out, PretrainConfig.from_dict(cfg)).model.eval()
    hf, info = transformers.ElectraForMaskedLM.from_pretrained(out / "generator", output_loading_info=True,
                                                               attn_implementation="eager")
    assert not any(info.values()), info
    ids, mask, lengths = padded(Tokenizer.from_dir(out), TEXTS)
    m = mask.bool()
    with torch.inference_mode():
        want = hf.eval()(input_ids=ids, attention_mask=mask).logits[m]
        got = model.generator_head(model.generator.forward_packed(ids[m], Packing.from_lengths(lengths)))
    assert (got - want).abs().max() <= 1e-4

    encoder, heads, _ = load_encoder(out)
    with caplog.at_level("INFO", logger="bertkit"):
        again = Electra.from_encoder(encoder, heads, str(out), generator=out / "generator").eval()
    assert "continuing with its generator" in caplog.text
    for name, t in model.generator.layers.state_dict().items():
        assert torch.equal(again.generator.layers.state_dict()[name], t), name
    cont = tmp_path / "cont"
    with caplog.at_level("INFO", logger="bertkit"):
        pretrain(cont, PretrainConfig.from_dict(run_config(corpus, tmp_path, init_from=str(out), objective="electra")))
    assert "generator" in caplog.text and (cont / "generator" / "model.safetensors").is_file()
