"""torchrun with 2 CPU processes (gloo) gives the same model as 1 process with the same global batch."""

import json
import os
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

from bertkit.data.wordpiece import train_wordpiece
from bertkit.train.plot import read_metrics
from tests.train.test_pretrain import corpus, tiny  # noqa: F401  (corpus is a fixture)

SCRIPT = """
import json, os, sys
from bertkit.train.pretrain import PretrainConfig, pretrain

def crash(trainer):  # every rank dies after this step, as a killed job would (its last checkpoint stays)
    if trainer.state.step == int(os.environ.get("CRASH_AT", "0")):
        os._exit(3)

pretrain(sys.argv[2], PretrainConfig.from_dict(json.loads(open(sys.argv[1]).read())), resume="--resume" in sys.argv,
         callbacks=(crash,))
"""


def launch(tmp_path, cfg, out, nproc, resume=False, crash_at=0):
    (tmp_path / "cfg.json").write_text(json.dumps(cfg))
    (tmp_path / "run.py").write_text(SCRIPT)
    args = [str(tmp_path / "run.py"), str(tmp_path / "cfg.json"), str(out)] + (["--resume"] if resume else [])
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}", *args]
    if nproc == 1:
        cmd = [sys.executable, *args]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "GLOO_SOCKET_IFNAME": "lo", "PYTHONPATH": os.getcwd(),
           "CRASH_AT": str(crash_at)}
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
    if crash_at:
        assert done.returncode != 0
        return
    assert done.returncode == 0, done.stderr[-3000:]


def weights(d):
    return load_file(d / "model.safetensors")


@pytest.mark.usefixtures("one_thread")
def test_two_processes_equal_one_with_the_same_global_batch(corpus, tmp_path):  # noqa: F811
    train_wordpiece([corpus], 128, tmp_path / "tok")
    cfg = tiny(corpus, tmp_path, max_steps=4, eval_every=2, checkpoint_every=2)
    cfg.update(tokenizer=str(tmp_path / "tok"), global_batch_size=8)
    cfg["training"]["batch_size"] = 4  # 1 process: 2 micro-batches of 4; 2 processes: 1 each
    launch(tmp_path, cfg, tmp_path / "one", 1)
    launch(tmp_path, cfg, tmp_path / "two", 2)
    a, b = weights(tmp_path / "one"), weights(tmp_path / "two")
    assert a.keys() == b.keys()
    worst = max((a[k] - b[k]).abs().max().item() for k in a)
    assert worst < 1e-5, worst
    la = [r["loss"] for r in read_metrics(tmp_path / "one" / "metrics.jsonl") if r["kind"] == "train"]
    lb = [r["loss"] for r in read_metrics(tmp_path / "two" / "metrics.jsonl") if r["kind"] == "train"]
    assert la == pytest.approx(lb, abs=1e-5)
    results = json.loads((tmp_path / "two" / "results.json").read_text())
    assert results["world_size"] == 2 and results["train_tokens"] == 4 * 8 * 32  # tokens of both ranks
    assert not torch.isnan(next(iter(b.values()))).any()


@pytest.mark.slow  # 34 s of two-rank runs; the equality test above keeps DDP in the default run
@pytest.mark.usefixtures("one_thread")
def test_two_process_run_resumes_after_a_crash(corpus, tmp_path):  # noqa: F811
    train_wordpiece([corpus], 128, tmp_path / "tok")
    cfg = tiny(corpus, tmp_path, max_steps=6, eval_every=3, checkpoint_every=2)
    cfg.update(tokenizer=str(tmp_path / "tok"), global_batch_size=8)
    cfg["model"]["hidden_dropout_prob"] = 0.1  # per-rank dropout streams must resume too
    launch(tmp_path, cfg, tmp_path / "whole", 2)
    launch(tmp_path, cfg, tmp_path / "cut", 2, crash_at=5)  # dies after step 5; the checkpoint of step 4 stays
    assert not (tmp_path / "cut" / "model.safetensors").exists()
    launch(tmp_path, cfg, tmp_path / "cut", 2, resume=True)
    a, b = weights(tmp_path / "whole"), weights(tmp_path / "cut")
    assert max((a[k] - b[k]).abs().max().item() for k in a) < 1e-6
