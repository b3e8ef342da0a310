"""The backend protocol: generate text, and score teacher-forced log-probs.

Every backend is lazy: it computes its `identity()` without loading weights, so a
fully cached rerun loads no model. `STATS` counts model loads and real calls.
"""

from __future__ import annotations

from collections import Counter
from typing import Protocol, runtime_checkable

from harness.records import Generation, GenRequest, ModelIdentity, ScoreRequest, ScoreResult

#: process-wide counters: "model_loads", "generate_calls", "score_calls", "generate_requests", ...
STATS: Counter[str] = Counter()


@runtime_checkable
class Backend(Protocol):
    """One model behind one small protocol."""

    def identity(self) -> ModelIdentity:
        """Who this model is (id + revision/sha256, dtype, chat-template hash), without loading it."""
        ...

    def generate(self, requests: list[GenRequest]) -> list[Generation]:
        """Generate for each request; a failed request yields a Generation with `error` set."""
        ...

    def score(self, requests: list[ScoreRequest]) -> list[ScoreResult]:
        """Teacher-forced natural-log log-prob of every continuation token."""
        ...

    def count_prompt_tokens(self, request: GenRequest) -> int | None:
        """Tokens of the rendered prompt, or None when the backend cannot tell locally."""
        ...

    def count_tokens(self, text: str) -> int | None:
        """Tokens of plain text (no template), or None when unknown."""
        ...

    def truncate_text(self, text: str, n_tokens: int) -> str:
        """The first `n_tokens` tokens of `text`."""
        ...

    @property
    def context_window(self) -> int | None:
        """Maximum sequence length (prompt + generation), or None if unknown."""
        ...

    def close(self) -> None:
        """Release the model (memory) so the next role can load."""
        ...
