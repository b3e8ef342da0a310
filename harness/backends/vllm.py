"""In-process vLLM engine (`pip install harness[vllm]`), against vLLM's documented API.

`LLM.generate(prompts, SamplingParams(logprobs=…, prompt_logprobs=…))`: generation with
sampled-token log-probs, and teacher-forced scoring through `prompt_logprobs` on the
exact token ids of prefix + continuation. vLLM keeps prefix caching on, so scoring many
continuations under one context reuses the context's KV blocks.
"""

from __future__ import annotations

import gc
import time
from pathlib import Path
from typing import Any

from harness.backends import identity as ident_mod
from harness.backends.base import STATS
from harness.errors import UserError
from harness.records import Generation, GenRequest, ModelIdentity, ScoreRequest, ScoreResult, Usage


def continuation_ids(tok: Any, r: ScoreRequest, eot: int | None) -> tuple[list[int], str | None]:
    """The token ids `r` scores, or an error: its exact ids, else its text's ids, then the end-of-turn token `eot`
    (`end_of_turn_id(tok)`) when `append_eos`. A span of zero tokens is an error, never 0 nats."""
    if r.continuation_ids is not None:
        ids = list(r.continuation_ids)
    else:
        ids = tok(r.continuation, add_special_tokens=False)["input_ids"]
        if r.append_eos:
            if eot is None:
                return [], "the chat template puts no end-of-turn token after a reply; score without append_eos"
            ids = [*ids, eot]
    if not ids:
        return [], "empty continuation: a scored span of zero tokens is an error, never 0 nats"
    return ids, None


class VLLMBackend:
    def __init__(
        self,
        name: str,
        *,
        dtype: str = "bfloat16",
        revision: str | None = None,
        trust_remote_code: bool = False,
        context_window: int | None = None,
        field: str = "model",
        engine_kwargs: dict[str, Any] | None = None,
    ):
        try:
            import vllm  # noqa: F401
        except ImportError:
            raise UserError(f"{field}: backend 'vllm' needs the vllm extra: pip install 'harness[vllm]'") from None
        folder = Path(name).expanduser()
        if folder.is_dir():
            self.revision = ident_mod.folder_revision(folder)
            self.template = ident_mod.folder_chat_template(folder)
            self._context_window = context_window or ident_mod.folder_context_length(folder)
        else:
            self.revision = revision or "unversioned"
            self.template = None
            self._context_window = context_window
        self.name = name
        self.dtype = dtype
        self.trust_remote_code = trust_remote_code
        self.engine_kwargs = engine_kwargs or {}
        self.llm: Any = None

    def identity(self) -> ModelIdentity:
        return ModelIdentity("vllm", self.name, self.revision, self.dtype, ident_mod.template_hash(self.template))

    @property
    def context_window(self) -> int | None:
        return self._context_window

    def _load(self) -> None:
        if self.llm is not None:
            return
        from vllm import LLM

        kw = {"dtype": self.dtype, "trust_remote_code": self.trust_remote_code, "enable_prefix_caching": True}
        if self._context_window:
            kw["max_model_len"] = self._context_window
        kw.update(self.engine_kwargs)
        self.llm = LLM(model=self.name, **kw)
        self.tok = self.llm.get_tokenizer()
        STATS["model_loads"] += 1

    def close(self) -> None:
        self.llm = None
        gc.collect()

    def _prompt_ids(self, messages: list[dict[str, str]] | None, prompt: str | None) -> list[int]:
        self._load()
        if messages:
            text = self.tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
            return self.tok(text, add_special_tokens=False)["input_ids"]
        return self.tok(prompt or "")["input_ids"]

    def count_prompt_tokens(self, request: GenRequest) -> int | None:
        return len(self._prompt_ids(request.message_dicts() or None, request.prompt))

    def count_tokens(self, text: str) -> int | None:
        self._load()
        return len(self.tok(text, add_special_tokens=False)["input_ids"])

    def truncate_text(self, text: str, n_tokens: int) -> str:
        self._load()
        return self.tok.decode(self.tok(text, add_special_tokens=False)["input_ids"][:n_tokens])

    def generate(self, requests: list[GenRequest]) -> list[Generation]:
        from vllm import SamplingParams, TokensPrompt

        self._load()
        STATS["generate_calls"] += 1
        STATS["generate_requests"] += len(requests)
        prompts, params = [], []
        for r in requests:
            p = r.params
            prompts.append(TokensPrompt(prompt_token_ids=self._prompt_ids(r.message_dicts() or None, r.prompt)))
            # Every processor's neutral value explicitly. `LLM.generate` given SamplingParams uses them as they are:
            # the model's generation_config (engine arg generation_config="auto") only fills the defaults of
            # `LLM.get_default_sampling_params()`, used when no SamplingParams is passed, and its eos ids.
            # top_k -1 is "off" in every vLLM (since 2025 0 is too; older versions reject 0).
            params.append(
                SamplingParams(
                    max_tokens=p.max_new_tokens,
                    temperature=p.temperature,
                    top_p=p.top_p,
                    top_k=p.top_k if p.top_k > 0 else -1,
                    min_p=0.0,
                    presence_penalty=0.0,
                    frequency_penalty=0.0,
                    repetition_penalty=1.0,
                    seed=p.seed,
                    logprobs=1 if p.logprobs else None,
                    stop=list(p.stop) or None,
                )
            )
        t = time.time()
        outs = self.llm.generate(prompts, params, use_tqdm=False)
        dt = (time.time() - t) / max(len(requests), 1)
        res = []
        for r, o in zip(requests, outs, strict=True):
            c = o.outputs[0]
            ids = list(c.token_ids)
            lps = (
                [float(step[tok].logprob) for step, tok in zip(c.logprobs, ids, strict=True)]
                if r.params.logprobs and c.logprobs
                else None
            )
            res.append(
                Generation(
                    c.text, ids, lps, Usage(len(o.prompt_token_ids), len(ids), dt), finish_reason=c.finish_reason or ""
                )
            )
        return res

    def score(self, requests: list[ScoreRequest]) -> list[ScoreResult]:
        from vllm import SamplingParams, TokensPrompt

        self._load()
        STATS["score_calls"] += 1
        STATS["score_requests"] += len(requests)
        from harness.backends.transformers import end_of_turn_id

        if not hasattr(self, "_eot"):
            self._eot = end_of_turn_id(self.tok)
        items, res = [], []
        for r in requests:
            pre = self._prompt_ids([{"role": a, "content": c} for a, c in r.messages] or None, r.prefix)
            cont, err = continuation_ids(self.tok, r, self._eot)
            items.append((pre, cont))
            res.append(ScoreResult([], [], Usage(), error=err) if err else None)
        todo = [i for i, x in enumerate(res) if x is None]
        sp = SamplingParams(max_tokens=1, temperature=0.0, prompt_logprobs=0)
        t = time.time()
        outs = self.llm.generate(
            [TokensPrompt(prompt_token_ids=items[i][0] + items[i][1]) for i in todo], sp, use_tqdm=False
        ) if todo else []
        dt = (time.time() - t) / max(len(todo), 1)
        for i, o in zip(todo, outs, strict=True):
            pre, cont = items[i]
            plp = o.prompt_logprobs
            vals = [float(plp[len(pre) + k][tok].logprob) for k, tok in enumerate(cont)]
            res[i] = ScoreResult(cont, vals, Usage(len(pre) + len(cont), 0, dt))
        return res  # type: ignore[return-value]
