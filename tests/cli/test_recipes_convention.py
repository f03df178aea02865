"""One shape for every recipe-driven command: --recipe NAME|FILE, key=value overrides, flags derived from the
config dataclass; the recipe < overrides < flags. Configs are built from parsed arguments, nothing trains."""

from __future__ import annotations

import json
import shutil

import pytest

from bertkit.cli import distill, finetune, pretrain, train_embeddings, train_reranker
from bertkit.cli.main import build_parser, main
from bertkit.errors import ConfigError
from bertkit.train.finetune import FinetuneConfig
from bertkit.utils.recipes import find_recipe

TRAINERS = {"pretrain": pretrain, "finetune": finetune, "distill": distill, "train-embeddings": train_embeddings,
            "train-reranker": train_reranker}


def config(command: str, *argv: str):
    args = build_parser().parse_args([command, "-o", "runs/never-written", *argv])
    return TRAINERS[command].config_from(args)


def write(path, text: str):
    path.write_text(text)
    return str(path)


def test_finetune_recipe_by_name_by_file_and_by_deprecated_config_agree(tmp_path, capsys):
    copy = tmp_path / "mine.yaml"
    shutil.copy(find_recipe("bbc-news"), copy)
    by_name = config("finetune", "--recipe", "bbc-news")
    assert capsys.readouterr().err == ""
    by_file = config("finetune", "--recipe", str(copy))
    by_config = config("finetune", "--config", str(copy))
    assert "--config is deprecated" in capsys.readouterr().err  # and it still works
    assert by_name == by_file == by_config
    assert by_name.dataset == "bbc-news" and by_name.training.lr == 1e-4 and by_name.training.batch_size == 16
    assert by_name.training.epochs == 2.0 and by_name.training.keep_checkpoints == 2  # the rest: the defaults
    with pytest.raises(ConfigError, match="--recipe alone"):
        config("finetune", "--recipe", "bbc-news", "--config", str(copy))


def test_recipe_then_overrides_then_flags(tmp_path):
    flat = write(tmp_path / "flat.yaml", "train_file: t.csv\nlr: 1.0e-4\nepochs: 2\nmax_length: 64\n")
    block = write(tmp_path / "block.yaml", "train_file: t.csv\ntraining:\n  lr: 1.0e-4\n  epochs: 2\n")
    for recipe in (flat, block):  # however the recipe writes a training key, the later layers beat it
        assert config("finetune", "--recipe", recipe).training.lr == 1e-4
        assert config("finetune", "--recipe", recipe, "training.lr=2e-4").training.lr == 2e-4
        assert config("finetune", "--recipe", recipe, "lr=2e-4").training.lr == 2e-4
        cfg = config("finetune", "--recipe", recipe, "--lr", "3e-4", "lr=2e-4", "epochs=5")
        assert cfg.training.lr == 3e-4 and cfg.training.epochs == 5.0
    cfg = config("finetune", "--recipe", flat, "max_length=32", "--train", "other.csv", "--no-progress",
                 "--time-budget", "1.5h", "--freeze-embeddings")
    assert cfg.max_length == 32 and cfg.train_file == "other.csv" and cfg.training.progress is False
    assert cfg.training.time_budget == 5400.0 and cfg.freeze_embeddings is True
    assert config("finetune", "--recipe", flat, "time_budget=10m").training.time_budget == 600.0
    assert config("finetune", "--train", "t.csv") == FinetuneConfig(train_file="t.csv")  # no recipe: the defaults


def test_flags_keep_their_old_names_and_types():
    cfg = config("finetune", "--task", "ner", "--model", "m", "--train", "a.conll", "--eval", "b.conll", "--test",
                 "c.conll", "--epochs", "1.5", "--max-steps", "7", "--batch-size", "4", "--grad-accum", "2",
                 "--warmup-ratio", "0", "--schedule", "cosine", "--max-grad-norm", "0.5", "--seed", "3",
                 "--eval-every", "5", "--metric", "f1", "--patience", "2", "--precision", "fp32",
                 "--checkpoint-every", "5", "--keep-checkpoints", "1", "--layer-decay", "0.9", "--reinit-layers",
                 "1", "--freeze-layers", "1", "--device", "cpu", "--label-separator", ";", "--text-column", "x")
    t = cfg.training
    assert (cfg.task, cfg.model, cfg.train_file, cfg.eval_file, cfg.test_file) == ("ner", "m", "a.conll", "b.conll",
                                                                                  "c.conll")
    assert (t.epochs, t.max_steps, t.batch_size, t.grad_accum, t.warmup_ratio, t.schedule) == (1.5, 7, 4, 2, 0.0,
                                                                                                "cosine")
    assert (t.max_grad_norm, t.seed, t.eval_every, t.metric, t.patience, t.precision) == (0.5, 3, 5, "f1", 2, "fp32")
    assert (t.checkpoint_every, t.keep_checkpoints, t.layer_decay, t.device) == (5, 1, 0.9, "cpu")
    assert (cfg.reinit_layers, cfg.freeze_layers, cfg.label_separator, cfg.text_column) == (1, 1, ";", "x")


def test_distill_flags_lists_and_mappings(tmp_path):
    recipe = write(tmp_path / "d.yaml", "teachers: [a]\nstudent_layers: [0, 1]\ntraining:\n  lr: 1.0e-3\n")
    cfg = config("distill", "--recipe", recipe, "--teacher", "x", "--teacher", "y", "--teacher-weights", "0.7,0.3",
                 "--max-steps", "16", "temperature=3", "--layer-map", "1,3")
    assert cfg.teachers == ["x", "y"] and cfg.teacher_weights == [0.7, 0.3] and cfg.temperature == 3.0
    assert cfg.student_layers == [0, 1] and cfg.layer_map == [1, 3]
    assert cfg.training.lr == 1e-3 and cfg.training.max_steps == 16
    cfg = config("distill", "--recipe", recipe, "student_layers=null", "--student-config", "hidden_size=16",
                 "num_attention_heads=2")  # a mapping flag takes KEY=VALUE pairs up to the next flag
    assert cfg.student_config == {"hidden_size": 16, "num_attention_heads": 2} and cfg.student_layers is None


def test_unknown_keys_and_bad_values_are_named(tmp_path, capsys):
    with pytest.raises(ConfigError, match="learning_rate"):
        config("finetune", "--recipe", "bbc-news", "learning_rate=1e-4")
    with pytest.raises(ConfigError, match=r"training\.bogus"):
        config("finetune", "--recipe", "bbc-news", "training.bogus=1")
    with pytest.raises(ConfigError, match="trainig"):
        config("finetune", "--recipe", write(tmp_path / "typo.yaml", "trainig:\n  lr: 1.0e-4\n"))
    with pytest.raises(ConfigError, match=r"training\.lr"):
        config("pretrain", "--recipe", "tiny-cpu", "lr=fast")
    with pytest.raises(ConfigError, match=r"training\.time_budget: cannot read duration 'soon'"):
        config("train-reranker", "--time-budget", "soon")
    with pytest.raises(ConfigError, match="no distill recipe named 'nope'"):
        config("distill", "--recipe", "nope")
    # through main: exit 2 and one line naming the key
    assert main(["finetune", "--recipe", "bbc-news", "-o", str(tmp_path / "o"), "learning_rate=1e-4"]) == 2
    err = capsys.readouterr().err
    assert "bertkit finetune: error: unknown setting(s) learning_rate" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "o").exists()


RECIPE_OF = {"pretrain": "tiny-cpu", "finetune": "bbc-news", "distill": "bbc-news-3l", "train-embeddings": "bbc-news",
             "train-reranker": "bbc-news"}


@pytest.mark.parametrize("command", list(RECIPE_OF))
def test_every_trainer_builds_its_config_from_a_recipe_and_overrides(command, tmp_path):
    cfg = config(command, "--recipe", RECIPE_OF[command], "training.seed=7", "--max-steps", "3")
    assert cfg.training.seed == 7 and cfg.training.max_steps == 3
    shipped = find_recipe(RECIPE_OF[command], TRAINERS[command].KIND)  # recipes/KIND/NAME.yaml
    copy = write(tmp_path / "r.yaml", shipped.read_text())
    assert config(command, "--recipe", copy) == config(command, "--recipe", RECIPE_OF[command])


@pytest.mark.parametrize("command", [*RECIPE_OF, "compress"])
def test_every_recipe_driven_command_has_the_same_shape(command, capsys):
    before = ["runs/model"] if command == "compress" else []
    args = build_parser().parse_args([command, *before, "--recipe", "x.yaml", "-o", "out", "--overwrite",
                                      "--print-config", "a=1", "b.c=2"])
    assert (args.recipe, args.output, args.overrides, args.overwrite, args.print_config) == (
        "x.yaml", "out", ["a=1", "b.c=2"], True, True)
    with pytest.raises(SystemExit):
        build_parser().parse_args([command, "--help"])
    text = capsys.readouterr().out
    line = text.splitlines()[0]
    assert line.startswith(f"usage: bertkit {command} ") and "--recipe NAME|FILE" in line and "-o DIR" in line
    assert "[--print-config]" in line and line.endswith("[key=value ...]")
    assert "the recipe < key=value overrides" in text  # the precedence, in every command's help


def test_print_config_shows_the_resolved_settings_without_training(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["finetune", "--recipe", "bbc-news", "-o", str(out), "--print-config", "lr=1e-3", "--epochs", "4"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["training"]["lr"] == 1e-3 and printed["training"]["epochs"] == 4.0
    assert printed["dataset"] == "bbc-news" and not out.exists()


def test_mirror_keeps_its_own_batch_size_unless_one_is_set():
    assert config("train-embeddings", "--dataset", "bbc-news").training.batch_size == 32
    assert config("train-embeddings", "--mirror", "--corpus", "a.txt", "b.txt").training.batch_size == 64
    assert config("train-embeddings", "--mirror", "batch_size=16").training.batch_size == 16
    assert config("train-embeddings", "--mirror", "--batch-size", "8").training.batch_size == 8
    cfg = config("train-embeddings", "--mirror", "--corpus", "a.txt", "b.txt", "--lr", "1e-3")
    assert cfg.corpus == ["a.txt", "b.txt"] and cfg.training.lr == 1e-3 and cfg.training.epochs == 1.0


def test_reranker_defaults_and_checks():
    cfg = config("train-reranker", "--dataset", "bbc-news")
    assert (cfg.training.epochs, cfg.training.batch_size, cfg.training.lr, cfg.negatives) == (2.0, 4, 1.5e-4, 3)
    with pytest.raises(ConfigError, match=r"negatives \(--negatives\) must be >= 1"):
        config("train-reranker", "--negatives", "0")
