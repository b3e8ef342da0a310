"""A thin DB-API dialect layer: SQLite (sqlite3, WAL) or PostgreSQL (psycopg 3).

SQL in the store is written once with `?` placeholders; `Db.execute` turns them into `%s` for PostgreSQL.
Both connections run in autocommit mode and `Db.transaction()` issues BEGIN/COMMIT/ROLLBACK itself, so
transactions behave the same on both backends.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from harness.errors import UserError

PG_SCHEMES = ("postgresql://", "postgres://")


def set_wal(conn: sqlite3.Connection, timeout: float = 30.0) -> None:
    """Put a SQLite file in WAL mode. Switching takes the file's lock without waiting on the busy timeout, so
    workers opening one new file at the same moment get "database is locked": retry until `timeout`."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            if str(conn.execute("PRAGMA journal_mode").fetchone()[0]).lower() != "wal":
                conn.execute("PRAGMA journal_mode = WAL")
            return
        except sqlite3.OperationalError as e:
            if "locked" not in str(e) or time.monotonic() > deadline:
                raise
            time.sleep(0.05)


@dataclass(frozen=True)
class Target:
    """A parsed store URL: dialect and, for SQLite, the file path (":memory:" allowed)."""

    dialect: str
    url: str
    path: str | None = None


def parse_url(url: str | Path) -> Target:
    """`sqlite:///rel.db`, `sqlite:////abs.db`, a plain path, or `postgresql://user@host:port/db`."""
    s = str(url).strip()
    if not s:
        raise UserError("results store URL is empty; give a path, sqlite:///path.db or postgresql://...")
    if s.startswith(PG_SCHEMES):
        return Target("postgresql", s)
    if s.startswith("sqlite://"):
        path = s[len("sqlite://") :]
        if path.startswith("/"):
            path = path[1:]  # sqlite:///rel.db -> rel.db, sqlite:////abs.db -> /abs.db
        if not path:
            raise UserError(f"results store URL {s!r} has no file path; use sqlite:///path/to/store.db")
        return Target("sqlite", s, path)
    if "://" in s:
        scheme = s.split("://", 1)[0]
        raise UserError(f"results store URL scheme {scheme!r} is not supported; use sqlite:///path or postgresql://")
    return Target("sqlite", s, s)


class Db:
    """One connection plus the dialect's quirks. Not thread-safe: one process, one thread."""

    def __init__(self, target: Target, conn: Any):
        self.target = target
        self.dialect = target.dialect
        self.conn = conn
        self._depth = 0

    @staticmethod
    def connect(target: Target, *, create: bool = True) -> Db:
        """Open a connection; a missing SQLite file is created only when `create`."""
        if target.dialect == "sqlite":
            assert target.path is not None
            memory = target.path == ":memory:"
            p = Path(target.path)
            if not memory and not p.exists():
                if not create:
                    raise UserError(f"no results store at {target.path}; check the path (or run first)")
                p.parent.mkdir(parents=True, exist_ok=True)
            conn = sqlite3.connect(target.path, isolation_level=None, timeout=30.0)
            conn.execute("PRAGMA foreign_keys = ON")
            if not memory:
                set_wal(conn)
                conn.execute("PRAGMA synchronous = NORMAL")
            return Db(target, conn)
        try:
            import psycopg
        except ImportError as e:
            raise UserError(
                'a postgresql:// results store needs psycopg 3; install it with: pip install "psycopg[binary]"'
            ) from e
        try:
            conn = psycopg.connect(target.url, autocommit=True)
        except psycopg.OperationalError as e:
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise UserError(f"cannot connect to results store {_safe(target.url)}: {first}") from e
        return Db(target, conn)

    def sql(self, query: str) -> str:
        """Dialect-specific SQL text (`?` → `%s` for PostgreSQL)."""
        return query.replace("?", "%s") if self.dialect == "postgresql" else query

    def execute(self, query: str, params: Sequence[Any] = ()) -> Any:
        """Run one statement; returns the cursor."""
        cur = self.conn.cursor()
        cur.execute(self.sql(query), tuple(params))
        return cur

    def one(self, query: str, params: Sequence[Any] = ()) -> tuple[Any, ...] | None:
        """The first row, or None."""
        return self.execute(query, params).fetchone()

    def all(self, query: str, params: Sequence[Any] = ()) -> tuple[list[str], list[tuple[Any, ...]]]:
        """(column names, rows)."""
        cur = self.execute(query, params)
        cols = [d[0] for d in cur.description] if cur.description else []
        return cols, [tuple(r) for r in cur.fetchall()]

    @property
    def in_transaction(self) -> bool:
        return self._depth > 0

    @contextmanager
    def transaction(self, *, write: bool = True) -> Iterator[None]:
        """BEGIN … COMMIT, or ROLLBACK on any exception. SQLite takes the write lock up front unless `write=False`.

        A nested call runs under a SAVEPOINT: its failure undoes only its own writes, and the outer
        transaction decides whether the rest is committed.
        """
        if self._depth:
            name = f"sp_{self._depth}"
            self.execute(f"SAVEPOINT {name}")
            self._depth += 1
            try:
                yield
            except BaseException:
                self.execute(f"ROLLBACK TO SAVEPOINT {name}")
                self.execute(f"RELEASE SAVEPOINT {name}")
                raise
            finally:
                self._depth -= 1
            self.execute(f"RELEASE SAVEPOINT {name}")
            return
        self.execute("BEGIN IMMEDIATE" if self.dialect == "sqlite" and write else "BEGIN")
        self._depth = 1
        try:
            yield
        except BaseException:
            self._depth = 0
            self.execute("ROLLBACK")
            raise
        self._depth = 0
        self.execute("COMMIT")

    def table_exists(self, name: str) -> bool:
        if self.dialect == "sqlite":
            q = "SELECT 1 FROM sqlite_master WHERE type IN ('table', 'view') AND name = ?"
            return self.one(q, (name,)) is not None
        row = self.one("SELECT to_regclass(?)", (name,))
        return row is not None and row[0] is not None

    def columns(self, table: str) -> list[str]:
        """The column names of a table."""
        cols, _ = self.all(f"SELECT * FROM {table} WHERE 1 = 0")
        return cols

    def close(self) -> None:
        self.conn.close()


def _safe(url: str) -> str:
    from harness.store.redact import redact_url

    return redact_url(url)
