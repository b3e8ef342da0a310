"""A run's rows as JSONL files in its run folder: an export of the results store, written when the run ends.

One file per kind of row (samples, compressions, predictions, scores, errors, mi), each row the JSON of the
`harness.pipeline.sinks` record of that kind, read back from the store: the compressions the run read (made by it,
or `reused` from an earlier run), the predictions and scores of its cells, its errors table rows and its MI
estimates (the pooled row has group_id "*").
"""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path
from typing import Any

from harness.metrics import MetricResult
from harness.pipeline.plan import Plan, compression_variants
from harness.pipeline.sinks import ErrorRecord, PredictionRecord, ScoreRecord, sample_json
from harness.records import Sample, Usage


def _loads(v: Any) -> Any:
    return json.loads(v) if isinstance(v, str) and v else v


def _usage(prompt: Any, completion: Any, seconds: Any, cached: Any) -> Usage:
    """A stored usage row's `Usage` (a missing row: zeros)."""
    return Usage(int(prompt or 0), int(completion or 0), float(seconds or 0.0), bool(cached))


def _write(folder: Path, kind: str, rows: list[dict[str, Any]]) -> None:
    if rows:
        (folder / f"{kind}.jsonl").write_text("".join(json.dumps(r, default=str) + "\n" for r in rows))


def compression_rows(store: Any, plan: Plan, samples: list[Sample], compressor_id: int | None) -> list[dict[str, Any]]:
    """The compressions a run's unit reads, in sample order: the JSON of a `CompressionRecord` each."""
    if not plan.units or compressor_id is None:
        return []
    (u,) = plan.units.values()
    _, made = store.query("SELECT compression_id, run_id FROM compressions WHERE compressor_model_id = ? AND "
                          "task = ? AND knob_hash = ?", (compressor_id, u.cfg.task.name, u.knob_hash))
    run_of = {int(cid): rid for cid, rid in made}
    out = []
    for s in samples:
        for v in compression_variants(u.cfg, s.id):
            r = store.find_compression(compressor_model_id=compressor_id, task=u.cfg.task.name, sample_id=s.id,
                                       knob_hash=u.knob_hash, sample_index=v.index, seed=v.seed)
            if r is None:
                continue
            ids = list(r.token_ids or [])
            u_ = r.usage
            out.append({"sample_id": s.id, "compressor": u.compressor.model, "kind": v.kind, "j": v.index,
                        "knob_hash": u.knob_hash, "seed": v.seed, "text": r.text, "token_ids": ids,
                        "n_tokens": r.n_tokens, "context_tokens": r.context_tokens, "truncated_prompt": r.truncated,
                        "finish_reason": r.finish_reason,
                        "usage": asdict(u_) if u_ else None,
                        "error": r.error, "reused": run_of.get(r.compression_id) != plan.run_id})
    return out


def export_run(store: Any, plan: Plan, samples: list[Sample], folder: Path, compressor_id: int | None) -> None:
    """Write the run's JSONL files into `folder` from the store (a kind with no rows gets no file)."""
    run_id = plan.run_id
    predictor = {c.arm: c.cfg.models.predictor.model for c in plan.cells.values()}
    _write(folder, "samples", [sample_json(s) for s in samples])
    _write(folder, "compressions", compression_rows(store, plan, samples, compressor_id))
    _, rows = store.query(
        "SELECT p.prediction_id, p.sample_id, p.arm, p.text, p.finish_reason, p.truncated, p.error, u.prompt_tokens, "
        "u.completion_tokens, u.seconds, u.cached FROM predictions p JOIN cells c ON c.cell_id = p.cell_id "
        "LEFT JOIN usage u ON u.call_kind = 'predict' AND u.ref_id = p.prediction_id WHERE c.run_id = ? "
        "ORDER BY p.prediction_id", (run_id,))
    preds, seen = [], set()
    for pid, sid, arm, text, finish, trunc, err, *u in rows:
        if pid in seen:
            continue
        seen.add(pid)
        preds.append(PredictionRecord(sid, arm, predictor.get(arm), text, _usage(*u), bool(trunc), err,
                                      "score-reference" if finish == "score-reference" else "").to_json())
    _write(folder, "predictions", preds)
    _, rows = store.query(
        "SELECT p.sample_id, p.arm, s.metric, s.value, s.correct, s.parsed, s.flags_json, s.detail_json FROM scores s "
        "JOIN predictions p ON p.prediction_id = s.prediction_id JOIN cells c ON c.cell_id = p.cell_id "
        "WHERE c.run_id = ? ORDER BY s.score_id", (run_id,))
    _write(folder, "scores", [ScoreRecord(sid, arm, MetricResult(m, v, None if ok is None else bool(ok), parsed,
                                                                 tuple(_loads(flags) or []), _loads(detail))).to_json()
                              for sid, arm, m, v, ok, parsed, flags, detail in rows])
    # a run's errors: a compression's name its variant (ref_kind/ref_id), the others their arm (sweep._log_error)
    _write(folder, "errors", [ErrorRecord(e["sample_id"], e["stage"], e["message"],
                                          arm="" if e["stage"] == "compress" else e["ref_kind"],
                                          ref_kind=e["ref_kind"] if e["stage"] == "compress" else None,
                                          ref_id=e["ref_id"]).to_json()
                              for e in store.rows("errors", run_id=run_id)])
    mi = []
    for r in store.rows("mi_estimates", run_id=run_id):
        detail = _loads(r.pop("detail_json")) or {}
        r["sampling"] = _loads(r.pop("sampling_json"))
        r["group_id"] = r["group_id"] or "*"
        mi.append({**r, **detail})
    _write(folder, "mi", mi)
