"""Distillation on tiny random BERTs: each loss against a naive reference, student construction, multi-teacher
soft labels, errors before training, and short task (CLI) and general runs."""

import csv
import itertools
import json
import math
import random

import pytest
import torch
import torch.nn.functional as F

from bertkit.cli.main import main
from bertkit.compress.distill import (
    Distiller,
    attention_kl,
    capture,
    check_teachers,
    distill,
    distill_general,
    hidden_mse,
    relation_scores,
    soft_label_loss,
    soft_targets,
    student_from_config,
    student_from_teacher,
    value_relation_kl,
)
from bertkit.data.tokenizer import WordPieceTokenizer
from bertkit.errors import ConfigError
from bertkit.model.attention import Packing, unpadded_attention
from bertkit.model.bert import BertModel
from bertkit.model.config import EncoderConfig
from bertkit.model.heads import SequenceClassifier
from bertkit.model.weights import load_pretrained
from bertkit.task_model import TaskModel
from tests.conftest import save_tiny_hf_model

WORDS = "good great love best music film game war death king river water night school city team".split()
LENGTHS = [3, 3, 5, 2, 5]  # runs of equal lengths and single sequences

pytestmark = pytest.mark.usefixtures("one_thread")


def make_teacher(directory, encoder_dir, labels=("neg", "pos"), seed=0, scale=40.0):
    """A task model with the tiny encoder and a random classifier, scaled so that its predictions are peaked."""
    encoder, _ = load_pretrained(encoder_dir)
    torch.manual_seed(seed)
    head = SequenceClassifier(encoder, len(labels))
    with torch.no_grad():
        head.classifier.weight.mul_(scale)
    TaskModel(head, WordPieceTokenizer.from_dir(encoder_dir), "classification", list(labels), 64).save_pretrained(
        directory)
    return directory


@pytest.fixture(scope="module")
def encoder_dir(minilm_dir, tmp_path_factory):
    d = tmp_path_factory.mktemp("tiny4")
    save_tiny_hf_model(d, minilm_dir, num_hidden_layers=4)
    return d


@pytest.fixture(scope="module")
def teacher_dir(encoder_dir, tmp_path_factory):
    return make_teacher(tmp_path_factory.mktemp("teacher"), encoder_dir)


@pytest.fixture
def teacher(teacher_dir):
    return TaskModel.from_pretrained(teacher_dir, device="cpu").head


def batch(seed=0):
    """A packed classification batch of LENGTHS."""
    g = torch.Generator().manual_seed(seed)

    class B:
        input_ids = torch.randint(1000, 3000, (sum(LENGTHS),), generator=g)
        token_type_ids = None
        packing = Packing.from_lengths(LENGTHS)
        labels = torch.randint(0, 2, (len(LENGTHS),), generator=g)
        num_units = len(LENGTHS)

    return B()


def write_csv(path, n, seed, labels=("neg", "pos")):
    rnd = random.Random(seed)
    rows = "".join(f"{' '.join(rnd.choices(WORDS, k=rnd.randint(2, 6)))},{labels[i % len(labels)]}\n"
                   for i in range(n))
    path.write_text("text,label\n" + rows)
    return path


# ---- losses against naive references --------------------------------------------------------------------------


def test_soft_label_kl_with_temperature_and_weighted_teachers():
    torch.manual_seed(0)
    s, t1, t2 = torch.randn(4, 3), torch.randn(4, 3) * 3, torch.randn(4, 3) * 3
    T = 2.0
    p = torch.softmax(t1 / T, -1)
    q = torch.softmax(s / T, -1)
    want = T * T * (p * (p / q).log()).sum(-1).mean()
    assert soft_label_loss(s, soft_targets([t1], None, T), T).item() == pytest.approx(want.item(), rel=1e-5)
    assert soft_label_loss(t1, soft_targets([t1], None, T), T).item() == pytest.approx(0, abs=1e-6)
    # several teachers: the weighted mean of their softened predictions, weights normalized
    mixed = soft_targets([t1, t2], [3, 1], T)
    assert torch.allclose(mixed, 0.75 * p + 0.25 * torch.softmax(t2 / T, -1))
    assert torch.allclose(soft_targets([t1, t2], None, T), 0.5 * p + 0.5 * torch.softmax(t2 / T, -1))
    for bad in ([1.0], [-1.0, 2.0], [0.0, 0.0]):
        with pytest.raises(ConfigError, match="teacher_weights"):
            soft_targets([t1, t2], bad, T)
    # multi-label: T^2 x the mean binary KL of sigmoid(z / T) per (row, label)
    pb, qb = torch.sigmoid(t1 / T), torch.sigmoid(s / T)
    want = T * T * (pb * (pb / qb).log() + (1 - pb) * ((1 - pb) / (1 - qb)).log()).mean()
    got = soft_label_loss(s, soft_targets([t1], None, T, "multi_label_classification"), T,
                          "multi_label_classification")
    assert got.item() == pytest.approx(want.item(), rel=1e-4)
    # regression: MSE to the teachers' weighted mean prediction
    r1, r2, rs = torch.randn(4, 1), torch.randn(4, 1), torch.randn(4, 1)
    got = soft_label_loss(rs, soft_targets([r1, r2], [1, 3], T, "regression"), T, "regression")
    assert got.item() == pytest.approx(((rs - (0.25 * r1 + 0.75 * r2)) ** 2).mean().item(), rel=1e-5)


def test_hidden_mse_through_projection():
    torch.manual_seed(0)
    s, t = torch.randn(7, 4), torch.randn(7, 6)
    proj = torch.nn.Linear(4, 6)
    want = sum(((s[i] @ proj.weight.T + proj.bias - t[i]) ** 2).sum() for i in range(7)) / (7 * 6)
    assert hidden_mse(s, t, proj).item() == pytest.approx(want.item(), rel=1e-5)


@pytest.mark.parametrize("positions", ["absolute", "rope", "alibi"])
def test_attention_from_packed_qkv_is_the_models_attention(positions):
    """relation_scores(q, k) per run = softmax(q k^T / sqrt(d)) per sequence and head, and those probabilities
    times v give exactly the model's own attention output (so they are what the model attends with)."""
    torch.manual_seed(0)
    cfg = EncoderConfig(vocab_size=50, hidden_size=16, num_hidden_layers=2, num_attention_heads=4,
                        intermediate_size=32, max_position_embeddings=16, position_embedding_type=positions)
    model = BertModel(cfg).eval()
    packing = Packing.from_lengths(LENGTHS)
    ids = torch.randint(1, 50, (sum(LENGTHS),))
    with capture(model, qkv=[1]) as got:
        model.forward_packed(ids, packing)
    qkv = got.qkv[1]
    pos = model.relative_positions(max(LENGTHS), ids.device)
    q, k, v = qkv.chunk(3, -1)
    blocks = [torch.softmax(s, -1) for s in relation_scores(q, k, packing, 4, pos)]
    per_seq = [p for block in blocks for p in block]  # (heads, L, L) each, in sequence order
    assert len(per_seq) == len(LENGTHS)
    ctx = torch.cat([(p @ v[a:b].view(b - a, 4, 4).transpose(0, 1)).transpose(0, 1).reshape(b - a, 16)
                     for p, a, b in zip(per_seq, packing.cu_seqlens[:-1].tolist(), packing.cu_seqlens[1:].tolist(),
                                        strict=True)])
    assert torch.allclose(ctx, unpadded_attention(qkv, packing, 4, rope=pos[0], bias=pos[1]), atol=1e-6)
    if positions == "absolute":  # and the naive per-sequence, per-head formula
        for p, a, b in zip(per_seq, packing.cu_seqlens[:-1].tolist(), packing.cu_seqlens[1:].tolist(), strict=True):
            for h in range(4):
                qh, kh = q[a:b, 4 * h:4 * h + 4], k[a:b, 4 * h:4 * h + 4]
                assert torch.allclose(p[h], torch.softmax(qh @ kh.T / 2.0, -1), atol=1e-6)


def naive_relation_kl(ta, tb, sa, sb, heads):
    """Mean over (sequence, head, query token) of KL(softmax(t_a t_b^T / sqrt(d)) || same for the student)."""
    def probs(x, y, a, b, h):
        d = x.shape[1] // heads
        return torch.softmax(x[a:b, h * d:(h + 1) * d] @ y[a:b, h * d:(h + 1) * d].T / math.sqrt(d), -1)

    total, rows = 0.0, 0
    cu = [0, *torch.tensor(LENGTHS).cumsum(0).tolist()]
    for a, b in itertools.pairwise(cu):
        for h in range(heads):
            p, q = probs(ta, tb, a, b, h), probs(sa, sb, a, b, h)
            total += float((p * (p / q).log()).sum())
            rows += b - a
    return total / rows


def test_attention_and_value_kl_against_naive_reference():
    torch.manual_seed(0)
    n = sum(LENGTHS)
    t_qkv, s_qkv = torch.randn(n, 3 * 8), torch.randn(n, 3 * 12)  # hidden 8 and 12, two relation heads
    packing = Packing.from_lengths(LENGTHS)
    tq, tk, tv = t_qkv.chunk(3, -1)
    sq, sk, sv = s_qkv.chunk(3, -1)
    assert attention_kl(t_qkv, s_qkv, packing, 2).item() == pytest.approx(naive_relation_kl(tq, tk, sq, sk, 2),
                                                                          rel=1e-4)
    assert value_relation_kl(t_qkv, s_qkv, packing, 2).item() == pytest.approx(naive_relation_kl(tv, tv, sv, sv, 2),
                                                                               rel=1e-4)
    assert attention_kl(t_qkv, t_qkv, packing, 2).item() == pytest.approx(0, abs=1e-6)


def test_relation_losses_zero_for_identical_models_positive_otherwise(teacher):
    same = student_from_teacher(teacher, [0, 1, 2, 3])
    d = Distiller(same, [teacher], alpha_kl=1, alpha_hidden=1, alpha_attn=1, alpha_value=1, attn_layers="mapped")
    parts = d.losses(batch())
    for k in ("kl", "hidden", "attn", "value"):
        assert abs(parts[k].item()) < 1e-6, k
    # relation heads other than the real ones: still zero between identical models
    d = Distiller(same, [teacher], alpha_attn=1, alpha_value=1, relation_heads=2)
    assert d.heads == [(2, False)]
    assert all(abs(v.item()) < 1e-6 for v in d.losses(batch()).values())

    shallow = student_from_teacher(teacher, [0, 2])
    parts = Distiller(shallow, [teacher], alpha_kl=1, alpha_hidden=1, alpha_attn=1, alpha_value=1).losses(batch())
    assert parts["attn"].item() > 1e-6 and parts["value"].item() > 1e-6 and parts["hidden"].item() > 1e-6
    # a narrower student with other head counts: MiniLMv2 relation heads (the student's 2)
    torch.manual_seed(0)
    narrow = student_from_config(teacher, {"hidden_size": 16, "num_attention_heads": 2, "intermediate_size": 32,
                                           "num_hidden_layers": 2})
    d = Distiller(narrow, [teacher], alpha_kl=1, alpha_ce=1, alpha_hidden=1, alpha_attn=1, alpha_value=1)
    assert d.heads == [(2, False)] and [tuple(p.weight.shape) for p in d.projections] == [(32, 16)] * 3
    parts = d.losses(batch())
    assert all(torch.isfinite(v) and v.item() > 0 for k, v in parts.items()), parts
    parts["loss"].backward()
    assert all(p.grad is not None for p in d.parameters())
    assert all(p.grad is None for p in teacher.parameters())


# ---- students ---------------------------------------------------------------------------------------------------


def test_student_from_teacher_copies_exactly_the_chosen_layers(teacher):
    student = student_from_teacher(teacher, [1, 3])
    assert isinstance(student, SequenceClassifier) and student.num_labels == 2
    assert student.encoder.config.num_hidden_layers == 2 and len(student.encoder.layers) == 2
    t_state, s_state = teacher.state_dict(), student.state_dict()
    for key, value in s_state.items():
        if key.startswith("encoder.layers."):
            j = int(key.split(".")[2])
            source = key.replace(f"encoder.layers.{j}.", f"encoder.layers.{[1, 3][j]}.", 1)
        else:
            source = key  # embeddings, pooler, classifier
        assert torch.equal(value, t_state[source]), key
    assert not torch.equal(s_state["encoder.layers.0.Wqkv.weight"], t_state["encoder.layers.0.Wqkv.weight"])
    assert student.encoder.layers[0].Wqkv.weight.data_ptr() != teacher.encoder.layers[1].Wqkv.weight.data_ptr()


def test_student_from_config_and_its_errors(teacher):
    torch.manual_seed(0)
    s = student_from_config(teacher, {"hidden_size": 16, "num_attention_heads": 2, "intermediate_size": 24})
    cfg = s.encoder.config
    assert (cfg.hidden_size, cfg.num_attention_heads, cfg.intermediate_size, cfg.num_hidden_layers) == (16, 2, 24, 4)
    assert tuple(s.classifier.weight.shape) == (2, 16) and cfg.vocab_size == teacher.encoder.config.vocab_size
    with pytest.raises(ConfigError, match=r"unknown student_config key.*hiden_size"):
        student_from_config(teacher, {"hiden_size": 16})
    with pytest.raises(ConfigError, match=r"hidden_size.*divisible"):
        student_from_config(teacher, {"hidden_size": 18})
    with pytest.raises(ConfigError, match="num_hidden_layers=6: the teacher has only 4"):
        student_from_config(teacher, {"num_hidden_layers": 6})
    with pytest.raises(ConfigError, match="5 layers; the teacher has only 4"):
        student_from_teacher(teacher, [0, 1, 2, 3, 3])
    with pytest.raises(ConfigError, match="layer 4 is out of range; the teacher has 4 layers"):
        student_from_teacher(teacher, [0, 4])
    with pytest.raises(ConfigError, match="increasing"):
        student_from_teacher(teacher, [2, 1])


def test_teachers_with_other_label_order_are_permuted(encoder_dir, tmp_path):
    """Soft labels average teachers label by label, whatever order each teacher keeps its labels in."""
    a = TaskModel.from_pretrained(make_teacher(tmp_path / "a", encoder_dir, ("neg", "pos"), seed=1), device="cpu")
    b = TaskModel.from_pretrained(make_teacher(tmp_path / "b", encoder_dir, ("pos", "neg"), seed=2), device="cpu")
    orders = check_teachers([a, b], ["a", "b"])
    assert orders == [None, [1, 0]]
    student = student_from_teacher(a.head, [0])
    d = Distiller(student, [a.head, b.head], teacher_weights=[0.7, 0.3], temperature=2.0, alpha_kl=1,
                  label_orders=orders)
    x = batch()
    with torch.no_grad():
        za, zb, zs = (m(x.input_ids, x.packing) for m in (a.head, b.head, student))
        target = 0.7 * torch.softmax(za / 2, -1) + 0.3 * torch.softmax(zb[:, [1, 0]] / 2, -1)
        want = 4 * F.kl_div(F.log_softmax(zs / 2, -1), target, reduction="batchmean")
        assert d.losses(x)["kl"].item() == pytest.approx(want.item(), rel=1e-5)
    c = TaskModel.from_pretrained(make_teacher(tmp_path / "c", encoder_dir, ("neg", "pos", "mid")), device="cpu")
    with pytest.raises(ConfigError, match=r"teacher c has labels \['neg', 'pos', 'mid'\], teacher a has "
                                          r"\['neg', 'pos'\]"):
        check_teachers([a, c], ["a", "c"])


# ---- runs -------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("settings, message", [
    (dict(student_layers=[0, 1, 2, 3, 4]), "5 layers; the teacher has only 4"),
    (dict(student_layers=[0, 7]), "layer 7 is out of range; the teacher has 4 layers"),
    (dict(student_config={"num_hidden_layers": 5}), "num_hidden_layers=5: the teacher has only 4"),
    (dict(student_layers=[0], labels=("neg", "pos", "mid")),
     r"the data's labels \['mid', 'neg', 'pos'\] differ from those of teacher .* \['neg', 'pos'\]"),
    (dict(student_layers=[0], teacher_weights=[0.5, 0.5]), "teacher_weights has 2 values for 1 teachers"),
    (dict(student_layers=[0], student_config={"hidden_size": 16}), "exactly one of"),
    (dict(student_layers=[0], alpha_kl=0, alpha_ce=1), "nothing to distill"),
    (dict(student_layers=[0], layer_map=[9]), r"layer_map \[9\]"),
])
def test_bad_settings_fail_before_training(teacher_dir, tmp_path, settings, message):
    labels = settings.pop("labels", ("neg", "pos"))
    train = write_csv(tmp_path / "train.csv", 8, 0, labels)
    out = tmp_path / "out"
    with pytest.raises(ConfigError, match=message):
        distill(out, teachers=[str(teacher_dir)], train_file=str(train), eval_file=str(train), max_steps=1,
                progress=False, **settings)
    assert not out.exists()


def test_cli_distill_writes_a_task_model_and_its_loss_decreases(teacher_dir, tmp_path, capsys):
    train, dev = write_csv(tmp_path / "train.csv", 32, 0), write_csv(tmp_path / "dev.csv", 8, 1)
    recipe = tmp_path / "recipe.yaml"  # keys map 1:1 onto DistillConfig / TrainConfig
    recipe.write_text(f"teachers: [{teacher_dir}]\ntemperature: 2\nalpha_kl: 1\n"
                      "alpha_ce: 0.1\nalpha_hidden: 1\nalpha_attn: 1\nalpha_value: 1\nattn_layers: mapped\n"
                      "training:\n  lr: 1.0e-3\n  log_every: 1\n  warmup_ratio: 0\n  schedule: constant\n")
    out = tmp_path / "student"
    assert main(["distill", "--config", str(recipe), "--train", str(train), "--eval", str(dev), "-o", str(out),
                 "--student-config", "hidden_size=16", "num_attention_heads=2", "intermediate_size=32",
                 "num_hidden_layers=2", "--max-steps", "16", "--batch-size", "8", "--eval-every", "8",
                 "--no-progress"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["steps"] == 16 and "accuracy" in summary["dev"]
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in records if r["kind"] == "train"]
    assert len(losses) == 16 and sum(losses[-4:]) < 0.85 * sum(losses[:4]), losses
    evals = [r for r in records if r["kind"] == "eval"]
    assert {"train_kl", "train_ce", "train_hidden", "train_attn", "train_value"} <= set(evals[0])
    assert evals[-1]["train_kl"] < evals[0]["train_kl"]

    model = TaskModel.from_pretrained(out)
    assert len(model.head.encoder.layers) == 2 and model.head.encoder.config.hidden_size == 16
    assert model.labels == ["neg", "pos"]
    config = json.loads((out / "distill_config.json").read_text())
    assert config["student_config"] == {"hidden_size": 16, "num_attention_heads": 2, "intermediate_size": 32,
                                        "num_hidden_layers": 2}
    assert config["training"]["lr"] == 1e-3 and config["training"]["max_steps"] == 16
    assert main(["evaluate", str(out), "--data", str(dev), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["examples"] == 8
    (tmp_path / "texts.txt").write_text("good music\nwar\n")
    assert main(["predict", str(out), "-i", str(tmp_path / "texts.txt"), "-o", str(tmp_path / "p.csv")]) == 0
    with open(tmp_path / "p.csv", newline="") as f:
        assert [r["label"] in ("neg", "pos") for r in csv.DictReader(f)] == [True, True]


def test_cli_bad_student_layers_is_exit_2(teacher_dir, tmp_path, capsys):
    train = write_csv(tmp_path / "train.csv", 8, 0)
    out = tmp_path / "o"
    assert main(["distill", "--teacher", str(teacher_dir), "--train", str(train), "--student-layers", "0,9",
                 "-o", str(out), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "bertkit distill: error:" in err and "layer 9 is out of range" in err and not out.exists()


def test_general_distillation_then_task_distillation_from_it(encoder_dir, teacher_dir, tmp_path):
    rnd = random.Random(0)
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    for i in range(6):
        (corpus / f"doc{i}.txt").write_text(" ".join(rnd.choices(WORDS, k=120)))
    out = tmp_path / "general"
    result = distill_general(out, teacher=str(encoder_dir), student_config={"hidden_size": 16,
                             "num_attention_heads": 2, "intermediate_size": 32, "num_hidden_layers": 2},
                             corpus=[str(corpus)], cache_dir=str(tmp_path / "cache"), max_length=16,
                             eval_sequences=4, alpha_hidden=1, max_steps=12, batch_size=8, lr=3e-3, log_every=1,
                             warmup_ratio=0, progress=False)
    losses = [json.loads(line)["loss"] for line in (out / "metrics.jsonl").read_text().splitlines()
              if json.loads(line)["kind"] == "train"]
    assert sum(losses[-3:]) < sum(losses[:3]), losses
    assert set(result.eval) >= {"loss", "attn", "value", "hidden"}
    student, _ = load_pretrained(out)  # a plain encoder directory
    assert student.config.hidden_size == 16 and len(student.layers) == 2
    assert WordPieceTokenizer.from_dir(out).vocab_size == WordPieceTokenizer.from_dir(encoder_dir).vocab_size
    # ... and the start of a task distillation (a plain encoder: the student gets a fresh classifier)
    train = write_csv(tmp_path / "train.csv", 8, 0)
    task = distill(tmp_path / "task", teachers=[str(teacher_dir)], student_model=str(out), train_file=str(train),
                   eval_file=str(train), alpha_attn=1, max_steps=2, batch_size=4, progress=False)
    assert task.model.head.encoder.config.hidden_size == 16 and task.teachers_test == [None]
    with pytest.raises(ConfigError, match=r"student_model .* has labels \['neg', 'pos'\], teacher .* has "
                                          r"\['neg', 'pos', 'mid'\]"):
        other = make_teacher(tmp_path / "t3", encoder_dir, ("neg", "pos", "mid"))
        distill(tmp_path / "bad", teachers=[str(other)], student_model=str(tmp_path / "task"),
                train_file=str(write_csv(tmp_path / "t3.csv", 6, 0, ("neg", "pos", "mid"))), max_steps=1)
