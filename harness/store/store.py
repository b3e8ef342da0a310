"""`Store`: the results database (SQLite by default, PostgreSQL on request).

Every write method runs in its own transaction and commits before returning (inside `Store.transaction()` it
joins the outer transaction under a savepoint instead). Rows with a natural key are inserted idempotently: the
same key twice gives one row and the same id, so a resumed run never duplicates rows. The one exception is a
retry: a compression or prediction stored with an `error` is replaced in place (same id) by a later error-free one
(the failure stays in the `errors` table, which is kept per run).

Usage is one row per model call: `add_compression`/`add_prediction` with `usage` always add a row (a fresh
`call_id`), also when the compression already existed (another run stored it first), so usage rows with
cached = false are exactly the calls that reached a model. A call answered from the response cache gets a row
marked cached = true (it says what the call would have cost); a result reused from the store is no call and gets
no row.
"""

from __future__ import annotations

import hashlib
import json
import math
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

from harness.errors import UserError
from harness.records import Generation, ModelIdentity, Sample, Usage
from harness.store.db import Db, parse_url
from harness.store.redact import redact, redact_text, redact_url
from harness.store.schema import (
    CALL_KINDS,
    CELL_STATUSES,
    LEASES,
    RUN_STATUSES,
    SCHEMA_VERSION,
    STAGES,
    TABLES,
    VERSION_TABLE,
    VIEW_NAME,
    Table,
    ddl,
    table_ddl,
    version_table_ddl,
)

if TYPE_CHECKING:
    from harness.store.lease import Leases


def _v1_to_v2(db: Db) -> None:
    """usage gets run_id and call_id, and its key becomes [call_kind, ref_id, call_id]: one row per model call."""
    db.execute("ALTER TABLE usage ADD COLUMN run_id TEXT")
    db.execute("ALTER TABLE usage ADD COLUMN call_id TEXT NOT NULL DEFAULT ''")
    db.execute("DROP INDEX ux_usage_key")
    db.execute("CREATE UNIQUE INDEX ux_usage_key ON usage (call_kind, ref_id, call_id)")


def _v2_to_v3(db: Db) -> None:
    """The leases table: workers sharing the store split a sweep's units of work (harness.store.lease)."""
    for stmt in table_ddl(LEASES, db.dialect):
        db.execute(stmt)


def _v3_to_v4(db: Db) -> None:
    """Stored prompts (compressions, predictions), per-compression terms (IB, pointwise MI) and agent traces."""
    for table in ("compressions", "predictions"):
        if "prompt_json" not in db.columns(table):
            db.execute(f"ALTER TABLE {table} ADD COLUMN prompt_json TEXT")
    for name in ("compression_terms", "trace_steps"):
        for stmt in table_ddl(TABLES[name], db.dialect):
            db.execute(stmt)


# Migrations: MIGRATIONS[v](db) upgrades a store from version v to v + 1 (runs inside a transaction).
MIGRATIONS: dict[int, Callable[[Db], None]] = {1: _v1_to_v2, 2: _v2_to_v3, 3: _v3_to_v4}

#: PostgreSQL advisory lock held while a store's schema is created or migrated (concurrent DDL would collide)
_SCHEMA_LOCK = 0x6861726E

_PACKAGES = ("harness", "torch", "transformers", "accelerate", "vllm", "openai", "llama_cpp_python", "numpy", "scipy")


def now() -> str:
    """Current UTC time as ISO-8601 text (what every timestamp column holds)."""
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def knob_hash(knobs: Mapping[str, Any]) -> str:
    """A short stable hash of a compression's knobs (prompt, generation params…), for the compressions key."""
    blob = json.dumps(knobs, sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def collect_package_versions(names: Iterable[str] = _PACKAGES) -> dict[str, str]:
    """Installed versions of the packages that shape results (missing ones are left out)."""
    from importlib import metadata

    out: dict[str, str] = {}
    for n in names:
        try:
            out[n] = metadata.version(n)
        except metadata.PackageNotFoundError:
            continue
    return out


def _json(obj: Any) -> str | None:
    if obj is None:
        return None
    return json.dumps(obj, sort_keys=True, default=str, ensure_ascii=False)


def _float(x: float | None) -> float | None:
    """A float, with NaN stored as NULL (infinities are kept)."""
    if x is None:
        return None
    x = float(x)
    return None if math.isnan(x) else x


def _int(x: int | None) -> int | None:
    return None if x is None else int(x)


def _choice(value: str, allowed: Sequence[str], what: str) -> str:
    if value not in allowed:
        raise ValueError(f"{what} must be one of {', '.join(allowed)}; got {value!r}")
    return value


@dataclass(frozen=True)
class StoredCompression:
    """A compression row with its usage (if recorded), as `find_compression` returns it."""

    compression_id: int
    text: str
    token_ids: list[int] | None
    n_tokens: int | None
    context_tokens: int | None
    truncated: bool
    finish_reason: str | None
    params: dict[str, Any] | None
    error: str | None
    usage: Usage | None

    def to_generation(self) -> Generation:
        """The stored compression as a backend `Generation` (usage marked cached: it costs nothing again)."""
        u = self.usage or Usage()
        return Generation(
            text=self.text,
            token_ids=list(self.token_ids or []),
            logprobs=None,
            usage=Usage(u.prompt_tokens, u.completion_tokens, u.seconds, True),
            finish_reason=self.finish_reason or "",
            truncated_prompt=self.truncated,
            error=self.error,
        )


@dataclass(frozen=True)
class StoredPrediction:
    """A prediction row, as `find_prediction` returns it."""

    prediction_id: int
    text: str
    n_tokens: int | None
    finish_reason: str | None
    truncated: bool
    error: str | None


class Store:
    """The results store. Open with `Store.open(url)`; use as a context manager or call `close()`."""

    def __init__(self, db: Db):
        self._db = db
        self._model_ids: dict[str, int] = {}

    # ------------------------------------------------------------------ open / close / schema

    @classmethod
    def open(cls, url: str | Path, *, create: bool = True) -> Store:
        """Open (and, when `create`, initialise) the store at `url`.

        url: a file path or `sqlite:///path.db` (SQLite, WAL mode), or `postgresql://user@host:port/db`
        (a schema can be chosen with `?options=-csearch_path%3Dname`). With `create=False` a missing store is a
        UserError instead of a new empty one. A store written by a newer harness is refused with a UserError.
        """
        db = Db.connect(parse_url(url), create=create)
        try:
            store = cls(db)
            store._init_schema(create=create)
        except BaseException:
            db.close()
            raise
        return store

    @property
    def dialect(self) -> str:
        """The backend: sqlite or postgresql."""
        return self._db.dialect

    @property
    def url(self) -> str:
        """The store URL with any password hidden."""
        return redact_url(self._db.target.url)

    def _init_schema(self, *, create: bool) -> None:
        db = self._db
        with db.transaction(write=create):
            if db.dialect == "postgresql" and create:  # workers opening one new store at once: one creates it
                db.execute("SELECT pg_advisory_xact_lock(?)", (_SCHEMA_LOCK,))
            if not db.table_exists(VERSION_TABLE):
                if not create:
                    raise UserError(f"{self.url} is not a results store (no {VERSION_TABLE} table); check the URL")
                db.execute(version_table_ddl(db.dialect))
            row = db.one(f"SELECT MAX(version) FROM {VERSION_TABLE}")
            version = row[0] if row and row[0] is not None else 0
            if version > SCHEMA_VERSION:
                raise UserError(
                    f"results store {self.url} has schema version {version}, newer than this harness supports "
                    f"({SCHEMA_VERSION}); upgrade harness or use another store"
                )
            if version == 0:
                for stmt in ddl(db.dialect):
                    db.execute(stmt)
                db.execute(f"INSERT INTO {VERSION_TABLE} (version, applied_at) VALUES (?, ?)", (SCHEMA_VERSION, now()))
                return
            for v in range(version, SCHEMA_VERSION):
                step = MIGRATIONS.get(v)
                if step is None:
                    raise UserError(f"results store {self.url} is at schema version {v} and no migration to {v + 1}")
                step(db)
                db.execute(f"INSERT INTO {VERSION_TABLE} (version, applied_at) VALUES (?, ?)", (v + 1, now()))

    def schema_version(self) -> int:
        """The store's schema version."""
        row = self._db.one(f"SELECT MAX(version) FROM {VERSION_TABLE}")
        return int(row[0]) if row and row[0] is not None else 0

    def close(self) -> None:
        """Close the connection (everything written is already committed)."""
        self._db.close()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @contextmanager
    def transaction(self) -> Iterator[Store]:
        """Group several writes atomically: all commit together, or none do if the block raises."""
        with self._db.transaction():
            yield self

    def leases(self, run_id: str, **kwargs: Any) -> Leases:
        """Work leases of run `run_id` for one worker, so several workers on this store split its units of work
        (see `harness.store.lease.Leases`; keyword arguments go to it). Close them before the store."""
        from harness.store.lease import Leases

        return Leases(self._db, run_id, **kwargs)

    # ------------------------------------------------------------------ generic helpers

    @staticmethod
    def _table(name: str) -> Table:
        t = TABLES.get(name)
        if t is None:
            raise ValueError(f"unknown table {name!r}; tables: {', '.join(TABLES)}")
        return t

    @staticmethod
    def _where(t: Table, where: Mapping[str, Any]) -> tuple[str, list[Any]]:
        names = {c.name for c in t.cols}
        parts: list[str] = []
        params: list[Any] = []
        for k, v in where.items():
            if k not in names:
                raise ValueError(f"table {t.name} has no column {k!r}")
            if v is None:
                parts.append(f"{k} IS NULL")
            else:
                parts.append(f"{k} = ?")
                params.append(v)
        return (" WHERE " + " AND ".join(parts)) if parts else "", params

    def _get_or_insert(
        self, table: str, key: Mapping[str, Any], values: Mapping[str, Any], *, replace_errored: bool = False
    ) -> tuple[int, bool]:
        """Id of the row with natural key `key`, inserting `key | values` if absent.

        Returns (id, written): written is True when a row was inserted, or replaced because the stored one had
        an error and the new one has none (`replace_errored`).
        """
        t = self._table(table)
        id_col = t.id_col
        assert id_col is not None
        db = self._db
        where, params = self._where(t, key)
        has_error = any(c.name == "error" for c in t.cols)
        select = f"SELECT {id_col}{', error' if has_error else ''} FROM {t.name}{where}"
        with db.transaction():
            row = db.one(select, params)
            if row is not None:
                if replace_errored and has_error and row[1] is not None and values.get("error") is None:
                    sets = ", ".join(f"{k} = ?" for k in values)
                    db.execute(f"UPDATE {t.name} SET {sets} WHERE {id_col} = ?", [*values.values(), row[0]])
                    return int(row[0]), True
                return int(row[0]), False
            data = {**key, **values}
            cols = ", ".join(data)
            marks = ", ".join("?" for _ in data)
            got = db.one(
                f"INSERT INTO {t.name} ({cols}) VALUES ({marks}) ON CONFLICT DO NOTHING RETURNING {id_col}",
                list(data.values()),
            )
            if got is not None:
                return int(got[0]), True
            row = db.one(select, params)
            if row is None:  # pragma: no cover - a conflict on something other than the natural key
                raise RuntimeError(f"insert into {t.name} conflicted but no row matches its key {dict(key)}")
            return int(row[0]), False

    def count(self, table: str, **where: Any) -> int:
        """Number of rows in `table` (optionally only those whose columns equal the given values)."""
        t = self._table(table)
        clause, params = self._where(t, where)
        row = self._db.one(f"SELECT COUNT(*) FROM {t.name}{clause}", params)
        return int(row[0]) if row else 0

    def rows(self, table: str, **where: Any) -> list[dict[str, Any]]:
        """All rows of `table` (optionally filtered by column equality) as dicts, JSON columns left as text."""
        t = self._table(table)
        clause, params = self._where(t, where)
        order = t.id_col or ", ".join(t.primary)
        cols, rows = self._db.all(f"SELECT * FROM {t.name}{clause} ORDER BY {order}", params)
        return [dict(zip(cols, r, strict=True)) for r in rows]

    def query(self, sql: str, params: Sequence[Any] = ()) -> tuple[list[str], list[tuple[Any, ...]]]:
        """Run a read query (`?` placeholders) and return (column names, rows)."""
        return self._db.all(sql, params)

    def tables(self) -> list[str]:
        """Names of the data tables and the joined view."""
        return [*TABLES, VIEW_NAME]

    # ------------------------------------------------------------------ runs, models, cells, samples

    def start_run(
        self,
        *,
        run_id: str,
        name: str = "",
        config: Mapping[str, Any] | Any = None,
        git_commit: str | None = None,
        package_versions: Mapping[str, str] | None = None,
        started_at: str | None = None,
    ) -> str:
        """Record a run as "running" (config redacted of secrets); a known run_id is resumed, keeping its config.

        config: a dict, or a pydantic model (dumped in JSON mode). package_versions defaults to
        `collect_package_versions()`.
        """
        if config is not None and hasattr(config, "model_dump"):
            config = config.model_dump(mode="json")
        cfg = redact(dict(config or {}))
        pv = dict(package_versions) if package_versions is not None else collect_package_versions()
        with self._db.transaction():
            self._db.execute(
                "INSERT INTO runs (run_id, name, config_json, git_commit, package_versions_json, started_at, status) "
                "VALUES (?, ?, ?, ?, ?, ?, 'running') "
                "ON CONFLICT (run_id) DO UPDATE SET status = 'running', finished_at = NULL",
                (run_id, name, _json(cfg), git_commit, _json(pv), started_at or now()),
            )
        return run_id

    def finish_run(self, run_id: str, status: str = "done", *, finished_at: str | None = None) -> None:
        """Mark a run finished with `status` ("done", "failed", "interrupted")."""
        _choice(status, RUN_STATUSES, "run status")
        with self._db.transaction():
            cur = self._db.execute(
                "UPDATE runs SET status = ?, finished_at = ? WHERE run_id = ?", (status, finished_at or now(), run_id)
            )
            if cur.rowcount == 0:
                raise KeyError(f"no run {run_id!r} in the results store")

    def model_id(self, identity: ModelIdentity, meta: Mapping[str, Any] | None = None) -> int:
        """The id of a model identity, created on first use. `meta` (params, family, size…) is merged in."""
        k = identity.key()
        if meta is None and k in self._model_ids:
            return self._model_ids[k]
        outer = not self._db.in_transaction
        key = {
            "backend": identity.backend,
            "name": redact_url(identity.name),  # defensive: backends' identities carry no URL credentials
            "revision": identity.revision,
            "dtype": identity.dtype,
            "chat_template_hash": identity.chat_template_hash,
        }
        with self._db.transaction():
            mid, written = self._get_or_insert(
                "models", key, {"meta_json": _json(dict(meta)) if meta else None, "created_at": now()}
            )
            if meta and not written:
                row = self._db.one("SELECT meta_json FROM models WHERE model_id = ?", (mid,))
                old = json.loads(row[0]) if row and row[0] else {}
                merged = {**old, **dict(meta)}
                if merged != old:
                    self._db.execute("UPDATE models SET meta_json = ? WHERE model_id = ?", (_json(merged), mid))
        if outer:  # cache only committed ids (an outer transaction could still roll back)
            self._model_ids[k] = mid
        return mid

    def upsert_cell(
        self,
        *,
        cell_id: str,
        run_id: str,
        task: str,
        predictor_model_id: int,
        arm: str,
        compressor_model_id: int | None = None,
        knobs: Mapping[str, Any] | None = None,
    ) -> str:
        """Create a cell (one task × models × arm × knobs), or update its description; stage statuses are kept."""
        with self._db.transaction():
            self._db.execute(
                "INSERT INTO cells (cell_id, run_id, task, compressor_model_id, predictor_model_id, arm, knobs_json, "
                "updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?) "
                "ON CONFLICT (cell_id) DO UPDATE SET run_id = excluded.run_id, task = excluded.task, "
                "compressor_model_id = excluded.compressor_model_id, predictor_model_id = excluded.predictor_model_id, "
                "arm = excluded.arm, knobs_json = excluded.knobs_json, updated_at = excluded.updated_at",
                (
                    cell_id,
                    run_id,
                    task,
                    compressor_model_id,
                    predictor_model_id,
                    arm,
                    _json(redact(dict(knobs or {}))),
                    now(),
                ),
            )
        return cell_id

    def set_cell_status(self, cell_id: str, stage: str, status: str) -> None:
        """Set one stage's status ("compress"|"predict"|"score" → pending/running/done/failed/skipped)."""
        _choice(stage, STAGES, "stage")
        _choice(status, CELL_STATUSES, "cell status")
        with self._db.transaction():
            cur = self._db.execute(
                f"UPDATE cells SET {stage}_status = ?, updated_at = ? WHERE cell_id = ?", (status, now(), cell_id)
            )
            if cur.rowcount == 0:
                raise KeyError(f"no cell {cell_id!r} in the results store")

    def cell_status(self, cell_id: str) -> dict[str, str] | None:
        """{stage: status} of a cell, or None when it is unknown."""
        row = self._db.one(
            "SELECT compress_status, predict_status, score_status FROM cells WHERE cell_id = ?", (cell_id,)
        )
        return None if row is None else dict(zip(STAGES, row, strict=True))

    def add_sample(self, task: str, sample: Sample) -> bool:
        """Store a sample (documents are not stored); True if it was new, False if [task, id] was there already."""
        with self._db.transaction():
            cur = self._db.execute(
                "INSERT INTO samples (task, sample_id, group_id, question, answers_json, choices_json, answer_type, "
                "n_documents, meta_json) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT DO NOTHING",
                (
                    task,
                    sample.id,
                    sample.group_id,
                    sample.question,
                    _json(list(sample.answers)),
                    _json(list(sample.choices)),
                    sample.answer_type,
                    len(sample.documents),
                    _json(dict(sample.meta)),
                ),
            )
            return cur.rowcount > 0

    def add_samples(self, task: str, samples: Iterable[Sample]) -> int:
        """Store many samples in one transaction; returns how many were new."""
        with self._db.transaction():
            return sum(self.add_sample(task, s) for s in samples)

    # ------------------------------------------------------------------ compressions, predictions, scores

    def add_compression(
        self,
        *,
        compressor_model_id: int,
        task: str,
        sample_id: str,
        knob_hash: str,
        text: str,
        sample_index: int = 0,
        seed: int = 0,
        token_ids: Sequence[int] | None = None,
        n_tokens: int | None = None,
        context_tokens: int | None = None,
        truncated: bool = False,
        finish_reason: str | None = None,
        params: Mapping[str, Any] | None = None,
        error: str | None = None,
        run_id: str | None = None,
        usage: Usage | None = None,
        flops: float | None = None,
        dollars: float | None = None,
        prompt: Any = None,
    ) -> int:
        """Store compression j (`sample_index`) of a sample; returns its id (the existing one if the key is known).

        Key: [compressor_model_id, task, sample_id, knob_hash, sample_index, seed]. `usage`, when given, is
        written in the same transaction as a new "compress" usage row (one per call, also when the key was already
        stored: check the returned row's text before using yours). n_tokens defaults to len(token_ids).
        A stored row with an error is replaced (same id) by an error-free one; earlier usage rows are kept.
        """
        if n_tokens is None and token_ids:
            n_tokens = len(token_ids)
        key = {
            "compressor_model_id": compressor_model_id,
            "task": task,
            "sample_id": sample_id,
            "knob_hash": knob_hash,
            "sample_index": int(sample_index),
            "seed": int(seed),
        }
        values = {
            "run_id": run_id,
            "text": text,
            "token_ids_json": _json(list(token_ids)) if token_ids is not None else None,
            "n_tokens": _int(n_tokens),
            "context_tokens": _int(context_tokens),
            "truncated": bool(truncated),
            "finish_reason": finish_reason,
            "params_json": _json(dict(params)) if params is not None else None,
            "error": redact_text(error),  # defensive: backends already hide keys in error text
            "created_at": now(),
            "prompt_json": _json(redact(prompt)) if prompt is not None else None,
        }
        with self._db.transaction():
            cid, written = self._get_or_insert("compressions", key, values, replace_errored=True)
            if usage is not None:  # every call leaves its own usage row, even when the key was stored already
                # "w…": the call whose result the row holds (find_compression reports its usage)
                self._insert_usage("compress", cid, compressor_model_id, usage, flops, dollars, run_id=run_id,
                                   call_id=("w" if written else "c") + uuid.uuid4().hex)
        return cid

    def find_compression(
        self,
        *,
        compressor_model_id: int,
        task: str,
        sample_id: str,
        knob_hash: str,
        sample_index: int = 0,
        seed: int = 0,
    ) -> StoredCompression | None:
        """The stored compression for this key, or None. Check `.error` before reusing it.

        Its usage is that of the call whose result the row holds (the latest one that wrote it).
        """
        row = self._db.one(
            "SELECT c.compression_id, c.text, c.token_ids_json, c.n_tokens, c.context_tokens, c.truncated, "
            "c.finish_reason, c.params_json, c.error, u.prompt_tokens, u.completion_tokens, u.seconds, u.cached "
            "FROM compressions c LEFT JOIN usage u ON u.usage_id = (SELECT usage_id FROM usage "
            "WHERE call_kind = 'compress' AND ref_id = c.compression_id "
            "ORDER BY CASE WHEN substr(call_id, 1, 1) = 'w' THEN 0 ELSE 1 END, usage_id DESC LIMIT 1) "
            "WHERE c.compressor_model_id = ? AND c.task = ? AND c.sample_id = ? AND c.knob_hash = ? "
            "AND c.sample_index = ? AND c.seed = ?",
            (compressor_model_id, task, sample_id, knob_hash, int(sample_index), int(seed)),
        )
        if row is None:
            return None
        usage = None if row[9] is None else Usage(int(row[9]), int(row[10]), float(row[11]), bool(row[12]))
        return StoredCompression(
            compression_id=int(row[0]),
            text=row[1],
            token_ids=json.loads(row[2]) if row[2] is not None else None,
            n_tokens=row[3],
            context_tokens=row[4],
            truncated=bool(row[5]),
            finish_reason=row[6],
            params=json.loads(row[7]) if row[7] is not None else None,
            error=row[8],
            usage=usage,
        )

    def add_prediction(
        self,
        *,
        cell_id: str,
        sample_id: str,
        arm: str,
        text: str,
        compression_id: int | None = None,
        truncated: bool = False,
        error: str | None = None,
        n_tokens: int | None = None,
        finish_reason: str | None = None,
        usage: Usage | None = None,
        flops: float | None = None,
        dollars: float | None = None,
        prompt: Any = None,
    ) -> int:
        """Store a prediction; returns its id (the existing one if [cell, sample, compression, arm] is known).

        `usage`, when given, is written in the same transaction as a "predict" usage row (model: the cell's
        predictor; one row per call). A stored row with an error is replaced (same id; its scores dropped) by an
        error-free one.
        """
        key = {"cell_id": cell_id, "sample_id": sample_id, "compression_id": compression_id, "arm": arm}
        values = {
            "text": text,
            "n_tokens": _int(n_tokens),
            "finish_reason": finish_reason,
            "truncated": bool(truncated),
            "error": redact_text(error),  # defensive: backends already hide keys in error text
            "created_at": now(),
            "prompt_json": _json(redact(prompt)) if prompt is not None else None,
        }
        with self._db.transaction():
            pid, written = self._get_or_insert("predictions", key, values, replace_errored=True)
            if written:
                self._db.execute("DELETE FROM scores WHERE prediction_id = ?", (pid,))
            if usage is not None:  # every call leaves its own usage row
                row = self._db.one("SELECT predictor_model_id, run_id FROM cells WHERE cell_id = ?", (cell_id,))
                self._insert_usage("predict", pid, row[0] if row else None, usage, flops, dollars,
                                   run_id=row[1] if row else None)
        return pid

    def find_prediction(
        self, *, cell_id: str, sample_id: str, arm: str, compression_id: int | None = None
    ) -> StoredPrediction | None:
        """The stored prediction for this key, or None. Check `.error` before reusing it."""
        t = self._table("predictions")
        where, params = self._where(
            t, {"cell_id": cell_id, "sample_id": sample_id, "compression_id": compression_id, "arm": arm}
        )
        row = self._db.one(
            f"SELECT prediction_id, text, n_tokens, finish_reason, truncated, error FROM predictions{where}", params
        )
        if row is None:
            return None
        return StoredPrediction(int(row[0]), row[1], row[2], row[3], bool(row[4]), row[5])

    def add_score(
        self,
        *,
        prediction_id: int,
        metric: str,
        value: float | None,
        correct: bool | None,
        parsed: str | None = None,
        flags: Sequence[str] = (),
        detail: Mapping[str, Any] | None = None,
    ) -> int:
        """Store a prediction's score under `metric`; returns its id (the existing one if already scored)."""
        values = {
            "value": _float(value),
            "correct": None if correct is None else bool(correct),
            "parsed": parsed,
            "flags_json": _json(list(flags)),
            "detail_json": _json(dict(detail)) if detail else None,
            "created_at": now(),
        }
        sid, _ = self._get_or_insert("scores", {"prediction_id": prediction_id, "metric": metric}, values)
        return sid

    def add_metric_result(self, prediction_id: int, result: Any) -> int:
        """`add_score` from a `harness.metrics.MetricResult` (name, value, correct, parsed, flags, extra)."""
        return self.add_score(
            prediction_id=prediction_id,
            metric=result.name,
            value=result.value,
            correct=result.correct,
            parsed=result.parsed,
            flags=tuple(result.flags),
            detail=dict(result.extra) or None,
        )

    # ------------------------------------------------------------------ usage, MI, errors

    def _insert_usage(
        self, kind: str, ref_id: int, model_id: int | None, u: Usage, flops: float | None, dollars: float | None,
        *, run_id: str | None = None, call_id: str | None = None,
    ) -> int:
        """One usage row; call_id None means a new call (a fresh id), so the row is always added."""
        values = {
            "model_id": model_id,
            "prompt_tokens": int(u.prompt_tokens),
            "completion_tokens": int(u.completion_tokens),
            "seconds": float(u.seconds),
            "cached": bool(u.cached),
            "flops": _float(flops),
            "dollars": _float(dollars),
            "created_at": now(),
            "run_id": run_id,
        }
        key = {"call_kind": kind, "ref_id": int(ref_id), "call_id": uuid.uuid4().hex if call_id is None else call_id}
        uid, _ = self._get_or_insert("usage", key, values)
        return uid

    def add_usage(
        self,
        *,
        call_kind: str,
        ref_id: int,
        model_id: int | None = None,
        prompt_tokens: int = 0,
        completion_tokens: int = 0,
        seconds: float = 0.0,
        cached: bool = False,
        flops: float | None = None,
        dollars: float | None = None,
        run_id: str | None = None,
        call_id: str = "",
    ) -> int:
        """Record the cost of one call; key [call_kind, ref_id, call_id] (ref_id: the compression/prediction/score id).

        call_kind: "compress" | "predict" | "score" | "judge". Returns the usage id (existing one if the key is
        known: pass a distinct call_id per call to record several calls for one ref_id).
        """
        _choice(call_kind, CALL_KINDS, "call_kind")
        u = Usage(int(prompt_tokens), int(completion_tokens), float(seconds), bool(cached))
        return self._insert_usage(call_kind, ref_id, model_id, u, flops, dollars, run_id=run_id, call_id=call_id)

    def add_mi_estimate(
        self,
        *,
        run_id: str,
        task: str,
        compressor_model_id: int,
        scorer_model_id: int,
        mode: str,
        group_id: str = "",
        knob_hash: str = "",
        n_contexts: int | None = None,
        n_samples: int | None = None,
        sampling: Mapping[str, Any] | None = None,
        bits: float | None = None,
        ci_lo: float | None = None,
        ci_hi: float | None = None,
        upper_bits: float | None = None,
        upper_is_bound: bool | None = None,
        saturated_fraction: float | None = None,
        bits_per_token: float | None = None,
        mean_tokens: float | None = None,
        error: str | None = None,
        detail: Mapping[str, Any] | None = None,
    ) -> int:
        """Store one MI estimate (group_id "" = pooled over the task's groups); returns its id.

        Key: [run_id, task, group_id, compressor_model_id, scorer_model_id, knob_hash, mode]. An estimate stored
        with an error is replaced by an error-free one. upper_bits may be +inf (no finite leave-one-out bound).
        """
        key = {
            "run_id": run_id,
            "task": task,
            "group_id": group_id,
            "compressor_model_id": compressor_model_id,
            "scorer_model_id": scorer_model_id,
            "knob_hash": knob_hash,
            "mode": mode,
        }
        values = {
            "n_contexts": _int(n_contexts),
            "n_samples": _int(n_samples),
            "sampling_json": _json(dict(sampling)) if sampling is not None else None,
            "bits": _float(bits),
            "ci_lo": _float(ci_lo),
            "ci_hi": _float(ci_hi),
            "upper_bits": _float(upper_bits),
            "upper_is_bound": None if upper_is_bound is None else bool(upper_is_bound),
            "saturated_fraction": _float(saturated_fraction),
            "bits_per_token": _float(bits_per_token),
            "mean_tokens": _float(mean_tokens),
            "error": redact_text(error),  # defensive: backends already hide keys in error text
            "detail_json": _json(dict(detail)) if detail is not None else None,
            "created_at": now(),
        }
        mid, _ = self._get_or_insert("mi_estimates", key, values, replace_errored=True)
        return mid

    def add_error(
        self,
        *,
        run_id: str,
        stage: str,
        message: str,
        ref_kind: str = "",
        ref_id: str | int = "",
        sample_id: str = "",
    ) -> int:
        """Record an error (stage: "compress", "predict", "score", "mi", …); the same error twice is one row."""
        message = redact_text(message) or ""
        key = {
            "run_id": run_id,
            "stage": stage,
            "ref_kind": ref_kind,
            "ref_id": str(ref_id),
            "sample_id": sample_id,
            "message_hash": hashlib.sha256(message.encode()).hexdigest()[:32],
        }
        eid, _ = self._get_or_insert("errors", key, {"message": message, "created_at": now()})
        return eid

    def add_compression_terms(
        self,
        compression_id: int,
        terms: Mapping[str, float | None],
        *,
        scorer_model_id: int | None = None,
        detail: Mapping[str, Any] | None = None,
        run_id: str | None = None,
    ) -> list[int]:
        """Store named quantities of one compression (IB terms, a pointwise MI term, …); a known name is kept.

        Key: [compression_id, scorer_model_id, name]. Returns the row ids in the order of `terms`.
        """
        ids = []
        with self._db.transaction():
            for name, value in terms.items():
                key = {"compression_id": int(compression_id), "scorer_model_id": scorer_model_id, "name": name}
                values = {
                    "value": _float(value),
                    "detail_json": _json(dict(detail)) if detail is not None else None,
                    "run_id": run_id,
                    "created_at": now(),
                }
                ids.append(self._get_or_insert("compression_terms", key, values)[0])
        return ids

    def compression_terms(self, compression_id: int) -> dict[str, float | None]:
        """name → value of every term stored for a compression (any scorer)."""
        return {r["name"]: r["value"] for r in self.rows("compression_terms", compression_id=int(compression_id))}

    def add_trace_step(
        self,
        *,
        cell_id: str,
        sample_id: str,
        step: int,
        kind: str,
        payload: Mapping[str, Any],
        round: int = 0,
        role: str = "",
        model_id: int | None = None,
        prompt_tokens: int = 0,
        completion_tokens: int = 0,
        seconds: float = 0.0,
        flops: float | None = None,
        dollars: float | None = None,
        error: str | None = None,
        run_id: str | None = None,
    ) -> int:
        """Store step `step` of a sample's agent episode in a cell; returns its id (a known step is kept, unless it
        had an error and this one has none)."""
        key = {"cell_id": cell_id, "sample_id": sample_id, "step": int(step)}
        values = {
            "round": int(round),
            "kind": kind,
            "role": role,
            "model_id": model_id,
            "payload_json": _json(redact(dict(payload))) or "{}",
            "prompt_tokens": int(prompt_tokens),
            "completion_tokens": int(completion_tokens),
            "seconds": float(seconds),
            "flops": _float(flops),
            "dollars": _float(dollars),
            "error": redact_text(error),
            "run_id": run_id,
            "created_at": now(),
        }
        sid, _ = self._get_or_insert("trace_steps", key, values, replace_errored=True)
        return sid

    def trace(self, cell_id: str, sample_id: str | None = None) -> list[dict[str, Any]]:
        """The stored steps of one sample's episode in a cell, in step order, payloads parsed (`sample_id` None: every
        sample's, by sample then step, in one query)."""
        where = {"cell_id": cell_id} if sample_id is None else {"cell_id": cell_id, "sample_id": sample_id}
        rows = sorted(self.rows("trace_steps", **where), key=lambda r: (r["sample_id"], r["step"]))
        for r in rows:
            r["payload"] = json.loads(r.pop("payload_json") or "{}")
        return rows
