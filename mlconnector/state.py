"""Local state in SQLite (WAL): runs, watermarks, the id map, parked records, learned
values, and the per-pair lock.

One connection, guarded by a lock, because the engine writes from a small thread pool.
Every write commits at once: a crash loses nothing that was recorded.
"""

from __future__ import annotations

import fcntl
import json
import os
import secrets
import sqlite3
import threading
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

from .auth import file_lock
from .errors import LockHeld

SCHEMA = """
CREATE TABLE IF NOT EXISTS runs (
    run_id TEXT PRIMARY KEY, pair TEXT NOT NULL, started_at TEXT NOT NULL,
    finished_at TEXT, exit_code INTEGER, summary TEXT
);
CREATE INDEX IF NOT EXISTS runs_pair ON runs(pair, started_at);
CREATE TABLE IF NOT EXISTS watermarks (
    pair TEXT NOT NULL, flow TEXT NOT NULL, value TEXT NOT NULL, updated_at TEXT NOT NULL,
    PRIMARY KEY (pair, flow)
);
CREATE TABLE IF NOT EXISTS id_map (
    pair TEXT NOT NULL, flow TEXT NOT NULL, source_id TEXT NOT NULL, target_id TEXT NOT NULL,
    version TEXT, payload_hash TEXT, updated_at TEXT NOT NULL,
    PRIMARY KEY (pair, flow, source_id)
);
CREATE INDEX IF NOT EXISTS id_map_target ON id_map(pair, flow, target_id);
CREATE TABLE IF NOT EXISTS parked (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    pair TEXT NOT NULL, flow TEXT NOT NULL, source_id TEXT NOT NULL,
    kind TEXT NOT NULL CHECK (kind IN ('held', 'failed')),
    transient INTEGER NOT NULL DEFAULT 0, reason TEXT NOT NULL, payload TEXT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 1, next_attempt_at TEXT,
    first_run_id TEXT, last_run_id TEXT, created_at TEXT NOT NULL, updated_at TEXT NOT NULL,
    UNIQUE (pair, flow, source_id)
);
CREATE TABLE IF NOT EXISTS kv (key TEXT PRIMARY KEY, value TEXT NOT NULL);
"""


@dataclass(frozen=True)
class Mapped:
    source_id: str
    target_id: str
    version: str | None
    payload_hash: str | None


@dataclass(frozen=True)
class Parked:
    id: int
    pair: str
    flow: str
    source_id: str
    kind: str
    transient: bool
    reason: str
    payload: dict[str, Any]
    attempts: int
    next_attempt_at: str | None
    first_run_id: str | None
    last_run_id: str | None
    created_at: str
    updated_at: str


def _json(value: Any) -> str:
    return json.dumps(value, default=lambda o: str(o) if isinstance(o, Decimal) else repr(o))


def _iso(dt: datetime) -> str:
    return dt.isoformat(timespec="seconds").replace("+00:00", "Z")


def opening(db_path: Path) -> AbstractContextManager[None]:
    """Setting up a connection to the state database, one at a time: switching a new file
    to WAL does not wait on the busy timeout, so two runs opening the state for the first
    time at once got "database is locked"."""
    return file_lock(Path(f"{db_path}.init-lock"))


class State:
    def __init__(self, path: Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        self._lock = threading.RLock()
        self._db = sqlite3.connect(str(self.path), check_same_thread=False, isolation_level=None,
                                   timeout=10.0)
        os.chmod(self.path, 0o600)
        self._db.execute("PRAGMA busy_timeout=10000")
        with opening(self.path):
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.executescript(SCHEMA)

    def __enter__(self) -> State:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def _exec(self, sql: str, args: tuple = ()) -> sqlite3.Cursor:
        with self._lock:
            return self._db.execute(sql, args)

    def _all(self, sql: str, args: tuple = ()) -> list[tuple]:
        with self._lock:
            return self._db.execute(sql, args).fetchall()

    # -- runs -------------------------------------------------------------------------
    def start_run(self, pair: str, now: datetime) -> str:
        run_id = now.strftime("%Y%m%dT%H%M%SZ") + "-" + secrets.token_hex(3)
        self._exec("INSERT INTO runs(run_id, pair, started_at) VALUES (?,?,?)",
                   (run_id, pair, _iso(now)))
        return run_id

    def finish_run(self, run_id: str, now: datetime, exit_code: int, summary: dict) -> None:
        self._exec("UPDATE runs SET finished_at=?, exit_code=?, summary=? WHERE run_id=?",
                   (_iso(now), exit_code, _json(summary), run_id))

    def last_run(self, pair: str) -> dict | None:
        rows = self._all("SELECT run_id, started_at, finished_at, exit_code, summary FROM runs "
                         "WHERE pair=? ORDER BY started_at DESC, rowid DESC LIMIT 1", (pair,))
        if not rows:
            return None
        run_id, started, finished, code, summary = rows[0]
        return {"run_id": run_id, "started_at": started, "finished_at": finished,
                "exit_code": code, "summary": json.loads(summary) if summary else None}

    # -- watermarks -------------------------------------------------------------------
    def watermark(self, pair: str, flow: str) -> str | None:
        rows = self._all("SELECT value FROM watermarks WHERE pair=? AND flow=?", (pair, flow))
        return rows[0][0] if rows else None

    def set_watermark(self, pair: str, flow: str, value: str, now: datetime) -> None:
        self._exec("INSERT INTO watermarks(pair, flow, value, updated_at) VALUES (?,?,?,?) "
                   "ON CONFLICT(pair, flow) DO UPDATE SET value=excluded.value, "
                   "updated_at=excluded.updated_at", (pair, flow, value, _iso(now)))

    def watermarks(self, pair: str) -> dict[str, str]:
        return dict(self._all("SELECT flow, value FROM watermarks WHERE pair=?", (pair,)))

    def clear_watermarks(self, pair: str, flow: str | None = None) -> None:
        if flow:
            self._exec("DELETE FROM watermarks WHERE pair=? AND flow=?", (pair, flow))
        else:
            self._exec("DELETE FROM watermarks WHERE pair=?", (pair,))

    # -- id map -----------------------------------------------------------------------
    def mapped(self, pair: str, flow: str, source_id: str) -> Mapped | None:
        rows = self._all("SELECT source_id, target_id, version, payload_hash FROM id_map "
                         "WHERE pair=? AND flow=? AND source_id=?", (pair, flow, str(source_id)))
        return Mapped(*rows[0]) if rows else None

    def mapped_by_target(self, pair: str, flow: str, target_id: str) -> Mapped | None:
        rows = self._all("SELECT source_id, target_id, version, payload_hash FROM id_map "
                         "WHERE pair=? AND flow=? AND target_id=?", (pair, flow, str(target_id)))
        return Mapped(*rows[0]) if rows else None

    def record_synced(self, pair: str, flow: str, source_id: str, target_id: str,
                      version: str | None, payload_hash: str | None, now: datetime) -> None:
        """The id map entry and the end of any parking, in one transaction."""
        with self._lock:
            self._db.execute("BEGIN")
            try:
                self._db.execute(
                    "INSERT INTO id_map(pair, flow, source_id, target_id, version, payload_hash,"
                    " updated_at) VALUES (?,?,?,?,?,?,?) ON CONFLICT(pair, flow, source_id) DO "
                    "UPDATE SET target_id=excluded.target_id, version=excluded.version, "
                    "payload_hash=excluded.payload_hash, updated_at=excluded.updated_at",
                    (pair, flow, str(source_id), str(target_id), version, payload_hash,
                     _iso(now)))
                self._db.execute("DELETE FROM parked WHERE pair=? AND flow=? AND source_id=?",
                                 (pair, flow, str(source_id)))
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise

    def mapped_parts(self, pair: str, flow: str, parent_id: str) -> list[str]:
        """Source ids written as parts of one source object ("201:146", "201:147" for
        payment 201 of two bills)."""
        prefix = f"{parent_id}:"
        return [r[0] for r in self._all(
            "SELECT source_id FROM id_map WHERE pair=? AND flow=? AND source_id >= ? AND "
            "source_id < ? ORDER BY source_id", (pair, flow, prefix, prefix + "\uffff"))]

    def mapped_source_ids(self, pair: str, flow: str, chunk: int = 500) -> Iterator[list[str]]:
        """Every source id the flow has written, a chunk at a time (memory stays flat)."""
        last = ""
        while True:
            rows = self._all("SELECT source_id FROM id_map WHERE pair=? AND flow=? AND "
                             "source_id > ? ORDER BY source_id LIMIT ?",
                             (pair, flow, last, chunk))
            if not rows:
                return
            yield [r[0] for r in rows]
            last = rows[-1][0]

    def count_mapped(self, pair: str) -> dict[str, int]:
        return dict(self._all("SELECT flow, count(*) FROM id_map WHERE pair=? GROUP BY flow",
                              (pair,)))

    # -- parked records ---------------------------------------------------------------
    def park(self, pair: str, flow: str, source_id: str, *, kind: str, reason: str,
             payload: dict, transient: bool, run_id: str, now: datetime,
             next_attempt_at: datetime | None = None) -> tuple[int, bool]:
        """Park a record (held or failed). Returns (parked id, newly parked this time?)."""
        with self._lock:
            rows = self._db.execute(
                "SELECT id, kind, reason FROM parked WHERE pair=? AND flow=? AND source_id=?",
                (pair, flow, str(source_id))).fetchall()
            nxt = _iso(next_attempt_at) if next_attempt_at else None
            if rows:
                pid, old_kind, old_reason = rows[0]
                self._db.execute(
                    "UPDATE parked SET kind=?, transient=?, reason=?, payload=?, "
                    "attempts=attempts+1, next_attempt_at=?, last_run_id=?, updated_at=? "
                    "WHERE id=?",
                    (kind, int(transient), reason, _json(payload), nxt, run_id, _iso(now), pid))
                return pid, (old_kind, old_reason) != (kind, reason)
            cur = self._db.execute(
                "INSERT INTO parked(pair, flow, source_id, kind, transient, reason, payload, "
                "next_attempt_at, first_run_id, last_run_id, created_at, updated_at) "
                "VALUES (?,?,?,?,?,?,?,?,?,?,?,?)",
                (pair, flow, str(source_id), kind, int(transient), reason, _json(payload), nxt,
                 run_id, run_id, _iso(now), _iso(now)))
            return int(cur.lastrowid or 0), True

    def unpark(self, pair: str, flow: str, source_id: str) -> None:
        self._exec("DELETE FROM parked WHERE pair=? AND flow=? AND source_id=?",
                   (pair, flow, str(source_id)))

    _PARKED_COLS = ("id, pair, flow, source_id, kind, transient, reason, payload, attempts, "
                    "next_attempt_at, first_run_id, last_run_id, created_at, updated_at")

    def _parked(self, where: str, args: tuple) -> list[Parked]:
        rows = self._all(f"SELECT {self._PARKED_COLS} FROM parked {where} ORDER BY id", args)
        out = []
        for r in rows:
            r = list(r)
            r[5] = bool(r[5])
            r[7] = json.loads(r[7])
            out.append(Parked(*r))
        return out

    def parked(self, pair: str | None = None, flow: str | None = None) -> list[Parked]:
        clauses, args = [], []
        if pair:
            clauses.append("pair=?")
            args.append(pair)
        if flow:
            clauses.append("flow=?")
            args.append(flow)
        where = ("WHERE " + " AND ".join(clauses)) if clauses else ""
        return self._parked(where, tuple(args))

    def parked_by_id(self, parked_id: int) -> Parked | None:
        found = self._parked("WHERE id=?", (int(parked_id),))
        return found[0] if found else None

    def parked_for(self, pair: str, flow: str, source_id: str) -> Parked | None:
        found = self._parked("WHERE pair=? AND flow=? AND source_id=?",
                             (pair, flow, str(source_id)))
        return found[0] if found else None

    def due_retries(self, pair: str, flow: str, now: datetime) -> list[Parked]:
        """Transient failures whose next automatic attempt is due."""
        return self._parked(
            "WHERE pair=? AND flow=? AND kind='failed' AND transient=1 "
            "AND next_attempt_at IS NOT NULL AND next_attempt_at <= ?",
            (pair, flow, _iso(now)))

    def parked_counts(self, pair: str) -> dict[str, int]:
        return dict(self._all("SELECT kind, count(*) FROM parked WHERE pair=? GROUP BY kind",
                              (pair,)))

    # -- learned values (account ids, realm ids, ...) -------------------------------------
    def get_value(self, key: str) -> str | None:
        rows = self._all("SELECT value FROM kv WHERE key=?", (key,))
        return rows[0][0] if rows else None

    def set_value(self, key: str, value: str) -> None:
        self._exec("INSERT INTO kv(key, value) VALUES (?,?) ON CONFLICT(key) DO UPDATE SET "
                   "value=excluded.value", (key, value))

    def delete_value(self, key: str) -> None:
        self._exec("DELETE FROM kv WHERE key=?", (key,))

    # -- the per-pair lock ----------------------------------------------------------------
    @contextmanager
    def lock(self, pair: str) -> Iterator[None]:
        """An flock on a file: released by the kernel even when the run is SIGKILLed."""
        locks = self.path.parent / "locks"
        locks.mkdir(exist_ok=True, mode=0o700)
        fd = os.open(locks / f"{pair}.lock", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise LockHeld(f"another run of {pair} is under way (lock held)") from None
            os.ftruncate(fd, 0)
            os.write(fd, str(os.getpid()).encode())
            yield
        finally:
            os.close(fd)
