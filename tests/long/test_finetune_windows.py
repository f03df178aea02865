"""Fine-tuning on windows: the training examples are the windows, dev/test are scored per example, and the saved
model remembers how it reads long inputs."""

import json
import math
import random

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bertkit.data.features import first_per_owner, shuffled_batches
from bertkit.data.tasks import read_task_file
from bertkit.task_model import load_task_model
from bertkit.train.finetune import finetune
from tests.train.test_finetune import WORDS

pytestmark = pytest.mark.usefixtures("one_thread")


def long_files(tmp_path, task, n):
    rnd = random.Random(0)
    paths = []
    for name, seed in (("train", 0), ("dev", 1)):
        rnd = random.Random(seed)
        if task == "ner":
            blocks = []
            for _ in range(n):
                words = rnd.choices(WORDS, k=rnd.randint(3, 60))
                blocks.append("\n".join(f"{w} {'B-LOC' if w == 'city' else 'O'}" for w in words))
            p = tmp_path / f"{name}.conll"
            p.write_text("\n\n".join(blocks) + "\n")
        else:
            rows = [f"{' '.join(rnd.choices(WORDS, k=rnd.randint(3, 60)))},{('a', 'b')[i % 2]}" for i in range(n)]
            p = tmp_path / f"{name}.csv"
            p.write_text("text,label\n" + "\n".join(rows) + "\n")
        paths.append(p)
    return paths


@pytest.mark.parametrize("task", ["classification", "ner"])
def test_training_on_windows_end_to_end(tiny_dir, tmp_path, task):
    train, dev = long_files(tmp_path, task, 10)
    out = tmp_path / "run"
    result = finetune(out, task=task, model=str(tiny_dir), train_file=str(train), eval_file=str(dev), epochs=1,
                      batch_size=4, lr=1e-3, max_length=16, progress=False, seed=0, long_inputs="chunk", stride=3,
                      window_pooling="max")
    saved = json.loads((out / "bertkit_task.json").read_text())
    assert (saved["long_inputs"], saved["stride"], saved["window_pooling"]) == ("chunk", 3, "max")
    model = load_task_model(out)
    train_data = read_task_file(train, task=task)
    feats = model.featurize(train_data)
    assert feats.windows is not None and len(feats) > len(train_data) and feats.windows.n_windowed > 0
    assert result.state.step == math.ceil(len(feats) / 4)  # one epoch over the windows, not the examples
    dev_data = read_task_file(dev, task=task)
    assert result.dev == model.evaluate(dev_data)  # scored per example, with the saved choice
    assert result.dev != model.evaluate(dev_data, long_inputs="truncate")
    if task == "ner":  # each window carries its own tokens' labels: a tag per first piece, -100 elsewhere
        assert all(len(lab) == len(ids) for lab, ids in zip(feats.labels, feats.ids, strict=True))


def test_bad_long_input_settings_fail_before_training(tiny_dir, tmp_path):
    train, dev = long_files(tmp_path, "classification", 4)
    kw = dict(task="classification", model=str(tiny_dir), train_file=str(train), eval_file=str(dev), max_length=16,
              progress=False)
    with pytest.raises(ValueError, match="long_inputs must be one of truncate, chunk"):
        finetune(tmp_path / "a", long_inputs="windows", **kw)
    with pytest.raises(ValueError, match="--stride 14 must be smaller than the window"):
        finetune(tmp_path / "b", long_inputs="chunk", stride=14, **kw)
    with pytest.raises(ValueError, match=r"train_windows=2: .*long_inputs='truncate'"):
        finetune(tmp_path / "c", train_windows=2, **kw)
    with pytest.raises(ValueError, match="train_windows=0"):
        finetune(tmp_path / "d", long_inputs="chunk", train_windows=0, **kw)
    assert not any((tmp_path / d).exists() for d in "cd")  # refused before any output was written


@given(st.lists(st.integers(1, 6), min_size=1, max_size=12), st.integers(1, 4), st.integers(0, 2**16))
@settings(max_examples=60, deadline=None)
def test_first_per_owner_draws_k_windows_of_each_example(counts, k, seed):
    owner = np.repeat(np.arange(len(counts)), counts)
    order = np.random.default_rng(seed).permutation(len(owner))
    kept = first_per_owner(order, owner, k)
    assert list(kept) == [i for i in order if i in set(kept)]  # order kept
    for o, n in enumerate(counts):  # each example: min(k, its windows), the first ones of it in the order
        assert [i for i in kept if owner[i] == o] == [i for i in order if owner[i] == o][:min(k, n)]


def test_train_windows_sample_each_epoch_afresh_and_resume_alike(tiny_dir, tmp_path):
    train, dev = long_files(tmp_path, "classification", 10)
    kw = dict(task="classification", model=str(tiny_dir), train_file=str(train), eval_file=str(dev), epochs=2,
              batch_size=4, lr=1e-3, max_length=16, progress=False, seed=0, long_inputs="chunk", stride=3)
    result = finetune(tmp_path / "run", train_windows=1, **kw)
    assert result.state.step == 2 * math.ceil(10 / 4)  # an epoch is one window of each of the 10 examples
    feats = load_task_model(tmp_path / "run").featurize(read_task_file(train, task="classification"))
    assert len(feats) > 10
    epochs = [[list(b.indices) for b in shuffled_batches(feats, 4, 0, e, windows_per_example=1)] for e in (0, 1)]
    again = [list(b.indices) for b in shuffled_batches(feats, 4, 0, 0, windows_per_example=1)]
    assert epochs[0] == again  # fixed by (seed, epoch): a resumed run draws the same windows
    assert epochs[0] != epochs[1]  # and another epoch other windows
    for e in epochs:
        rows = [i for b in e for i in b]
        assert sorted(feats.windows.owner[rows]) == list(range(10))  # one window of every example
    config = json.loads((tmp_path / "run" / "finetune_config.json").read_text())
    assert config["train_windows"] == 1
