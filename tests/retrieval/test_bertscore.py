import functools
import json
import logging
import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from bertkit.cli.main import main
from bertkit.model.attention import Packing
from bertkit.retrieval.bertscore import (
    BertScoreResult,
    bertscore,
    estimate_baseline,
    greedy_match,
    idf_dict,
    layer_states,
    rescale,
)

CANDIDATES = ["the cat sat on the mat", "a quick brown fox jumps", "stocks fell sharply on monday",
              "he plays the guitar", "rain is expected tomorrow", "the cat sat on the mat"]
REFERENCES = ["a cat was sitting on the mat", "the fast brown fox leaped", "shares dropped steeply monday",
              "she is a pianist", "tomorrow will be sunny", "the cat sat on the mat"]



@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    # A few short texts gain nothing from threads; two threads on a busy 2-core machine can stall.
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)

# ---- straightforward reference: one pair at a time, transformers' BertModel, numpy -----------------
@pytest.fixture(scope="module")
def hf(minilm_dir):
    transformers = pytest.importorskip("transformers")
    tok = transformers.AutoTokenizer.from_pretrained(minilm_dir)
    model = transformers.BertModel.from_pretrained(minilm_dir, attn_implementation="eager").eval()

    @functools.cache
    def hidden_states(text):  # all layers' states of one text, and its ids
        enc = tok(text, return_tensors="pt")
        with torch.no_grad():
            return model(**enc, output_hidden_states=True).hidden_states, enc["input_ids"][0].tolist()

    return hidden_states


def reference_bertscore(hidden_states, candidates, references, layer, idf):
    def embed(text):  # (n_tokens, hidden) unit vectors and ids, [CLS]/[SEP] dropped
        states, ids = hidden_states(text)
        h = states[layer][0, 1:-1].double().numpy()
        return h / np.linalg.norm(h, axis=1, keepdims=True), ids[1:-1]

    ref_ids = [embed(r)[1] for r in references]
    m = len(references)

    def weight(t):
        df = sum(t in ids for ids in ref_ids)
        return -math.log((df + 1) / (m + 1)) if idf else 1.0

    out = []
    for c, r in zip(candidates, references, strict=True):
        (x, xi), (y, yi) = embed(c), embed(r)
        wx, wy = np.array([weight(t) for t in xi]), np.array([weight(t) for t in yi])
        sim = x @ y.T
        p = (sim.max(1) * wx).sum() / wx.sum()
        rec = (sim.max(0) * wy).sum() / wy.sum()
        out.append((p, rec, 2 * p * rec / (p + rec)))
    return np.array(out)  # (n, 3)


@pytest.mark.parametrize("layer", [None, 3])
@pytest.mark.parametrize("idf", [False, True])
def test_matches_reference_implementation(minilm, hf, layer, idf):
    got = bertscore(CANDIDATES, REFERENCES, minilm, layer=layer, idf=idf)
    want = reference_bertscore(hf, CANDIDATES, REFERENCES, layer or 6, idf)
    np.testing.assert_allclose(np.stack([got.precision, got.recall, got.f1], 1), want, rtol=0, atol=1e-6)
    assert got.mean_f1 == pytest.approx(want[:, 2].mean(), abs=1e-6)


def test_layer_states_last_layer_equals_forward_packed(minilm):
    batch = minilm.tokenize(CANDIDATES)
    ids = torch.tensor([t for x in batch.ids for t in x])
    packing = Packing.from_lengths(batch.lengths)
    with torch.inference_mode():
        want = minilm.model.forward_packed(ids, packing)
        got = layer_states(minilm.model, ids, packing)
        n = len(minilm.model.layers)
        assert torch.equal(layer_states(minilm.model, ids, packing, layer=n), got)
    assert torch.allclose(got, want, atol=1e-6, rtol=0)
    with pytest.raises(ValueError, match=r"layer must be in 1\.\.6"):
        layer_states(minilm.model, ids, packing, layer=0)


def test_identical_pairs_score_one(minilm):
    for idf in (False, True):
        res = bertscore(REFERENCES, REFERENCES, minilm, idf=idf)
        for v in (res.precision, res.recall, res.f1):
            np.testing.assert_allclose(v, 1.0, atol=1e-6)


def test_swapping_candidates_and_references_swaps_p_and_r(minilm):
    a = bertscore(CANDIDATES, REFERENCES, minilm)
    b = bertscore(REFERENCES, CANDIDATES, minilm)
    np.testing.assert_allclose(a.precision, b.recall, atol=1e-6)
    np.testing.assert_allclose(a.recall, b.precision, atol=1e-6)
    np.testing.assert_allclose(a.f1, b.f1, atol=1e-6)


WORDS = ["cat", "dog", "the", "runs", "market", "blue", "quickly", "rain", "!", "42"]
text = st.lists(st.sampled_from(WORDS), min_size=1, max_size=6).map(" ".join)


@settings(max_examples=8, deadline=None)
@given(pairs=st.lists(st.tuples(text, text), min_size=1, max_size=3))
def test_property_bounds_and_symmetry(minilm, pairs):
    c, r = [p[0] for p in pairs], [p[1] for p in pairs]
    a, b = bertscore(c, r, minilm), bertscore(r, c, minilm)
    for v in (a.precision, a.recall):
        assert np.all(v >= -1 - 1e-9) and np.all(v <= 1 + 1e-9)
    np.testing.assert_allclose(a.precision, b.recall, atol=1e-6)
    np.testing.assert_allclose(a.recall, b.precision, atol=1e-6)


@settings(max_examples=50, deadline=None)
@given(n=st.integers(1, 5), m=st.integers(1, 5), seed=st.integers(0, 2**16))
def test_property_greedy_match_bounds_and_symmetry(n, m, seed):
    rng = np.random.default_rng(seed)
    x, y = rng.normal(size=(n, 8)), rng.normal(size=(m, 8))
    x, y = x / np.linalg.norm(x, axis=1, keepdims=True), y / np.linalg.norm(y, axis=1, keepdims=True)
    wx, wy = rng.random(n), rng.random(m)
    p, r = greedy_match(x, y, wx, wy)
    assert -1 - 1e-12 <= p <= 1 + 1e-12 and -1 - 1e-12 <= r <= 1 + 1e-12
    assert greedy_match(y, x, wy, wx) == pytest.approx((r, p), abs=1e-12)


def test_idf_weights_by_hand():
    idf = idf_dict([[1, 2, 2], [2, 3], [4]])  # M = 3; df: 1 -> 1, 2 -> 2, 3 -> 1, 4 -> 1
    assert idf[1] == pytest.approx(math.log(4 / 2))
    assert idf[2] == pytest.approx(math.log(4 / 3))
    assert idf[3] == idf[4] == pytest.approx(math.log(2))
    assert idf[99] == pytest.approx(math.log(4))  # in no reference
    assert idf_dict([[5], [5, 6]])[5] == 0.0  # in every reference


def test_idf_all_zero_weights_fall_back_to_plain_mean(minilm):
    # One reference: every reference token has idf 0; the recall is then a plain mean.
    a = bertscore(CANDIDATES[:1], REFERENCES[:1], minilm, idf=True)
    b = bertscore(CANDIDATES[:1], REFERENCES[:1], minilm)
    assert a.recall[0] == pytest.approx(b.recall[0], abs=1e-12)
    assert np.isfinite(a.f1).all()


def test_rescale_arithmetic():
    res = BertScoreResult(np.array([0.9, 0.5]), np.array([0.8, 0.6]), np.array([0.85, 0.55]))
    out = rescale(res, (0.5, 0.6, 0.55))
    np.testing.assert_allclose(out.precision, [0.8, 0.0])
    np.testing.assert_allclose(out.recall, [0.5, 0.0])
    np.testing.assert_allclose(out.f1, [(0.85 - 0.55) / 0.45, 0.0])
    with pytest.raises(ValueError, match="< 1"):
        rescale(res, (1.0, 0.5, 0.5))


def test_baseline_argument_and_estimate(minilm):
    b = estimate_baseline(CANDIDATES + REFERENCES, minilm, n_pairs=20, seed=1)
    assert all(0 < x < 1 for x in b)
    raw = bertscore(CANDIDATES, REFERENCES, minilm)
    scaled = bertscore(CANDIDATES, REFERENCES, minilm, baseline=b)
    np.testing.assert_allclose(scaled.recall, (raw.recall - b[1]) / (1 - b[1]))
    assert estimate_baseline(CANDIDATES + REFERENCES, minilm, n_pairs=20, seed=1) == b
    with pytest.raises(ValueError, match="at least 2 distinct"):
        estimate_baseline(["same", "same", ""], minilm)


def test_empty_text_scores_zero_with_warning(minilm, caplog):
    with caplog.at_level(logging.WARNING, logger="bertkit"):
        res = bertscore(["a cat", "", "dog"], ["a cat", "x", "  "], minilm)
    assert res.f1[0] == pytest.approx(1.0, abs=1e-6)
    assert res.precision[1:].tolist() == res.recall[1:].tolist() == res.f1[1:].tolist() == [0.0, 0.0]
    assert "indices [1, 2]" in caplog.text


def test_bad_arguments(minilm):
    with pytest.raises(ValueError, match="2 candidates but 1 references"):
        bertscore(["a", "b"], ["a"], minilm)
    with pytest.raises(ValueError, match="no pairs"):
        bertscore([], [], minilm)
    with pytest.raises(TypeError, match="lists of texts"):
        bertscore("a", "b", minilm)
    with pytest.raises(ValueError, match="layer must be in"):
        bertscore(["a"], ["b"], minilm, layer=7)


# ---- CLI ---------------------------------------------------------------------------------------------
def test_cli_score(tmp_path, capsys, minilm):
    (tmp_path / "c.txt").write_text("\n".join(CANDIDATES) + "\n")
    (tmp_path / "r.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in REFERENCES))
    want = bertscore(CANDIDATES, REFERENCES, minilm, layer=4, idf=True, baseline=(0.3, 0.3, 0.3))
    out = tmp_path / "pairs.jsonl"
    argv = ["score", "--candidates", str(tmp_path / "c.txt"), "--references", str(tmp_path / "r.jsonl"),
            "--layer", "4", "--idf", "--baseline", "0.3,0.3,0.3"]
    assert main([*argv, "--json", "--output", str(out)]) == 0
    got = json.loads(capsys.readouterr().out)
    assert got["f1"] == pytest.approx(want.mean_f1, abs=1e-9) and got["pairs"] == 6 and got["layer"] == 4
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["recall"] for r in rows] == pytest.approx(want.recall.tolist(), abs=1e-9)
    assert main(argv) == 0
    assert capsys.readouterr().out.startswith(f"P {want.mean_precision:.4f}  R {want.mean_recall:.4f}")


def test_cli_score_errors(tmp_path, capsys):
    (tmp_path / "c.txt").write_text("a\nb\nc\n")
    (tmp_path / "r.txt").write_text("a\nb\n")
    assert main(["score", "-c", str(tmp_path / "c.txt"), "-r", str(tmp_path / "r.txt")]) == 2
    err = capsys.readouterr().err
    assert "c.txt: has 3 texts but" in err and "r.txt has 2" in err
    with pytest.raises(SystemExit):
        main(["score", "-c", str(tmp_path / "c.txt"), "-r", str(tmp_path / "r.txt"), "--baseline", "0.1,0.2"])
    assert "three comma-separated numbers" in capsys.readouterr().err
