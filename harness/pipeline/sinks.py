"""Typed records that stages hand to a sink, and the sink protocol.

Each stage reports what it made as one of these records; a sink writes it where it belongs (the engine's store
adapters in `harness.pipeline.sweep`; JSONL files: `harness.pipeline.record.Recorder`). A sink has one method per
kind of record, so a record of a kind a sink does not take is an AttributeError, never a row silently dropped.
`to_json()` is the record's JSONL row.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Protocol

from harness.records import Generation, Sample, Usage


@dataclass(frozen=True)
class CompressionRecord:
    """One compression of one sample: the greedy one (kind "greedy") or MI draw j (kind "sample").

    `reused`: read back from the store (no call was made, nothing is written there again)."""

    sample_id: str
    compressor: str  # the config's model spec
    kind: str
    j: int
    knob_hash: str
    seed: int
    generation: Generation
    context_tokens: int | None
    truncated: bool
    reused: bool = False

    @property
    def n_tokens(self) -> int:
        g = self.generation
        return len(g.token_ids) or g.usage.completion_tokens

    def to_json(self) -> dict[str, Any]:
        g = self.generation
        return {"sample_id": self.sample_id, "compressor": self.compressor, "kind": self.kind, "j": self.j,
                "knob_hash": self.knob_hash, "seed": self.seed, "text": g.text, "token_ids": g.token_ids,
                "n_tokens": self.n_tokens, "context_tokens": self.context_tokens, "truncated_prompt": self.truncated,
                "finish_reason": g.finish_reason, "usage": asdict(g.usage), "error": g.error, "reused": self.reused}


@dataclass(frozen=True)
class PredictionRecord:
    """What the predictor made of one (sample, arm): generated text, or (`kind` "score-reference") a scored
    reference continuation with no text."""

    sample_id: str
    arm: str
    predictor: str
    text: str
    usage: Usage
    truncated: bool
    error: str | None
    kind: str = ""
    prompt: Any = None  # what the predictor was given (`stages.prompt_json`), for the store

    def to_json(self) -> dict[str, Any]:
        d: dict[str, Any] = {"sample_id": self.sample_id, "arm": self.arm, "predictor": self.predictor,
                             "text": self.text}
        if self.kind:
            d["kind"] = self.kind
        d.update({"truncated_prompt": self.truncated, "usage": asdict(self.usage), "error": self.error})
        return d


@dataclass(frozen=True)
class ScoreRecord:
    """The score of one (sample, arm)'s prediction (a `harness.metrics.MetricResult`)."""

    sample_id: str
    arm: str
    score: Any

    def to_json(self) -> dict[str, Any]:
        sc = self.score
        return {"sample_id": self.sample_id, "arm": self.arm, "metric": sc.name, "value": sc.value,
                "correct": sc.correct, "parsed": sc.parsed, "flags": list(sc.flags), "detail": sc.extra}


@dataclass(frozen=True)
class ErrorRecord:
    """A failure of one sample at one stage; `ref_kind`/`ref_id` say which row it concerns (default: the arm)."""

    sample_id: str
    stage: str
    error: str
    arm: str = ""
    ref_kind: str | None = None
    ref_id: str = ""

    def to_json(self) -> dict[str, Any]:
        d: dict[str, Any] = {"sample_id": self.sample_id}
        if self.arm:
            d["arm"] = self.arm
        d.update({"stage": self.stage, "error": self.error})
        if self.ref_kind is not None:
            d.update({"ref_kind": self.ref_kind, "ref_id": self.ref_id})
        return d


def sample_json(s: Sample) -> dict[str, Any]:
    """The JSONL row of one sample."""
    return {"id": s.id, "group_id": s.group_id, "question": s.question, "answers": s.answers, "choices": s.choices,
            "answer_type": s.answer_type, "n_documents": len(s.documents)}


class Sink(Protocol):
    """Where a stage's records go, one method per kind."""

    def sample(self, s: Sample) -> None: ...

    def compression(self, r: CompressionRecord) -> None: ...

    def prediction(self, r: PredictionRecord) -> None: ...

    def score(self, r: ScoreRecord) -> None: ...

    def error(self, r: ErrorRecord) -> None: ...

    def mi(self, row: dict[str, Any]) -> None:
        """One MI stage row (a group's estimate, or the pooled one with group_id "*"; see `mi_stage`)."""
        ...
