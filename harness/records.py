"""Typed records that cross stage boundaries (tasks → compress → predict → score)."""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

Message = dict[str, str]  # {"role": ..., "content": ...}


@dataclass(frozen=True)
class Document:
    """One context document; `gold_spans` are (start, end) character offsets of gold evidence."""

    id: str
    text: str
    title: str = ""
    gold_spans: tuple[tuple[int, int], ...] = ()
    is_gold: bool = False


@dataclass(frozen=True)
class Sample:
    """One evaluation item. `group_id` ties samples that share one question text."""

    id: str
    question: str
    documents: tuple[Document, ...]
    answers: tuple[str, ...]
    group_id: str = ""
    choices: tuple[str, ...] = ()
    answer_type: Literal["text", "choice", "number", "continuation"] = "text"
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def context(self) -> str:
        """The documents joined into one context string."""
        parts = []
        for d in self.documents:
            head = f"[{d.title}]\n" if d.title else ""
            parts.append(head + d.text)
        return "\n\n".join(parts)

    def gold_context(self) -> str:
        """Only the gold documents (or gold spans where they are marked)."""
        gold = [d for d in self.documents if d.is_gold]
        parts = []
        for d in gold:
            head = f"[{d.title}]\n" if d.title else ""
            if d.gold_spans:
                parts.append(head + " ".join(d.text[a:b] for a, b in d.gold_spans))
            else:
                parts.append(head + d.text)
        return "\n\n".join(parts)


@dataclass(frozen=True)
class ModelIdentity:
    """Everything that makes a model's outputs what they are; part of every cache key."""

    backend: str
    name: str
    revision: str  # hub revision, folder content hash, or GGUF file sha256
    dtype: str
    chat_template_hash: str

    def key(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)


@dataclass(frozen=True)
class GenParams:
    """Generation parameters. temperature 0 means greedy."""

    max_new_tokens: int = 128
    temperature: float = 0.0
    top_p: float = 1.0
    top_k: int = 0
    seed: int = 0
    logprobs: bool = False
    stop: tuple[str, ...] = ()


@dataclass(frozen=True)
class GenRequest:
    """A chat (messages) or raw-text (prompt) generation request. `tool`: one function tool as JSON (`{"name",
    "description", "parameters"}`) that a backend taking tool calls (openai/) is made to call; None for text."""

    messages: tuple[tuple[str, str], ...] = ()
    prompt: str | None = None
    params: GenParams = GenParams()
    tool: str | None = None

    @staticmethod
    def chat(messages: list[Message], params: GenParams) -> GenRequest:
        return GenRequest(messages=tuple((m["role"], m["content"]) for m in messages), params=params)

    def message_dicts(self) -> list[Message]:
        return [{"role": r, "content": c} for r, c in self.messages]

    def to_json(self) -> dict[str, Any]:
        """The request as JSON (cache keys); `tool` only when set, so a text request's key is as it was."""
        d = {"messages": [list(m) for m in self.messages], "prompt": self.prompt, "params": asdict(self.params)}
        return d if self.tool is None else {**d, "tool": self.tool}


@dataclass
class Usage:
    prompt_tokens: int = 0
    completion_tokens: int = 0
    seconds: float = 0.0
    cached: bool = False


@dataclass
class Generation:
    """What a backend returns for one request. `error` set means the call failed. `tool_calls`: the reply's tool
    calls (`{"name", "arguments"}`, arguments as the raw JSON text) for a request with a `tool`, else None."""

    text: str
    token_ids: list[int]
    logprobs: list[float] | None
    usage: Usage
    finish_reason: str = ""
    truncated_prompt: bool = False
    error: str | None = None
    tool_calls: list[dict[str, str]] | None = None

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        if d["tool_calls"] is None:  # cached text replies stay as they were
            del d["tool_calls"]
        return d

    @staticmethod
    def from_json(d: dict[str, Any]) -> Generation:
        d = dict(d)
        d["usage"] = Usage(**d["usage"])
        return Generation(**d)


@dataclass(frozen=True)
class ScoreRequest:
    """Teacher-forced scoring of `continuation` after a chat prefix or raw text prefix.

    `continuation_ids` given: those exact token ids are scored (no re-encoding).
    """

    messages: tuple[tuple[str, str], ...] = ()
    prefix: str | None = None
    continuation: str = ""
    continuation_ids: tuple[int, ...] | None = None
    append_eos: bool = False  # text continuations: also score the scorer's end-of-turn token

    def to_json(self) -> dict[str, Any]:
        return {
            "messages": [list(m) for m in self.messages],
            "prefix": self.prefix,
            "continuation": self.continuation,
            "continuation_ids": list(self.continuation_ids) if self.continuation_ids is not None else None,
            "append_eos": self.append_eos,
        }


@dataclass
class ScoreResult:
    token_ids: list[int]
    logprobs: list[float]  # natural log, one per continuation token
    usage: Usage
    error: str | None = None

    @property
    def total(self) -> float:
        return float(sum(self.logprobs))

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @staticmethod
    def from_json(d: dict[str, Any]) -> ScoreResult:
        d = dict(d)
        d["usage"] = Usage(**d["usage"])
        return ScoreResult(**d)


def stable_hash(obj: Any) -> str:
    """sha256 of a canonical JSON form."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()
