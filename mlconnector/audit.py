"""The audit trail: JSON Lines, one file per UTC day, mode 0600.

`jq` should be all a user needs to answer "what happened to bill 1234", so every line
carries ts, event, run_id, pair and, where they apply, flow, source_id and target_id.
"""

from __future__ import annotations

import json
import os
import threading
from decimal import Decimal
from pathlib import Path
from typing import Any

from .clock import SYSTEM_CLOCK, Clock

# Keys whose values are never written, wherever they appear in a line.
SECRET_KEYS = frozenset(
    {
        "password", "client_secret", "refresh_token", "access_token", "dev_key", "devkey",
        "sessionid", "session_id", "app_key", "authorization", "token", "secret",
        "webhook_verifier", "verifier", "security_key", "securitykey",
    }
)
REDACTED = "[redacted]"


def redact(value: Any) -> Any:
    if isinstance(value, dict):
        return {
            k: (REDACTED if str(k).lower().replace("-", "_") in SECRET_KEYS else redact(v))
            for k, v in value.items()
        }
    if isinstance(value, list | tuple):
        return [redact(v) for v in value]
    return value


def _default(obj: Any) -> Any:
    if isinstance(obj, Decimal):
        return str(obj)
    if isinstance(obj, Path):
        return str(obj)
    return repr(obj)


class Audit:
    def __init__(
        self,
        directory: Path,
        *,
        run_id: str | None = None,
        pair: str | None = None,
        clock: Clock = SYSTEM_CLOCK,
    ):
        self.directory = Path(directory)
        self.run_id, self.pair, self.clock = run_id, pair, clock
        self._lock = threading.Lock()
        self._day: str | None = None
        self._fh: Any = None

    def path_for(self, day: str) -> Path:
        return self.directory / f"{day}.jsonl"

    @property
    def current_path(self) -> Path:
        return self.path_for(self.clock.now().strftime("%Y-%m-%d"))

    def write(self, event: str, **fields: Any) -> None:
        now = self.clock.now()
        line: dict[str, Any] = {
            "ts": now.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
            "event": event,
            "run_id": self.run_id,
            "pair": self.pair,
        }
        for key in ("source_id", "target_id"):
            if fields.get(key) is not None:
                fields[key] = str(fields[key])
        line.update(redact({k: v for k, v in fields.items() if v is not None}))
        text = json.dumps(line, default=_default, ensure_ascii=False) + "\n"
        with self._lock:
            self._file(now.strftime("%Y-%m-%d")).write(text)

    def _file(self, day: str) -> Any:
        if day != self._day:
            if self._fh:
                self._fh.close()
            self.directory.mkdir(parents=True, exist_ok=True, mode=0o700)
            path = self.path_for(day)
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
            os.chmod(path, 0o600)
            # line-buffered: a SIGKILL loses at most the line being written
            self._fh = os.fdopen(fd, "a", buffering=1, encoding="utf-8")
            self._day = day
        return self._fh

    def close(self) -> None:
        with self._lock:
            if self._fh:
                self._fh.close()
                self._fh, self._day = None, None


def read_lines(directory: Path, *, since_day: str | None = None):
    """Every audit line, oldest file first (streamed)."""
    for path in sorted(Path(directory).glob("*.jsonl")):
        if since_day and path.stem < since_day:
            continue
        with path.open(encoding="utf-8") as fh:
            for raw in fh:
                raw = raw.strip()
                if raw:
                    try:
                        yield json.loads(raw)
                    except json.JSONDecodeError:
                        continue  # a line cut by a crash
