"""Benchmark: what bf16 costs in MI error, and what it saves in time, against float32 (configs/mi-small.yaml).

Runs the same config three times in one process, each with a fresh response cache:
  float32       every role in float32 (the CPU default)
  bf16 scorer   the float32 compressions, re-scored by the proxy scorer in bf16 (scoring error alone)
  bfloat16      every role in bf16 (sampling and scoring: what `auto` used to pick on bf16 CPUs)
and prints, measured in this run: MI (self, proxy) with the population CI, |ΔMI| against float32,
the mean |Δ log p| per scored token between the bf16 and float32 proxy on the same compressions, and the
wall time of each run with its ratio to float32.

  python bench/dtype_mi.py [--config configs/mi-small.yaml] [--set task.size=8 ...]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from harness.backends.transformers import cpu_has_fast_bf16
from harness.config import load_config
from harness.pipeline.run import run

ROLES = ("compressor", "predictor", "scorer")


def _overrides(dtype: str, *, scorer_only: bool = False) -> dict[str, Any]:
    roles = ("scorer",) if scorer_only else ROLES
    return {"models": {r: {"dtype": dtype} for r in roles}}


def _merge(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    out = dict(a)
    for k, v in b.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def _mi(summary: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {("self" if r["scorer"] == "self" else "proxy"): r for r in summary["mi"]}


def _proxy_logps(run_dir: Path) -> dict[str, float]:
    """The proxy's per-context MI terms (bits, keyed by sample id) from a run's mi.jsonl."""
    out: dict[str, float] = {}
    for line in (run_dir / "mi.jsonl").read_text().splitlines():
        r = json.loads(line)
        if r.get("scorer") != "self" and r.get("group_id") != "*":
            out.update(r.get("context_bits") or {})
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--config", default="configs/mi-small.yaml")
    ap.add_argument("--set", action="append", default=[], help="key=value overrides, as in `harness run`")
    a = ap.parse_args()
    import yaml

    base: dict[str, Any] = {}
    for kv in a.set:
        key, _, val = kv.partition("=")
        cur = base
        *parts, last = key.split(".")
        for p in parts:
            cur = cur.setdefault(p, {})
        cur[last] = yaml.safe_load(val)
    tmp = Path(tempfile.mkdtemp(prefix="bench-dtype-"))
    runs: dict[str, dict[str, Any]] = {}
    for label, over, cache in (("float32", _overrides("float32"), "f32"),
                               ("bf16 scorer", _overrides("bfloat16", scorer_only=True), "f32"),
                               ("bfloat16", _overrides("bfloat16"), "bf16")):
        o = _merge(_merge(base, over), {"output": {"dir": str(tmp / label.replace(" ", "-")),
                                                    "cache": str(tmp / f"{cache}.sqlite"), "store": None}})
        cfg = load_config(a.config, o)
        t = time.time()
        s = run(cfg, quiet=True)
        runs[label] = {"summary": s, "seconds": time.time() - t}
        print(f"# {label}: {runs[label]['seconds']:.0f} s", flush=True)
    ref = _mi(runs["float32"]["summary"])
    print(f"\nCPU bf16 units: {'yes' if cpu_has_fast_bf16() else 'no'}; config {a.config}")
    print("| run | MI self (bits) | MI proxy (bits) | |ΔMI| self | |ΔMI| proxy | wall s | × float32 time |")
    print("|---|---|---|---|---|---|---|")
    t32 = runs["float32"]["seconds"]
    for label, r in runs.items():
        mi = _mi(r["summary"])

        def cell(k: str, mi: dict[str, Any] = mi) -> str:
            e = mi.get(k)
            if not e or e.get("bits") is None:
                return "-"
            lo, hi = e.get("population_ci") or e.get("ci") or (None, None)
            return f"{e['bits']:.3f} [{lo:.2f}, {hi:.2f}]" if lo is not None else f"{e['bits']:.3f}"

        def delta(k: str, mi: dict[str, Any] = mi) -> str:
            if not mi.get(k) or not ref.get(k) or mi[k].get("bits") is None or ref[k].get("bits") is None:
                return "-"
            return f"{abs(mi[k]['bits'] - ref[k]['bits']):.3f}"

        print(f"| {label} | {cell('self')} | {cell('proxy')} | {delta('self')} | {delta('proxy')} | "
              f"{r['seconds']:.0f} | {r['seconds'] / t32:.2f} |")
    print("bf16 scorer: only the proxy's scoring ran (compressions, self MI and predictions came from the float32 "
          "run's cache), so its time is not a whole run's")
    a32 = _proxy_logps(Path(runs["float32"]["summary"]["run_dir"]))
    a16 = _proxy_logps(Path(runs["bf16 scorer"]["summary"]["run_dir"]))
    common = sorted(set(a32) & set(a16))
    if common:
        d = np.abs(np.array([a32[k] for k in common]) - np.array([a16[k] for k in common]))
        print(f"\nper-context proxy MI terms, bf16 vs float32 scoring of the same compressions: "
              f"mean |Δ| {d.mean():.3f} bits, max {d.max():.3f} bits over {len(common)} contexts")


if __name__ == "__main__":
    main()
