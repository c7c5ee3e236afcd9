"""Verified webhook events waiting for a sync, in the state database."""

from __future__ import annotations

import json
import sqlite3
import threading
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

from ..http import encode_json
from ..state import opening

# -------------------------------------------------------------------------------- inbox
INBOX_SCHEMA = """
CREATE TABLE IF NOT EXISTS webhook_inbox (
    id INTEGER PRIMARY KEY, system TEXT, event TEXT, object_id TEXT,
    dedupe_key TEXT UNIQUE, received_at TEXT, processed_at TEXT, payload TEXT
);
CREATE INDEX IF NOT EXISTS webhook_inbox_pending ON webhook_inbox(processed_at, system);
"""
# Keys with this prefix dedupe only while unprocessed: once processed, the key is freed
# (rewritten to "<key>#<id>") so that the next change to the object is a new event.
# Other keys (BILL event ids) stay taken for good.
_RELEASED_ON_PROCESS = "freshbooks:"


@dataclass(frozen=True)
class InboxItem:
    id: int
    system: str
    event: str
    object_id: str | None
    dedupe_key: str
    received_at: str            # the last delivery (a duplicate while pending moves it)
    processed_at: str | None
    payload: Any


def _iso(dt: datetime) -> str:
    return dt.astimezone(UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")


class Inbox:
    """Verified webhook events waiting for a sync, in the state database (WAL)."""

    def __init__(self, db_path: Path, *, busy_timeout_ms: int = 10000):
        self.path = Path(db_path)
        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        existed = self.path.exists()
        self._lock = threading.Lock()
        self._db = sqlite3.connect(str(self.path), check_same_thread=False,
                                   isolation_level=None, timeout=busy_timeout_ms / 1000)
        if not existed:
            self.path.chmod(0o600)
        self._db.execute(f"PRAGMA busy_timeout={int(busy_timeout_ms)}")
        with opening(self.path):
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.executescript(INBOX_SCHEMA)

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def __enter__(self) -> Inbox:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def add(self, system: str, event: str, object_id: str | None, dedupe_key: str,
            payload: Any, now: datetime) -> bool:
        """Store an event; False if `dedupe_key` is already taken (a duplicate). A
        FreshBooks duplicate of a pending event moves its `received_at` forward."""
        text = encode_json(payload)
        when = _iso(now)
        with self._lock:
            cur = self._db.execute(
                "INSERT OR IGNORE INTO webhook_inbox(system, event, object_id, dedupe_key,"
                " received_at, payload) VALUES (?,?,?,?,?,?)",
                (system, event, object_id, dedupe_key, when, text))
            if cur.rowcount:
                return True
            if dedupe_key.startswith(_RELEASED_ON_PROCESS):
                self._db.execute(
                    "UPDATE webhook_inbox SET received_at = max(received_at, ?)"
                    " WHERE dedupe_key = ? AND processed_at IS NULL", (when, dedupe_key))
            return False

    def pending(self, system: str | None = None,
                event_prefix: str | None = None) -> list[InboxItem]:
        sql = ("SELECT id, system, event, object_id, dedupe_key, received_at, processed_at,"
               " payload FROM webhook_inbox WHERE processed_at IS NULL")
        args: list[Any] = []
        if system is not None:
            sql += " AND system = ?"
            args.append(system)
        if event_prefix:
            sql += " AND substr(event, 1, ?) = ?"
            args += [len(event_prefix), event_prefix]
        with self._lock:
            rows = self._db.execute(sql + " ORDER BY id", args).fetchall()
        return [InboxItem(*row[:7], payload=json.loads(row[7], parse_float=Decimal)
                          if row[7] else None) for row in rows]

    def mark_processed(self, ids: Iterable[int | InboxItem], now: datetime) -> int:
        """Mark events handled; how many were. Given an `InboxItem` (as `pending` returned
        it), a row delivered again since it was read stays pending, so a change made while
        the sync was working on the object is not lost."""
        when, count = _iso(now), 0
        update = ("UPDATE webhook_inbox SET processed_at = ?, dedupe_key = CASE"
                  " WHEN substr(dedupe_key, 1, ?) = ? THEN dedupe_key || '#' || id"
                  " ELSE dedupe_key END WHERE id = ? AND processed_at IS NULL")
        release = (len(_RELEASED_ON_PROCESS), _RELEASED_ON_PROCESS)
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                for item in ids:
                    if isinstance(item, InboxItem):
                        cur = self._db.execute(update + " AND received_at = ?",
                                               (when, *release, item.id, item.received_at))
                    else:
                        cur = self._db.execute(update, (when, *release, int(item)))
                    count += cur.rowcount
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
        return count

    def prune(self, before: datetime) -> int:
        """Forget events processed before `before` (BILL keeps its history 180 days, so a
        redelivery of an older event id is not expected)."""
        with self._lock:
            cur = self._db.execute(
                "DELETE FROM webhook_inbox WHERE processed_at IS NOT NULL AND processed_at < ?",
                (_iso(before),))
        return cur.rowcount

