"""Build a backend from a role's `ModelConfig`."""

from __future__ import annotations

from harness.backends.cache import CachedBackend, ResponseCache
from harness.config import ModelConfig


def make_backend(cfg: ModelConfig, *, field: str = "model", cache: ResponseCache | None = None):
    """Construct the (lazy) backend for a model spec, wrapped in the response cache if given."""
    b = cfg.backend
    if b in ("hf", "gguf"):
        from harness.backends.transformers import TransformersBackend

        be = TransformersBackend(
            b,
            cfg.name,
            dtype=cfg.dtype,
            device=cfg.device,
            batch_size=cfg.batch_size,
            revision=cfg.revision,
            trust_remote_code=cfg.trust_remote_code,
            context_window=cfg.context_window,
            field=field,
        )
    elif b == "openai":
        from harness.backends.openai import OpenAIBackend

        tok = None
        if cfg.tokenizer:
            from harness.backends.transformers import TransformersBackend

            tb, _, tn = cfg.tokenizer.partition("/")
            tok = TransformersBackend(tb, tn, field=f"{field}.tokenizer")
        be = OpenAIBackend(
            cfg.name,
            base_url=cfg.base_url,
            api_key_env=cfg.api_key_env,
            api=cfg.api,
            max_concurrency=cfg.max_concurrency,
            max_retries=cfg.max_retries,
            timeout_s=cfg.timeout_s,
            scoring=cfg.scoring,
            context_window=cfg.context_window,
            revision=cfg.revision,
            tokenizer=tok,
            field=field,
        )
    else:
        from harness.backends.vllm import VLLMBackend

        be = VLLMBackend(
            cfg.name,
            dtype=cfg.dtype,
            revision=cfg.revision,
            trust_remote_code=cfg.trust_remote_code,
            context_window=cfg.context_window,
            field=field,
        )
    return CachedBackend(be, cache) if cache is not None else be
