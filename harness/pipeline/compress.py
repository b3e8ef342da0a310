"""Compression stage: greedy compressions for the `compressed` arm and M sampled ones for MI, by any compressor
(`harness.compressors`: an LM, or a `python/` function)."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from harness.compressors import CompressInput, Compressor
from harness.config import RunConfig
from harness.pipeline.plan import (  # noqa: F401 (compression keys: defined in plan.py, re-exported here)
    compression_knob_hash,
    compression_knobs,
    draws_per_context,
    sample_seed,
    sampling_params,
)
from harness.pipeline.stages import add_usage, chunks, params_from
from harness.records import Generation, GenParams, Sample


@dataclass(frozen=True)
class CompKey:
    """Which compression: sample index, kind ("greedy" or "sample") and sample number j."""

    idx: int
    kind: str
    j: int = 0


@dataclass
class CompressOutput:
    results: dict[CompKey, Generation]
    context_tokens: dict[int, int | None]
    truncated: dict[int, bool]
    errors: dict[int, str]  # sample index -> overflow error (no request sent)
    predictor_kind: str  # which compressions the predictor reads: "greedy" or "sample"


def compress_stage(cfg: RunConfig, comp: Compressor, samples: list[Sample], writer: Any, usage: dict[str, float],
                   progress: Any) -> CompressOutput:
    """Make every compression this run needs with one compressor in memory; rows are written as they finish."""
    mc = cfg.models.compressor
    assert mc is not None
    want_arm = "compressed" in cfg.arms
    mi = cfg.mi
    predictor_kind = "sample" if (mi is not None and mi.predictor_reads == "sample0") else "greedy"
    greedy = params_from(cfg.generation.compressor, cfg.seed)
    variants: list[tuple[str, int]] = []
    if want_arm and predictor_kind == "greedy":
        variants.append(("greedy", 0))
    if mi is not None:
        variants += [("sample", j) for j in range(draws_per_context(cfg))]
    out = CompressOutput({}, {}, {}, {}, predictor_kind)
    khash = compression_knob_hash(cfg)
    jobs: list[tuple[CompKey, tuple[CompressInput, GenParams]]] = []
    seeds: dict[CompKey, int] = {}

    def _row(key: CompKey, g: Generation, reused: bool = False) -> dict[str, Any]:
        return {
            "sample_id": samples[key.idx].id, "compressor": mc.model, "kind": key.kind, "j": key.j,
            "knob_hash": khash,
            "seed": seeds[key],
            "text": g.text, "token_ids": g.token_ids, "n_tokens": len(g.token_ids) or g.usage.completion_tokens,
            "context_tokens": out.context_tokens[key.idx], "truncated_prompt": out.truncated[key.idx],
            "finish_reason": g.finish_reason, "usage": asdict(g.usage), "error": g.error, "reused": reused}

    for idx, s in enumerate(samples):
        out.context_tokens[idx] = comp.count_tokens(s.context)
        inp, err = comp.prepare(s, cfg.overflow)
        out.truncated[idx] = inp is not None and inp.truncated
        if err or inp is None:
            err = err or "the compressor could not take this sample"
            out.errors[idx] = err
            writer.write("errors", {"sample_id": s.id, "stage": "compress", "error": err})
            continue
        for kind, j in variants:
            p = greedy if kind == "greedy" else sampling_params(cfg, s.id, j)
            key = CompKey(idx, kind, j)
            seeds[key] = p.seed
            # an error-free compression already in the store is reused, so the text the predictor reads (and the
            # MI stage scores) is the text its predictions point at
            stored = writer.stored_compression(s.id, kind, j, p.seed, khash)
            if stored is not None:
                out.results[key] = stored
                add_usage(usage, stored.usage)
                writer.write("compressions", _row(key, stored, reused=True))
                continue
            jobs.append((key, (inp, p)))

    def on_done(key: CompKey, g: Generation) -> None:
        add_usage(usage, g.usage)
        sid = samples[key.idx].id
        if g.error:  # kept per run in the errors table, whatever later runs store for this compression
            read = key.kind == predictor_kind and key.j == 0  # the compression the predictor would read
            writer.write("errors", {"sample_id": sid, "stage": "compress", "error": g.error,
                                    "ref_kind": "compression" if read else "mi_sample",
                                    "ref_id": f"{key.kind}:{key.j}"})
        writer.write("compressions", _row(key, g))
        # a concurrent run may have stored its compression first: read the stored text, never one the store lacks
        kept = None if g.error else writer.stored_compression(sid, key.kind, key.j, seeds[key], khash)
        out.results[key] = kept if kept is not None and kept.text != g.text else g

    if progress is not None:
        progress.total = len(jobs)
    for part in chunks(jobs, max(mc.batch_size, 1) * 2):
        for (key, _), g in zip(part, comp.compress([job for _, job in part]), strict=True):
            on_done(key, g)
        if progress is not None:
            progress.update(len(part))
    return out
