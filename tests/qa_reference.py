"""Test-time references for extractive QA, written from transformers' own code.

transformers 5 dropped the "question-answering" pipeline (``pipeline("question-answering")`` now says to use a
chat model); its scoring lives on in ``transformers.pipelines.document_question_answering.select_starts_ends``.
``pipeline_answers`` is transformers 4.x ``QuestionAnsweringPipeline`` (fast-tokenizer path) rebuilt around that
function: the tokenizer's own overflowing windows with ``stride``, one window per forward pass, the pipeline's
p_mask, ``select_starts_ends``, word-aligned character spans (``token_to_word`` / ``word_to_chars``) and answers of
equal text merged across windows. ``normalize_answer`` is the official SQuAD evaluation script's.
"""

from __future__ import annotations

import re
import string

import numpy as np
import torch


def pipeline_answers(model, tok, question: str, context: str, top_k: int = 1, max_answer_len: int = 15,
                     max_seq_len: int = 384, doc_stride: int = 128, handle_impossible_answer: bool = False):
    from transformers.pipelines.document_question_answering import select_starts_ends

    enc = tok(text=question, text_pair=context, padding="do_not_pad", truncation="only_second",
              max_length=max_seq_len, stride=doc_stride, return_token_type_ids=True, return_overflowing_tokens=True,
              return_offsets_mapping=True, return_special_tokens_mask=True)
    answers: list[dict] = []
    min_null_score = 1000000
    for span in range(len(enc["input_ids"])):
        ids = enc["input_ids"][span]
        p_mask = np.asarray([t != 1 for t in enc.sequence_ids(span)])
        p_mask[np.nonzero(np.array(ids) == tok.cls_token_id)] = 0
        inputs = {k: torch.tensor([enc[k][span]]) for k in tok.model_input_names if k in enc}
        with torch.no_grad():
            out = model(**inputs)
        starts, ends, scores, min_null_score = select_starts_ends(
            out.start_logits.numpy(), out.end_logits.numpy(), p_mask, inputs["attention_mask"].numpy(),
            min_null_score, top_k, handle_impossible_answer, max_answer_len)
        e = enc.encodings[span]
        for s, t, score in zip(starts, ends, scores, strict=True):
            try:
                a = e.word_to_chars(e.token_to_word(s), sequence_index=1)[0]
                b = e.word_to_chars(e.token_to_word(t), sequence_index=1)[1]
            except Exception:
                a, b = e.offsets[s][0], e.offsets[t][1]
            text = context[a:b]
            same = [x for x in answers if x["answer"].lower() == text.lower()]
            if same:
                same[0]["score"] += score.item()
            else:
                answers.append({"score": score.item(), "start": a, "end": b, "answer": text})
    if handle_impossible_answer:
        answers.append({"score": min_null_score, "start": 0, "end": 0, "answer": ""})
    return sorted(answers, key=lambda x: x["score"], reverse=True)[:top_k], len(enc["input_ids"])


def normalize_answer(s):
    """Lower text and remove punctuation, articles and extra whitespace (SQuAD v2.0 official evaluate script)."""
    def remove_articles(text):
        regex = re.compile(r"\b(a|an|the)\b", re.UNICODE)
        return re.sub(regex, " ", text)

    def white_space_fix(text):
        return " ".join(text.split())

    def remove_punc(text):
        exclude = set(string.punctuation)
        return "".join(ch for ch in text if ch not in exclude)

    def lower(text):
        return text.lower()

    return white_space_fix(remove_articles(remove_punc(lower(s))))


def get_tokens(s):
    if not s:
        return []
    return normalize_answer(s).split()


def compute_exact(a_gold, a_pred):
    return int(normalize_answer(a_gold) == normalize_answer(a_pred))


def compute_f1(a_gold, a_pred):
    import collections

    gold_toks = get_tokens(a_gold)
    pred_toks = get_tokens(a_pred)
    common = collections.Counter(gold_toks) & collections.Counter(pred_toks)
    num_same = sum(common.values())
    if len(gold_toks) == 0 or len(pred_toks) == 0:
        return int(gold_toks == pred_toks)
    if num_same == 0:
        return 0
    precision = 1.0 * num_same / len(pred_toks)
    recall = 1.0 * num_same / len(gold_toks)
    return (2 * precision * recall) / (precision + recall)


def official_scores(golds: list[list[str]], preds: list[str]) -> dict[str, float]:
    """The official script's get_raw_scores + make_eval_dict, percent."""
    em = f1 = 0.0
    for gold, pred in zip(golds, preds, strict=True):
        gold_answers = [a for a in gold if normalize_answer(a)] or [""]
        em += max(compute_exact(a, pred) for a in gold_answers)
        f1 += max(compute_f1(a, pred) for a in gold_answers)
    return {"exact_match": 100.0 * em / len(preds), "f1": 100.0 * f1 / len(preds)}
