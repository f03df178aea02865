"""Tiny random checkpoints of every family with their family's tokenizer, for the compression and export tests.

``VARIANTS`` (tests/families/models.py) name the models; each gets the tokenizer its family ships with
(tests/families/tokenizers.py), and the model is built with a vocabulary that covers it and the tokenizer's pad id.
``checkpoint(variant, directory, role)`` saves transformers' own model (base or ``XxxFor*``) there;
``task_model(variant, directory, task, labels)`` a bertkit task model with non-trivial head weights.
"""

from __future__ import annotations

from pathlib import Path

import torch

from bertkit.data.tokenizer import Tokenizer
from bertkit.model.directory import load_encoder
from bertkit.task_model import TaskModel, build_head
from tests.families.models import FAMILY_OF, VOCAB, save_tiny
from tests.families.tokenizers import make_tokenizer

# The variants every capability is tested on (brief: bert, roberta, deberta-v2 with v3 settings, modernbert, mpnet,
# distilbert, electra), plus DeBERTa-v2 with its own position projections (pos_k / pos_q) where heads are sliced.
CORE = ("bert", "roberta", "deberta-v3", "modernbert", "mpnet", "distilbert", "electra")
WITH_POS_PROJ = (*CORE, "deberta-v2")
TEXTS = ["A man is playing a guitar.", "hi", "Stocks fell sharply after the central bank raised interest rates "
         "again, the third time this year, and the currency lost more ground.", "Café naïve façade",
         "The parser returns a value when the function raises an error."]


def checkpoint(variant: str, directory: Path, role: str = "encoder", seed: int = 3, **overrides) -> Path:
    """The variant's tiny transformers model (base model or with a head) plus its family's tokenizer."""
    directory.mkdir(parents=True, exist_ok=True)
    make_tokenizer(FAMILY_OF[variant], directory)
    tok = Tokenizer.from_dir(directory)
    kw = {"vocab_size": max(VOCAB, tok.vocab_size), "pad_token_id": tok.pad_id, **overrides}
    save_tiny(variant, directory, role=role, seed=seed, **kw)
    return directory


def task_model(variant: str, directory: Path, task: str = "classification",
               labels: tuple[str, ...] = ("neg", "neu", "pos"), seed: int = 0) -> TaskModel:
    """A bertkit task model of the variant (the family's head layout), head weights large enough that logits
    differ by more than rounding, saved in ``directory`` and returned in eval mode."""
    checkpoint(variant, directory)
    encoder, _, info = load_encoder(directory)
    torch.manual_seed(seed)
    head = build_head(encoder, task, len(labels)).eval()
    with torch.no_grad():
        for name, p in head.named_parameters():
            if not name.startswith("encoder.") and p.dim() == 2:
                torch.nn.init.normal_(p, std=0.5)
    tm = TaskModel(head, Tokenizer.from_dir(info.weights_dir), task, list(labels), 64)
    tm.save_pretrained(directory)
    return tm
