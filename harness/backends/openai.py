"""OpenAI-compatible backend (OpenAI, `vllm serve`, llama.cpp's server).

Generation through chat or completions; generated-token log-probs where the server
gives them; prompt log-probs through `echo`+`logprobs` (or vLLM's `prompt_logprobs`).
A server's prompt scoring is checked once against its own generation log-probs on a
known text, and refused when they disagree (llama.cpp's `echo` is off by one for
models whose prompt has no BOS token).
"""

from __future__ import annotations

import os
import random
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from harness.backends.base import STATS
from harness.errors import UserError
from harness.records import Generation, GenRequest, ModelIdentity, ScoreRequest, ScoreResult, Usage

CHECK_PROMPT = "The history of the printing press begins in the fifteenth century, when"
CHECK_TOKENS = 32
CHECK_TOLERANCE_NATS = 0.1


class ScoringRefused(UserError):
    """The server's prompt log-probs failed the reference check; it is not used as a scorer."""


def _retryable(e: Exception) -> bool:
    import openai

    if isinstance(e, (openai.RateLimitError, openai.APITimeoutError, openai.APIConnectionError)):
        return True
    return isinstance(e, openai.APIStatusError) and e.status_code >= 500


class OpenAIBackend:
    """Any OpenAI-compatible server; no local weights."""

    def __init__(
        self,
        name: str,
        *,
        base_url: str | None = None,
        api_key_env: str | None = None,
        api: str = "chat",
        max_concurrency: int = 4,
        max_retries: int = 4,
        timeout_s: float = 120.0,
        scoring: str = "echo",
        context_window: int | None = None,
        revision: str | None = None,
        tokenizer: Any = None,
        field: str = "model",
        backoff_s: float = 0.5,
    ):
        import openai

        key = "EMPTY"
        if api_key_env:
            key = os.environ.get(api_key_env, "")
            if not key:
                raise UserError(f"{field}: environment variable {api_key_env} (api_key_env) is not set; export it")
        self.name = name
        self.base_url = base_url
        self.api = api
        self.max_concurrency = max_concurrency
        self.max_retries = max_retries
        self.scoring = scoring
        self.revision = revision
        self.tokenizer = tokenizer  # optional local TransformersBackend used only for its tokenizer/template
        self._context_window = context_window
        self.backoff_s = backoff_s
        self.client = openai.OpenAI(base_url=base_url, api_key=key, max_retries=0, timeout=timeout_s)
        self._check: dict[str, Any] | None = None
        self._check_lock = threading.Lock()

    def identity(self) -> ModelIdentity:
        tmpl = self.tokenizer.identity().chat_template_hash if self.tokenizer else "server"
        return ModelIdentity(
            "openai", f"{self.base_url or 'default'}|{self.name}", self.revision or "unversioned", "server", tmpl
        )

    @property
    def context_window(self) -> int | None:
        return self._context_window

    def count_prompt_tokens(self, request: GenRequest) -> int | None:
        return self.tokenizer.count_prompt_tokens(request) if self.tokenizer else None

    def count_tokens(self, text: str) -> int | None:
        return self.tokenizer.count_tokens(text) if self.tokenizer else None

    def truncate_text(self, text: str, n_tokens: int) -> str:
        if not self.tokenizer:
            raise UserError(f"openai/{self.name}: overflow: truncate needs a local `tokenizer`; set it or use error")
        return self.tokenizer.truncate_text(text, n_tokens)

    def close(self) -> None:
        self.client.close()

    # ---- calls with retries ----
    def _call(self, fn, **kw) -> Any:
        attempt = 0
        while True:
            try:
                return fn(**kw)
            except Exception as e:
                if attempt >= self.max_retries or not _retryable(e):
                    raise
                delay = min(self.backoff_s * 2**attempt, 30.0) * (0.5 + random.random())
                STATS["retries"] += 1
                time.sleep(delay)
                attempt += 1

    def _generate_one(self, r: GenRequest) -> Generation:
        p = r.params
        kw: dict[str, Any] = {
            "model": self.name,
            "max_tokens": p.max_new_tokens,
            "temperature": p.temperature,
            "top_p": p.top_p,
            "seed": p.seed,
        }
        if p.stop:
            kw["stop"] = list(p.stop)
        if p.top_k:
            kw["extra_body"] = {"top_k": p.top_k}
        t = time.time()
        try:
            if self.api == "chat" and r.messages:
                if p.logprobs:
                    kw["logprobs"] = True
                    kw["top_logprobs"] = 1
                resp = self._call(self.client.chat.completions.create, messages=r.message_dicts(), **kw)
                ch = resp.choices[0]
                text = ch.message.content or ""
                lps = (
                    [c.logprob for c in ch.logprobs.content]
                    if p.logprobs and ch.logprobs and ch.logprobs.content
                    else None
                )
            else:
                prompt = r.prompt if r.prompt is not None else self._render(r.message_dicts())
                if p.logprobs:
                    kw["logprobs"] = 1
                resp = self._call(self.client.completions.create, prompt=prompt, **kw)
                ch = resp.choices[0]
                text = ch.text
                lps = list(ch.logprobs.token_logprobs) if p.logprobs and ch.logprobs else None
        except Exception as e:
            return Generation("", [], None, Usage(seconds=time.time() - t), error=f"{type(e).__name__}: {e}"[:500])
        u = resp.usage
        usage = Usage(u.prompt_tokens if u else 0, u.completion_tokens if u else 0, time.time() - t)
        return Generation(text, [], lps, usage, finish_reason=ch.finish_reason or "")

    def _render(self, messages: list[dict[str, str]]) -> str:
        if not self.tokenizer:
            raise UserError(
                f"openai/{self.name}: completions with chat messages need a local `tokenizer`; "
                "set api: chat or give a tokenizer"
            )
        self.tokenizer._load_tokenizer()
        return self.tokenizer.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)

    def generate(self, requests: list[GenRequest]) -> list[Generation]:
        STATS["generate_calls"] += 1
        STATS["generate_requests"] += len(requests)
        with ThreadPoolExecutor(self.max_concurrency) as ex:
            return list(ex.map(self._generate_one, requests))

    # ---- scoring ----
    def _echo_logprobs(self, text: str) -> tuple[list[float | None], list[int]]:
        extra = {"extra_body": {"prompt_logprobs": 0}} if self.scoring == "vllm-prompt-logprobs" else {}
        resp = self._call(
            self.client.completions.create,
            model=self.name,
            prompt=text,
            max_tokens=1,
            temperature=0.0,
            echo=True,
            logprobs=1,
            **extra,
        )
        lp = resp.choices[0].logprobs
        return list(lp.token_logprobs), list(lp.text_offset)

    def _span_logprobs(self, prefix: str, continuation: str) -> list[float]:
        full = prefix + continuation
        lps, offs = self._echo_logprobs(full)
        vals = [v for v, o in zip(lps, offs, strict=False) if len(prefix) <= o < len(full)]
        if any(v is None for v in vals) or (not vals and continuation):
            raise RuntimeError("server returned no log-probs for the continuation span")
        return [float(v) for v in vals]

    def check_scoring(self) -> dict[str, Any]:
        """Compare echo log-probs of a generated text with the log-probs the server gave while generating it."""
        with self._check_lock:
            if self._check is not None:
                return self._check
            resp = self._call(
                self.client.completions.create,
                model=self.name,
                prompt=CHECK_PROMPT,
                max_tokens=CHECK_TOKENS,
                temperature=0.0,
                logprobs=1,
            )
            ch = resp.choices[0]
            gen = [float(x) for x in ch.logprobs.token_logprobs]
            echo = self._span_logprobs(CHECK_PROMPT, ch.text)
            n = min(len(gen), len(echo))
            if n == 0:
                mean_abs = float("inf")
            elif len(gen) == len(echo):
                mean_abs = sum(abs(a - b) for a, b in zip(gen, echo, strict=True)) / n
            else:  # tokenisation differs at a boundary: compare totals per token
                mean_abs = abs(sum(gen) - sum(echo)) / n
            self._check = {
                "ok": mean_abs <= CHECK_TOLERANCE_NATS,
                "mean_abs_nats_per_token": mean_abs,
                "n_tokens": n,
                "generated_total": sum(gen),
                "echo_total": sum(echo),
            }
            return self._check

    def score(self, requests: list[ScoreRequest]) -> list[ScoreResult]:
        if self.scoring == "off":
            raise ScoringRefused(f"openai/{self.name}: scoring is off for this model; set scoring: echo to enable")
        chk = self.check_scoring()
        if not chk["ok"]:
            raise ScoringRefused(
                f"openai/{self.name}: the server's prompt log-probs disagree with its own generation log-probs "
                f"(mean |Δ| {chk['mean_abs_nats_per_token']:.2f} nat/token over {chk['n_tokens']} tokens; "
                f"echo total {chk['echo_total']:.1f} vs {chk['generated_total']:.1f}); refusing to use it as a scorer"
            )
        STATS["score_calls"] += 1
        STATS["score_requests"] += len(requests)

        def one(r: ScoreRequest) -> ScoreResult:
            t = time.time()
            try:
                prefix = (
                    r.prefix
                    if r.prefix is not None
                    else self._render([{"role": a, "content": c} for a, c in r.messages])
                )
                cont = r.continuation
                if r.continuation_ids is not None:
                    if not self.tokenizer:
                        raise UserError(f"openai/{self.name}: scoring token ids needs a local `tokenizer`")
                    self.tokenizer._load_tokenizer()
                    cont = self.tokenizer.tokenizer.decode(list(r.continuation_ids))
                vals = self._span_logprobs(prefix, cont)
            except UserError:
                raise
            except Exception as e:
                return ScoreResult([], [], Usage(seconds=time.time() - t), error=f"{type(e).__name__}: {e}"[:500])
            return ScoreResult([], vals, Usage(0, 0, time.time() - t))

        with ThreadPoolExecutor(self.max_concurrency) as ex:
            return list(ex.map(one, requests))
