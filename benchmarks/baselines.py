"""Classical baselines the fine-tuned models are compared with (scikit-learn, same splits).

text classification: TF-IDF (word 1-2 grams + char 2-5 grams) -> logistic regression (or a linear SVM)
NER: per-token logistic regression over hand-made features of the word and its neighbours
"""

from __future__ import annotations

from bertkit.data.tasks import TaskData
from bertkit.train import metrics as M


def tfidf_logreg(train: TaskData, test: TaskData, seed: int = 0) -> dict[str, float]:
    from sklearn.linear_model import LogisticRegression

    return _tfidf_linear(train, test, LogisticRegression(C=10.0, max_iter=2000, random_state=seed))


def tfidf_svm(train: TaskData, test: TaskData, seed: int = 0) -> dict[str, float]:
    """The same TF-IDF features with a linear SVM (often the stronger linear model on long documents)."""
    from sklearn.svm import LinearSVC

    return _tfidf_linear(train, test, LinearSVC(C=1.0, random_state=seed))


def _tfidf_linear(train: TaskData, test: TaskData, clf) -> dict[str, float]:
    from scipy.sparse import hstack
    from sklearn.feature_extraction.text import TfidfVectorizer

    texts = [t if p is None else f"{t} [SEP] {p}" for t, p in zip(train.texts, train.pairs or [None] * len(train),
                                                                    strict=True)]
    test_texts = [t if p is None else f"{t} [SEP] {p}" for t, p in zip(test.texts, test.pairs or [None] * len(test),
                                                                         strict=True)]
    word = TfidfVectorizer(ngram_range=(1, 2), min_df=2, sublinear_tf=True)
    char = TfidfVectorizer(analyzer="char_wb", ngram_range=(2, 5), min_df=2, sublinear_tf=True)
    x = hstack([word.fit_transform(texts), char.fit_transform(texts)]).tocsr()
    xt = hstack([word.transform(test_texts), char.transform(test_texts)]).tocsr()
    pred = clf.fit(x, train.labels).predict(xt)
    return {"accuracy": M.accuracy(test.labels, pred), "macro_f1": M.f1(test.labels, pred, "macro"),
            "mcc": M.matthews_corrcoef(test.labels, pred)}


def _token_features(words: list[str], i: int) -> dict[str, float]:
    def shape(w: str) -> str:
        s = "".join("X" if c.isupper() else "x" if c.islower() else "d" if c.isdigit() else c for c in w)
        return s[:6]

    w = words[i]
    f = {"bias": 1.0, f"w={w.lower()}": 1.0, f"shape={shape(w)}": 1.0, f"pre3={w[:3].lower()}": 1.0,
         f"suf3={w[-3:].lower()}": 1.0, "title": float(w.istitle()), "upper": float(w.isupper()),
         "at": float(w.startswith("@")), "hash": float(w.startswith("#")), "url": float("http" in w)}
    for off in (-2, -1, 1, 2):
        j = i + off
        f[f"{off}:w={words[j].lower() if 0 <= j < len(words) else '<pad>'}"] = 1.0
        if 0 <= j < len(words):
            f[f"{off}:title"] = float(words[j].istitle())
    return f


def token_logreg_ner(train: TaskData, test: TaskData, seed: int = 0) -> dict[str, float]:
    from sklearn.feature_extraction import DictVectorizer
    from sklearn.linear_model import LogisticRegression

    def featurize(data: TaskData) -> list[dict]:
        return [_token_features(ws, i) for ws in data.words or [] for i in range(len(ws))]

    vec = DictVectorizer()
    x = vec.fit_transform(featurize(train))
    y = [t for tags in train.labels for t in tags]
    clf = LogisticRegression(C=5.0, max_iter=3000, random_state=seed).fit(x, y)
    flat = clf.predict(vec.transform(featurize(test)))
    pred, k = [], 0
    for ws in test.words or []:
        tags = list(flat[k:k + len(ws)])
        # Per-token predictions can start an entity with I-X; repair to B-X so the spans are BIO-valid.
        for i, t in enumerate(tags):
            if t.startswith("I-") and (i == 0 or tags[i - 1][2:] != t[2:]):
                tags[i] = "B-" + t[2:]
        pred.append(tags)
        k += len(ws)
    return M.entity_scores(test.labels, pred) | {
        "token_accuracy": M.accuracy([t for s in test.labels for t in s], list(flat))}
