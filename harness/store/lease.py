"""Work leases in the results store: several workers (processes, machines) on one store split a run's units of work.

A lease is one row of the `leases` table, keyed by (run_id, stage, unit_key). A worker claims a unit with one atomic
statement (INSERT … ON CONFLICT DO UPDATE … WHERE the lease is free, RETURNING; the same SQL on SQLite and
PostgreSQL), does its work, and marks it done. Another worker that finds the unit leased skips it, does what else
it can, then polls until the unit is done, and reads its rows from the store.

A lease lasts `ttl` seconds and a heartbeat thread (its own connection) renews every lease its worker holds each
ttl/3 seconds while the work runs. A worker killed with `kill -9` stops renewing, so its leases expire and are taken
over. On the killer's own host there is no need to wait: a lease whose owner (host:pid:random) names this host and a
pid that is no longer alive is taken over at once, so a restarted single process resumes without sitting idle.

Times are epoch seconds on the database's clock (one clock for all workers). A unit marked done before this worker
started is claimed again (cheaply: the caller checks the store for each row before any request), so a rerun with
`--retry-errors`, or after rows were removed, still sees every unit; units done while this worker runs are skipped.
"""

from __future__ import annotations

import os
import secrets
import socket
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from typing import TypeVar

from harness.store.db import Db

T = TypeVar("T")

CLAIMED, BUSY, DONE = "claimed", "busy", "done"

#: seconds a lease lives without a heartbeat (HARNESS_LEASE_TTL overrides); renewed every ttl/3
DEFAULT_TTL = 60.0
#: seconds between polls while every unit left is leased by another live worker
DEFAULT_POLL = 1.0
#: test hook: after its first claim a worker waits (up to this many seconds) until another worker holds a lease of
#: the run, so a test of two workers gets a deterministic split
AWAIT_PEER_ENV = "HARNESS_TEST_AWAIT_PEER"

_NOW = {
    "sqlite": "((julianday('now') - 2440587.5) * 86400.0)",
    "postgresql": "(EXTRACT(EPOCH FROM clock_timestamp())::double precision)",
}


def worker_id() -> str:
    """A worker id unique across machines and restarts: host:pid:random."""
    return f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(4)}"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    except OSError:
        return False
    return True


#: worker ids of this process's Leases (a lease naming this pid under another id is an earlier process's)
_OURS: set[str] = set()


def owner_is_dead(owner: str, me: str, alive: Callable[[int], bool] = _pid_alive) -> bool:
    """True when `owner` is a worker on this host (the host of `me`) whose process is gone: its pid is dead, or it
    is this very pid under an id this process never made (an earlier process that had the same pid). Other hosts:
    False (wait for the lease to expire)."""
    parts, mine = owner.rsplit(":", 2), me.rsplit(":", 2)
    if owner == me or len(parts) != 3 or len(mine) != 3 or parts[0] != mine[0] or not parts[1].isdigit():
        return False
    pid = int(parts[1])
    if pid == os.getpid():
        return owner not in _OURS
    return not alive(pid)


class Leases:
    """One worker's leases on one run. Not thread-safe (its own heartbeat thread uses its own connection)."""

    def __init__(self, db: Db, run_id: str, *, owner: str | None = None, ttl: float | None = None,
                 poll: float = DEFAULT_POLL, heartbeat: bool = True):
        self.db, self.run_id = db, run_id
        self.owner = owner or worker_id()
        _OURS.add(self.owner)
        self.ttl = float(ttl if ttl is not None else os.environ.get("HARNESS_LEASE_TTL", DEFAULT_TTL))
        self.poll = poll
        self.now_sql = _NOW[db.dialect]
        self.since = self.now()  # units done before this are checked again
        self.claims = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        memory = db.dialect == "sqlite" and db.target.path == ":memory:"
        if heartbeat and not memory:
            self._thread = threading.Thread(target=self._beat, name="lease-heartbeat", daemon=True)
            self._thread.start()

    # ---- single statements ----
    def now(self) -> float:
        """The database clock, in epoch seconds."""
        row = self.db.one(f"SELECT {self.now_sql}")
        assert row is not None
        return float(row[0])

    def claim(self, stage: str, unit: str) -> str:
        """Try to lease one unit: CLAIMED (it is this worker's now), DONE (another worker finished it after this
        worker started) or BUSY (a live worker holds it)."""
        n = self.now_sql
        got = self.db.one(
            "INSERT INTO leases (run_id, stage, unit_key, owner, acquired_at, heartbeat_at, expires_at, done) "
            f"VALUES (?, ?, ?, ?, {n}, {n}, {n} + ?, FALSE) "
            "ON CONFLICT (run_id, stage, unit_key) DO UPDATE SET owner = excluded.owner, "
            "acquired_at = excluded.acquired_at, heartbeat_at = excluded.heartbeat_at, "
            "expires_at = excluded.expires_at, done = FALSE, done_at = NULL "
            "WHERE (leases.done AND leases.done_at < ?) OR (NOT leases.done AND "
            "(leases.expires_at < excluded.acquired_at OR leases.owner = excluded.owner)) RETURNING owner",
            (self.run_id, stage, unit, self.owner, self.ttl, self.since),
        )
        if got is not None:
            self.claims += 1
            return CLAIMED
        row = self.db.one("SELECT owner, done FROM leases WHERE run_id = ? AND stage = ? AND unit_key = ?",
                          (self.run_id, stage, unit))
        if row is None:  # pragma: no cover - the row was there a statement ago; rows are never deleted
            return BUSY
        owner, done = row[0], bool(row[1])
        if done:
            return DONE
        if owner_is_dead(owner, self.owner):  # its process on this host is gone: take over without waiting
            cur = self.db.execute(
                f"UPDATE leases SET owner = ?, acquired_at = {n}, heartbeat_at = {n}, expires_at = {n} + ? "
                "WHERE run_id = ? AND stage = ? AND unit_key = ? AND owner = ? AND NOT done",
                (self.owner, self.ttl, self.run_id, stage, unit, owner),
            )
            if cur.rowcount == 1:
                self.claims += 1
                return CLAIMED
        return BUSY

    def done(self, stage: str, unit: str) -> None:
        """Mark a unit finished (also when the lease was lost meanwhile: the work is in the store all the same)."""
        n = self.now_sql
        self.db.execute(f"UPDATE leases SET done = TRUE, done_at = {n}, expires_at = {n} "
                        "WHERE run_id = ? AND stage = ? AND unit_key = ?", (self.run_id, stage, unit))

    def release(self, stage: str, unit: str) -> None:
        """Give an unfinished unit back at once (its work failed or was interrupted)."""
        self.db.execute("UPDATE leases SET expires_at = 0 WHERE run_id = ? AND stage = ? AND unit_key = ? "
                        "AND owner = ? AND NOT done", (self.run_id, stage, unit, self.owner))

    def renew(self, db: Db | None = None) -> int:
        """Extend every unfinished lease this worker holds by `ttl`; returns how many."""
        n = self.now_sql
        cur = (db or self.db).execute(
            f"UPDATE leases SET heartbeat_at = {n}, expires_at = {n} + ? WHERE owner = ? AND NOT done",
            (self.ttl, self.owner))
        return int(cur.rowcount)

    def held(self) -> list[tuple[str, str]]:
        """(stage, unit) of the unfinished leases this worker holds."""
        _, rows = self.db.all("SELECT stage, unit_key FROM leases WHERE owner = ? AND NOT done ORDER BY stage, "
                              "unit_key", (self.owner,))
        return [(r[0], r[1]) for r in rows]

    # ---- the loop a stage runs ----
    def each(self, stage: str, items: Iterable[T], key: Callable[[T], str],
             on_wait: Callable[[int], None] | None = None) -> Iterator[T]:
        """Yield each item whose unit this worker leased; the unit is marked done when the loop body for it
        returns, and given back if it raises. Items leased by other workers are skipped, then polled for until
        they are done (or their lease expires and this worker takes them over), so when the loop ends every
        unit's work is in the store."""
        pending = list(items)
        while pending:
            busy: list[T] = []
            for it in pending:
                k = key(it)
                state = self.claim(stage, k)
                if state == BUSY:
                    busy.append(it)
                    continue
                if state == DONE:
                    continue
                if self.claims == 1:
                    self._await_peer()
                try:
                    yield it
                except BaseException:
                    self.release(stage, k)
                    raise
                self.done(stage, k)
            pending = busy
            if pending:
                if on_wait is not None:
                    on_wait(len(pending))
                time.sleep(self.poll)

    def _await_peer(self) -> None:
        limit = float(os.environ.get(AWAIT_PEER_ENV) or 0)
        end = time.monotonic() + limit
        while time.monotonic() < end:
            if self.db.one("SELECT 1 FROM leases WHERE run_id = ? AND owner <> ?", (self.run_id, self.owner)):
                return
            time.sleep(0.2)

    # ---- heartbeat ----
    def _beat(self) -> None:
        db: Db | None = None
        while not self._stop.wait(self.ttl / 3):
            try:
                if db is None:
                    db = Db.connect(self.db.target, create=False)
                self.renew(db)
            except Exception as e:  # a missed beat only shortens the lease: say so and go on
                print(f"lease heartbeat failed: {type(e).__name__}: {str(e).strip()[:200]}", file=sys.stderr)
        if db is not None:
            db.close()

    def close(self) -> None:
        """Stop the heartbeat and give back every unfinished lease this worker holds."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
        self.db.execute("UPDATE leases SET expires_at = 0 WHERE owner = ? AND NOT done", (self.owner,))

    def __enter__(self) -> Leases:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
