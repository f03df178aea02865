"""Ensemble: probabilities are the (weighted) mean of the members' predict outputs, labels are aligned by name,
members of another label set / task are refused naming both, multi-label decides with the members' mean
thresholds, regression averages scores; evaluate scores the averaged outputs."""

import numpy as np
import pytest

from bertkit import Ensemble
from bertkit import metrics as M
from bertkit.data.tasks import TaskData
from tests.predictions.models import TEXTS, permuted, saved

pytestmark = pytest.mark.usefixtures("one_thread")
LABELS = ("neg", "neu", "pos")


@pytest.fixture(scope="module")
def members(tmp_path_factory):
    """Two classifiers of two families (BERT, RoBERTa) with the same labels."""
    root = tmp_path_factory.mktemp("ens")
    return [saved(root / "a", "classification", LABELS, seed=0),
            saved(root / "b", "classification", LABELS, seed=1, variant="roberta")]


def probs(preds, labels):
    return np.array([[p["probabilities"][n] for n in labels] for p in preds])


def test_probabilities_are_the_mean_of_the_members(members):
    ens = Ensemble(members)
    each = [probs(m.predict(TEXTS), LABELS) for m in members]
    assert not np.allclose(each[0], each[1], atol=1e-3)  # members that disagree: the mean means something
    preds = ens.predict(TEXTS)
    got = probs(preds, LABELS)
    np.testing.assert_allclose(got, (each[0] + each[1]) / 2, atol=2e-6)  # the members' outputs are rounded to 1e-6
    assert [p["label"] for p in preds] == [LABELS[i] for i in got.argmax(1)]
    weighted = probs(Ensemble(members, weights=[1, 3]).predict(TEXTS), LABELS)
    np.testing.assert_allclose(weighted, 0.25 * each[0] + 0.75 * each[1], atol=2e-6)
    assert ens.predict([]) == []


def test_from_pretrained_reads_directories(members):
    ens = Ensemble.from_pretrained([m.directory for m in members])
    assert len(ens) == 2 and ens.task == "classification" and ens.labels == list(LABELS)
    np.testing.assert_allclose(probs(ens.predict(TEXTS), LABELS), probs(Ensemble(members).predict(TEXTS), LABELS))
    with pytest.raises(TypeError, match="list of directories"):
        Ensemble.from_pretrained(str(members[0].directory))


def test_labels_in_another_order_are_aligned(members, tmp_path):
    order = ["pos", "neg", "neu"]
    shuffled = permuted(saved(tmp_path / "b2", "classification", LABELS, seed=1, variant="roberta"), order,
                        tmp_path / "b2")
    assert shuffled.labels == order
    # the same model, its columns listed in another order: the same probability for each name
    np.testing.assert_allclose(probs(shuffled.predict(TEXTS), LABELS), probs(members[1].predict(TEXTS), LABELS),
                               atol=2e-6)
    ens = Ensemble([members[0], shuffled])
    assert ens.labels == list(LABELS)
    np.testing.assert_allclose(probs(ens.predict(TEXTS), LABELS), probs(Ensemble(members).predict(TEXTS), LABELS),
                               atol=2e-6)


def test_different_label_sets_are_refused_naming_both(members, tmp_path):
    other = saved(tmp_path / "other", "classification", ("neg", "other", "pos"), seed=2)
    with pytest.raises(ValueError, match="different label sets") as e:
        Ensemble([members[0], other])
    msg = str(e.value)
    assert "{neg, neu, pos}" in msg and "{neg, other, pos}" in msg
    assert str(members[0].directory) in msg and str(other.directory) in msg


def test_other_tasks_and_bad_weights_are_refused(members, tmp_path):
    multi = saved(tmp_path / "m", "multilabel", LABELS, seed=0)
    with pytest.raises(ValueError, match=r"different tasks: .* does classification, .* does multilabel"):
        Ensemble([members[0], multi])
    with pytest.raises(ValueError, match="3 weights for 2"):
        Ensemble(members, weights=[1, 2, 3])
    with pytest.raises(ValueError, match="non-negative"):
        Ensemble(members, weights=[1, -1])
    with pytest.raises(ValueError, match="at least one"):
        Ensemble([])


def test_evaluate_scores_the_mean(members):
    gold = ["neg", "pos", "neu", "pos", "neg", "neu"]
    data = TaskData("classification", TEXTS, None, gold, None, "dev")
    ens = Ensemble(members)
    out = ens.evaluate(data)
    mean = ens.outputs(data)
    truth = [LABELS.index(g) for g in gold]
    pred = mean.argmax(1)
    assert out["accuracy"] == pytest.approx(M.accuracy(truth, pred))
    assert out["macro_f1"] == pytest.approx(M.f1(truth, pred, "macro"))
    assert out["loss"] == pytest.approx(-np.mean(np.log(mean[np.arange(len(gold)), truth])))
    assert set(out["per_label"]) == set(LABELS)
    assert out["per_label"]["neu"]["support"] == 2
    bad = TaskData("classification", TEXTS[:1], None, ["happy"], None, "dev.csv")
    with pytest.raises(ValueError, match=r"dev.csv: 1 labels not among the ensemble's labels .*'happy'"):
        ens.evaluate(bad)


def test_multilabel_uses_the_members_mean_thresholds(tmp_path):
    a = saved(tmp_path / "a", "multilabel", LABELS, seed=0)
    b = saved(tmp_path / "b", "multilabel", LABELS, seed=1)
    a.thresholds = {"neg": 0.2, "neu": 0.4, "pos": 0.6}  # as tune_thresholds leaves them
    ens = Ensemble([a, b])
    cuts, words = ens.decision_thresholds()
    np.testing.assert_allclose(cuts, [(0.2 + 0.5) / 2, (0.4 + 0.5) / 2, (0.6 + 0.5) / 2])
    assert "mean of the members' thresholds" in words
    mean = ens.outputs(TaskData("multilabel", TEXTS, None, [], None, "in"))
    for p, row in zip(ens.predict(TEXTS), mean, strict=True):
        assert p["labels"] == [n for n, v, c in zip(LABELS, row, cuts, strict=True) if v >= c]
    assert all(p["labels"] == list(LABELS) for p in ens.predict(TEXTS, threshold=0.0))
    np.testing.assert_allclose(ens.decision_thresholds("fixed")[0], [0.5] * 3)
    with pytest.raises(ValueError, match="no tuned thresholds"):
        ens.decision_thresholds("tuned")  # b has none
    # tuned on the ensemble's own averaged probabilities: those win
    dev = TaskData("multilabel", TEXTS, None, [["neg"], [], ["pos", "neu"], ["neg"], ["pos"], []], None, "dev")
    tuned = ens.tune_thresholds(dev)
    assert ens.decision_thresholds()[0].tolist() == [tuned[n] for n in LABELS]
    assert ens.evaluate(dev)["macro_f1"] >= ens.evaluate(dev, threshold="fixed")["macro_f1"] - 1e-12


def test_regression_averages_scores(tmp_path):
    a = saved(tmp_path / "a", "regression", ("score",), seed=0)
    b = saved(tmp_path / "b", "regression", ("score",), seed=1)
    assert a.labels == [] and a.task == "regression"
    each = [np.array([p["score"] for p in m.predict(TEXTS)]) for m in (a, b)]
    got = np.array([p["score"] for p in Ensemble([a, b]).predict(TEXTS)])
    np.testing.assert_allclose(got, (each[0] + each[1]) / 2, rtol=1e-6, atol=1e-6)
    data = TaskData("regression", TEXTS, None, [0.0, 1.0, 2.0, 3.0, 4.0, 5.0], None, "dev")
    out = Ensemble([a, b]).evaluate(data)
    assert out["mse"] == pytest.approx(np.mean((got - np.arange(6)) ** 2), rel=1e-5)
    assert "per_label" not in out


TAGS = ("O", "B-PER", "I-PER", "B-LOC")
SENTENCES = [t.split() for t in TEXTS]


def test_ner_averages_word_probabilities(tmp_path):
    """Members of two families (their tokenizers split words differently) meet at the words: each word's tag is
    the argmax of the mean of the members' tag probabilities at its first sub-word; entities follow the tags."""
    a = saved(tmp_path / "a", "ner", TAGS, seed=0)
    b = permuted(saved(tmp_path / "b", "ner", TAGS, seed=1, variant="roberta"), ["B-LOC", "O", "I-PER", "B-PER"],
                 tmp_path / "b")
    data = TaskData("ner", [], None, [["O"] * len(w) for w in SENTENCES], SENTENCES, "in")
    for m in (a, b):  # each member's word probabilities give its own predict()'s tags
        tags = [[m.labels[i] for i in p.argmax(1)] for p in m.word_outputs(data)]
        assert tags == [p["tags"] for p in m.predict(SENTENCES)]
    col = [b.label2id[t] for t in TAGS]
    mean = [(pa + pb[:, col]) / 2 for pa, pb in zip(a.word_outputs(data), b.word_outputs(data), strict=True)]
    ens = Ensemble([a, b])
    preds = ens.predict([" ".join(w) for w in SENTENCES])
    assert [p["words"] for p in preds] == SENTENCES
    assert [p["tags"] for p in preds] == [[TAGS[i] for i in m.argmax(1)] for m in mean]
    assert [p["entities"] for p in preds] == [p["entities"] for p in
                                              Ensemble([a, b]).predict(SENTENCES)]  # words or strings alike
    assert Ensemble([a]).predict(SENTENCES) == a.predict(SENTENCES)  # one member: the model itself

    gold = [["B-PER"] + ["O"] * (len(w) - 1) for w in SENTENCES]
    scored = ens.evaluate(TaskData("ner", [], None, gold, SENTENCES, "dev"))
    pred_tags = [p["tags"] for p in preds]
    assert scored["f1"] == pytest.approx(M.entity_scores(gold, pred_tags)["f1"])
    flat = np.concatenate(mean)
    truth = [TAGS.index(t) for s in gold for t in s]
    assert scored["loss"] == pytest.approx(-np.mean(np.log(flat[np.arange(len(truth)), truth])))
    with pytest.raises(ValueError, match="B-ORG"):
        ens.evaluate(TaskData("ner", [], None, [["B-ORG"]], [["hi"]], "dev.conll"))
