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
from harness.errors import UserError
from harness.records import Generation, GenParams, ModelIdentity, Sample, stable_hash

KINDS = ("full", "truncate", "extractive", "ib-oracle")
#: bumped when a filter's output for the same sample and options changes (part of its identity)
FILTER_VERSION = 1
_SPLIT = re.compile(r"(?<=[.!?])\s+|\n+")


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
    "full": {},
    "truncate": {"tokens": None},
    "extractive": {"by": "bm25", "sentences": None, "tokens": None, "order": "original", "embedder": "minilm-l6"},
    "ib-oracle": {"beta": 10.0, "budgets": [1, 2, 4], "max_single": 8, "by": "bm25", "embedder": "minilm-l6",
                  "abstractive": None},
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
    if kind == "ib-oracle":
        need_int("max_single", 0)
        b = o["budgets"]
        if not isinstance(b, list) or not all(isinstance(x, int) and not isinstance(x, bool) and x >= 1 for x in b):
            raise UserError(f"{field}.options.budgets: a list of sentence counts >= 1, e.g. [1, 2, 4]; got {b!r}")
        if isinstance(o["beta"], bool) or not isinstance(o["beta"], (int, float)) or o["beta"] < 0:
            raise UserError(f"{field}.options.beta: a number >= 0; got {o['beta']!r}")
        a = o["abstractive"]
        if a is not None and (not isinstance(a, str) or a.partition("/")[0] not in ("hf", "gguf", "openai", "vllm")):
            raise UserError(f"{field}.options.abstractive: an LM compressor spec such as gguf/smollm2-135m; got {a!r}")
    return o


class FilterCompressor:
    """A `filter/<kind>` compressor; see the module docstring."""

    deterministic = True

    def __init__(self, spec: str, options: dict[str, Any] | None = None, *, tokenizer: Any = None, ib: Any = None,
                 abstractive: Any = None, field: str = "models.compressor"):
        self.spec = spec
        self.kind = spec.partition("/")[2]
        self.options = filter_options(self.kind, dict(options or {}), field)
        self.tokenizer = tokenizer  # a local backend: counts tokens, truncates
        self.ib = ib  # harness.compressors.ib.IBScorer: filter/ib-oracle only
        self.abstractive = abstractive  # an LMCompressor whose greedy summary is one more ib-oracle candidate
        if self.kind == "ib-oracle" and ib is None:
            raise UserError(f"{field}.model: filter/ib-oracle scores candidates with an LM; set models.scorer")
        parts = [self.kind, self.options, FILTER_VERSION]
        parts.append(tokenizer.identity().key() if tokenizer is not None else "")
        if ib is not None:
            parts.append(ib.key())
        if abstractive is not None:
            parts.append([abstractive.identity().key(), repr(abstractive.prompt), repr(abstractive.greedy)])
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
        if self.abstractive is not None:
            inp, err = self.abstractive.prepare(sample, "truncate")
            gen = self.abstractive.compress([(inp, self.abstractive.greedy)])[0] if inp is not None else None
            if gen is None or gen.error:
                raise RuntimeError(f"abstractive candidate failed: {err or gen.error}")  # type: ignore[union-attr]
            cands.append(("abstractive", gen.text.strip()))
        seen: set[str] = set()
        return [(n, t) for n, t in cands if not (t in seen or seen.add(t))]  # type: ignore[func-returns-value]

    def text(self, sample: Sample) -> str:
        """The filter's compression of `sample` (deterministic)."""
        ctx = sample.context
        if self.kind == "full":
            return ctx
        if self.kind == "truncate":
            b = self.options["tokens"]
            if self.tokenizer is None:
                return " ".join(ctx.split()[:b])
            return self.tokenizer.truncate_text(ctx, b) if self._tokens(ctx) > b else ctx
        if self.kind == "extractive":
            units = sentences(sample)
            order = rank(self._scores(sample.question, [u.text for u in units]))
            lengths = [self._tokens(u.text) for u in units] if self.options["tokens"] is not None else [0] * len(units)
            picked = select_budget(order, lengths, sentences=self.options["sentences"], tokens=self.options["tokens"])
            return join(units, picked, self.options["order"])
        from harness.compressors.ib import select_ib

        cands = self.candidates(sample)
        terms = self.ib.terms(sample, [t for _, t in cands], retrieved_tokens=self._tokens(ctx))
        best = select_ib(terms, self.options["beta"])
        self.details[sample.id] = {"chosen": cands[best][0], "candidates": [
            {"name": n, **t.to_json(self.options["beta"])} for (n, _), t in zip(cands, terms, strict=True)]}
        return cands[best][1]

    def _one(self, inp: CompressInput) -> Generation:
        return text_compression(self.spec, lambda: self.text(inp.sample), inp.context, self.count_tokens)

    @property
    def scorer(self) -> Any:
        return None

    def close(self) -> None:
        if self.tokenizer is not None:
            self.tokenizer.close()
        if self.ib is not None:
            self.ib.close()
        if self.abstractive is not None:
            self.abstractive.close()



def make_filter(cfg: Any, mc: Any, *, field: str = "models.compressor.model", cache: Any = None) -> FilterCompressor:
    """The `filter/<kind>` compressor of a run config: its tokenizer (the compressor's `tokenizer`, else the
    scorer's or predictor's local model) and, for `ib-oracle`, an IB scorer on `models.scorer` in float32
    (`dtype: auto` becomes float32; an explicit dtype is kept). Lazy: no weights load here."""
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
    if kind == "ib-oracle":
        sc = cfg.models.scorer
        if sc is None:
            raise UserError(f"{field}: filter/ib-oracle scores its candidates with models.scorer; set one, "
                            "e.g. scorer: {model: gguf/smollm2-135m, dtype: float32}")
        if sc.dtype == "auto":
            sc = sc.model_copy(update={"dtype": "float32"})
        ib = IBScorer(make_backend(sc, field="models.scorer.model", cache=cache), cfg.prompts, tokenizer=tb)
    lm = None
    spec = mc.options.get("abstractive")
    if spec:
        from harness.compressors.lm import LMCompressor
        from harness.pipeline.stages import params_from

        be = make_backend(ModelConfig(model=spec), field=f"{base}.options.abstractive", cache=cache)
        lm = LMCompressor(spec, be, cfg.prompts.compressor, params_from(cfg.generation.compressor, cfg.seed))
    return FilterCompressor(mc.model, mc.options, tokenizer=tb, ib=ib, abstractive=lm, field=base)
