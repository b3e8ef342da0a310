"""SQLite response cache keyed on the full model identity and the full request.

The key covers backend, model id, revision or file sha256, dtype, chat-template hash,
the request (messages or prompt), the generation parameters and the seed. Only
successful responses are cached, so a failed call is retried on the next run.
"""

from __future__ import annotations

import json
import sqlite3
import threading
from pathlib import Path
from typing import Any

from harness.records import (
    Generation,
    GenRequest,
    ModelIdentity,
    ScoreRequest,
    ScoreResult,
    stable_hash,
)
from harness.store.db import set_wal

SCHEMA = """
CREATE TABLE IF NOT EXISTS responses (
  key TEXT PRIMARY KEY,
  kind TEXT NOT NULL,
  identity TEXT NOT NULL,
  request TEXT NOT NULL,
  response TEXT NOT NULL,
  created REAL NOT NULL DEFAULT (julianday('now'))
);
CREATE TABLE IF NOT EXISTS meta (k TEXT PRIMARY KEY, v TEXT);
"""


#: finish reasons of answers that are not the model's reply: never cached, even from a backend that sets no error
UNCACHEABLE_FINISH = frozenset({"content_filter", "error"})


def cacheable(result: Generation | ScoreResult) -> bool:
    """Only successful calls are cached: no error, and no filtered or failed finish."""
    return result.error is None and getattr(result, "finish_reason", "") not in UNCACHEABLE_FINISH


#: bumped when what a backend does with the same model and request changes (2: generation sets every logits
#: processor to its neutral value and samples per request seed; scoring appends the template's end of turn)
BEHAVIOUR_VERSION = 2


def cache_key(kind: str, identity: ModelIdentity, request: dict[str, Any]) -> str:
    return stable_hash({"kind": kind, "identity": identity.key(), "request": request, "v": BEHAVIOUR_VERSION})


class ResponseCache:
    """A small thread-safe SQLite key-value store (WAL mode)."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._db = sqlite3.connect(str(self.path), check_same_thread=False, timeout=60)
        set_wal(self._db, timeout=60)
        self._db.executescript(SCHEMA)
        self._db.commit()

    def get(self, key: str) -> dict[str, Any] | None:
        with self._lock:
            row = self._db.execute("SELECT response FROM responses WHERE key=?", (key,)).fetchone()
        return json.loads(row[0]) if row else None

    def put(self, key: str, kind: str, identity: ModelIdentity, request: dict[str, Any], response: dict) -> None:
        with self._lock:
            self._db.execute(
                "INSERT OR REPLACE INTO responses(key, kind, identity, request, response) VALUES (?,?,?,?,?)",
                (key, kind, identity.key(), json.dumps(request), json.dumps(response)),
            )
            self._db.commit()

    def close(self) -> None:
        with self._lock:
            self._db.close()


class CachedBackend:
    """Wraps a backend; answers from the cache and sends only misses to the model."""

    def __init__(self, inner: Any, cache: ResponseCache):
        self.inner = inner
        self.cache = cache
        self.hits = 0
        self.misses = 0

    def identity(self) -> ModelIdentity:
        return self.inner.identity()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def generate(self, requests: list[GenRequest]) -> list[Generation]:
        ident = self.identity()
        out: list[Generation | None] = [None] * len(requests)
        keys = [cache_key("generate", ident, r.to_json()) for r in requests]
        todo = []
        for i, k in enumerate(keys):
            hit = self.cache.get(k)
            g = Generation.from_json(hit) if hit is not None else None
            if g is not None and cacheable(g):  # an entry an older harness stored from a filtered reply is a miss
                g.usage.cached = True
                out[i] = g
                self.hits += 1
            else:
                todo.append(i)
        if todo:
            self.misses += len(todo)
            fresh = self.inner.generate([requests[i] for i in todo])
            for i, g in zip(todo, fresh, strict=True):
                if cacheable(g):
                    self.cache.put(keys[i], "generate", ident, requests[i].to_json(), g.to_json())
                out[i] = g
        return out  # type: ignore[return-value]

    def score(self, requests: list[ScoreRequest]) -> list[ScoreResult]:
        ident = self.identity()
        out: list[ScoreResult | None] = [None] * len(requests)
        keys = [cache_key("score", ident, r.to_json()) for r in requests]
        todo = []
        for i, k in enumerate(keys):
            hit = self.cache.get(k)
            if hit is not None:
                s = ScoreResult.from_json(hit)
                s.usage.cached = True
                out[i] = s
                self.hits += 1
            else:
                todo.append(i)
        if todo:
            self.misses += len(todo)
            fresh = self.inner.score([requests[i] for i in todo])
            for i, s in zip(todo, fresh, strict=True):
                if cacheable(s):
                    self.cache.put(keys[i], "score", ident, requests[i].to_json(), s.to_json())
                out[i] = s
        return out  # type: ignore[return-value]

    def count_tokens(self, text: str) -> int | None:
        ident = self.identity()
        k = cache_key("count_tokens", ident, {"text": text})
        hit = self.cache.get(k)
        if hit is not None:
            return hit["n"]
        n = self.inner.count_tokens(text)
        if n is not None:
            self.cache.put(k, "count_tokens", ident, {"text_hash": stable_hash(text)}, {"n": n})
        return n

    def count_prompt_tokens(self, request: GenRequest) -> int | None:
        ident = self.identity()
        k = cache_key("count_prompt_tokens", ident, request.to_json())
        hit = self.cache.get(k)
        if hit is not None:
            return hit["n"]
        n = self.inner.count_prompt_tokens(request)
        if n is not None:
            self.cache.put(k, "count_prompt_tokens", ident, {"request_hash": stable_hash(request.to_json())}, {"n": n})
        return n
