"""Drive many research episodes at once: gather the calls they wait on, send them to each role's model in batches
(one model in memory at a time: a local model is released before another one loads), and resume each episode with
its generations. A batch goes through the backend's `generate`: an OpenAI-compatible backend sends it
`max_concurrency` requests at a time; a local transformers backend runs it serially, `batch_size` rows per forward.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from harness.records import Generation
from harness.research.episode import Call, Episode, Outcome


@dataclass
class Running:
    """An episode in flight: the calls it waits on, or its outcome once it returned."""

    gen: Episode
    on_done: Callable[[Outcome], None]
    pending: list[Call] | None = None
    outcome: Outcome | None = None

    def advance(self, results: list[Generation] | None) -> None:
        try:
            self.pending = next(self.gen) if results is None else self.gen.send(results)
        except StopIteration as stop:
            self.pending, self.outcome = None, stop.value
            self.on_done(stop.value)


def _local(be: Any) -> bool:
    """A backend that holds weights in this process (released between roles)."""
    inner = getattr(be, "inner", be)
    return type(inner).__name__ in ("TransformersBackend", "VLLMBackend")


def drive(episodes: list[tuple[Episode, Callable[[Outcome], None]]], backends: dict[str, Any],
          chunk: int = 8, on_batch: Callable[[str, int], None] | None = None) -> dict[str, int]:
    """Run every episode to its end; returns the number of requests sent per role (after de-duplication: identical
    requests of one batch, e.g. one sample's plan in several cells, are asked once and the copies marked cached).

    Calls are served role by role, staying with the current role while any episode waits on it, in chunks of
    `chunk` episodes, so each chunk's steps are stored before the next chunk is asked."""
    runs = [Running(g, cb) for g, cb in episodes]
    for r in runs:
        r.advance(None)
    sent: dict[str, int] = {}
    current: str | None = None
    while True:
        waiting = [r for r in runs if r.pending]
        if not waiting:
            break
        roles = list(dict.fromkeys(c.role for r in waiting for c in r.pending or []))
        role = current if current in roles else roles[0]
        if role != current:
            for k, be in backends.items():
                if k != role and _local(be):
                    be.close()
            current = role
        mine = [r for r in waiting if r.pending and r.pending[0].role == role]
        for part in (mine[i:i + chunk] for i in range(0, len(mine), chunk)):
            reqs = list(dict.fromkeys(c.request for r in part for c in r.pending or []))
            gens = backends[role].generate(reqs)
            sent[role] = sent.get(role, 0) + len(reqs)
            if on_batch is not None:
                on_batch(role, len(reqs))
            first: dict[Any, Generation] = {}
            for q, g in zip(reqs, gens, strict=True):
                first[q] = g
            used: set[Any] = set()
            for r in part:
                res = []
                for c in r.pending or []:
                    g = first[c.request]
                    if c.request in used:  # a copy: the same answer, no second call
                        g = dataclasses.replace(g, usage=dataclasses.replace(g.usage, cached=True))
                    used.add(c.request)
                    res.append(g)
                r.advance(res)
    for be in backends.values():
        if _local(be):
            be.close()
    return sent
