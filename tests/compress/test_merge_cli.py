"""``bertkit merge`` end to end on tiny BERTs: the saved encoder is ``merge(...)``'s, the multi-head directory is
``merge_task_models(...)``'s, --overwrite, and the errors (unknown method, mismatched models, bad arguments)."""

from __future__ import annotations

import json
import re

import pytest
import torch

from bertkit.cli.main import main
from bertkit.compress.merge import MultiHeadModel, merge, merge_task_models
from bertkit.data.tokenizer import Tokenizer
from bertkit.model.directory import load_encoder
from bertkit.task_model import TaskModel, build_head
from tests.compress.family_dirs import checkpoint

pytestmark = pytest.mark.usefixtures("one_thread")
TEXTS = ["A man is playing a guitar.", "hi", "Stocks fell sharply after the bank raised rates."]


@torch.no_grad()
def finetuned_task_model(base_dir, directory, labels, seed):
    """A stand-in for a task model fine-tuned from ``base_dir``: every encoder weight nudged by seeded noise."""
    encoder, _, _ = load_encoder(base_dir)
    g = torch.Generator().manual_seed(seed)
    for p in encoder.parameters():
        p.add_(torch.randn(p.shape, generator=g) * 0.02)
    torch.manual_seed(seed)
    head = build_head(encoder, "classification", len(labels)).eval()
    TaskModel(head, Tokenizer.from_dir(base_dir), "classification", list(labels), 64).save_pretrained(directory)
    return directory


@pytest.fixture(scope="module")
def dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("merge")
    base = checkpoint("bert", root / "base")
    a = finetuned_task_model(base, root / "a", ("neg", "pos"), seed=1)
    b = finetuned_task_model(base, root / "b", ("sport", "politics", "tech"), seed=2)
    return base, a, b


def encoder_state(directory):
    encoder, _, _ = load_encoder(directory)
    return encoder.state_dict()


def test_merged_encoder_is_merges(dirs, tmp_path, capsys):
    base, a, b = dirs
    out = tmp_path / "dare"
    assert main(["merge", str(base), str(a), str(b), "--method", "dare", "--drop-rate", "0.5", "--weights", "0.7,0.4",
                 "--scaling", "0.8", "--seed", "3", "-o", str(out)]) == 0
    assert "merged 2 models" in capsys.readouterr().out
    want = merge(str(base), [str(a), str(b)], [0.7, 0.4], method="dare", drop_rate=0.5, scaling=0.8, seed=3)
    got = encoder_state(out)
    assert set(got) == set(want.state_dict())
    assert all(torch.equal(got[k], v) for k, v in want.state_dict().items())
    # not simply one of the inputs: the merge changed every float tensor of the base
    assert not torch.equal(got["layers.0.Wqkv.weight"], encoder_state(base)["layers.0.Wqkv.weight"])
    assert Tokenizer.from_dir(out).fingerprint() == Tokenizer.from_dir(base).fingerprint()
    settings = json.loads((out / "merge_config.json").read_text())
    assert settings["method"] == "dare" and settings["weights"] == [0.7, 0.4] and settings["drop_rate"] == 0.5
    assert not list(tmp_path.glob(".*.tmp"))  # the build directory is gone

    # task arithmetic (spelled as in the brief) with the default weights: the mean of the two
    mean = tmp_path / "mean"
    assert main(["merge", str(base), str(a), str(b), "--method", "task-arithmetic", "-o", str(mean)]) == 0
    got, sa, sb = encoder_state(mean), encoder_state(a), encoder_state(b)
    for k, v in got.items():
        torch.testing.assert_close(v.double(), (sa[k].double() + sb[k].double()) / 2, atol=1e-7, rtol=0)


def test_multi_head_is_merge_task_models(dirs, tmp_path, capsys):
    base, a, b = dirs
    out = tmp_path / "multi"
    assert main(["merge", str(base), "--multi-head", f"sent={a}", f"topic={b}", "--method", "dare",
                 "--drop-rate", "0.3", "--device", "cpu", "-o", str(out)]) == 0
    loaded = MultiHeadModel.load(out, device="cpu")
    want = merge_task_models(str(base), {"sent": TaskModel.from_pretrained(a, device="cpu"),
                                         "topic": TaskModel.from_pretrained(b, device="cpu")},
                             method="dare", drop_rate=0.3, device="cpu")
    assert loaded.tasks == ["sent", "topic"]
    assert all(torch.equal(v, want.encoder.state_dict()[k]) for k, v in loaded.encoder.state_dict().items())
    for task in ("sent", "topic"):
        assert loaded.predict(TEXTS, task=task) == want.predict(TEXTS, task=task)
    assert set(loaded.predict(TEXTS, task="topic")[0]["probabilities"]) == {"sport", "politics", "tech"}

    # a non-empty --output needs --overwrite; then a plain merge replaces the multi-head files it would leave
    capsys.readouterr()
    assert main(["merge", str(base), str(a), "-o", str(out)]) == 2
    assert "not empty" in capsys.readouterr().err and (out / "multihead.json").is_file()
    assert main(["merge", str(base), str(a), "-o", str(out), "--overwrite"]) == 0
    assert not (out / "multihead.json").exists() and not (out / "heads").exists()
    assert all(torch.equal(v, encoder_state(a)[k]) for k, v in encoder_state(out).items())  # one model: itself


@pytest.mark.parametrize("extra, message", [
    (["--weights", "1,2,3"], "--weights has 3 values for 2 models"),
    (["--drop-rate", "1", "--method", "dare"], r"--drop-rate must be in \[0, 1\)"),
    (["--multi-head", "x=DIR"], "either as MODEL"),
])
def test_bad_arguments_fail_before_any_work(dirs, tmp_path, capsys, extra, message):
    base, a, b = dirs
    out = tmp_path / "out"
    assert main(["merge", str(base), str(a), str(b), "-o", str(out), *extra]) == 2
    assert re.search(message, capsys.readouterr().err) and not out.exists()


def test_unknown_method_and_no_models(dirs, tmp_path, capsys):
    base, a, _ = dirs
    with pytest.raises(SystemExit) as e:
        main(["merge", str(base), str(a), "--method", "ties", "-o", str(tmp_path / "o")])
    assert e.value.code == 2 and "invalid choice: 'ties'" in capsys.readouterr().err
    assert main(["merge", str(base), "-o", str(tmp_path / "o")]) == 2
    assert "nothing to merge" in capsys.readouterr().err
    assert main(["merge", str(base), "--multi-head", "no-equals-sign", "-o", str(tmp_path / "o")]) == 2
    assert "expected NAME=DIR" in capsys.readouterr().err


def test_mismatched_models_name_both_directories(dirs, tmp_path, capsys):
    base, a, _ = dirs
    other = checkpoint("bert", tmp_path / "other", num_hidden_layers=1)
    out = tmp_path / "out"
    assert main(["merge", str(base), str(a), str(other), "-o", str(out)]) == 2
    err = capsys.readouterr().err
    assert f"cannot merge {other} onto base {base}" in err and "layers.1." in err and not out.exists()
    assert not list(tmp_path.glob(".out.*"))
