"""Pretraining end to end on a tiny corpus: recipes, MLM and ELECTRA runs, resume, NaN stop, bad input."""

import json
import random
from pathlib import Path

import pytest
import torch

from bertkit.cli.main import main
from bertkit.data.wordpiece import train_wordpiece
from bertkit.errors import BertkitError, ConfigError
from bertkit.model.families import family_of
from bertkit.model.mlm import MaskedLM
from bertkit.model.weights import load_pretrained, read_state_dict
from bertkit.train.plot import read_metrics
from bertkit.train.pretrain import PretrainConfig, pretrain
from bertkit.utils.recipes import apply_overrides, load_recipe

pytestmark = pytest.mark.usefixtures("one_thread")
RECIPES = ["tiny-cpu", "bert-base", "mosaicbert-base", "electra-small", "tiny-roberta", "tiny-deberta",
           "tiny-modernbert", "tiny-electra"]
WORDS = ("the cat sat on a mat while dogs ran over green hills and birds sang songs of summer rain in "
         "quiet towns near rivers where old boats rest").split()


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("corpus")
    rng = random.Random(0)
    for i in range(30):
        # a learnable pattern: each word is usually followed by the next word of the list
        start = rng.randrange(len(WORDS))
        text = " ".join(WORDS[(start + j) % len(WORDS)] if rng.random() < 0.9 else rng.choice(WORDS)
                        for j in range(rng.randint(40, 200)))
        (d / f"{i}.txt").write_text(text + "\n")
    return d


def tiny(corpus, tmp_path, **training):
    t = dict(batch_size=4, max_steps=12, eval_every=4, lr=3e-3, warmup_ratio=0.0, progress=False, log_every=1)
    t.update(training)
    return {"model": {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 4, "intermediate_size": 64,
                      "hidden_dropout_prob": 0.0, "attention_probs_dropout_prob": 0.0},
            "vocab_size": 128, "corpus": [str(corpus)], "cache_dir": str(tmp_path / "cache"), "max_length": 32,
            "global_batch_size": 8, "eval_sequences": 16, "training": t}


@pytest.mark.parametrize("name", RECIPES)
def test_recipes_parse_and_state_seed_and_global_batch(name):
    raw = load_recipe(name)
    assert "global_batch_size" in raw and "seed" in raw["training"]  # every recipe states them
    cfg = PretrainConfig.from_dict(raw)
    assert cfg.training.seed == raw["training"]["seed"]


def test_recipe_errors_name_the_key():
    with pytest.raises(ConfigError, match="trainig"):
        PretrainConfig.from_dict({"trainig": {}})
    with pytest.raises(ConfigError, match=r"training\.lr"):
        PretrainConfig.from_dict({"training": {"lr": "fast"}})
    with pytest.raises(ConfigError, match="max_length"):
        PretrainConfig.from_dict({"max_length": "long"})
    with pytest.raises(ConfigError, match=r"training\.bogus"):
        PretrainConfig.from_dict(apply_overrides({}, ["training.bogus=1"]))
    with pytest.raises(ConfigError, match="key=value"):
        apply_overrides({}, ["lr"])


def test_overrides_are_typed_and_nested():
    d = apply_overrides(load_recipe("tiny-cpu"), ["training.lr=1e-4", "model.hidden_size=128", "corpus=[a, b]",
                                                  "training.time_budget=90s"])
    cfg = PretrainConfig.from_dict(d)
    assert cfg.training.lr == 1e-4 and cfg.model["hidden_size"] == 128 and cfg.corpus == ["a", "b"]
    assert cfg.training.time_budget == 90.0
    assert load_recipe("tiny-cpu")["model"]["hidden_size"] == 256  # the recipe itself is untouched


def test_mlm_run_learns_and_saves_a_loadable_model(corpus, tmp_path):
    out = tmp_path / "run"
    result = pretrain(out, PretrainConfig.from_dict(tiny(corpus, tmp_path, max_steps=30, eval_every=10)))
    evals = [r for r in read_metrics(out / "metrics.jsonl") if r["kind"] == "eval"]
    assert [r["step"] for r in evals] == [10, 20, 30]
    assert evals[-1]["loss"] < evals[0]["loss"]
    start = json.loads((out / "results.json").read_text())["eval_at_start"]
    # from uniform over the vocabulary (ln 128 = 4.85) to about the corpus's word frequencies (ln 35 = 3.6)
    assert start["loss"] > 4.5 and result.eval["loss"] < start["loss"] - 1.0
    assert (out / "training_curve.png").is_file() and (out / "tokenizer.json").is_file()
    assert len((out / "vocab.txt").read_text().split()) % 64 == 0
    model = MaskedLM.from_pretrained(out)  # has its head: no new one
    keys = read_state_dict(out / "model.safetensors")
    assert any(k.startswith("cls.predictions.") for k in keys)
    assert model.encoder.config.max_position_embeddings >= 32
    assert json.loads((out / "results.json").read_text())["steps"] == 30


def test_electra_run_saves_the_discriminator_as_a_plain_encoder(corpus, tmp_path):
    out = tmp_path / "electra"
    cfg = tiny(corpus, tmp_path, max_steps=6, eval_every=3)
    cfg.update(objective="electra", generator_fraction=0.5)
    result = pretrain(out, PretrainConfig.from_dict(cfg))
    assert {"disc_accuracy", "disc_loss", "mlm_accuracy"} <= set(result.eval)
    encoder, heads = load_pretrained(out)
    assert heads == {} and encoder.config.hidden_size == 32
    assert json.loads((out / "config.json").read_text())["architectures"] == ["BertModel"]  # BERT family: no head


def test_continued_pretraining_creates_the_missing_head(corpus, tmp_path, minilm_dir, caplog):
    from tests.conftest import save_tiny_hf_model

    pytest.importorskip("transformers")
    save_tiny_hf_model(tmp_path / "base", minilm_dir)
    cfg = tiny(corpus, tmp_path, max_steps=2, eval_every=2)
    del cfg["model"], cfg["vocab_size"]
    cfg["init_from"] = str(tmp_path / "base")
    with caplog.at_level("INFO", logger="bertkit"):
        pretrain(tmp_path / "cont", PretrainConfig.from_dict(cfg))
    assert "no MLM head" in caplog.text
    MaskedLM.from_pretrained(tmp_path / "cont")


def test_resume_after_a_crash_continues_the_same_curve(corpus, tmp_path):
    # one tokenizer for both runs: HF tokenizers breaks frequency ties differently from run to run
    train_wordpiece([corpus], 128, tmp_path / "tok")
    cfg = tiny(corpus, tmp_path, max_steps=8, eval_every=4, checkpoint_every=2)
    cfg["tokenizer"] = str(tmp_path / "tok")
    pretrain(tmp_path / "whole", PretrainConfig.from_dict(cfg))

    def crash(trainer):
        if trainer.state.step == 5:
            raise KeyboardInterrupt  # as if killed between checkpoints 4 and 6

    with pytest.raises(KeyboardInterrupt):
        pretrain(tmp_path / "cut", PretrainConfig.from_dict(cfg), callbacks=(crash,))
    pretrain(tmp_path / "cut", PretrainConfig.from_dict(cfg), resume=True)
    curve = [r["loss"] for r in read_metrics(tmp_path / "whole" / "metrics.jsonl") if r["kind"] == "train"]
    resumed = [r["loss"] for r in read_metrics(tmp_path / "cut" / "metrics.jsonl") if r["kind"] == "train"]
    assert resumed == pytest.approx(curve, abs=1e-6)


def test_nan_loss_stops_naming_the_last_good_checkpoint(corpus, tmp_path):
    def poison(trainer):
        if trainer.state.step == 3:
            with torch.no_grad():
                trainer.module.encoder.embeddings.word.weight.fill_(float("nan"))

    cfg = tiny(corpus, tmp_path, max_steps=8, checkpoint_every=2)
    with pytest.raises(FloatingPointError, match=r"at step 4.*step-0000002\.pt"):
        pretrain(tmp_path / "nan", PretrainConfig.from_dict(cfg), callbacks=(poison,))


def test_empty_and_too_small_corpus_fail_before_training(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "a.txt").write_text("   \n")
    with pytest.raises(BertkitError, match=r"no documents|empty"):
        pretrain(tmp_path / "o1", PretrainConfig.from_dict(tiny(empty, tmp_path)))
    small = tmp_path / "small"
    small.mkdir()
    (small / "a.txt").write_text("a tiny corpus of a few words only")
    cfg = tiny(small, tmp_path)
    cfg["tokenizer"] = None
    with pytest.raises(BertkitError, match="too small"):
        pretrain(tmp_path / "o2", PretrainConfig.from_dict(cfg))
    assert not (tmp_path / "o2" / "checkpoints").exists()


def test_cli_runs_a_recipe_file_with_overrides(corpus, tmp_path, capsys):
    import yaml

    recipe = tmp_path / "r.yaml"
    recipe.write_text(yaml.safe_dump(tiny(corpus, tmp_path, max_steps=2, eval_every=2)))
    assert main(["pretrain", "--recipe", str(recipe), "--output", str(tmp_path / "cli"), "training.max_steps=3",
                 "training.eval_every=3"]) == 0
    printed = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert printed["steps"] == 3 and "mlm_accuracy" in printed
    assert main(["pretrain", "--recipe", str(recipe), "--output", str(tmp_path / "cli2"), "training.lr=fast"]) == 2
    assert "training.lr" in capsys.readouterr().err


@pytest.mark.parametrize("name", RECIPES)
def test_each_recipe_runs_two_steps_at_tiny_scale(name, corpus, tmp_path):
    """The recipe's objective, family and options (ALiBi + GeGLU for mosaicbert, ELECTRA's generator, RoBERTa's
    position offset, DeBERTa's disentangled attention, ModernBERT's sliding windows) and tokenizer choice, with the
    sizes shrunk: a smoke run, not the recipe's scale."""
    cfg = PretrainConfig.from_recipe(name, [
        "model.hidden_size=32", "model.num_hidden_layers=1", "model.num_attention_heads=4",
        "model.intermediate_size=64", "vocab_size=128", f"corpus=[{corpus}]", f"cache_dir={tmp_path / 'cache'}",
        "max_length=32", "global_batch_size=8", "eval_sequences=8", "training.batch_size=4",
        "training.max_steps=2", "training.eval_every=2", "training.progress=false", "training.precision=fp32"])
    result = pretrain(tmp_path / name, cfg)
    assert result.state.step == 2 and result.eval["loss"] > 0
    encoder, _ = load_pretrained(tmp_path / name)
    for key in ("ffn_type", "position_embedding_type"):
        if key in cfg.model:
            assert getattr(encoder.config, key) == cfg.model[key]
    assert family_of(encoder.config).name == cfg.model.get("family", "bert")
