"""OpenAI-compatible backend against a real llama-cpp-python server on 127.0.0.1.

The retry tests put a small flaky HTTP proxy (stdlib) in front of the real server: it
answers 429/503 or stalls for the first requests, then forwards to the server.
"""

from __future__ import annotations

import threading
import time
import typing
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import pytest

from harness.backends.base import STATS
from harness.backends.openai import OpenAIBackend, ScoringRefused
from harness.records import GenParams, GenRequest, ScoreRequest

pytestmark = pytest.mark.server

PROMPT = "The history of the city of Lyon begins with the Roman foundation of Lugdunum, which"


def test_chat_and_completions(llama_server):
    be = OpenAIBackend("smollm2", base_url=llama_server)
    chat, comp = be.generate(
        [
            GenRequest.chat(
                [{"role": "user", "content": "What is the capital of France?"}],
                GenParams(max_new_tokens=16, logprobs=True),
            ),
            GenRequest(prompt="The capital of France is", params=GenParams(max_new_tokens=8, logprobs=True)),
        ]
    )
    assert chat.error is None and comp.error is None
    assert "paris" in chat.text.lower()
    assert chat.usage.prompt_tokens > 5 and chat.usage.completion_tokens > 0
    assert chat.logprobs and all(v <= 0 for v in chat.logprobs)
    assert comp.text and comp.logprobs and len(comp.logprobs) == comp.usage.completion_tokens


def test_server_logprobs_agree_with_transformers(llama_server):
    """The server's log-probs of its own tokens vs transformers' teacher-forced log-probs of the same ids."""
    from harness.backends.transformers import TransformersBackend

    be = OpenAIBackend("smollm2", base_url=llama_server)
    resp = be.client.completions.create(model="smollm2", prompt=PROMPT, max_tokens=48, temperature=0.0, logprobs=1)
    ch = resp.choices[0]
    server_lps = [float(x) for x in ch.logprobs.token_logprobs]
    tf = TransformersBackend("gguf", "smollm2-135m", dtype="float32")
    tok_text = ch.logprobs.tokens
    (s,) = tf.score([ScoreRequest(prefix=PROMPT, continuation=ch.text)])
    tf.close()
    n = len(server_lps)
    assert n >= 32, n
    assert len(s.logprobs) == n, (len(s.logprobs), n, tok_text)
    mean_abs = sum(abs(a - b) for a, b in zip(s.logprobs, server_lps, strict=True)) / n
    assert mean_abs < 0.1, mean_abs


def test_echo_scoring_refused_for_smollm2(llama_server):
    be = OpenAIBackend("smollm2", base_url=llama_server)
    chk = be.check_scoring()
    assert chk["ok"] is False
    assert chk["mean_abs_nats_per_token"] > 0.1
    with pytest.raises(ScoringRefused, match="refusing to use it as a scorer"):
        be.score([ScoreRequest(prefix="Hello", continuation=" world")])


class _Flaky(BaseHTTPRequestHandler):
    upstream = ""
    plan: typing.ClassVar[list] = []  # per request: int status, "stall", or None (forward)
    lock = threading.Lock()
    seen = 0

    def log_message(self, *a):  # quiet
        pass

    def _forward(self, method: str) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length", 0) or 0))
        with _Flaky.lock:
            _Flaky.seen += 1
            action = _Flaky.plan.pop(0) if _Flaky.plan else None
        if action == "stall":
            time.sleep(3)
            action = 503
        if isinstance(action, int):
            self.send_response(action)
            self.send_header("Content-Type", "application/json")
            self.end_headers()
            self.wfile.write(b'{"error": {"message": "injected"}}')
            return
        r = httpx.request(
            method, _Flaky.upstream + self.path, content=body, headers={"Content-Type": "application/json"}, timeout=120
        )
        self.send_response(r.status_code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(r.content)))
        self.end_headers()
        self.wfile.write(r.content)

    def do_POST(self):
        self._forward("POST")

    def do_GET(self):
        self._forward("GET")


@pytest.fixture
def flaky(llama_server):
    _Flaky.upstream = llama_server.removesuffix("/v1")
    _Flaky.plan = []
    _Flaky.seen = 0
    srv = ThreadingHTTPServer(("127.0.0.1", 0), _Flaky)
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    yield f"http://127.0.0.1:{srv.server_address[1]}/v1"
    srv.shutdown()


def test_retries_then_success(flaky):
    _Flaky.plan = [429, 503, 500]
    be = OpenAIBackend("smollm2", base_url=flaky, max_retries=4, backoff_s=0.05)
    r0 = STATS["retries"]
    (g,) = be.generate([GenRequest(prompt="One, two,", params=GenParams(max_new_tokens=4))])
    assert g.error is None and g.text
    assert STATS["retries"] - r0 == 3 and _Flaky.seen == 4


def test_failed_call_is_an_error_row_not_a_score(flaky):
    _Flaky.plan = [503] * 10
    be = OpenAIBackend("smollm2", base_url=flaky, max_retries=2, backoff_s=0.01)
    (g,) = be.generate([GenRequest(prompt="One, two,", params=GenParams(max_new_tokens=4))])
    assert g.error and "InternalServerError" in g.error and g.text == ""
    assert _Flaky.seen == 3  # first try + 2 retries


def test_timeout_is_retried(flaky):
    _Flaky.plan = ["stall"]
    be = OpenAIBackend("smollm2", base_url=flaky, max_retries=2, backoff_s=0.01, timeout_s=1.0)
    (g,) = be.generate([GenRequest(prompt="One, two,", params=GenParams(max_new_tokens=4))])
    assert g.error is None and g.text


def test_client_error_not_retried(flaky):
    _Flaky.plan = [400]
    be = OpenAIBackend("smollm2", base_url=flaky, max_retries=3, backoff_s=0.01)
    (g,) = be.generate([GenRequest(prompt="x", params=GenParams(max_new_tokens=2))])
    assert g.error and "BadRequest" in g.error and _Flaky.seen == 1


def test_api_key_read_from_env_and_never_in_identity(monkeypatch, llama_server):
    from harness.errors import UserError

    with pytest.raises(UserError, match="MY_KEY"):
        OpenAIBackend("smollm2", base_url=llama_server, api_key_env="MY_KEY")
    monkeypatch.setenv("MY_KEY", "sk-secret-value-123")
    be = OpenAIBackend("smollm2", base_url=llama_server, api_key_env="MY_KEY")
    assert "sk-secret" not in be.identity().key()
