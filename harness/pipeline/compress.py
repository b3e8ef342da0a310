"""Compression stage: greedy compressions for the `compressed` arm and M sampled ones for MI, by any compressor
(`harness.compressors`: an LM, or a `python/` function)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from harness.compressors import CompressInput, Compressor
from harness.config import RunConfig
from harness.pipeline.plan import compression_knob_hash, compression_variants, read_key
from harness.pipeline.record import Recorder
from harness.pipeline.sinks import CompressionRecord, ErrorRecord
from harness.pipeline.stages import add_usage, chunks
from harness.records import Generation, GenParams, Sample


@dataclass(frozen=True)
class CompKey:
    """Which compression: sample index, kind ("greedy" or "sample") and sample number j (the store's
    `sample_index`: GREEDY_INDEX = -1 for the greedy one)."""

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


def run_compress_jobs(jobs: list[tuple[Any, Compressor, CompressInput, GenParams]],
                      on_done: Callable[[Any, Generation], None], chunk: int, progress: Any = None) -> None:
    """Compress `(key, compressor, input, params)` jobs in chunks of `chunk` (each compressor's consecutive jobs in
    one call); `on_done(key, compression)` runs as each chunk finishes, so rows are written as work finishes."""
    for part in chunks(jobs, max(chunk, 1)):
        a = 0
        while a < len(part):
            comp = part[a][1]
            b = a
            while b < len(part) and part[b][1] is comp:
                b += 1
            for (key, _, _, _), g in zip(part[a:b], comp.compress([(i, p) for _, _, i, p in part[a:b]]), strict=True):
                on_done(key, g)
            a = b
        if progress is not None:
            progress.update(len(part))


def compress_stage(cfg: RunConfig, comp: Compressor, samples: list[Sample], writer: Recorder, usage: dict[str, float],
                   progress: Any) -> CompressOutput:
    """Make every compression this run needs with one compressor in memory; rows are written as they finish."""
    mc = cfg.models.compressor
    assert mc is not None
    reads = read_key(cfg)  # (kind, index) of the compression the predictor reads; greedy is index -1, as stored
    out = CompressOutput({}, {}, {}, {}, reads[0])
    khash = compression_knob_hash(cfg)
    jobs: list[tuple[Any, Compressor, CompressInput, GenParams]] = []
    seeds: dict[CompKey, int] = {}

    def _record(key: CompKey, g: Generation, reused: bool = False) -> CompressionRecord:
        return CompressionRecord(samples[key.idx].id, mc.model, key.kind, key.j, khash, seeds[key], g,
                                 out.context_tokens[key.idx], out.truncated[key.idx], reused)

    for idx, s in enumerate(samples):
        out.context_tokens[idx] = comp.count_tokens(s.context)
        inp, err = comp.prepare(s, cfg.overflow)
        out.truncated[idx] = inp is not None and inp.truncated
        if err or inp is None:
            err = err or "the compressor could not take this sample"
            out.errors[idx] = err
            writer.error(ErrorRecord(s.id, "compress", err))
            continue
        for v in compression_variants(cfg, s.id):  # plan.py: which compressions, their indices and seeds
            kind, j, p = v.kind, v.index, v.params
            key = CompKey(idx, kind, j)
            seeds[key] = p.seed
            # an error-free compression already in the store is reused, so the text the predictor reads (and the
            # MI stage scores) is the text its predictions point at
            stored = writer.stored_compression(s.id, kind, j, p.seed, khash)
            if stored is not None:
                out.results[key] = stored
                add_usage(usage, stored.usage)
                writer.compression(_record(key, stored, reused=True))
                continue
            jobs.append((key, comp, inp, p))

    def on_done(key: CompKey, g: Generation) -> None:
        add_usage(usage, g.usage)
        sid = samples[key.idx].id
        if g.error:  # kept per run in the errors table, whatever later runs store for this compression
            read = (key.kind, key.j) == reads  # the compression the predictor would read
            writer.error(ErrorRecord(sid, "compress", g.error, ref_kind="compression" if read else "mi_sample",
                                     ref_id=f"{key.kind}:{key.j}"))
        writer.compression(_record(key, g))
        # a concurrent run may have stored its compression first: read the stored text, never one the store lacks
        kept = None if g.error else writer.stored_compression(sid, key.kind, key.j, seeds[key], khash)
        out.results[key] = kept if kept is not None and kept.text != g.text else g

    if progress is not None:
        progress.total = len(jobs)
    run_compress_jobs(jobs, on_done, max(mc.batch_size, 1) * 2, progress)
    return out
