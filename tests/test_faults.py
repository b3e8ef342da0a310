"""Fault injection: the OpenAI-compatible backend and `harness run` / `harness sweep` against a hostile server.

`FakeOpenAI` is a UNIT-TEST FAKE FOR FAULT INJECTION, not a model: a stdlib `http.server` on 127.0.0.1 that
answers the synthetic-records questions correctly (it reads the record of interest's patient name from the
prompt and looks the answer up) unless it injects a fault: 429 with Retry-After (seconds or an HTTP date), 503,
a hang past the client timeout, malformed JSON, empty `choices`, a truncated body, a 200 with an error body,
`content: null` with `finish_reason: content_filter`, an HTML 200, a 401 echoing the Authorization header and
the query string. Every request is logged (arrival time, request key, fault), so the tests can tell which calls
really succeeded, measure the gaps between retries, and compare them with the rows the harness wrote.
Request counts are bounded (`max_requests`) and hangs are short, so the file runs in well under a minute.
"""

from __future__ import annotations

import email.utils
import hashlib
import json
import os
import random
import re
import sqlite3
import subprocess
import sys
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml

from harness.backends.base import STATS
from harness.backends.cache import CachedBackend, ResponseCache
from harness.backends.openai import OpenAIBackend, retry_after_seconds
from harness.records import GenParams, GenRequest
from harness.store.redact import redact, redact_text, redact_url, register_secret
from harness.tasks import load_task
from tests.conftest import free_port

KINDS = ("429", "429-date", "503", "hang", "malformed", "empty_choices", "truncated", "error_body", "content_filter",
         "html", "401")
RETRIED = {"429", "429-date", "503", "hang", "malformed", "empty_choices", "truncated", "error_body", "html"}
TASK = {"name": "synthetic-records", "size": 10, "seed": 0, "options": {"n_templates": 1, "context_tokens": 200}}
KEY_ENV = "HARNESS_FAULT_TEST_KEY"
KEY = "sk-faulttest-" + "9f3c2a7be41d08c6" * 2  # the API key: must appear in no written byte
URL_PASSWORD = "pw-Zq81xLk0vT"  # in the predictor's base_url: must appear nowhere either
QUERY_SECRET = "qs-Hh27TmX0pW"  # ?api-key=... in both base URLs
HANG_S = 1.6
TIMEOUT_S = 1.0
RECORD = re.compile(r"\[Record of interest\]\s*Patient name: ([^.\n]+)\.")


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server

    def log_message(self, *a: Any) -> None:  # quiet
        pass

    def do_POST(self) -> None:
        srv = self.server
        body = json.loads(self.rfile.read(int(self.headers.get("Content-Length") or 0)) or b"{}")
        key = hashlib.sha256(json.dumps([body.get("model"), body.get("messages")], sort_keys=True).encode()).hexdigest()
        fault = srv.pick_fault()
        entry = {"t": time.time(), "key": key, "fault": fault, "answered": False, "model": body.get("model"),
                 "auth": self.headers.get("Authorization", ""), "path": self.path}
        with srv.lock:
            srv.log.append(entry)
        if not urlsplit(self.path).path.endswith("/chat/completions"):
            return self._send(404, b'{"error": {"message": "not found"}}')
        text = srv.answer(body)
        ok = {"id": "chatcmpl-fake", "object": "chat.completion", "created": 0, "model": body.get("model", "fake"),
              "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}],
              "usage": {"prompt_tokens": 50, "completion_tokens": 5, "total_tokens": 55}}
        data = json.dumps(ok).encode()
        if fault is None:
            self._send(200, data)
            entry["answered"] = True
        elif fault == "429":
            self._send(429, b'{"error": {"message": "rate limited"}}', {"Retry-After": "1"})
        elif fault == "429-date":
            self._send(429, b'{"error": {"message": "rate limited"}}',
                       {"Retry-After": email.utils.formatdate(time.time() + 2, usegmt=True)})
        elif fault == "503":
            self._send(503, b'{"error": {"message": "overloaded"}}')
        elif fault == "hang":
            time.sleep(HANG_S)  # past the client's timeout: whatever follows is not read
            self._send(200, data)
        elif fault == "malformed":
            self._send(200, b'{"id": "chatcmpl-fake", "choices": [{"message": ')
        elif fault == "empty_choices":
            self._send(200, json.dumps({**ok, "choices": []}).encode())
        elif fault == "truncated":
            self._send(200, data, truncate=True)
        elif fault == "error_body":
            self._send(200, b'{"error": {"message": "upstream model crashed", "type": "server_error"}}')
        elif fault == "content_filter":
            ch = {"index": 0, "message": {"role": "assistant", "content": None}, "finish_reason": "content_filter"}
            self._send(200, json.dumps({**ok, "choices": [ch]}).encode())
        elif fault == "html":
            self._send(200, b"<html><body><h1>502 Bad Gateway</h1></body></html>", ctype="text/html")
        elif fault == "401":
            msg = f"Incorrect API key provided: {self.headers.get('Authorization')} (request {self.path})"
            self._send(401, json.dumps({"error": {"message": msg, "type": "invalid_request_error"}}).encode())

    def _send(self, status: int, data: bytes, headers: dict[str, str] | None = None, *,
              ctype: str = "application/json", truncate: bool = False) -> None:
        try:
            self.send_response(status)
            self.send_header("Content-Type", ctype)
            for k, v in (headers or {}).items():
                self.send_header(k, v)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data[: len(data) // 2] if truncate else data)
            self.wfile.flush()
        except OSError:  # the client gave up (hang)
            pass
        if truncate:
            self.close_connection = True


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.lock = threading.Lock()
        self.log: list[dict[str, Any]] = []
        self.answers: dict[str, str] = {}
        self.plan: list[str | None] = []  # faults for the next requests, in order of arrival
        self.rate = 0.0  # then this share of requests gets a random fault
        self.rng = random.Random(0)
        self.max_requests = 400

    def pick_fault(self) -> str | None:
        with self.lock:
            if len(self.log) >= self.max_requests:
                return "503"
            if self.plan:
                return self.plan.pop(0)
            return self.rng.choice(KINDS) if self.rng.random() < self.rate else None

    def answer(self, body: dict[str, Any]) -> str:
        text = "\n".join(str(m.get("content") or "") for m in body.get("messages") or [])
        m = RECORD.search(text)
        name = m.group(1) if m else ""
        ans = self.answers.get(name, "unknown")
        if str(body.get("model", "")).endswith("compressor"):
            return f"[Record of interest]\nPatient name: {name}.\nStarted after the first diagnosis: {ans}."
        return ans


class FakeOpenAI:
    """Handle on a running `_Server`: its URL, request log and fault controls."""

    def __init__(self) -> None:
        self.srv = _Server()
        samples = load_task(TASK["name"], size=TASK["size"], seed=TASK["seed"], split=None, options=TASK["options"])
        for s in samples:
            m = RECORD.search(s.context)
            assert m, s.context[:200]
            self.srv.answers[m.group(1)] = s.answers[0]
        assert len(self.srv.answers) == len(samples)  # names identify samples
        self.thread = threading.Thread(target=self.srv.serve_forever, daemon=True)
        self.thread.start()

    @property
    def port(self) -> int:
        return self.srv.server_address[1]

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    @property
    def log(self) -> list[dict[str, Any]]:
        with self.srv.lock:
            return list(self.srv.log)

    def reset(self, plan: list[str | None] | None = None, rate: float = 0.0, seed: int = 0) -> None:
        with self.srv.lock:
            self.srv.log.clear()
            self.srv.plan = list(plan or [])
            self.srv.rate = rate
            self.srv.rng = random.Random(seed)

    def close(self) -> None:
        self.srv.shutdown()
        self.srv.server_close()


@pytest.fixture(scope="module")
def fake():
    f = FakeOpenAI()
    yield f
    f.close()


def _chat(content: str) -> GenRequest:
    return GenRequest.chat([{"role": "user", "content": content}], GenParams(max_new_tokens=8))


def _record_prompt(fake: FakeOpenAI) -> tuple[str, str]:
    name, ans = next(iter(fake.srv.answers.items()))
    return f"[Record of interest]\nPatient name: {name}.\nWhich medication?", ans


def _backend(fake: FakeOpenAI, monkeypatch: pytest.MonkeyPatch, **kw: Any) -> OpenAIBackend:
    monkeypatch.setenv(KEY_ENV, KEY)
    kw.setdefault("max_retries", 2)
    kw.setdefault("timeout_s", TIMEOUT_S)
    kw.setdefault("backoff_s", 0.05)
    return OpenAIBackend("fake-predictor", base_url=fake.url, api_key_env=KEY_ENV, **kw)


# ---------------------------------------------------------------- the backend, one fault at a time


@pytest.mark.parametrize("fault", sorted(RETRIED - {"429", "429-date"}))
def test_each_transient_fault_is_retried_then_answered(fake, monkeypatch, fault):
    """Transport faults are retried by the openai client, bad 200 bodies by `_call`: one retry, then the answer."""
    be = _backend(fake, monkeypatch)
    prompt, ans = _record_prompt(fake)
    fake.reset([fault])
    r0 = STATS["retries"]
    (g,) = be.generate([_chat(prompt)])
    assert g.error is None and g.text == ans, g.error
    assert len(fake.log) == 2 and STATS["retries"] - r0 == 1
    be.close()


@pytest.mark.parametrize("fault", ["malformed", "empty_choices", "error_body", "html", "truncated"])
def test_a_fault_that_persists_is_an_error_and_never_cached(fake, monkeypatch, tmp_path, fault):
    cache = ResponseCache(tmp_path / "cache.sqlite")
    be = CachedBackend(_backend(fake, monkeypatch, max_retries=1), cache)
    prompt, _ = _record_prompt(fake)
    fake.reset([fault] * 20)
    (g,) = be.generate([_chat(prompt)])
    assert g.error and g.text == "", g
    assert len(fake.log) == 2  # bounded: the first try and one retry (by the client for a cut-short body)
    assert cache._db.execute("SELECT COUNT(*) FROM responses WHERE kind = 'generate'").fetchone()[0] == 0
    be.close()
    cache.close()


def test_content_filter_is_its_own_error_not_an_empty_answer(fake, monkeypatch, tmp_path):
    cache = ResponseCache(tmp_path / "cache.sqlite")
    be = CachedBackend(_backend(fake, monkeypatch), cache)
    prompt, ans = _record_prompt(fake)
    fake.reset(["content_filter"])
    (g,) = be.generate([_chat(prompt)])
    assert g.error and g.error.startswith("content_filter:") and g.text == ""
    assert len(fake.log) == 1  # a refusal is not retried
    assert cache._db.execute("SELECT COUNT(*) FROM responses").fetchone()[0] == 0
    (g2,) = be.generate([_chat(prompt)])  # not cached: asked again, answered
    assert g2.error is None and g2.text == ans and len(fake.log) == 2
    be.close()
    cache.close()


def test_a_filtered_reply_left_in_the_cache_is_a_miss(fake, monkeypatch, tmp_path):
    """An older harness cached `content: null` + content_filter as an empty answer; it is asked again, not scored."""
    from harness.backends.cache import cache_key
    from harness.records import Generation, Usage

    cache = ResponseCache(tmp_path / "cache.sqlite")
    be = CachedBackend(_backend(fake, monkeypatch), cache)
    prompt, ans = _record_prompt(fake)
    req = _chat(prompt)
    stale = Generation("", [], None, Usage(1, 0, 0.1), finish_reason="content_filter")
    cache.put(cache_key("generate", be.identity(), req.to_json()), "generate", be.identity(), req.to_json(),
              stale.to_json())
    fake.reset()
    (g,) = be.generate([req])
    assert g.error is None and g.text == ans and not g.usage.cached and len(fake.log) == 1
    be.close()
    cache.close()


@pytest.mark.parametrize("fault,wait", [("429", 1.0), ("429-date", 1.0)])
def test_retry_after_is_honoured(fake, monkeypatch, fault, wait):
    """Retry-After: 1, or an HTTP date 2 s ahead (whole seconds: ≥ 1 s left), is waited for before the retry."""
    be = _backend(fake, monkeypatch, backoff_s=0.01)
    prompt, ans = _record_prompt(fake)
    fake.reset([fault])
    (g,) = be.generate([_chat(prompt)])
    first, second = fake.log
    assert g.error is None and g.text == ans
    assert second["t"] - first["t"] >= wait - 0.05, second["t"] - first["t"]
    be.close()


def test_retry_after_parsing():
    now = 1_000_000.0
    assert retry_after_seconds("3") == 3.0 and retry_after_seconds("0.5") == 0.5
    assert retry_after_seconds(email.utils.formatdate(now + 30, usegmt=True), now=now) == pytest.approx(30, abs=1)
    assert retry_after_seconds("3600") is None and retry_after_seconds("soon") is None
    assert retry_after_seconds(None) is None and retry_after_seconds("-1") is None


def test_401_echoing_the_key_is_stored_without_it(fake, monkeypatch):
    be = _backend(fake, monkeypatch)
    fake.reset(["401"])
    (g,) = be.generate([_chat("hello")])
    assert fake.log[0]["auth"] == f"Bearer {KEY}"  # the fake did echo the real key
    assert g.error and "AuthenticationError" in g.error and KEY not in g.error and "Bearer ***" in g.error
    assert len(fake.log) == 1  # a 401 is not retried
    be.close()


def test_identity_has_no_credentials_and_ignores_them(monkeypatch):
    monkeypatch.setenv(KEY_ENV, KEY)
    plain = OpenAIBackend("m", base_url="http://h:8000/v1", api_key_env=KEY_ENV).identity()
    for url in (f"http://user:{URL_PASSWORD}@h:8000/v1", "http://user:other@h:8000/v1"):
        ident = OpenAIBackend("m", base_url=url, api_key_env=KEY_ENV).identity()
        assert URL_PASSWORD not in ident.key() and "other" not in ident.key() and KEY not in ident.key()
        assert ident.name == "http://user:***@h:8000/v1|m"
    tok = OpenAIBackend("m", base_url="http://tok-abcdef123@h:8000/v1", api_key_env=KEY_ENV).identity()
    assert "tok-abcdef123" not in tok.key()
    q1 = OpenAIBackend("m", base_url=f"http://h:8000/v1?api-key={QUERY_SECRET}&api-version=2", api_key_env=KEY_ENV)
    q2 = OpenAIBackend("m", base_url="http://h:8000/v1?api-key=rotated&api-version=2", api_key_env=KEY_ENV)
    assert q1.identity() == q2.identity() and QUERY_SECRET not in q1.identity().key()
    assert q1.identity().name == "http://h:8000/v1?api-key=***&api-version=2|m"
    assert plain.name == "http://h:8000/v1|m"


def test_query_in_base_url_is_sent_as_query(fake, monkeypatch):
    """`?api-key=` in base_url reaches the server as a query parameter (the client would glue paths onto it)."""
    monkeypatch.setenv(KEY_ENV, KEY)
    be = OpenAIBackend("fake-predictor", base_url=f"{fake.url}?api-key={QUERY_SECRET}", api_key_env=KEY_ENV)
    prompt, ans = _record_prompt(fake)
    fake.reset()
    (g,) = be.generate([_chat(prompt)])
    assert g.error is None and g.text == ans
    assert fake.log[0]["path"] == f"/v1/chat/completions?api-key={QUERY_SECRET}"
    be.close()


def test_redact_text_hides_key_shapes():
    register_secret("plain-secret-value")
    cases = {
        "Error code: 401 - {'error': {'message': 'Incorrect API key: Bearer sk-abc123def456ghi'}}": "sk-abc123",
        "see https://u:pw123@h/v1?api_key=zzz999&x=1 now": "pw123",
        "token=0123456789abcdef0123456789abcdef": "0123456789abcdef",
        '{"api_key": "s3cr3t-v4lue"}': "s3cr3t",
        "x-api-key: hf_abcdefghijklmnopqrstuvwx": "hf_abc",
        "AWS AKIAABCDEFGHIJKLMNOP in log": "AKIAABCDEFGHIJKLMNOP",
        "echo plain-secret-value back": "plain-secret-value",
        "Authorization: Basic dXNlcjpwYXNzd29yZA==": "dXNlcjpwYXNzd29yZA",
    }
    for text, secret in cases.items():
        out = redact_text(text)
        assert secret not in out and "***" in out, (text, out)
    keep = "max_tokens: 5, prompt_tokens=3, KeyError: 'x', sha256:9f3c2a7be41d08c69f3c2a7be41d08c6"
    assert redact_text(keep) == keep  # ordinary words and hashes survive
    assert redact_url("http://h/v1?api-version=2") == "http://h/v1?api-version=2"
    assert redact({"base_url": f"http://tok@h/v1?sig={QUERY_SECRET}"}) == {"base_url": "http://***@h/v1?sig=***"}


# ---------------------------------------------------------------- a real `harness run` at ~30% faults


def _run_cfg(tmp_path: Path, fake: FakeOpenAI, **over: Any) -> dict[str, Any]:
    common = {"api_key_env": KEY_ENV, "max_retries": 2, "timeout_s": TIMEOUT_S, "max_concurrency": 4}
    cfg = {
        "name": "faults",
        "task": TASK,
        "models": {
            # the compressor sends the key as a Bearer token; the predictor's URL carries user:password (sent as
            # Basic auth instead) and both carry ?api-key=
            "compressor": {"model": "openai/fake-compressor", "base_url": f"{fake.url}?api-key={QUERY_SECRET}",
                           **common},
            "predictor": {"model": "openai/fake-predictor",
                          "base_url": f"http://faultuser:{URL_PASSWORD}@127.0.0.1:{fake.port}/v1"
                                      f"?api-key={QUERY_SECRET}", **common},
        },
        "arms": ["compressed", "full-context"],
        "generation": {"compressor": {"max_new_tokens": 32}, "predictor": {"max_new_tokens": 8}},
        "output": {"dir": str(tmp_path / "out"), "cache": str(tmp_path / "cache" / "cache.sqlite"),
                   "store": str(tmp_path / "store" / "store.db")},
    }
    cfg.update(over)
    return cfg


def _harness(tmp_path: Path, cmd: str, cfg: dict[str, Any], *extra: str) -> subprocess.CompletedProcess:
    p = tmp_path / f"{cmd}.yaml"
    p.write_text(yaml.safe_dump(cfg))
    env = {**os.environ, KEY_ENV: KEY, "HF_HUB_OFFLINE": "1"}
    return subprocess.run([sys.executable, "-m", "harness.cli", cmd, str(p), "-q", *extra], capture_output=True,
                          text=True, cwd=tmp_path, env=env, timeout=120)


def _written_files(tmp_path: Path) -> list[Path]:
    return [p for p in tmp_path.rglob("*") if p.is_file() and p.suffix != ".yaml"]


def test_harness_run_under_faults(fake, tmp_path):
    """~30% of requests fail in every way; no failure is scored or cached, Retry-After is waited for, and no
    secret reaches any written byte. A rerun without faults asks only for what failed."""
    fake.reset(plan=list(KINDS), rate=0.3, seed=7)  # every kind once, then 30% at random
    t0 = time.time()
    r = _harness(tmp_path, "run", _run_cfg(tmp_path, fake))
    assert r.returncode == 0, r.stderr[-3000:]
    log = fake.log
    faults = [e for e in log if e["fault"]]
    assert {e["fault"] for e in faults} >= set(KINDS) and 0.25 <= len(faults) / len(log) <= 0.6, len(faults)
    assert len(log) < fake.srv.max_requests
    answered = {e["key"] for e in log if e["answered"]}
    # the notice names the variable and the host, without credentials
    assert f"${KEY_ENV}" in r.stderr and f"http://127.0.0.1:{fake.port}" in r.stderr

    # Retry-After was waited for: the next request for the same key came ≥ its delay later
    gaps = []
    attempts = Counter(e["key"] for e in log)
    for i, e in enumerate(log):
        if e["fault"] in ("429", "429-date"):
            nxt = next((x for x in log[i + 1:] if x["key"] == e["key"]), None)
            if nxt is None:  # the call's last attempt: only once its retries ran out, and it is never answered
                assert attempts[e["key"]] >= 1 + 2 and e["key"] not in answered, "a 429 was not retried"
                continue
            gaps.append(nxt["t"] - e["t"])
    assert gaps and min(gaps) >= 0.95, gaps

    db = sqlite3.connect(tmp_path / "store" / "store.db")
    preds = db.execute("SELECT p.text, p.error, s.correct FROM predictions p "
                       "LEFT JOIN scores s ON s.prediction_id = p.prediction_id").fetchall()
    comps = db.execute("SELECT text, error FROM compressions").fetchall()
    status = db.execute("SELECT status FROM runs").fetchone()[0]
    db.close()
    failed_comps = sum(c[1] is not None for c in comps)
    assert status == "done" and len(comps) == 10 and len(preds) == 20 - failed_comps  # no prediction from no summary
    ok_preds = [p for p in preds if p[1] is None]
    # 0 failures scored: every scored prediction is a real answer, and the fake only ever answers correctly
    assert ok_preds and all(p[2] == 1 for p in ok_preds), ok_preds
    assert all(p[2] is None for p in preds if p[1] is not None)
    n_ok = len(ok_preds) + sum(c[1] is None for c in comps)
    assert n_ok == len(answered)  # exactly the calls the server answered became rows; the others are errors
    errors = [p[1] for p in preds if p[1]] + [c[1] for c in comps if c[1]]
    assert any(e.startswith("content_filter:") for e in errors) and any("AuthenticationError" in e for e in errors)

    # 0 failures cached: one cached response per answered call, each a real answer
    cdb = sqlite3.connect(tmp_path / "cache" / "cache.sqlite")
    cached = [json.loads(x) for (x,) in cdb.execute("SELECT response FROM responses WHERE kind = 'generate'")]
    cdb.close()
    assert len(cached) == len(answered) and all(c["error"] is None and c["text"] for c in cached)

    # no secret in any written byte: store, cache (and their WAL files), JSONL, run.json, summary; nor on the console
    files = _written_files(tmp_path)
    assert any(p.name == "run.json" for p in files) and any(p.name.endswith("-wal") or p.suffix == ".db" for p in files)
    secrets = [KEY.encode(), URL_PASSWORD.encode(), QUERY_SECRET.encode()]
    for p in files:
        blob = p.read_bytes()
        assert not [s for s in secrets if s in blob], p
    assert not [s for s in secrets if s.decode() in r.stdout + r.stderr]
    run_json = next(p for p in files if p.name == "run.json").read_text()
    assert "faultuser:***@127.0.0.1" in run_json and "api-key=***" in run_json

    # rerun without faults: the answered calls come from the cache, only the failed ones are asked again
    fake.reset()
    r2 = _harness(tmp_path, "run", _run_cfg(tmp_path, fake))
    assert r2.returncode == 0, r2.stderr[-3000:]
    asked = {e["key"] for e in fake.log}
    assert not asked & answered and all(e["answered"] for e in fake.log)
    summary = json.loads(max((tmp_path / "out").glob("*/summary.json"), key=lambda p: p.stat().st_mtime).read_text())
    assert all(row["errors"] == 0 and row["accuracy"] == 1.0 for row in summary["rows"]), summary["rows"]
    assert time.time() - t0 < 60


def test_refused_connection_exits_1_loudly(tmp_path):
    """A base_url nobody listens on: every row is an error, so the run says so on stderr and exits 1."""
    cfg = {
        "name": "dead", "task": {**TASK, "size": 2}, "arms": ["no-context"],
        "models": {"predictor": {"model": "openai/nobody", "base_url": f"http://127.0.0.1:{free_port()}/v1",
                                 "max_retries": 0, "timeout_s": 2}},
        "output": {"dir": str(tmp_path / "out"), "cache": None, "store": str(tmp_path / "store.db")},
    }
    r = _harness(tmp_path, "run", cfg)
    assert r.returncode == 1, (r.returncode, r.stderr[-2000:])
    assert "nothing succeeded" in r.stderr and "APIConnectionError" in r.stderr and "Traceback" not in r.stderr


# ---------------------------------------------------------------- sweeps: transport settings are not identity


def test_sweep_rerun_with_other_transport_settings_adds_nothing(fake, tmp_path):
    cfg = _run_cfg(tmp_path, fake, name="fault-sweep", task={**TASK, "size": 3}, arms=["compressed", "no-context"])
    cfg["sweep"] = {"compressors": ["openai/fake-compressor"], "predictors": ["openai/fake-predictor"]}
    fake.reset()
    r = _harness(tmp_path, "sweep", cfg)
    assert r.returncode == 0, r.stderr[-3000:]
    db = tmp_path / "store" / "store.db"

    def counts() -> tuple[int, int, int]:
        with sqlite3.connect(db) as c:
            return tuple(c.execute(f"SELECT COUNT(*) FROM {t}").fetchone()[0]  # type: ignore[return-value]
                         for t in ("cells", "predictions", "compressions"))

    before = counts()
    assert before == (2, 6, 3)
    other_url = f"http://faultuser:rotated-pw@127.0.0.1:{fake.port}/v1?api-key=rotated"
    r2 = _harness(tmp_path, "sweep", cfg, "--set", "models.predictor.timeout_s=30", "--set",
                  "models.predictor.max_concurrency=1", "--set", "models.predictor.max_retries=0", "--set",
                  "models.compressor.batch_size=2", "--set", f"models.predictor.base_url={other_url}")
    assert r2.returncode == 0, r2.stderr[-3000:]
    assert counts() == before and "generate requests 0" in r2.stdout and "new rows: none" in r2.stdout


def test_model_key_fields_keep_only_what_changes_outputs():
    from harness.config import ModelConfig
    from harness.pipeline.sweep import model_key_fields

    base = ModelConfig(model="openai/m", base_url="http://u:pw@h:1/v1?api-key=a")
    same = ModelConfig(model="openai/m", base_url="http://u:other@h:1/v1?api-key=b", timeout_s=5, max_retries=0,
                       max_concurrency=9, batch_size=7, device="cpu", api_key_env="X")
    assert model_key_fields(base) == model_key_fields(same)
    assert "pw" not in json.dumps(model_key_fields(base))
    for changed in ({"base_url": "http://other-host:1/v1"}, {"api": "completions"}, {"context_window": 512},
                    {"revision": "r2"}, {"dtype": "float32"}):
        assert model_key_fields(base.model_copy(update=changed)) != model_key_fields(base), changed
    plain = ModelConfig(model="gguf/smollm2-135m")  # defaults: the plain dump with the transport fields at the
    # defaults keys were first written with (batch_size 4), so ids stay as they were when a default changes
    assert model_key_fields(plain) == {**plain.model_dump(mode="json"), "batch_size": 4}


# ---------------------------------------------------------------- run status when a run fails


class _Boom(RuntimeError):
    pass


@pytest.mark.parametrize("exc,status", [(_Boom, "failed"), (KeyboardInterrupt, "interrupted")])
def test_a_run_that_raises_is_marked_failed_or_interrupted(tmp_path, monkeypatch, exc, status):
    """Fault injection: the predictor's generate raises mid-run (a monkeypatched backend method, no server)."""
    from harness.config import parse_config
    from harness.pipeline.run import run

    def boom(self, requests):
        raise exc("injected")

    monkeypatch.setattr(OpenAIBackend, "generate", boom)
    cfg = parse_config({"name": "boom", "task": {**TASK, "size": 2}, "arms": ["no-context"],
                        "models": {"predictor": {"model": "openai/x", "base_url": "http://127.0.0.1:9/v1"}},
                        "output": {"dir": str(tmp_path / "out"), "cache": None, "store": str(tmp_path / "s.db")}})
    with pytest.raises(exc):
        run(cfg, quiet=True)
    with sqlite3.connect(tmp_path / "s.db") as db:
        assert db.execute("SELECT status FROM runs").fetchone()[0] == status


def test_a_sweep_that_raises_is_marked_failed(tmp_path, monkeypatch):
    """Fault injection: the predictor's generate raises (monkeypatched, no server)."""
    from harness.config import parse_config
    from harness.pipeline.sweep import run_sweep

    monkeypatch.setattr(OpenAIBackend, "generate", lambda self, requests: (_ for _ in ()).throw(_Boom("injected")))
    cfg = parse_config({"name": "boom", "task": {**TASK, "size": 2}, "arms": ["no-context"],
                        "models": {"predictor": {"model": "openai/x", "base_url": "http://127.0.0.1:9/v1"}},
                        "sweep": {"compressors": ["openai/c"], "predictors": ["openai/x"]},
                        "output": {"cache": None, "store": str(tmp_path / "s.db")}})
    with pytest.raises(_Boom):
        run_sweep(cfg, quiet=True)
    with sqlite3.connect(tmp_path / "s.db") as db:
        assert db.execute("SELECT status FROM runs").fetchone()[0] == "failed"


def test_ctrl_c_says_how_to_resume(monkeypatch, capsys, tmp_path):
    """Fault injection: the sweep raises KeyboardInterrupt (monkeypatched run_sweep)."""
    import harness.pipeline.sweep as sweep_mod
    from harness.cli import main

    def interrupted(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(sweep_mod, "run_sweep", interrupted)
    p = tmp_path / "s.yaml"
    p.write_text(yaml.safe_dump({"task": TASK, "arms": ["no-context"], "output": {"store": str(tmp_path / "s.db")},
                                 "sweep": {"compressors": ["openai/c"], "predictors": ["openai/x"]}}))
    assert main(["sweep", str(p)]) == 130
    err = capsys.readouterr().err
    assert f"harness sweep {p}" in err and "resume" in err


def test_announce_names_variable_host_and_remote_code(capsys):
    from harness.config import ModelConfig
    from harness.preflight import announce

    lines = announce([
        ("models.predictor", ModelConfig(model="openai/m", api_key_env="AWS_SECRET_ACCESS_KEY",
                                         base_url=f"https://u:{URL_PASSWORD}@evil.example:8443/v1?key=x")),
        ("models.judge", ModelConfig(model="openai/m", api_key_env="AWS_SECRET_ACCESS_KEY",
                                     base_url="https://evil.example:8443/v2")),
        ("models.compressor", ModelConfig(model="hf/some/model", trust_remote_code=True)),
    ])
    err = capsys.readouterr().err
    assert len(lines) == 2 and err.count("\n") == 2  # one line per variable and host
    assert "$AWS_SECRET_ACCESS_KEY" in lines[0] and "https://evil.example:8443" in lines[0]
    assert URL_PASSWORD not in err and "trust_remote_code: true" in lines[1]
