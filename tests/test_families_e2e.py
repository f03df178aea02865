"""Every family through the public API, against transformers on the same tiny random models and locally trained
tokenizers (tests/families): bertkit.load -> embed / encode, fine-tuning -> a task directory transformers loads with
the same logits, fill-mask with the family's own mask token, the one loader's formats, HF-cache names, bad input."""

import json
import random
import shutil

import numpy as np
import pytest
import torch

import bertkit
from bertkit.errors import BertkitError, CheckpointError
from bertkit.hub import resolve_model_dir
from bertkit.train.finetune import finetune
from tests.families.models import FAMILY_OF, save_with_tokenizer

transformers = pytest.importorskip("transformers")
pytestmark = pytest.mark.usefixtures("one_thread")

# one variant per family (plus CamemBERT's other tokenizer layout); the model-level tests cover the rest
E2E = ["bert", "roberta", "xlm-roberta", "camembert", "electra", "distilbert", "mpnet", "deberta-v3", "modernbert"]
TEXTS = ["A short one.", "The interpreter reads every module before it runs the first line of the script.",
         "", "Unicode: café naïve", "x " * 40, "Lists, tuples and dictionaries are the built-in containers."]
WORDS = "good great love best music film game war death king river water night school city team".split()


@pytest.fixture(scope="module")
def family_dir(tmp_path_factory):
    cache = {}

    def get(variant):
        if variant not in cache:
            d = tmp_path_factory.mktemp(f"e2e-{variant}")
            save_with_tokenizer(variant, d)
            cache[variant] = d
        return cache[variant]

    return get


def hf_mean_embeddings(d, texts, max_length):
    tok = transformers.AutoTokenizer.from_pretrained(d)
    model = transformers.AutoModel.from_pretrained(d, attn_implementation="eager").eval()
    enc = tok(texts, padding=True, truncation=True, max_length=max_length, return_tensors="pt")
    with torch.inference_mode():
        h = model(**{k: v for k, v in enc.items() if k in ("input_ids", "attention_mask", "token_type_ids")
                     and (k != "token_type_ids" or model.config.to_dict().get("type_vocab_size", 0) > 1)}
                  ).last_hidden_state
    m = enc["attention_mask"][..., None].float()
    pooled = (h * m).sum(1) / m.sum(1)
    return torch.nn.functional.normalize(pooled, dim=-1).numpy(), enc


@pytest.mark.parametrize("variant", E2E)
def test_load_and_embed_match_transformers(family_dir, variant):
    d = family_dir(variant)
    enc = bertkit.load(d)
    assert enc.info()["family"] == FAMILY_OF[variant]
    ours = enc.embed(TEXTS)
    want, _ = hf_mean_embeddings(d, TEXTS, enc.max_length)
    assert np.abs(ours - want).max() <= 1e-5, f"{variant}: embeddings differ from transformers"
    states = enc.token_states(TEXTS[:2], pairs=TEXTS[2:4])  # pairs: the family's own template and token types
    tok = transformers.AutoTokenizer.from_pretrained(d)
    pair_ids = tok(TEXTS[:2], TEXTS[2:4], truncation=True, max_length=enc.max_length)["input_ids"]
    assert [s.shape[0] for s in states] == [len(x) for x in pair_ids]


@pytest.mark.parametrize("variant", E2E)
def test_max_length_is_the_models_own(family_dir, variant):
    """RoBERTa-style position offsets shorten the usable length; truncation stops there."""
    enc = bertkit.load(family_dir(variant))
    cfg = enc.model.config
    assert enc.max_length <= cfg.max_position_embeddings - cfg.position_offset
    long = " ".join(random.Random(0).choices(WORDS, k=400))
    (states,) = enc.token_states([long])
    assert states.shape[0] == enc.max_length


def write_classification(path, n, seed):
    rnd = random.Random(seed)
    labels = ("pos", "neg")
    rows = []
    for i in range(n):
        words = rnd.choices(WORDS[:8] if i % 2 == 0 else WORDS[8:], k=rnd.randint(3, 8))
        rows.append(f"{' '.join(words)},{labels[i % 2]}")
    path.write_text("text,label\n" + "\n".join(rows) + "\n")


@pytest.mark.parametrize("variant", E2E)
def test_finetune_any_family_and_transformers_loads_it(family_dir, variant, tmp_path):
    write_classification(tmp_path / "train.csv", 24, 0)
    write_classification(tmp_path / "dev.csv", 8, 1)
    result = finetune(tmp_path / "out", model=str(family_dir(variant)), task="classification",
                      train_file=str(tmp_path / "train.csv"), eval_file=str(tmp_path / "dev.csv"), max_length=32,
                      epochs=1, batch_size=8, lr=1e-3)
    out = result.output_dir
    written = json.loads((out / "config.json").read_text())
    hf_cls = bertkit.FAMILIES[bertkit.inspect(out).family.name].architecture(written["model_type"], "sequence")
    assert written["architectures"] == [hf_cls]
    tm = bertkit.load_task_model(out)
    texts = ["good great love", "war death night school city"]
    probs = np.array([[p["probabilities"][n] for n in tm.labels] for p in tm.predict(texts)])
    hf = transformers.AutoModelForSequenceClassification.from_pretrained(out, attn_implementation="eager").eval()
    tok = transformers.AutoTokenizer.from_pretrained(out)
    batch = tok(texts, padding=True, truncation=True, max_length=32, return_tensors="pt")
    with torch.inference_mode():
        kw = {k: v for k, v in batch.items() if k != "token_type_ids" or tm.head.encoder.config.type_vocab_size > 1}
        want = hf(**kw).logits.softmax(-1).numpy()
    order = [hf.config.label2id[n] for n in tm.labels]
    assert np.abs(probs - want[:, order]).max() <= 1e-5


@pytest.mark.parametrize("variant", ["roberta", "deberta-v3", "modernbert", "bert"])
def test_fill_mask_with_the_familys_mask_token(variant, tmp_path):
    save_with_tokenizer(variant, tmp_path, role="mlm", seed=3)
    fm = bertkit.load_fill_mask(tmp_path)
    assert fm.head_trained
    own = fm.mask_token
    results = fm([f"The river {own} at night.", "The river [MASK] at night."], top_k=3)
    assert results[0] == results[1]  # "[MASK]" stands for the model's own token
    pipe = transformers.pipeline("fill-mask", model=str(tmp_path), tokenizer=str(tmp_path), top_k=3)
    want = pipe(f"The river {own} at night.")
    assert [r["token_id"] for r in results[0][0]] == [w["token"] for w in want]  # transformers: "token" is the id
    assert np.allclose([r["score"] for r in results[0][0]], [w["score"] for w in want], atol=1e-5)


# ---- the one loader: formats and names ---------------------------------------------------------------------------
def test_transformers_task_directory_of_another_family_is_a_task_model(tmp_path):
    save_with_tokenizer("deberta-v3", tmp_path, role="token", num_labels=3)
    info = bertkit.inspect(tmp_path)
    assert (info.family.name, info.role, info.format) == ("deberta-v2", "token", "hf")
    tm = bertkit.load_task_model(tmp_path)
    assert tm.task == "ner" and len(tm.labels) == 3
    enc = bertkit.load(tmp_path)  # its encoder, for embeddings
    assert enc.embed(["a b"]).shape == (1, 32)


def test_sentence_transformers_directory_with_the_transformer_in_a_subfolder(family_dir, tmp_path):
    """modules.json may put the Transformer module in 0_Transformer/; the loader finds config, weights, tokenizer
    there."""
    root = tmp_path / "st"
    shutil.copytree(family_dir("roberta"), root / "0_Transformer")
    (root / "modules.json").write_text(json.dumps([
        {"idx": 0, "name": "0", "path": "0_Transformer", "type": "sentence_transformers.models.Transformer"},
        {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"}]))
    (root / "1_Pooling").mkdir()
    (root / "1_Pooling" / "config.json").write_text(json.dumps({"word_embedding_dimension": 32,
                                                               "pooling_mode_cls_token": True}))
    info = bertkit.inspect(root)
    assert info.format == "sentence-transformers" and info.weights_dir == root / "0_Transformer"
    enc = bertkit.load(root)
    direct = bertkit.load(family_dir("roberta"))
    (h,) = direct.token_states(["a river"])
    # the directory's own settings: cls pooling, and no Normalize module, so no normalization (as sentence-transformers)
    assert np.abs(enc.embed(["a river"])[0] - h[0]).max() <= 1e-5


def test_hub_names_resolve_from_the_local_hf_cache(family_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    repo = tmp_path / "hf" / "hub" / "models--acme--tiny-roberta"
    commit = "0123456789abcdef"
    shutil.copytree(family_dir("roberta"), repo / "snapshots" / commit)
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    assert resolve_model_dir("acme/tiny-roberta") == repo / "snapshots" / commit
    assert bertkit.load("acme/tiny-roberta").model.config.model_type == "roberta"
    with pytest.raises(CheckpointError, match=r"not in the local Hugging Face cache .*never downloads"):
        resolve_model_dir("acme/absent")


def test_tokenizer_larger_than_the_embedding_table_names_both_sizes(family_dir, tmp_path):
    d = tmp_path / "small"
    shutil.copytree(family_dir("bert"), d)
    save_with_tokenizer("bert", d, vocab_size=500)  # weights and config for 500 ids, tokenizer of 886
    with pytest.raises(CheckpointError, match=r"tokenizer has \d+ tokens but config.json's vocab_size .* is 500"):
        bertkit.load(d)


def test_training_commands_refuse_formats_they_cannot_train(family_dir, tmp_path):
    d = tmp_path / "onnx-only"
    shutil.copytree(family_dir("bert"), d)
    (d / "model.safetensors").unlink()
    (d / "model.onnx").write_bytes(b"not really a graph")
    with pytest.raises(BertkitError, match=r"onnx checkpoint .* fine-tuning needs float torch weights"):
        from bertkit.model.directory import load_encoder

        load_encoder(d, who="fine-tuning")
