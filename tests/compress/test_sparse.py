"""Unstructured pruning on a tiny random BERT: exact sparsity (magnitude, oBERT), masks that survive AdamW and
a save/load, the OBS formulas checked on quadratics where they are exact, the cubic schedule, gradual pruning
through the Trainer, and setting errors raised before any work."""

import copy
import itertools
import random

import pytest
import torch

from bertkit.compress.sparse import (
    MASKS_FILE,
    Masks,
    SparsityConfig,
    cubic_schedule,
    fisher_inverse,
    magnitude_masks,
    obert_masks,
    obert_prune,
    obs_scores,
    obs_update,
    prunable_weights,
    prune_gradually,
)
from bertkit.data.features import make_batch
from bertkit.data.tasks import TaskData
from bertkit.data.tokenizer import WordPieceTokenizer
from bertkit.errors import CheckpointError
from bertkit.model.weights import load_pretrained
from bertkit.task_model import TaskModel, build_head

pytestmark = pytest.mark.usefixtures("one_thread")

WORDS = "good great love best music film game war death king river water night school city team".split()


def task_model(tiny_dir) -> TaskModel:
    torch.manual_seed(0)
    encoder, _ = load_pretrained(tiny_dir)
    return TaskModel(build_head(encoder, "classification", 2), WordPieceTokenizer.from_dir(tiny_dir),
                     "classification", ["neg", "pos"], 32)


def dataset(n: int = 16) -> TaskData:
    rnd = random.Random(0)
    texts = [" ".join(rnd.choices(WORDS, k=rnd.randint(2, 6))) for _ in range(n)]
    labels = ["pos" if "good" in t or "great" in t else "neg" for t in texts]
    return TaskData("classification", texts, None, labels, None, "test")


def features(tm: TaskModel, n: int = 16):
    return tm.featurize(dataset(n))


def batches(feats, size: int = 2):
    return [make_batch(feats, range(i, min(i + size, len(feats)))) for i in range(0, len(feats), size)]


def zeros(model) -> int:
    return sum(int((w == 0).sum()) for w in prunable_weights(model).values())


def total(model) -> int:
    return sum(w.numel() for w in prunable_weights(model).values())


def expected_pruned(model, sparsity: float, block_size: int) -> int:
    return round(sparsity * total(model) / block_size) * block_size


@pytest.mark.parametrize("block_size", [1, 4])
def test_magnitude_reaches_the_sparsity_exactly_and_prunes_the_smallest(tiny_dir, block_size):
    encoder, _ = load_pretrained(tiny_dir)
    dense = copy.deepcopy(encoder.state_dict())
    masks = magnitude_masks(encoder, 0.37, block_size)
    masks.apply(encoder)
    n = expected_pruned(encoder, 0.37, block_size)
    assert zeros(encoder) == n
    assert masks.sparsity()["overall"] == n / total(encoder)
    assert abs(n / total(encoder) - 0.37) <= block_size / 2 / total(encoder)
    assert set(masks.sparsity()) == {"overall", "layers.0", "layers.1"}
    # global ranking: every pruned unit's norm is <= every kept one's, across all tensors
    pruned, kept = [], []
    for name, m in masks.masks.items():
        norms = dense[name].reshape(m.shape[0], -1, block_size).norm(dim=-1)
        unit_kept = m.reshape(m.shape[0], -1, block_size).all(-1)
        assert (m.reshape(m.shape[0], -1, block_size).any(-1) == unit_kept).all()  # whole units
        pruned.append(norms[~unit_kept])
        kept.append(norms[unit_kept])
    assert torch.cat(pruned).max() <= torch.cat(kept).min()
    # embeddings, LayerNorms, biases, pooler stay dense and unchanged
    for name, t in encoder.state_dict().items():
        if name not in masks.masks:
            assert torch.equal(t, dense[name]), name


@pytest.mark.parametrize("block_size", [1, 4])
def test_obert_reaches_the_sparsity_exactly_and_updates_kept_weights(tiny_dir, block_size):
    tm = task_model(tiny_dir)
    feats = features(tm)
    before = {n: w.detach().clone() for n, w in prunable_weights(tm.head).items()}
    masks = obert_masks(tm.head, 0.5, batches(feats), tm.loss, block_size=block_size, num_grads=8)
    assert zeros(tm.head) == expected_pruned(tm.head, 0.5, block_size)
    assert masks.sparsity()["overall"] == expected_pruned(tm.head, 0.5, block_size) / total(tm.head)
    after = prunable_weights(tm.head)
    moved = sum(int((after[n][m] != before[n][m]).sum()) for n, m in masks.masks.items())
    assert moved > 0  # the OBS update changed kept weights of blocks that lost some
    assert torch.equal(Masks.from_weights(tm.head).masks["layers.0.Wqkv.weight"], masks.masks["layers.0.Wqkv.weight"])


def test_masks_keep_zeros_through_adamw_steps(tiny_dir):
    tm = task_model(tiny_dir)
    head, bs = tm.head.train(), batches(features(tm), 4)
    opt = torch.optim.AdamW(head.parameters(), lr=1e-2, weight_decay=0.1)
    for b in bs[:3]:  # dense steps first: AdamW momentum that would revive pruned weights
        tm.loss(head, b).backward()
        opt.step()
        opt.zero_grad()
    masks = magnitude_masks(head, 0.6)
    masks.attach(head, opt)
    start = {n: w.detach().clone() for n, w in prunable_weights(head).items()}
    for b in bs:
        tm.loss(head, b).backward()
        for n, w in prunable_weights(head).items():
            assert (w.grad[~masks.masks[n]] == 0).all()
        opt.step()
        opt.zero_grad()
        for n, w in prunable_weights(head).items():  # right after the step: what a checkpoint would save
            assert (w[~masks.masks[n]] == 0).all(), n
    assert any(not torch.equal(w[masks.masks[n]], start[n][masks.masks[n]]) for n, w in prunable_weights(head).items())
    assert Masks.from_weights(head).sparsity() == masks.sparsity()

    # without the optimizer: stale momentum moves pruned weights, the next forward zeroes them again
    masks.detach()
    masks.attach(head)
    tm.loss(head, bs[0]).backward()
    opt.step()
    assert zeros(head) < expected_pruned(head, 0.6, 1)
    tm.loss(head, bs[1])
    assert zeros(head) == expected_pruned(head, 0.6, 1)
    masks.detach()


@pytest.mark.parametrize(("block_size", "fisher_block"), [(1, 1), (1, 8), (4, 4), (4, 8)])
def test_obert_with_identity_fisher_is_magnitude_pruning(tiny_dir, block_size, fisher_block):
    encoder, _ = load_pretrained(tiny_dir)
    want = magnitude_masks(encoder, 0.5, block_size)
    dense = {n: w.detach().clone() for n, w in prunable_weights(encoder).items()}
    fisher = {n: torch.eye(fisher_block).expand(w.numel() // fisher_block, -1, -1).clone()
              for n, w in dense.items()}
    got = obert_prune(encoder, 0.5, fisher, block_size)
    for n, w in prunable_weights(encoder).items():
        assert torch.equal(got.masks[n], want.masks[n]), n
        torch.testing.assert_close(w, dense[n] * want.masks[n], rtol=0, atol=1e-7)  # F = I: no update


def quadratic(n=400, d=8, noise=0.0, seed=0):
    """Least squares on correlated features: w* at the optimum, loss(w) = ½ mean (Xw - y)², Hessian XᵀX / n."""
    g = torch.Generator().manual_seed(seed)

    def randn(*shape):
        return torch.randn(*shape, generator=g, dtype=torch.float64)

    x = randn(n, d) @ (torch.eye(d, dtype=torch.float64) + 0.8 * randn(d, d))
    y = x @ randn(d) + noise * randn(n)
    w = torch.linalg.lstsq(x, y.unsqueeze(1)).solution.squeeze(1)

    def loss(v):
        return 0.5 * float(((x @ v - y) ** 2).mean())

    return x, y, w, loss


def test_obs_loss_increase_equals_saliency_on_a_quadratic():
    """With the true Hessian as F, ρ_Q is exactly the loss increase after the OBS update, and that update is the
    best refit of the kept weights."""
    x, y, w, loss = quadratic(noise=0.3)
    finv = fisher_inverse((x.T @ x / len(x))[None], damp=1e-12)  # one Fisher block of all 8 weights
    rho = obs_scores(w[None], finv, 2)  # (1, 4 units of 2)
    for j in range(4):
        pruned = torch.zeros(1, 8, dtype=torch.bool)
        pruned[0, 2 * j:2 * j + 2] = True
        new = obs_update(w[None], finv, pruned)[0]
        assert (new[pruned[0]] == 0).all()
        assert loss(new) - loss(w) == pytest.approx(float(rho[0, j]), rel=1e-6)
        keep = ~pruned[0]
        refit = torch.linalg.lstsq(x[:, keep], y.unsqueeze(1)).solution.squeeze(1)
        assert loss(new) == pytest.approx(loss(torch.zeros(8, dtype=torch.float64).masked_scatter(keep, refit)),
                                          rel=1e-6)


@pytest.mark.parametrize("block_size", [1, 2])
def test_obs_update_beats_plain_zeroing_with_an_empirical_fisher(block_size):
    """The empirical Fisher of noisy regression is ∝ the Hessian: the OBS update must cut the loss increase."""
    x, _y, w, loss = quadratic(n=4000, d=16, noise=1.0, seed=1)
    r = x @ w - _y
    grads = r.unsqueeze(1) * x  # (n, d) per-sample gradients
    finv = fisher_inverse((grads.T @ grads / len(x))[None])
    rho = obs_scores(w[None], finv, block_size)
    units = torch.argsort(rho.flatten())[: rho.numel() // 2]
    pruned = torch.zeros(rho.numel(), dtype=torch.bool)
    pruned[units] = True
    pruned = pruned.repeat_interleave(block_size)[None]
    obs = loss(obs_update(w[None], finv, pruned)[0]) - loss(w)
    zeroed = loss(w.masked_fill(pruned[0], 0)) - loss(w)
    assert obs < 0.5 * zeroed


def test_cubic_schedule_endpoints_and_monotonicity():
    s = [cubic_schedule(t, 10, 110, 0.1, 0.9) for t in range(0, 130)]
    assert s[0] == s[10] == 0.1 and s[110] == s[129] == 0.9
    assert all(a <= b for a, b in itertools.pairwise(s))
    assert s[60] == pytest.approx(0.9 - 0.8 / 8)  # halfway: (1 - ½)³ of the way left
    assert s[20] - s[10] > s[110] - s[100]  # fast early, slow late
    with pytest.raises(ValueError, match="end_step=5"):
        cubic_schedule(0, 10, 5, 0.0, 0.5)


def test_masks_save_load_and_mismatch(tiny_dir, tmp_path):
    encoder, _ = load_pretrained(tiny_dir)
    masks = magnitude_masks(encoder, 0.3, 4)
    path = masks.save(tmp_path)
    assert path == tmp_path / MASKS_FILE
    for source in (tmp_path, path):
        loaded = Masks.load(source)
        assert set(loaded.masks) == set(masks.masks)
        assert all(torch.equal(loaded.masks[n], m) for n, m in masks.masks.items())
    fresh, _ = load_pretrained(tiny_dir)
    loaded.apply(fresh)
    assert zeros(fresh) == expected_pruned(fresh, 0.3, 4)
    loaded.masks["layers.1.mlp_out.weight"] = torch.ones(3, 3, dtype=torch.bool)
    with pytest.raises(CheckpointError, match=r"layers\.1\.mlp_out\.weight"):
        loaded.apply(fresh)
    with pytest.raises(CheckpointError, match="no masks file"):
        Masks.load(tmp_path / "nowhere")


@pytest.mark.parametrize("bad", [1.0, -0.1, 1.5])
def test_invalid_sparsity_is_named_before_any_work(tiny_dir, tmp_path, bad):
    tm = task_model(tiny_dir)
    dense = {n: w.detach().clone() for n, w in prunable_weights(tm.head).items()}
    with pytest.raises(ValueError, match=f"sparsity={bad}"):
        SparsityConfig(sparsity=bad).validate()
    with pytest.raises(ValueError, match=f"sparsity={bad}"):
        magnitude_masks(tm.head, bad)
    with pytest.raises(ValueError, match=f"sparsity={bad}"):
        obert_masks(tm.head, bad, iter(()), tm.loss)  # before any gradient (an empty iterator would fail later)
    out = tmp_path / "out"
    with pytest.raises(ValueError, match=f"sparsity={bad}"):
        prune_gradually(tm, features(tm), config=SparsityConfig(sparsity=bad, steps=2), output_dir=out)
    assert not out.exists()
    assert all(torch.equal(w, dense[n]) for n, w in prunable_weights(tm.head).items())


def test_block_size_that_does_not_divide_is_named(tiny_dir, tmp_path):
    tm = task_model(tiny_dir)
    with pytest.raises(ValueError, match=r"block_size=5 does not divide .*layers\.0\.Wqkv\.weight"):
        prune_gradually(tm, features(tm), config=SparsityConfig(block_size=5, steps=2), output_dir=tmp_path / "o")
    with pytest.raises(ValueError, match="fisher_block=6"):
        obert_masks(tm.head, 0.5, iter(()), tm.loss, block_size=4, fisher_block=6)
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("method", ["magnitude", "obert"])
def test_prune_gradually_follows_the_schedule_and_saves_a_sparse_model(tiny_dir, tmp_path, method):
    tm = task_model(tiny_dir)
    feats = features(tm)
    cfg = SparsityConfig(method=method, sparsity=0.6, block_size=4, fisher_block=8, steps=6, start_step=0,
                         end_step=4, prune_every=2, lr=1e-3, batch_size=4, fisher_grads=4, fisher_batch_size=2,
                         eval_every=3)
    seen = []

    def eval_fn(m: TaskModel) -> dict[str, float]:
        seen.append(zeros(m.head))  # evaluation sees the sparse model
        return m.evaluate(dataset())

    res = prune_gradually(tm, feats, eval_fn=eval_fn, config=cfg, output_dir=tmp_path / "out")
    assert [h["step"] for h in res.history] == [0, 2, 4]
    targets = [h["target"] for h in res.history]
    assert targets[0] == 0.0 and targets == sorted(targets) and targets[-1] == 0.6
    n = expected_pruned(tm.head, 0.6, 4)
    assert res.masks.sparsity()["overall"] == n / total(tm.head)
    assert zeros(tm.head) == n  # fixed after step 4, through steps 5 and 6
    evals = [r for r in res.state.history if "sparsity" in r]
    assert [r["step"] for r in evals] == [3, 6] and evals[-1]["sparsity"] == n / total(tm.head)
    assert "accuracy" in evals[-1] and seen[-1] == n
    loaded = TaskModel.from_pretrained(tmp_path / "out")
    saved = Masks.load(tmp_path / "out")
    assert Masks.from_weights(loaded.head).sparsity() == saved.sparsity() == res.masks.sparsity()
