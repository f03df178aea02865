"""kill -9 in the middle of fine-tuning, then --resume: the loss curve is the one an uninterrupted run draws."""

import json
import os
import random
import signal
import subprocess
import sys
import textwrap

import pytest

from tests.conftest import save_tiny_hf_model

SCRIPT = textwrap.dedent("""
    import logging, os, signal, sys

    import torch

    torch.set_num_threads(1)
    logging.basicConfig(level=logging.INFO)
    from bertkit.train.finetune import finetune

    out, model, train, dev, mode = sys.argv[1:6]


    def cb(trainer):
        if mode == "kill" and trainer.state.step == 5:
            os.kill(os.getpid(), signal.SIGKILL)


    finetune(out, task="classification", model=model, train_file=train, eval_file=dev, epochs=2, batch_size=4,
             eval_every=3, checkpoint_every=2, log_every=1, progress=False, seed=5, resume=mode == "resume",
             callbacks=(cb,))
""")


def write_csv(path, n, seed):
    rnd = random.Random(seed)
    words = "good great love best music film game war death king river water night school city team".split()
    rows = [f"{' '.join(rnd.choices(words, k=rnd.randint(2, 6)))},{rnd.choice(['pos', 'neg', 'mid'])}"
            for _ in range(n)]
    path.write_text("text,label\n" + "\n".join(rows) + "\n")


def metric_records(out):
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.skipif(not hasattr(signal, "SIGKILL"), reason="needs SIGKILL")
def test_kill_9_then_resume_gives_the_uninterrupted_curve(tmp_path, minilm_dir):
    """Run A uninterrupted; run B SIGKILLed at step 5 (last checkpoint at step 4) and resumed in a new process:
    B's metrics.jsonl has A's train losses and eval records step for step, and B finishes with results.json."""
    model = tmp_path / "tiny"
    save_tiny_hf_model(model, minilm_dir, hidden_dropout_prob=0.1, attention_probs_dropout_prob=0.1)
    write_csv(tmp_path / "train.csv", 16, seed=0)  # 4 batches of 4: 8 steps over 2 epochs
    write_csv(tmp_path / "dev.csv", 6, seed=1)
    (tmp_path / "run.py").write_text(SCRIPT)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}

    def run(out, mode):
        args = [sys.executable, str(tmp_path / "run.py"), str(out), str(model), str(tmp_path / "train.csv"),
                str(tmp_path / "dev.csv"), mode]
        return subprocess.run(args, capture_output=True, text=True, env=env, timeout=120, check=False)

    a, b = tmp_path / "a", tmp_path / "b"
    r = run(a, "plain")
    assert r.returncode == 0, r.stderr[-3000:]
    r = run(b, "kill")
    assert r.returncode == -signal.SIGKILL, r.stderr[-3000:]
    assert not (b / "results.json").exists()
    assert max(r["step"] for r in metric_records(b)) == 5  # it died after logging step 5, past checkpoint 4
    assert sorted(p.name for p in (b / "checkpoints").iterdir()) == ["step-0000003.pt", "step-0000004.pt"]
    r = run(b, "resume")
    assert r.returncode == 0, r.stderr[-3000:]
    assert "resumed from step-0000004.pt" in r.stderr

    rec_a, rec_b = metric_records(a), metric_records(b)
    train_a = [(x["step"], x["loss"]) for x in rec_a if x["kind"] == "train"]
    train_b = [(x["step"], x["loss"]) for x in rec_b if x["kind"] == "train"]
    assert [s for s, _ in train_a] == list(range(1, 9))
    assert [s for s, _ in train_b] == [s for s, _ in train_a]  # no step lost, none logged twice
    for (_, la), (_, lb) in zip(train_a, train_b, strict=True):
        assert lb == pytest.approx(la, abs=1e-6)
    evals_a = [(x["step"], x["loss"], x["accuracy"]) for x in rec_a if x["kind"] == "eval"]
    evals_b = [(x["step"], x["loss"], x["accuracy"]) for x in rec_b if x["kind"] == "eval"]
    assert [e[0] for e in evals_a] == [3, 6, 8] and [e[0] for e in evals_b] == [3, 6, 8]
    for ea, eb in zip(evals_a, evals_b, strict=True):
        assert eb == pytest.approx(ea, abs=1e-6)
    res_a, res_b = (json.loads((d / "results.json").read_text()) for d in (a, b))
    assert res_b["steps"] == res_a["steps"] == 8 and res_b["stopped"] == "done"
    assert res_b["best_step"] == res_a["best_step"]
    assert res_b["dev"]["loss"] == pytest.approx(res_a["dev"]["loss"], abs=1e-6)
