"""Compression jobs: greedy compressions for the `compressed` arm and M sampled ones for MI, by any compressor
(`harness.compressors`: an LM, or a `python/` function), in chunks; the engine's compress stage
(`harness.pipeline.sweep.Sweep.compress_stage`) decides which to make and stores them."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from harness.compressors import CompressInput, Compressor
from harness.pipeline.stages import chunks
from harness.records import Generation, GenParams


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
