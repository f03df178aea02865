"""Decision thresholds of multi-label models: one per label, tuned on dev to maximise that label's F1.

A label is predicted when its probability is ``>=`` its threshold. ``tune_thresholds`` tries every cut between two
distinct dev probabilities (each cut's threshold is the midpoint of its interval, or 0.5 when 0.5 lies in it, so a
tuned threshold only moves away from 0.5 when that changes a prediction) and keeps the best F1; ties go to the
threshold closest to 0.5, and a label with no positives in dev keeps 0.5. ``decision_thresholds`` says which ones a
call uses: the tuned ones saved with the model (``bertkit_task.json``: ``"thresholds": {label: t}``) by default,
``"fixed"`` (0.5), or a number for every label.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

FIXED = 0.5  # the usual sigmoid cut: what every multi-label model used before thresholds were tuned
Choice = float | str | None  # None: tuned if the model has them, else fixed; "tuned"; "fixed"; a number in [0, 1]


def tune_thresholds(probabilities: np.ndarray, truth: np.ndarray, default: float = FIXED) -> np.ndarray:
    """(n, L) probabilities and (n, L) 0/1 truth -> (L,) thresholds maximising each label's F1 on these examples."""
    p, t = np.asarray(probabilities, dtype=np.float64), np.asarray(truth)
    if p.ndim != 2 or p.shape != t.shape:
        raise ValueError(f"probabilities {p.shape} and truth {t.shape} must both be (examples, labels)")
    return np.array([_tune_one(p[:, j], t[:, j].astype(bool), default) for j in range(p.shape[1])])


def _tune_one(p: np.ndarray, t: np.ndarray, default: float) -> float:
    positives = int(t.sum())
    if positives == 0 or len(p) == 0:
        return default  # F1 is 0 at every threshold: nothing to learn
    order = np.argsort(-p, kind="stable")
    ps, ts = p[order], t[order]
    # Predicting the top k examples for each k that ends a run of equal probabilities: every threshold in
    # (next lower probability, ps[k-1]] gives the same predictions.
    ends = np.flatnonzero(np.r_[ps[:-1] > ps[1:], True])
    tp = np.cumsum(ts)[ends]
    k = ends + 1
    hi = ps[ends]
    lo = np.r_[hi[1:], 0.0]  # the last cut predicts every example
    cut = np.where((lo < FIXED) & (FIXED <= hi), FIXED, (lo + hi) / 2)
    f1 = 2 * tp / (k + positives)
    best = np.flatnonzero(f1 >= f1.max() - 1e-12)
    return float(cut[best[np.argmin(np.abs(cut[best] - FIXED))]])


def decision_thresholds(choice: Choice, tuned: Mapping[str, float] | None, labels: Sequence[str]
                        ) -> tuple[np.ndarray, str]:
    """The (L,) thresholds a prediction uses, and words for the log saying which they are."""
    if choice is None:
        choice = "tuned" if tuned else "fixed"
    if isinstance(choice, str):
        if choice == "fixed":
            return np.full(len(labels), FIXED), f"fixed {FIXED} for every label"
        if choice == "tuned":
            if not tuned:
                raise ValueError("threshold='tuned': this model has no tuned thresholds; tune them with "
                                 "model.tune_thresholds(dev_data), or fine-tune with thresholds='tuned'")
            values = np.array([tuned[name] for name in labels], dtype=np.float64)
            shown = ", ".join(f"{n}={v:.3f}" for n, v in zip(labels, values, strict=True))
            return values, f"per-label thresholds tuned on dev ({shown})"
        raise ValueError(f"threshold must be a number in [0, 1], 'fixed' or 'tuned', got {choice!r}")
    value = float(choice)
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"threshold must be in [0, 1], got {value}")
    return np.full(len(labels), value), f"{value:g} for every label"


def check_thresholds(thresholds: Mapping[str, float], labels: Sequence[str], source: str) -> dict[str, float]:
    """Saved thresholds as {label: float}, one per label, each in [0, 1]; ValueError naming ``source`` otherwise."""
    if not isinstance(thresholds, Mapping):
        raise ValueError(f"{source}: 'thresholds' must map each label to a number")
    missing, extra = set(labels) - set(thresholds), set(thresholds) - set(labels)
    if missing or extra:
        raise ValueError(f"{source}: 'thresholds' has labels {sorted(thresholds)}, the model {sorted(labels)}")
    out = {}
    for name in labels:
        value = thresholds[name]
        if isinstance(value, bool) or not isinstance(value, int | float) or not 0.0 <= value <= 1.0:
            raise ValueError(f"{source}: threshold of {name!r} must be a number in [0, 1], got {value!r}")
        out[name] = float(value)
    return out


def parse_threshold(text: str) -> float | str:
    """A ``--threshold`` value: a number in [0, 1], ``fixed`` or ``tuned``."""
    if text in ("fixed", "tuned"):
        return text
    try:
        value = float(text)
    except ValueError:
        raise ValueError(f"--threshold takes a number in [0, 1], 'fixed' or 'tuned', got {text!r}") from None
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"--threshold must be in [0, 1], got {text}")
    return value
