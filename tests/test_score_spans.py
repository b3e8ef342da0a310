"""Scored spans: never empty, the end-of-turn token where asked, text when a compressor gave no token ids."""

from __future__ import annotations

import dataclasses

import numpy as np

from harness.backends.vllm import continuation_ids
from harness.config import DEFAULT_PROMPTS
from harness.prompts import render
from harness.records import GenParams, GenRequest, ScoreRequest
from harness.scoring import score_group
from harness.tasks import load_task


def test_vllm_continuation_ids(smollm2):
    """The id logic of VLLMBackend.score (vLLM is not installed here), with SmolLM2's real tokenizer."""
    tok = smollm2.tokenizer
    eot = smollm2.end_of_turn_id
    assert eot == tok.convert_tokens_to_ids("<|im_end|>")
    text_ids = tok("Hello there.", add_special_tokens=False)["input_ids"]
    assert continuation_ids(tok, ScoreRequest(prefix="x", continuation="Hello there."), eot) == (text_ids, None)
    assert continuation_ids(tok, ScoreRequest(prefix="x", continuation="Hello there.", append_eos=True), eot) == (
        [*text_ids, eot], None)
    # exact ids are scored as given, append_eos or not (they hold the EOS where the model emitted it)
    assert continuation_ids(tok, ScoreRequest(prefix="x", continuation_ids=(5, 6), append_eos=True), eot) == (
        [5, 6], None)
    assert continuation_ids(tok, ScoreRequest(prefix="x", continuation="", append_eos=True), eot) == ([eot], None)
    ids, err = continuation_ids(tok, ScoreRequest(prefix="x", continuation="Hi", append_eos=True), None)
    assert ids == [] and "no end-of-turn token" in err
    for r in (ScoreRequest(prefix="x", continuation=""), ScoreRequest(prefix="x", continuation_ids=())):
        ids, err = continuation_ids(tok, r, eot)
        assert ids == [] and "empty continuation" in err


def test_compressions_without_ids_are_scored_as_text(smollm2):
    """An `openai/` compressor scored by itself: its Generations carry no token ids, so `score_group` must score
    their text (with the end-of-turn token where they stopped), never empty id spans (MI 0 with CI (0, 0))."""
    samples = [s for s in load_task("synthetic-records", size=4, seed=0, options={"n_templates": 1})][:2]
    assert samples[0].question == samples[1].question
    prompt = DEFAULT_PROMPTS["compressor"]
    gens = smollm2.generate([GenRequest.chat(render(prompt, question=s.question, context=s.context),
                                             GenParams(max_new_tokens=8)) for s in samples])
    assert all(g.token_ids and g.text for g in gens)
    no_ids = [[dataclasses.replace(g, token_ids=[])] for g in gens]
    gl = score_group(smollm2, samples, no_ids, prompt, exact_ids=True)
    assert gl.error is None, gl.error
    assert gl.tokenization == "text"
    assert gl.logp.shape == (2, 1, 2) and np.isfinite(gl.logp).all() and (gl.logp < -0.1).all(), gl.logp
    # these texts re-encode to the ids the model generated, so text scoring equals exact-id scoring here
    for g in gens:
        ids = g.token_ids[:-1] if g.finish_reason == "stop" else g.token_ids
        assert smollm2.tokenizer(g.text, add_special_tokens=False)["input_ids"] == ids
    exact = score_group(smollm2, samples, [[g] for g in gens], prompt, exact_ids=True)
    assert exact.tokenization == "exact-ids"
    assert np.allclose(gl.logp, exact.logp, atol=1e-3), (gl.logp, exact.logp)
