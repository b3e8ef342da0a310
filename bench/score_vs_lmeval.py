"""Benchmark: MI scoring against lm-eval's HF `loglikelihood` on the same requests, next to the lower bound.

One question group of synthetic-records: the model samples M compressions of each of N contexts, and every
compression is scored under every context (N·M·N requests, each a chat prefix and the compression's exact token
ids). The same requests go, measured in one run, through
  - harness before: continuation batches of 4·4 rows in length order, whatever their padding; full prefix logits
  - harness after:  batches cut by length (padding ≤ 15%), prefix forwarded with `logits_to_keep=1`
                    (at batch_size 4 and at the new default 8)
  - lm-eval 0.4.x:  `HFLM._loglikelihood_tokens` (what `loglikelihood` runs after tokenising) on the same
                    model object and token ids, batch size 8
and it prints forwarded tokens over the lower bound (each distinct prefix once plus every continuation once),
wall time over lm-eval's, and max |Δ logp| (summed log-prob of a request) against lm-eval, in nats.

lm-eval is not a dependency of harness. Install it apart and name the folder:
  pip install --no-deps --target /tmp/lmeval "lm-eval==0.4.13"
  python bench/score_vs_lmeval.py --lmeval /tmp/lmeval [--model gguf/smollm2-135m] [--n 8] [--m 2] \\
      [--compressions /tmp/z.json]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

from harness.backends.base import STATS
from harness.backends.transformers import MAX_PADDING, TransformersBackend
from harness.config import DEFAULT_PROMPTS
from harness.prompts import render
from harness.records import Generation, GenParams, GenRequest, ScoreRequest, Usage
from harness.scoring import score_group
from harness.tasks import load_task


class Recorder:
    """Passes `score` calls to the backend and keeps the requests (to send the same ones to lm-eval)."""

    def __init__(self, be: TransformersBackend):
        self.be = be
        self.requests: list[ScoreRequest] = []

    def score(self, reqs: list[ScoreRequest]) -> Any:
        self.requests.extend(reqs)
        return self.be.score(reqs)

    def count_prompt_tokens(self, request: GenRequest) -> int | None:
        return self.be.count_prompt_tokens(request)


def harness_run(be: TransformersBackend, reqs: list[ScoreRequest], *, batch_size: int, before: bool) -> tuple:
    """(forwarded tokens, seconds, summed log-probs) of scoring `reqs`; `before` restores the old batching."""
    be.batch_size, be.max_padding = batch_size, 1.0 if before else MAX_PADDING
    fwd = be._forward
    if before:  # full logits for the prefix, as before `logits_to_keep=1`
        def full_logits(ids: Any, att: Any = None, **kw: Any) -> Any:
            return fwd(ids, att, **{k: v for k, v in kw.items() if k != "logits_to_keep"})

        be._forward = full_logits
    f0 = STATS["forwarded_tokens"]
    t = time.perf_counter()
    res = be.score(reqs)
    secs = time.perf_counter() - t
    be._forward = fwd
    assert not any(r.error for r in res)
    return STATS["forwarded_tokens"] - f0, secs, [r.total for r in res]


def lmeval_run(be: TransformersBackend, reqs: list[ScoreRequest], batch_size: int) -> tuple:
    """The same (prefix ids, continuation ids) through lm-eval's HFLM on the same model object."""
    from lm_eval.models.huggingface import HFLM

    lm = HFLM(pretrained=be.model, tokenizer=be.tokenizer, batch_size=batch_size)
    forwarded = [0]
    call = lm._model_call

    def counted(inps, *a, **kw):
        forwarded[0] += inps.numel()
        return call(inps, *a, **kw)

    lm._model_call = counted
    items = []
    for r in reqs:
        pre = be._prompt_ids([{"role": a, "content": c} for a, c in r.messages], None)
        items.append((("", ""), pre, list(r.continuation_ids)))
    t = time.perf_counter()
    out = lm._loglikelihood_tokens(items, disable_tqdm=True)
    return forwarded[0], time.perf_counter() - t, [ll for ll, _ in out]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--lmeval", required=True, help="folder lm-eval was installed into (pip install --target)")
    ap.add_argument("--model", default="gguf/smollm2-135m")
    ap.add_argument("--n", type=int, default=8)
    ap.add_argument("--m", type=int, default=2)
    ap.add_argument("--max-new-tokens", type=int, default=48)
    ap.add_argument("--repeat", type=int, default=2, help="rounds over the harness paths; the fastest is reported")
    ap.add_argument("--compressions", help="JSON file: kept from the first run, reused by later ones")
    a = ap.parse_args()
    sys.path.insert(0, a.lmeval)
    kind, _, name = a.model.partition("/")
    be = TransformersBackend(kind, name, dtype="float32", batch_size=8)
    samples = load_task("synthetic-records", size=a.n * 2, seed=0, options={"n_templates": 1})[: a.n]
    prompt = DEFAULT_PROMPTS["compressor"]
    params = [(s, j) for s in samples for j in range(a.m)]
    if a.compressions and Path(a.compressions).exists():  # a previous run's samples (generation is the slow part)
        kept = json.loads(Path(a.compressions).read_text())[: a.n * a.m]  # samples are the task's first n
        gens = [Generation(**{**d, "usage": Usage()}) for d in kept]
        be._load()
    else:
        gens = be.generate([
            GenRequest.chat(render(prompt, question=s.question, context=s.context),
                            GenParams(max_new_tokens=a.max_new_tokens, temperature=1.0, seed=j))
            for s, j in params
        ])
        if a.compressions:
            Path(a.compressions).write_text(json.dumps([
                {"text": g.text, "token_ids": g.token_ids, "logprobs": None, "finish_reason": g.finish_reason}
                for g in gens]))
    rec = Recorder(be)
    group = score_group(rec, samples, [gens[i * a.m : (i + 1) * a.m] for i in range(a.n)], prompt, exact_ids=True)
    reqs, lower = rec.requests, group.lower_bound_tokens

    paths = {"harness before (batch 4)": (4, True), "harness after (batch 4)": (4, False),
             "harness after (batch 8, default)": (8, False)}
    rows = [("lm-eval loglikelihood (batch 8)", *lmeval_run(be, reqs, 8))]
    print(f"  lm-eval: {rows[0][2]:.1f} s", file=sys.stderr, flush=True)
    runs: dict[str, list[tuple]] = {k: [] for k in paths}
    for _ in range(a.repeat):  # rounds, so a change of load on the machine touches every path alike
        for label, (bs, before) in paths.items():
            runs[label].append(harness_run(be, reqs, batch_size=bs, before=before))
            print(f"  {label}: {runs[label][-1][1]:.1f} s", file=sys.stderr, flush=True)
    rows += [(label, *min(r, key=lambda x: x[1])) for label, r in runs.items()]
    ref_t, ref_lp = rows[0][2], rows[0][3]
    print(f"model {a.model} float32, N={a.n} M={a.m}: {len(reqs)} requests, lower bound {lower} tokens")
    print("| path | forwarded / lower bound | wall s | time / lm-eval | max abs Δlogp vs lm-eval (nat) |")
    print("|---|---|---|---|---|")
    for label, fwd, secs, lps in rows:
        diff = max(abs(x - y) for x, y in zip(lps, ref_lp, strict=True))
        print(f"| {label} | {fwd / lower:.3f} | {secs:.1f} | {secs / ref_t:.3f} | {diff:.1e} |")
    print(f"after (batch 8) vs before: {rows[1][2] / rows[3][2]:.2f}x faster; "
          f"forwarded {rows[1][1] / lower:.2f} -> {rows[3][1] / lower:.2f} of the bound")


if __name__ == "__main__":
    main()
