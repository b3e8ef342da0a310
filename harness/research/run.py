"""`harness run CONFIG` with a `research:` section: the Deep-Research loop over a task's samples, one cell per arm
(and per compressor for `compressor-predictor`), rows written to the results store like the engine's (cells,
compressions, predictions, scores, usage with call kinds compress/predict, errors) plus each step of each sample's
episode in `trace_steps`.

Cell ids are derived from what changes the outputs (task, research section, predictor, generation, prompts, seed;
plus the compressor), not from the run, so rerunning a config resumes it: finished samples are skipped and a sample
killed mid-episode continues at its first missing step (the stored steps are read back, not recomputed).
"""

from __future__ import annotations

import dataclasses
import json
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

from harness.backends.base import STATS
from harness.config import ModelConfig, RunConfig
from harness.errors import UserError
from harness.records import Sample, Usage, stable_hash

#: bumped when the same config would make different episodes (prompts, protocol, step order)
RESEARCH_VERSION = 1


@dataclass
class Cell:
    """One research cell: an arm (with its compressor for compressor-predictor)."""

    cell_id: str
    arm: str
    compressor: ModelConfig | None = None
    knob_hash: str = ""
    outcomes: dict[str, Any] = field(default_factory=dict)  # sample_id -> Outcome (this run)

    @property
    def comp_key(self) -> str:
        return f"compressor:{self.compressor.model}" if self.compressor is not None else ""


def compressor_configs(cfg: RunConfig) -> list[ModelConfig]:
    """The compressors of the compressor-predictor arm: `research.compressors` (a spec inherits the other fields of
    `models.compressor`), else `models.compressor`."""
    rc = cfg.research
    assert rc is not None
    base = cfg.models.compressor
    out: list[ModelConfig] = []
    for c in rc.compressors or ([base] if base is not None else []):
        if isinstance(c, str):
            c = base.model_copy(update={"model": c}) if base is not None else ModelConfig(model=c)
            ModelConfig.model_validate(c.model_dump())  # the spec is validated like any model
        if c.backend in ("python", "filter"):
            raise UserError(f"research.compressors: '{c.model}' is a {c.backend}/ compressor; the research loop's "
                            "compressors are language models (they summarise search results for a subtask)")
        out.append(c)
    return out


def check_protocol(cfg: RunConfig) -> None:
    """`research.protocol: tools` needs a predictor that takes OpenAI tool calls: an openai/ model on the chat API.
    A local backend (gguf/hf/vllm) is refused with one UserError rather than run with the JSON protocol: the cells
    would carry `protocol: tools` in their ids while planning by JSON, and a comparison of the two protocols would
    compare nothing."""
    rc = cfg.research
    assert rc is not None
    mc = cfg.models.predictor
    if rc.protocol == "tools" and (mc.backend != "openai" or mc.api != "chat"):
        what = f"{mc.backend}/ backend" if mc.backend != "openai" else "completions API"
        raise UserError(f"research.protocol: tools needs an openai/ predictor on the chat API (its plan is an OpenAI "
                        f"tool call); '{mc.model}' uses the {what}, which cannot take tools here. Write "
                        "research.protocol: json, or serve the model behind an OpenAI-compatible server")


def plan_cells(cfg: RunConfig) -> list[Cell]:
    """The run's cells with their deterministic ids (see the module docstring)."""
    rc = cfg.research
    assert rc is not None
    base = stable_hash({"task": cfg.task.model_dump(mode="json"),
                        "research": rc.model_dump(mode="json", exclude={"compressors", "arms"}),
                        "predictor": cfg.models.predictor.model_dump(mode="json"),
                        "generation": cfg.generation.model_dump(mode="json"),
                        "prompts": cfg.prompts.model_dump(mode="json"), "seed": cfg.seed,
                        "version": RESEARCH_VERSION})[:10]
    cells = []
    for arm in rc.arms:
        if arm == "compressor-predictor":
            for mc in compressor_configs(cfg):
                h = stable_hash(mc.model_dump(mode="json"))[:8]
                cells.append(Cell(f"research-{base}/{arm}/{h}", arm, mc, f"research-{base}-{h}"))
        else:
            cells.append(Cell(f"research-{base}/{arm}", arm, None, f"research-{base}"))
    return cells


def _agg(steps: list[dict[str, Any]]) -> tuple[Usage, float | None, float | None]:
    """One role's calls of an episode summed: usage (cached only when every call was), FLOPs, dollars."""
    u = Usage(sum(int(s["prompt_tokens"]) for s in steps), sum(int(s["completion_tokens"]) for s in steps),
              sum(float(s["seconds"]) for s in steps),
              bool(steps) and all(bool(s["payload"].get("cached")) for s in steps))
    fl = [s["flops"] for s in steps if s.get("flops") is not None]
    dl = [s["dollars"] for s in steps if s.get("dollars") is not None]
    return u, (sum(fl) if fl else None), (sum(dl) if dl else None)


def run_research(cfg: RunConfig, *, quiet: bool = False) -> dict[str, Any]:
    """Execute a research config (`harness run` dispatches here); returns the summary (also in the run folder)."""
    started: dict[str, Any] = {}
    try:
        return _run(cfg, quiet=quiet, started=started)
    except BaseException as e:
        if "store" in started:
            started["store"].finish_run(started["run_id"], "interrupted" if isinstance(e, KeyboardInterrupt)
                                        else "failed")
            started["store"].close()
        raise


def _run(cfg: RunConfig, *, quiet: bool, started: dict[str, Any]) -> dict[str, Any]:
    import sys

    from harness.backends.cache import ResponseCache
    from harness.backends.registry import make_backend
    from harness.cost import call_cost, model_meta
    from harness.metrics import score_prediction
    from harness.pipeline.run import _git_commit
    from harness.pipeline.stages import fit_request, params_from
    from harness.preflight import announce, check_models, check_outputs, load_samples
    from harness.records import GenParams
    from harness.research.driver import drive
    from harness.research.episode import Context, Trace, episode
    from harness.research.search import SampleSearch, SearchTool, research_corpus
    from harness.store import Store

    rc = cfg.research
    assert rc is not None
    t0 = time.time()
    stats0 = dict(STATS)
    if not cfg.output.store:
        raise UserError("output.store: a research run needs a results store (its traces and resumption live there); "
                        "set output.store")
    check_protocol(cfg)
    check_outputs(cfg, run_folder=True)
    cells = plan_cells(cfg)
    comps = {c.compressor.model: c.compressor for c in cells if c.compressor is not None}
    models = [("models.predictor", cfg.models.predictor)] + [
        (f"research.compressors[{i}]", mc) for i, mc in enumerate(comps.values())]
    if cfg.models.judge is not None:
        models.append(("models.judge", cfg.models.judge))
    if cfg.mi is not None and "scorer" in cfg.mi.scorers and cfg.models.scorer is not None:
        models.append(("models.scorer", cfg.models.scorer))  # the summaries' MI, scored by a proxy
    check_models(models)
    samples: list[Sample] = load_samples(cfg.task)
    search = None
    if {"compressor-predictor", "predictor-only"} & set(rc.arms):
        docs = research_corpus(rc.corpus, samples, retriever=rc.retriever, embedder=rc.embedder)
    announce(models)
    cache = ResponseCache(cfg.output.cache) if cfg.output.cache else None
    if {"compressor-predictor", "predictor-only"} & set(rc.arms):  # corpus sample: each sample its own tool
        search = SearchTool(docs, rc.retriever, rc.embedder, cache) if docs is not None else SampleSearch(
            rc.retriever, rc.embedder, cache)
    backends: dict[str, Any] = {"predictor": make_backend(cfg.models.predictor, field="models.predictor.model",
                                                          cache=cache)}
    for spec, mc in comps.items():
        backends[f"compressor:{spec}"] = make_backend(mc, field="research.compressors", cache=cache)
    role_cfg = {"predictor": cfg.models.predictor, **{f"compressor:{s}": mc for s, mc in comps.items()}}

    run_id = time.strftime("%Y%m%d-%H%M%S") + "-" + uuid.uuid4().hex[:6]
    out_dir = cfg.output_dir() / run_id
    out_dir.mkdir(parents=True, exist_ok=True)
    store = Store.open(cfg.output.store)
    store.start_run(run_id=run_id, name=cfg.name, config=cfg, git_commit=_git_commit())
    started.update(store=store, run_id=run_id)
    store.add_samples(cfg.task.name, samples)
    model_ids = {role: store.model_id(be.identity(), model_meta(role_cfg[role], be)) for role, be in backends.items()}
    knobs_base = {"research": rc.model_dump(mode="json", exclude={"compressors"}), "seed": cfg.seed,
                  "predictor_generation": cfg.generation.predictor.model_dump(),
                  "compressor_generation": cfg.generation.compressor.model_dump()}
    for c in cells:
        store.upsert_cell(cell_id=c.cell_id, run_id=run_id, task=cfg.task.name,
                          predictor_model_id=model_ids["predictor"], arm=c.arm,
                          compressor_model_id=model_ids[c.comp_key] if c.compressor is not None else None,
                          knobs={**knobs_base, "research_arm": c.arm, "knob_hash": c.knob_hash,
                                 "compressor": c.compressor.model if c.compressor else None})
    (out_dir / "run.json").write_text(json.dumps({"run_id": run_id, "config": cfg.model_dump(mode="json"),
                                                  "cells": [c.cell_id for c in cells]}, indent=2, default=str))
    trace_file = open(out_dir / "trace_steps.jsonl", "a")

    def cost(role: str, u: Usage) -> dict[str, Any]:
        """FLOPs of a call; dollars (`prices:`) for the predictor only: compressors are local models."""
        if role not in role_cfg:
            return {}
        c = call_cost(cfg, role_cfg[role], backends[role], u)
        return c if role == "predictor" else {**c, "dollars": None}

    def fit(role: str, build: Any, text: str) -> Any:
        return fit_request(backends[role], build, text, cfg.overflow)

    def sink(st: dict[str, Any]) -> None:
        role = st["role"]
        store.add_trace_step(cell_id=st["cell_id"], sample_id=st["sample_id"], step=st["step"], kind=st["kind"],
                             payload=st["payload"], round=st["round"], role=role.split(":")[0],
                             model_id=model_ids.get(role), prompt_tokens=st["prompt_tokens"],
                             completion_tokens=st["completion_tokens"], seconds=st["seconds"], flops=st["flops"],
                             dollars=st["dollars"], error=st["error"], run_id=run_id)
        trace_file.write(json.dumps(st, default=str) + "\n")
        trace_file.flush()

    plan_params = GenParams(max_new_tokens=rc.plan_max_new_tokens, temperature=0.0, seed=cfg.seed)
    ctx_kw = {"search": search, "prompts": cfg.prompts, "top_k": rc.top_k, "max_subqueries": rc.max_subqueries,
              "rounds": rc.rounds, "plan_params": plan_params,
              "answer_params": params_from(cfg.generation.predictor, cfg.seed),
              "compress_params": params_from(cfg.generation.compressor, cfg.seed), "fit": fit, "cost": cost,
              "protocol": rc.protocol}
    counts = {"skipped": 0, "reused_steps": 0, "episodes": 0}

    def finish(cell: Cell, s: Sample, tr: Trace, old_p: list[dict[str, Any]], out: Any) -> None:
        """Store a finished episode; `old_p`: the sample's predictions in the cell stored before this run."""
        cell.outcomes[s.id] = out
        counts["reused_steps"] += tr.reused
        comp_id = None
        comp_steps = [x for x in tr.steps if str(x["role"]).startswith("compressor")]
        if cell.compressor is not None and comp_steps:
            u, fl, dl = _agg(comp_steps)
            err = next((x["error"] for x in comp_steps if x.get("error")), None)
            key = {"compressor_model_id": model_ids[cell.comp_key], "task": cfg.task.name, "sample_id": s.id,
                   "knob_hash": cell.knob_hash, "sample_index": -1, "seed": cfg.seed}
            old = store.find_compression(**key)
            write_usage = old is None or (old.error is not None and err is None)
            comp_id = store.add_compression(
                **key, text=out.findings, n_tokens=u.completion_tokens, context_tokens=u.prompt_tokens,
                truncated=out.truncated, params={"kind": "research", "cell_id": cell.cell_id,
                                                 "subqueries": out.subqueries}, error=err, run_id=run_id,
                usage=u if write_usage else None, flops=fl, dollars=dl)
        u, fl, dl = _agg([x for x in tr.steps if x["role"] == "predictor"])
        write_usage = not old_p or (all(p["error"] is not None for p in old_p) and out.error is None)
        ans = out.answer
        pid = store.add_prediction(
            cell_id=cell.cell_id, sample_id=s.id, arm=cell.arm, text=ans.text if ans is not None else "",
            compression_id=comp_id, truncated=out.truncated, error=out.error,
            n_tokens=ans.usage.completion_tokens if ans is not None else None,
            finish_reason=ans.finish_reason if ans is not None else None, usage=u if write_usage else None,
            flops=fl, dollars=dl, prompt=out.answer_request.message_dicts() if out.answer_request else None)
        if out.error:
            store.add_error(run_id=run_id, stage=out.error_stage or "predict", message=out.error, ref_kind=cell.arm,
                            ref_id=cell.cell_id, sample_id=s.id)
        elif ans is not None and not (cfg.models.judge is not None and s.meta.get("needs_judge")):
            store.add_metric_result(pid, score_prediction(s, ans.text))
        elif ans is not None:
            judge_todo.append((pid, s, ans.text))
            judge_cell[pid] = cell

    judge_todo: list[tuple[int, Sample, str]] = []
    judge_cell: dict[int, Cell] = {}  # prediction id -> its cell (a judge error is tied to it)
    eps = []
    for c in cells:
        ctx = Context(arm=c.arm, compressor=c.comp_key, **ctx_kw)
        preds: dict[str, list[dict[str, Any]]] = {}  # the cell's stored rows, read once per cell, by sample
        for p in store.rows("predictions", cell_id=c.cell_id):
            preds.setdefault(p["sample_id"], []).append(p)
        steps: dict[str, list[dict[str, Any]]] = {}
        for r in store.trace(c.cell_id):
            steps.setdefault(r["sample_id"], []).append(r)
        scored = {int(r[0]) for r in store.query(
            "SELECT DISTINCT s.prediction_id FROM scores s JOIN predictions p ON p.prediction_id = s.prediction_id "
            "WHERE p.cell_id = ?", (c.cell_id,))[1]}
        for s in samples:
            done = [p for p in preds.get(s.id, []) if p["error"] is None]
            if done and int(done[0]["prediction_id"]) in scored:
                counts["skipped"] += 1
                continue
            tr = Trace(c.cell_id, s.id, {int(r["step"]): r for r in steps.get(s.id, [])}, sink)
            old = preds.get(s.id, [])
            counts["episodes"] += 1
            sctx = dataclasses.replace(ctx, search=search(s)) if isinstance(search, SampleSearch) else ctx
            eps.append((episode(sctx, s, tr), lambda out, c=c, s=s, tr=tr, old=old: finish(c, s, tr, old, out)))

    def on_batch(role: str, n: int) -> None:
        if not quiet:
            print(f"# {role}: {n} requests", file=sys.stderr)

    sent = drive(eps, backends, chunk=max(cfg.models.predictor.batch_size, 1) * 2, on_batch=on_batch)
    if judge_todo:
        _judge(cfg, cache, store, run_id, judge_todo, judge_cell)
    trace_file.close()
    mi_rows = _summaries_mi(cfg, cells, samples, search, store, run_id, backends, model_ids, cache, fit) \
        if cfg.mi is not None and search is not None else {}
    from harness.analyze.research import research_summary

    summary = research_summary(store.url, [c.cell_id for c in cells])
    summary.update(name=cfg.name, task=cfg.task.name, run_id=run_id, n_samples=len(samples), run_dir=str(out_dir),
                   requests=sent, **counts, wall_seconds=round(time.time() - t0, 2),
                   model_loads=STATS["model_loads"] - stats0.get("model_loads", 0),
                   model_calls=sum(STATS[k] - stats0.get(k, 0) for k in ("generate_requests", "score_requests")),
                   search_queries=search.searched if search is not None else 0, summaries_mi=mi_rows)
    (out_dir / "summary.json").write_text(json.dumps(summary, indent=2, default=str))
    (out_dir / "table.md").write_text(summary["table"])
    store.finish_run(run_id, "done")
    store.close()
    if cache is not None:
        cache.close()
    return summary


def _summaries_mi(cfg: RunConfig, cells: list[Cell], samples: list[Sample], search: Any, store: Any, run_id: str,
                  backends: dict[str, Any], model_ids: dict[str, int], cache: Any, fit: Any
                  ) -> dict[str, list[dict[str, Any]]]:
    """`mi:` in a research config: each compressor-predictor cell's summaries' I(X;Z|Q) over the subqueries its
    episodes share within a question group (`harness.research.mi`), per `mi.scorers` ("self": the compressor with
    exact ids; "scorer": `models.scorer`, a proxy). Returns cell id -> pooled rows."""
    from harness.backends.registry import make_backend
    from harness.cost import model_meta
    from harness.research.mi import research_mi
    from harness.research.search import SampleSearch

    assert cfg.mi is not None
    proxy = None
    if "scorer" in cfg.mi.scorers and cfg.models.scorer is not None:
        be = make_backend(cfg.models.scorer, field="models.scorer.model", cache=cache)
        proxy = ("scorer", be, store.model_id(be.identity(), model_meta(cfg.models.scorer, be)))
    out: dict[str, list[dict[str, Any]]] = {}
    try:
        for c in cells:
            if c.arm != "compressor-predictor" or c.compressor is None:
                continue
            comp = backends[c.comp_key]
            scorers = ([("self", comp, model_ids[c.comp_key])] if "self" in cfg.mi.scorers else []) + (
                [proxy] if proxy is not None else [])
            out[c.cell_id] = research_mi(
                cfg, c, samples, search if isinstance(search, SampleSearch) else (lambda _s: search), store, run_id,
                comp, model_ids[c.comp_key], scorers, lambda build, text, c=c: fit(c.comp_key, build, text))
    finally:
        if proxy is not None:
            proxy[1].close()
    return out


def _judge(cfg: RunConfig, cache: Any, store: Any, run_id: str, todo: list[tuple[int, Sample, str]],
           cells: dict[int, Cell]) -> None:
    """Score free-text answers of samples marked `needs_judge` with the judge role. Each call's usage is stored
    under the judge's model (call kind judge, with its FLOPs and its dollars from `prices:`); a failed call is an
    error of stage score tied to the answer's cell (`cells`: prediction id -> cell), never a verdict."""
    from harness.backends.registry import make_backend
    from harness.cost import call_cost, model_meta
    from harness.pipeline.stages import judge_predictions

    mj = cfg.models.judge
    assert mj is not None
    be = make_backend(mj, field="models.judge.model", cache=cache)
    model_id = store.model_id(be.identity(), model_meta(mj, be))

    def usage(pid: int, u: Usage) -> None:
        c = call_cost(cfg, mj, be, u)
        store.add_usage(call_kind="judge", ref_id=pid, model_id=model_id, prompt_tokens=u.prompt_tokens,
                        completion_tokens=u.completion_tokens, seconds=u.seconds, cached=u.cached,
                        flops=c.get("flops"), dollars=c.get("dollars"), run_id=run_id, call_id=uuid.uuid4().hex)

    def error(pid: int, s: Sample, msg: str) -> None:
        c = cells[pid]
        store.add_error(run_id=run_id, stage="score", message=msg, ref_kind=c.arm, ref_id=c.cell_id, sample_id=s.id)

    try:
        judge_predictions(be, cfg.seed, todo, store.add_metric_result, error, on_usage=usage)
    finally:
        be.close()
