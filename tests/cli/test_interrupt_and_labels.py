"""Issue 15, finding 8 (command line): Ctrl-C ends a job with exit 130 and one line, and an eval file's label
that the model does not know is reported with the line it is on."""

import os
import signal
import subprocess
import sys
import time

import pytest

import bertkit.cli.info
from bertkit.cli.main import main


def test_ctrl_c_is_exit_130_with_one_line(monkeypatch, capsys):
    def interrupted(args):
        raise KeyboardInterrupt
    monkeypatch.setattr(bertkit.cli.info, "run", interrupted)
    assert main(["info"]) == 130
    assert capsys.readouterr().err.strip() == "bertkit info: interrupted"


def test_sigint_to_a_running_command(tmp_path):
    """A real SIGINT to a process in the middle of a job (the job is `info`'s run, made to take a while; it runs
    Python between short sleeps, as a real job does)."""
    script = ("import sys, time\nimport bertkit.cli.info as info\nfrom bertkit.cli.main import main\n"
              "def slow(args):\n    print('working', flush=True)\n    for _ in range(600):\n        time.sleep(0.1)\n"
              "info.run = slow\nsys.exit(main(['info']))\n")
    # As from a shell: SIGINT at its default, whatever this test process inherited (in some full-suite runs the
    # pytest process had it ignored, and a child inherits an ignored signal: Python then never raises
    # KeyboardInterrupt)
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        assert proc.stdout.readline().strip() == "working"
        time.sleep(0.2)
        os.kill(proc.pid, signal.SIGINT)
        _, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 130
    assert err.strip().splitlines()[-1] == "bertkit info: interrupted" and "Traceback" not in err


def test_evaluate_names_the_line_of_an_unseen_label(tmp_path, tiny_dir, capsys):
    from tests.serve.conftest import save_task_model

    model = save_task_model(tmp_path / "model", tiny_dir, "classification")  # labels neg, neu, pos
    data = tmp_path / "eval.csv"
    data.write_text("text,label\ngood,pos\nmeh,neutral-ish\nbad,neg\nworse,awful\n")
    assert main(["evaluate", str(model), "--data", str(data)]) == 2
    err = capsys.readouterr().err
    assert "eval.csv: 2 labels not among the model's labels (neg, neu, pos)" in err
    assert "'neutral-ish' (first at line 3)" in err and "'awful' (first at line 5)" in err


@pytest.mark.parametrize("task", ["ner"])
def test_evaluate_names_the_line_of_an_unseen_tag(tmp_path, tiny_dir, capsys, task):
    from tests.serve.conftest import save_task_model

    model = save_task_model(tmp_path / "model", tiny_dir, task)  # O, B/I-PER, B/I-LOC
    data = tmp_path / "eval.conll"
    data.write_text("John B-PER\nlives O\n\nParis B-LOC\nis O\nbig B-ADJ\n")
    assert main(["evaluate", str(model), "--data", str(data)]) == 2
    assert "1 tags not among the model's labels" in (err := capsys.readouterr().err) and "'B-ADJ' (first at line 4)" \
        in err
