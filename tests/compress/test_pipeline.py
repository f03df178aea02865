"""The compression pipeline on a tiny random task model and a synthetic dataset in files: recipe errors before any
work, a 3-step run (step dirs, report, plot, sizes), and a failed step that leaves the earlier steps and a report."""

import json
import random
import shutil

import pytest
import torch

from bertkit.cli.main import main
from bertkit.compress import pipeline, quantize
from bertkit.compress.pipeline import CompressionError, load_model, load_recipe, run_pipeline
from bertkit.data.tasks import read_task_file
from bertkit.data.tokenizer import WordPieceTokenizer
from bertkit.errors import ConfigError
from bertkit.model.weights import load_pretrained
from bertkit.task_model import TaskModel, build_head

pytestmark = pytest.mark.usefixtures("one_thread")

WORDS = "good great love best music film game war death king river water night school city team".split()


def write_csv(path, n, seed):
    rnd = random.Random(seed)
    rows = []
    for _ in range(n):
        text = " ".join(rnd.choices(WORDS, k=rnd.randint(2, 6)))
        rows.append(f"{text},{'pos' if 'good' in text or 'great' in text else 'neg'}\n")
    path.write_text("text,label\n" + "".join(rows))
    return str(path)


@pytest.fixture(scope="module")
def model_dir(tiny_dir, tmp_path_factory):
    """A 2-layer, 4-head tiny task model (random classifier) saved in the HF task layout."""
    encoder, _ = load_pretrained(tiny_dir)
    torch.manual_seed(0)
    tm = TaskModel(build_head(encoder, "classification", 2), WordPieceTokenizer.from_dir(tiny_dir),
                   "classification", ["neg", "pos"], 32)
    return tm.save_pretrained(tmp_path_factory.mktemp("model"))


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    d = tmp_path_factory.mktemp("data")
    return {"train_file": write_csv(d / "train.csv", 48, 0), "eval_file": write_csv(d / "eval.csv", 16, 1),
            "test_file": write_csv(d / "test.csv", 16, 2), "throughput_texts": 8}


PRUNE = {"prune": {"method": "magnitude", "sparsity": 0.5, "steps": 4, "prune_every": 1, "batch_size": 8,
                   "lr": 1e-3}}
STRUCTURED = {"structured": {"head_fraction": 0.25, "importance_batches": 2, "batch_size": 8}}
DYNAMIC = {"quantize": {"mode": "dynamic"}}


@pytest.mark.parametrize("steps, message", [
    ([{"squeeze": {}}], r"step 1: unknown step kind 'squeeze'; known: distill, prune"),
    ([{"prune": {"sparsity": 1.5}}], r"step 1 \(prune\): sparsity=1.5: must be in \[0, 1\)"),
    ([DYNAMIC, {"quantize": {"mode": "weight_only", "bits": 4}}],
     r"step 2 \(quantize int4\): the model is already int8 \(step 1 \(quantize int8 dynamic\)\)"),
    ([{"lowrank": {}}, PRUNE], r"step 2 \(prune magnitude 50%\): the model is already low-rank"),
    ([{"structured": {"head_frac": 0.2}}], r"step 1 \(structured\): unknown setting\(s\) head_frac"),
    ([{"structured": {}}], r"step 1 \(structured\): nothing to prune"),
    ([{"quantize": {"mode": "static", "bits": 4}}], r"step 1 \(quantize\): bits=4: static quantization is int8"),
    ([{"distill": {"student_layers": [0], "dataset": "bbc-news"}}],
     r"step 1 \(distill\): dataset: set once in the recipe, for every step"),
    ([{"prune": {"epochs": 1, "steps": 5}}], r"step 1 \(prune\): give steps or epochs, not both"),
    ([{"distill": {"student_layers": [0], "seed": 3}}], r"step 1 \(distill\): seed: distill's seed also splits"),
    ([], r"the recipe has no steps"),
])
def test_recipe_errors_name_the_step(steps, message):
    with pytest.raises(ConfigError, match=message):
        load_recipe({"steps": steps})


def test_recipe_yaml_overrides_and_the_shipped_recipes(tmp_path):
    f = tmp_path / "r.yaml"
    f.write_text("seed: 3\nsteps:\n  - prune: {sparsity: 0.5, steps: 10}\n  - quantize:\n")
    recipe = load_recipe(f, ["throughput_texts=16", "steps.1.sparsity=0.9", "steps.2.mode=weight_only",
                             "steps.2.bits=4"])
    assert recipe.seed == 3 and recipe.throughput_texts == 16
    assert recipe.steps == [{"prune": {"sparsity": 0.9, "steps": 10}}, {"quantize": {"mode": "weight_only",
                                                                                     "bits": 4}}]
    with pytest.raises(ConfigError, match=r"steps.K.param=value with K a step number 1..2"):
        load_recipe(f, ["steps.3.sparsity=0.9"])
    with pytest.raises(ConfigError, match="unknown setting"):
        load_recipe(f, ["sed=1"])
    for name in ("int8", "distill-int8", "prune-int4", "speed"):
        assert load_recipe(name).steps  # every shipped recipe parses and validates


def test_embeddings_option_is_validated():
    recipe = {"steps": [{"quantize": {"mode": "weight_only", "bits": 4, "embeddings": 4}}]}
    if hasattr(quantize, "quantize_embeddings"):
        assert load_recipe(recipe).steps
    else:
        with pytest.raises(ConfigError, match="embedding quantization is not supported yet"):
            load_recipe(recipe)
    with pytest.raises(ConfigError, match="embeddings=3: false, 8 or 4"):
        load_recipe({"steps": [{"quantize": {"embeddings": 3}}]})


@pytest.mark.skipif(not hasattr(quantize, "quantize_embeddings"), reason="no embedding quantization in this bertkit")
def test_int4_with_int4_embeddings_shrinks_the_embedding_dominated_model(model_dir, data, tmp_path):
    out = tmp_path / "out"
    report = run_pipeline(model_dir, {**data, "steps": [{"quantize": {"mode": "weight_only", "bits": 4,
                                                                      "group_size": 32, "embeddings": 4}}]}, out)
    base, q = report["steps"]
    assert q["details"]["quantized_layers"] == 10  # 2 x 4 encoder Linears + the word and position tables
    kinds = base["size_report"]["kinds_mb"], q["size_report"]["kinds_mb"]
    assert kinds[1]["embeddings"] < 0.2 * kinds[0]["embeddings"] and q["size_x"] > 3
    assert q["parameters"] == base["parameters"]  # counted as the float model would count them
    tm = load_model(out / q["dir"])  # served: float Linears and embeddings, dequantized once
    assert not any(isinstance(m, quantize._QUANTIZED) for m in tm.head.modules())
    assert tm.evaluate(read_task_file(data["eval_file"], "classification"))["accuracy"] == pytest.approx(q["eval"])


@pytest.mark.parametrize("steps, message", [
    ([{"distill": {"student_layers": [0, 5]}}], r"step 1 \(distill layers 0,5\): .*layer 5 is out of range"),
    ([{"drop_layers": {"keep": [0]}}, {"lowrank": {"layers": ["layers.1.mlp_in"]}}],
     r"step 2 \(lowrank energy 0.9\): layers: layers.1.mlp_in does not exist; the model has layers 0..0 here"),
])
def test_errors_that_need_the_model_come_before_any_work(model_dir, data, tmp_path, steps, message):
    out = tmp_path / "out"
    with pytest.raises(ConfigError, match=message):
        run_pipeline(model_dir, {**data, "steps": steps}, out)
    with pytest.raises(ConfigError, match=r"eval_split='test'|no such split"):
        run_pipeline(model_dir, {"train_file": data["train_file"], "eval_file": data["eval_file"],
                                 "eval_split": "test", "steps": [DYNAMIC]}, out)
    assert not out.exists()


def test_three_steps_write_models_report_and_plot(model_dir, data, tmp_path):
    out = tmp_path / "out"
    report = run_pipeline(model_dir, {**data, "steps": [PRUNE, STRUCTURED, DYNAMIC]}, out)
    names = ["step_0_original", "step_1_prune", "step_2_structured", "step_3_quantize"]
    assert sorted(p.name for p in out.iterdir()) == sorted([*names, "report.json", "report.md", "pareto.png"])
    assert report == json.loads((out / "report.json").read_text()) and report["status"] == "ok"
    rows = report["steps"]
    assert [r["dir"] for r in rows] == names and [r["label"] for r in rows] == [
        "original", "prune magnitude 50%", "structured heads 25% neurons 0%", "quantize int8 dynamic"]
    for r in rows:
        assert 0 <= r["eval"] <= 1 and 0 <= r["test"] <= 1 and r["tokens_per_s"] > 0 and r["throughput_tokens"] > 0
        assert r["size_mb"] == pytest.approx(sum(p.stat().st_size for p in (out / r["dir"]).iterdir()
                                                 if p.is_file()) / 1e6, abs=1e-4)
    assert rows[0]["size_x"] == rows[0]["speed_x"] == 1 and rows[0]["drop_points"] == 0
    assert rows[1]["sparsity"] == pytest.approx(0.5, abs=0.01) and rows[1]["details"]["sparsity"] == pytest.approx(0.5)
    assert (rows[0]["heads"], rows[2]["heads"]) == (8, 6)
    assert rows[3]["sparsity"] > 0.45  # int8 keeps the pruned zeros (round(0) = 0) and the report sees them
    # sizes: pruning alone stores the same dense tensors, heads go, int8 (and the sparse storage) shrinks it
    size = [r["size_mb"] for r in rows]
    assert size[1] == pytest.approx(size[0], rel=1e-3) and size[0] > size[2] > size[3]
    assert rows[2]["parameters"] < rows[1]["parameters"] == rows[0]["parameters"]
    assert rows[3]["size_x"] == pytest.approx(size[0] / size[3], rel=1e-3)
    assert rows[3]["size_report"]["kinds_mb"]["weights_int8"] > 0

    # every step directory loads back; float steps in the HF layout, the int8 one as a compressed checkpoint
    assert (out / "step_1_prune" / "train" / "metrics.jsonl").is_file()
    assert (out / "step_1_prune" / "model.safetensors").is_file()
    assert json.loads((out / "step_3_quantize" / "config.json").read_text())["quantization"]["scheme"] == \
        "int8_dynamic"
    tm = load_model(out / "step_3_quantize")
    assert tm.evaluate(read_task_file(data["eval_file"], "classification"))["accuracy"] == \
        pytest.approx(rows[3]["eval"])
    md = (out / "report.md").read_text()
    assert "| 3 | quantize int8 dynamic |" in md and "## Recipe" in md and "mode: dynamic" in md
    assert (out / "pareto.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    with pytest.raises(Exception, match="exists and is not empty; pass --overwrite"):
        run_pipeline(model_dir, {**data, "steps": [DYNAMIC]}, out)
    report = run_pipeline(model_dir, {**data, "steps": [DYNAMIC]}, out, overwrite=True)
    assert sorted(p.name for p in out.iterdir()) == ["pareto.png", "report.json", "report.md", "step_0_original",
                                                     "step_1_quantize"]


def test_a_failed_step_keeps_earlier_steps_and_the_cli_exits_2(model_dir, data, tmp_path, monkeypatch, capsys):
    def boom(*args, **kwargs):
        raise RuntimeError("calibration exploded")

    monkeypatch.setattr(quantize, "quantize_dynamic", boom)
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(json.dumps({**data, "steps": [STRUCTURED, DYNAMIC]}))  # JSON is YAML
    out = tmp_path / "out"
    assert main(["compress", str(model_dir), "--recipe", str(recipe), "--output", str(out),
                 "steps.1.head_fraction=0.5"]) == 2
    captured = capsys.readouterr()
    assert "step 2 (quantize int8 dynamic) failed: RuntimeError: calibration exploded; steps 0-1 are in" in \
        captured.err
    assert "| 2 | quantize int8 dynamic | **failed**: RuntimeError: calibration exploded |" in captured.out
    assert sorted(p.name for p in out.iterdir()) == ["pareto.png", "report.json", "report.md", "step_0_original",
                                                     "step_1_structured"]  # no half-built step, no temp dirs
    report = json.loads((out / "report.json").read_text())
    assert report["status"] == "failed" and [r["status"] for r in report["steps"]] == ["ok", "ok", "failed"]
    assert report["steps"][1]["heads"] == 4  # the override reached step 1
    assert report["steps"][2]["error"] == "RuntimeError: calibration exploded"
    assert TaskModel.from_pretrained(out / "step_1_structured").head.encoder.layers[0].num_heads >= 1

    with pytest.raises(CompressionError) as e:  # the Python API raises, with the report attached
        run_pipeline(model_dir, {**data, "steps": [DYNAMIC]}, tmp_path / "api")
    assert e.value.report["steps"][-1]["status"] == "failed"


@pytest.mark.parametrize("steps, formats", [
    ([{"distill": {"student_layers": [1], "max_steps": 2, "batch_size": 8}},
      {"structured": {"target_speedup": 1.5, "importance_batches": 1, "batch_size": 8, "speedup_texts": 4,
                      "finetune_steps": 1}},
      {"quantize": {"mode": "static"}}], ["hf", "hf", "hf", "compressed"]),
    ([{"drop_layers": {"keep": [1], "finetune_steps": 1, "batch_size": 8}},
      {"lowrank": {"ranks": 4, "finetune_steps": 1, "batch_size": 8}}], ["hf", "hf", "lowrank"]),
    ([{"prune": {"method": "obert", "sparsity": 0.5, "block_size": 4, "epochs": 1, "prune_every": 2,
                 "batch_size": 8, "fisher_grads": 4, "fisher_batch_size": 4}},
      {"quantize": {"mode": "weight_only", "bits": 4, "group_size": 16}}], ["hf", "hf", "compressed"]),
])
def test_every_step_kind_saves_a_model_that_loads_back(model_dir, data, tmp_path, monkeypatch, steps, formats):
    def clock(tm, feats, passes=3):  # deterministic "time" for prune_to_speedup: the heads and neurons left
        enc = tm.head.encoder
        return sum(layer.num_heads * 64 + layer.mlp_out.in_features for layer in enc.layers) / 1e4

    monkeypatch.setattr(pipeline, "seconds_per_pass", clock)
    out = tmp_path / "out"
    report = run_pipeline(model_dir, {**data, "steps": steps}, out)
    rows = report["steps"]
    assert [r["format"] for r in rows] == formats
    dev = read_task_file(data["eval_file"], "classification")
    for r in rows:
        assert load_model(out / r["dir"]).evaluate(dev)["accuracy"] == pytest.approx(r["eval"])
    if steps[0].get("distill"):
        assert (out / "step_1_distill" / "train" / "distill_config.json").is_file() and rows[1]["layers"] == 1
        speedup = rows[2]["details"]["speedup"]
        assert speedup[-1]["speedup"] >= 1.5 > speedup[-2]["speedup"]
        assert rows[2]["details"]["after"]["intermediate"] == [48]  # 52 left, rounded down to a multiple of 8
        assert rows[3]["details"]["quantized_layers"] == 5  # the four encoder Linears and the pooler
    if steps[0].get("prune"):
        assert rows[1]["sparsity"] == pytest.approx(0.5, abs=0.01) and rows[2]["sparsity"] >= rows[1]["sparsity"]
        assert rows[2]["size_report"]["kinds_mb"]["weights_int4"] > 0 and rows[2]["size_mb"] < rows[1]["size_mb"]


def test_the_models_own_data_and_split_seed_by_default(model_dir, data, tmp_path):
    own = tmp_path / "model"
    shutil.copytree(model_dir, own)
    with pytest.raises(ConfigError, match="no data: the recipe names no dataset or train_file"):
        run_pipeline(own, {"steps": [DYNAMIC]}, tmp_path / "o1")
    # a single training file, split 80/10/10 with the seed the model was trained with (as finetune records it)
    (own / "finetune_config.json").write_text(json.dumps({"train_file": data["train_file"], "training": {"seed": 7}}))
    report = run_pipeline(own, {"throughput_texts": 4, "steps": [DYNAMIC]}, tmp_path / "o2")
    assert report["data"]["split_seed"] == 7 and report["data"]["train_file"] == data["train_file"]
    assert report["data"]["examples"] == {"train": 38, "dev": 5, "test": 5} and "its training data" in \
        report["data"]["source"]
