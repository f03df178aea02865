"""The training engine on tiny models: schedule, accumulation, clipping, determinism, checkpoints, resume,
stopping rules, metrics file and curve."""

import itertools
import json
import math
from dataclasses import dataclass

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from bertkit.data.features import Features, make_batch, shuffled_batches
from bertkit.errors import CheckpointError
from bertkit.model.bert import BertModel
from bertkit.model.config import EncoderConfig
from bertkit.model.heads import SequenceClassifier
from bertkit.train.engine import TrainConfig, Trainer, parse_duration
from bertkit.train.optim import lr_factor

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


pytestmark = pytest.mark.usefixtures("one_thread")


# ---- toy regression: a linear model on hand-built batches ------------------------------------------------


@dataclass
class XY:
    x: Tensor
    y: Tensor

    @property
    def num_tokens(self) -> int:
        return len(self.y)

    @property
    def num_units(self) -> int:
        return len(self.y)

    def to(self, device: torch.device) -> "XY":
        return XY(self.x.to(device), self.y.to(device))


def toy_batches(n_batches=4, size=4, scale=10.0, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [XY(torch.randn(size, 3, generator=g), scale * torch.randn(size, generator=g)) for _ in range(n_batches)]


def toy_loss(model, b):
    return F.mse_loss(model(b.x).squeeze(-1), b.y)


def toy_model(seed=0):
    torch.manual_seed(seed)
    return nn.Linear(3, 1)


def toy_trainer(out, model=None, batches=None, evaluate=None, on_best=None, callbacks=(), **settings):
    kw = dict(max_steps=4, batch_size=4, lr=0.1, warmup_ratio=0.0, progress=False, device="cpu", log_every=1)
    cfg = TrainConfig(**{**kw, **settings})
    data = toy_batches() if batches is None else batches
    return Trainer(model or toy_model(), cfg, lambda epoch: data, toy_loss, out, evaluate=evaluate,
                   on_best=on_best, callbacks=callbacks)


# ---- tiny BERT classifier on hand-built features --------------------------------------------------------


def tiny_classifier(seed=0, dropout=0.0, hidden=16):
    torch.manual_seed(seed)
    cfg = EncoderConfig(vocab_size=100, hidden_size=hidden, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=32, max_position_embeddings=32, hidden_dropout_prob=dropout,
                        attention_probs_dropout_prob=dropout)
    return SequenceClassifier(BertModel(cfg), num_labels=3)


def tiny_features(n=20, seed=0):
    rng = np.random.default_rng(seed)
    ids = [[1, *rng.integers(5, 100, size=int(rng.integers(2, 9))).tolist(), 2] for _ in range(n)]
    labels = rng.integers(0, 3, size=n).tolist()
    return Features(ids, [[0] * len(x) for x in ids], labels, None, 0)


def classifier_loss(model, b):
    return model.loss(model(b.input_ids, b.packing, b.token_type_ids), b.labels)


def bert_trainer(out, model, feats, callbacks=(), evaluate=None, **settings):
    kw = dict(batch_size=4, lr=1e-3, warmup_ratio=0.2, progress=False, device="cpu", log_every=1)
    cfg = TrainConfig(**{**kw, **settings})
    return Trainer(model, cfg, lambda epoch: shuffled_batches(feats, cfg.batch_size, cfg.seed, epoch),
                   classifier_loss, out, evaluate=evaluate, callbacks=callbacks)


def records(out, kind):
    lines = (out / "metrics.jsonl").read_text().splitlines()
    return [r for r in map(json.loads, lines) if r["kind"] == kind]


def spy_on_step(trainer):
    """Record the gradients the optimizer sees at each step (before it applies them)."""
    seen = []
    step = trainer.optimizer.step

    def wrapped(*args, **kwargs):
        seen.append([p.grad.detach().clone() for g in trainer.optimizer.param_groups for p in g["params"]])
        return step(*args, **kwargs)

    trainer.optimizer.step = wrapped
    return seen


# ---- tests ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("schedule", ["linear", "cosine"])
def test_lr_follows_warmup_then_schedule(tmp_path, schedule):
    """The lr of every group at each step is base * lr_factor(step), warmup first, then the decay."""
    seen = []
    t = toy_trainer(tmp_path, max_steps=10, warmup_ratio=0.2, schedule=schedule,
                    callbacks=[lambda tr: seen.append([g["lr"] for g in tr.optimizer.param_groups])])
    t.fit()
    assert t.warmup_steps == 2 and len(seen) == 10
    for step, lrs in enumerate(seen):
        assert lrs == pytest.approx([0.1 * lr_factor(step, 2, 10, schedule)] * len(lrs), rel=1e-12)
    # independent of lr_factor: warmup ramps up, step 4 (2 of 8 decay steps in) is 0.75 / (1 + cos(pi/4)) / 2
    assert [s[0] for s in seen[:3]] == pytest.approx([0.05, 0.1, 0.1])
    expect = 0.75 if schedule == "linear" else 0.5 * (1 + math.cos(math.pi / 4))
    assert seen[4][0] == pytest.approx(0.1 * expect)
    assert all(a[0] > b[0] for a, b in itertools.pairwise(seen[2:]))  # strictly decreasing after warmup


def test_total_steps_from_epochs_and_accumulation(tmp_path):
    """5 micro-batches with accumulation 2 are 3 optimizer steps per epoch (the last one a single batch)."""
    t = toy_trainer(tmp_path, batches=toy_batches(n_batches=5), max_steps=None, epochs=2, grad_accum=2)
    assert t.steps_per_epoch == 3 and t.total_steps == 6
    state = t.fit()
    assert state.step == 6 and state.epoch == 2 and state.micro == 0 and state.stopped == "done"


@pytest.mark.parametrize("split", [(4, 4), (5, 3)])
def test_gradient_accumulation_matches_one_big_batch(tmp_path, split):
    """Micro-batches of 4+4 (or 5+3) with grad_accum=2 give the gradients and weights of one batch of 8."""
    feats = tiny_features(n=8)
    big = [make_batch(feats, range(8))]
    a, b = split
    small = [make_batch(feats, range(a)), make_batch(feats, range(a, a + b))]
    results = []
    for name, batches, accum in (("one", big, 1), ("accum", small, 2)):
        model = tiny_classifier(seed=0)
        cfg = TrainConfig(max_steps=3, grad_accum=accum, lr=1e-3, warmup_ratio=0.0, max_grad_norm=None,
                          progress=False, device="cpu")
        t = Trainer(model, cfg, lambda epoch, bs=batches: bs, classifier_loss, tmp_path / name)
        grads = spy_on_step(t)
        t.fit()
        results.append((grads, [p.detach().clone() for p in model.parameters()]))
    (g1, p1), (g2, p2) = results
    assert len(g1) == len(g2) == 3
    for step1, step2 in zip(g1, g2, strict=True):
        for x, y in zip(step1, step2, strict=True):
            torch.testing.assert_close(y, x, rtol=1e-5, atol=1e-7)
    for x, y in zip(p1, p2, strict=True):
        torch.testing.assert_close(y, x, rtol=0, atol=1e-6)
    assert any(not torch.equal(x, y) for x, y in zip(p1, tiny_classifier(seed=0).parameters(), strict=True))


def test_gradient_clipping_bounds_the_norm(tmp_path):
    """With max_grad_norm the optimizer never sees a larger total gradient norm; without it, it does."""
    norms = {}
    for name, clip in (("clipped", 0.01), ("free", None)):
        t = toy_trainer(tmp_path / name, max_grad_norm=clip)
        grads = spy_on_step(t)
        t.fit()
        norms[name] = [float(torch.linalg.vector_norm(torch.stack([g.norm() for g in step]))) for step in grads]
    assert len(norms["clipped"]) == 4
    assert max(norms["clipped"]) <= 0.01 * (1 + 1e-5)
    assert min(norms["free"]) > 0.1  # the clip really had something to cut
    assert norms["clipped"] == pytest.approx([0.01] * 4, rel=1e-5)


def test_same_seed_same_losses_other_seed_differs(tmp_path):
    """With dropout on, two runs with one seed log identical losses, whatever the RNG state before; another
    seed gives other losses."""
    feats = tiny_features()
    losses = {}
    for name, seed in (("a", 1), ("b", 1), ("c", 2)):
        torch.manual_seed(1000 + len(losses))  # disturb the global RNG: fit() must seed it itself
        torch.rand(10)
        t = bert_trainer(tmp_path / name, tiny_classifier(seed=0, dropout=0.1), feats, max_steps=4, seed=seed)
        t.fit()
        losses[name] = [(r["step"], r["loss"]) for r in records(tmp_path / name, "train")]
    assert [s for s, _ in losses["a"]] == [1, 2, 3, 4]
    assert losses["a"] == losses["b"]
    assert [x for _, x in losses["a"]] != [x for _, x in losses["c"]]


def test_dropout_seed_alone_changes_losses(tmp_path):
    """Same data order (fixed batches), different seed: the losses differ only through dropout draws."""
    feats = tiny_features(n=8)
    batches = [make_batch(feats, range(4)), make_batch(feats, range(4, 8))]
    losses = []
    for seed in (1, 1, 2):
        cfg = TrainConfig(max_steps=2, lr=1e-3, warmup_ratio=0.0, progress=False, device="cpu", log_every=1,
                          seed=seed)
        out = tmp_path / str(len(losses))
        Trainer(tiny_classifier(seed=0, dropout=0.1), cfg, lambda epoch: batches, classifier_loss, out).fit()
        losses.append([r["loss"] for r in records(out, "train")])
    assert losses[0] == losses[1] and losses[0] != losses[2]


def test_checkpoint_rotation_and_no_temp_files(tmp_path):
    """Checkpoints are checkpoints/step-*.pt; only the newest keep_checkpoints stay; no temp file is left."""
    t = toy_trainer(tmp_path, max_steps=5, checkpoint_every=1, keep_checkpoints=2)
    t.fit()
    names = sorted(p.name for p in (tmp_path / "checkpoints").iterdir())
    assert names == ["step-0000004.pt", "step-0000005.pt"]
    leftovers = [p.name for p in tmp_path.rglob("*") if p.name.startswith(".") or p.name.endswith(".tmp")]
    assert leftovers == []
    ckpt = torch.load(tmp_path / "checkpoints" / names[-1], weights_only=True)
    assert ckpt["step"] == 5 and ckpt["state"]["step"] == 5
    torch.testing.assert_close(ckpt["model"]["weight"], t.model.weight.detach())


@pytest.mark.parametrize("damage", ["truncate", "garble"])
def test_corrupt_newest_checkpoint_is_refused_by_name(tmp_path, damage):
    """A cut-short or garbled newest checkpoint makes resume fail with a CheckpointError naming the file."""
    toy_trainer(tmp_path, max_steps=4, checkpoint_every=2).fit()
    newest = tmp_path / "checkpoints" / "step-0000004.pt"
    data = newest.read_bytes()
    newest.write_bytes(data[: len(data) // 2] if damage == "truncate" else bytes(range(256)) * 8)
    with pytest.raises(CheckpointError) as e:
        toy_trainer(tmp_path, max_steps=4, checkpoint_every=2).fit(resume=True)
    assert str(newest) in str(e.value)


@pytest.mark.parametrize(("setting", "value"), [("lr", 0.2), ("seed", 7), ("schedule", "cosine")])
def test_resume_with_other_settings_names_them(tmp_path, setting, value):
    """Resuming under different training settings is refused, and the message names the setting."""
    toy_trainer(tmp_path, max_steps=4, checkpoint_every=2).fit()
    with pytest.raises(CheckpointError) as e:
        toy_trainer(tmp_path, max_steps=4, checkpoint_every=2, **{setting: value}).fit(resume=True)
    msg = str(e.value)
    assert "step-0000004.pt" in msg and setting in msg and repr(value) in msg


def test_resume_into_other_model_size_is_refused(tmp_path):
    """A checkpoint of a hidden-16 model does not load into a hidden-32 one: CheckpointError naming file
    and tensor, not a bare torch RuntimeError."""
    feats = tiny_features(n=8)
    bert_trainer(tmp_path, tiny_classifier(hidden=16), feats, max_steps=2).fit()
    with pytest.raises(CheckpointError) as e:
        bert_trainer(tmp_path, tiny_classifier(hidden=32), feats, max_steps=2).fit(resume=True)
    msg = str(e.value)
    assert "step-0000002.pt" in msg and "size mismatch" in msg and "encoder.embeddings" in msg


def test_resume_without_checkpoint_starts_fresh(tmp_path):
    """resume=True in an empty directory trains from step 0."""
    state = toy_trainer(tmp_path, max_steps=3).fit(resume=True)
    assert state.step == 3 and [r["step"] for r in records(tmp_path, "train")] == [1, 2, 3]


def test_resume_continues_the_same_curve(tmp_path):
    """Stopped by an exception at step 7 (last checkpoint at 6), a fresh differently-initialised model resumed
    from the checkpoint logs the same losses, evals and final weights as an uninterrupted run (dropout on)."""
    feats = tiny_features(n=20)  # 5 batches of 4: epoch 1 starts at step 6
    dev = [make_batch(feats, range(8))]

    def evaluate(model):
        return {"loss": float(sum(classifier_loss(model, b) for b in dev))}

    settings = dict(epochs=2, checkpoint_every=3, eval_every=4, seed=3)
    a = bert_trainer(tmp_path / "a", tiny_classifier(seed=0, dropout=0.1), feats, evaluate=evaluate, **settings)
    a.fit()

    class Stop(Exception):
        pass

    def stop_at_7(trainer):
        if trainer.state.step == 7:
            raise Stop

    b = bert_trainer(tmp_path / "b", tiny_classifier(seed=0, dropout=0.1), feats, evaluate=evaluate,
                     callbacks=[stop_at_7], **settings)
    with pytest.raises(Stop):
        b.fit()
    assert [r["step"] for r in records(tmp_path / "b", "train")][-1] == 7
    torch.rand(100)  # the process RNG moved on since the checkpoint
    fresh = tiny_classifier(seed=123, dropout=0.1)
    b2 = bert_trainer(tmp_path / "b", fresh, feats, evaluate=evaluate, **settings)
    state = b2.fit(resume=True)
    assert state.step == a.state.step == 10 and state.stopped == "done"

    def curve(out, kind, keys):
        return [tuple(r[k] for k in keys) for r in records(out, kind)]

    train_a, train_b = curve(tmp_path / "a", "train", ("step", "loss", "lr")), curve(tmp_path / "b", "train",
                                                                                      ("step", "loss", "lr"))
    assert [s for s, _, _ in train_b] == list(range(1, 11))
    assert [s for s, _, _ in train_a] == [s for s, _, _ in train_b]
    for (_, la, ra), (_, lb, rb) in zip(train_a, train_b, strict=True):
        assert lb == pytest.approx(la, abs=1e-6) and rb == pytest.approx(ra, rel=1e-12)
    eval_a, eval_b = curve(tmp_path / "a", "eval", ("step", "loss")), curve(tmp_path / "b", "eval", ("step", "loss"))
    assert [s for s, _ in eval_a] == [4, 8, 10] and [s for s, _ in eval_b] == [4, 8, 10]
    assert [x for _, x in eval_b] == pytest.approx([x for _, x in eval_a], abs=1e-6)
    for pa, pb in zip(a.model.parameters(), fresh.parameters(), strict=True):
        torch.testing.assert_close(pb, pa, rtol=0, atol=1e-6)
    assert state.tokens == a.state.tokens


def test_time_budget_stops_early(tmp_path):
    """A budget that runs out after the first step ends training there, marked "time budget"."""
    t = toy_trainer(tmp_path, max_steps=50, time_budget=1e-9)
    state = t.fit()
    assert state.stopped == "time budget" and state.step == 1 < t.total_steps


def test_resume_after_time_budget(tmp_path):
    """A run stopped by its budget stays stopped when resumed under the same budget, and goes on to the end
    when resumed with a larger one (the budget is not part of the checkpoint's settings)."""
    assert toy_trainer(tmp_path, max_steps=6, time_budget=1e-9).fit().step == 1
    state = toy_trainer(tmp_path, max_steps=6, time_budget=1e-9).fit(resume=True)
    assert state.step == 1 and state.stopped == "time budget"
    state = toy_trainer(tmp_path, max_steps=6, time_budget=3600).fit(resume=True)
    assert state.step == 6 and state.stopped == "done"
    assert [r["step"] for r in records(tmp_path, "train")] == [1, 2, 3, 4, 5, 6]


def test_early_stopping_after_patience_evals(tmp_path):
    """A metric that never improves stops the run after `patience` evals without improvement."""
    calls = []

    def constant(model):
        calls.append(1)
        return {"loss": 1.0}

    state = toy_trainer(tmp_path, max_steps=20, eval_every=1, patience=2, evaluate=constant).fit()
    assert state.stopped == "early stopping"
    assert state.step == 3 and len(calls) == 3 and state.best_step == 1 and state.bad_evals == 2


@pytest.mark.parametrize(("greater", "values", "best_steps"), [
    (False, [3.0, 2.0, 2.5, 1.0, 1.0], [1, 2, 4]),
    (True, [3.0, 2.0, 3.5, 1.0, 4.0], [1, 3, 5]),
])
def test_on_best_only_on_improvement(tmp_path, greater, values, best_steps):
    """on_best is called at the first eval and at each strict improvement of the metric, in its direction."""
    it = iter(values)
    saved = []
    t = toy_trainer(tmp_path, max_steps=5, eval_every=1, metric="score", greater_is_better=greater,
                    evaluate=lambda m: {"score": next(it)},
                    on_best=lambda m, metrics: saved.append((t.state.step, metrics["score"])))
    state = t.fit()
    assert [s for s, _ in saved] == best_steps
    assert state.best == values[best_steps[-1] - 1] and state.best_step == best_steps[-1]


def test_unknown_eval_metric_is_an_error(tmp_path):
    with pytest.raises(ValueError, match="'accuracy' is not among the eval metrics"):
        toy_trainer(tmp_path, max_steps=2, metric="accuracy", evaluate=lambda m: {"loss": 1.0}).fit()


def test_metrics_file_and_curve(tmp_path):
    """metrics.jsonl holds a train record per log_every steps and an eval record per eval; the curve is a PNG."""
    t = toy_trainer(tmp_path, max_steps=6, log_every=2, eval_every=3, metric="acc", greater_is_better=True,
                    evaluate=lambda m: {"loss": 1.0, "acc": 0.5})
    t.fit()
    train, evals = records(tmp_path, "train"), records(tmp_path, "eval")
    assert [r["step"] for r in train] == [2, 4, 6]
    assert all(math.isfinite(r["loss"]) and r["loss"] > 0 and "lr" in r for r in train)
    assert [(r["step"], r["acc"]) for r in evals] == [(3, 0.5), (6, 0.5)]
    png = tmp_path / "training_curve.png"
    assert png.read_bytes()[:8] == PNG_MAGIC


def test_fresh_run_replaces_old_metrics(tmp_path):
    """fit() without resume starts metrics.jsonl anew instead of appending to a previous run's."""
    toy_trainer(tmp_path, max_steps=3).fit()
    toy_trainer(tmp_path, max_steps=2).fit()
    assert [r["step"] for r in records(tmp_path, "train")] == [1, 2]


def test_non_finite_loss_is_an_error(tmp_path):
    bad = [XY(torch.ones(2, 3), torch.tensor([float("nan"), 0.0]))]
    with pytest.raises(FloatingPointError, match="step 1"):
        toy_trainer(tmp_path, batches=bad).fit()


def test_invalid_settings_are_named():
    with pytest.raises(ValueError, match=r"grad_accum=0.*schedule='step'"):
        TrainConfig(grad_accum=0, schedule="step").validate()


@pytest.mark.parametrize(("text", "seconds"), [
    ("90s", 90.0), ("10m", 600.0), ("1.5h", 5400.0), ("45", 45.0), (" 2m ", 120.0), (30, 30.0), (2.5, 2.5),
    (None, None),
])
def test_parse_duration(text, seconds):
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "abc", "10d", "-5s", "1h30m", "m"])
def test_parse_duration_rejects(text):
    with pytest.raises(ValueError, match="cannot read duration"):
        parse_duration(text)
