"""A multi-label TaskModel's thresholds: tuned on dev, saved in bertkit_task.json and read back, used by predict
and evaluate unless threshold= says otherwise; finetune tunes them and reports fixed vs tuned F1."""

import json

import numpy as np
import pytest

from bertkit import metrics as M
from bertkit.data.tasks import TaskData
from bertkit.errors import CheckpointError
from bertkit.task_model import TaskModel
from bertkit.thresholds import tune_thresholds
from bertkit.train.finetune import finetune
from tests.predictions.models import TEXTS, saved
from tests.train.test_finetune import write_task_file

pytestmark = pytest.mark.usefixtures("one_thread")
LABELS = ("a", "b", "c")
DEV_LABELS = [["a"], [], ["b", "c"], ["a", "c"], ["c"], ["b"]]


@pytest.fixture
def model(tmp_path):
    return saved(tmp_path / "m", "multilabel", LABELS, seed=0)


def test_tuned_saved_reloaded_and_used(model, tmp_path):
    dev = TaskData("multilabel", TEXTS, None, DEV_LABELS, None, "dev")
    probs = model.outputs(dev)
    truth = np.array([[n in row for n in LABELS] for row in DEV_LABELS], dtype=int)
    tuned = model.tune_thresholds(dev)
    assert list(tuned.values()) == tune_thresholds(probs, truth).tolist()
    assert tuned != {n: 0.5 for n in LABELS}  # a random head on 6 examples: at least one cut moves

    model.save_pretrained(tmp_path / "saved")
    meta = json.loads((tmp_path / "saved" / "bertkit_task.json").read_text())
    assert meta["thresholds"] == tuned
    back = TaskModel.from_pretrained(tmp_path / "saved")
    assert back.thresholds == tuned

    cuts = np.array([tuned[n] for n in LABELS])
    for p, row in zip(back.predict(TEXTS), probs, strict=True):  # default: the tuned ones
        assert p["labels"] == [n for n, v, c in zip(LABELS, row, cuts, strict=True) if v >= c]
    for p, row in zip(back.predict(TEXTS, threshold="fixed"), probs, strict=True):
        assert p["labels"] == [n for n, v in zip(LABELS, row, strict=True) if v >= 0.5]
    assert all(p["labels"] == list(LABELS) for p in back.predict(TEXTS, threshold=0.0))

    for choice, cut in (("tuned", cuts), ("fixed", np.full(3, 0.5)), (0.3, np.full(3, 0.3))):
        pred = (probs >= cut).astype(int)
        got = back.evaluate(dev, threshold=choice)
        assert got["micro_f1"] == pytest.approx(M.f1(truth, pred, "micro"))
        assert got["per_label"] == M.per_label_scores(truth, pred, LABELS)
    assert back.evaluate(dev)["macro_f1"] >= back.evaluate(dev, threshold="fixed")["macro_f1"] - 1e-12


def test_bad_saved_thresholds_and_wrong_tasks(model, tmp_path):
    meta_file = model.directory / "bertkit_task.json"
    meta = json.loads(meta_file.read_text())
    meta_file.write_text(json.dumps({**meta, "thresholds": {"a": 0.2}}))
    with pytest.raises(CheckpointError, match=r"bertkit_task.json: 'thresholds' has labels \['a'\]"):
        TaskModel.from_pretrained(model.directory)
    clf = saved(tmp_path / "clf", "classification", LABELS, seed=0)
    with pytest.raises(ValueError, match="multilabel models, this one does classification"):
        clf.tune_thresholds(TaskData("classification", TEXTS, None, ["a"] * 6, None, "dev"))


@pytest.mark.parametrize("mode", ["tuned", "fixed"])
def test_finetune_tunes_and_reports(tmp_path, tiny_dir, mode):
    train = write_task_file(tmp_path / "train.csv", "multilabel", 12, seed=0)
    dev = write_task_file(tmp_path / "dev.csv", "multilabel", 8, seed=1)
    test = write_task_file(tmp_path / "test.csv", "multilabel", 8, seed=2)
    out = tmp_path / "out"
    result = finetune(out, task="multilabel", model=str(tiny_dir), train_file=str(train), eval_file=str(dev),
                      test_file=str(test), epochs=1, batch_size=4, lr=1e-3, max_length=32, progress=False,
                      seed=0, thresholds=mode)
    meta = json.loads((out / "bertkit_task.json").read_text())
    results = json.loads((out / "results.json").read_text())
    assert results["thresholds"] == result.thresholds and results["thresholds"]["used"] == mode
    if mode == "fixed":
        assert "thresholds" not in meta and result.model.thresholds is None
        return
    assert set(meta["thresholds"]) == set(LABELS) and meta["thresholds"] == result.model.thresholds
    report = results["thresholds"]
    for split in ("dev", "test"):
        assert set(report[split]) == {"fixed", "tuned"}
        assert set(report[split]["tuned"]) == {"micro_f1", "macro_f1"}
    # each label's dev F1 is at least the fixed cut's, so their mean is too
    assert report["dev"]["tuned"]["macro_f1"] >= report["dev"]["fixed"]["macro_f1"] - 1e-12
    # the reported dev/test metrics are the saved model's, thresholds and all
    assert results["test"]["micro_f1"] == report["test"]["tuned"]["micro_f1"]
    assert TaskModel.from_pretrained(out).thresholds == meta["thresholds"]


def test_finetune_rejects_an_unknown_mode(tmp_path, tiny_dir):
    with pytest.raises(ValueError, match="thresholds='best': must be one of tuned, fixed"):
        finetune(tmp_path / "out", task="multilabel", model=str(tiny_dir), train_file="x.csv", thresholds="best")
    assert not (tmp_path / "out").exists()


def test_compressed_and_low_rank_copies_keep_the_thresholds(model, tmp_path):
    """A multi-label model's tuned thresholds travel with it into compressed and low-rank checkpoints."""
    from bertkit.compress.lowrank import factorize_model, save_lowrank
    from bertkit.compress.quantize import quantize_weights, save_compressed
    from bertkit.loader import load_task_model

    model.thresholds = {"a": 0.25, "b": 0.5, "c": 0.75}
    quantize_weights(model, bits=8, group_size=16)
    save_compressed(model, tmp_path / "q")
    assert load_task_model(tmp_path / "q").thresholds == model.thresholds
    low = saved(tmp_path / "m2", "multilabel", LABELS, seed=0)
    low.thresholds = dict(model.thresholds)
    factorize_model(low, layers=("mlp_in",), energy=0.9)
    save_lowrank(low, tmp_path / "lr")
    back = load_task_model(tmp_path / "lr")
    assert back.thresholds == model.thresholds
    cuts = np.array([0.25, 0.5, 0.75])
    for p in back.predict(TEXTS):
        assert p["labels"] == [n for n, c in zip(LABELS, cuts, strict=True) if p["probabilities"][n] >= c]
