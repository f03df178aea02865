"""Compression on every encoder family, on tiny random checkpoints with each family's own tokenizer
(tests/compress/family_dirs.py): the attention distillation compares (each layer's own scores), students from
teacher layers, structured pruning (sliced == masked on all three paths, checkpoints round-trip), drop_layers,
low-rank / quantized / sparse checkpoints, merging, and the ``bertkit compress`` pipeline on non-BERT models."""

from __future__ import annotations

import copy
import dataclasses
import json

import pytest
import torch

from bertkit.cli.main import main
from bertkit.compress import pipeline
from bertkit.compress.distill import (
    Distiller,
    TextBatch,
    distill,
    distill_general,
    student_from_config,
    student_from_teacher,
)
from bertkit.compress.lowrank import densify, factorize_model, load_lowrank, lowrank_layers, save_lowrank
from bertkit.compress.merge import MultiHeadModel, merge, merge_task_models, task_vectors
from bertkit.compress.pipeline import load_model
from bertkit.compress.quantize import load_compressed, quantize_weights, save_compressed
from bertkit.compress.sparse import magnitude_masks
from bertkit.compress.structured import PruningError, drop_layers, prune_heads, prune_neurons
from bertkit.data.tasks import read_task_file
from bertkit.data.tokenizer import Tokenizer
from bertkit.errors import ConfigError
from bertkit.model.attention import PATHS, Packing, padded_attend
from bertkit.model.bert import BertModel
from bertkit.model.config import EncoderConfig
from bertkit.model.directory import inspect_model_dir, load_encoder
from bertkit.model.families import family_of
from bertkit.model.weights import load_pretrained, save_weights
from bertkit.task_model import TaskModel
from tests.compress.family_dirs import CORE, TEXTS, WITH_POS_PROJ, checkpoint, task_model
from tests.compress.test_pipeline import write_csv
from tests.families.models import random_batch

pytestmark = pytest.mark.usefixtures("one_thread")
TOL = 1e-5
LENGTHS = [1, 17, 5, 5, 30, 30, 12]  # runs of equal lengths, and longer than ModernBERT's window (8)


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    """variant -> directory of its tiny base checkpoint (transformers' XxxModel + the family's tokenizer)"""
    made = {}

    def get(variant):
        if variant not in made:
            made[variant] = checkpoint(variant, tmp_path_factory.mktemp(f"base-{variant}"))
        return made[variant]

    return get


@pytest.fixture(scope="module")
def tasks(tmp_path_factory):
    """variant -> directory of a bertkit task model (3 labels, the family's head layout)"""
    made = {}

    def get(variant):
        if variant not in made:
            d = tmp_path_factory.mktemp(f"task-{variant}")
            task_model(variant, d)
            made[variant] = d
        return made[variant]

    return get


def encoder(d) -> BertModel:
    model, _, _ = load_encoder(d)
    return model


def packed(model: BertModel, lengths=LENGTHS, seed=0):
    ids, mask, types = random_batch(lengths, seed, pair=True)
    m = mask.bool()
    types = types[m] if model.config.type_vocab_size > 1 else None
    return ids[m], Packing.from_lengths(lengths), types


def padded(model: BertModel, lengths=LENGTHS, seed=0):
    ids, mask, types = random_batch(lengths, seed, pair=True)
    return ids, mask, (types if model.config.type_vocab_size > 1 else None)


# ---- distillation: each layer's own attention ----------------------------------------------------------------
@pytest.mark.parametrize("variant", WITH_POS_PROJ)
def test_attention_scores_are_what_each_layer_attends_with(base, variant):
    """softmax(Layer.attention_scores) @ v, run by run, is exactly the context the layer computed in its forward:
    the family's scale and positions (rope bases, bucket bias, disentangled terms, windows) included."""
    model = encoder(base(variant))
    ids, packing, types = packed(model)
    qkv, ctx, handles = {}, {}, []
    for i, layer in enumerate(model.layers):
        handles.append(layer.Wqkv.register_forward_hook(lambda m, a, out, i=i: qkv.__setitem__(i, out.clone())))
        handles.append(layer.attn_out.register_forward_pre_hook(lambda m, a, i=i: ctx.__setitem__(i, a[0].clone())))
    with torch.inference_mode():
        model.forward_packed(ids, packing, types)
        for h in handles:  # before attention_scores, which projects DeBERTa's relative embeddings through Wqkv
            h.remove()
        tables = model.position_tables(packing.max_length, ids.device)
        for i, layer in enumerate(model.layers):
            heads, d = layer.num_heads, layer.head_dim
            v = qkv[i].view(-1, 3, heads, d)[:, 2]
            blocks = list(layer.attention_scores(qkv[i], packing, tables))
            assert [b.shape[0] for b in blocks] == [n for _, n, _ in packing.runs]
            got = torch.cat([(torch.softmax(s, -1) @ v[a:a + n * length].view(n, length, heads, d).transpose(1, 2))
                             .transpose(1, 2).reshape(n * length, heads * d)
                             for s, (a, n, length) in zip(blocks, packing.runs, strict=True)])
            diff = (got - ctx[i]).abs().max().item()
            assert diff <= TOL, f"{variant} layer {i}: {diff:.2e}"


def text_batch(model: BertModel, lengths=LENGTHS, seed=0) -> TextBatch:
    ids, packing, _ = packed(model, lengths, seed)
    return TextBatch(ids, packing, ids.numel(), ids.numel())


@pytest.mark.parametrize("variant", CORE)
def test_a_prefix_student_matches_its_teacher_layer_for_layer(base, variant):
    """A student made of the teacher's first layers computes the same embeddings, states and attention there:
    hidden, attention-KL and value losses are all zero, for every family (ModernBERT's layer types sliced along)."""
    teacher = encoder(base(variant))
    n = len(teacher.layers)
    student = student_from_teacher(teacher, list(range(n - 1)))
    assert student.config.layer_types == (teacher.config.layer_types[:n - 1] if teacher.config.layer_types else None)
    d = Distiller(student, [teacher], alpha_hidden=1, alpha_attn=1, alpha_value=1, layer_map=list(range(n - 1)),
                  attn_layers="mapped")
    with torch.no_grad():
        parts = d.losses(text_batch(teacher))
    for k in ("hidden", "attn", "value"):
        assert abs(parts[k].item()) < 1e-6, (variant, k, parts[k].item())


# which parameters hold each family's positions (their gradients prove the attention loss sees them)
POSITION_PARAMS = {"mpnet": "rel.bucket.weight", "deberta-v3": "rel.embeddings.weight",
                   "deberta-v2": "layers.0.pos_k.weight"}


@pytest.mark.parametrize("variant", WITH_POS_PROJ)
def test_attention_loss_of_a_deeper_layer_trains_the_families_positions(base, variant):
    teacher = encoder(base(variant))
    last = len(teacher.layers) - 1
    student = student_from_teacher(teacher, [last])  # student layer 0 is the teacher's last layer
    if variant == "modernbert":  # its first layer has no attention norm: the copied layer's is left out
        assert isinstance(student.layers[0].attn_norm, torch.nn.Identity)
        assert student.config.layer_types == [teacher.config.layer_types[last]]
    student.train()
    d = Distiller(student, [teacher], alpha_attn=1, alpha_value=1, layer_map=[last], attn_layers="mapped")
    parts = d.losses(text_batch(teacher))
    assert parts["attn"].item() > 0 and torch.isfinite(parts["loss"])  # random tiny models: near-uniform attention
    parts["attn"].backward()
    grads = {k: p.grad for k, p in student.named_parameters()}
    assert grads["layers.0.Wqkv.weight"].abs().sum() > 0
    if variant in POSITION_PARAMS:
        assert grads[POSITION_PARAMS[variant]].abs().sum() > 0, POSITION_PARAMS[variant]


@pytest.mark.parametrize("variant", ["deberta-v3", "modernbert", "mpnet"])
def test_relation_heads_distill_across_head_counts(base, variant):
    teacher = encoder(base(variant))
    torch.manual_seed(0)
    student = student_from_config(teacher, {"num_attention_heads": 2, "num_hidden_layers": 2})
    if variant == "modernbert":  # a fresh student keeps the pattern of local and global layers
        assert student.config.layer_types == teacher.config.layer_types[:2]
    d = Distiller(student, [teacher], alpha_attn=1, alpha_value=1, relation_heads=2)
    parts = d.losses(text_batch(teacher))
    assert d.heads == [(2, False)] and torch.isfinite(parts["loss"]) and parts["attn"].item() > 0


@pytest.mark.parametrize("variant", ["roberta", "deberta-v3", "modernbert"])
def test_students_from_a_task_teacher_keep_the_family_head_and_save_in_its_layout(tasks, variant, tmp_path):
    teacher = TaskModel.from_pretrained(tasks(variant))
    student = student_from_teacher(teacher.head, [0])
    own = {k: v for k, v in teacher.head.state_dict().items() if not k.startswith("encoder.")}
    for k, v in own.items():  # the whole head: RoBERTa's dense + out_proj, ModernBERT's dense + norm ...
        assert torch.equal(student.state_dict()[k], v), k
    TaskModel(student, teacher.tokenizer, teacher.task, teacher.labels, 32).save_pretrained(tmp_path)
    info = inspect_model_dir(tmp_path)
    assert (info.family.name, info.role, info.task) == (teacher.head.family.name, "sequence", "classification")
    back = TaskModel.from_pretrained(tmp_path)
    ids, packing, types = packed(student.encoder)
    with torch.inference_mode():
        assert torch.allclose(back.head(ids, packing, types), student.eval()(ids, packing, types), atol=TOL)


# ---- structured pruning ---------------------------------------------------------------------------------------
HEADS = {0: [1, 3], 1: [0]}


def neurons_of(model):
    return {0: list(range(0, model.config.intermediate_size, 3)), 1: [5, 6, model.config.intermediate_size - 1]}


def masked_copy(model, heads, neurons):
    """The unpruned model with those heads' and neurons' outputs zeroed (their columns of attn_out / mlp_out)."""
    masked = copy.deepcopy(model)
    hd = model.config.head_dim
    with torch.no_grad():
        for i, hs in heads.items():
            for h in hs:
                masked.layers[i].attn_out.weight[:, h * hd:(h + 1) * hd] = 0
        for i, js in neurons.items():
            masked.layers[i].mlp_out.weight[:, js] = 0
    return masked


def states(model, path, grad=False):
    ids, mask, types = padded(model)
    with torch.enable_grad() if grad else torch.inference_mode():
        out = model(ids, mask, types, path=path)
    return out.last_hidden_state[mask.bool()].detach()


@pytest.mark.parametrize("variant", WITH_POS_PROJ)
def test_pruned_equals_masked_on_every_path_and_round_trips(base, variant, tmp_path):
    model = encoder(base(variant))
    neurons = neurons_of(model)
    masked = masked_copy(model, HEADS, neurons)
    pruned = prune_neurons(prune_heads(copy.deepcopy(model), HEADS), neurons)
    layer0 = pruned.layers[0]
    assert layer0.head_ids == [0, 2] and layer0.Wqkv.out_features == 3 * 2 * model.config.head_dim
    if layer0.pos_k is not None:  # DeBERTa's own position projections lose the same heads
        assert layer0.pos_k.out_features == layer0.pos_q.out_features == 2 * model.config.head_dim
    ref = states(pruned, "reference")
    for path in PATHS:
        assert (states(pruned, path) - states(masked, path)).abs().max().item() <= TOL, path
        assert (states(pruned, path) - ref).abs().max().item() <= TOL, path
        assert (states(pruned, path, grad=True) - ref).abs().max().item() <= TOL, path
    # saved in the family's layout with the per-layer sizes, and loaded back bit for bit
    pruned.config.save(tmp_path)
    save_weights(pruned, tmp_path)
    written = json.loads((tmp_path / "config.json").read_text())
    assert written["model_type"] == model.config.model_type and written["pruned_heads"] == {"0": [1, 3], "1": [0]}
    back, _ = load_pretrained(tmp_path)
    assert back.config.intermediate_sizes == pruned.config.intermediate_sizes
    for path in PATHS:
        assert torch.equal(states(back, path), states(pruned, path)), path


def run_kept_layers(model, keep, path="reference"):
    """The unpruned model's forward through layers ``keep`` only (embeddings, tables and final norm as usual)."""
    ids, mask, types = padded(model)
    b, s = ids.shape
    with torch.inference_mode():
        h = model.embeddings(ids, torch.arange(s).expand(b, s), torch.zeros_like(ids) if types is None else types)
        tables = model.position_tables(s, ids.device)
        for i in keep:
            h = model.layers[i](h, padded_attend(mask.bool(), path), tables, exact=True)
        if model.final_norm is not None:
            h = model.final_norm(h)
    return h[mask.bool()]


@pytest.mark.parametrize("variant", CORE)
def test_drop_layers_per_family(base, variant, tmp_path):
    model = encoder(base(variant))
    keep = [0, 2] if len(model.layers) == 3 else [0]
    want = run_kept_layers(model, keep)
    dropped = drop_layers(copy.deepcopy(model), keep)
    if variant == "modernbert":
        assert dropped.config.layer_types == ["full_attention", "full_attention"]  # of full, sliding, full
    for path in PATHS:
        assert (states(dropped, path) - want).abs().max().item() <= TOL, path
    dropped.config.save(tmp_path)
    save_weights(dropped, tmp_path)
    back, _ = load_pretrained(tmp_path)
    assert torch.equal(states(back, "unpadded"), states(dropped, "unpadded"))


def test_dropping_modernberts_first_layer_is_refused(base):
    model = encoder(base("modernbert"))
    with pytest.raises(PruningError, match=r"keep=\[1, 2\] drops layer 0.*modernbert.*first_layer_attn_norm.*keep "
                                           r"layer 0"):
        drop_layers(model, [1, 2])
    assert len(model.layers) == 3  # refused before anything changed


def test_a_bertkit_prenorm_model_may_drop_its_normless_first_layer(tmp_path):
    """In bertkit's own layout (model_type bert) the new first layer keeps its norm, and the config says so."""
    cfg = EncoderConfig(vocab_size=1000, hidden_size=32, num_hidden_layers=3, num_attention_heads=4,
                        intermediate_size=64, max_position_embeddings=64, prenorm=True, final_norm=True,
                        first_layer_attn_norm=False, position_embedding_type="rope", ffn_type="glu")
    torch.manual_seed(0)
    model = BertModel(cfg).eval()
    want = run_kept_layers(model, [1, 2])
    drop_layers(model, [1, 2])
    assert model.config.first_layer_attn_norm is True
    model.config.save(tmp_path)
    save_weights(model, tmp_path)
    back, _ = load_pretrained(tmp_path)
    for m in (model, back):
        assert (states(m, "unpadded") - want).abs().max().item() <= TOL


# ---- low-rank, quantized and sparse checkpoints ------------------------------------------------------------
def logits(tm: TaskModel, lengths=(12, 7, 7, 1)):
    ids, packing, types = packed(tm.head.encoder, list(lengths), seed=5)
    with torch.inference_mode():
        return tm.head.eval()(ids, packing, types)


@pytest.mark.parametrize("variant", ["roberta", "deberta-v3", "modernbert", "electra"])
def test_lowrank_checkpoint_per_family(tasks, variant, tmp_path):
    tm = TaskModel.from_pretrained(tasks(variant))
    report = factorize_model(tm, layers=("mlp_in", "attn_out"), ranks=4)
    assert all(r.rank == 4 for r in report.layers)
    want = logits(tm)
    save_lowrank(tm, tmp_path / "lr")
    config = json.loads((tmp_path / "lr" / "config.json").read_text())
    assert config["architectures"] == [tm.head.family.architecture(config["model_type"], "sequence")]
    info = inspect_model_dir(tmp_path / "lr")
    assert (info.format, info.family.name, info.task) == ("low-rank", tm.head.family.name, "classification")
    back = load_lowrank(tmp_path / "lr")
    assert set(lowrank_layers(back)) == set(lowrank_layers(tm))
    assert torch.allclose(logits(back), want, atol=TOL)
    densify(back)  # dense again: an ordinary checkpoint of the family, same predictions
    back.save_pretrained(tmp_path / "dense")
    assert torch.allclose(logits(TaskModel.from_pretrained(tmp_path / "dense")), want, atol=1e-4)


@pytest.mark.parametrize("variant", ["roberta", "deberta-v3", "deberta-v2", "modernbert", "mpnet", "distilbert"])
def test_quantized_sparse_checkpoint_per_family(tasks, variant, tmp_path):
    tm = TaskModel.from_pretrained(tasks(variant))
    magnitude_masks(tm, 0.6).apply(tm)
    names = quantize_weights(tm, bits=8, group_size=16)
    assert not any(n.split(".")[0] in ("classifier", "dense") for n in names)  # the encoder layers only
    want = logits(tm)
    save_compressed(tm, tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["architectures"] == [tm.head.family.architecture(config["model_type"], "sequence")]
    assert config["quantization"]["sparse"]  # >= 50% zeros: stored as mask + values
    back = load_compressed(tmp_path)
    assert torch.equal(logits(back), want)
    served = load_model(tmp_path)  # dequantized once, as the pipeline serves it
    assert torch.allclose(logits(served), want, atol=1e-5)


# ---- merging ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("variant", ["roberta", "deberta-v3", "modernbert"])
def test_merge_and_multihead_per_family(base, tasks, variant, tmp_path):
    a = TaskModel.from_pretrained(tasks(variant))
    b = TaskModel.from_pretrained(tasks(variant))
    torch.manual_seed(1)
    with torch.no_grad():  # two "fine-tunes" of the saved encoder
        for m, scale in ((a, 0.01), (b, -0.02)):
            for p in m.head.encoder.parameters():
                p.add_(torch.randn_like(p) * scale)
    base_encoder = encoder(base(variant))
    merged = merge(base(variant), {"a": a, "b": b})  # the base as a directory, loaded by the one loader
    deltas = [task_vectors(base_encoder, m) for m in (a, b)]
    for k, v in merged.state_dict().items():
        if v.is_floating_point():
            want = base_encoder.state_dict()[k].double() + 0.5 * (deltas[0][k] + deltas[1][k])
            assert torch.allclose(v.double(), want, atol=1e-6), k
    multi = merge_task_models(base(variant), {"a": a, "b": b})
    multi.save(tmp_path)
    back = MultiHeadModel.load(tmp_path)
    assert back.tasks == ["a", "b"]
    for name in ("a", "b"):
        assert torch.allclose(logits(back[name]), logits(multi[name]), atol=TOL)
    assert back.predict(TEXTS, task="a") == multi.predict(TEXTS, task="a")
    other = copy.deepcopy(base_encoder)  # same tensors, another family: never merged
    other.config = dataclasses.replace(other.config, model_type="bert", extra={})
    own = base_encoder.config.model_type
    with pytest.raises(ValueError, match=f"model_type='bert', the base has model_type='{own}'"):
        merge(base_encoder, {"other": other})


# ---- the pipeline --------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def data(tmp_path_factory):
    d = tmp_path_factory.mktemp("data")
    return {"train_file": write_csv(d / "train.csv", 48, 0), "eval_file": write_csv(d / "eval.csv", 16, 1),
            "test_file": write_csv(d / "test.csv", 16, 2), "throughput_texts": 8}


def test_compress_cli_runs_a_recipe_on_a_deberta_task_model(data, tmp_path):
    """distill (a layer of the teacher) -> structured heads -> int8 weights, on DeBERTa-v3, through the CLI."""
    task_model("deberta-v3", tmp_path / "model", labels=("neg", "pos"))
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(json.dumps({**data, "steps": [
        {"distill": {"student_layers": [1], "max_steps": 2, "batch_size": 8}},
        {"structured": {"head_fraction": 0.25, "importance_batches": 1, "batch_size": 8}},
        {"quantize": {"mode": "weight_only", "bits": 8, "group_size": 16}}]}))
    out = tmp_path / "out"
    assert main(["-q", "compress", str(tmp_path / "model"), "--recipe", str(recipe), "--output", str(out)]) == 0
    report = json.loads((out / "report.json").read_text())
    rows = report["steps"]
    assert report["status"] == "ok" and [r["format"] for r in rows] == ["hf", "hf", "hf", "compressed"]
    assert [r["layers"] for r in rows] == [2, 1, 1, 1] and rows[2]["heads"] == 3
    dev = read_task_file(data["eval_file"], "classification")
    for r in rows:
        tm = load_model(out / r["dir"])
        assert tm.head.encoder.config.model_type == "deberta-v2"
        assert tm.evaluate(dev)["accuracy"] == pytest.approx(r["eval"])
    assert inspect_model_dir(out / rows[2]["dir"]).describe().startswith("deberta-v2 sequence classifier")


def test_pipeline_drop_layers_and_lowrank_on_roberta(data, tmp_path):
    task_model("roberta", tmp_path / "model", labels=("neg", "pos"))
    report = pipeline.run_pipeline(tmp_path / "model", {**data, "steps": [
        {"drop_layers": {"keep": [1], "finetune_steps": 1, "batch_size": 8}},
        {"lowrank": {"ranks": 4, "finetune_steps": 1, "batch_size": 8}}]}, tmp_path / "out")
    rows = report["steps"]
    assert [r["format"] for r in rows] == ["hf", "hf", "lowrank"]
    dev = read_task_file(data["eval_file"], "classification")
    for r in rows:
        tm = load_model(tmp_path / "out" / r["dir"])
        assert tm.head.encoder.config.model_type == "roberta"
        assert tm.evaluate(dev)["accuracy"] == pytest.approx(r["eval"])


def test_the_pipeline_refuses_dropping_modernberts_first_layer_before_any_work(tasks, data, tmp_path):
    out = tmp_path / "out"
    with pytest.raises(ConfigError, match=r"step 1 \(drop_layers.*drops layer 0.*keep layer 0"):
        pipeline.run_pipeline(tasks("modernbert"), {**data, "steps": [{"drop_layers": {"keep": [1, 2]}}]}, out)
    assert not out.exists()


@pytest.mark.parametrize("variant", ["modernbert", "deberta-v3"])
def test_general_then_task_distillation_per_family(base, variant, data, tmp_path):
    """distill_general from a family's encoder (its tokenizer, specials and attention), then a task distillation
    that starts from that student (``student_model``) under a task teacher of the family."""
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    for i, text in enumerate(TEXTS * 4):
        (corpus / f"doc{i}.txt").write_text(text + " " + " ".join(TEXTS))
    teacher = encoder(base(variant))
    out = tmp_path / "general"
    distill_general(out, teacher=str(base(variant)), student_layers=[0, len(teacher.layers) - 1], corpus=[str(corpus)],
                    cache_dir=str(tmp_path / "cache"), max_length=24, eval_sequences=2, alpha_hidden=1, max_steps=2,
                    batch_size=4, progress=False)
    info = inspect_model_dir(out)
    assert (info.family.name, info.format, info.role) == (family_of(teacher.config).name, "hf", "encoder")
    assert Tokenizer.from_dir(out).fingerprint() == Tokenizer.from_dir(base(variant)).fingerprint()
    student = encoder(out)
    assert len(student.layers) == 2 and student.config.layer_types == (
        None if teacher.config.layer_types is None else [teacher.config.layer_types[0], teacher.config.layer_types[-1]])
    task_model(variant, tmp_path / "teacher", labels=("neg", "pos"))
    result = distill(tmp_path / "task", teachers=[str(tmp_path / "teacher")], student_model=str(out),
                     train_file=data["train_file"], eval_file=data["eval_file"], alpha_attn=1, alpha_value=1,
                     max_steps=2, batch_size=8, progress=False)
    back = TaskModel.from_pretrained(tmp_path / "task")
    assert back.head.encoder.config.model_type == teacher.config.model_type and len(back.head.encoder.layers) == 2
    assert result.dev is not None
