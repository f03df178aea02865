import json

import pytest

from bertkit.errors import ConfigError
from bertkit.model.config import EncoderConfig


def test_reads_real_config(minilm_dir):
    cfg = EncoderConfig.from_json_file(minilm_dir / "config.json")
    assert (cfg.num_hidden_layers, cfg.hidden_size, cfg.num_attention_heads) == (6, 384, 12)
    assert cfg.vocab_size == 30522 and cfg.layer_norm_eps == 1e-12
    assert cfg.extra["architectures"] == ["BertModel"]
    assert cfg.extra["gradient_checkpointing"] is False  # unknown keys are kept


def test_round_trip_keeps_every_key(minilm_dir, tmp_path):
    original = json.loads((minilm_dir / "config.json").read_text())
    EncoderConfig.from_json_file(minilm_dir / "config.json").save(tmp_path)
    written = json.loads((tmp_path / "config.json").read_text())
    assert written == original | {"classifier_dropout": None}


def test_round_trip_through_transformers(tmp_path):
    transformers = pytest.importorskip("transformers")
    cfg = EncoderConfig(hidden_size=64, num_attention_heads=4, num_hidden_layers=3, intermediate_size=128,
                        hidden_act="gelu_new", extra={"custom_key": [1, 2]})
    cfg.save(tmp_path)
    hf = transformers.BertConfig.from_pretrained(tmp_path)
    assert (hf.hidden_size, hf.num_attention_heads, hf.num_hidden_layers, hf.hidden_act) == (64, 4, 3, "gelu_new")
    hf.save_pretrained(tmp_path / "back")
    back = EncoderConfig.from_json_file(tmp_path / "back" / "config.json")
    assert back.hidden_size == 64 and back.extra["custom_key"] == [1, 2]


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"position_embedding_type": "relative_key"}, "position_embedding_type"),
        ({"hidden_act": "mish"}, "hidden_act"),
        ({"hidden_size": "768"}, "hidden_size"),
        ({"num_hidden_layers": 2.5}, "num_hidden_layers"),
        ({"hidden_size": 100, "num_attention_heads": 12}, "hidden_size"),
        ({"is_decoder": True}, "is_decoder"),
        ({"layer_norm_eps": None}, "layer_norm_eps"),
    ],
)
def test_bad_field_is_named(tmp_path, change, field):
    d = EncoderConfig().to_dict() | change
    (tmp_path / "config.json").write_text(json.dumps(d))
    with pytest.raises(ConfigError, match=field) as e:
        EncoderConfig.from_json_file(tmp_path / "config.json")
    assert "config.json" in str(e.value)


def test_not_json(tmp_path):
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(ConfigError, match="not valid JSON"):
        EncoderConfig.from_json_file(tmp_path / "config.json")
