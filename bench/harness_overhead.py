"""Benchmark: wall time of a harness run vs the same requests made directly on the backend.

Runs a small config (`gguf/smollm2-135m` as compressor and predictor, synthetic-records, arms compressed,
full-context and no-context, no response cache, a results store in a temp folder) through
`harness.pipeline.run.run`, then makes the same generate requests directly on `TransformersBackend`: the
same prompts and params, the same chunks, one backend per role, each closed before the next loads. Prints,
measured in one run:
  harness wall s, direct wall s and their ratio (target ≤ 1.05)
  where the harness's extra time goes (exclusive seconds per instrumented call site), and, since the model
  work itself varies from run to run on shared CPUs, the ratio that charges the harness only for its time
  outside model work (construct, tokenizer and model load, generate, close)
  requests / outputs that differ between the two paths (must be 0: greedy decoding)

  python bench/harness_overhead.py [--n 8] [--repeats 1] [--no-warmup] [--profile]
"""

from __future__ import annotations

import argparse
import cProfile
import io
import json
import pstats
import tempfile
import time
from collections import Counter, defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import transformers

import harness.metrics
import harness.pipeline.run as run_mod
import harness.pipeline.sweep as sweep_mod
from harness.backends.base import STATS
from harness.backends.registry import make_backend
from harness.backends.transformers import TransformersBackend
from harness.config import RunConfig, load_config
from harness.pipeline.stages import chunks, params_from
from harness.pipeline.sweep import Sweep
from harness.prompts import arm_input, arm_messages, render
from harness.records import Generation, GenParams, GenRequest, Sample
from harness.store import Store
from harness.tasks import load_task

ROOT = Path(__file__).resolve().parents[1]
MODEL = "gguf/smollm2-135m"
ARMS = ["compressed", "full-context", "no-context"]


class Timers:
    """Exclusive wall seconds per label for patched callables (a nested timed call is charged to its own label)."""

    def __init__(self) -> None:
        self.excl: defaultdict[str, float] = defaultdict(float)
        self.calls: Counter[str] = Counter()
        self._stack: list[float] = []
        self._undo: list[tuple[Any, str, Any]] = []

    def patch(self, owner: Any, name: str, label: str, on_call: Callable[..., None] | None = None) -> None:
        fn = getattr(owner, name)

        def wrapper(*a: Any, **k: Any) -> Any:
            if on_call is not None:
                on_call(*a, **k)
            t = time.perf_counter()
            self._stack.append(0.0)
            try:
                return fn(*a, **k)
            finally:
                dt = time.perf_counter() - t
                self.excl[label] += dt - self._stack.pop()
                self.calls[label] += 1
                if self._stack:
                    self._stack[-1] += dt

        self._undo.append((owner, name, owner.__dict__[name]))
        setattr(owner, name, wrapper)

    def restore(self) -> None:
        for owner, name, orig in reversed(self._undo):
            setattr(owner, name, orig)
        self._undo.clear()


MODEL_WORK = ("backend construct", "tokenizer load", "model load", "generate", "backend close")


def patch_backend(tm: Timers, sent: list[list[GenRequest]]) -> None:
    TB = TransformersBackend
    tm.patch(TB, "__init__", "backend construct")
    tm.patch(TB, "_load_tokenizer", "tokenizer load")
    tm.patch(TB, "_load", "model load")
    tm.patch(TB, "generate", "generate", on_call=lambda _self, reqs: sent.append(list(reqs)))
    tm.patch(TB, "close", "backend close")


def patch_harness(tm: Timers) -> None:
    TB = TransformersBackend
    tm.patch(TB, "count_prompt_tokens", "token counting (fit_request, context_tokens)")
    tm.patch(TB, "count_tokens", "token counting (fit_request, context_tokens)")
    for name in ("_store_compression", "_store_prediction", "_store_score", "_log_error"):
        tm.patch(Sweep, name, "row writes (store)")
    for name in ("find_compression", "find_prediction", "query"):
        tm.patch(Store, name, "store look-ups (resume)")
    tm.patch(run_mod, "export_run", "JSONL export of the store")
    tm.patch(run_mod, "summarize", "run summary from the store")
    for name in ("open", "start_run", "add_samples", "model_id", "upsert_cell", "finish_run", "close"):
        tm.patch(Store, name, "store setup / finish")
    tm.patch(run_mod, "_git_commit", "git rev-parse (subprocess)")
    tm.patch(sweep_mod, "load_samples", "load_task")
    tm.patch(harness.metrics, "score_prediction", "score_prediction")


def make_config(n: int, tmp: Path, comp_tokens: int, pred_tokens: int) -> RunConfig:
    return load_config(
        ROOT / "configs" / "quickstart.yaml",
        {
            "name": "harness-overhead",
            "task": {"name": "synthetic-records", "size": n, "seed": 0},
            "models": {"compressor": {"model": MODEL}, "predictor": {"model": MODEL}},
            "arms": ARMS,
            "generation": {
                "compressor": {"max_new_tokens": comp_tokens, "temperature": 0.0},
                "predictor": {"max_new_tokens": pred_tokens, "temperature": 0.0},
            },
            "output": {"dir": str(tmp / "runs" / "{name}"), "cache": None, "store": str(tmp / "store.db")},
        },
    )


def backend_for(role: Any) -> TransformersBackend:
    """The backend `make_backend` builds for this role (no response cache)."""
    return make_backend(role)


def direct(cfg: RunConfig, samples: list[Sample]) -> tuple[list[Generation], dict[tuple[str, str], Generation]]:
    """The pipeline's generate requests, made straight on the backend: same prompts, params, chunks and loads."""
    mc, mp = cfg.models.compressor, cfg.models.predictor
    assert mc is not None
    be = backend_for(mc)
    greedy = params_from(cfg.generation.compressor, cfg.seed)
    reqs = [
        GenRequest.chat(render(cfg.prompts.compressor, question=s.question, context=s.context), greedy) for s in samples
    ]
    comps: list[Generation] = []
    for part in chunks(reqs, max(mc.batch_size, 1) * 2):
        comps += be.generate(part)
    be.close()

    be = backend_for(mp)
    pparams = params_from(cfg.generation.predictor, cfg.seed)
    keys, preqs = [], []
    for arm in cfg.arms:
        for k, s in enumerate(samples):
            text, tmpl, key = arm_input(cfg.prompts, arm, s, comps[k].text if arm == "compressed" else None)
            keys.append((s.id, arm))
            preqs.append(GenRequest.chat(arm_messages(tmpl, key, s, text), pparams))
    preds: list[Generation] = []
    for part in chunks(preqs, max(mp.batch_size, 1) * 2):
        preds += be.generate(part)
    be.close()
    return comps, dict(zip(keys, preds, strict=True))


def warmup(cfg: RunConfig) -> None:
    """Page the weights in and run one tiny generate, so neither timed path pays first use."""
    be = backend_for(cfg.models.predictor)
    be.generate([GenRequest.chat([{"role": "user", "content": "Hi"}], GenParams(max_new_tokens=2))])
    be.close()


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    return [json.loads(ln) for ln in path.read_text().splitlines()] if path.exists() else []


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=8, help="samples (each runs in 3 arms)")
    ap.add_argument("--repeats", type=int, default=1, help="alternate harness/direct this many times")
    ap.add_argument("--compressor-tokens", type=int, default=32)
    ap.add_argument("--predictor-tokens", type=int, default=8)
    ap.add_argument("--no-warmup", action="store_true")
    ap.add_argument("--profile", action="store_true", help="cProfile the (last) harness run; print harness frames")
    a = ap.parse_args()
    transformers.utils.logging.disable_progress_bar()  # the same for both paths; keeps the output readable

    with tempfile.TemporaryDirectory() as td:
        tmp = Path(td)
        cfg = make_config(a.n, tmp, a.compressor_tokens, a.predictor_tokens)
        samples = load_task(
            cfg.task.name, size=cfg.task.size, seed=cfg.task.seed, split=cfg.task.split, options=cfg.task.options
        )
        if not a.no_warmup:
            warmup(cfg)

        t_h: list[float] = []
        t_d: list[float] = []
        for rep in range(a.repeats):
            # ---- harness ----
            tm_h, sent_h = Timers(), []
            patch_backend(tm_h, sent_h)
            patch_harness(tm_h)
            s0 = dict(STATS)
            prof = cProfile.Profile() if a.profile and rep == a.repeats - 1 else None
            t = time.perf_counter()
            try:
                if prof is not None:
                    prof.enable()
                summary = run_mod.run(cfg, quiet=True)
                if prof is not None:
                    prof.disable()
            finally:
                t_h.append(time.perf_counter() - t)
                tm_h.restore()
            st_h = {k: STATS[k] - s0.get(k, 0) for k in ("generate_requests", "generate_calls", "model_loads")}

            # ---- direct ----
            tm_d, sent_d = Timers(), []
            patch_backend(tm_d, sent_d)
            s0 = dict(STATS)
            t = time.perf_counter()
            try:
                comps, preds = direct(cfg, samples)
            finally:
                t_d.append(time.perf_counter() - t)
                tm_d.restore()
            st_d = {k: STATS[k] - s0.get(k, 0) for k in ("generate_requests", "generate_calls", "model_loads")}
            print(f"repeat {rep}: harness {t_h[-1]:.2f} s  direct {t_d[-1]:.2f} s  ratio {t_h[-1] / t_d[-1]:.3f}")

        # ---- the two paths made the same requests and got the same texts ----
        flat_h = [r for call in sent_h for r in call]
        flat_d = [r for call in sent_d for r in call]
        req_mismatch = sum(x != y for x, y in zip(flat_h, flat_d, strict=False)) + abs(len(flat_h) - len(flat_d))
        same_chunks = [len(c) for c in sent_h] == [len(c) for c in sent_d]
        run_dir = Path(summary["run_dir"])
        by_sample = {s.id: k for k, s in enumerate(samples)}
        stored_c = read_jsonl(run_dir / "compressions.jsonl")
        stored_p = read_jsonl(run_dir / "predictions.jsonl")
        errors = read_jsonl(run_dir / "errors.jsonl")
        comp_mismatch = sum(r["text"] != comps[by_sample[r["sample_id"]]].text for r in stored_c)
        comp_mismatch += abs(len(stored_c) - len(comps))
        pred_mismatch = sum(r["text"] != preds[(r["sample_id"], r["arm"])].text for r in stored_p)
        pred_mismatch += abs(len(stored_p) - len(preds))

    dtype = backend_for(cfg.models.predictor).dtype
    print(
        f"\nmodel {MODEL} ({dtype}) as compressor and predictor; synthetic-records n={a.n}, arms {', '.join(ARMS)}; "
        f"max_new_tokens {a.compressor_tokens}/{a.predictor_tokens}; no response cache; store in a temp dir"
    )
    print(
        f"generate requests  harness {st_h['generate_requests']}  direct {st_d['generate_requests']}   "
        f"generate calls {st_h['generate_calls']} / {st_d['generate_calls']}   "
        f"model loads {st_h['model_loads']} / {st_d['model_loads']}"
    )
    print(
        f"mismatches: requests {req_mismatch} (same chunks: {same_chunks})  compression texts {comp_mismatch}  "
        f"prediction texts {pred_mismatch}   pipeline error rows {len(errors)}"
    )

    th, td_ = sum(t_h), sum(t_d)
    print(
        f"\nharness wall {th / a.repeats:.2f} s   direct wall {td_ / a.repeats:.2f} s   "
        f"ratio harness/direct {th / td_:.3f}  (target ≤ 1.05; last repeat's breakdown below)"
    )
    print(f"\n{'exclusive seconds':<48}{'harness':>9}{'direct':>9}{'calls h/d':>12}")
    labels = list(MODEL_WORK) + [k for k in tm_h.excl if k not in MODEL_WORK]
    for lab in labels:
        calls = f"{tm_h.calls[lab]}/{tm_d.calls[lab]}" if lab in MODEL_WORK else str(tm_h.calls[lab])
        d = f"{tm_d.excl[lab]:9.2f}" if lab in MODEL_WORK else f"{'-':>9}"
        print(f"  {lab:<46}{tm_h.excl[lab]:9.2f}{d}{calls:>12}")
    for name, tot, tm in (("harness", t_h[-1], tm_h), ("direct", t_d[-1], tm_d)):
        rest = tot - sum(tm.excl.values())
        print(f"  {'unattributed (' + name + ')':<46}{rest:9.2f}")
    mw_h = sum(tm_h.excl[k] for k in MODEL_WORK)
    mw_d = sum(tm_d.excl[k] for k in MODEL_WORK)
    print(
        f"model work: harness {mw_h:.2f} s, direct {mw_d:.2f} s; harness time outside model work "
        f"{t_h[-1] - mw_h:.2f} s ({(t_h[-1] - mw_h) / t_d[-1]:.1%} of direct)"
    )
    # the model work itself varies run to run (shared CPUs); this ratio charges the harness only for its own code
    print(
        "ratio without model-work noise (direct + harness outside model work) / direct "
        f"{1 + (t_h[-1] - mw_h) / t_d[-1]:.3f}"
    )

    if a.profile and prof is not None:
        buf = io.StringIO()
        ps = pstats.Stats(prof, stream=buf).sort_stats("cumulative")
        ps.print_stats(r"harness/|sqlite|subprocess|json", 40)
        print("\n" + buf.getvalue())


if __name__ == "__main__":
    main()
