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


CHAT = [{"role": "user", "content": "What is the capital of France?"}]
#: first-token log-probs of the chat above, llama.cpp (Q4_1 kernels) against transformers float32 on the dequantised
#: weights: |Δ| 0.11, 0.08, 0.06 nats for "The", "L", "La" (measured on an AVX-512-BF16 CPU); twice that as the bound
FIRST_TOKEN_TOLERANCE_NATS = 0.25


def _f32_logprobs(tf, text: str):
    """transformers' float32 log-softmax of the next token after the raw text (its ids, no BOS added)."""
    import torch

    ids = tf.tokenizer(text, add_special_tokens=False)["input_ids"]
    with torch.inference_mode():
        return torch.log_softmax(tf.model(input_ids=torch.tensor([ids])).logits[0, -1].float(), -1)


def test_chat_and_completions(llama_server, smollm2):
    """The server's chat answer agrees with two other implementations of the same prompt (no world knowledge).

    Why a server's chat differs from transformers' (llama-cpp-python 0.3.36 built with AVX-512 flags, SmolLM2
    Q4_1): not the rendering, not BOS, not the default system prompt, not sampling. The server renders the chat
    with the GGUF's own template, byte for byte `apply_chat_template(..., add_generation_prompt=True)`: the same
    37 token ids, SmolLM2's default system prompt included, no BOS added (`add_bos_token` false, and the template
    is tokenised with `added_special`); completions of that locally rendered text answer exactly as the chat
    endpoint does; with repeat_penalty 1.0 the first token is the same. The first token is a near tie that the
    kernels decide: llama.cpp gives "L" −1.884 and "The" −1.973 nats, transformers float32 on the dequantised GGUF
    "The" −1.883 and "L" −1.965 (bf16 "The" −1.742, "L" −1.992), so greedy decoding starts "L'Étoile, la Cité…"
    on the server and "The capital of France is Paris." in transformers; forced to start with "The", the server
    continues " capital of France is Paris.". So: the chat endpoint equals completions of the local rendering
    (same text, same prompt tokens), the first-token log-probs agree with transformers within
    FIRST_TOKEN_TOLERANCE_NATS, and transformers' teacher-forced log-probs of the server's answer agree with the
    server's own within 0.15 nat/token (measured: 0.089 mean, 0.41 max over the 16 tokens).
    """
    chat_be = OpenAIBackend("smollm2", base_url=llama_server, api="chat", tokenizer=smollm2)
    comp_be = OpenAIBackend("smollm2", base_url=llama_server, api="completions", tokenizer=smollm2)
    req = GenRequest.chat(CHAT, GenParams(max_new_tokens=16, logprobs=True))
    raw = GenRequest(prompt="The capital of France is", params=GenParams(max_new_tokens=8, logprobs=True))
    chat, comp = chat_be.generate([req, raw])
    local = comp_be.generate([req])[0]
    assert chat.error is None and comp.error is None and local.error is None
    # the server's renderer and the local template: one prompt, one greedy answer
    assert chat.usage.prompt_tokens == local.usage.prompt_tokens == smollm2.count_prompt_tokens(req) == 37
    assert chat.text == local.text and chat.text
    # first-token log-probs: llama.cpp against transformers float32 on the same rendered prompt
    rendered = comp_be._render(CHAT)
    resp = comp_be.client.completions.create(model="smollm2", prompt=rendered, max_tokens=1, temperature=0.0,
                                             logprobs=5)
    server_top = resp.choices[0].logprobs.top_logprobs[0]
    tf_lp = _f32_logprobs(smollm2, rendered)
    compared = 0
    for tok_id in tf_lp.topk(3).indices.tolist():
        s = smollm2.tokenizer.decode([tok_id])
        assert s in server_top, (s, server_top)
        assert abs(server_top[s] - float(tf_lp[tok_id])) < FIRST_TOKEN_TOLERANCE_NATS, (s, server_top[s])
        compared += 1
    assert compared == 3
    # the server's answer, teacher-forced through transformers, gets the server's log-probs
    (s,) = smollm2.score([ScoreRequest(messages=req.messages, continuation=chat.text)])
    assert len(s.logprobs) == len(chat.logprobs) == chat.usage.completion_tokens, (len(s.logprobs), chat)
    mean_abs = sum(abs(a - b) for a, b in zip(s.logprobs, chat.logprobs, strict=True)) / len(s.logprobs)
    assert mean_abs < 0.15, mean_abs
    assert all(v <= 0 for v in chat.logprobs)
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


def test_chat_render_probe_agrees_for_smollm2(llama_server, smollm2):
    """llama-cpp-python renders SmolLM2's chat with the GGUF template, as transformers does: the probe says so
    (it fails if a prompt token count or the first-token log-prob differs)."""
    be = OpenAIBackend("smollm2", base_url=llama_server, tokenizer=smollm2)
    assert be.chat_render_check is None
    chk = be.check_chat_render()
    assert chk["ok"] is True, chk
    assert len(chk["probes"]) == 2
    for p in chk["probes"]:
        assert p["server_chat_prompt_tokens"] == p["server_completions_prompt_tokens"] == p["local_prompt_tokens"] > 5
        assert p["abs_diff_nats"] is not None and p["abs_diff_nats"] <= 0.02
    assert be.chat_render_check is chk and be.check_chat_render() is chk  # probed once


@pytest.fixture
def tokenizer_without_default_system():
    """A real SmolLM2 tokenizer whose chat template lacks the default system prompt (as an edited or older
    template would): what a server rendering with the GGUF's own template must be caught disagreeing with."""
    from harness.backends.transformers import TransformersBackend

    tb = TransformersBackend("gguf", "smollm2-135m", dtype="float32")
    tb._load_tokenizer()
    default = "You are a helpful AI assistant named SmolLM, trained by Hugging Face"
    assert default in tb.tokenizer.chat_template
    tb.tokenizer.chat_template = tb.tokenizer.chat_template.replace(
        "{% if loop.first and messages[0]['role'] != 'system' %}", "{% if false %}"
    )
    return tb


def test_chat_render_mismatch_refuses_chat_scoring_and_warns_once(llama_server, tokenizer_without_default_system,
                                                                 capsys):
    be = OpenAIBackend("smollm2", base_url=llama_server, api="chat", tokenizer=tokenizer_without_default_system)
    chk = be.check_chat_render()
    assert chk["ok"] is False
    user_only = chk["probes"][0]
    assert user_only["server_chat_prompt_tokens"] > user_only["local_prompt_tokens"]  # the server adds the system turn
    assert user_only["server_completions_prompt_tokens"] == user_only["local_prompt_tokens"]
    with pytest.raises(ScoringRefused, match="set api: completions"):
        be.score([ScoreRequest(messages=(("user", "Hi"),), continuation="Hello")])
    req = GenRequest.chat([{"role": "user", "content": "Hi"}], GenParams(max_new_tokens=2))
    g1, g2 = be.generate([req]) + be.generate([req])
    assert g1.error is None and g2.error is None
    err = capsys.readouterr().err
    assert err.count("warning: openai/smollm2: the server's chat rendering differs") == 1, err
    # api: completions renders every prompt locally: no warning, and no chat-rendering refusal (scoring then meets
    # the echo check, which refuses this server for raw-text prompts)
    tok = tokenizer_without_default_system
    comp = OpenAIBackend("smollm2", base_url=llama_server, api="completions", tokenizer=tok)
    (g,) = comp.generate([req])
    assert g.error is None and g.usage.prompt_tokens == tok.count_prompt_tokens(req)
    assert "warning" not in capsys.readouterr().err
    with pytest.raises(ScoringRefused, match="refusing to use it as a scorer"):
        comp.score([ScoreRequest(messages=(("user", "Hi"),), continuation="Hello")])
    assert comp.chat_render_check is None


def _echo_checked(be: OpenAIBackend) -> OpenAIBackend:
    """Fault injection: mark the echo check as passed. llama-cpp-python's echo is aligned only for prompts that
    start with the model's BOS id; SmolLM2's BOS is `<|im_start|>`, which starts every chat rendering, so chat
    prefixes score right while `check_scoring`'s raw-text probe (no BOS) is off by one and refuses the server."""
    be._check = {"ok": True, "mean_abs_nats_per_token": 0.0, "n_tokens": 0, "generated_total": 0.0,
                 "echo_total": 0.0}
    return be


#: server echo against transformers float32, per token of a chat-prefixed reply (measured max |Δ| 0.22 nats)
ECHO_TOLERANCE_NATS = 0.4


def test_append_eos_scores_one_end_of_turn_token(llama_server, smollm2):
    """`append_eos` adds the text of the local tokenizer's end-of-turn token (`<|im_end|>`); llama.cpp reads it as
    one special token, and the span's log-probs match transformers' (which appends `end_of_turn_id`)."""
    be = _echo_checked(OpenAIBackend("smollm2", base_url=llama_server, api="completions", tokenizer=smollm2))
    msgs = (("user", "Summarise: the cat sat on the mat because it was warm."),)
    reply = "The cat sat on the warm mat."
    with_eot, plain = be.score([ScoreRequest(messages=msgs, continuation=reply, append_eos=True),
                                ScoreRequest(messages=msgs, continuation=reply)])
    assert with_eot.error is None and plain.error is None
    (ref,) = smollm2.score([ScoreRequest(messages=msgs, continuation=reply, append_eos=True)])
    assert ref.token_ids[-1] == smollm2.end_of_turn_id == smollm2.tokenizer.convert_tokens_to_ids("<|im_end|>")
    assert len(with_eot.logprobs) == len(plain.logprobs) + 1 == len(ref.logprobs)
    assert with_eot.logprobs[:-1] == pytest.approx(plain.logprobs, abs=1e-3)
    diffs = [abs(a - b) for a, b in zip(with_eot.logprobs, ref.logprobs, strict=True)]
    assert max(diffs) < ECHO_TOLERANCE_NATS, diffs
    assert with_eot.total < plain.total  # the end-of-turn token has a log-prob of its own, < 0


def test_score_errors_never_zero(llama_server, smollm2):
    """An empty continuation, or append_eos without a local tokenizer, is an error result, never 0 nats."""
    be = _echo_checked(OpenAIBackend("smollm2", base_url=llama_server, api="completions", tokenizer=smollm2))
    prefix = be._render([{"role": "user", "content": "Hi"}])
    empty, empty_ids, eot_only = be.score([
        ScoreRequest(prefix=prefix, continuation=""),
        ScoreRequest(prefix=prefix, continuation_ids=()),
        ScoreRequest(prefix=prefix, continuation="", append_eos=True),  # a reply that ended at once: 1 token
    ])
    assert empty.error and "empty continuation" in empty.error and empty.logprobs == []
    assert empty_ids.error and "empty continuation" in empty_ids.error
    assert eot_only.error is None and len(eot_only.logprobs) == 1 and eot_only.total < 0
    no_tok = _echo_checked(OpenAIBackend("smollm2", base_url=llama_server, api="completions"))
    (r,) = no_tok.score([ScoreRequest(prefix=prefix, continuation="Hello", append_eos=True)])
    assert r.error and "cannot score the end-of-turn token without a local tokenizer" in r.error


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
