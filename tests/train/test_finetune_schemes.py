"""Fine-tuning NER in each tag scheme: detected (or declared) on the data, validated, saved in bertkit_task.json
and used by evaluate and predict; tags that break the declared scheme fail before any work."""

import json
import logging
import random

import pytest

from bertkit.data.tag_schemes import TagSchemeError, convert, from_spans
from bertkit.errors import BertkitError
from bertkit.task_model import load_task_model
from bertkit.train.finetune import finetune

WORDS = "good great love best music film game war death king river water night school city team".split()
POS = {w: ("NOUN" if i % 3 else "ADJ") for i, w in enumerate(WORDS)}

pytestmark = pytest.mark.usefixtures("one_thread")


def conll(path, scheme, n, seed):
    """Sentences with PER/LOC entities (adjacent ones too) written in ``scheme``; plain: part-of-speech tags."""
    rnd = random.Random(seed)
    blocks = []
    for _ in range(n):
        words = rnd.choices(WORDS, k=rnd.randint(3, 7))
        if scheme == "plain":
            tags = [POS[w] for w in words]
        else:
            spans, i = [], rnd.randrange(2)
            while i < len(words) - 1:
                end = min(len(words), i + rnd.randint(1, 2))
                spans.append((rnd.choice(["PER", "LOC"]), i, end))
                i = end + rnd.randrange(2)
            tags = from_spans(spans, len(words), scheme)
        blocks.append("\n".join(f"{w} {t}" for w, t in zip(words, tags, strict=True)))
    path.write_text("\n\n".join(blocks) + "\n")
    return path


def run(out, tiny_dir, train, dev, **settings):
    kw = dict(task="ner", model=str(tiny_dir), train_file=str(train), eval_file=str(dev), epochs=1, batch_size=4,
              lr=1e-3, max_length=32, progress=False, seed=0)
    return finetune(out, **{**kw, **settings})


@pytest.mark.parametrize("scheme", ["iob1", "bioes", "bilou", "plain"])
def test_scheme_is_detected_saved_and_used(tmp_path, tiny_dir, scheme, caplog):
    train, dev = conll(tmp_path / "train.conll", scheme, 12, 0), conll(tmp_path / "dev.conll", scheme, 6, 1)
    with caplog.at_level(logging.INFO, logger="bertkit"):
        result = run(tmp_path / "out", tiny_dir, train, dev)
    assert f"tag scheme: {scheme} (detected on" in caplog.text
    assert json.loads((tmp_path / "out" / "bertkit_task.json").read_text())["scheme"] == scheme
    model = load_task_model(tmp_path / "out")
    assert model.scheme == scheme
    dev_metrics = result.dev
    if scheme == "plain":
        assert {"token_accuracy", "macro_f1", "f1/NOUN", "precision/ADJ"} <= set(dev_metrics)
        assert dev_metrics["f1"] == pytest.approx(dev_metrics["token_accuracy"])
        assert model.predict([["good", "music"]])[0]["entities"] == []
    else:
        assert 0 <= dev_metrics["f1"] <= 1 and "macro_f1" not in dev_metrics
        # predict's word-level entities are the scheme's spans of its tags
        pred = model.predict([WORDS[:6]])[0]
        from bertkit.data.tag_schemes import to_spans

        assert [(e["type"], e["start"], e["end"]) for e in pred["entities"]] == \
            sorted(to_spans(pred["tags"], scheme), key=lambda s: s[1])
    assert model.evaluate(model.featurize(read(dev)), gold=read(dev)) == pytest.approx(dev_metrics)


def read(path):
    from bertkit.data.tasks import read_task_file

    return read_task_file(path, "ner")


def test_declared_scheme_is_checked_before_any_work(tmp_path, tiny_dir):
    train = conll(tmp_path / "train.conll", "iob1", 12, 0)
    dev = conll(tmp_path / "dev.conll", "bio", 6, 1)
    with pytest.raises(TagSchemeError, match=r"train\.conll, line \d+: token \d+ \('\w+'\): B-\w+ follows O; "
                                             r"in IOB1|train\.conll, line \d+: token \d+ \('\w+'\): I-"):
        run(tmp_path / "out", tiny_dir, train, dev, scheme="bio")
    assert not (tmp_path / "out").exists()
    # auto: the training data reads as IOB1, the dev file's B- after O breaks it, named in dev.conll
    with pytest.raises(TagSchemeError, match=r"dev\.conll, line \d+: token \d+"):
        run(tmp_path / "out", tiny_dir, train, dev)
    with pytest.raises(BertkitError, match="unknown tag scheme 'iob'; expected one of auto, bio, iob1"):
        run(tmp_path / "out", tiny_dir, train, dev, scheme="iob")


def test_evaluate_checks_gold_tags_against_the_model_scheme(tmp_path, tiny_dir):
    train, dev = conll(tmp_path / "train.conll", "bioes", 8, 0), conll(tmp_path / "dev.conll", "bioes", 4, 1)
    result = run(tmp_path / "out", tiny_dir, train, dev)
    (tmp_path / "bio.conll").write_text("\n".join(" ".join(x) for x in zip(
        ["good", "city", "team"], convert(["B-LOC", "E-LOC", "S-PER"], "bioes", "bio"), strict=True)) + "\n")
    # B-LOC I-LOC B-PER: I-LOC opens nothing wrong in BIOES, but an open LOC must end with E-LOC
    with pytest.raises(TagSchemeError, match=r"bio\.conll, line 1: token 3 \('team'\): I-LOC is followed by B-PER; "
                                             r"BIOES ends an entity with E-LOC"):
        result.model.evaluate(read(tmp_path / "bio.conll"))
