"""RAG filters as compressors: `filter/<kind>` specs whose knobs are `options`, so a sweep can vary them.

    models:
      compressor:
        model: filter/extractive
        options: {by: bm25, sentences: 3}     # or tokens: 64; by: embedding (all-MiniLM-L6-v2, the minilm-l6 pack)
        tokenizer: gguf/smollm2-135m          # counts tokens (default: the scorer's, else the predictor's)

Kinds (all deterministic: the same sample gives the same text, so M = 1 for MI, as for `python/` compressors):

- `filter/full`: the whole (retrieved) context, unchanged.
- `filter/truncate` `{tokens: B}`: the first B tokens of the context.
- `filter/extractive` `{by: bm25|embedding, sentences: S | tokens: B, order: original|score}`: the context's
  sentences ranked by BM25 (bm25s, over the sample's sentences) or cosine similarity to the question, taken best
  first while they fit the budget (a sentence that does not fit is skipped), written in `order`.
- `filter/ib-oracle` `{beta: 10, budgets: [1, 2, 4], max_single: 8, by: bm25, abstractive: null}`: per sample, the
  candidate with the lowest information-bottleneck score (`harness.compressors.ib`) among the empty compression,
  the `max_single` best single sentences, the extractive sets at `budgets` sentences and, with `abstractive: SPEC`
  (an LM such as gguf/smollm2-135m, with the run's compressor prompt and generation settings), its greedy summary;
  scored by `models.scorer` (float32) with the gold answer: an upper bound on what a filter at that beta can
  keep, not a deployable filter. `details[sample_id]` holds every candidate's terms and the choice.

Sentences are the task's labelled sentences where it has them (`meta["doc_sentences"]`: synthetic-multidoc), so
gold-support precision and recall (`harness.retrieval.gold`) count what a filter keeps; otherwise each passage is
split after `.`, `!` or `?` and at line breaks.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import numpy as np

from harness.compressors.base import CompressInput, text_compression
from harness.compressors.ib import BETA, IBTerms, terms_row
from harness.errors import UserError
from harness.records import Generation, GenParams, ModelIdentity, Sample, stable_hash

KINDS = ("full", "truncate", "extractive", "ib-oracle", "ib-learned")
#: bumped when a filter's output for the same sample and options changes (part of its identity)
FILTER_VERSION = 1
_SPLIT = re.compile(r"(?<=[.!?])\s+|\n+")


@dataclass
class FilterGeneration(Generation):
    """A filter's compression with its IB terms (`FilterCompressor.terms_of`) and the scorer that gave them, so the
    compress stage stores them (`harness.compressors.ib.store_terms`)."""

    terms: dict[str, float | None] | None = None
    scorer_identity: ModelIdentity | None = None


@dataclass(frozen=True)
class Unit:
    """One sentence of a sample's context: its passage id and index there, and its text."""

    doc_id: str
    index: int
    text: str


def sentences(sample: Sample) -> list[Unit]:
    """The context's sentences in order: the task's labelled sentences per passage, else a regex split."""
    labelled = sample.meta.get("doc_sentences") or {}
    out: list[Unit] = []
    for d in sample.documents:
        parts = labelled.get(d.id)
        if parts is None:
            parts = [p.strip() for p in _SPLIT.split(d.text) if p.strip()]
        out.extend(Unit(d.id, i, s) for i, s in enumerate(parts) if s.strip())
    return out


def bm25_scores(question: str, texts: list[str]) -> np.ndarray:
    """BM25 of each text for the question, the texts themselves the corpus (bm25s)."""
    from harness.retrieval.retrievers import BM25

    if not texts:
        return np.zeros(0)
    return BM25(texts).scores(question)


def embedding_scores(question: str, texts: list[str], pack: str = "minilm-l6") -> np.ndarray:
    """Cosine similarity of each text to the question (all-MiniLM-L6-v2 of the `pack`)."""
    from harness.retrieval.retrievers import embed

    if not texts:
        return np.zeros(0)
    e = embed([question, *texts], pack)
    return (e[1:] @ e[0]).astype(np.float64)


def rank(scores: np.ndarray) -> list[int]:
    """Indices best first, ties to the earlier sentence (pure)."""
    s = np.asarray(scores, dtype=np.float64)
    return np.lexsort((np.arange(s.size), -s)).tolist()


def select_budget(order: list[int], lengths: list[int], *, sentences: int | None = None,
                  tokens: int | None = None) -> list[int]:
    """Greedy pick in rank `order` under a sentence count and/or token budget; a sentence that does not fit the
    token budget is skipped, later shorter ones may still fit (pure). Returns the picked indices in rank order."""
    picked: list[int] = []
    used = 0
    for i in order:
        if sentences is not None and len(picked) >= sentences:
            break
        if tokens is not None and used + lengths[i] > tokens:
            continue
        picked.append(i)
        used += lengths[i]
    return picked


def join(units: list[Unit], picked: list[int], order: str = "original") -> str:
    """The picked sentences as one text, in context order (`original`) or rank order (`score`)."""
    idx = sorted(picked) if order == "original" else picked
    return " ".join(units[i].text for i in idx)


_OPTIONS: dict[str, dict[str, Any]] = {
    "full": {"ib_terms": True},
    "truncate": {"tokens": None, "ib_terms": True},
    "extractive": {"by": "bm25", "sentences": None, "tokens": None, "order": "original", "embedder": "minilm-l6",
                   "ib_terms": True},
    "ib-oracle": {"beta": 10.0, "budgets": [1, 2, 4], "max_single": 8, "by": "bm25", "embedder": "minilm-l6",
                  "abstractive": None},
    "ib-learned": {"beta": 10.0, "budgets": [1, 2, 4], "max_single": 8, "by": "bm25", "embedder": "minilm-l6",
                   "train_ids": None, "threshold": 0.5, "max_sentences": 4, "seed": 0},
}


def filter_options(kind: str, options: dict[str, Any], field: str = "models.compressor") -> dict[str, Any]:
    """The options of `filter/<kind>` with defaults filled in; a wrong name or value is a one-line `UserError`."""
    if kind not in KINDS:
        raise UserError(f"{field}.model: unknown filter 'filter/{kind}'; use one of "
                        f"{', '.join('filter/' + k for k in KINDS)}")
    allowed = _OPTIONS[kind]
    for k in options:
        if k not in allowed:
            raise UserError(f"{field}.options.{k}: filter/{kind} has no option '{k}'; "
                            f"allowed: {', '.join(allowed) or 'none'}")
    o = {**allowed, **options}

    def need_int(name: str, lo: int, required: bool = False) -> None:
        v = o.get(name)
        if v is None and not required:
            return
        if isinstance(v, bool) or not isinstance(v, int) or v < lo:
            raise UserError(f"{field}.options.{name}: filter/{kind} needs an integer >= {lo}; got {v!r}")

    if kind == "truncate":
        need_int("tokens", 0, required=True)
    if kind in ("extractive", "ib-oracle") and o["by"] not in ("bm25", "embedding"):
        raise UserError(f"{field}.options.by: '{o['by']}' is not a sentence ranking; use bm25 or embedding")
    if kind == "extractive":
        need_int("sentences", 0)
        need_int("tokens", 0)
        if o["sentences"] is None and o["tokens"] is None:
            raise UserError(f"{field}.options: filter/extractive needs a budget; set sentences: N or tokens: N")
        if o["order"] not in ("original", "score"):
            raise UserError(f"{field}.options.order: '{o['order']}'; use original or score")
    if kind == "ib-learned":
        ids = o["train_ids"]
        if not isinstance(ids, list) or not ids or not all(isinstance(x, str) for x in ids):
            raise UserError(f"{field}.options.train_ids: filter/ib-learned trains on the ib-oracle's choices for these "
                            f"sample ids of the task (harness tune-filter sets them to the dev split); got {ids!r}")
        t = o["threshold"]
        if isinstance(t, bool) or not isinstance(t, (int, float)) or not 0 <= t <= 1:
            raise UserError(f"{field}.options.threshold: a probability in [0, 1]; got {t!r}")
        need_int("max_sentences", 1, required=True)
        need_int("seed", 0, required=True)
    if kind in ("ib-oracle", "ib-learned"):
        need_int("max_single", 0)
        b = o["budgets"]
        if not isinstance(b, list) or not all(isinstance(x, int) and not isinstance(x, bool) and x >= 1 for x in b):
            raise UserError(f"{field}.options.budgets: a list of sentence counts >= 1, e.g. [1, 2, 4]; got {b!r}")
        if isinstance(o["beta"], bool) or not isinstance(o["beta"], (int, float)) or o["beta"] < 0:
            raise UserError(f"{field}.options.beta: a number >= 0; got {o['beta']!r}")
        a = o.get("abstractive")
        if a is not None and (not isinstance(a, str) or a.partition("/")[0] not in ("hf", "gguf", "openai", "vllm")):
            raise UserError(f"{field}.options.abstractive: an LM compressor spec such as gguf/smollm2-135m; got {a!r}")
    return o


class FilterCompressor:
    """A `filter/<kind>` compressor; see the module docstring."""

    deterministic = True

    def __init__(self, spec: str, options: dict[str, Any] | None = None, *, tokenizer: Any = None, ib: Any = None,
                 abstractive: Any = None, train: list[Sample] | None = None, field: str = "models.compressor",
                 owns_scorer: bool = True):
        self.spec = spec
        self.kind = spec.partition("/")[2]
        self.options = filter_options(self.kind, dict(options or {}), field)
        self.tokenizer = tokenizer  # a local backend: counts tokens, truncates
        self.ib = ib  # harness.compressors.ib.IBScorer: filter/ib-oracle only
        self.owns_scorer = owns_scorer  # False: the IB scorer's backend is shared (a sweep's), closed by its owner
        self.abstractive = abstractive  # an LMCompressor whose greedy summary is one more ib-oracle candidate
        if self.kind.startswith("ib-") and ib is None:
            raise UserError(f"{field}.model: filter/ib-oracle scores candidates with an LM; set models.scorer")
        # ib_terms only says whether the IB terms are scored: the text is the same, so is the identity
        parts = [self.kind, {k: v for k, v in self.options.items() if k != "ib_terms"}, FILTER_VERSION]
        parts.append(tokenizer.identity().key() if tokenizer is not None else "")
        if ib is not None and self.kind.startswith("ib-"):  # the IB scorer decides what these keep
            parts.append(ib.key())
        if abstractive is not None:
            parts.append([abstractive.identity().key(), repr(abstractive.prompt), repr(abstractive.greedy)])
        self.learner = None
        if self.kind == "ib-learned":
            from harness.compressors.learned import LearnedFilter

            self.learner = LearnedFilter(self, list(train or []))
            parts.append(self.learner.key)  # the training data and the scorer that labelled it
        self._identity = ModelIdentity("filter", self.kind, stable_hash(parts)[:16], "", "")
        #: per compression, what the filter decided (the ib-oracle's candidates and terms), keyed by sample id
        self.details: dict[str, dict[str, Any]] = {}

    def identity(self) -> ModelIdentity:
        return self._identity

    def count_tokens(self, text: str) -> int | None:
        return self.tokenizer.count_tokens(text) if self.tokenizer is not None else None

    def _tokens(self, text: str) -> int:
        n = self.count_tokens(text)
        return n if n is not None else len(text.split())

    def prepare(self, sample: Sample, overflow: str) -> tuple[CompressInput | None, str | None]:
        return CompressInput(sample, sample.context), None

    def compress(self, jobs: list[tuple[CompressInput, GenParams]]) -> list[Generation]:
        return [self._one(inp) for inp, _ in jobs]

    def _scores(self, question: str, texts: list[str]) -> np.ndarray:
        if self.options["by"] == "embedding":
            return embedding_scores(question, texts, self.options["embedder"])
        return bm25_scores(question, texts)

    def candidates(self, sample: Sample) -> list[tuple[str, str]]:
        """The ib-oracle's (name, text) candidates: empty, the best single sentences, extractive sets by budget."""
        units = sentences(sample)
        order = rank(self._scores(sample.question, [u.text for u in units]))
        cands: list[tuple[str, str]] = [("empty", "")]
        cands += [(f"single:{units[i].doc_id}#{units[i].index}", units[i].text)
                  for i in order[: self.options["max_single"]]]
        cands += [(f"extractive:{b}", join(units, order[:b])) for b in self.options["budgets"]]
        if self.kind == "ib-oracle" and self.abstractive is not None:
            inp, err = self.abstractive.prepare(sample, "truncate")
            gen = self.abstractive.compress([(inp, self.abstractive.greedy)])[0] if inp is not None else None
            if gen is None or gen.error:
                raise RuntimeError(f"abstractive candidate failed: {err or gen.error}")  # type: ignore[union-attr]
            cands.append(("abstractive", gen.text.strip()))
        seen: set[str] = set()
        return [(n, t) for n, t in cands if not (t in seen or seen.add(t))]  # type: ignore[func-returns-value]

    def text(self, sample: Sample) -> str:
        """The filter's compression of `sample` (deterministic)."""
        return self._text(sample)[0]

    def _text(self, sample: Sample) -> tuple[str, IBTerms | None]:
        """The filter's compression of `sample` and, for the ib-oracle, the IB terms it scored while choosing."""
        ctx = sample.context
        if self.kind == "full":
            return ctx, None
        if self.kind == "truncate":
            b = self.options["tokens"]
            if self.tokenizer is None:
                return " ".join(ctx.split()[:b]), None
            return (self.tokenizer.truncate_text(ctx, b) if self._tokens(ctx) > b else ctx), None
        if self.kind == "extractive":
            units = sentences(sample)
            order = rank(self._scores(sample.question, [u.text for u in units]))
            lengths = [self._tokens(u.text) for u in units] if self.options["tokens"] is not None else [0] * len(units)
            picked = select_budget(order, lengths, sentences=self.options["sentences"], tokens=self.options["tokens"])
            return join(units, picked, self.options["order"]), None
        if self.kind == "ib-learned":
            return self.learner.text(sample), None  # type: ignore[union-attr]
        _, text, detail, terms = self.oracle_choice(sample)
        self.details[sample.id] = detail
        return text, terms

    def oracle_choice(self, sample: Sample) -> tuple[str, str, dict[str, Any], IBTerms]:
        """The ib-oracle's pick for `sample` (uses the gold answer): (candidate name, text, every candidate's
        terms and the choice, the chosen candidate's terms)."""
        from harness.compressors.ib import select_ib

        cands = self.candidates(sample)
        terms = self.ib.terms(sample, [t for _, t in cands], retrieved_tokens=self._tokens(sample.context))
        best = select_ib(terms, self.options["beta"])
        detail = {"chosen": cands[best][0], "candidates": [
            {"name": n, **t.to_json(self.options["beta"])} for (n, _), t in zip(cands, terms, strict=True)]}
        return cands[best][0], cands[best][1], detail, terms[best]

    def _one(self, inp: CompressInput) -> Generation:
        box: dict[str, Any] = {}

        def make() -> str:
            text, terms = self._text(inp.sample)
            # a failed IB scoring makes an error row, never silence
            box["terms"] = self.terms_of(inp.sample, text, terms)
            return text

        g = text_compression(self.spec, make, inp.context, self.count_tokens)
        if g.error or box.get("terms") is None:
            return g
        return FilterGeneration(**vars(g), terms=box["terms"],
                                scorer_identity=self.ib.backend.identity() if self.ib is not None else None)

    def terms_of(self, sample: Sample, text: str, terms: IBTerms | None = None) -> dict[str, float | None] | None:
        """The IB terms of this filter's compression `text` of `sample` (conciseness, correctness, ib_score, beta,
        compression rate, abstain, gold-support precision/recall), scored by the IB scorer unless `terms` (the
        ib-oracle's, scored while choosing) are given; None without a scorer or a gold answer."""
        if self.ib is None or not sample.answers:
            return None
        if terms is None:
            terms = self.ib.terms(sample, [text], retrieved_tokens=self._tokens(sample.context))[0]
        return terms_row(sample, text, terms, float(self.options.get("beta", BETA)))

    @property
    def scorer(self) -> Any:
        return None

    def close(self) -> None:
        if self.tokenizer is not None:
            self.tokenizer.close()
        if self.ib is not None and self.owns_scorer:
            self.ib.close()
        if self.abstractive is not None:
            self.abstractive.close()



def filter_scorer_config(cfg: Any) -> Any:
    """The `models.scorer` a filter scores IB terms with: float32 where `dtype: auto` (an explicit dtype is kept);
    None without a scorer."""
    sc = cfg.models.scorer
    if sc is not None and sc.dtype == "auto":
        sc = sc.model_copy(update={"dtype": "float32"})
    return sc


def make_filter(cfg: Any, mc: Any, *, field: str = "models.compressor.model", cache: Any = None,
                scorer_backend: Any = None) -> FilterCompressor:
    """The `filter/<kind>` compressor of a run config: its tokenizer (the compressor's `tokenizer`, else the
    scorer's or predictor's local model) and, for `ib-oracle`, an IB scorer on `models.scorer` in float32
    (`filter_scorer_config`). `scorer_backend`: that scorer's backend shared by the caller (a sweep's, one for
    all its filters), which the filter does not close; else the filter makes its own. Lazy: no weights load
    here."""
    from harness.backends.registry import make_backend
    from harness.compressors import tokenizer_spec
    from harness.compressors.ib import IBScorer
    from harness.config import ModelConfig

    base = field.rsplit(".", 1)[0]
    kind = mc.name
    filter_options(kind, mc.options, base)
    tok = tokenizer_spec(cfg, mc)
    if tok is None and kind in ("truncate", "extractive", "ib-oracle"):
        raise UserError(f"{base}.tokenizer: filter/{kind} counts tokens with a local tokenizer; set one, "
                        "e.g. tokenizer: gguf/smollm2-135m")
    tb = make_backend(ModelConfig(model=tok), field=f"{base}.tokenizer") if tok else None
    ib = None
    sc = cfg.models.scorer
    if kind.startswith("ib-") and sc is None:
        raise UserError(f"{field}: filter/{kind} scores its candidates with models.scorer; set one, "
                        "e.g. scorer: {model: gguf/smollm2-135m, dtype: float32}")
    # every filter's compressions get their IB terms from models.scorer where one is set (option ib_terms: false
    # turns that off for full/truncate/extractive)
    if sc is not None and (kind.startswith("ib-") or mc.options.get("ib_terms", True)):
        sb = scorer_backend if scorer_backend is not None else make_backend(
            filter_scorer_config(cfg), field="models.scorer.model", cache=cache)
        ib = IBScorer(sb, cfg.prompts, tokenizer=tb)
    lm = None
    spec = mc.options.get("abstractive")
    if spec:
        from harness.compressors.lm import LMCompressor
        from harness.pipeline.stages import params_from

        be = make_backend(ModelConfig(model=spec), field=f"{base}.options.abstractive", cache=cache)
        lm = LMCompressor(spec, be, cfg.prompts.compressor, params_from(cfg.generation.compressor, cfg.seed))
    train = None
    if kind == "ib-learned":
        train = _training_samples(cfg, mc.options["train_ids"], f"{base}.options.train_ids", cache)
    return FilterCompressor(mc.model, mc.options, tokenizer=tb, ib=ib, abstractive=lm, train=train, field=base,
                            owns_scorer=scorer_backend is None)


def _training_samples(cfg: Any, ids: list[str], field: str, cache: Any) -> list[Sample]:
    """The config's task samples with these ids, retrieved as the run retrieves them (ib-learned's training set)."""
    from harness.preflight import load_samples
    from harness.retrieval import samples_for

    by_id = {s.id: s for s in samples_for(cfg, load_samples(cfg.task), cache)}
    missing = [i for i in ids if i not in by_id]
    if missing:
        raise UserError(f"{field}: {len(missing)} id(s) are not samples of task '{cfg.task.name}' "
                        f"(first: {missing[0]!r})")
    return [by_id[i] for i in ids]
