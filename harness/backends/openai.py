"""OpenAI-compatible backend (OpenAI, `vllm serve`, llama.cpp's server).

Generation through chat or completions; generated-token log-probs where the server
gives them; prompt log-probs through `echo`+`logprobs` (or vLLM's `prompt_logprobs`).
A server's prompt scoring is checked once against its own generation log-probs on a
known text, and refused when they disagree (llama.cpp's `echo` is off by one for
models whose prompt has no BOS token).
"""

from __future__ import annotations

import email.utils
import json
import os
import random
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any
from urllib.parse import parse_qsl, urlsplit, urlunsplit

from harness.backends.base import STATS
from harness.errors import ModelCallError, UserError
from harness.records import Generation, GenRequest, ModelIdentity, ScoreRequest, ScoreResult, Usage
from harness.store.redact import redact_text, redact_url, register_secret

CHECK_PROMPT = "The history of the printing press begins in the fifteenth century, when"
CHECK_TOKENS = 32
CHECK_TOLERANCE_NATS = 0.1


class ScoringRefused(UserError):
    """The server's prompt log-probs failed the reference check; it is not used as a scorer."""


#: longest server-requested wait (Retry-After) honoured; the openai client does not retry past it either
MAX_RETRY_AFTER_S = 120.0
_stats_lock = threading.Lock()


class BadResponse(Exception):
    """A 200 answer that is not a usable completion: not JSON, cut short, HTML, an `{"error": ...}` object, no
    choices, no content. Retried with backoff; an error row when retries run out, never a score or a cache entry."""

    def __init__(self, message: str, retry_after: float | None = None):
        super().__init__(message)
        self.retry_after = retry_after


class Refused(Exception):
    """The server declined to answer (content filter, refusal): an error row with its own reason, not retried."""


def _count_retry(n: int = 1) -> None:
    with _stats_lock:
        STATS["retries"] += n


def _retryable(e: Exception) -> bool:
    """Whether `_call` retries `e` itself: only 200 answers with a bad body. The openai client retries the HTTP
    failures (408/409/429/5xx, timeouts, refused connections) before `_call` sees them."""
    return isinstance(e, BadResponse)


def retry_after_seconds(value: str | None, now: float | None = None) -> float | None:
    """Seconds to wait from a Retry-After header (delay in seconds, or an HTTP date); None when absent, invalid,
    negative or longer than MAX_RETRY_AFTER_S."""
    if not value:
        return None
    try:
        s = float(value)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(value).timestamp()
        except (TypeError, ValueError, IndexError, OverflowError):
            return None
        s = when - (time.time() if now is None else now)
    return s if 0 <= s <= MAX_RETRY_AFTER_S else None


def _snippet(text: str, n: int = 120) -> str:
    return " ".join(text.split())[:n]


def _checked(raw: Any) -> Any:
    """The parsed response of a raw 200 answer, after checking that its body is a completion.

    Raises BadResponse (retryable) for a body that is not JSON, truncated, an error object or has no choices or no
    content, and Refused for a content filter or a refusal.
    """
    http = raw.http_response
    ctype = http.headers.get("content-type", "") or "no content type"
    ra = retry_after_seconds(http.headers.get("retry-after"))
    text = http.text
    try:
        data = json.loads(text)
    except ValueError:
        kind = "an HTML page" if "html" in ctype or text.lstrip().startswith("<") else f"malformed JSON ({ctype})"
        raise BadResponse(f"HTTP {http.status_code} with {kind}, {len(text)} bytes: {_snippet(text)!r}", ra) from None
    if not isinstance(data, dict):
        raise BadResponse(f"HTTP {http.status_code} with a JSON {type(data).__name__}, not a completion object", ra)
    if not data.get("choices"):
        err = data.get("error")
        if err:
            msg = err.get("message", err) if isinstance(err, dict) else err
            raise BadResponse(f"HTTP {http.status_code} with an error body: {_snippet(str(msg), 300)}", ra)
        raise BadResponse(f"HTTP {http.status_code} with no choices", ra)
    ch = data["choices"][0] if isinstance(data["choices"], list) else None
    if not isinstance(ch, dict):
        raise BadResponse(f"HTTP {http.status_code} with a malformed choice", ra)
    finish = ch.get("finish_reason")
    msg = ch.get("message") if isinstance(ch.get("message"), dict) else None
    content = msg.get("content") if msg is not None else ch.get("text")
    if finish == "content_filter":
        raise Refused("content_filter: the server withheld the reply (finish_reason content_filter)")
    if msg is not None and msg.get("refusal"):
        raise Refused(f"refusal: {_snippet(str(msg['refusal']), 300)}")
    if content is None:
        raise BadResponse(f"HTTP {http.status_code} with no content in the reply (finish_reason {finish})", ra)
    return raw.parse()


def _split_query(url: str | None) -> tuple[str | None, dict[str, str]]:
    """(base URL without its query, the query as a dict): the client appends paths, so the query travels apart."""
    if not url or "?" not in url:
        return url, {}
    parts = urlsplit(url)
    return urlunsplit(parts._replace(query="")), dict(parse_qsl(parts.query, keep_blank_values=True))


def _url_secrets(url: str | None) -> list[str]:
    """The credentials inside a URL (user-info and secret-named query values), to hide wherever they turn up."""
    if not url:
        return []
    from harness.store.redact import is_secret_key

    parts = urlsplit(url)
    # the user of a user:password pair is a name (kept, as redact_url keeps it); a bare user (token@) is a secret
    out = [parts.password] if parts.password else [parts.username] if parts.username else []
    return out + [v for k, v in parse_qsl(parts.query) if is_secret_key(k)]


def _on_request(request: Any) -> None:
    if request.headers.get("x-stainless-retry-count", "0") not in ("", "0"):
        _count_retry()


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
        # the key and any URL credentials are hidden wherever they turn up (error text, stored rows, logs)
        self._secrets = ([key] if api_key_env else []) + _url_secrets(base_url)
        for s in self._secrets:
            register_secret(s)
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
        # the client retries 408/409/429/5xx, timeouts and refused connections, honouring Retry-After; an event
        # hook counts its retries (each retried request carries x-stainless-retry-count > 0)
        url, query = _split_query(base_url)
        self.client = openai.OpenAI(
            base_url=url, api_key=key, max_retries=max_retries, timeout=timeout_s, default_query=query or None,
            http_client=openai.DefaultHttpxClient(event_hooks={"request": [_on_request]}),
        )
        self._check: dict[str, Any] | None = None
        self._check_lock = threading.Lock()

    def identity(self) -> ModelIdentity:
        """The server (its URL without credentials: a rotated key keeps the identity) and the model name."""
        tmpl = self.tokenizer.identity().chat_template_hash if self.tokenizer else "server"
        url = redact_url(self.base_url) or "default"
        return ModelIdentity("openai", f"{url}|{self.name}", self.revision or "unversioned", "server", tmpl)

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
    def _call(self, fn: Any, **kw: Any) -> Any:
        """`fn(**kw)` (a bound `create` of this client), returning the parsed and checked response.

        HTTP failures are retried by the openai client itself (408/409/429/5xx, timeouts, refused connections;
        Retry-After honoured in seconds or as an HTTP date up to 120 s, a longer one fails the call). A 200 whose
        body is not a completion (`_checked`) is retried here with backoff (or its Retry-After), at most
        `max_retries` times. Every retry counts in STATS["retries"]. A call that still fails raises Refused or
        ModelCallError, whose one-line message has keys and URL credentials hidden (a server may echo them).
        """
        raw_fn = getattr(fn.__self__.with_raw_response, fn.__name__)
        attempt = 0
        while True:
            try:
                return _checked(raw_fn(**kw))
            except Exception as e:
                if attempt >= self.max_retries or not _retryable(e):
                    if isinstance(e, Refused):
                        raise Refused(self._error_text(e)) from None
                    raise ModelCallError(self._error_text(e)) from None
                delay = min(self.backoff_s * 2**attempt, 30.0) * (0.5 + random.random())
                ra = getattr(e, "retry_after", None)
                _count_retry()
                time.sleep(max(delay, ra) if ra is not None else delay)
                attempt += 1

    def _error_text(self, e: BaseException) -> str:
        """One stored line for a failed call, with keys and URL credentials hidden."""
        msg = str(e) if isinstance(e, (Refused, ModelCallError)) else f"{type(e).__name__}: {e}"
        return (redact_text(" ".join(msg.split()), self._secrets) or "")[:500]

    def _generate_one(self, r: GenRequest) -> Generation:
        p = r.params
        # Every sampling processor is neutral unless the request asks for it (MI needs the plain softmax): top_p
        # and OpenAI's penalties always; llama.cpp's server (defaults top_k 40, min_p 0.05, repeat_penalty 1.1) and
        # vLLM's (top_k, min_p, repetition_penalty from the model's generation_config) take theirs in extra_body.
        # top_k 0 is "off" for both (a vLLM older than 2025 answers 0 with a 400: an error row, never a warped
        # draw). OpenAI's own API refuses unknown fields with a 400, so it gets no extra_body fields it lacks.
        kw: dict[str, Any] = {
            "model": self.name,
            "max_tokens": p.max_new_tokens,
            "temperature": p.temperature,
            "top_p": p.top_p,
            "presence_penalty": 0.0,
            "frequency_penalty": 0.0,
            "seed": p.seed,
        }
        if p.stop:
            kw["stop"] = list(p.stop)
        host = self.client.base_url.host or ""
        if host != "api.openai.com" and not host.endswith(".openai.azure.com"):
            kw["extra_body"] = {"top_k": p.top_k, "min_p": 0.0, "repeat_penalty": 1.0, "repetition_penalty": 1.0}
        elif p.top_k:
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
            return Generation("", [], None, Usage(seconds=time.time() - t), error=self._error_text(e))
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
                return ScoreResult([], [], Usage(seconds=time.time() - t), error=self._error_text(e))
            return ScoreResult([], vals, Usage(0, 0, time.time() - t))

        with ThreadPoolExecutor(self.max_concurrency) as ex:
            return list(ex.map(one, requests))
