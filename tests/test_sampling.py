"""MI sampling is plain: every logits processor neutral, draws seeded per request, on every backend.

Real models: smollm2-135m (offline pack, float32) and a tiny llama the test builds with a generation_config.json
that asks for top-k, top-p, a repetition penalty, n-gram blocking, bad words and suppressed tokens; the
OpenAI-backend request check runs against the real llama-cpp-python server.
"""

from __future__ import annotations

import json
import math

import pytest

from harness.records import GenParams, GenRequest, ScoreRequest

PROMPT = "My name is"  # smollm2's next-token mass outside its top 50 is ≈ 0.58


def raw(prompt: str, **kw) -> GenRequest:
    return GenRequest(prompt=prompt, params=GenParams(**kw))


def chat(q: str, **kw) -> GenRequest:
    return GenRequest.chat([{"role": "user", "content": q}], GenParams(**kw))


def built_processors(be, requests: list[GenRequest], monkeypatch: pytest.MonkeyPatch) -> list[list[str]]:
    """The class names of the LogitsProcessorList each `model.generate` call inside `be.generate` builds."""
    built: list[list[str]] = []
    orig = be.model._get_logits_processor

    def spy(*a, **k):
        procs = orig(*a, **k)
        built.append([type(p).__name__ for p in procs])
        return procs

    with monkeypatch.context() as m:
        m.setattr(be.model, "_get_logits_processor", spy)
        be.generate(requests)
    return built


@pytest.fixture
def smol32(smollm2):
    """The session's float32 smollm2-135m, with batches of 8 (the batch test needs 5 requests in one batch)."""
    old = smollm2.batch_size
    smollm2.batch_size = 8
    yield smollm2
    smollm2.batch_size = old


TINY_PROMPT = "hello world"
TINY_STEPS = 12


@pytest.fixture(scope="module")
def tiny_qwen_like(tmp_path_factory, smollm2):
    """A tiny llama saved as an `hf/` folder whose generation_config.json warps sampling and greedy alike: Qwen2.5's
    top_k 20, top_p 0.8 and repetition_penalty 1.05, plus n-gram blocking, and bad words / suppressed tokens that
    forbid the first two tokens of the plain greedy continuation. Yields (backend, that plain continuation)."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from harness.backends.transformers import TransformersBackend

    tok = smollm2.tokenizer
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=256,
                      bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id)
    model = LlamaForCausalLM(cfg).eval()
    ids = tok(TINY_PROMPT, add_special_tokens=True)["input_ids"]
    plain: list[int] = []
    with torch.no_grad():  # the argmax of the raw logits, step by step
        for _ in range(TINY_STEPS):
            plain.append(int(model(torch.tensor([ids + plain])).logits[0, -1].float().argmax()))
    folder = tmp_path_factory.mktemp("tiny") / "qwen-like"
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    (folder / "generation_config.json").write_text(json.dumps({
        "bos_token_id": tok.bos_token_id, "eos_token_id": tok.eos_token_id, "do_sample": True, "temperature": 0.7,
        "top_k": 20, "top_p": 0.8, "repetition_penalty": 1.05, "no_repeat_ngram_size": 3,
        "bad_words_ids": [[plain[0]]], "suppress_tokens": [plain[1]]}))
    be = TransformersBackend("hf", str(folder), dtype="float32", batch_size=4)
    be._load()
    assert be.model.generation_config.repetition_penalty == 1.05  # the folder's config is what the model carries
    yield be, plain
    be.close()


# ---- transformers: what generate builds ----


def test_gguf_pack_builds_no_warper(smol32, monkeypatch):
    """Greedy builds no processor; sampling builds only our per-row sampler (the old code got TopK(50) from
    transformers' global defaults because it turned top_k=0 into None)."""
    assert built_processors(smol32, [chat("Hi.", max_new_tokens=2)], monkeypatch) == [[]]
    assert built_processors(smol32, [chat("Hi.", max_new_tokens=2, temperature=1.0, seed=1)], monkeypatch) == [
        ["SeededSampler"]
    ]


def test_hf_folder_generation_config_reaches_no_call(tiny_qwen_like, monkeypatch):
    """The folder's penalties, n-gram blocking, bad words, suppressed tokens and warpers reach neither greedy nor
    sampled calls (the old code built RepetitionPenalty, NoRepeatNGram, NoBadWords, SuppressTokens for greedy and
    added TopK(20), TopP(0.8) when sampling)."""
    be, _ = tiny_qwen_like
    assert built_processors(be, [raw(TINY_PROMPT, max_new_tokens=3)], monkeypatch) == [[]]
    sampled = [raw(TINY_PROMPT, max_new_tokens=3, temperature=1.0, seed=s) for s in range(3)]
    assert built_processors(be, sampled, monkeypatch) == [["SeededSampler"]]  # one batch: seeds differ only
    assert be.model.generation_config.repetition_penalty == 1.05  # restored after the call


def test_hf_folder_greedy_is_the_plain_argmax(tiny_qwen_like):
    """Greedy tokens are the argmax of the raw logits at every step, though the folder's bad words and suppressed
    tokens forbid the first two of them (the old code could not emit them)."""
    be, plain = tiny_qwen_like
    (g,) = be.generate([raw(TINY_PROMPT, max_new_tokens=TINY_STEPS)])
    assert g.token_ids == plain


# ---- transformers: the draws ----


def test_draws_reach_the_tail_at_its_model_probability(smol32):
    """One-token draws at temperature 1 fall outside the model's top 50 as often as its softmax says (the old
    code's TopK(50) made that fraction exactly 0)."""
    import torch

    ids = smol32._prompt_ids(None, PROMPT)
    with torch.no_grad():
        p = torch.softmax(smol32.model(torch.tensor([ids])).logits[0, -1].double(), -1)
    top50 = set(torch.topk(p, 50).indices.tolist())
    tail = 1.0 - float(p[sorted(top50)].sum())
    assert tail > 0.4, tail
    n = 480
    gens = smol32.generate([raw(PROMPT, max_new_tokens=1, temperature=1.0, seed=s) for s in range(n)])
    frac = sum(g.token_ids[0] not in top50 for g in gens) / n
    sd = math.sqrt(tail * (1 - tail) / n)
    assert frac > 0 and abs(frac - tail) < 4 * sd, (frac, tail, sd)
    top1 = int(p.argmax())
    p1 = float(p[top1])
    f1 = sum(g.token_ids[0] == top1 for g in gens) / n
    assert abs(f1 - p1) < 4 * math.sqrt(p1 * (1 - p1) / n), (f1, p1)


def test_draw_does_not_depend_on_its_batch(smol32):
    """The same request (same seed) gives the same tokens alone and batched with others, whether they share its
    seed or not; its log-probs are those of the full softmax at temperature 1 (the old code seeded the batch
    once, so rows sharing a seed changed each other's draws)."""
    target = raw("Once upon a time, there was a", max_new_tokens=12, temperature=1.0, seed=7)
    others = [raw("The following is a list of", max_new_tokens=12, temperature=1.0, seed=7),
              raw("She said", max_new_tokens=12, temperature=1.0, seed=7),
              raw("Here is a random word:", max_new_tokens=12, temperature=1.0, seed=8),
              raw("Once upon a time, there was a", max_new_tokens=12, temperature=1.0, seed=9)]
    (alone,) = smol32.generate([target])
    batched = smol32.generate([*others[:2], target, *others[2:]])
    assert batched[2].token_ids == alone.token_ids
    assert batched[4].token_ids != alone.token_ids  # another seed, same prompt: another draw
    assert len(alone.token_ids) == 12
    # the reported log-probs are the unwarped temperature-1 ones: they match teacher-forced scoring
    (g,) = smol32.generate([raw("Once upon a time, there was a", max_new_tokens=12, temperature=0.7, seed=7,
                                logprobs=True)])
    (s,) = smol32.score([ScoreRequest(prefix="Once upon a time, there was a", continuation_ids=tuple(g.token_ids))])
    assert g.logprobs is not None
    assert g.logprobs == pytest.approx(s.logprobs, abs=2e-3)


def test_draw_tokens_inverts_the_cdf():
    """Pure: `u` in a token's CDF interval draws that token; zero-probability tokens are never drawn; top_k and
    top_p cut as asked."""
    import torch

    from harness.backends.transformers import draw_tokens

    logits = torch.log(torch.tensor([[0.5, 0.0, 0.3, 0.2]]))  # token 1 has probability 0
    pick = [int(draw_tokens(logits, torch.tensor([u]), 1.0)) for u in (0.0, 0.49, 0.51, 0.79, 0.81, 0.999999)]
    assert pick == [0, 0, 2, 2, 3, 3]
    assert int(draw_tokens(logits, torch.tensor([1 - 2**-53]), 1.0)) == 3
    assert {int(draw_tokens(logits, torch.tensor([u]), 1.0, top_k=2)) for u in (0.1, 0.7, 0.99)} == {0, 2}
    assert {int(draw_tokens(logits, torch.tensor([u]), 1.0, top_p=0.5)) for u in (0.1, 0.7, 0.99)} == {0}
    # temperature sharpens: at T=0.1 token 0 (p 0.5 vs 0.3) takes > 99 % of the mass
    assert int(draw_tokens(logits, torch.tensor([0.99]), 0.1)) == 0


# ---- seeds ----


def _mi_cfg(seed: int = 0):
    from harness.config import RunConfig

    return RunConfig.model_validate({"task": {"name": "synthetic-records", "size": 4},
                                     "models": {"compressor": {"model": "gguf/smollm2-135m"},
                                                "predictor": {"model": "gguf/smollm2-135m"}},
                                     "seed": seed, "mi": {"samples_per_context": 3}})


def test_sampling_seed_per_sample_and_j():
    """Pure logic: a seed per (sample, j), stable across calls, changed by the run seed, within 31 bits."""
    from harness.pipeline.plan import sampling_params

    cfg = _mi_cfg()
    seeds = {(sid, j): sampling_params(cfg, sid, j).seed for sid in ("a", "b", "c") for j in range(3)}
    assert len(set(seeds.values())) == len(seeds)
    assert all(sampling_params(cfg, sid, j).seed == s for (sid, j), s in seeds.items())
    assert sampling_params(_mi_cfg(1), "a", 0).seed != seeds["a", 0]
    assert all(0 <= s < 2**31 for s in seeds.values())
    p = sampling_params(cfg, "a", 0)
    assert (p.temperature, p.top_p, p.top_k) == (1.0, 1.0, 0)


# ---- OpenAI-compatible servers: the request body ----


def _recording_backend(base_url: str, transport=None):
    """An OpenAIBackend whose HTTP client records each request body (and, with `transport`, answers it)."""
    import httpx
    import openai

    from harness.backends.openai import OpenAIBackend

    bodies: list[dict] = []

    def record(request: httpx.Request) -> None:
        bodies.append(json.loads(request.read()))

    be = OpenAIBackend("smollm2", base_url=base_url)
    be.client = openai.OpenAI(base_url=base_url, api_key="EMPTY", max_retries=0,
                              http_client=httpx.Client(transport=transport, event_hooks={"request": [record]}))
    return be, bodies


NEUTRAL_BODY = {"top_p": 1.0, "presence_penalty": 0.0, "frequency_penalty": 0.0, "top_k": 0, "min_p": 0.0,
                "repeat_penalty": 1.0, "repetition_penalty": 1.0}


@pytest.mark.server
def test_openai_request_carries_neutral_values(llama_server):
    """The real llama-cpp-python server accepts the neutral fields (its defaults are top_k 40, min_p 0.05,
    repeat_penalty 1.1), and the body of every call, chat or completions, greedy or sampled, carries them."""
    be, bodies = _recording_backend(llama_server)
    gens = be.generate([chat("Say hi.", max_new_tokens=4, temperature=1.0, seed=3),
                        raw("One, two,", max_new_tokens=4)])
    assert all(g.error is None and g.text for g in gens), [g.error for g in gens]
    assert len(bodies) == 2
    for b in bodies:
        assert {k: b.get(k) for k in NEUTRAL_BODY} == NEUTRAL_BODY
    assert {b["seed"] for b in bodies} == {3, 0}


@pytest.mark.server
def test_llama_server_draws_reach_the_tail(llama_server, smol32):
    """With the neutral fields the server samples outside smollm2's top 50 (its default top_k 40 and min_p 0.05
    never would); the fraction is near the softmax tail mass (the server runs the quantised GGUF)."""
    import torch

    from harness.backends.openai import OpenAIBackend

    ids = smol32._prompt_ids(None, PROMPT)
    with torch.no_grad():
        p = torch.softmax(smol32.model(torch.tensor([ids])).logits[0, -1].double(), -1)
    top = torch.topk(p, 50).indices.tolist()
    tail = 1.0 - float(p[top].sum())
    top50 = {smol32.tokenizer.decode([t]) for t in top}
    be = OpenAIBackend("smollm2", base_url=llama_server, api="completions")
    n = 96
    gens = be.generate([raw(PROMPT, max_new_tokens=1, temperature=1.0, seed=s) for s in range(n)])
    assert all(g.error is None for g in gens)
    frac = sum(g.text not in top50 for g in gens) / n  # measured 0.56 over 192 draws against a tail of 0.58
    # 0.05 allows for the quantised weights and for the text match (0.03 of the old, top-40 draws missed it)
    assert abs(frac - tail) < 4 * math.sqrt(tail * (1 - tail) / n) + 0.05, (frac, tail)


def test_openai_official_api_gets_no_unknown_fields():
    """OpenAI's own API answers unknown fields with a 400, so it gets only its own neutral values. The answer
    comes from an httpx MockTransport: a recording fake, no network."""
    import httpx

    def answer(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, json={
            "id": "x", "object": "chat.completion", "created": 0, "model": "m",
            "choices": [{"index": 0, "finish_reason": "stop", "message": {"role": "assistant", "content": "hi"}}],
            "usage": {"prompt_tokens": 3, "completion_tokens": 1, "total_tokens": 4}})

    be, bodies = _recording_backend("https://api.openai.com/v1", httpx.MockTransport(answer))
    (g,) = be.generate([chat("Say hi.", max_new_tokens=4, temperature=1.0, seed=3)])
    assert g.error is None and g.text == "hi"
    (b,) = bodies
    assert (b["top_p"], b["presence_penalty"], b["frequency_penalty"]) == (1.0, 0.0, 0.0)
    assert not {"top_k", "min_p", "repeat_penalty", "repetition_penalty"} & set(b)
