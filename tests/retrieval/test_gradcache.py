"""GradCache (``mini_batch_size``) gives the plain in-batch loss's gradient, on a tiny random BERT: mini-batches
smaller than the batch (no dropout), and with dropout when the replayed RNG must redraw the same masks."""

import copy

import numpy as np
import pytest
import torch

from bertkit.errors import ConfigError
from bertkit.retrieval.biencoder import BiEncoder, load_base, pair_batches, pair_loss
from bertkit.retrieval.mirror import MirrorBiEncoder, set_dropout

pytestmark = pytest.mark.usefixtures("one_thread")

WORDS = "red green blue river night school city team music film game king water death war love".split()


def texts(n, seed):
    rnd = np.random.default_rng(seed)
    return [" ".join(rnd.choice(WORDS, size=rnd.integers(2, 7))) for _ in range(n)]


@pytest.fixture(scope="module")
def base(tiny_dir):
    return load_base(str(tiny_dir), 32)


def batch(enc, n=10, negatives=1, teacher=False, seed=0):
    """One PairBatch of n pairs (the key of pair 3's positive repeated as pair 7's, so masking is exercised), each
    with ``negatives`` hard negatives and optionally teacher scores."""
    tok = lambda xs: enc.tokenize(xs).ids  # noqa: E731
    q, d = tok(texts(n, seed)), tok(texts(n, seed + 1))
    keys = list(range(n))
    keys[7] = keys[3]
    negs = [[x] for x in tok(texts(n * negatives, seed + 2))] if negatives else None
    neg_keys = [[100 + i] for i in range(n)] if negatives else None
    scores = np.random.default_rng(seed).normal(size=(n, 1 + negatives)).astype(np.float32) if teacher else None
    return pair_batches(q, d, keys, n, seed=0, epoch=0, negatives=negs, neg_keys=neg_keys, teacher=scores)[0]


def grads(bi, b, weight=1.0):
    """Parameter gradients of ``weight`` x the engine's loss of b, and that loss (in train mode, as the engine)."""
    bi.train().zero_grad(set_to_none=True)
    torch.manual_seed(123)  # dropout's stream, the same for every variant
    loss = pair_loss(bi, b)
    (loss * weight).backward()
    return {k: p.grad.clone() for k, p in bi.named_parameters() if p.grad is not None}, loss.item()


def compare(a, b):
    assert a[0].keys() == b[0].keys() and len(a[0]) > 10
    worst = max((a[0][k] - b[0][k]).abs().max().item() for k in a[0])
    assert worst < 1e-5, worst
    assert a[1] == pytest.approx(b[1], abs=1e-6)


@pytest.mark.parametrize("mini", [1, 3, 64])
def test_gradcache_gives_the_plain_gradient(base, mini):
    encoder, enc = base
    b = batch(enc, teacher=True)
    plain = BiEncoder(copy.deepcopy(encoder), enc.sentence, distill_weight=0.5)
    cached = BiEncoder(copy.deepcopy(encoder), enc.sentence, distill_weight=0.5, mini_batch_size=mini)
    compare(grads(plain, b, weight=2.5), grads(cached, b, weight=2.5))  # the engine's weight passes through


def test_gradcache_replays_dropout_and_leaves_the_rng_as_the_plain_loss_does(base):
    encoder, enc = base
    b = batch(enc, negatives=0)
    noisy = copy.deepcopy(encoder)
    set_dropout(noisy, 0.3)
    # one mini-batch per side draws the masks in the plain forward's order; a replay with other masks would differ
    plain, cached = BiEncoder(copy.deepcopy(noisy), enc.sentence), BiEncoder(noisy, enc.sentence, mini_batch_size=64)
    compare(g := grads(plain, b), grads(cached, b))
    after_plain = torch.get_rng_state()
    grads(cached, b)
    assert torch.equal(torch.get_rng_state(), after_plain)  # the next step draws the same numbers either way
    # smaller mini-batches draw other masks (as sentence-transformers' cached loss does): a valid, different sample
    other = grads(BiEncoder(copy.deepcopy(noisy), enc.sentence, mini_batch_size=3), b)
    assert max((g[0][k] - other[0][k]).abs().max().item() for k in g[0]) > 1e-4


def test_mirror_gradcache(base):
    encoder, enc = base
    b = batch(enc, negatives=0)
    compare(grads(MirrorBiEncoder(copy.deepcopy(encoder), enc.sentence), b),
            grads(MirrorBiEncoder(copy.deepcopy(encoder), enc.sentence, mini_batch_size=4), b))


def test_bad_mini_batch_size_is_a_config_error(base):
    encoder, enc = base
    with pytest.raises(ConfigError, match=r"mini_batch_size \(GradCache\) must be >= 1, got 0"):
        BiEncoder(encoder, enc.sentence, mini_batch_size=0)
