"""The compressor protocol: given a sample and its question, return a compression.

A compression is a `harness.records.Generation`: its text, and its token ids and log-probs where the compressor has
them (an LM through transformers does; a server may not; a `python/` function never does). `usage` carries the
tokens read (prompt) and written (completion) and the seconds spent; `error` set means this compression failed.

Two steps, so that a sample's context is fitted to the compressor once and then compressed under several draws
(the greedy compression and the M seeded ones of the MI stage):

- `prepare(sample, overflow)` -> `(CompressInput | None, error)`: render the input and fit it to the compressor's
  window (`overflow: truncate` cuts the context and sets `truncated`);
- `compress([(input, params), ...])` -> one `Generation` per pair, in order; `params` is greedy (temperature 0)
  or a seeded MI draw.

A compressor without token ids or log-probs is still scored for MI by a scorer LM (the proxy path,
`harness.scoring.score_group` with the compression's text). `deterministic` compressors (a `python/` function) make
the same text for every seed: the harness draws one compression per context for them, not M (see
`harness.compressors.python`).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

from harness.errors import UserError
from harness.records import Generation, GenParams, GenRequest, ModelIdentity, Sample, Usage


@dataclass(frozen=True)
class CompressInput:
    """One sample made ready for a compressor: the context it reads and, for an LM, the rendered request."""

    sample: Sample
    context: str
    truncated: bool = False
    request: GenRequest | None = None


@runtime_checkable
class Compressor(Protocol):
    """Compress a sample's context for its question; see the module docstring."""

    spec: str  # the config's model spec, e.g. gguf/smollm2-135m or python/mypkg.filters:keep
    deterministic: bool  # True: the text does not depend on the sampling parameters (one draw per context)

    def identity(self) -> ModelIdentity:
        """Who makes the compressions (model, revision, dtype; a function's source and options), without loading."""
        ...

    def count_tokens(self, text: str) -> int | None:
        """Tokens of plain text in this compressor's tokenizer, or None when unknown."""
        ...

    def prepare(self, sample: Sample, overflow: str) -> tuple[CompressInput | None, str | None]:
        """The input for `sample`, fitted to the compressor (truncated or an error under `overflow`)."""
        ...

    def compress(self, jobs: list[tuple[CompressInput, GenParams]]) -> list[Generation]:
        """One compression per (input, params); a failure is a Generation with `error` set, never an exception."""
        ...

    @property
    def scorer(self) -> Any:
        """The backend that scores this compressor's own outputs (MI scorer "self"), or None when it cannot."""
        ...

    def close(self) -> None:
        """Release what it holds (an LM's weights)."""
        ...


def text_compression(spec: str, make: Callable[[], Any], context: str,
                     count_tokens: Callable[[str], int | None]) -> Generation:
    """One call of a compressor that returns plain text (a `python/` function, a filter): the text with its token
    counts, or an error row when the call raises or returns something other than a string (one failed sample never
    stops the run); a `UserError` (a bad option) still does. "stop": the text is complete, so a proxy scorer also
    scores its end of turn, as for an LM that stopped."""
    t0 = time.perf_counter()
    try:
        out = make()
    except UserError:
        raise
    except Exception as e:
        msg = " ".join(f"{type(e).__name__}: {e}".split())[:500]
        return Generation("", [], None, Usage(seconds=time.perf_counter() - t0), error=f"{spec} raised {msg}")
    seconds = time.perf_counter() - t0
    if not isinstance(out, str):
        return Generation("", [], None, Usage(seconds=seconds), error=f"{spec} returned {type(out).__name__}, not str")
    usage = Usage(prompt_tokens=count_tokens(context) or 0, completion_tokens=count_tokens(out) or 0, seconds=seconds)
    return Generation(out, [], None, usage, finish_reason="stop")
