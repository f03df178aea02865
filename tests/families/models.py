"""Tiny random models of every family, built and saved by transformers itself (no real weights exist on the
package registries for families other than BERT, so every family is tested against transformers on random-init
models; see tests/families/tokenizers.py for the locally trained tokenizers).

``VARIANTS`` names a family plus the options it exercises; ``hf_config(variant)`` gives the transformers config,
``save_tiny(variant, directory)`` saves the base model (and returns it, in eval mode).
"""

from __future__ import annotations

from pathlib import Path

import torch

VOCAB = 1000
MAX_POS = 96  # tests use sequences of up to 64 tokens; RoBERTa / MPNet need 2 more positions

# variant -> (transformers model_type, config overrides)
VARIANTS: dict[str, tuple[str, dict]] = {
    "bert": ("bert", {}),
    "roberta": ("roberta", {"type_vocab_size": 1, "pad_token_id": 1, "bos_token_id": 0, "eos_token_id": 2}),
    "xlm-roberta": ("xlm-roberta", {"type_vocab_size": 1, "pad_token_id": 1}),
    "camembert": ("camembert", {"type_vocab_size": 1, "pad_token_id": 1}),
    "electra": ("electra", {"embedding_size": 16}),
    "electra-wide": ("electra", {"embedding_size": 32}),  # no embeddings_project
    "distilbert": ("distilbert", {}),
    "distilbert-sinusoidal": ("distilbert", {"sinusoidal_pos_embds": True}),
    "mpnet": ("mpnet", {"pad_token_id": 1}),
    # DeBERTa-v3: no absolute positions, no token types, log buckets reached within 64 tokens, shared keys
    "deberta-v3": ("deberta-v2", {"relative_attention": True, "position_buckets": 8, "max_relative_positions": 32,
                                  "pos_att_type": "p2c|c2p", "share_att_key": True, "norm_rel_ebd": "layer_norm",
                                  "position_biased_input": False, "type_vocab_size": 0}),
    # DeBERTa-v2 style: own position projections, exact distances, absolute positions and token types, narrow
    # embeddings with embed_proj
    "deberta-v2": ("deberta-v2", {"relative_attention": True, "max_relative_positions": 16,
                                  "pos_att_type": ["c2p", "p2c"], "share_att_key": False,
                                  "position_biased_input": True, "type_vocab_size": 2, "embedding_size": 16}),
    "deberta-c2p": ("deberta-v2", {"relative_attention": True, "position_buckets": 16, "max_relative_positions": 64,
                                   "pos_att_type": "c2p", "share_att_key": True, "position_biased_input": False}),
    # ModernBERT: windows of 8 (|i - j| <= 4) so test lengths cross them; global every 2nd layer
    "modernbert": ("modernbert", {"local_attention": 8, "global_attn_every_n_layers": 2, "num_hidden_layers": 3,
                                  "pad_token_id": 0, "bos_token_id": 2, "eos_token_id": 3, "cls_token_id": 2,
                                  "sep_token_id": 3, "global_rope_theta": 160000.0, "local_rope_theta": 10000.0}),
}
FAMILY_OF = {v: t for v, (t, _) in VARIANTS.items()}
# transformers attention implementations each family supports (the first is compared bit-for-bit-ish too)
HF_ATTN = {"deberta-v2": ("eager",), "mpnet": ("eager",)}


def hf_config(variant: str, **overrides):
    from transformers import AutoConfig

    model_type, opts = VARIANTS[variant]
    common = dict(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
                  max_position_embeddings=MAX_POS, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    if model_type == "distilbert":
        common = dict(vocab_size=VOCAB, dim=32, n_layers=2, n_heads=4, hidden_dim=64, max_position_embeddings=MAX_POS,
                      dropout=0.0, attention_dropout=0.0)
    if model_type == "modernbert":
        common = dict(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=3, num_attention_heads=4,
                      intermediate_size=48, max_position_embeddings=MAX_POS)
    kw = {**common, **opts, **overrides}
    return AutoConfig.for_model(model_type, **kw)


def hf_model_class(variant: str, role: str = "encoder"):
    import transformers

    names = {"bert": "Bert", "roberta": "Roberta", "xlm-roberta": "XLMRoberta", "camembert": "Camembert",
             "electra": "Electra", "distilbert": "DistilBert", "mpnet": "MPNet", "deberta-v2": "DebertaV2",
             "modernbert": "ModernBert"}
    suffix = {"encoder": "Model", "sequence": "ForSequenceClassification", "token": "ForTokenClassification",
              "mlm": "ForMaskedLM", "pretraining": "ForPreTraining", "qa": "ForQuestionAnswering"}[role]
    return getattr(transformers, names[FAMILY_OF[variant]] + suffix)


def build_hf(variant: str, role: str = "encoder", seed: int = 0, attn: str = "eager", **overrides):
    """A random transformers model of the variant (weights perturbed off their init, so LayerNorm biases and
    similar non-zero), in eval mode."""
    torch.manual_seed(seed)
    cfg = hf_config(variant, **overrides)
    cfg._attn_implementation = attn
    model = hf_model_class(variant, role)(cfg).eval()
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() == 1:  # biases and norms start at 0 / 1: move them so a dropped one would show
                p.add_(torch.randn(p.shape, generator=g) * 0.05)
            elif "relative_attention_bias" in name or "rel_embeddings" in name:
                p.add_(torch.randn(p.shape, generator=g) * 0.2)
    return model


def save_tiny(variant: str, directory: Path, role: str = "encoder", seed: int = 0, **overrides):
    model = build_hf(variant, role, seed, **overrides)
    model.save_pretrained(directory)
    return model


def random_batch(lengths: list[int], seed: int = 0, pair: bool = False):
    """Padded (ids, mask, token types) with ids in [5, VOCAB) (never a pad or special id), right padding; with
    ``pair`` the second half of each sequence gets token type 1."""
    g = torch.Generator().manual_seed(seed)
    b, s = len(lengths), max(lengths)
    ids = torch.randint(5, VOCAB, (b, s), generator=g)
    mask = torch.zeros(b, s, dtype=torch.long)
    types = torch.zeros(b, s, dtype=torch.long)
    for i, n in enumerate(lengths):
        mask[i, :n] = 1
        ids[i, n:] = 0
        if pair and n > 2:
            types[i, n // 2:n] = 1
    return ids, mask, types


def save_with_tokenizer(variant: str, directory: Path, role: str = "encoder", seed: int = 0, **overrides):
    """A tiny random model of the variant plus its family's locally trained tokenizer, consistent with each other
    (vocab_size covers the tokenizer, pad / special ids are the tokenizer's). Returns the transformers model."""
    from bertkit.data.tokenizer import Tokenizer
    from tests.families.tokenizers import make_tokenizer

    directory = Path(directory)
    make_tokenizer(FAMILY_OF[variant], directory)
    tok = Tokenizer.from_dir(directory)
    ids = {"vocab_size": max(VOCAB, tok.vocab_size), "pad_token_id": tok.pad_id}
    if FAMILY_OF[variant] == "modernbert":
        ids.update(bos_token_id=tok.cls_id, cls_token_id=tok.cls_id, eos_token_id=tok.sep_id, sep_token_id=tok.sep_id)
    if FAMILY_OF[variant] == "mpnet":
        ids.pop("pad_token_id")  # MPNet's positions count from 2 whatever pad_token_id says; keep its default
    model = save_tiny(variant, directory, role, seed, **{**ids, **overrides})
    return model
