"""Output locations are checked before any work (issue 15, finding 6): every command that writes fails at once,
exit 2 with one line naming the path, never a traceback after the compute."""

import pytest

from bertkit.cli.main import main
from bertkit.utils.output_paths import OutputPathError, check_output_dir, check_output_file


@pytest.fixture
def text_file(tmp_path):
    f = tmp_path / "in.txt"
    f.write_text("hello\nworld\n")
    return f


def test_check_output_file(tmp_path):
    assert check_output_file(tmp_path / "new" / "deeper" / "e.npy", (".npy",)) == tmp_path / "new" / "deeper" / "e.npy"
    assert not (tmp_path / "new").exists()  # checked, not created
    (tmp_path / "x.npy").mkdir()
    with pytest.raises(OutputPathError, match=r"x\.npy is a directory"):
        check_output_file(tmp_path / "x.npy")
    (tmp_path / "afile").write_text("")
    with pytest.raises(OutputPathError, match=r"afile is a file, not a directory"):
        check_output_file(tmp_path / "afile" / "e.npy")
    with pytest.raises(OutputPathError, match=r"cannot write /sys/x\.npy: no permission to create files in /sys"):
        check_output_file("/sys/x.npy")  # sysfs refuses new files, to root too
    with pytest.raises(OutputPathError, match=r"unsupported output format '\.txt'; expected \.npy or \.parquet"):
        check_output_file(tmp_path / "e.txt", (".npy", ".parquet"))
    assert list(tmp_path.iterdir()) != [] and not any(p.name.startswith(".bertkit-write-check") for p in
                                                      tmp_path.iterdir())  # the probe is removed


def test_check_output_dir(tmp_path):
    assert check_output_dir(tmp_path / "run") == tmp_path / "run"
    (tmp_path / "f").write_text("")
    with pytest.raises(OutputPathError, match=r"f exists and is not a directory"):
        check_output_dir(tmp_path / "f")
    with pytest.raises(OutputPathError, match=r"cannot write /proc/nope/run"):
        check_output_dir("/proc/nope/run")


def commands(tiny_dir, text_file, bad):
    """Each writing command with its output at ``bad`` (a directory for those that write a directory)."""
    t, m = str(text_file), str(tiny_dir)
    return {
        "embed": ["embed", m, "-i", t, "-o", f"{bad}.npy"],
        "predict": ["predict", m, "-i", t, "-o", f"{bad}.jsonl"],
        "score": ["score", "--model", m, "-c", t, "-r", t, "-o", f"{bad}.jsonl"],
        "export": ["export", "onnx", m, "-o", bad],
        "tokenizer": ["tokenizer", "train", "--corpus", t, "--vocab-size", "200", "-o", bad],
        "index": ["index", "build", m, "-i", t, "-o", bad],
        "finetune": ["finetune", "--output", bad, "--task", "classification", "--train", t],
        "distill": ["distill", "--output", bad],
        "pretrain": ["pretrain", "--recipe", "tiny-cpu", "--output", bad],
        "compress": ["compress", m, "--recipe", "nope.yaml", "--output", bad],
        "train-embeddings": ["train-embeddings", "--dataset", "bbc-news", "--output", bad],
        "train-reranker": ["train-reranker", "--dataset", "bbc-news", "--output", bad],
        "demo": ["demo", "--skip-search", "--output", bad],
    }


@pytest.mark.parametrize("command", ["embed", "predict", "score", "export", "tokenizer", "index", "finetune",
                                     "distill", "pretrain", "compress", "train-embeddings", "train-reranker", "demo"])
@pytest.mark.parametrize("where", ["sys", "file-parent"])
def test_every_writing_command_checks_its_output_first(command, where, tmp_path, tiny_dir, text_file, capsys,
                                                       monkeypatch):
    import bertkit.encoder
    import bertkit.model.weights

    def no_model(*args, **kwargs):
        raise AssertionError("a model was loaded before the output location was checked")
    monkeypatch.setattr(bertkit.encoder.Encoder, "from_pretrained", no_model)
    monkeypatch.setattr(bertkit.model.weights, "load_pretrained", no_model)
    if where == "sys":
        bad = "/sys/bertkit-out"
    else:
        (tmp_path / "plain-file").write_text("")
        bad = str(tmp_path / "plain-file" / "out")
    assert main(commands(tiny_dir, text_file, bad)[command]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    assert "cannot write" in err and ("/sys" in err if where == "sys" else "plain-file is a file" in err), err


def test_output_that_is_a_directory(tmp_path, tiny_dir, text_file, capsys):
    (tmp_path / "vectors.npy").mkdir()
    assert main(["embed", str(tiny_dir), "-i", str(text_file), "-o", str(tmp_path / "vectors.npy")]) == 2
    assert "vectors.npy is a directory" in capsys.readouterr().err
    (tmp_path / "run").write_text("")
    assert main(["tokenizer", "train", "--corpus", str(text_file), "--vocab-size", "200", "-o",
                 str(tmp_path / "run")]) == 2
    assert "run exists and is not a directory" in capsys.readouterr().err
