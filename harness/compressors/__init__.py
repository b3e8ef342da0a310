"""Compressors: the protocol (`base`), the LM compressor (`lm`) and `python/<module>:<function>` (`python`)."""

from __future__ import annotations

from typing import Any

from harness.compressors.base import CompressInput, Compressor
from harness.compressors.lm import LMCompressor
from harness.compressors.python import PythonCompressor
from harness.config import ModelConfig, RunConfig
from harness.errors import UserError

__all__ = ["CompressInput", "Compressor", "LMCompressor", "PythonCompressor", "make_compressor", "tokenizer_spec"]


def tokenizer_spec(cfg: RunConfig, mc: ModelConfig) -> str | None:
    """The local spec whose tokenizer counts a python/ compressor's tokens: its own `tokenizer`, else the scorer's,
    else the predictor's model when local (gguf/..., hf/...); None when none is."""
    if mc.tokenizer:
        return mc.tokenizer
    for role in (cfg.models.scorer, cfg.models.predictor):
        if role is not None and role.backend in ("hf", "gguf"):
            return role.model
    return None


def make_compressor(cfg: RunConfig, mc: ModelConfig | None = None, *, field: str = "models.compressor.model",
                    cache: Any = None, scorer_backend: Any = None) -> Compressor:
    """The compressor of a run config (lazy: no weights load here); a bad spec is a one-line `UserError`.
    `scorer_backend`: a filter's IB scorer backend shared by the caller (`make_filter`), which the filter never
    closes."""
    from harness.backends.registry import make_backend
    from harness.pipeline.stages import params_from

    mc = mc or cfg.models.compressor
    assert mc is not None
    if mc.backend == "filter":
        from harness.compressors.filters import make_filter

        return make_filter(cfg, mc, field=field, cache=cache, scorer_backend=scorer_backend)
    if mc.backend == "python":
        tok = tokenizer_spec(cfg, mc)
        if tok is None:
            raise UserError(f"{field.rsplit('.', 1)[0]}.tokenizer: a python/ compressor counts tokens with a local "
                            "tokenizer; set one, e.g. tokenizer: gguf/smollm2-135m")
        tb = make_backend(ModelConfig(model=tok), field=f"{field.rsplit('.', 1)[0]}.tokenizer")
        return PythonCompressor(mc.model, mc.options, tokenizer=tb, field=field)
    from harness.compressors.lm import lm_ib_scorer

    be = make_backend(mc.model_copy(update={"options": {}}), field=field, cache=cache)
    ib = lm_ib_scorer(cfg, mc, be, scorer_backend=scorer_backend, cache=cache)
    return LMCompressor(mc.model, be, cfg.prompts.compressor, params_from(cfg.generation.compressor, cfg.seed),
                        options=mc.options, ib=ib, field=field.rsplit(".", 1)[0],
                        owns_scorer=ib is not None and scorer_backend is None)
