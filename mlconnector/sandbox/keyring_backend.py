"""A keyring for the sandbox, the demo and the tests ONLY.

It stores secrets in PLAIN TEXT: in a JSON file at $MLCONNECTOR_SANDBOX_KEYRING (mode
0600), or in memory when that variable is unset. It is never chosen on its own (negative
priority); select it with
PYTHON_KEYRING_BACKEND=mlconnector.sandbox.keyring_backend.SandboxKeyring.
"""

from __future__ import annotations

import json
import os
import threading
from pathlib import Path

from keyring.backend import KeyringBackend

_MEMORY: dict[str, dict[str, str]] = {}
_LOCK = threading.Lock()


class SandboxKeyring(KeyringBackend):
    @classmethod
    def priority(cls) -> float:  # type: ignore[override]
        return -1

    def _path(self) -> Path | None:
        value = os.environ.get("MLCONNECTOR_SANDBOX_KEYRING")
        return Path(value) if value else None

    def _load(self) -> dict[str, dict[str, str]]:
        path = self._path()
        if path is None:
            return _MEMORY
        try:
            return json.loads(path.read_text())
        except (FileNotFoundError, json.JSONDecodeError):
            return {}

    def _save(self, data: dict[str, dict[str, str]]) -> None:
        path = self._path()
        if path is None:
            return
        tmp = path.with_suffix(".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as fh:
            json.dump(data, fh)
        os.replace(tmp, path)

    def get_password(self, service: str, username: str) -> str | None:
        with _LOCK:
            return self._load().get(service, {}).get(username)

    def set_password(self, service: str, username: str, password: str) -> None:
        with _LOCK:
            data = self._load()
            data.setdefault(service, {})[username] = password
            self._save(data)

    def delete_password(self, service: str, username: str) -> None:
        with _LOCK:
            data = self._load()
            data.get(service, {}).pop(username, None)
            self._save(data)
