"""Task heads: shapes, losses, and HF load-back with the same predictions."""

import pytest
import torch

from bertkit.errors import CheckpointError
from bertkit.model.attention import Packing
from bertkit.model.heads import SequenceClassifier, TokenClassifier, task_loss
from bertkit.model.weights import load_pretrained, normalize_hf_keys, read_state_dict

transformers = pytest.importorskip("transformers")


def packed(lengths, seed=0):
    g = torch.Generator().manual_seed(seed)
    ids = [torch.randint(1000, 2000, (n,), generator=g) for n in lengths]
    return torch.cat(ids), Packing.from_lengths(lengths), ids


def hf_logits(model, ids_list):
    out = []
    with torch.inference_mode():
        for ids in ids_list:
            out.append(model(input_ids=ids[None]).logits[0])
    return out


def test_sequence_classifier_round_trip_through_transformers(minilm_dir, tmp_path):
    torch.manual_seed(0)
    enc, _ = load_pretrained(minilm_dir)
    head = SequenceClassifier(enc, num_labels=3).eval()
    ids, packing, ids_list = packed([5, 9, 2])
    with torch.inference_mode():
        logits = head(ids, packing)
    assert logits.shape == (3, 3)
    head.save_pretrained(tmp_path, {0: "neg", 1: "neu", 2: "pos"})
    assert "id2label" not in enc.config.extra  # saving a head leaves the encoder's config alone
    hf = transformers.BertForSequenceClassification.from_pretrained(tmp_path).eval()
    assert hf.config.id2label == {0: "neg", 1: "neu", 2: "pos"}
    assert hf.config.problem_type == "single_label_classification"
    ref = torch.stack(hf_logits(hf, ids_list))
    assert (logits - ref).abs().max() <= 1e-5
    # and back into bertkit
    enc2, heads = load_pretrained(tmp_path)
    again = SequenceClassifier(enc2, num_labels=3).eval()
    again.load_head_state(heads)
    with torch.inference_mode():
        assert (again(ids, packing) - logits).abs().max() <= 1e-6


def test_token_classifier_round_trip_through_transformers(minilm_dir, tmp_path):
    torch.manual_seed(1)
    enc, _ = load_pretrained(minilm_dir)
    head = TokenClassifier(enc, num_labels=5).eval()
    ids, packing, ids_list = packed([4, 11])
    with torch.inference_mode():
        logits = head(ids, packing)
    assert logits.shape == (15, 5)
    head.save_pretrained(tmp_path)
    hf = transformers.BertForTokenClassification.from_pretrained(tmp_path).eval()
    ref = torch.cat(hf_logits(hf, ids_list))
    assert (logits - ref).abs().max() <= 1e-5


def test_wrong_label_count_is_refused(minilm_dir, tmp_path):
    enc, _ = load_pretrained(minilm_dir)
    SequenceClassifier(enc, num_labels=3).save_pretrained(tmp_path)
    state = read_state_dict(tmp_path / "model.safetensors")
    _, heads = normalize_hf_keys(state)
    enc2, _ = load_pretrained(tmp_path)
    with pytest.raises(CheckpointError, match=r"classifier\.weight.*\(4 labels\)"):
        SequenceClassifier(enc2, num_labels=4).load_head_state(heads)


def test_losses_match_hand_computation():
    logits = torch.tensor([[2.0, 0.0], [0.0, 1.0]])
    ce = task_loss("single_label_classification", logits, torch.tensor([0, -100]))
    assert torch.isclose(ce, torch.log1p(torch.exp(torch.tensor(-2.0))))  # only row 0 counts
    bce = task_loss("multi_label_classification", torch.zeros(1, 2), torch.tensor([[1.0, 0.0]]))
    assert torch.isclose(bce, torch.log(torch.tensor(2.0)))
    mse = task_loss("regression", torch.tensor([[1.0], [3.0]]), torch.tensor([0.0, 1.0]))
    assert torch.isclose(mse, torch.tensor(2.5))
    with pytest.raises(ValueError, match="problem_type"):
        task_loss("ranking", logits, torch.tensor([0, 1]))


def test_bad_head_settings(minilm_dir):
    enc, _ = load_pretrained(minilm_dir)
    with pytest.raises(ValueError, match="num_labels=1"):
        SequenceClassifier(enc, num_labels=2, problem_type="regression")
    with pytest.raises(ValueError, match="problem_type"):
        SequenceClassifier(enc, num_labels=2, problem_type="other")
