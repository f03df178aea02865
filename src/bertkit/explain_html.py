"""An HTML page of token attributions: one row per input, each token coloured by its score.

Red: the token raises the target's logit, blue: it lowers it; the colour's strength is the score over the row's
largest |score|, so rows are comparable in sign and rank, not in scale (a row's scale is in its tooltip and its
``Δlogit``). Tokens show the characters of the text they cover (the text's own spacing kept); the template's tokens
([CLS], [SEP]) are grey. Self-contained (no script, no external file) and every text escaped.
"""

from __future__ import annotations

import html
from collections.abc import Sequence
from typing import Any

from bertkit.explain import Explanation

POSITIVE = (214, 39, 40)  # red
NEGATIVE = (31, 119, 180)  # blue

_STYLE = """body{font-family:system-ui,sans-serif;margin:2em;max-width:70em}
table{border-collapse:collapse;width:100%}
td,th{border-top:1px solid #ddd;padding:.5em;vertical-align:top;text-align:left}
.t{white-space:pre-wrap;line-height:1.9}.t span{border-radius:3px;padding:1px 0}
.sp{color:#888;font-size:.8em;background:#eee;margin:0 2px}.p{font-size:.85em;color:#444}"""


def render(rows: Sequence[tuple[Explanation, dict[str, Any]]], title: str = "bertkit explain") -> str:
    """The page for (explanation, prediction) pairs; a prediction is what ``TaskModel.predict`` gives."""
    body = "".join(_row(i, e, p) for i, (e, p) in enumerate(rows))
    return (f"<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>{html.escape(title)}</title>"
            f"<style>{_STYLE}</style></head><body><h1>{html.escape(title)}</h1>"
            f"<p>Integrated gradients on the word embeddings: <span style=\"background:{_colour(1.0)}\">red</span> "
            f"tokens raise the target's logit, <span style=\"background:{_colour(-1.0)}\">blue</span> ones lower it; "
            f"strength relative to the row's largest score.</p>"
            f"<table><tr><th>#</th><th>text</th><th>prediction</th><th>target</th></tr>{body}</table></body></html>\n")


def _row(i: int, e: Explanation, prediction: dict[str, Any]) -> str:
    top = max((abs(s) for s in e.scores), default=0.0) or 1.0
    text = _tokens(e, top)
    probs = prediction.get("probabilities", {})
    if "score" in prediction:
        pred = f"score {prediction['score']:.4f}"
    else:
        label = prediction.get("label", ", ".join(prediction.get("labels", [])) or "(none)")
        pred = f"<b>{html.escape(str(label))}</b>"
    pred += "".join(f"<div class=\"p\">{html.escape(str(k))}: {v:.3f}</div>" for k, v in probs.items())
    target = (f"{html.escape(e.target)}<div class=\"p\">Δlogit {e.logit - e.baseline_logit:+.4f}<br>"
              f"delta {e.delta:+.2g}</div>")
    return f"<tr><td>{i}</td><td class=\"t\">{text}</td><td>{pred}</td><td>{target}</td></tr>"


def _tokens(e: Explanation, top: float) -> str:
    """The row's text as coloured spans: each token shows the characters it covers, what lies between two tokens of
    the same text (spaces) is kept; a byte-level piece that shares its characters with the previous one shows
    nothing more."""
    out: list[str] = []
    texts = (e.text, e.text_pair or "")
    end: dict[int, int] = {}  # sequence -> where its last shown token ended
    for token, (a, b, seq), score in zip(e.tokens, e.spans, e.scores, strict=True):
        if seq is None:
            tip = html.escape(f"{token}: {score:+.4f}", quote=True)
            out.append(f"<span class=\"sp\" title=\"{tip}\">{html.escape(token)}</span>")
            continue
        source, last = texts[seq], end.get(seq)
        # the characters the token covers (a byte-level piece's vocabulary string, "Ã", says less), then its score
        tip = html.escape(f"{source[a:b] or token}: {score:+.4f}", quote=True)
        if last is not None and a > last:
            out.append(html.escape(source[last:a]))
        shown = source[max(a, last or 0):b]
        end[seq] = max(b, last or 0)
        out.append(f"<span style=\"background:{_colour(score / top)}\" title=\"{tip}\">{html.escape(shown)}</span>")
    return "".join(out)


def _colour(x: float) -> str:
    """x in [-1, 1] -> a CSS rgba: red for x > 0, blue for x < 0, opacity |x| (capped so text stays readable)."""
    r, g, b = POSITIVE if x >= 0 else NEGATIVE
    return f"rgba({r},{g},{b},{min(abs(x), 1.0) * 0.75:.3f})"
