"""Structured pruning: sliced matrices equal masked units, shrunk checkpoints round-trip, importance, schedules."""

import copy
import dataclasses
import itertools
import json

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file

from bertkit.compress.structured import (
    Importance,
    PruningError,
    drop_layers,
    head_importance,
    latency_measure,
    layer_sizes,
    neuron_importance,
    prune_by_importance,
    prune_heads,
    prune_neurons,
    prune_to_speedup,
    taylor_importance,
)
from bertkit.data.features import make_batch
from bertkit.data.tasks import TaskData
from bertkit.data.tokenizer import WordPieceTokenizer
from bertkit.errors import CheckpointError, ConfigError
from bertkit.model.attention import PATHS, padded_attend
from bertkit.model.bert import BertModel
from bertkit.model.config import EncoderConfig
from bertkit.model.weights import load_pretrained, save_weights
from bertkit.task_model import TaskModel, build_head

TOL = 1e-5
LENGTHS = [1, 17, 5, 5, 30]
HD = 8  # head_dim of the tiny configs
VARIANTS = {
    "bert": {},
    "mosaicbert-like": {"position_embedding_type": "alibi", "ffn_type": "glu"},  # ALiBi slopes follow the heads
    "modernbert-like": {"prenorm": True, "ffn_type": "glu", "position_embedding_type": "rope", "use_bias": False,
                        "final_norm": True},
}
HEADS = {0: [1, 3], 1: [0]}
NEURONS = {0: list(range(0, 64, 3)), 1: [5, 6, 63]}


@pytest.fixture(autouse=True)
def _one_thread(one_thread):
    yield


def tiny_model(layers=2, seed=0, **options) -> BertModel:
    cfg = EncoderConfig(vocab_size=100, hidden_size=32, num_hidden_layers=layers, num_attention_heads=4,
                        intermediate_size=64, max_position_embeddings=64, hidden_dropout_prob=0.0,
                        attention_probs_dropout_prob=0.0, **options)
    torch.manual_seed(seed)
    model = BertModel(cfg).eval()
    with torch.no_grad():  # non-trivial biases and LayerNorms, so a misplaced slice shows
        for name, p in model.named_parameters():
            if "norm" in name or name.endswith("bias"):
                p.add_(torch.randn_like(p) * 0.1)
    return model


def padded_batch(lengths=LENGTHS, vocab=100, seed=0):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(1, vocab, (len(lengths), max(lengths)), generator=g)
    mask = torch.zeros_like(ids)
    tt = torch.zeros_like(ids)
    for i, n in enumerate(lengths):
        mask[i, :n] = 1
        ids[i, n:] = 0
        tt[i, n // 2:n] = 1
    return ids, mask, tt


def masked_copy(model, heads, neurons):
    """The unpruned model with those heads' and neurons' outputs zeroed (their columns of attn_out / mlp_out)."""
    masked = copy.deepcopy(model)
    with torch.no_grad():
        for i, hs in heads.items():
            for h in hs:
                masked.layers[i].attn_out.weight[:, h * HD:(h + 1) * HD] = 0
        for i, js in neurons.items():
            masked.layers[i].mlp_out.weight[:, js] = 0
    return masked


def outputs(model, path, grad=False):
    ids, mask, tt = padded_batch()
    with torch.enable_grad() if grad else torch.inference_mode():
        out = model(ids, mask, tt, path=path)
    m = mask.bool()
    return out.last_hidden_state[m].detach(), out.pooler_output.detach()


def max_diff(a, b):
    return max((x - y).abs().max().item() for x, y in zip(a, b, strict=True))


def regression_loss(model, batch):
    ids, mask, target = batch
    h = model(ids, mask).last_hidden_state
    return F.mse_loss(h, target.to(h.dtype))


def calibration(n=2):
    ids, mask, _ = padded_batch()
    g = torch.Generator().manual_seed(1)
    return [(ids, mask, torch.randn(*ids.shape, 32, generator=g, dtype=torch.float64)) for _ in range(n)]


# ---- sliced == masked, on every path ------------------------------------------------------------------
@pytest.mark.parametrize("name", VARIANTS)
def test_pruned_equals_masked_on_every_path(name):
    model = tiny_model(**VARIANTS[name])
    masked = masked_copy(model, HEADS, NEURONS)
    pruned = prune_neurons(prune_heads(copy.deepcopy(model), HEADS), NEURONS)
    glu = 2 if name != "bert" else 1
    assert pruned.layers[0].Wqkv.weight.shape == (3 * 2 * HD, 32) and pruned.layers[0].attn_out.weight.shape == (32, 16)
    assert pruned.layers[1].Wqkv.weight.shape == (3 * 3 * HD, 32) and pruned.layers[1].head_ids == [1, 2, 3]
    assert pruned.layers[0].mlp_in.weight.shape == (glu * 42, 32) and pruned.layers[0].mlp_out.weight.shape == (32, 42)
    assert pruned.config.pruned_heads == {0: [1, 3], 1: [0]} and pruned.config.intermediate_sizes == [42, 61]
    ref = outputs(pruned, "reference")
    for path in PATHS:
        assert max_diff(outputs(pruned, path), outputs(masked, path)) <= TOL, path
        assert max_diff(outputs(pruned, path), ref) <= TOL, path  # the paths agree on the pruned model
        assert max_diff(outputs(pruned, path, grad=True), ref) <= TOL, path  # training-style formula too


def test_pruning_twice_merges_head_ids():
    model = tiny_model()
    prune_heads(model, {0: [1]})
    prune_heads(model, {0: [3], 1: [2]})  # ids of the unpruned layer, whatever was pruned before
    assert model.config.pruned_heads == {0: [1, 3], 1: [2]}
    assert model.layers[0].head_ids == [0, 2]
    reference = masked_copy(tiny_model(), {0: [1, 3], 1: [2]}, {})
    assert max_diff(outputs(model, "unpadded"), outputs(reference, "unpadded")) <= TOL


# ---- checkpoints --------------------------------------------------------------------------------------
def test_shrunk_checkpoint_round_trips_in_bertkit(tmp_path):
    model = prune_neurons(prune_heads(tiny_model(layers=3, ffn_type="glu"), HEADS), NEURONS)
    drop_layers(model, [0, 2])
    model.config.save(tmp_path)
    save_weights(model, tmp_path)
    written = json.loads((tmp_path / "config.json").read_text())
    assert written["pruned_heads"] == {"0": [1, 3]} and written["intermediate_sizes"] == [42, 64]
    assert load_file(tmp_path / "model.safetensors")["encoder.layer.0.attention.self.key.weight"].shape == (16, 32)
    back, _ = load_pretrained(tmp_path)
    as_saved = dataclasses.replace(model.config, extra={"architectures": ["BertModel"]})
    assert back.config == as_saved and EncoderConfig.from_dict(as_saved.to_dict()) == as_saved
    for k, v in model.state_dict().items():
        assert torch.equal(back.state_dict()[k], v), k
    for path in PATHS:
        assert max_diff(outputs(back, path), outputs(model, path)) == 0, path


def test_shrunk_checkpoint_checks_shapes_strictly(tmp_path):
    model = prune_heads(tiny_model(), HEADS)
    model.config.save(tmp_path)
    save_weights(prune_heads(tiny_model(), {0: [1], 1: [0]}), tmp_path)  # weights pruned differently
    with pytest.raises(CheckpointError, match=r"encoder.layer.0.attention.self.query.weight' has shape \(24, 32\)"):
        load_pretrained(tmp_path)


def _prune_like_transformers_4(hf, pruned_heads):
    """What transformers 4.x's BertModel did at init for config.pruned_heads (removed in transformers 5)."""
    from transformers.pytorch_utils import prune_linear_layer

    for layer_id, heads in pruned_heads.items():
        att = hf.encoder.layer[int(layer_id)].attention
        n, hd = att.self.num_attention_heads, att.self.attention_head_size
        keep = torch.tensor([h for h in range(n) if h not in heads])
        index = (keep[:, None] * hd + torch.arange(hd)).flatten()
        for name in ("query", "key", "value"):
            setattr(att.self, name, prune_linear_layer(getattr(att.self, name), index))
        att.output.dense = prune_linear_layer(att.output.dense, index, dim=1)
        att.self.num_attention_heads = len(keep)
        att.self.all_head_size = len(keep) * hd


def test_head_pruned_checkpoint_loads_in_transformers(tmp_path):
    transformers = pytest.importorskip("transformers")
    model = prune_heads(tiny_model(position_embedding_type="absolute"), HEADS)
    model.config.save(tmp_path)
    save_weights(model, tmp_path)
    if hasattr(transformers.BertModel, "prune_heads"):  # transformers 4.x prunes config.pruned_heads at init
        hf = transformers.BertModel.from_pretrained(tmp_path, attn_implementation="eager").eval()
    else:  # transformers 5 removed head pruning: rebuild 4.x's pruned BertModel, then load our file strictly
        cfg = transformers.BertConfig.from_pretrained(tmp_path)
        hf = transformers.BertModel(cfg, add_pooling_layer=True)
        _prune_like_transformers_4(hf, json.loads((tmp_path / "config.json").read_text())["pruned_heads"])
        hf.load_state_dict(load_file(tmp_path / "model.safetensors"), strict=True)
        hf.eval()
    ids, mask, tt = padded_batch()
    with torch.inference_mode():
        ref = hf(input_ids=ids, attention_mask=mask, token_type_ids=tt)
    m = mask.bool()
    for path in PATHS:
        assert max_diff(outputs(model, path), (ref.last_hidden_state[m], ref.pooler_output)) <= TOL, path


def test_pruned_task_model_saves_and_loads(tmp_path, tiny_dir):
    encoder, _ = load_pretrained(tiny_dir)
    torch.manual_seed(0)
    tm = TaskModel(build_head(encoder, "classification", 3), WordPieceTokenizer.from_dir(tiny_dir), "classification",
                   ["neg", "neu", "pos"], max_length=32)
    texts = ["a short text", "another one that is somewhat longer than the first", "x"]
    data = TaskData("classification", texts, None, ["neg", "pos", "neu"], None, "test")
    batches = [make_batch(tm.featurize(data), [0, 1, 2])]
    imp = taylor_importance(tm.head, batches, tm.loss)  # TaskModel.loss is a loss_fn
    prune_by_importance(tm.head, 0.25, 0.5, imp)
    sizes = layer_sizes(tm.head)
    assert (sum(sizes["heads"]), sum(sizes["intermediate"])) == (6, 64)  # a quarter of 8 heads, half of 128 neurons
    before = tm.predict(texts)
    tm.save_pretrained(tmp_path)
    back = TaskModel.from_pretrained(tmp_path, device="cpu")
    assert back.head.encoder.config.pruned_heads == tm.head.encoder.config.pruned_heads
    after = back.predict(texts)
    for a, b in zip(before, after, strict=True):
        assert a["label"] == b["label"]
        for k, p in a["probabilities"].items():
            assert b["probabilities"][k] == pytest.approx(p, abs=1e-5)


# ---- importance ---------------------------------------------------------------------------------------
def test_importance_shapes_and_a_silent_head_scores_zero():
    model = tiny_model()
    prune_heads(model, {1: [0]})
    with torch.no_grad():
        model.layers[0].attn_out.weight[:, 2 * HD:3 * HD] = 0  # head 2 of layer 0 writes nothing
        model.layers[1].mlp_out.weight[:, 7] = 0  # nor does neuron 7 of layer 1
    model.train()
    flags = [p.requires_grad for p in model.parameters()]
    imp = taylor_importance(model.double(), calibration(), regression_loss)
    assert [s.shape for s in imp.heads] == [(4,), (3,)] and [s.shape for s in imp.neurons] == [(64,), (64,)]
    assert imp.heads[0][2] == 0 and bool((imp.heads[0][[0, 1, 3]] > 1e-8).all())
    assert imp.neurons[1][7] == 0 and int((imp.neurons[1] > 0).sum()) == 63
    assert model.training and [p.requires_grad for p in model.parameters()] == flags  # restored
    assert all(p.grad is None for p in model.parameters())
    assert all(torch.equal(a, b) for a, b in zip(head_importance(model, calibration(), regression_loss), imp.heads,
                                                 strict=True))
    assert all(torch.equal(a, b) for a, b in zip(neuron_importance(model, calibration(), regression_loss),
                                                 imp.neurons, strict=True))


def test_importance_is_the_gate_gradient():
    """|dL/dg| by central differences: scaling a head's attn_out columns by g is the gate."""
    model = tiny_model().double()
    batch = calibration(1)
    imp = head_importance(model, batch, regression_loss)
    eps = 1e-6
    for layer, head in [(0, 1), (1, 3)]:
        losses = []
        for g in (1 + eps, 1 - eps):
            m = copy.deepcopy(model)
            with torch.no_grad():
                m.layers[layer].attn_out.weight[:, head * HD:(head + 1) * HD] *= g
                losses.append(regression_loss(m, batch[0]).item())
        assert abs(losses[0] - losses[1]) / (2 * eps) == pytest.approx(imp[layer][head].item(), rel=1e-5)


def test_importance_errors():
    model = tiny_model()
    with pytest.raises(ValueError, match="no calibration batches"):
        taylor_importance(model, [], regression_loss)
    with pytest.raises(ValueError, match="scalar tensor"):
        taylor_importance(model, calibration(1), lambda m, b: 1.0)
    with pytest.raises(TypeError, match="BertModel or a task head"):
        head_importance(torch.nn.Linear(2, 2), calibration(1), regression_loss)


# ---- global ranking ------------------------------------------------------------------------------------
def test_prune_by_importance_counts_and_floor():
    model = tiny_model()
    neurons = [torch.arange(64, dtype=torch.float32), torch.arange(64, dtype=torch.float32) + 100]
    imp = Importance([torch.tensor([0.0, 0.1, 0.2, 0.3]), torch.tensor([5.0, 6, 7, 8])], neurons)
    # half of 8 heads: layer 0 gives 3 (it keeps one), layer 1 its least important; 30% of 128 neurons = 38
    plan = prune_by_importance(model, 0.5, 0.3, imp)
    assert plan.heads == {0: [0, 1, 2], 1: [0]} and plan.neurons == {0: list(range(38))}
    assert layer_sizes(model) == {"heads": [1, 3], "intermediate": [26, 64]}
    assert model.layers[0].head_ids == [3] and model.config.pruned_heads == {0: [0, 1, 2], 1: [0]}
    with pytest.raises(PruningError, match=r"importance.heads\[0\] has shape \(4,\), layer 0 has 1 heads"):
        prune_by_importance(model, 0.25, 0.0, imp)  # stale scores
    # a callable is asked for scores of the model as it is: current positions, original head ids in the config
    plan = prune_by_importance(model, 0.25, 0.0, lambda m: Importance([torch.ones(1), torch.tensor([0.0, 1, 2])],
                                                                      []))
    assert plan.heads == {1: [1]} and model.config.pruned_heads == {0: [0, 1, 2], 1: [0, 1]}
    with pytest.raises(PruningError, match="at most 1"):
        prune_by_importance(model, 0.5, 0.0, imp)  # 2 of 3 heads asked, 1 can go
    with pytest.raises(PruningError, match=r"head_fraction must be in \[0, 1\)"):
        prune_by_importance(model, 1.0, 0.0, imp)


# ---- layers ---------------------------------------------------------------------------------------------
def test_drop_layers():
    model = prune_neurons(prune_heads(tiny_model(layers=4), {1: [0], 3: [2, 3]}), {2: [0, 1]})
    ids, mask, tt = padded_batch()
    with torch.inference_mode():  # layers 1 and 3 by hand
        h = model.embeddings(ids, torch.arange(ids.shape[1]).expand_as(ids), tt)
        tables = model.position_tables(ids.shape[1], ids.device)
        for i in (1, 3):
            h = model.layers[i](h, padded_attend(mask.bool(), "reference"), tables, exact=True)
    drop_layers(model, [1, 3])
    assert model.config.num_hidden_layers == 2 and len(model.layers) == 2
    assert model.config.pruned_heads == {0: [0], 1: [2, 3]} and model.config.intermediate_sizes == [64, 64]
    with torch.inference_mode():
        assert (model(ids, mask, tt, path="reference").last_hidden_state - h).abs().max() == 0
    for keep, match in [([], "empty"), ([0, 2], "layer 2 does not exist"), ([1, 0], "increasing order")]:
        with pytest.raises(PruningError, match=match):
            drop_layers(model, keep)


# ---- prune_to_speedup ---------------------------------------------------------------------------------------
def fake_time(model):
    """Deterministic 'latency': a fixed cost plus one per head and a twentieth per FFN neuron."""
    sizes = layer_sizes(model)
    return 2.0 + sum(sizes["heads"]) + 0.05 * sum(sizes["intermediate"])


def random_importance(model):
    g = torch.Generator().manual_seed(sum(layer_sizes(model)["intermediate"]))
    sizes = layer_sizes(model)
    return Importance([torch.rand(n, generator=g) for n in sizes["heads"]],
                      [torch.rand(n, generator=g) for n in sizes["intermediate"]])


@pytest.mark.parametrize("source", ["fixed", "callable"])
def test_prune_to_speedup_stops_at_target(source):
    model = tiny_model()
    importance = random_importance(model) if source == "fixed" else random_importance
    model, history = prune_to_speedup(model, 1.5, importance, measure=fake_time, step=0.1)
    base = 2.0 + 8 + 0.05 * 128
    assert history[0] == (0, {"heads": [4, 4], "intermediate": [64, 64]}, 1.0)
    assert [s.step for s in history] == list(range(len(history)))
    first = history[1].sizes
    assert sum(first["heads"]) == 7 and sum(first["intermediate"]) == 128 - 13  # 10% of 8 and of 128, rounded
    assert history[-1].speedup >= 1.5 > history[-2].speedup
    assert history[-1].speedup == pytest.approx(base / fake_time(model))
    assert history[-1].sizes == layer_sizes(model)
    assert all(a.speedup < b.speedup for a, b in itertools.pairwise(history))


def test_prune_to_speedup_errors():
    with pytest.raises(PruningError, match="target_speedup must be > 1"):
        prune_to_speedup(tiny_model(), 1.0, random_importance, measure=fake_time)
    model = tiny_model()
    with pytest.raises(PruningError, match="out of reach") as e:
        prune_to_speedup(model, 100.0, random_importance, measure=fake_time, step=0.5)
    assert layer_sizes(model) == {"heads": [1, 1], "intermediate": [1, 1]}  # left at the floor, as it says
    assert e.value.history[-1].sizes == layer_sizes(model)


def test_default_measure_times_the_encoder():
    measure = latency_measure(batch_size=4, max_length=16, runs=2)
    model = tiny_model()
    model.train()
    assert measure(model) > 0 and model.training


# ---- errors ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("change", "match"),
    [
        ({"pruned_heads": {"5": [0]}}, "'pruned_heads' names layer 5"),
        ({"pruned_heads": {"0": [4]}}, "'pruned_heads' lists head 4 for layer 0"),
        ({"pruned_heads": {"1": [0, 1, 2, 3]}}, "'pruned_heads' removes all 4 heads of layer 1"),
        ({"pruned_heads": {"x": [0]}}, "'pruned_heads' has key 'x'"),
        ({"pruned_heads": [[0, 1]]}, "'pruned_heads' must be an object"),
        ({"pruned_heads": {"0": "1"}}, "'pruned_heads' for layer '0' must be a list"),
        ({"intermediate_sizes": [64]}, "'intermediate_sizes' has 1 entries for 2 layers"),
        ({"intermediate_sizes": [64, 0]}, "'intermediate_sizes' gives layer 1 size 0"),
        ({"intermediate_sizes": [64, 1.5]}, "'intermediate_sizes' must be a list of ints"),
    ],
)
def test_config_errors_name_the_field(tmp_path, change, match):
    d = tiny_model().config.to_dict() | change
    (tmp_path / "config.json").write_text(json.dumps(d))
    with pytest.raises(ConfigError, match=match) as e:
        EncoderConfig.from_json_file(tmp_path / "config.json")
    assert "config.json" in str(e.value)


def test_pruning_errors_name_the_problem():
    model = prune_heads(tiny_model(), {0: [1]})
    cases = [
        (lambda: prune_heads(model, {0: [1]}), "head 1 of layer 0 is already pruned"),
        (lambda: prune_heads(model, {0: [4]}), "layer 0 has no head 4"),
        (lambda: prune_heads(model, {0: [0, 2, 3]}), "would remove every head of layer 0"),
        (lambda: prune_heads(model, {2: [0]}), "layer 2 does not exist"),
        (lambda: prune_neurons(model, {1: [64]}), "layer 1 has no neuron 64"),
        (lambda: prune_neurons(model, {1: range(64)}), "every FFN neuron of layer 1"),
        (lambda: prune_neurons(model, {1: [0.5]}), "ids must be ints"),
    ]
    for call, match in cases:
        with pytest.raises(PruningError, match=match):
            call()
    assert model.config.pruned_heads == {0: [1]} and model.config.intermediate_sizes is None  # untouched
    model.layers[1].attn_out = torch.nn.Identity()  # e.g. an int8 layer
    with pytest.raises(PruningError, match=r"layers\.1\.attn_out is Identity, not nn\.Linear"):
        prune_heads(model, {1: [0]})
