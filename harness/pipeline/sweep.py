"""`harness sweep`: a grid of cells run stage by stage, grouped by model, resumable from the results store.

The results store is the source of truth. Before any request is sent the sweep looks its row up by natural key
(compression: compressor × task × sample × knob hash × sample number × seed; prediction: cell × sample ×
compression × arm), so a rerun after a crash or `kill -9` redoes only unfinished work, and rows are never
duplicated. Stored errors are kept (not retried) unless `retry_errors` is set.

Stages: (1) every compressor in turn compresses all its samples and scores its own compressions for MI,
(2) the common proxy scorer scores every compressor's samples, (3) every predictor in turn predicts all its
cells, (4) predictions are scored (by the judge model, for samples that need one). One model is in memory at a
time; each is loaded at most once per stage. A compression is made once and read by every predictor and by the MI
estimator.

`harness run` is a one-cell-per-arm plan (`plan.expand_run`) through this same engine (`Sweep(..., plan=...)`):
its cells are new each run, stored errors are retried, and every failure also goes to the run's errors table.
"""

from __future__ import annotations

import os
import signal
import sys
import time
from collections import Counter
from typing import Any

from harness.backends.base import STATS
from harness.backends.registry import make_backend
from harness.compressors import CompressInput, Compressor, LMCompressor, make_compressor
from harness.compressors.filters import filter_scorer_config
from harness.compressors.ib import store_terms
from harness.compressors.lm import lm_ib_scorer
from harness.config import LM_BACKENDS, ModelConfig, RunConfig
from harness.cost import model_meta
from harness.errors import UserError
from harness.pipeline.compress import CompKey, CompressOutput, run_compress_jobs
from harness.pipeline.mi_stage import mi_stage
from harness.pipeline.plan import (
    Cell,
    CompressUnit,
    Plan,
    adopt_legacy_mi,
    check_plan_retrieval,
    compression_variants,
    draws_per_context,
    expand,
    model_key_fields,
    plan_models,
    read_key,
    read_variant,
    sampling_params,
    task_samples,
)
from harness.pipeline.record import store_mi_row
from harness.pipeline.sinks import ErrorRecord, PredictionRecord, ScoreRecord
from harness.pipeline.stages import (
    Item,
    add_usage,
    judge_predictions,
    params_from,
    predict_request,
    progress_bar,
    prompt_json,
    run_generation_stage,
)
from harness.preflight import announce, check_models, check_outputs, load_samples
from harness.records import Generation, GenParams, GenRequest, Sample, Usage
from harness.store.lease import Leases
from harness.store.store import knob_hash

#: crash points for the crash-safety tests: HARNESS_CRASH_AT=compress:N | predict:N | stage:NAME sends this
#: process SIGKILL after the N-th stored compression/prediction, or when stage NAME begins.
CRASH_ENV = "HARNESS_CRASH_AT"


def _crash(point: str, count: int | None = None) -> None:
    spec = os.environ.get(CRASH_ENV)
    if not spec:
        return
    name, _, arg = spec.partition(":")
    if (name == "stage" and point == f"stage:{arg}") or (name == point and count is not None and str(count) == arg):
        os.kill(os.getpid(), signal.SIGKILL)


class _MIWriter:
    """Adapter: the MI stage's rows go to the store under the sweep's run, with the unit's knob hash."""

    def __init__(self, store: Any, run_id: str, task: str, compressor_id: int, scorer_id: int, khash: str):
        self.store, self.run_id, self.task = store, run_id, task
        self.compressor_id, self.scorer_id, self.khash = compressor_id, scorer_id, khash

    def mi(self, row: dict[str, Any]) -> None:
        store_mi_row(self.store, self.run_id, self.task, self.compressor_id, self.scorer_id, row, self.khash)


class Sweep:
    """Executes a plan against a results store; see the module docstring.

    plan: a plan made elsewhere (`harness run`'s `plan.expand_run`; default: `plan.expand(cfg)`, a sweep);
    store_url: the results store (default `output.store`); models: (config field, config) of every model, for
    the checks' messages (default `plan.plan_models`). A run's plan (`per_run`) retries stored errors, keeps each
    failure in the run's errors table, and leaves a failed compression's samples without a prediction row.
    """

    def __init__(self, cfg: RunConfig, *, retry_errors: bool = False, quiet: bool = False, plan: Plan | None = None,
                 store_url: str | None = None, models: list[tuple[str, ModelConfig]] | None = None):
        from harness.backends.cache import ResponseCache
        from harness.store import Store

        store_url = store_url or cfg.output.store
        if not store_url:
            raise UserError("output.store: a sweep needs a results store (a SQLite path or postgresql:// URL)")
        self.cfg = cfg
        self.per_run = plan is not None
        self.plan = plan if plan is not None else expand(cfg)
        self.retry = retry_errors or self.per_run
        self.quiet = quiet
        # every check before any file is created: a bad config leaves no empty store or cache behind
        check_outputs(cfg, run_folder=self.per_run)
        models = models if models is not None else self._models()
        self.fields = {self._mkey(mc): f for f, mc in models}
        check_models(models)
        check_plan_retrieval(self.plan)
        # the task's samples as loaded (stored), and the ones the stages read (retrieved where a cell says so)
        self.task_samples: dict[str, list[Sample]] = {tk: load_samples(t) for tk, t in self.plan.tasks.items()}
        announce(models)
        self.cache = ResponseCache(cfg.output.cache) if cfg.output.cache else None
        self.samples: dict[str, list[Sample]] = {tk: task_samples(self.plan, tk, ss, self.cache)
                                                 for tk, ss in self.task_samples.items()}
        self.store = Store.open(store_url)
        self.model_ids: dict[str, int] = {}
        self.identities: dict[str, Any] = {}  # model key -> its ModelIdentity
        self.backends: dict[str, Any] = {}
        self.counts: Counter[str] = Counter()
        self.leases: Leases | None = None
        # calls per role (calls, tokens, seconds, cached), a stored compression read again counted as cached
        self.usage: dict[str, dict[str, float]] = {"compressor": {}, "predictor": {}}
        self.mi_results: list[dict[str, Any]] = []  # the pooled row of every MI estimate made, in order

    # ---- models ----
    def _models(self) -> list[tuple[str, ModelConfig]]:
        """(field, config) of every distinct model the plan uses."""
        return plan_models(self.plan)

    @staticmethod
    def _mkey(mc: ModelConfig) -> str:
        if mc.options and mc.backend in LM_BACKENDS:  # an LM compressor's options shape its prompt, not its backend
            mc = mc.model_copy(update={"options": {}})
        return knob_hash(model_key_fields(mc))

    def _backend(self, mc: ModelConfig, field: str) -> Any:
        """The backend of a model (lazy), or for a compressor that is not an LM (python/, filter/) the compressor."""
        k = self._mkey(mc)
        field = self.fields.get(k, field)
        if k not in self.backends:
            if mc.backend in LM_BACKENDS:
                self.backends[k] = make_backend(mc, field=field, cache=self.cache)
            else:  # a filter scores IB terms with the one scorer backend all filters share
                sb = self._filter_scorer() if mc.backend == "filter" else None
                self.backends[k] = make_compressor(self.cfg, mc, field=field, cache=self.cache, scorer_backend=sb)
        return self.backends[k]

    def _filter_scorer(self) -> Any:
        """The filters' IB scorer backend (`models.scorer` in float32, lazy; None without a scorer): one for every
        filter setting, kept in the backend cache until the compress stage ends."""
        sc = filter_scorer_config(self.cfg)
        return None if sc is None else self._backend(sc, "models.scorer.model")

    def _compressor(self, u: CompressUnit) -> Compressor:
        """The compressor of a unit: its model's backend with the unit's prompt, or a python/ or filter/ one."""
        obj = self._backend(u.compressor, "sweep.compressors")
        if u.compressor.backend not in LM_BACKENDS:
            return obj
        rc = u.cfg
        ib = lm_ib_scorer(rc, u.compressor, obj, scorer_backend=self._filter_scorer()) \
            if u.compressor.options.get("ib_terms") else None  # IB terms of an LM's compressions (issue #13)
        return LMCompressor(u.compressor.model, obj, rc.prompts.compressor, params_from(rc.generation.compressor,
                                                                                         rc.seed),
                            options=u.compressor.options, ib=ib, field="sweep.compressors")

    def _model_id(self, mc: ModelConfig, field: str) -> int:
        k = self._mkey(mc)
        if k not in self.model_ids:
            be = self._backend(mc, field)
            self.identities[k] = be.identity()
            self.model_ids[k] = self.store.model_id(self.identities[k], model_meta(mc, be))
        return self.model_ids[k]

    def _release(self, mc: ModelConfig) -> None:
        be = self.backends.pop(self._mkey(mc), None)
        if be is not None:
            be.close()

    # ---- driver ----
    def run(self) -> dict[str, Any]:
        from harness.pipeline.run import _git_commit

        t0 = time.time()
        stats0 = dict(STATS)
        p = self.plan
        self.store.start_run(run_id=p.run_id, name=p.name, config=self.cfg, git_commit=_git_commit())
        try:
            self._start()
            self.leases = self.store.leases(p.run_id)  # several workers on this store split the stages' units
            self.compress_stage()
            _crash("stage:mi")
            self.proxy_mi_stage()
            _crash("stage:predict")
            self.predict_stage()
            _crash("stage:score")
            self.score_stage()
        except KeyboardInterrupt:
            self.store.finish_run(p.run_id, "interrupted")
            raise
        except BaseException:
            self.store.finish_run(p.run_id, "failed")
            raise
        finally:
            for be in self.backends.values():
                be.close()
            self.backends.clear()
            if self.leases is not None:
                self.leases.close()  # unfinished units go back to the other workers at once
        self.store.finish_run(p.run_id, "done")
        out = {
            "name": p.name, "run_id": p.run_id, "cells": len(p.cells), "units": len(p.units),
            "wall_seconds": round(time.time() - t0, 2),
            "model_loads": STATS["model_loads"] - stats0.get("model_loads", 0),
            "generate_requests": STATS["generate_requests"] - stats0.get("generate_requests", 0),
            "score_requests": STATS["score_requests"] - stats0.get("score_requests", 0),
            "new_rows": dict(self.counts), "store": self.store.url, "usage": self.usage,
        }
        return out

    def _start(self) -> None:
        """Store the plan's samples and cells (their models registered)."""
        p = self.plan
        for tk, t in p.tasks.items():
            self.store.add_samples(t.name, self.task_samples[tk])
        if not self.per_run:  # MI rows an older sweep stored before M and N were in their key are kept
            adopt_legacy_mi(p, self.store, self.samples, lambda mc: self._model_id(mc, "sweep.compressors"))
        for c in p.cells.values():
            mc = c.cfg.models.compressor
            self.store.upsert_cell(
                cell_id=c.cell_id, run_id=p.run_id, task=c.cfg.task.name, arm=c.arm,
                predictor_model_id=self._model_id(c.cfg.models.predictor, "sweep.predictors"),
                compressor_model_id=self._model_id(mc, "sweep.compressors") if c.unit and mc else None,
                knobs={**c.knobs, "knob_hash": p.units[c.unit].mi_hash if c.unit else None},
            )

    def close(self) -> None:
        self.store.close()
        if self.cache is not None:
            self.cache.close()

    # ---- stage 1: compress (and MI scored by the compressor itself) ----
    def _variants(self, rc: RunConfig, sample_id: str) -> list[tuple[str, int, Any]]:
        return [(v.kind, v.index, v.params) for v in compression_variants(rc, sample_id)]

    def _stored_ok(self, row: Any) -> bool:
        return row is not None and (row.error is None or not self.retry)

    def compress_stage(self) -> None:
        # one lease per set of units sharing their compressions (compressor, task, knob hash), in model order
        groups: dict[str, list[CompressUnit]] = {}
        for u in sorted(self.plan.units.values(), key=lambda u: self._mkey(u.compressor)):
            groups.setdefault(f"{self._mkey(u.compressor)}:{u.cfg.task.name}:{u.knob_hash}", []).append(u)
        loaded: ModelConfig | None = None
        for _, units in self._claimed("compress", list(groups.items()), lambda kv: kv[0]):
            mc = units[0].compressor
            loaded = self._switch(loaded, mc)
            mid = self._model_id(mc, "sweep.compressors")
            jobs: list[tuple[Any, Compressor, CompressInput, GenParams]] = []
            seen: set[tuple[Any, ...]] = set()  # units that differ only in M or N share compressions: ask once
            for u in units:
                rc = u.cfg
                comp = self._compressor(u)
                for s in self.samples[u.task_key]:
                    todo = []
                    for kind, j, prm in self._variants(rc, s.id):
                        if (rc.task.name, u.knob_hash, s.id, j, prm.seed) in seen:
                            continue
                        seen.add((rc.task.name, u.knob_hash, s.id, j, prm.seed))
                        row = self.store.find_compression(compressor_model_id=mid, task=rc.task.name, sample_id=s.id,
                                                          knob_hash=u.knob_hash, sample_index=j, seed=prm.seed)
                        if self._stored_ok(row):  # read again, no call: its usage counts as cached
                            add_usage(self.usage["compressor"], row.to_generation().usage)
                        else:
                            todo.append((kind, j, prm))
                    if not todo:
                        continue
                    ctx_tokens = comp.count_tokens(s.context)
                    inp, err = comp.prepare(s, rc.overflow)
                    trunc = inp is not None and inp.truncated
                    prompt = None if inp is None else prompt_json(inp)
                    for kind, j, prm in todo:
                        meta = (u, s, kind, j, prm.seed, ctx_tokens, trunc, prompt)
                        if err or inp is None:
                            self._store_compression(mid, meta, None, err or "the compressor could not take this sample")
                        else:
                            jobs.append((meta, comp, inp, prm))

            def done(meta: tuple[Any, ...], g: Generation, mid: int = mid) -> None:
                self._store_compression(mid, meta, g, g.error)

            with progress_bar(len(jobs), f"compress {mc.model}", self.quiet) as bar:
                run_compress_jobs(jobs, done, max(mc.batch_size, 1) * 2, progress=bar)
            for u in units:
                if u.cfg.mi is not None and "self" in u.cfg.mi.scorers:  # an LM: python/ compressors cannot score
                    self._mi(u, self._compressor(u).scorer, "self", mid)
            for c in self.plan.cells.values():
                if c.unit in {u.key for u in units}:
                    self.store.set_cell_status(c.cell_id, "compress", "done")
        self._switch(loaded, None)
        if (sc := filter_scorer_config(self.cfg)) is not None:
            self._release(sc)  # the filters' shared IB scorer

    # ---- leases: workers on one store split each stage's units ----
    def _claimed(self, stage: str, items: list[Any], key: Any) -> Any:
        """The items of `stage` this worker leased (see harness.store.lease); returns when all are done."""
        said: list[int] = []

        def on_wait(n: int) -> None:
            if not self.quiet and not said:
                print(f"{stage}: waiting for {n} unit(s) leased by other workers", file=sys.stderr)
            said.append(n)

        assert self.leases is not None
        return self.leases.each(stage, items, key, on_wait)

    def _switch(self, loaded: ModelConfig | None, mc: ModelConfig | None) -> ModelConfig | None:
        """Release the loaded model when the next unit needs another (one model in memory at a time)."""
        if loaded is not None and (mc is None or self._mkey(loaded) != self._mkey(mc)):
            self._release(loaded)
        return mc

    def _store_compression(self, mid: int, meta: tuple[Any, ...], g: Generation | None, err: str | None) -> None:
        """The one place the engine stores a compression (made, or failed), with the prompt its compressor got."""
        u, s, kind, j, seed, ctx_tokens, trunc, prompt = meta
        cid = self.store.add_compression(
            compressor_model_id=mid, task=u.cfg.task.name, sample_id=s.id, knob_hash=u.knob_hash,
            text=g.text if g else "", sample_index=j, seed=seed, token_ids=g.token_ids if g else None,
            n_tokens=(len(g.token_ids) or g.usage.completion_tokens) if g and not err else None,
            context_tokens=ctx_tokens, truncated=trunc, finish_reason=g.finish_reason if g else None,
            params={"kind": kind}, error=err, run_id=self.plan.run_id, usage=g.usage if g else None,
            prompt=prompt, **self._cost(u.compressor, g),
        )
        if g is not None:
            add_usage(self.usage["compressor"], g.usage)
        if err and self.per_run:  # kept per run, whatever later runs store for this compression
            read = (kind, j) == read_key(u.cfg)  # the compression the predictor would read
            self.store.add_error(run_id=self.plan.run_id, stage="compress", message=err,
                                 ref_kind="compression" if read else "mi_sample", ref_id=f"{kind}:{j}",
                                 sample_id=s.id)
        store_terms(self.store, cid, g, self.plan.run_id)  # issue #13: a filter compression's IB terms, if any
        self.counts["compressions"] += 1
        _crash("compress", self.counts["compressions"])

    def _cost(self, mc: ModelConfig, g: Any) -> dict[str, float | None]:
        """FLOPs and dollars of one call (actual: a cached call is free)."""
        if g is None:
            return {"flops": None, "dollars": None}
        from harness.cost import call_cost

        return call_cost(self.cfg, mc, self.backends.get(self._mkey(mc)), g.usage)

    def _comp_output(self, u: CompressUnit, mid: int) -> CompressOutput:
        rc = u.cfg
        assert rc.mi is not None
        out = CompressOutput({}, {}, {}, {}, "sample")
        for idx, s in enumerate(self.samples[u.task_key]):
            for j in range(draws_per_context(rc)):
                row = self.store.find_compression(compressor_model_id=mid, task=rc.task.name, sample_id=s.id,
                                                  knob_hash=u.knob_hash, sample_index=j,
                                                  seed=sampling_params(rc, s.id, j).seed)
                if row is not None:
                    out.results[CompKey(idx, "sample", j)] = row.to_generation()
        return out

    def _mi(self, u: CompressUnit, be: Any, label: str, scorer_id: int) -> None:
        rc = u.cfg
        assert rc.mi is not None and rc.models.compressor is not None
        cmid = self._model_id(rc.models.compressor, "sweep.compressors")
        done = self.store.rows("mi_estimates", run_id=self.plan.run_id, task=rc.task.name, group_id="",
                               compressor_model_id=cmid, scorer_model_id=scorer_id, knob_hash=u.mi_hash,
                               mode=rc.mi.mode)
        if done and (done[0]["error"] is None or not self.retry):
            return
        comp_ident = self._backend(rc.models.compressor, "sweep.compressors").identity()
        writer = _MIWriter(self.store, self.plan.run_id, rc.task.name, cmid, scorer_id, u.mi_hash)
        self.mi_results.append(mi_stage(rc, be, label, comp_ident, self.samples[u.task_key],
                                        self._comp_output(u, cmid), writer, quiet=self.quiet))
        self.counts["mi_estimates"] += 1

    # ---- stage 2: the common proxy scorer ----
    def proxy_mi_stage(self) -> None:
        units = [u for u in self.plan.units.values()
                 if u.cfg.mi is not None and "scorer" in u.cfg.mi.scorers and u.cfg.models.scorer is not None]
        units.sort(key=lambda u: self._mkey(u.cfg.models.scorer))  # type: ignore[arg-type]
        loaded: ModelConfig | None = None
        for u in self._claimed("mi", units, lambda u: f"{u.key}:{self._mkey(u.cfg.models.scorer)}"):
            sc = u.cfg.models.scorer
            assert sc is not None
            loaded = self._switch(loaded, sc)
            be = self._backend(sc, "models.scorer")
            sid = self._model_id(sc, "models.scorer")
            self._mi(u, be, sc.model, sid)
        self._switch(loaded, None)

    # ---- stage 3: predict ----
    def _compression_for(self, c: Cell, s: Sample) -> tuple[str | None, int | None, str | None]:
        """(summary, compression_id, error) that the compressed arm's predictor reads for one sample."""
        rc = c.cfg
        u = self.plan.units[c.unit or ""]
        mid = self._model_id(u.compressor, "sweep.compressors")
        v = read_variant(rc, s.id)
        row = self.store.find_compression(compressor_model_id=mid, task=rc.task.name, sample_id=s.id,
                                          knob_hash=u.knob_hash, sample_index=v.index, seed=v.seed)
        if row is None:
            return None, None, "compression missing (the compress stage did not finish)"
        if row.error:
            return None, row.compression_id, f"compression failed: {row.error}"
        return row.text, row.compression_id, None

    def _finished(self, c: Cell, s: Sample, comp_id: int | None) -> bool:
        found = self.store.find_prediction(cell_id=c.cell_id, sample_id=s.id, arm=c.arm, compression_id=comp_id)
        if not self._stored_ok(found):
            return False
        if s.answer_type == "continuation" and found is not None and found.error is None:
            return self.store.count("scores", prediction_id=found.prediction_id) > 0  # scored in this stage
        return True

    def predict_stage(self) -> None:
        from harness.pipeline.distortion import score_continuations

        by_model: dict[str, list[Cell]] = {}
        for c in self.plan.cells.values():
            by_model.setdefault(self._mkey(c.cfg.models.predictor), []).append(c)
        loaded: ModelConfig | None = None
        for cell in self._claimed("predict", [c for cs in by_model.values() for c in cs], lambda c: c.cell_id):
            cells = [cell]  # one lease per cell, in predictor order
            mp = cell.cfg.models.predictor
            loaded = self._switch(loaded, mp)
            be = self._backend(mp, "sweep.predictors")
            jobs: list[tuple[tuple[Any, ...], GenRequest]] = []
            continuations: list[tuple[Cell, list[Item]]] = []
            for c in cells:
                rc = c.cfg
                pparams = params_from(rc.generation.predictor, rc.seed)
                items: list[Item] = []
                for s in self.samples[c.task_key]:
                    summary, comp_id, err = self._compression_for(c, s) if c.arm == "compressed" else (None, None, None)
                    if self._finished(c, s, comp_id):
                        continue
                    if err and self.per_run and comp_id is not None:
                        continue  # a run keeps a failed compression in its errors table (compress stage), no row here
                    if err:
                        self._store_prediction((c, s, comp_id, False, None), None, err)
                        continue
                    if s.answer_type == "continuation":
                        items.append(Item(s, c.arm, compression=_text_generation(summary), extra={"comp_id": comp_id}))
                        continue
                    req, trunc, ferr = predict_request(be, rc.prompts, rc.overflow, c.arm, s, summary, pparams)
                    if ferr:
                        self._store_prediction((c, s, comp_id, False, None), None, ferr)
                    else:
                        assert req is not None
                        jobs.append(((c, s, comp_id, trunc, prompt_json(req)), req))
                if items:
                    continuations.append((c, items))

            def done(meta: tuple[Any, ...], g: Generation) -> None:
                self._store_prediction(meta, g, g.error)

            n_cont = sum(len(its) for _, its in continuations)
            with progress_bar(len(jobs) + n_cont, f"predict {mp.model}", self.quiet) as bar:
                run_generation_stage(be, jobs, done, chunk=max(mp.batch_size, 1) * 2, progress=bar)
                for c, its in continuations:
                    score_continuations(be, its, c.cfg, _ContinuationWriter(self, c, its), {}, progress=bar)
            for c in cells:
                self.store.set_cell_status(c.cell_id, "predict", "done")
        self._switch(loaded, None)

    def _store_prediction(self, meta: tuple[Any, ...], g: Generation | None, err: str | None) -> int:
        """The one place the engine stores a prediction (made, or failed), with the prompt its predictor got."""
        c, s, comp_id, trunc, prompt = meta
        pid = self.store.add_prediction(
            cell_id=c.cell_id, sample_id=s.id, arm=c.arm, text=g.text if g else "", compression_id=comp_id,
            truncated=trunc, error=err, n_tokens=(len(g.token_ids) or g.usage.completion_tokens) if g else None,
            finish_reason=g.finish_reason if g else None, usage=g.usage if g else None, prompt=prompt,
            **self._cost(c.cfg.models.predictor, g),
        )
        if g is not None:
            add_usage(self.usage["predictor"], g.usage)
        if err:
            self._log_error(c, s, "predict", err)
        self.counts["predictions"] += 1
        _crash("predict", self.counts["predictions"])
        return pid

    def _log_error(self, c: Cell, s: Sample, stage: str, err: str) -> None:
        """A run's failure of one sample in one cell, kept in the run's errors table (sweeps keep it on the row)."""
        if self.per_run:
            self.store.add_error(run_id=self.plan.run_id, stage=stage, message=err, ref_kind=c.arm, ref_id=c.cell_id,
                                 sample_id=s.id)

    # ---- stage 4: score (a judge model for the samples that need one) ----
    def score_stage(self) -> None:
        from harness.metrics import score_prediction

        loaded: ModelConfig | None = None
        for c in self._claimed("score", list(self.plan.cells.values()), lambda c: c.cell_id):
            by_id = {s.id: s for s in self.samples[c.task_key]}
            _, rows = self.store.query(
                "SELECT p.prediction_id, p.sample_id, p.text FROM predictions p "
                "LEFT JOIN scores s ON s.prediction_id = p.prediction_id "
                "WHERE p.cell_id = ? AND p.error IS NULL AND s.score_id IS NULL ORDER BY p.prediction_id",
                (c.cell_id,),
            )
            judged: list[tuple[int, Sample, str]] = []
            for pid, sid, text in rows:
                s = by_id[sid]
                if s.answer_type == "continuation":
                    continue  # scored (bits per byte) in the predict stage; redone there if unfinished
                if c.cfg.models.judge is not None and s.meta.get("needs_judge"):
                    judged.append((int(pid), s, text))
                    continue
                self._store_score(int(pid), score_prediction(s, text))
            if judged:
                loaded = self._switch(loaded, c.cfg.models.judge)
                self._judge(c, judged)
            self.store.set_cell_status(c.cell_id, "score", "done")
        self._switch(loaded, None)

    def _store_score(self, pid: int, sc: Any) -> None:
        self.store.add_score(prediction_id=pid, metric=sc.name, value=sc.value, correct=sc.correct, parsed=sc.parsed,
                             flags=list(sc.flags), detail=sc.extra or None)
        self.counts["scores"] += 1

    def _judge(self, c: Cell, todo: list[tuple[int, Sample, str]]) -> None:
        """Judge one cell's predictions with its `judge` model (greedy, 8 tokens).

        The rubric is fixed and versioned (`harness.metrics.JUDGE_RUBRIC_VERSION`); the raw output and the verdict
        are stored with the score. A failed judge call is an error for that sample (no score), never a verdict.
        """
        mj = c.cfg.models.judge
        assert mj is not None
        be = self._backend(mj, "models.judge")
        usage = self.usage.setdefault("judge", {})
        with progress_bar(len(todo), f"judge {mj.model}", self.quiet) as bar:
            judge_predictions(be, c.cfg.seed, todo, self._store_score,
                              lambda _pid, s, msg: self._log_error(c, s, "score", msg),
                              on_usage=lambda _pid, u: add_usage(usage, u), chunk=max(mj.batch_size, 1) * 2,
                              progress=bar)


def _text_generation(text: str | None) -> Generation | None:
    return None if text is None else Generation(text=text, token_ids=[], logprobs=None, usage=Usage())


class _ContinuationWriter:
    """Adapter: the distortion stage's prediction, score and error rows go to the store under a sweep cell."""

    def __init__(self, sweep: Sweep, cell: Cell, items: list[Item]):
        self.sweep, self.cell = sweep, cell
        self.samples = {it.sample.id: it.sample for it in items}
        self.comp_ids = {it.sample.id: it.extra.get("comp_id") for it in items}
        self.pred_ids: dict[str, int] = {}

    def prediction(self, r: PredictionRecord) -> None:
        s, comp_id = self.samples[r.sample_id], self.comp_ids[r.sample_id]
        g = Generation(text="", token_ids=[], logprobs=None, usage=r.usage, finish_reason="score-reference")
        self.pred_ids[r.sample_id] = self.sweep._store_prediction((self.cell, s, comp_id, r.truncated, r.prompt), g,
                                                                  r.error)

    def score(self, r: ScoreRecord) -> None:
        sc = r.score
        self.sweep.store.add_score(prediction_id=self.pred_ids[r.sample_id], metric=sc.name, value=sc.value,
                                   correct=sc.correct, parsed=sc.parsed, flags=list(sc.flags), detail=sc.extra)
        self.sweep.counts["scores"] += 1

    def error(self, r: ErrorRecord) -> None:
        s, comp_id = self.samples[r.sample_id], self.comp_ids[r.sample_id]
        if r.sample_id not in self.pred_ids:  # failed before any call: the error is the prediction row
            self.pred_ids[r.sample_id] = self.sweep._store_prediction((self.cell, s, comp_id, False, None), None,
                                                                      r.error)
        else:
            self.sweep._log_error(self.cell, s, r.stage, r.error)


def cell_table(store: Any, run_id: str) -> str:
    """Per-cell markdown table from the store, by the one cell summariser (`harness.analyze.frames.cell_frame`):
    n samples, accuracy with its Wilson 95% CI over the answered ones, errors, summary tokens, token_ratio."""
    from harness.analyze.frames import cell_frame
    from harness.analyze.render import fmt, fmt_accuracy, md_table
    from harness.results import load_store

    cells, _, _ = cell_frame(load_store(store), run_id)
    cells = cells[cells["samples"] > 0].sort_values("cell_id")
    rows = [[str(c["cell_id"]), str(c["samples"]), fmt_accuracy(c), str(c["errors"]), fmt(c["summary_tokens"], ".1f"),
             fmt(c["token_ratio"], ".3f")] for _, c in cells.iterrows()]
    return md_table(["cell", "n", "accuracy [95% CI]", "errors", "summary_tok", "token_ratio"], rows) + "\n"


def run_sweep(cfg: RunConfig, *, retry_errors: bool = False, quiet: bool = False) -> dict[str, Any]:
    """Run (or resume) a sweep; returns a summary with the per-cell table."""
    sw = Sweep(cfg, retry_errors=retry_errors, quiet=quiet)
    try:
        out = sw.run()
        out["table"] = cell_table(sw.store, sw.plan.run_id)
        _, rows = sw.store.query(
            "SELECT COUNT(*), COUNT(p.error), MIN(p.error) FROM predictions p JOIN cells c ON c.cell_id = p.cell_id "
            "WHERE c.run_id = ?", (sw.plan.run_id,))
        n, n_err, first = rows[0]
        out["predictions"] = {"total": int(n or 0), "errors": int(n_err or 0), "first_error": first}
    finally:
        sw.close()
    return out
