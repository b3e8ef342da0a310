"""JSONL rows of the stages' records (`Recorder`, a `harness.pipeline.sinks.Sink`), and MI rows to the store.

The engine (`harness.pipeline.sweep.Sweep`) writes every row to the results store as work finishes; a run's JSONL
files are exported from the store when it ends (`harness.pipeline.export`). `Recorder` writes a stage's records
straight to JSONL files, for a stage run on its own (no store).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from harness.pipeline.sinks import CompressionRecord, ErrorRecord, PredictionRecord, ScoreRecord, sample_json
from harness.records import Sample


class Recorder:
    """Append-only JSONL files in `folder`, one per kind of record, flushed per row."""

    def __init__(self, folder: Path):
        self.folder = folder
        folder.mkdir(parents=True, exist_ok=True)
        self._files: dict[str, Any] = {}

    def _jsonl(self, kind: str, row: dict[str, Any]) -> None:
        f = self._files.get(kind)
        if f is None:
            f = self._files[kind] = open(self.folder / f"{kind}.jsonl", "a")
        f.write(json.dumps(row, default=str) + "\n")
        f.flush()

    def sample(self, s: Sample) -> None:
        self._jsonl("samples", sample_json(s))

    def compression(self, r: CompressionRecord) -> None:
        self._jsonl("compressions", r.to_json())

    def prediction(self, r: PredictionRecord) -> None:
        self._jsonl("predictions", r.to_json())

    def score(self, r: ScoreRecord) -> None:
        self._jsonl("scores", r.to_json())

    def error(self, r: ErrorRecord) -> None:
        self._jsonl("errors", r.to_json())

    def mi(self, row: dict[str, Any]) -> None:
        self._jsonl("mi", row)

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
