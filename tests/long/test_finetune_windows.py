"""Fine-tuning on windows: the training examples are the windows, dev/test are scored per example, and the saved
model remembers how it reads long inputs."""

import json
import math
import random

import pytest

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
