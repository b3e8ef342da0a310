"""The LM compressor: a backend (transformers, llama.cpp server, vLLM, OpenAI-compatible) and the compressor prompt."""

from __future__ import annotations

import dataclasses
from typing import Any

from harness.compressors.base import CompressInput
from harness.config import LM_OPTIONS, Prompt
from harness.errors import UserError
from harness.pipeline.stages import fit_request
from harness.prompts import render
from harness.records import Generation, GenParams, GenRequest, ModelIdentity, Sample


def length_line(max_words: int) -> str:
    """The length instruction `options: {max_words: N}` appends to the compressor's user prompt."""
    return f"Use at most {max_words} words."


def lm_options(options: dict[str, Any] | None, field: str = "models.compressor") -> dict[str, Any]:
    """An LM compressor's options checked (`max_words`: an integer >= 1; `ib_terms`: a bool); a wrong one is a
    one-line `UserError`."""
    o = dict(options or {})
    for k in o:
        if k not in LM_OPTIONS:
            raise UserError(f"{field}.options.{k}: an LM compressor takes only {', '.join(LM_OPTIONS)}")
    mw = o.get("max_words")
    if mw is not None and (isinstance(mw, bool) or not isinstance(mw, int) or mw < 1):
        raise UserError(f"{field}.options.max_words: an integer >= 1 (words of the length instruction); got {mw!r}")
    if not isinstance(o.get("ib_terms", False), bool):
        raise UserError(f"{field}.options.ib_terms: true or false; got {o['ib_terms']!r}")
    return o


def with_length(prompt: Prompt, max_words: int | None) -> Prompt:
    """The prompt with the length instruction as one more line of its user message (unchanged without one)."""
    if max_words is None:
        return prompt
    return prompt.model_copy(update={"user": prompt.user.rstrip("\n") + "\n" + length_line(max_words)})


def lm_ib_scorer(cfg: Any, mc: Any, tokenizer: Any, *, scorer_backend: Any = None, cache: Any = None) -> Any:
    """The IB scorer of an LM compressor with `options: {ib_terms: true}` (`models.scorer` in float32, as the
    filters': `filter_scorer_config`), counting tokens with `tokenizer`; None without ib_terms or a scorer.
    `scorer_backend`: a shared scorer backend (a sweep's), else one is made (lazy)."""
    if not mc.options.get("ib_terms") or cfg.models.scorer is None:
        return None
    from harness.backends.registry import make_backend
    from harness.compressors.filters import filter_scorer_config
    from harness.compressors.ib import IBScorer

    sb = scorer_backend if scorer_backend is not None else make_backend(
        filter_scorer_config(cfg), field="models.scorer.model", cache=cache)
    return IBScorer(sb, cfg.prompts, tokenizer=tokenizer)


class LMCompressor:
    """Renders the compressor prompt with the sample's question and context and generates with `backend`.

    Compressions carry the backend's token ids (and log-probs where asked for), so the compressor can score its own
    outputs exactly (MI scorer "self"). `options`: `max_words: N` appends the line "Use at most N words." to the
    user prompt (the abstractive RAG filter's length knob); `ib` (a `harness.compressors.ib.IBScorer`, set where
    `options.ib_terms` and a scorer are) gives each compression its IB terms, stored as a filter's are.
    """

    deterministic = False

    def __init__(self, spec: str, backend: Any, prompt: Prompt, greedy: GenParams,
                 options: dict[str, Any] | None = None, ib: Any = None, field: str = "models.compressor",
                 owns_scorer: bool = False):
        self.spec = spec
        self.backend = backend
        self.options = lm_options(options, field)
        self.prompt = with_length(prompt, self.options.get("max_words"))
        self.greedy = greedy  # the params the window check assumes (max_new_tokens is what matters)
        self.ib = ib
        self.owns_scorer = owns_scorer  # True: the IB scorer's backend was made for this compressor; close it

    def identity(self) -> ModelIdentity:
        return self.backend.identity()

    def count_tokens(self, text: str) -> int | None:
        return self.backend.count_tokens(text)

    def prepare(self, sample: Sample, overflow: str) -> tuple[CompressInput | None, str | None]:
        def build(ctx: str) -> GenRequest:
            return GenRequest.chat(render(self.prompt, question=sample.question, context=ctx), self.greedy)

        req, truncated, err = fit_request(self.backend, build, sample.context, overflow)
        if err:
            return None, err
        return CompressInput(sample, sample.context, truncated, req), None

    def compress(self, jobs: list[tuple[CompressInput, GenParams]]) -> list[Generation]:
        reqs = []
        for inp, params in jobs:
            assert inp.request is not None
            reqs.append(dataclasses.replace(inp.request, params=params))
        gens = self.backend.generate(reqs)
        if self.ib is None:
            return gens
        return [g if g.error else self._with_terms(inp.sample, g) for (inp, _), g in zip(jobs, gens, strict=True)]

    def _with_terms(self, sample: Sample, g: Generation) -> Generation:
        """The compression with its IB terms (as a filter's: `harness.compressors.ib.terms_row`), scored by the IB
        scorer on the stripped text; a failed scoring makes it an error row, never silence."""
        from harness.compressors.filters import FilterGeneration
        from harness.compressors.ib import terms_row

        if not sample.answers:
            return g
        text = g.text.strip()
        try:
            t = self.ib.terms(sample, [text], retrieved_tokens=self.count_tokens(sample.context) or 0)[0]
        except Exception as e:  # one failed sample never stops the run
            return dataclasses.replace(g, error=" ".join(f"IB terms failed: {type(e).__name__}: {e}".split())[:500])
        return FilterGeneration(**vars(g), terms=terms_row(sample, text, t),
                                scorer_identity=self.ib.backend.identity())

    @property
    def scorer(self) -> Any:
        return self.backend

    def close(self) -> None:
        self.backend.close()
        if self.ib is not None and self.owns_scorer:
            self.ib.close()
