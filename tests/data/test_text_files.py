import numpy as np
import pyarrow.parquet as pq
import pytest

from bertkit.data.outputs import write_embeddings
from bertkit.data.text_files import read_texts
from bertkit.errors import InputFileError


def test_txt_keeps_one_row_per_line(tmp_path):
    f = tmp_path / "in.txt"
    f.write_bytes("first\r\n\nthird ünïcode\n".encode())
    assert read_texts(f) == ["first", "", "third ünïcode"]


def test_jsonl_and_csv_and_tsv(tmp_path):
    (tmp_path / "a.jsonl").write_text('{"text": "one", "id": 1}\n\n{"text": "two"}\n')
    assert read_texts(tmp_path / "a.jsonl") == ["one", "two"]
    (tmp_path / "b.jsonl").write_text('{"body": "x"}\n')
    assert read_texts(tmp_path / "b.jsonl", "body") == ["x"]
    (tmp_path / "c.csv").write_text('id,sentence\n1,"hello, there"\n2,"multi\nline"\n')
    assert read_texts(tmp_path / "c.csv", "sentence") == ["hello, there", "multi\nline"]
    (tmp_path / "d.tsv").write_text("text\tlabel\nfoo\t1\n")
    assert read_texts(tmp_path / "d.tsv") == ["foo"]


def test_not_utf8_names_file_and_line(tmp_path):
    f = tmp_path / "bad.txt"
    f.write_bytes(b"fine\nalso fine\ncaf\xe9\n")
    with pytest.raises(InputFileError, match=r"bad\.txt, line 3: not valid UTF-8 \(byte 0xe9"):
        read_texts(f)


@pytest.mark.parametrize(
    ("content", "pattern"),
    [
        ('{"text": "ok"}\n{"text": oops}\n', r"line 2: not valid JSON"),
        ('{"text": "ok"}\n{"title": "no text"}\n', r"line 2: missing field 'text' \(fields: title\)"),
        ('["a list"]\n', r"line 1: expected a JSON object"),
        ('{"text": 5}\n', r"line 1: field 'text' is int"),
    ],
)
def test_jsonl_errors(tmp_path, content, pattern):
    f = tmp_path / "x.jsonl"
    f.write_text(content)
    with pytest.raises(InputFileError, match=pattern) as e:
        read_texts(f)
    assert "x.jsonl" in str(e.value)


def test_csv_without_column(tmp_path):
    f = tmp_path / "x.csv"
    f.write_text("id,body\n1,hi\n")
    with pytest.raises(InputFileError, match=r"x\.csv, line 1: no column 'text' in the header \(columns: id, body\)"):
        read_texts(f)


def test_unsupported_and_missing(tmp_path):
    with pytest.raises(InputFileError, match=r"unsupported input format '\.xml'"):
        read_texts(tmp_path / "a.xml")
    with pytest.raises(InputFileError, match="file not found"):
        read_texts(tmp_path / "a.txt")


def test_write_npy_and_parquet(tmp_path):
    v = np.random.default_rng(0).standard_normal((3, 4)).astype(np.float32)
    write_embeddings(tmp_path / "e.npy", v)
    assert np.array_equal(np.load(tmp_path / "e.npy"), v)
    write_embeddings(tmp_path / "e.parquet", v, ["a", "b", "c"])
    t = pq.read_table(tmp_path / "e.parquet")
    assert t.column("index").to_pylist() == [0, 1, 2]
    assert np.array_equal(np.array(t.column("embedding").to_pylist(), dtype=np.float32), v)
    assert t.column("text").to_pylist() == ["a", "b", "c"]


def test_failed_write_leaves_old_file_and_no_temp(tmp_path, monkeypatch):
    out = tmp_path / "e.npy"
    write_embeddings(out, np.zeros((1, 2), np.float32))
    before = out.read_bytes()

    def boom(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(np, "save", boom)
    with pytest.raises(OSError, match="disk full"):
        write_embeddings(out, np.ones((5, 2), np.float32))
    assert out.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["e.npy"]


# ---- broken CSV quoting (issue 15, finding 5) ---------------------------------------------------------------------
@pytest.mark.parametrize(("content", "line"), [
    ('text\nfirst\n"second, with a quote left open\nthird\nfourth\n', 3),  # runs to the end of the file
    ('id,text\n1,"a broken\n2,ok\n3,"fine"\n', 2),  # closed later, with text after the closing quote
    ('id,text\n1,"quoted" then more\n', 2),
])
def test_broken_quoting_fails_with_file_and_line(tmp_path, content, line):
    f = tmp_path / "broken.csv"
    f.write_text(content)
    with pytest.raises(InputFileError, match=rf"broken\.csv, line {line}: malformed CSV .*a quote opened"):
        read_texts(f, None if content.startswith("text") else "text")


def test_broken_quoting_in_a_task_file_and_the_embed_cli(tmp_path, tiny_dir, capsys):
    from bertkit.cli.main import main
    from bertkit.data.tasks import read_task_file

    f = tmp_path / "train.csv"
    f.write_text('text,label\ngood movie,pos\n"bad movie,neg\nfine film,pos\n')
    with pytest.raises(InputFileError, match=r"train\.csv, line 3: malformed CSV"):
        read_task_file(f, "classification")
    # before: one vector for three lines, exit 0; now exit 2 naming file and line, and nothing written
    assert main(["embed", str(tiny_dir), "-i", str(f), "-o", str(tmp_path / "v.npy")]) == 2
    assert "train.csv, line 3: malformed CSV" in capsys.readouterr().err and not (tmp_path / "v.npy").exists()


def test_multiline_cells_are_read_with_a_warning_naming_their_lines(tmp_path, caplog):
    f = tmp_path / "multi.csv"
    f.write_text('id,text\n1,"two\nlines"\n2,one line\n3,"three\nmore\nlines"\n')
    assert read_texts(f) == ["two\nlines", "one line", "three\nmore\nlines"]
    assert "multi.csv: 2 row(s) span several lines" in caplog.text and "line(s) 2, 5" in caplog.text
    assert "3 rows come from 6 lines" in caplog.text
