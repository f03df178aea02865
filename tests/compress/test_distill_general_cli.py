"""``bertkit distill --general`` end to end on a tiny BERT and a toy corpus: the output is an encoder directory,
its loss goes down, a killed run resumes to the uninterrupted run's result, ``mode: general`` recipes, and the
errors (a missing corpus, settings of the other mode, two teachers)."""

from __future__ import annotations

import functools
import json
import logging
import random
import re

import numpy as np
import pytest
import torch

import bertkit
from bertkit.cli import distill as distill_cli
from bertkit.cli.main import main
from bertkit.compress.distill import distill_general
from bertkit.model.weights import load_pretrained
from tests.conftest import save_tiny_hf_model

pytestmark = pytest.mark.usefixtures("one_thread")
WORDS = "good great love best music film game war death king river water night school city team".split()


@pytest.fixture(scope="module")
def encoder_dir(minilm_dir, tmp_path_factory):
    d = tmp_path_factory.mktemp("tiny4")
    save_tiny_hf_model(d, minilm_dir, num_hidden_layers=4)
    return d


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    rnd = random.Random(0)
    d = tmp_path_factory.mktemp("corpus")
    for i in range(6):
        (d / f"doc{i}.txt").write_text(" ".join(rnd.choices(WORDS, k=120)))
    return d


def flags(encoder_dir, corpus, cache, out, *extra):
    return ["distill", "--general", "--teacher", str(encoder_dir), "--corpus", str(corpus), "--cache-dir", str(cache),
            "--student-layers", "0,2", "--max-length", "16", "--eval-sequences", "4", "--alpha-hidden", "1",
            "--batch-size", "8", "--lr", "3e-3", "--log-every", "1", "--warmup-ratio", "0", "--no-progress",
            "-o", str(out), *extra]


def records(out, kind):
    return [r for r in map(json.loads, (out / "metrics.jsonl").read_text().splitlines()) if r["kind"] == kind]


def test_general_distillation_writes_an_encoder_and_its_loss_decreases(encoder_dir, corpus, tmp_path, capsys):
    out = tmp_path / "student"
    assert main(flags(encoder_dir, corpus, tmp_path / "cache", out, "--max-steps", "12")) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["steps"] == 12 and {"loss", "attn", "value", "hidden"} <= set(summary["eval"])
    losses = [r["loss"] for r in records(out, "train")]
    assert len(losses) == 12 and sum(losses[-3:]) < sum(losses[:3]), losses
    config = json.loads((out / "distill_general_config.json").read_text())
    assert config["teacher"] == str(encoder_dir) and config["student_layers"] == [0, 2]
    assert config["training"]["max_steps"] == 12 and config["training"]["lr"] == 3e-3
    student, _ = load_pretrained(out)  # a plain encoder directory, two layers wide as the teacher
    assert len(student.layers) == 2 and student.config.hidden_size == 32
    teacher, _ = load_pretrained(encoder_dir)
    assert not torch.equal(student.layers[1].Wqkv.weight, teacher.layers[2].Wqkv.weight)  # it trained
    emb = bertkit.load(str(out)).encode(["good music", "war and death"])
    assert emb.shape == (2, 32) and np.isfinite(emb).all()
    (tmp_path / "texts.txt").write_text("good music\nwar\n")
    assert main(["embed", str(out), "-i", str(tmp_path / "texts.txt"), "-o", str(tmp_path / "e.npy")]) == 0
    assert np.load(tmp_path / "e.npy").shape == (2, 32)


def test_a_killed_run_resumes_to_the_same_result(encoder_dir, corpus, tmp_path, capsys, caplog, monkeypatch):
    settings = ("--max-steps", "8", "--checkpoint-every", "4", "--eval-every", "4")
    whole, cut = tmp_path / "whole", tmp_path / "cut"
    assert main(flags(encoder_dir, corpus, tmp_path / "cache", whole, *settings)) == 0

    class Killed(Exception):
        pass

    def kill_at_6(trainer):
        if trainer.state.step == 6:
            raise Killed

    monkeypatch.setattr(distill_cli, "distill_general", functools.partial(distill_general, callbacks=(kill_at_6,)))
    with pytest.raises(Killed):
        main(flags(encoder_dir, corpus, tmp_path / "cache", cut, *settings))
    monkeypatch.undo()
    assert [r["step"] for r in records(cut, "train")][-1] == 6
    capsys.readouterr()
    assert main(flags(encoder_dir, corpus, tmp_path / "cache", cut, *settings)) == 2  # not empty: say --resume
    assert "--resume" in capsys.readouterr().err
    with caplog.at_level(logging.INFO, logger="bertkit"):
        assert main(flags(encoder_dir, corpus, tmp_path / "cache", cut, *settings, "--resume")) == 0
    assert re.search(r"resumed from \S+: step 4/8", caplog.text), caplog.text  # not started over
    assert json.loads(capsys.readouterr().out)["steps"] == 8
    a, b = records(whole, "train"), records(cut, "train")
    # records after the checkpoint at step 4 were dropped and written again by steps 5-8 of the resumed run
    assert [r["step"] for r in b] == [r["step"] for r in a] == list(range(1, 9))
    assert [r["loss"] for r in b] == pytest.approx([r["loss"] for r in a], rel=1e-5, abs=1e-6)
    assert [r["loss"] for r in records(cut, "eval")] == pytest.approx([r["loss"] for r in records(whole, "eval")],
                                                                      rel=1e-5, abs=1e-6)
    wa, wb = load_pretrained(whole)[0].state_dict(), load_pretrained(cut)[0].state_dict()
    for k, v in wa.items():
        torch.testing.assert_close(wb[k], v, atol=1e-5, rtol=1e-5)


def test_mode_general_recipe_and_print_config(encoder_dir, corpus, tmp_path, capsys):
    recipe = tmp_path / "general.yaml"
    recipe.write_text(f"mode: general\nteacher: {encoder_dir}\ncorpus: [{corpus}]\nstudent_layers: [1, 3]\n"
                      "alpha_attn: 1\nlr: 1.0e-3\n")
    assert main(["distill", "--recipe", str(recipe), "-o", str(tmp_path / "o"), "--print-config",
                 "--max-length", "32"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["mode"] == "general" and printed["teacher"] == str(encoder_dir)
    assert printed["corpus"] == [str(corpus)] and printed["student_layers"] == [1, 3]
    assert printed["max_length"] == 32 and printed["training"]["lr"] == 1e-3
    assert printed["training"]["epochs"] == 1.0  # general distillation's own training defaults
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("argv, message", [
    (["--corpus", "{tmp}/missing.txt"], r"corpus source '.*missing\.txt': no such file or folder"),
    (["--dataset", "bbc-news"], "dataset: setting.s. of task distillation; this run is general distillation"),
    (["--teacher", "{tmp}/other"], "general distillation has one teacher .an encoder., got 2"),
    (["mode=other"], "setting mode is 'other'; choose one of task, general"),
    (["--student-layers", "0,9"], "layer 9 is out of range"),
])
def test_bad_general_settings_are_clear_errors(encoder_dir, corpus, tmp_path, capsys, argv, message):
    argv = [a.replace("{tmp}", str(tmp_path)) for a in argv]
    out = tmp_path / "out"
    assert main(flags(encoder_dir, corpus, tmp_path / "cache", out, "--max-steps", "1", *argv)) == 2
    err = capsys.readouterr().err
    assert "bertkit distill: error:" in err and re.search(message, err), err
    assert not out.exists()


def test_general_settings_without_general_are_named(tmp_path, capsys):
    assert main(["distill", "--teacher", "t", "--dataset", "bbc-news", "--student-layers", "0", "--corpus", "c.txt",
                 "-o", str(tmp_path / "o")]) == 2
    assert "corpus: setting(s) of general (--general) distillation" in capsys.readouterr().err
