"""MI from a run: a real LM checked against exact enumeration, the run's `mi:` section, and failures."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from harness.config import DEFAULT_PROMPTS, load_config
from harness.mi import estimate_mi, exact_mi_bits
from harness.pipeline.run import run
from harness.prompts import render
from harness.records import Generation, GenParams, GenRequest, ScoreRequest, ScoreResult, Usage
from harness.scoring import candidate_logp, score_group
from harness.tasks import load_task
from tests.conftest import REPO, need_pack


def test_real_lm_exact_enumeration(smollm2):
    """q(z|x) = softmax of smollm2's log-probs over C fixed candidate summaries; the sampled estimator
    (with X uniform over the N contexts) must match the exact MI of that channel."""
    samples = [s for s in load_task("synthetic-records", size=24, seed=3, options={"n_templates": 1})][:6]
    assert len({s.question for s in samples}) == 1
    cands = [f"The patient was started on {c}." for c in samples[0].choices]
    lp = candidate_logp(smollm2, samples, cands, DEFAULT_PROMPTS["compressor"])
    q = np.exp(lp - np.logaddexp.reduce(lp, axis=1, keepdims=True))  # (N, C), rows sum to 1
    truth = exact_mi_bits(q)
    assert 0.05 < truth < math.log2(len(samples))  # the real channel is informative but noisy
    logq = np.log(q)
    rng = np.random.default_rng(0)
    n, m = q.shape[0], 16
    ests, covered = [], 0
    for _ in range(60):
        z = np.array([[rng.choice(q.shape[1], p=q[i]) for _ in range(m)] for i in range(n)])
        logp = np.transpose(logq[:, z], (1, 2, 0))  # logp[i, j, l] = ln q(z_ij | x_l)
        est = estimate_mi(logp, n_boot=400, seed=1, scorer_is_sampler=True, plain_sampling=True)
        ests.append(est.bits)
        covered += est.ci[0] <= truth <= est.ci[1]
        assert est.bits <= math.log2(n) + 1e-9
    assert abs(np.mean(ests) - truth) < max(0.05 * truth, 0.03)
    assert covered / 60 >= 0.85


def test_run_with_mi_section(tmp_path):
    need_pack("smollm2-135m")
    over = {
        "task": {"size": 3, "options": {"n_templates": 1}},
        "models": {"compressor": {"model": "gguf/smollm2-135m"}, "predictor": {"model": "gguf/smollm2-135m"}},
        "arms": ["compressed"],
        "generation": {"compressor": {"max_new_tokens": 12}, "predictor": {"max_new_tokens": 4}},
        "mi": {"samples_per_context": 2, "scorers": ["self"], "n_boot": 200},
        "output": {
            "dir": str(tmp_path / "out"),
            "cache": str(tmp_path / "c.sqlite"),
            "store": str(tmp_path / "store.db"),
        },
    }
    cfg = load_config(REPO / "configs" / "quickstart.yaml", over)
    s1 = run(cfg, quiet=True)
    (mi,) = s1["mi"]
    assert mi["error"] is None and mi["tokenization"] == "exact-ids" and mi["upper_is_bound"] is True
    assert -math.log2(3) <= mi["bits"] <= math.log2(3) + 1e-9
    assert mi["ci"][0] <= mi["bits"] <= mi["ci"][1]
    assert mi["bits_per_token"] == mi["bits"] / mi["mean_tokens"] and mi["mean_tokens"] > 0
    assert mi["forwarded_ratio"] <= 1.2
    rows = [json.loads(x) for x in (Path(s1["run_dir"]) / "mi.jsonl").read_text().splitlines()]
    assert {r["group_id"] for r in rows} >= {"*"} and all("scorer_identity" in r for r in rows)
    comps = [json.loads(x) for x in (Path(s1["run_dir"]) / "compressions.jsonl").read_text().splitlines()]
    assert len(comps) == 6 and {c["kind"] for c in comps} == {"sample"}  # predictor reads sample j=0
    s2 = run(cfg, quiet=True)
    assert s2["model_loads"] == 0 and s2["model_calls"] == 0 and s2["mi"][0]["bits"] == mi["bits"]


class _FailingScorer:
    """A fake scorer for a pure-logic test: every third score call fails."""

    def score(self, reqs):
        return [ScoreResult([1], [-1.0], Usage(), error="boom" if k % 3 == 2 else None) for k, _ in enumerate(reqs)]


def test_failed_scoring_fails_the_estimate_not_zero():
    samples = load_task("synthetic-records", size=4, seed=0, options={"n_templates": 1})[:2]
    g = Generation("summary", [1, 2], None, Usage(completion_tokens=2), finish_reason="stop")
    out = score_group(_FailingScorer(), samples, [[g], [g]], DEFAULT_PROMPTS["compressor"], exact_ids=True)
    assert out.logp is None and "boom" in out.error


class _LengthScorer:
    """A fake scorer for a pure-logic test: log p(z|x) depends on the prefix and continuation; records calls."""

    def __init__(self):
        self.calls: list[int] = []

    def score(self, reqs):
        self.calls.append(len(reqs))
        return [ScoreResult([1], [-(len(str(r.messages)) % 7) - len(r.continuation_ids)], Usage()) for r in reqs]


class _Bar:
    n = 0

    def update(self, k):
        self.n += k


def test_score_group_progress_goes_context_by_context_with_the_same_logp():
    samples = load_task("synthetic-records", size=8, seed=0, options={"n_templates": 1})[:3]
    comps = [[Generation("z", [1] * (i + j + 1), None, Usage(), finish_reason="stop") for j in range(2)]
             for i in range(3)]
    one, per_ctx, bar = _LengthScorer(), _LengthScorer(), _Bar()
    a = score_group(one, samples, comps, DEFAULT_PROMPTS["compressor"], exact_ids=True)
    b = score_group(per_ctx, samples, comps, DEFAULT_PROMPTS["compressor"], exact_ids=True, progress=bar)
    assert one.calls == [18] and per_ctx.calls == [6, 6, 6] and bar.n == 18
    assert np.array_equal(a.logp, b.logp) and len(np.unique(a.logp)) > 1


class _KilledAfterFirstContext(_Bar):
    """A progress bar that interrupts the stage after the first context's requests (a kill mid-MI)."""

    def update(self, k):
        super().update(k)
        raise KeyboardInterrupt


def test_interrupted_mi_scoring_resumes_from_the_cache_context_by_context(smollm2, tmp_path):
    from harness.backends.cache import CachedBackend, ResponseCache

    samples = load_task("synthetic-records", size=8, seed=0, options={"n_templates": 1})[:3]
    prompt = DEFAULT_PROMPTS["compressor"]
    comps = [[g] for g in smollm2.generate([GenRequest.chat([{"role": "user", "content": f"Say a word about {s.id}."}],
                                                            GenParams(max_new_tokens=6)) for s in samples])]
    full = score_group(smollm2, samples, comps, prompt, exact_ids=True)
    first = CachedBackend(smollm2, ResponseCache(tmp_path / "c.sqlite"))
    try:
        score_group(first, samples, comps, prompt, exact_ids=True, progress=_KilledAfterFirstContext())
        raise AssertionError("the bar should have interrupted scoring")
    except KeyboardInterrupt:
        pass
    again = CachedBackend(smollm2, ResponseCache(tmp_path / "c.sqlite"))
    out = score_group(again, samples, comps, prompt, exact_ids=True, progress=_Bar())
    assert (first.misses, again.hits, again.misses) == (3, 3, 6)  # the first context is not scored again
    assert np.allclose(out.logp, full.logp, atol=1e-4)


def test_each_compression_is_scored_with_its_own_question(smollm2):
    """Hub groups key on the normalised question; a row's own-context term must use its exact question text."""
    base = [s for s in load_task("synthetic-records", size=4, seed=0, options={"n_templates": 1})][:2]
    import dataclasses

    samples = [base[0], dataclasses.replace(base[1], question=base[1].question.upper())]
    prompt = DEFAULT_PROMPTS["compressor"]
    gens = smollm2.generate([GenRequest.chat(render(prompt, question=s.question, context=s.context),
                                             GenParams(max_new_tokens=6)) for s in samples])
    gl = score_group(smollm2, samples, [[g] for g in gens], prompt, exact_ids=True)
    assert gl.error is None
    for i, s in enumerate(samples):
        for ll, x in enumerate(samples):
            (direct,) = smollm2.score([ScoreRequest(
                messages=tuple((d["role"], d["content"]) for d in render(prompt, question=s.question,
                                                                          context=x.context)),
                continuation_ids=tuple(gens[i].token_ids))])
            assert gl.logp[i, 0, ll] == pytest.approx(direct.total, abs=1e-3)


def test_mi_refuses_truncated_contexts(tmp_path):
    """overflow: truncate generates from a cut context; MI would score under the full one, so it refuses."""
    need_pack("smollm2-135m")
    over = {
        "task": {"size": 3, "options": {"n_templates": 1}},
        "models": {"compressor": {"model": "gguf/smollm2-135m", "context_window": 160, "dtype": "float32"},
                   "predictor": {"model": "gguf/smollm2-135m", "dtype": "float32"}},
        "arms": ["compressed"], "overflow": "truncate",
        "generation": {"compressor": {"max_new_tokens": 4}, "predictor": {"max_new_tokens": 2}},
        "mi": {"samples_per_context": 1, "scorers": ["self"], "n_boot": 100, "min_contexts": 2},
        "output": {"dir": str(tmp_path / "out"), "cache": None},
    }
    s = run(load_config(REPO / "configs" / "quickstart.yaml", over), quiet=True)
    (mi,) = s["mi"]
    assert mi["error"] and "truncated" in mi["error"] and "overflow: error" in mi["error"]
    assert mi.get("bits") is None
