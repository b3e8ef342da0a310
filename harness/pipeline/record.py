"""Where a run's rows go as work finishes: JSONL files in the run folder and the results store."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from harness.compressors.ib import store_terms
from harness.pipeline.plan import GREEDY_INDEX
from harness.pipeline.sinks import CompressionRecord, ErrorRecord, PredictionRecord, ScoreRecord, sample_json
from harness.records import Generation, ModelIdentity, Sample, Usage


class Recorder:
    """Append-only JSONL files (flushed per row) mirrored into the results store, row by row.

    A `harness.pipeline.sinks.Sink`: one typed method per record; each store write is one transaction; ids that
    link rows (compression → prediction → score) are kept here so later rows can point at earlier ones.
    """

    def __init__(self, folder: Path, store: Any = None, run_id: str = "", task: str = ""):
        self.folder = folder
        folder.mkdir(parents=True, exist_ok=True)
        self._files: dict[str, Any] = {}
        self.store = store
        self.run_id = run_id
        self.task = task
        self.models: dict[str, int] = {}  # role -> model_id
        self.cells: dict[str, str] = {}  # arm -> cell_id
        self.comp_ids: dict[tuple[str, str, int], int] = {}  # (sample_id, kind, j) -> compression_id
        self.pred_ids: dict[tuple[str, str], int] = {}  # (sample_id, arm) -> prediction_id
        self.reads: tuple[str, int] = ("greedy", GREEDY_INDEX)  # (kind, j) the predictor reads: plan.read_key
        self.cost: Any = None  # (role, Usage) -> {"flops": ..., "dollars": ...} of one call, as if uncached

    def _cost(self, role: str, usage: Usage) -> dict[str, Any]:
        return self.cost(role, usage) if self.cost is not None else {}

    def model(self, role: str, identity: ModelIdentity, meta: dict[str, Any] | None = None) -> None:
        if self.store is not None:
            self.models[role] = self.store.model_id(identity, meta)

    def cell(self, arm: str, knobs: dict[str, Any]) -> None:
        if self.store is None:
            return
        cid = f"{self.run_id}/{arm}"
        self.cells[arm] = self.store.upsert_cell(
            cell_id=cid,
            run_id=self.run_id,
            task=self.task,
            predictor_model_id=self.models["predictor"],
            arm=arm,
            compressor_model_id=self.models.get("compressor") if arm == "compressed" else None,
            knobs=knobs,
        )

    def _jsonl(self, kind: str, row: dict[str, Any]) -> None:
        f = self._files.get(kind)
        if f is None:
            f = self._files[kind] = open(self.folder / f"{kind}.jsonl", "a")
        f.write(json.dumps(row, default=str) + "\n")
        f.flush()

    def stored_compression(self, sample_id: str, kind: str, j: int, seed: int, knob_hash: str) -> Generation | None:
        """The error-free compression the store holds for this key (its id remembered for the predictions), or None.

        `j` is the store's sample_index: GREEDY_INDEX (-1) for the greedy compression, j for sampled ones.
        """
        if self.store is None or "compressor" not in self.models:
            return None
        row = self.store.find_compression(compressor_model_id=self.models["compressor"], task=self.task,
                                          sample_id=sample_id, knob_hash=knob_hash,
                                          sample_index=j, seed=seed)
        if row is None or row.error is not None:
            return None
        self.comp_ids[(sample_id, kind, j)] = row.compression_id
        return row.to_generation()

    # ---- the Sink: each record to its JSONL file, then to the store ----
    def sample(self, s: Sample) -> None:
        self._jsonl("samples", sample_json(s))  # the store holds the task's samples already (Store.add_samples)

    def compression(self, r: CompressionRecord) -> None:
        self._jsonl("compressions", r.to_json())
        if self.store is None or r.reused:  # read from the store (`stored_compression`): no call, nothing to write
            return
        g = r.generation
        cid = self.store.add_compression(
            compressor_model_id=self.models["compressor"], task=self.task, sample_id=r.sample_id,
            knob_hash=r.knob_hash, text=g.text, sample_index=r.j, seed=r.seed,
            token_ids=g.token_ids, n_tokens=r.n_tokens, context_tokens=r.context_tokens, truncated=r.truncated,
            finish_reason=g.finish_reason, params={"kind": r.kind}, error=g.error, run_id=self.run_id,
            usage=g.usage, **self._cost("compressor", g.usage),
        )
        store_terms(self.store, cid, g, self.run_id)  # issue #13: a filter compression's IB terms, if any
        self.comp_ids[(r.sample_id, r.kind, r.j)] = cid

    def prediction(self, r: PredictionRecord) -> None:
        self._jsonl("predictions", r.to_json())
        if self.store is None:
            return
        comp = self.comp_ids.get((r.sample_id, *self.reads)) if r.arm == "compressed" else None
        self.pred_ids[(r.sample_id, r.arm)] = self.store.add_prediction(
            cell_id=self.cells[r.arm], sample_id=r.sample_id, arm=r.arm, text=r.text, compression_id=comp,
            truncated=r.truncated, error=r.error, usage=r.usage, **self._cost("predictor", r.usage),
        )

    def score(self, r: ScoreRecord) -> None:
        self._jsonl("scores", r.to_json())
        if self.store is None:
            return
        sc = r.score
        self.store.add_score(prediction_id=self.pred_ids[(r.sample_id, r.arm)], metric=sc.name, value=sc.value,
                             correct=sc.correct, parsed=sc.parsed, flags=list(sc.flags), detail=sc.extra)

    def error(self, r: ErrorRecord) -> None:
        self._jsonl("errors", r.to_json())
        if self.store is None:
            return
        self.store.add_error(run_id=self.run_id, stage=r.stage, message=r.error,
                             ref_kind=r.ref_kind if r.ref_kind is not None else r.arm, ref_id=r.ref_id,
                             sample_id=r.sample_id)

    def mi(self, row: dict[str, Any]) -> None:
        self._jsonl("mi", row)
        if self.store is None:
            return
        role = "compressor" if row["scorer"] == "self" else "scorer"
        store_mi_row(self.store, self.run_id, self.task, self.models["compressor"], self.models[role], row, "")

    def close(self) -> None:
        for f in self._files.values():
            f.close()


def store_mi_row(store: Any, run_id: str, task: str, compressor_id: int, scorer_id: int, r: dict[str, Any],
                 knob_hash: str) -> int:
    """Write one MI stage row (a group's estimate, or the pooled one with group_id "*") to the results store.

    ci_lo/ci_hi hold the population interval; the Monte Carlo error (`mc_se_bits`, `mc_ci`) and the per-context
    terms keyed by sample id (`context_bits`, `context_var_bits`, for paired comparisons) go to detail_json.
    """
    ci = r.get("ci") or [None, None]
    # a deterministic (python/) compressor's row also holds the exact drawn-set MI (harness.compressors.python)
    det = {"deterministic": True, "deterministic_bits": r.get("deterministic_bits")} if r.get("deterministic") else {}
    return store.add_mi_estimate(
        run_id=run_id, task=task, compressor_model_id=compressor_id, scorer_model_id=scorer_id, mode=r["mode"],
        group_id="" if r["group_id"] == "*" else r["group_id"], knob_hash=knob_hash,
        n_contexts=r.get("n_contexts"), n_samples=r["samples_per_context"], sampling=r["sampling"],
        bits=r.get("bits"), ci_lo=ci[0], ci_hi=ci[1], upper_bits=r.get("upper_bits"),
        upper_is_bound=r.get("upper_is_bound"), saturated_fraction=r.get("saturated_fraction"),
        bits_per_token=r.get("bits_per_token"), mean_tokens=r.get("mean_tokens"), error=r.get("error"),
        detail={k: r.get(k) for k in ("tokenization", "forwarded_tokens", "lower_bound_tokens", "scorer_identity",
                                      "forwarded_ratio", "mc_se_bits", "mc_ci", "context_bits",
                                      "context_var_bits")}
        | det,
    )
