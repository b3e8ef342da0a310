"""`harness run CONFIG`: one config as a one-cell-per-arm plan through the sweep engine, and the run table."""

from __future__ import annotations

import json
import platform
import subprocess
import time
import uuid
from dataclasses import asdict
from pathlib import Path
from typing import Any

from harness import __version__
from harness.backends.base import STATS
from harness.config import LM_BACKENDS, RunConfig
from harness.pipeline.export import export_run
from harness.pipeline.plan import expand_run, model_key, reads_sampled
from harness.store.redact import redact


def _git_commit() -> str | None:
    """The commit of the harness checkout this code runs from; None for an installed package (whose folder may
    sit inside some other project's repository: that project's commit is not ours)."""
    root = Path(__file__).resolve().parents[2]
    if not (root / ".git").exists():
        return None
    try:
        r = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, cwd=root, timeout=5)
        return r.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def run(cfg: RunConfig, *, quiet: bool = False) -> dict[str, Any]:
    """Execute a run and return its summary (also written to the run folder as summary.json and table.md).

    A run is a one-cell-per-arm plan (`plan.expand_run`, cell ids `{run_id}/{arm}`) through the sweep engine
    (`harness.pipeline.sweep.Sweep`): compress (and MI by the compressor), proxy MI, predict, score (and judge).
    Every path, model spec and data file is checked before any file is created. Error-free compressions the store
    holds are read again (counted as cached compressor usage), so a rerun after a crash or `kill -9` makes only
    what is missing. The summary's rows are the one cell summariser's (`harness.analyze.frames.cell_frame`) over
    the store; the run folder's JSONL files are an export of the store (`harness.pipeline.export`). Without
    `output.store` the rows go to a store in the run folder. A run that raises is marked "failed" in the results
    store ("interrupted" on Ctrl-C), never left "running".
    """
    from harness.pipeline.sweep import Sweep
    from harness.preflight import run_models

    t0 = time.time()
    stats0 = dict(STATS)
    # each run writes its own folder; earlier runs are never overwritten
    run_id = time.strftime("%Y%m%d-%H%M%S") + "-" + uuid.uuid4().hex[:6]
    out_dir = cfg.output_dir() / run_id
    plan = expand_run(cfg, run_id)
    sw = Sweep(cfg, quiet=quiet, plan=plan, store_url=cfg.output.store or str(out_dir / "store.db"),
               models=run_models(cfg))
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / "run.json").write_text(json.dumps({
            "run_id": run_id, "config": redact(cfg.model_dump(mode="json")), "git_commit": _git_commit(),
            "harness": __version__, "python": platform.python_version(), "started": time.strftime("%Y-%m-%dT%H:%M:%S"),
        }, indent=2))
        sw.run()
        samples = next(iter(sw.samples.values()))
        summary = summarize(cfg, sw.store, run_id, sw.usage, n_samples=len(samples))
        summary["run_id"] = run_id
        summary["mi"] = sw.mi_results
        summary["predictor_reads"] = (
            "the compressor's output (deterministic: one compression per context)"
            if cfg.models.compressor is not None and cfg.models.compressor.backend not in LM_BACKENDS
            else f"sampled compression j=0 (temperature {cfg.mi.temperature}; the channel MI describes)"
            if reads_sampled(cfg) and cfg.mi is not None
            else "greedy compressions"
        )
        roles = [(r, mc) for r, mc in (("compressor", cfg.models.compressor), ("predictor", cfg.models.predictor),
                                       ("scorer", cfg.models.scorer)) if mc is not None]
        ids = sw.identities
        summary["identities"] = {r: asdict(ids[k]) for r, mc in roles if (k := model_key(mc)) in ids}
        summary["first_error"] = first_error(sw.store, run_id)
        summary["wall_seconds"] = round(time.time() - t0, 2)
        summary["model_loads"] = STATS["model_loads"] - stats0.get("model_loads", 0)
        # requests that reached a model (a batch of 8 is 8 calls; cache hits are none)
        summary["model_calls"] = sum(STATS[k] - stats0.get(k, 0) for k in ("generate_requests", "score_requests"))
        summary["run_dir"] = str(out_dir)
        comp_id = sw.model_ids.get(model_key(cfg.models.compressor)) if cfg.models.compressor else None
        export_run(sw.store, plan, samples, out_dir, comp_id)
        (out_dir / "summary.json").write_text(json.dumps(summary, indent=2, default=str))
        (out_dir / "table.md").write_text(format_table(summary))
    finally:
        sw.close()
    return summary


def first_error(store: Any, run_id: str) -> str | None:
    """The first error the run stored (its errors table, then its predictions), or None."""
    errs = store.rows("errors", run_id=run_id)
    if errs:
        return errs[0]["message"]
    _, rows = store.query("SELECT p.error FROM predictions p JOIN cells c ON c.cell_id = p.cell_id "
                          "WHERE c.run_id = ? AND p.error IS NOT NULL ORDER BY p.prediction_id", (run_id,))
    return rows[0][0] if rows else None


def arm_row(cfg: RunConfig, arm: str, cell: dict[str, Any]) -> dict[str, Any]:
    """One arm's row of the run table from its cell's numbers (`harness.analyze.frames.summarize_cell`)."""
    from harness.analyze.frames import py_value

    s = {k: py_value(v) for k, v in cell.items()}
    return {
        "arm": arm,
        "compressor": cfg.models.compressor.model if arm == "compressed" and cfg.models.compressor else "-",
        "predictor": cfg.models.predictor.model,
        "n": s["samples"],
        "scored": s["scored"],
        "errors": s["errors"],
        "answered": s["answered"],  # accuracy is over these (n - errors)
        "accuracy": s["accuracy"],
        "accuracy_ci": None if s["accuracy"] is None else [s["acc_lo"], s["acc_hi"]],
        # distortion arms: mean bits per byte with its 95% CI, lo clipped at 0 (None elsewhere)
        "bits_per_byte": s["value_mean"],
        "bits_per_byte_ci": None if s["value_lo"] is None else [max(0.0, s["value_lo"]), s["value_hi"]],
        "unparseable": s["unparseable"],
        "truncated": s["truncated"],
        "summary_tokens": s["summary_tokens"],
        "token_ratio": s["token_ratio"],
        "predictor_usage": {} if not s["pred_calls"] else {
            "calls": s["pred_calls"], "prompt_tokens": int(s["pred_prompt_tokens"]),
            "completion_tokens": int(s["pred_completion_tokens"]), "seconds": s["pred_seconds_actual"] or 0.0,
            "cached": s["pred_cached"]},
    }  # fmt: skip


def summarize(cfg: RunConfig, store: Any, run_id: str, usage: dict[str, dict[str, float]], *,
              n_samples: int) -> dict[str, Any]:
    """The run's summary: per arm, its cell's numbers from the store by the one cell summariser
    (`harness.analyze.frames.cell_frame`), and the calls per role (`usage`)."""
    from harness.analyze.frames import cell_frame
    from harness.results import load_store

    cells, _, _ = cell_frame(load_store(store), run_id)
    by_arm = {r["arm"]: r for r in cells.to_dict("records")}
    return {"name": cfg.name, "task": cfg.task.name, "n_samples": n_samples,
            "rows": [arm_row(cfg, arm, by_arm[arm]) for arm in cfg.arms], "usage": usage}


def _f(x: Any, fmt: str) -> str:
    return "-" if x is None else format(x, fmt)


def _accuracy_cell(r: dict[str, Any]) -> str:
    """Accuracy with its CI, or for distortion arms "bpb <mean> [lo, hi]" (bits per byte, lower is better)."""
    if r.get("bits_per_byte") is not None and r.get("accuracy") is None:
        ci = r.get("bits_per_byte_ci")
        return f"bpb {r['bits_per_byte']:.3f}" + (f" [{ci[0]:.2f}, {ci[1]:.2f}]" if ci else "")
    ci = r.get("accuracy_ci")
    return _f(r["accuracy"], ".3f") + (f" [{ci[0]:.2f}, {ci[1]:.2f}]" if ci else "")


def mi_bits_cell(r: dict[str, Any], spec: str = ".3f") -> str:
    """MI bits with both intervals: "2.510 ±0.020 MC [pop 2.250, 2.770]".

    ±: Monte Carlo standard error given these contexts (compare compressors on the same contexts with it; "n/a"
    with one draw per context); [pop lo, hi]: the 95% population interval, resampling contexts.
    """
    mc = r.get("mc_se_bits")
    ci = r.get("population_ci") or r.get("ci")
    out = format(r["bits"], spec) + (f" ±{format(mc, spec)} MC" if mc is not None else " ±n/a MC")
    return out + (f" [pop {format(ci[0], spec)}, {format(ci[1], spec)}]" if ci else "")


def format_table(summary: dict[str, Any]) -> str:
    """A markdown table: accuracy over the answered samples, errors, unparseable answers, truncated prompts,
    summary tokens, token_ratio, tokens and seconds per role."""
    head = [
        "arm",
        "compressor",
        "predictor",
        "n",
        "accuracy [95% CI] (of answered)",
        "answered",
        "errors",
        "unparseable",
        "truncated",
        "summary_tok",
        "token_ratio",
        "pred_prompt_tok",
        "pred_compl_tok",
        "pred_s",
    ]
    if any(r.get("bits_per_byte") is not None for r in summary["rows"]):
        head[4] = "accuracy or bpb [95% CI] (of answered)"
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in summary["rows"]:
        pu = r["predictor_usage"]
        lines.append(
            "| "
            + " | ".join(
                [
                    r["arm"],
                    r["compressor"],
                    r["predictor"],
                    str(r["n"]),
                    _accuracy_cell(r),
                    str(r.get("answered", r["n"] - r["errors"])),
                    str(r["errors"]),
                    str(r.get("unparseable", 0)),
                    str(r.get("truncated", 0)),
                    _f(r["summary_tokens"], ".1f"),
                    _f(r["token_ratio"], ".3f"),
                    str(int(pu.get("prompt_tokens", 0))),
                    str(int(pu.get("completion_tokens", 0))),
                    _f(pu.get("seconds", 0.0), ".1f"),
                ]
            )
            + " |"
        )
    if any(r.get("bits_per_byte") is not None for r in summary["rows"]):
        lines.append("")
        lines.append("bpb: bits per byte of the reference continuation under the predictor, given the arm's input "
                     "(lower is better; 95% t CI)")
    lines.append("")
    lines.append("| role | calls | prompt_tok | completion_tok | seconds | cached |")
    lines.append("|---|---|---|---|---|---|")
    for role, u in summary["usage"].items():
        if u:
            lines.append(
                f"| {role} | {int(u['calls'])} | {int(u['prompt_tokens'])} | {int(u['completion_tokens'])} "
                f"| {u['seconds']:.1f} | {int(u['cached'])} |"
            )
    if "compressed" in [r["arm"] for r in summary["rows"]] and summary.get("predictor_reads"):
        lines.append(f"compressed arm: the predictor read {summary['predictor_reads']}")
    if summary.get("mi"):
        head = ("| MI scorer | groups | contexts | M | bits ±MC se [pop 95% CI] | upper | bits/token | saturated "
                "| fwd ratio |")
        lines += ["", head, "|---|---|---|---|---|---|---|---|---|"]
        for r in summary["mi"]:
            if r.get("error"):
                lines.append(f"| {r['scorer']} | {r['n_groups']} | - | {r['samples_per_context']} | "
                             f"error: {r['error']} | - | - | - | - |")
                continue
            up = "∞" if r["upper_bits"] is None or r["upper_bits"] == float("inf") else f"{r['upper_bits']:.2f}"
            lb = " (≥)" if r["bits_per_token_is_lower_bound"] else ""
            ratio = _f(r["forwarded_ratio"], ".2f")
            lines.append(
                f"| {r['scorer']} ({r['tokenization']}) | {r['n_groups_ok']} | {r['n_contexts']} | "
                f"{r['samples_per_context']} | {mi_bits_cell(r)} | {up} | "
                f"{r['bits_per_token']:.4f}{lb} | {r['saturated_fraction']:.2f} | {ratio} |")
        lines.append("MI: ±MC = Monte Carlo standard error given these contexts (use it to compare compressors on "
                     "the same contexts); [pop lo, hi] = 95% interval resampling contexts")
        for r in summary["mi"]:
            if r.get("deterministic") and r.get("deterministic_bits") is not None:
                lines.append(f"{r['compressor']} is deterministic (one compression per context, M = 1, nothing to "
                             f"sample: ±n/a MC): exact I(X;Z|Q) = H(Z|Q) over these contexts = "
                             f"{r['deterministic_bits']:.3f} bits; {r['scorer']}'s estimate is a lower bound on it")
    return "\n".join(lines) + "\n"
