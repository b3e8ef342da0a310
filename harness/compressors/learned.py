"""`filter/ib-learned`: a sentence classifier trained on the ib-oracle's choices, so it keeps what the oracle would
keep without reading the gold answer (Zhu et al. 2024 train their filter on such IB-selected targets).

    models:
      compressor:
        model: filter/ib-learned
        options: {train_ids: [...], threshold: 0.5, max_sentences: 4, seed: 0}   # harness tune-filter fills train_ids
      scorer: {model: gguf/smollm2-135m, dtype: float32}                        # labels the training samples

Training: for each training sample (the config's task, retrieved as the run retrieves it, restricted to
`train_ids`: the dev split under `harness tune-filter`), the ib-oracle picks its candidate (empty, single
sentences, extractive sets; `harness.compressors.ib`) with the gold answer; every sentence of the context is one
example, labelled 1 when the chosen compression keeps it. A logistic regression (scikit-learn, `random_state=seed`,
balanced classes) over question-free, answer-free sentence features (`sentence_features`) learns the labels.

Inference: keep the sentences whose predicted probability is at least `threshold`, best first, at most
`max_sentences`, in context order; none above it is the empty compression (abstain), as the oracle abstains.

The trained model (feature scaling, coefficients, training time and fit agreement) is cached as JSON under
`$HARNESS_CACHE/ib-learned/<key>.json`, the key being the scorer's identity and prompts, the oracle's options, the
seed and a hash of the training samples (ids, questions, contexts, answers): the same training data and scorer
never train twice, and a change of either trains anew.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from harness.records import Sample, stable_hash

#: bumped when the features or the training procedure change (part of the artefact key)
LEARNED_VERSION = 1
FEATURES = ("bm25", "bm25_rel", "rank_inv", "overlap", "log_tokens", "has_number", "passage_rank_inv", "position_inv")
_WORD = re.compile(r"[a-z0-9]+")
_STOP = frozenset("a an the of in on for to and or is was what which who how did does do by at as with from its "
                  "their that this be are were".split())


def _words(text: str) -> set[str]:
    return {w for w in _WORD.findall(text.lower()) if w not in _STOP}


def sentence_features(question: str, texts: Sequence[str], scores: Sequence[float], tokens: Sequence[int],
                      passage_rank: Sequence[int], position: Sequence[int]) -> np.ndarray:
    """One row of `FEATURES` per sentence (pure): its BM25 score, the score over the sample's best, 1/(1+rank),
    the share of the question's content words it holds, log(1+tokens), whether it holds a digit, 1/(1+rank of its
    passage in the retrieved order) and 1/(1+its index in the passage)."""
    n = len(texts)
    if n == 0:
        return np.zeros((0, len(FEATURES)))
    s = np.asarray(scores, dtype=np.float64)
    order = np.lexsort((np.arange(n), -s))
    rank_of = np.empty(n)
    rank_of[order] = np.arange(n)
    top = s.max() if s.max() > 0 else 1.0
    q = _words(question)
    overlap = [len(q & _words(t)) / len(q) if q else 0.0 for t in texts]
    return np.column_stack([
        s, s / top, 1.0 / (1.0 + rank_of), overlap, np.log1p(np.asarray(tokens, dtype=np.float64)),
        [float(any(c.isdigit() for c in t)) for t in texts], 1.0 / (1.0 + np.asarray(passage_rank, dtype=np.float64)),
        1.0 / (1.0 + np.asarray(position, dtype=np.float64)),
    ])


def kept_labels(texts: Sequence[str], chosen: str) -> np.ndarray:
    """1 for each sentence that appears whole in the chosen compression, else 0 (pure; the empty one keeps none)."""
    norm = " ".join(chosen.split())
    return np.array([int(bool(norm) and " ".join(t.split()) in norm) for t in texts], dtype=np.int64)


def predict_keep(probs: np.ndarray, threshold: float, max_sentences: int) -> list[int]:
    """Indices of the sentences to keep (pure): probability >= threshold, best first (ties to the earlier one), at
    most `max_sentences`; returned in context order. None above the threshold: [] (abstain)."""
    p = np.asarray(probs, dtype=np.float64)
    order = np.lexsort((np.arange(p.size), -p))
    return sorted(int(i) for i in order[:max_sentences] if p[i] >= threshold)


def fit_logistic(x: np.ndarray, y: np.ndarray, seed: int) -> dict[str, Any]:
    """Standardise and fit a balanced logistic regression; the model as plain numbers (JSON-able)."""
    from sklearn.linear_model import LogisticRegression

    mean = x.mean(axis=0)
    scale = x.std(axis=0)
    scale[scale == 0] = 1.0
    z = (x - mean) / scale
    if len(set(y.tolist())) < 2:  # one class only (e.g. the oracle always abstained): a constant model
        const = 1.0 if y.size and y[0] == 1 else 0.0
        return {"mean": mean.tolist(), "scale": scale.tolist(), "coef": [0.0] * x.shape[1],
                "intercept": 20.0 if const else -20.0}
    clf = LogisticRegression(class_weight="balanced", random_state=seed, max_iter=1000).fit(z, y)
    return {"mean": mean.tolist(), "scale": scale.tolist(), "coef": clf.coef_[0].tolist(),
            "intercept": float(clf.intercept_[0])}


def predict_proba(model: dict[str, Any], x: np.ndarray) -> np.ndarray:
    """P(kept) of each row of `x` under a `fit_logistic` model (pure)."""
    if x.shape[0] == 0:
        return np.zeros(0)
    z = (x - np.asarray(model["mean"])) / np.asarray(model["scale"])
    return 1.0 / (1.0 + np.exp(-(z @ np.asarray(model["coef"]) + model["intercept"])))


def training_hash(samples: Sequence[Sample]) -> str:
    """What the training data is: each sample's id, question, retrieved context and answers."""
    return stable_hash([[s.id, s.question, s.context, list(s.answers)] for s in samples])[:16]


def artefact_dir() -> Path:
    from harness.backends.packs import cache_dir

    return cache_dir() / "ib-learned"


class LearnedFilter:
    """The classifier of one `filter/ib-learned`: trains on first use (or loads its cached artefact)."""

    def __init__(self, owner: Any, train: list[Sample]):
        self.owner = owner  # the FilterCompressor: its sentences, scores, token counts and IB scorer
        self.train = train
        o = owner.options
        self.key = stable_hash([LEARNED_VERSION, owner.ib.key(), training_hash(train), o["seed"], o["beta"],
                                o["budgets"], o["max_single"], o["by"]])[:20]
        self.model: dict[str, Any] | None = None

    def features(self, sample: Sample) -> tuple[list[Any], np.ndarray]:
        """The sample's sentences and their feature rows."""
        from harness.compressors.filters import sentences

        units = sentences(sample)
        texts = [u.text for u in units]
        doc_rank = {d.id: k for k, d in enumerate(sample.documents)}
        x = sentence_features(sample.question, texts, self.owner._scores(sample.question, texts),
                              [self.owner._tokens(t) for t in texts], [doc_rank.get(u.doc_id, 0) for u in units],
                              [u.index for u in units])
        return units, x

    def fit(self) -> dict[str, Any]:
        """Train (oracle labels from the IB scorer, then the regression) or load the cached artefact."""
        if self.model is not None:
            return self.model
        path = artefact_dir() / f"{self.key}.json"
        if path.is_file():
            self.model = json.loads(path.read_text())
            return self.model
        t0 = time.perf_counter()
        xs, ys, chosen = [], [], []
        for s in self.train:
            name, text, _, _ = self.owner.oracle_choice(s)
            units, x = self.features(s)
            xs.append(x)
            ys.append(kept_labels([u.text for u in units], text))
            chosen.append(name)
        label_seconds = time.perf_counter() - t0
        x = np.vstack(xs) if xs else np.zeros((0, len(FEATURES)))
        y = np.concatenate(ys) if ys else np.zeros(0, dtype=np.int64)
        t1 = time.perf_counter()
        model = fit_logistic(x, y, int(self.owner.options["seed"]))
        fit_seconds = time.perf_counter() - t1
        pred = (predict_proba(model, x) >= float(self.owner.options["threshold"])).astype(int)
        model.update({
            "key": self.key, "features": list(FEATURES), "n_samples": len(self.train), "n_sentences": int(y.size),
            "n_kept": int(y.sum()), "oracle_abstained": sum(c == "empty" for c in chosen),
            "label_seconds": round(label_seconds, 3), "fit_seconds": round(fit_seconds, 4),
            "train_seconds": round(label_seconds + fit_seconds, 3),
            "train_sentence_agreement": float((pred == y).mean()) if y.size else None,
            "train_ids": [s.id for s in self.train],
        })
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(model, indent=1))
        tmp.replace(path)
        self.model = model
        return model

    def text(self, sample: Sample) -> str:
        """The learned filter's compression of `sample`: the kept sentences in context order, or '' (abstain)."""
        from harness.compressors.filters import join

        model = self.fit()
        units, x = self.features(sample)
        keep = predict_keep(predict_proba(model, x), float(self.owner.options["threshold"]),
                            int(self.owner.options["max_sentences"]))
        return join(units, keep)
