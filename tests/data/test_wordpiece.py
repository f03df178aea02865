"""Training a WordPiece vocabulary: sizes, special ids, and files that transformers loads to the same ids."""

import json
import logging
import random

import pytest

from bertkit.cli import main as cli_main
from bertkit.data.tokenizer import WordPieceTokenizer
from bertkit.data.wordpiece import SPECIAL_TOKENS, train_wordpiece
from bertkit.errors import BertkitError, ConfigError

transformers = pytest.importorskip("transformers")

SENTENCES = ["The Quick brown fox, jumps!", "Café naïve ÜBER über", "unseen qzxw tokens [MASK] here", "", "a " * 50]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """Two text files and a jsonl of made-up words: enough distinct pieces for a few hundred tokens."""
    d = tmp_path_factory.mktemp("corpus")
    rng = random.Random(0)
    words = ["".join(rng.choice("abcdefghijklmnopqrstuvwxyz") for _ in range(rng.randint(3, 9))) for _ in range(400)]
    words += ["The", "quick", "brown", "fox", "jumps", "café", "Über"]

    def doc(n):
        return " ".join(rng.choice(words) for _ in range(n)) + "."

    (d / "a.txt").write_text(doc(2000), encoding="utf-8")
    (d / "sub").mkdir()
    (d / "sub" / "b.md").write_text(doc(2000), encoding="utf-8")
    (d / "c.jsonl").write_text("".join(json.dumps({"text": doc(100)}) + "\n" for _ in range(20)), encoding="utf-8")
    return d


def assert_same_ids(directory, sentences=SENTENCES):
    ours = WordPieceTokenizer.from_dir(directory)
    for cls in (transformers.AutoTokenizer, transformers.BertTokenizerFast):
        hf = cls.from_pretrained(directory)
        assert hf(sentences)["input_ids"] == ours.encode(sentences).ids
        pair = hf(sentences, sentences[::-1])
        mine = ours.encode(sentences, sentences[::-1])
        assert pair["input_ids"] == mine.ids and pair["token_type_ids"] == mine.type_ids
    return ours


def test_round_trip(corpus, tmp_path, one_thread):
    out = train_wordpiece([corpus], 200, tmp_path / "tok")
    assert sorted(p.name for p in out.iterdir()) == [
        "special_tokens_map.json", "tokenizer.json", "tokenizer_config.json", "vocab.txt"]
    ours = assert_same_ids(out)
    assert ours.vocab_size == 256  # 200 rounded up to a multiple of 64
    assert ours.convert_ids_to_tokens(list(range(5))) == list(SPECIAL_TOKENS)
    assert (ours.pad_id, ours.unk_id, ours.cls_id, ours.sep_id, ours.mask_id) == (0, 1, 2, 3, 4)
    assert len((out / "vocab.txt").read_text(encoding="utf-8").splitlines()) == 256
    assert any(t.startswith("##") for t in ours.convert_ids_to_tokens(list(range(256))))
    config = json.loads((out / "tokenizer_config.json").read_text())
    assert config["do_lower_case"] is True and config["model_max_length"] == 512
    assert config["tokenizer_class"] == "BertTokenizer"
    ids = ours.encode(["The QUICK fox"]).ids[0]
    assert ids[0] == 2 and ids[-1] == 3 and ours.decode(ids) == "the quick fox"
    # loading from vocab.txt alone (no tokenizer.json) gives the same ids
    (out / "tokenizer.json").unlink()
    assert WordPieceTokenizer.from_dir(out).encode(SENTENCES).ids == ours.encode(SENTENCES).ids


def test_small_corpus_warns_and_pads_with_unused(tmp_path, caplog, one_thread):
    (tmp_path / "tiny.txt").write_text("the cat sat on the mat. the dog sat on the log.", encoding="utf-8")
    with caplog.at_level(logging.WARNING, logger="bertkit"):
        out = train_wordpiece([tmp_path / "tiny.txt"], 1000, tmp_path / "tok", round_to=100)
    learned = int(caplog.text.split("yields only ")[1].split()[0])
    assert learned < 100 and "fewer than the 1000 asked for; the vocabulary has 100" in caplog.text
    ours = assert_same_ids(out, ["the cat sat", "[unused0] unknown words"])
    assert ours.vocab_size == 100
    assert ours.convert_ids_to_tokens([learned, 99]) == ["[unused0]", f"[unused{99 - learned}]"]
    assert "[unused" not in " ".join(ours.convert_ids_to_tokens(ours.encode(["[unused0]"]).ids[0]))


def test_cased(corpus, tmp_path, one_thread):
    out = train_wordpiece([corpus], 300, tmp_path / "tok", lowercase=False, round_to=1)
    ours = assert_same_ids(out)
    assert ours.vocab_size == 300
    assert ours.convert_ids_to_tokens(ours.encode(["The fox"]).ids[0])[1].startswith("T")  # case kept
    assert json.loads((out / "tokenizer_config.json").read_text())["do_lower_case"] is False


def test_bad_arguments(tmp_path):
    with pytest.raises(ConfigError, match="round_to"):
        train_wordpiece([tmp_path], 100, tmp_path / "tok", round_to=0)
    with pytest.raises(ConfigError, match="vocab_size is 5"):
        train_wordpiece([tmp_path], 5, tmp_path / "tok")
    (tmp_path / "empty.txt").write_text("  \n", encoding="utf-8")
    with pytest.raises(BertkitError, match=r"empty\.txt: no text"):
        train_wordpiece([tmp_path / "empty.txt"], 100, tmp_path / "tok")


def test_cli(corpus, tmp_path, capsys, one_thread):
    out = tmp_path / "tok"
    argv = ["tokenizer", "train", "--corpus", str(corpus / "a.txt"), str(corpus / "sub"), "--vocab-size", "100",
            "--output", str(out), "--no-lowercase"]
    assert cli_main.main(argv) == 0
    printed = capsys.readouterr().out
    assert "vocabulary  128 tokens" in printed and str(out) in printed
    assert WordPieceTokenizer.from_dir(out).vocab_size == 128
    assert json.loads((out / "tokenizer_config.json").read_text())["do_lower_case"] is False
    assert cli_main.main(["tokenizer", "train", "--corpus", "no-such-corpus", "--vocab-size", "100",
                          "--output", str(out)]) == 2
    assert "'no-such-corpus': no such file or folder, and not a built-in corpus" in capsys.readouterr().err
