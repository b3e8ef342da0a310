"""OpenAI-compatible backend (OpenAI, `vllm serve`, llama.cpp's server).

Generation through chat or completions; generated-token log-probs where the server
gives them; prompt log-probs through `echo`+`logprobs` (or vLLM's `prompt_logprobs`).
A server's prompt scoring is checked once against its own generation log-probs on a
known text, and refused when they disagree (llama-cpp-python's `echo` is off by one for
prompts that do not start with the model's BOS id). With a local tokenizer, the server's
chat rendering is checked once against the local template (`check_chat_render`): scores
render chat prefixes locally, so a mismatch refuses them under `api: chat`.
"""

from __future__ import annotations

import email.utils
import json
import os
import random
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from typing import Any
from urllib.parse import parse_qsl, urlsplit, urlunsplit

from harness.backends.base import STATS
from harness.errors import ModelCallError, UserError
from harness.records import Generation, GenRequest, ModelIdentity, ScoreRequest, ScoreResult, Usage
from harness.store.redact import redact_text, redact_url, register_secret

CHECK_PROMPT = "The history of the printing press begins in the fifteenth century, when"
CHECK_TOKENS = 32
CHECK_TOLERANCE_NATS = 0.1
#: chats sent once through the server's chat endpoint and, rendered by the local template, through completions:
#: one without a system message (templates differ most in the default system prompt they add) and one with
CHAT_PROBES: tuple[tuple[tuple[str, str], ...], ...] = (
    (("user", "Name three colours."),),
    (("system", "You answer in one word."), ("user", "Name a colour.")),
)
#: the same prompt tokens on the same server give the same first-token log-prob; a different rendering moves it
#: far more (measured on llama-cpp-python: |Δ| 0.000 for the same rendering)
CHAT_RENDER_TOLERANCE_NATS = 0.02


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
    if content is None and not (msg is not None and msg.get("tool_calls")):  # a tool call may have no content
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
        self._chat_check: dict[str, Any] | None = None
        self._chat_last: dict[str, Any] | None = None
        self._chat_lock = threading.Lock()
        self._chat_warned = False
        self._prompt_counts: dict[str, int] = {}

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
        calls = None
        try:
            if self.api == "chat" and r.messages:
                if p.logprobs:
                    kw["logprobs"] = True
                    kw["top_logprobs"] = 1
                if r.tool is not None:  # one function tool, which the reply is made to call
                    fn = json.loads(r.tool)
                    kw["tools"] = [{"type": "function", "function": fn}]
                    kw["tool_choice"] = {"type": "function", "function": {"name": fn["name"]}}
                resp = self._call(self.client.chat.completions.create, messages=r.message_dicts(), **kw)
                ch = resp.choices[0]
                text = ch.message.content or ""
                if r.tool is not None:
                    calls = [{"name": c.function.name, "arguments": c.function.arguments}
                             for c in ch.message.tool_calls or [] if getattr(c, "function", None) is not None]
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
        return Generation(text, [], lps, usage, finish_reason=ch.finish_reason or "", tool_calls=calls)

    def _render(self, messages: list[dict[str, str]]) -> str:
        if not self.tokenizer:
            raise UserError(
                f"openai/{self.name}: completions with chat messages need a local `tokenizer`; "
                "set api: chat or give a tokenizer"
            )
        self.tokenizer._load_tokenizer()
        return self.tokenizer.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)

    def generate(self, requests: list[GenRequest]) -> list[Generation]:
        if self.api == "chat" and self.tokenizer is not None and any(r.messages for r in requests):
            self._warn_if_chat_render_differs()
        STATS["generate_calls"] += 1
        STATS["generate_requests"] += len(requests)
        from harness.progress import item_done

        with ThreadPoolExecutor(self.max_concurrency) as ex:
            futures = [ex.submit(self._generate_one, r) for r in requests]
            for _ in as_completed(futures):  # the progress bar moves as each reply arrives
                item_done()
            return [f.result() for f in futures]

    # ---- chat rendering: the server's against the local template ----
    @property
    def chat_render_check(self) -> dict[str, Any] | None:
        """The latest `check_chat_render` result (None before it has run): `ok`, `reason`, per-probe counts."""
        return self._chat_check or self._chat_last

    def check_chat_render(self) -> dict[str, Any]:
        """Whether the server renders chat messages as the local `tokenizer`'s template does (probed once, cached).

        Each chat of CHAT_PROBES goes to the server's chat endpoint and, rendered by the local template, to its
        completions endpoint, for one greedy token with log-probs. One rendering is one prompt: the server counts
        the same prompt tokens both ways, the local tokenizer counts as many, and the first token gets the same
        log-prob. `ok` is None without a local tokenizer, False when a probe differs or fails (a failed probe is
        not cached: the next call probes again).
        """
        with self._chat_lock:
            if self._chat_check is not None:
                return self._chat_check
            if self.tokenizer is None:
                return {"ok": None, "reason": "no local tokenizer: the server renders every chat", "probes": []}
            probes: list[dict[str, Any]] = []
            try:
                for msgs in CHAT_PROBES:
                    probes.append(self._chat_probe(msgs))
            except Exception as e:
                self._chat_last = {"ok": False, "reason": f"the probe failed: {self._error_text(e)}", "probes": probes}
                return self._chat_last
            problems = [x for p in probes for x in p.pop("problems")]
            same = ", ".join(
                f"{p['local_prompt_tokens']} prompt tokens"
                + (f" and first-token |Δ| {p['abs_diff_nats']:.3f} nats" if p["abs_diff_nats"] is not None else "")
                for p in probes
            )
            self._chat_check = {
                "ok": not problems,
                "reason": problems[0] if problems else f"the same rendering ({same})",
                "probes": probes,
            }
            return self._chat_check

    def _chat_probe(self, msgs: tuple[tuple[str, str], ...]) -> dict[str, Any]:
        """One probe chat through the chat endpoint and, rendered locally, through completions; what differs."""
        dicts = [{"role": a, "content": c} for a, c in msgs]
        kw: dict[str, Any] = {"model": self.name, "max_tokens": 1, "temperature": 0.0}
        chat = self._call(self.client.chat.completions.create, messages=dicts, logprobs=True, top_logprobs=5, **kw)
        comp = self._call(self.client.completions.create, prompt=self._render(dicts), logprobs=5, **kw)
        local = self.tokenizer.count_prompt_tokens(GenRequest(messages=msgs))
        n_chat = chat.usage.prompt_tokens if chat.usage else None
        n_comp = comp.usage.prompt_tokens if comp.usage else None
        roles = "+".join(a for a, _ in msgs)
        out: dict[str, Any] = {
            "roles": roles,
            "server_chat_prompt_tokens": n_chat,
            "server_completions_prompt_tokens": n_comp,
            "local_prompt_tokens": local,
            "first_token": None,
            "abs_diff_nats": None,
            "problems": [],
        }
        if not (n_chat == n_comp == local):
            out["problems"].append(
                f"a {roles} chat is {n_chat} prompt tokens as the server renders it, {local} as the local template "
                f"renders it ({n_comp} when the server reads that rendering through completions)"
            )
        c_lp, o_lp = chat.choices[0].logprobs, comp.choices[0].logprobs
        content = getattr(c_lp, "content", None) if c_lp is not None else None
        tops = getattr(o_lp, "top_logprobs", None) if o_lp is not None else None
        if content and tops and tops[0]:
            tok, lp = content[0].token, float(content[0].logprob)
            out["first_token"] = tok
            other = tops[0].get(tok)
            if other is None:
                out["problems"].append(
                    f"after a {roles} chat the chat endpoint's first token {tok!r} is not in the top 5 of completions "
                    "of the local rendering"
                )
            else:
                out["abs_diff_nats"] = abs(lp - float(other))
                if out["abs_diff_nats"] > CHAT_RENDER_TOLERANCE_NATS:
                    out["problems"].append(
                        f"after a {roles} chat the first token {tok!r} gets {lp:.3f} nats through the chat endpoint "
                        f"and {float(other):.3f} through completions of the local rendering"
                    )
        return out

    def _warn_if_chat_render_differs(self) -> None:
        """One stderr line, once, when `api: chat` generation and local rendering (scoring, counting) disagree."""
        chk = self.check_chat_render()
        if chk["ok"] is False and not self._chat_warned:
            self._chat_warned = True
            print(
                f"warning: openai/{self.name}: the server's chat rendering differs from the local tokenizer's "
                f"template ({chk['reason']}); generations use the server's rendering, scores and token counts the "
                "local one; set api: completions to render every prompt locally",
                file=sys.stderr,
            )

    # ---- scoring ----
    def _echo(self, text: str) -> Any:
        """The server's completion of one greedy token after `text`, with `text` echoed with its log-probs."""
        extra = {"extra_body": {"prompt_logprobs": 0}} if self.scoring == "vllm-prompt-logprobs" else {}
        return self._call(
            self.client.completions.create,
            model=self.name,
            prompt=text,
            max_tokens=1,
            temperature=0.0,
            echo=True,
            logprobs=1,
            **extra,
        )

    def _prompt_tokens(self, text: str) -> int:
        """How many tokens the server counts in `text` as a completions prompt (`usage.prompt_tokens`; cached)."""
        n = self._prompt_counts.get(text)
        if n is None:
            resp = self._call(
                self.client.completions.create, model=self.name, prompt=text, max_tokens=1, temperature=0.0
            )
            if not resp.usage:
                raise RuntimeError("the server reports no usage.prompt_tokens, so the scored span cannot be placed")
            if len(self._prompt_counts) >= 4096:
                self._prompt_counts.clear()
            n = self._prompt_counts[text] = int(resp.usage.prompt_tokens)
        return n

    def _span_logprobs(self, prefix: str, continuation: str, eot: str | None = None) -> list[float]:
        """Echo log-probs of the tokens of `continuation` after `prefix`, then of `eot`, the text of an end-of-turn
        token, which must come back as exactly one token.

        The span is the last n(prefix + continuation + eot) − n(prefix) echoed prompt tokens, counted by the
        server's `usage.prompt_tokens`, not placed by `text_offset`: llama-cpp-python measures its offsets on the
        text with special tokens detokenised to '' and leaves out every token whose id is its BOS id (SmolLM2's
        `<|im_start|>`), so offsets into a chat-rendered prompt fall short of the span.
        """
        full = prefix + continuation + (eot or "")
        n_pre = self._prompt_tokens(prefix)
        resp = self._echo(full)
        ch = resp.choices[0]
        if not resp.usage or ch.logprobs is None:
            raise RuntimeError("the server returned no usage or no log-probs for an echo request")
        entries = list(zip(ch.logprobs.tokens, ch.logprobs.token_logprobs, strict=False))
        gen = resp.usage.completion_tokens or 0
        text = ch.text or ""
        if gen and text.startswith(full) and "".join(t for t, _ in entries[len(entries) - gen :]) != text[len(full) :]:
            gen = 0  # llama-cpp-python leaves the generated token out when the prompt does not start with BOS
        echoed = entries[: len(entries) - gen]
        k = resp.usage.prompt_tokens - n_pre
        if k <= 0:
            raise RuntimeError("the continuation is zero tokens long: nothing to score")
        if k > len(echoed):
            raise RuntimeError(f"the server echoed {len(echoed)} prompt tokens, fewer than the span's {k}")
        toks, vals = [t for t, _ in echoed[-k:]], [v for _, v in echoed[-k:]]
        if any(v is None for v in vals):
            raise RuntimeError("server returned no log-probs for the continuation span")
        s0 = toks[0]
        whole = s0 and "\ufffd" not in s0 and not s0.startswith("bytes:")  # not a piece of a multi-byte character
        if whole and not (continuation + (eot or "")).startswith(s0):
            raise RuntimeError(
                f"the span's first token {s0!r} does not start the continuation: prefix and continuation share a token"
            )
        if eot is not None and toks[-1] not in (eot, ""):
            raise RuntimeError(
                f"the end-of-turn text {eot!r} did not come back as one token (the span ends on {toks[-1]!r}): "
                "the server does not read special tokens in prompts"
            )
        return [float(v) for v in vals]

    def _eot_text(self) -> str:
        """The text of the local tokenizer's end-of-turn token (`<|im_end|>`), what `append_eos` scores.

        Raises ValueError (an error result for that request) without a local tokenizer or an end-of-turn token.
        """
        if self.tokenizer is None:
            raise ValueError(
                "cannot score the end-of-turn token without a local tokenizer: set `tokenizer:` for this model"
            )
        eot = self.tokenizer.end_of_turn_id
        if eot is None:
            raise ValueError("the chat template puts no end-of-turn token after a reply; score without append_eos")
        return self.tokenizer.tokenizer.decode([eot])

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
            try:
                echo = self._span_logprobs(CHECK_PROMPT, ch.text)
            except RuntimeError:  # the echo cannot even be aligned with the generated text
                echo = []
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
        if self.api == "chat" and self.tokenizer is not None and any(r.prefix is None for r in requests):
            rc = self.check_chat_render()
            if not rc["ok"]:
                raise ScoringRefused(
                    f"openai/{self.name}: the server's chat rendering differs from the local tokenizer's template "
                    f"({rc['reason']}), so chat generations (api: chat) and scores (rendered locally) would read "
                    "different prompts; set api: completions so that the harness renders every prompt itself"
                )
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
                eot = self._eot_text() if r.append_eos and r.continuation_ids is None else None
                if not cont and eot is None:
                    raise ValueError("empty continuation: a scored span of zero tokens is an error, never 0 nats")
                vals = self._span_logprobs(prefix, cont, eot)
            except UserError:
                raise
            except Exception as e:
                return ScoreResult([], [], Usage(seconds=time.time() - t), error=self._error_text(e))
            return ScoreResult([], vals, Usage(0, 0, time.time() - t))

        with ThreadPoolExecutor(self.max_concurrency) as ex:
            return list(ex.map(one, requests))
