"""Benchmark: tokens forwarded by MI scoring vs the lower bound, with and without KV-prefix reuse.

Scores M sampled compressions of each of N contexts (one question group of synthetic-records)
under every context of the group with the transformers backend, and prints, measured in one run:
  forwarded / lower bound  (lower bound = N·|prefix| + N·M·N·|z|; target ≤ 1.2)
  the same for independent scoring (every request forwards its own prefix)
  and the wall-time ratio between the two.

  python bench/mi_forward_ratio.py [--model gguf/smollm2-135m] [--n 8] [--m 2]
"""

from __future__ import annotations

import argparse
import time

from harness.backends.base import STATS
from harness.backends.transformers import TransformersBackend
from harness.config import DEFAULT_PROMPTS
from harness.prompts import render
from harness.records import GenParams, GenRequest
from harness.scoring import score_group
from harness.tasks import load_task


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="gguf/smollm2-135m")
    ap.add_argument("--n", type=int, default=8)
    ap.add_argument("--m", type=int, default=2)
    ap.add_argument("--max-new-tokens", type=int, default=32)
    a = ap.parse_args()
    kind, _, name = a.model.partition("/")
    be = TransformersBackend(kind, name, batch_size=4)
    samples = load_task("synthetic-records", size=a.n * 2, seed=0, options={"n_templates": 1})[: a.n]
    prompt = DEFAULT_PROMPTS["compressor"]
    reqs = [
        GenRequest.chat(
            render(prompt, question=s.question, context=s.context),
            GenParams(max_new_tokens=a.max_new_tokens, temperature=1.0, seed=j),
        )
        for s in samples
        for j in range(a.m)
    ]
    gens = be.generate(reqs)
    comps = [gens[i * a.m : (i + 1) * a.m] for i in range(a.n)]

    t = time.time()
    shared = score_group(be, samples, comps, prompt, exact_ids=True)
    t_shared = time.time() - t

    # independent scoring: the same requests with the prefix-sharing path switched off
    orig = be._score_shared_prefix
    be._score_shared_prefix = lambda pre, idx, items, out: be._score_independent(idx, items, out)
    t = time.time()
    indep = score_group(be, samples, comps, prompt, exact_ids=True)
    t_indep = time.time() - t
    be._score_shared_prefix = orig

    diff = abs(shared.logp - indep.logp).max()
    print(f"model {a.model} dtype {be.dtype}  N={a.n} M={a.m}  continuations scored {a.n * a.m * a.n}")
    print(f"lower bound tokens        {shared.lower_bound_tokens}")
    for label, r, secs in (("KV reuse:   ", shared, t_shared), ("independent:", indep, t_indep)):
        ratio = r.forwarded_tokens / r.lower_bound_tokens
        print(f"{label} forwarded {r.forwarded_tokens:>8}  ratio {ratio:.3f}  {secs:.1f} s")
    print(f"speedup (independent / KV reuse wall time) {t_indep / t_shared:.2f}x; max |Δ logp| {diff:.4f} nat")
    print(f"model loads {STATS['model_loads']}")


if __name__ == "__main__":
    main()
