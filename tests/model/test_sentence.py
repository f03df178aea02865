"""A model's own embedding settings (sentence-transformers directories) against sentence-transformers itself:
every pooling mode, Dense, Normalize, include_prompt and prompts; bertkit's writer read back by both; bad input."""

import json
import shutil

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import bertkit
from bertkit.errors import CheckpointError, ConfigError
from bertkit.model.attention import Packing
from bertkit.model.pooling import POOLING_MODES, pool
from bertkit.model.sentence import SentenceConfig

pytestmark = pytest.mark.usefixtures("one_thread")

TEXTS = ["A man is eating food.", "", "x", "Two dogs play in the park with a red ball and a stick.",
         "The cat sits outside on the mat while it rains. " * 20,  # longer than max_seq_length
         "   ", "query: already prompted?"]
PROMPTS = {"query": "query: ", "passage": "represent this passage for retrieval: "}
MODES = [(m,) for m in POOLING_MODES] + [("cls", "mean", "max"), ("weightedmean", "cls", "lasttoken")]
# (include_prompt, Dense (bias, activation) or None, Normalize, default_prompt_name)
VARIANTS = {
    "plain": (True, None, False, None),
    "dense+normalize, prompt left out": (False, (True, torch.nn.GELU), True, None),
    "dense without bias, default prompt": (True, (False, torch.nn.Tanh), False, "passage"),
}


def build_st(directory, tiny_dir, modes, include_prompt=True, dense=None, normalize=False, default_prompt_name=None,
             residual=False, seed=0):
    """A SentenceTransformer on the tiny BERT, saved by sentence-transformers itself to ``directory``."""
    from sentence_transformers import SentenceTransformer, models

    torch.manual_seed(seed)
    modules = [models.Transformer(str(tiny_dir), max_seq_length=48),
               models.Pooling(32, pooling_mode=modes, include_prompt=include_prompt)]
    if dense is not None:
        bias, activation = dense
        modules.append(models.Dense(32 * len(modes), 16, bias=bias, activation_function=activation(),
                                    use_residual=residual))
    if normalize:
        modules.append(models.Normalize())
    model = SentenceTransformer(modules=modules, prompts=PROMPTS, default_prompt_name=default_prompt_name,
                                device="cpu")
    model.save(str(directory))
    return model


@pytest.fixture(scope="module", autouse=True)
def _needs_sentence_transformers():
    pytest.importorskip("sentence_transformers")


@pytest.mark.parametrize("variant", list(VARIANTS))
@pytest.mark.parametrize("modes", MODES, ids="+".join)
def test_embeddings_equal_sentence_transformers(tmp_path, tiny_dir, modes, variant):
    include_prompt, dense, normalize, default = VARIANTS[variant]
    ref_model = build_st(tmp_path / "st", tiny_dir, modes, include_prompt, dense, normalize, default)
    enc = bertkit.load(str(tmp_path / "st"))
    assert enc.sentence.modes == modes and enc.sentence.normalize == normalize
    assert enc.embed(TEXTS).shape[1] == ref_model.get_embedding_dimension()
    for kw in ({}, {"prompt_name": "query"}, {"prompt": "a literal prompt: "}):
        ref = ref_model.encode(TEXTS, batch_size=3, **kw)
        got = enc.embed(TEXTS, batch_size=3, **kw)
        assert np.abs(got - ref).max() <= 1e-5, kw


def test_bertkit_writes_what_both_read_back(tmp_path, tiny_dir):
    """A non-legacy mode order, a residual Dense, include_prompt=False and a default prompt survive
    bertkit's writer: sentence-transformers and bertkit both read the written directory back."""
    from sentence_transformers import SentenceTransformer

    modes = ("lasttoken", "mean")  # an order the legacy booleans cannot express
    ref_model = build_st(tmp_path / "st", tiny_dir, modes, False, (True, torch.nn.ReLU), True, "query", residual=True)
    enc = bertkit.load(str(tmp_path / "st"))
    enc.save_pretrained(tmp_path / "ours")
    pooling_cfg = json.loads((tmp_path / "ours" / "1_Pooling" / "config.json").read_text())
    assert pooling_cfg["pooling_mode"] == ["lasttoken", "mean"] and pooling_cfg["include_prompt"] is False
    st_back = SentenceTransformer(str(tmp_path / "ours"), device="cpu")
    ours_back = bertkit.load(str(tmp_path / "ours"))
    for kw in ({}, {"prompt_name": "passage"}, {"prompt": ""}):
        ref = ref_model.encode(TEXTS, **kw)
        assert np.abs(st_back.encode(TEXTS, **kw) - ref).max() <= 1e-5, kw
        assert np.abs(ours_back.embed(TEXTS, **kw) - ref).max() <= 1e-5, kw
    assert st_back.default_prompt_name == "query" and st_back.prompts["passage"] == PROMPTS["passage"]


def test_legacy_pooling_form_is_written_when_it_can_say_the_modes(tmp_path, tiny_dir):
    build_st(tmp_path / "st", tiny_dir, ("cls", "max"))
    enc = bertkit.load(str(tmp_path / "st"))
    enc.save_pretrained(tmp_path / "ours")
    cfg = json.loads((tmp_path / "ours" / "1_Pooling" / "config.json").read_text())
    assert cfg["pooling_mode_cls_token"] and cfg["pooling_mode_max_tokens"] and not cfg["pooling_mode_mean_tokens"]
    assert cfg["word_embedding_dimension"] == 32 and "pooling_mode" not in cfg
    assert bertkit.load(str(tmp_path / "ours")).sentence.modes == ("cls", "max")


def test_plain_hf_directory_keeps_the_defaults(tmp_path, tiny_dir):
    enc = bertkit.load(str(tiny_dir))
    s = enc.sentence
    assert s.modes == ("mean",) and s.normalize and not s.dense and not s.explicit and s.resolve_prompt() == ""
    got = enc.embed(TEXTS[:4])
    states = enc.token_states(TEXTS[:4])
    want = np.stack([x.mean(0) / np.linalg.norm(x.mean(0)) for x in states])
    assert np.abs(got - want).max() <= 1e-5
    enc.save_pretrained(tmp_path / "saved")
    assert not (tmp_path / "saved" / "modules.json").exists()  # the defaults are not written out


# ---- pooling on packed states ------------------------------------------------------------------------
def naive_pool(seqs, mode, prompt_length):
    """One sequence at a time, as sentence-transformers' padded path computes it."""
    out = []
    for x in seqs:
        keep = x[prompt_length:]
        if mode == "cls":
            out.append(x[prompt_length] if len(x) > prompt_length else x[0])
        elif mode == "lasttoken":
            out.append(keep[-1] if len(keep) else torch.zeros(x.shape[1], dtype=x.dtype))
        elif mode == "max":
            out.append(keep.max(0).values if len(keep) else torch.full((x.shape[1],), float("-inf"), dtype=x.dtype))
        elif mode == "mean":
            out.append(keep.sum(0) / max(len(keep), 1e-9))
        elif mode == "mean_sqrt_len_tokens":
            out.append(keep.sum(0) / max(len(keep), 1e-9) ** 0.5)
        else:
            w = torch.arange(min(prompt_length, len(x)) + 1, len(x) + 1, dtype=x.dtype)[:, None]
            out.append((keep * w).sum(0) / max(float(w.sum()), 1e-9))
    return torch.stack(out)


@settings(max_examples=40, deadline=None)
@given(lengths=st.lists(st.integers(1, 9), min_size=1, max_size=6), modes=st.lists(
    st.sampled_from(POOLING_MODES), min_size=1, max_size=3, unique=True), prompt_length=st.integers(0, 4),
    seed=st.integers(0, 2**16))
def test_packed_pooling_equals_one_sequence_at_a_time(lengths, modes, prompt_length, seed):
    g = torch.Generator().manual_seed(seed)
    h = torch.randn(sum(lengths), 5, generator=g, dtype=torch.float64)
    packing = Packing.from_lengths(lengths)
    seqs = list(torch.split(h, lengths))
    want = torch.cat([naive_pool(seqs, m, prompt_length) for m in modes], dim=1)
    got = pool(h, packing, modes, prompt_length)
    assert got.shape == (len(lengths), 5 * len(modes))
    assert torch.equal(torch.isinf(got), torch.isinf(want))
    finite = torch.isfinite(want)
    assert torch.allclose(got[finite], want[finite], atol=1e-12)


def test_half_precision_states_pool_in_fp32():
    h = torch.randn(7, 4).bfloat16()
    got = pool(h, Packing.from_lengths([3, 4]), ("mean", "weightedmean"))
    assert got.dtype == torch.float32
    assert torch.allclose(got[:, :4], torch.stack([h[:3].float().mean(0), h[3:].float().mean(0)]))


# ---- prompts ---------------------------------------------------------------------------------------------
def test_prompt_resolution():
    s = SentenceConfig(prompts={"passage": "passage: ", "q2": "question: "}, default_prompt_name="q2")
    assert s.resolve_prompt() == "question: "  # the default prompt when nothing is given
    assert s.resolve_prompt("passage") == "passage: " and s.resolve_prompt(prompt="lit ") == "lit "
    assert s.resolve_prompt("query") == ""  # "query" and "document" always exist, as in sentence-transformers
    assert s.role_prompt("document") == "passage: " and s.role_prompt("query") == ""
    assert s.role_prompt("query", "q2") == "question: " and s.role_prompt("query", prompt="") == ""
    with pytest.raises(ConfigError, match=r"unknown prompt_name 'nope'.*'passage': 'passage: '.*'q2'"):
        s.resolve_prompt("nope")
    with pytest.raises(ValueError, match="not both"):
        s.resolve_prompt("passage", "x")


def test_do_lower_case_and_prompt_length():
    s = SentenceConfig(do_lower_case=True)
    assert s.prepare(["Hello World"], "Query: ") == ["query: hello world"]
    s.pooling.include_prompt = False
    assert s.prompt_length([101, 7, 8, 102], (102,)) == 3  # [CLS] and the prompt's two tokens, not its [SEP]
    s.pooling.include_prompt = True
    assert s.prompt_length([101, 7, 8, 102], (102,)) == 0


def test_pooling_override(tmp_path, tiny_dir):
    build_st(tmp_path / "st", tiny_dir, ("mean",))
    enc = bertkit.load(str(tmp_path / "st"))
    states = enc.token_states(TEXTS[:3])
    got = enc.embed(TEXTS[:3], pooling="cls", normalize=False)
    assert np.abs(got - np.stack([x[0] for x in states])).max() <= 1e-6
    assert enc.embed(TEXTS[:3], pooling=["cls", "max"]).shape == (3, 64)
    with pytest.raises(ValueError, match="pooling must be one or more of"):
        enc.embed(TEXTS[:1], pooling="maximum")


# ---- bad input ---------------------------------------------------------------------------------------------
@pytest.fixture
def st_dir(tmp_path, tiny_dir):
    """A saved sentence-transformers model with Pooling, Dense and Normalize, to break."""
    build_st(tmp_path / "st", tiny_dir, ("mean",), dense=(True, torch.nn.Tanh), normalize=True)
    return tmp_path / "st"


def edit_json(path, change):
    value = json.loads(path.read_text())
    change(value)
    path.write_text(json.dumps(value))


def test_unknown_module_type_names_module_and_path(st_dir):
    edit_json(st_dir / "modules.json", lambda m: m.insert(2, {"idx": 9, "name": "ln", "path": "9_LayerNorm",
                                                              "type": "sentence_transformers.models.LayerNorm"}))
    with pytest.raises(ConfigError, match=r"module 'ln' of type 'sentence_transformers.models.LayerNorm' at path "
                                          r"'9_LayerNorm' is not supported; bertkit reads Transformer, Pooling"):
        bertkit.load(str(st_dir))


def test_a_class_outside_sentence_transformers_is_refused(st_dir):
    edit_json(st_dir / "modules.json", lambda m: m[1].update(type="my_package.Pooling"))
    with pytest.raises(ConfigError, match=r"module '1' of type 'my_package.Pooling' at path '1_Pooling'"):
        bertkit.load(str(st_dir))


def test_unknown_activation_is_named(st_dir):
    edit_json(st_dir / "2_Dense" / "config.json", lambda c: c.update(activation_function="my_pkg.Swoosh"))
    with pytest.raises(ConfigError, match=r"2_Dense/config.json: Dense activation_function 'my_pkg.Swoosh' is "
                                          r"not supported"):
        bertkit.load(str(st_dir))


def test_missing_dense_weights(st_dir):
    (st_dir / "2_Dense" / "model.safetensors").unlink()
    with pytest.raises(CheckpointError, match=r"2_Dense: Dense module without weights; looked for model.safetensors"):
        bertkit.load(str(st_dir))


def test_dense_weights_from_bin_and_a_missing_tensor(st_dir):
    from safetensors.torch import load_file

    state = load_file(st_dir / "2_Dense" / "model.safetensors")
    (st_dir / "2_Dense" / "model.safetensors").unlink()
    torch.save(state, st_dir / "2_Dense" / "pytorch_model.bin")  # old sentence-transformers saves
    assert bertkit.load(str(st_dir)).sentence.dense[0].out_features == 16
    torch.save({"linear.weight": state["linear.weight"]}, st_dir / "2_Dense" / "pytorch_model.bin")
    with pytest.raises(CheckpointError, match=r"pytorch_model.bin: missing linear.bias"):
        bertkit.load(str(st_dir))


def test_sizes_that_do_not_chain(st_dir):
    edit_json(st_dir / "2_Dense" / "config.json", lambda c: c.update(in_features=64))
    with pytest.raises(CheckpointError, match=r"linear.weight has shape \(16, 32\), config.json says \(16, 64\)"):
        bertkit.load(str(st_dir))
    edit_json(st_dir / "2_Dense" / "config.json", lambda c: c.update(in_features=32))
    edit_json(st_dir / "1_Pooling" / "config.json", lambda c: c.update(embedding_dimension=48))
    with pytest.raises(ConfigError, match="Pooling module expects 48-dimensional token states; the model's hidden "
                                          "size is 32"):
        bertkit.load(str(st_dir))


def test_bad_pooling_config_and_module_order(st_dir):
    edit_json(st_dir / "1_Pooling" / "config.json", lambda c: c.update(pooling_mode="median"))
    with pytest.raises(ConfigError, match=r"1_Pooling/config.json: pooling_mode 'median' is not supported"):
        bertkit.load(str(st_dir))
    edit_json(st_dir / "1_Pooling" / "config.json", lambda c: c.update(pooling_mode="mean"))
    edit_json(st_dir / "modules.json", lambda m: (m[2].update(idx=3), m[3].update(idx=2)))  # Normalize, then Dense
    with pytest.raises(ConfigError, match="Transformer -> Pooling -> Normalize -> Dense; bertkit runs"):
        bertkit.load(str(st_dir))


def test_transformer_in_a_subfolder(tmp_path, tiny_dir):
    """Old sentence-transformers saves keep the encoder and its sentence_bert_config.json in 0_Transformer."""
    from sentence_transformers import SentenceTransformer

    d = tmp_path / "st"
    build_st(d, tiny_dir, ("max",), dense=(True, torch.nn.Tanh))
    sub = d / "0_Transformer"
    sub.mkdir()
    for f in d.iterdir():
        if f.is_file() and f.name not in ("modules.json", "config_sentence_transformers.json", "README.md"):
            f.rename(sub / f.name)
    (sub / "sentence_bert_config.json").write_text(json.dumps({"max_seq_length": 20, "do_lower_case": False}))
    edit_json(d / "modules.json", lambda m: m[0].update(path="0_Transformer"))
    enc = bertkit.load(str(d))
    assert enc.sentence.max_seq_length == 20 and enc.sentence.modes == ("max",)
    enc.max_length = enc.sentence.max_seq_length
    ref = SentenceTransformer(str(d), device="cpu").encode(TEXTS)
    assert np.abs(enc.embed(TEXTS) - ref).max() <= 1e-5


def test_pooling_override_must_fit_the_dense_module(st_dir):
    enc = bertkit.load(str(st_dir))
    assert enc.embed(TEXTS[:2], pooling="cls").shape == (2, 16)  # one mode for one: fits
    with pytest.raises(ValueError, match=r"pooling cls\+mean gives 64-dimensional vectors but the model's Dense "
                                         r"module takes 32"):
        enc.embed(TEXTS[:2], pooling=("cls", "mean"))


def test_unknown_prompt_name_lists_the_prompts(st_dir):
    enc = bertkit.load(str(st_dir))
    with pytest.raises(ConfigError, match=r"unknown prompt_name 'search'; this model's prompts: 'query': 'query: ', "
                                          r"'document': '', 'passage'"):
        enc.embed(["x"], prompt_name="search")


def test_cli_embed_prompts_and_bad_prompt_name(tmp_path, st_dir, capsys):
    from bertkit.cli.main import main

    (tmp_path / "in.txt").write_text("first text\nsecond one\n")
    out = tmp_path / "out.npy"
    assert main(["embed", str(st_dir), "-i", str(tmp_path / "in.txt"), "-o", str(out), "--prompt-name", "query"]) == 0
    enc = bertkit.load(str(st_dir))
    assert np.abs(np.load(out) - enc.embed(["first text", "second one"], prompt="query: ")).max() <= 1e-6
    assert main(["embed", str(st_dir), "-i", str(tmp_path / "in.txt"), "-o", str(tmp_path / "b.npy"),
                 "--prompt-name", "nope"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "unknown prompt_name 'nope'" in err[0]
    shutil.rmtree(st_dir / "2_Dense")
    assert main(["embed", str(st_dir), "-i", str(tmp_path / "in.txt"), "-o", str(tmp_path / "c.npy")]) == 2
    assert "Dense" in capsys.readouterr().err


def test_compressed_checkpoint_keeps_the_settings(tmp_path, tiny_dir):
    """save_compressed / load_compressed carry the pooling, Dense, Normalize and prompts along."""
    from bertkit.compress.quantize import load_compressed, save_compressed

    ref_model = build_st(tmp_path / "st", tiny_dir, ("cls",), False, (True, torch.nn.Tanh), True, "query")
    enc = bertkit.load(str(tmp_path / "st"))
    back = load_compressed(save_compressed(enc, tmp_path / "compressed"))
    assert back.sentence.modes == ("cls",) and len(back.sentence.dense) == 1 and back.sentence.normalize
    assert np.abs(back.embed(TEXTS) - ref_model.encode(TEXTS)).max() <= 1e-5  # uncompressed weights: exact


def test_malformed_files_are_named(st_dir):
    (st_dir / "config_sentence_transformers.json").write_text("[1, 2]")
    with pytest.raises(ConfigError, match=r"config_sentence_transformers.json: expected a JSON object, got list"):
        bertkit.load(str(st_dir))
    (st_dir / "config_sentence_transformers.json").write_text(json.dumps({"prompts": {"q": 3}}))
    with pytest.raises(ConfigError, match=r"field 'prompts' must map names to prompt texts"):
        bertkit.load(str(st_dir))
    (st_dir / "config_sentence_transformers.json").write_text(json.dumps({"default_prompt_name": "q"}))
    with pytest.raises(ConfigError, match=r"default_prompt_name 'q' is not one of its prompts"):
        bertkit.load(str(st_dir))
    (st_dir / "config_sentence_transformers.json").unlink()
    (st_dir / "1_Pooling" / "config.json").write_text(json.dumps({"include_prompt": "no"}))
    with pytest.raises(ConfigError, match=r"1_Pooling/config.json: field 'include_prompt' must be true or false"):
        bertkit.load(str(st_dir))
    (st_dir / "1_Pooling" / "config.json").write_text("{not json")
    with pytest.raises(ConfigError, match=r"1_Pooling/config.json: not valid JSON"):
        bertkit.load(str(st_dir))
    (st_dir / "modules.json").write_text("{}")
    with pytest.raises(ConfigError, match=r"modules.json: expected a JSON array, got dict"):
        SentenceConfig.read(st_dir, 32)
