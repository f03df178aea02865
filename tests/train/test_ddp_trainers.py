"""Every trainer under torchrun: 2 CPU processes (gloo) give the weights of 1 process with the same global batch.

One torchrun launch runs fine-tuning, the bi-encoder (cross-rank in-batch negatives with hard negatives; and with
GradCache), the reranker, task distillation and general distillation in turn, each into its own directory; one
plain process runs the same; the test compares them trainer by trainer. Every global batch's last one is smaller
and splits unevenly over the ranks, so the uneven tail (and the bi-encoder's padded gather) is covered too.
"""

import json
import os
import random
import subprocess
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file

from bertkit.data.corpus import shard_batches
from bertkit.errors import CheckpointError, ConfigError
from bertkit.retrieval.biencoder import in_batch_loss
from bertkit.train.distributed import rank_share
from bertkit.train.finetune import finetune
from tests.compress.test_distill import make_teacher, write_csv
from tests.conftest import save_tiny_hf_model
from tests.train.test_finetune import data_files

TRAINERS = ("finetune", "embeddings", "embeddings_cached", "reranker", "distill", "distill_general")

SCRIPT = """
import json, os, sys
import torch.distributed as dist
from bertkit.compress.distill import distill, distill_general
from bertkit.errors import ConfigError
from bertkit.retrieval.biencoder import train_embeddings
from bertkit.retrieval.data import load_retrieval_files
from bertkit.retrieval.reranker import train_reranker
from bertkit.train.finetune import finetune
from bertkit.train.trainer import TrainConfig
from tests.retrieval.test_reranker import toy_data

c, out = json.loads(open(sys.argv[1]).read()), sys.argv[2]
quiet = dict(progress=False, seed=0, lr=1e-3, warmup_ratio=0.0)
results = {}
if int(os.environ.get("WORLD_SIZE", "1")) > 1:  # an uneven global batch fails before any work, naming the numbers
    try:
        finetune(f"{out}/uneven", task="classification", model=c["tiny"], train_file=c["train"], batch_size=5,
                 **quiet)
    except ConfigError as e:
        results["uneven"] = str(e)
# 18 examples in global batches of 8: the last one (2) splits 1 + 1
r = finetune(f"{out}/finetune", task="classification", model=c["tiny"], train_file=c["train"], eval_file=c["dev"],
             epochs=1, batch_size=8, max_length=32, **quiet)
results["finetune"] = r.state.history
# 15 pairs in global batches of 4, a hard negative each: the last batch (3) splits 2 + 1
data = load_retrieval_files(c["queries"], c["docs"], c["qrels"])
negatives = {q: [f"d{(int(q[1:]) + 1) % 15}"] for q in data.queries}
for name, mini in (("embeddings", None), ("embeddings_cached", 1)):
    r = train_embeddings(f"{out}/{name}", data, data, model=c["tiny"], max_length=32, negatives=negatives,
                         mini_batch_size=mini, training=TrainConfig(epochs=1, batch_size=4, **quiet))
    results[name] = r.state.history
# 6 groups of 1 + 3 in global batches of 4: the last one (2) splits 1 + 1. The binary loss: with the listwise one a
# group's logit gradients sum to 0, so the pooler bias's gradient is a near-cancelling sum whose float-order noise
# Adam's g / |g| blows up (3.8e-5 apart after 2 steps, every other tensor < 3e-6)
r = train_reranker(f"{out}/reranker", toy_data(), toy_data(), model=c["tiny"], retriever=c["tiny"], negatives=3,
                   mine_top=5, max_length=32, dev_top=6, loss="binary",
                   training=TrainConfig(epochs=1, batch_size=4, **quiet))
results["reranker"] = r.state.history
# soft labels and cross-entropy, per-example means (the token-mean losses, hidden/attn/value, are per micro-batch:
# exact only for fixed-length rows, as general distillation has)
r = distill(f"{out}/distill", teachers=[c["teacher"]], student_layers=[0, 2], train_file=c["train_distill"],
            eval_file=c["train_distill"], epochs=1, batch_size=4, **quiet)
results["distill"] = r.state.history
r = distill_general(f"{out}/distill_general", teacher=c["encoder4"], student_layers=[1, 3], corpus=[c["corpus"]],
                    cache_dir=c["cache"], max_length=16, eval_sequences=4, alpha_hidden=1.0, max_steps=3,
                    batch_size=6, **quiet)
results["distill_general"] = r.state.history
rank = dist.get_rank() if dist.is_initialized() else 0
open(f"{out}/results-rank{rank}.json", "w").write(json.dumps(results))
"""


def launch(tmp_path, cfg, out, nproc):
    (tmp_path / "cfg.json").write_text(json.dumps(cfg))
    (tmp_path / "run.py").write_text(SCRIPT)
    args = [str(tmp_path / "run.py"), str(tmp_path / "cfg.json"), str(out)]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}", *args]
    if nproc == 1:
        cmd = [sys.executable, *args]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "GLOO_SOCKET_IFNAME": "lo", "PYTHONPATH": os.getcwd()}
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env)
    assert done.returncode == 0, done.stderr[-5000:]


def weights(d):
    return load_file(d / "model.safetensors")


def worst_difference(a, b):
    assert a.keys() == b.keys()
    return max((a[k] - b[k]).abs().max().item() for k in a)


def inputs(tmp_path, minilm_dir):
    """Tiny random models (dropout off: ranks draw their own masks), a teacher, and the data files."""
    save_tiny_hf_model(tmp_path / "tiny", minilm_dir)
    save_tiny_hf_model(tmp_path / "encoder4", minilm_dir, num_hidden_layers=4)
    make_teacher(tmp_path / "teacher", tmp_path / "encoder4")
    train, dev = data_files(tmp_path, "classification", n_train=18, n_dev=6)
    (tmp_path / "q.jsonl").write_text("".join(json.dumps({"_id": f"q{i}", "text": f"query about {w}"}) + "\n"
                                              for i, w in enumerate(toy_words(15))))
    (tmp_path / "d.jsonl").write_text("".join(json.dumps({"_id": f"d{i}", "text": f"a text on {w} and more"}) + "\n"
                                              for i, w in enumerate(toy_words(15))))
    (tmp_path / "r.tsv").write_text("".join(f"q{i}\td{i}\t1\n" for i in range(15)))
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    rnd = random.Random(0)
    for i in range(4):
        (corpus / f"doc{i}.txt").write_text(" ".join(rnd.choices(toy_words(15), k=100)))
    return {"tiny": str(tmp_path / "tiny"), "encoder4": str(tmp_path / "encoder4"),
            "teacher": str(tmp_path / "teacher"), "train": str(train), "dev": str(dev),
            "train_distill": str(write_csv(tmp_path / "distill.csv", 10, 0)), "queries": str(tmp_path / "q.jsonl"),
            "docs": str(tmp_path / "d.jsonl"), "qrels": str(tmp_path / "r.tsv"), "corpus": str(corpus),
            "cache": str(tmp_path / "cache")}


def toy_words(n):
    words = "red green blue river night school city team music film game king water death war love".split()
    return words[:n]


def test_uneven_global_batch_is_refused_naming_the_numbers():
    assert rank_share(8, 2) == 4 and rank_share(5, 1) == 5
    with pytest.raises(ConfigError, match=r"setting batch_size is 5, the global batch over all ranks: it must split "
                                          r"evenly over the 2 ranks \(a multiple of 2, e\.g\. 4 or 6\)"):
        rank_share(5, 2)
    with pytest.raises(ConfigError, match=r"global_batch_size is 3, .* over the 4 ranks \(a multiple of 4, e\.g\. 4"):
        rank_share(3, 4, "global_batch_size")


def test_shard_batches_keep_the_last_batch_split_over_the_ranks():
    order = np.arange(100, 111)  # 11 examples in global batches of 4: two full ones, then 3
    one = shard_batches(order, 4, 0, 1, drop_last=False)
    assert [b.tolist() for b in one] == [[100, 101, 102, 103], [104, 105, 106, 107], [108, 109, 110]]
    two = [shard_batches(order, 4, r, 2, drop_last=False) for r in range(2)]
    assert [len(b) for b in two[0]] == [2, 2, 2] and [len(b) for b in two[1]] == [2, 2, 1]
    assert all(np.concatenate([two[0][k], two[1][k]]).tolist() == one[k].tolist() for k in range(3))
    assert len(shard_batches(order[:9], 4, 1, 2, drop_last=False)) == 2  # a last batch of 1 for 2 ranks: dropped
    assert len(shard_batches(order, 4, 1, 2)) == 2  # pretraining's default drops it


def test_cross_rank_loss_is_the_one_batch_loss():
    """Two ranks' queries against the gathered documents (each rank's positives, then its hard negatives), labels
    offset by the rank's place, average to the loss of one process holding the whole batch."""
    torch.manual_seed(0)
    q, pos, neg = (F.normalize(torch.randn(6, 8), dim=-1) for _ in range(3))
    keys = torch.tensor([0, 1, 2, 3, 4, 5, 10, 11, 2, 13, 14, 15])  # a hard negative repeats query 2's positive
    single = in_batch_loss(q, torch.cat([pos, neg]), keys, 20.0)
    rank_docs = [torch.cat([pos[:3], neg[:3]]), torch.cat([pos[3:], neg[3:]])]
    rank_keys = [torch.cat([keys[:3], keys[6:9]]), torch.cat([keys[3:6], keys[9:]])]
    gathered, gathered_keys = torch.cat(rank_docs), torch.cat(rank_keys)
    per_rank = [in_batch_loss(q[3 * r:3 * r + 3], gathered, gathered_keys, 20.0, offset=6 * r) for r in range(2)]
    assert ((per_rank[0] + per_rank[1]) / 2).item() == pytest.approx(single.item(), rel=1e-6)


@pytest.mark.slow  # one torchrun launch of 2 ranks and one plain process, each running every trainer: ~60 s
def test_every_trainer_two_ranks_equal_one_process(tmp_path, minilm_dir):
    cfg = inputs(tmp_path, minilm_dir)
    launch(tmp_path, cfg, tmp_path / "one", 1)
    launch(tmp_path, cfg, tmp_path / "two", 2)
    for name in TRAINERS:
        assert worst_difference(weights(tmp_path / "one" / name), weights(tmp_path / "two" / name)) < 1e-5, name
    # GradCache (mini-batches of 1) under 2 ranks gives the plain loss's single-process model
    assert worst_difference(weights(tmp_path / "one" / "embeddings"), weights(tmp_path / "two" / "embeddings_cached")) \
        < 1e-5
    one, *ranks = (json.loads((tmp_path / d / f"results-rank{r}.json").read_text())
                   for d, r in (("one", 0), ("two", 0), ("two", 1)))
    assert ranks[0] == ranks[1]  # every rank evaluates alike (the same numbers, so the same best step)
    assert "setting batch_size is 5" in ranks[0]["uneven"] and "over the 2 ranks" in ranks[0]["uneven"]
    assert "uneven" not in one and not (tmp_path / "two" / "uneven").exists()
    for name in TRAINERS:
        assert len(one[name]) == len(ranks[0][name]) >= 1, name
        for a, b in zip(one[name], ranks[0][name], strict=True):
            assert a.keys() == b.keys() and a["step"] == b["step"]
            for k in a:
                if isinstance(a[k], float) and not k.startswith("train_"):  # dev metrics of the same weights
                    assert a[k] == pytest.approx(b[k], abs=1e-4), (name, k)
    for name in ("finetune", "distill", "distill_general"):
        assert json.loads((tmp_path / "two" / name / "results.json").read_text())["world_size"] == 2
    # resuming takes the same rank count: one process refuses the 2-rank checkpoint, naming world_size
    with pytest.raises(CheckpointError, match=r"world_size: checkpoint 2, now 1"):
        finetune(tmp_path / "two" / "finetune", task="classification", model=cfg["tiny"], train_file=cfg["train"],
                 eval_file=cfg["dev"], epochs=1, batch_size=8, max_length=32, progress=False, seed=0, lr=1e-3,
                 warmup_ratio=0.0, resume=True)
