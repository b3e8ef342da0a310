"""Run one config: tasks → compress → predict (each arm) → score, writing rows as work finishes."""

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
from harness.backends.cache import ResponseCache
from harness.backends.registry import make_backend
from harness.compressors import Compressor, make_compressor
from harness.config import LM_BACKENDS, RunConfig
from harness.pipeline.compress import CompKey, compress_stage
from harness.pipeline.distortion import score_continuations
from harness.pipeline.mi_stage import mi_stage
from harness.pipeline.plan import read_key, reads_sampled
from harness.pipeline.record import Recorder
from harness.pipeline.sinks import ErrorRecord, PredictionRecord, ScoreRecord
from harness.pipeline.stages import Item, add_usage, params_from, predict_request, progress_bar, run_generation_stage
from harness.records import Generation, GenParams, GenRequest
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


def _cost_fn(cfg: RunConfig, backends: dict[str, Any]) -> Any:
    """FLOPs and dollars of one call of a role's model (as if uncached), for the store's usage rows."""
    from harness.cost import call_cost

    def cost(role: str, usage: Any) -> dict[str, Any]:
        mc = getattr(cfg.models, role)
        return call_cost(cfg, mc, backends.get(role), usage) if mc is not None else {}

    return cost


def run(cfg: RunConfig, *, quiet: bool = False) -> dict[str, Any]:
    """Execute a run and return its summary (also written to the run folder).

    Every path, model spec and data file is checked before any file is created. A run that raises is marked
    "failed" in the results store ("interrupted" on Ctrl-C), never left "running".
    """
    started: dict[str, Any] = {}
    try:
        return _run(cfg, quiet=quiet, started=started)
    except BaseException as e:
        if "store" in started:
            status = "interrupted" if isinstance(e, KeyboardInterrupt) else "failed"
            started["store"].finish_run(started["run_id"], status)
            started["store"].close()
        raise


def _run(cfg: RunConfig, *, quiet: bool, started: dict[str, Any]) -> dict[str, Any]:
    from harness.metrics import score_prediction
    from harness.preflight import announce, check_models, check_outputs, load_samples, run_models

    t0 = time.time()
    stats0 = dict(STATS)
    check_outputs(cfg, run_folder=True)
    models = run_models(cfg)
    check_models(models)
    from harness.retrieval import check_retrieval, samples_for

    task_samples = load_samples(cfg.task)
    if cfg.retrieval is not None:
        check_retrieval(cfg.retrieval)
    announce(models)
    cache = ResponseCache(cfg.output.cache) if cfg.output.cache else None
    samples = samples_for(cfg, task_samples, cache)  # the contexts every stage reads (retrieved, or the task's own)
    # resolve every model spec up front (lazy: no weights load here), so a bad spec fails fast
    compressor: Compressor | None = None
    comp_be = None  # an LM compressor's backend (its architecture and cost per call)
    if "compressed" in cfg.arms or cfg.mi is not None:
        assert cfg.models.compressor is not None
        compressor = make_compressor(cfg, field="models.compressor.model", cache=cache)
        comp_be = getattr(compressor, "backend", None)
    pred_be = make_backend(cfg.models.predictor, field="models.predictor.model", cache=cache)

    # each run writes its own folder; earlier runs are never overwritten
    run_id = time.strftime("%Y%m%d-%H%M%S") + "-" + uuid.uuid4().hex[:6]
    out_dir = cfg.output_dir() / run_id
    store = None
    if cfg.output.store:
        from harness.store import Store

        store = Store.open(cfg.output.store)
        store.start_run(run_id=run_id, name=cfg.name, config=cfg, git_commit=_git_commit())
        started.update(store=store, run_id=run_id)
        store.add_samples(cfg.task.name, task_samples)
    writer = Recorder(out_dir, store, run_id, cfg.task.name)
    writer.cost = _cost_fn(cfg, {"compressor": comp_be, "predictor": pred_be})
    from harness.cost import model_meta

    if compressor is not None:
        writer.model("compressor", compressor.identity(), model_meta(cfg.models.compressor, comp_be))
    writer.model("predictor", pred_be.identity(), model_meta(cfg.models.predictor, pred_be))
    if cfg.models.scorer is not None and cfg.mi is not None and "scorer" in cfg.mi.scorers:
        sc_be = make_backend(cfg.models.scorer, field="models.scorer.model", cache=cache)
        writer.model("scorer", sc_be.identity(), model_meta(cfg.models.scorer, sc_be))
    knobs = {"compressor_generation": cfg.generation.compressor.model_dump(),
             "predictor_generation": cfg.generation.predictor.model_dump(), "seed": cfg.seed,
             "mi": cfg.mi.model_dump() if cfg.mi else None}
    for arm in cfg.arms:
        writer.cell(arm, knobs)
    writer.reads = read_key(cfg)
    (out_dir / "run.json").write_text(
        json.dumps(
            {
                "run_id": run_id,
                "config": redact(cfg.model_dump(mode="json")),
                "git_commit": _git_commit(),
                "harness": __version__,
                "python": platform.python_version(),
                "started": time.strftime("%Y-%m-%dT%H:%M:%S"),
            },
            indent=2,
        )
    )
    for s in samples:
        writer.sample(s)
    items = [Item(s, arm) for arm in cfg.arms for s in samples]
    usage: dict[str, dict[str, float]] = {"compressor": {}, "predictor": {}}
    identities: dict[str, Any] = {}

    # ---- stage 1: compress, and MI scoring by the compressor itself (one model in memory) ----
    mi_rows: list[dict[str, Any]] = []
    if compressor is not None:
        identities["compressor"] = asdict(compressor.identity())
        with progress_bar(0, "compress", quiet, leave=False) as bar:
            comp = compress_stage(cfg, compressor, samples, writer, usage["compressor"], bar)
        index = {s.id: k for k, s in enumerate(samples)}
        for it in items:
            if it.arm != "compressed":
                continue
            k = index[it.sample.id]
            it.context_tokens = comp.context_tokens.get(k)
            it.compression_truncated = comp.truncated.get(k, False)
            if k in comp.errors:
                it.error, it.error_stage = comp.errors[k], "compress"
                continue
            g = comp.results.get(CompKey(k, *read_key(cfg)))
            it.compression = g
            if g is None or g.error:
                it.error, it.error_stage = (g.error if g else "no compression"), "compress"
        if cfg.mi is not None and "self" in cfg.mi.scorers:
            mi_rows.append(mi_stage(cfg, compressor.scorer, "self", compressor.identity(), samples, comp, writer,
                                    quiet=quiet, leave=False))
        compressor.close()
        if cfg.mi is not None and "scorer" in cfg.mi.scorers:
            identities["scorer"] = asdict(sc_be.identity())
            mi_rows.append(mi_stage(cfg, sc_be, cfg.models.scorer.model, compressor.identity(), samples, comp, writer,
                                    quiet=quiet, leave=False))
            sc_be.close()

    # ---- stage 2: predict every arm (one model in memory) ----
    mp = cfg.models.predictor
    be = pred_be
    identities["predictor"] = asdict(be.identity())
    pparams = params_from(cfg.generation.predictor, cfg.seed)
    jobs = []
    for it in items:
        if it.error or it.sample.answer_type == "continuation":  # distortion: scored below, not generated
            continue
        s = it.sample
        summary = it.compression.text if it.compression else None
        req, trunc, err = predict_request(be, cfg.prompts, cfg.overflow, it.arm, s, summary, pparams)
        it.prediction_truncated = trunc
        if err:
            it.error, it.error_stage = err, "predict"
            writer.error(ErrorRecord(s.id, "predict", err, arm=it.arm))
        else:
            jobs.append((it, req))

    def on_predicted(it: Item, g: Generation) -> None:
        it.prediction = g
        add_usage(usage["predictor"], g.usage)
        if g.error:
            it.error, it.error_stage = g.error, "predict"
            writer.error(ErrorRecord(it.sample.id, "predict", g.error, arm=it.arm))
        writer.prediction(PredictionRecord(it.sample.id, it.arm, mp.model, g.text, g.usage, it.prediction_truncated,
                                           g.error))

    with progress_bar(len(jobs), "predict", quiet, leave=False) as bar:
        run_generation_stage(be, jobs, on_predicted, chunk=max(mp.batch_size, 1) * 2, progress=bar)
    score_continuations(be, items, cfg, writer, usage["predictor"])
    be.close()

    # ---- stage 3: score (a judge model, when configured, for answers that need one) ----
    judged = judge_stage(cfg, items, cache, usage, writer) if cfg.models.judge is not None else {}
    for it in items:
        if it.error or it.score is not None:  # continuation items were scored in stage 2
            continue
        assert it.prediction is not None
        it.score = judged.get(id(it)) or score_prediction(it.sample, it.prediction.text)
        writer.score(ScoreRecord(it.sample.id, it.arm, it.score))

    summary = summarize(cfg, items, usage)
    summary["mi"] = mi_rows
    summary["predictor_reads"] = (
        "the compressor's output (deterministic: one compression per context)"
        if cfg.models.compressor is not None and cfg.models.compressor.backend not in LM_BACKENDS
        else f"sampled compression j=0 (temperature {cfg.mi.temperature}; the channel MI describes)"
        if reads_sampled(cfg) and cfg.mi is not None
        else "greedy compressions"
    )
    summary["identities"] = identities
    summary["first_error"] = next((it.error for it in items if it.error), None)
    summary["wall_seconds"] = round(time.time() - t0, 2)
    summary["model_loads"] = STATS["model_loads"] - stats0.get("model_loads", 0)
    # requests that reached a model (a batch of 8 is 8 calls; cache hits are none)
    summary["model_calls"] = sum(STATS[k] - stats0.get(k, 0) for k in ("generate_requests", "score_requests"))
    summary["run_dir"] = str(out_dir)
    (out_dir / "summary.json").write_text(json.dumps(summary, indent=2))
    (out_dir / "table.md").write_text(format_table(summary))
    writer.close()
    if store is not None:
        store.finish_run(run_id, "done")
        store.close()
    if cache is not None:
        cache.close()
    return summary


def judge_stage(
    cfg: RunConfig, items: list[Item], cache: Any, usage: dict[str, dict[str, float]], writer: Recorder
) -> dict[int, Any]:
    """Judge the predictions of samples marked `needs_judge` with the `judge` role (one model in memory).

    The rubric is fixed and versioned (`harness.metrics.JUDGE_RUBRIC_VERSION`); the raw output and the
    verdict are stored with the score. A failed judge call is an error for that sample, never a verdict.
    """
    from harness.metrics import build_judge_messages, judge_score

    todo = [it for it in items if not it.error and it.sample.meta.get("needs_judge") and it.prediction is not None]
    if not todo:
        return {}
    assert cfg.models.judge is not None
    be = make_backend(cfg.models.judge, field="models.judge.model", cache=cache)
    params = GenParams(max_new_tokens=8, temperature=0.0, seed=cfg.seed)
    reqs = [GenRequest.chat(build_judge_messages(it.sample.question, it.sample.answers, it.prediction.text), params)
            for it in todo]
    gens = be.generate(reqs)
    be.close()
    usage.setdefault("judge", {})
    out: dict[int, Any] = {}
    for it, g in zip(todo, gens, strict=True):
        add_usage(usage["judge"], g.usage)
        if g.error:
            it.error, it.error_stage = f"judge: {g.error}", "score"
            writer.error(ErrorRecord(it.sample.id, "score", it.error, arm=it.arm))
            continue
        out[id(it)] = judge_score(it.sample, it.prediction.text, lambda _msgs, t=g.text: t)
    return out


def sample_rows(items: list[Item]) -> list[dict[str, Any]]:
    """The items as the cell summariser's sample rows (`harness.analyze.frames.SAMPLE_COLUMNS`)."""
    rows = []
    for k, it in enumerate(items):
        sc, c = it.score, it.compression
        status = "error" if it.error else ("" if sc is None else ("ok" if sc.correct is not None else "value"))
        u = it.prediction.usage if it.prediction is not None else it.extra.get("predictor_usage")
        rows.append({
            "sample_id": it.sample.id, "status": status, "error_stage": it.error_stage if it.error else None,
            "metric": None if sc is None else sc.name, "correct": None if sc is None else sc.correct,
            "value": None if sc is None else sc.value, "flags_json": [] if sc is None else list(sc.flags),
            "compression_id": None if c is None else k, "compression_error": None if c is None else c.error,
            "summary_tokens": None if c is None else (len(c.token_ids) or c.usage.completion_tokens),
            "context_tokens": it.context_tokens, "compression_truncated": it.compression_truncated,
            "prediction_truncated": it.prediction_truncated,
            **({} if u is None else {"pred_prompt_tokens": u.prompt_tokens, "pred_completion_tokens":
                                     u.completion_tokens, "pred_seconds": u.seconds, "pred_cached": u.cached}),
        })  # fmt: skip
    return rows


def summarize(cfg: RunConfig, items: list[Item], usage: dict[str, dict[str, float]]) -> dict[str, Any]:
    """Per arm, the cell summariser's numbers (`harness.analyze.frames.summarize_cell`) under the run's keys."""
    import pandas as pd

    from harness.analyze.frames import SAMPLE_COLUMNS, summarize_cell

    rows = []
    for arm in cfg.arms:
        s = summarize_cell(pd.DataFrame(sample_rows([it for it in items if it.arm == arm]), columns=SAMPLE_COLUMNS))
        row: dict[str, Any] = {
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
        rows.append(row)
    return {
        "name": cfg.name,
        "task": cfg.task.name,
        "n_samples": len({it.sample.id for it in items}),
        "rows": rows,
        "usage": usage,
    }


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
