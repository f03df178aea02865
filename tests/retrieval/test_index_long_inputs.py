"""``bertkit index build --long-inputs chunk``: a long document is indexed as the length-weighted mean of its
windows, the choice is recorded, and appends embed the same way."""

import json

import numpy as np

from bertkit.cli.main import main
from bertkit.encoder import load
from bertkit.retrieval.index import VectorIndex

LONG = " ".join(["the central bank raised interest rates again and stocks fell"] * 30)


def test_index_build_chunk(tmp_path, tiny_dir, capsys):
    docs = tmp_path / "docs.jsonl"
    docs.write_text("".join(json.dumps(d) + "\n" for d in [{"_id": "short", "text": "cats purr on the sofa"},
                                                            {"_id": "long", "text": LONG}]))
    out = tmp_path / "idx"
    assert main(["index", "build", str(tiny_dir), "-i", str(docs), "-o", str(out), "--long-inputs", "chunk",
                 "--stride", "16"]) == 0
    index = VectorIndex.load(out)
    assert index.model["long_inputs"] == "chunk" and index.model["stride"] == 16
    enc = load(str(tiny_dir))
    want = enc.embed(["cats purr on the sofa", LONG], long_inputs="chunk", stride=16, normalize=True)
    np.testing.assert_allclose(index.vectors, want, atol=1e-6)
    assert not np.allclose(index.vectors[1], enc.embed([LONG])[0], atol=1e-3)  # not the truncated document
    more = tmp_path / "more.jsonl"
    more.write_text(json.dumps({"_id": "long2", "text": LONG}) + "\n")
    assert main(["index", "build", "-i", str(more), "-o", str(out), "--append"]) == 0  # read as recorded
    np.testing.assert_allclose(VectorIndex.load(out).vectors[2], want[1], atol=1e-6)
    capsys.readouterr()
    assert main(["index", "build", "-i", str(more), "-o", str(out), "--append", "--stride", "4"]) == 2
    assert "read as the index records (chunk)" in capsys.readouterr().err
