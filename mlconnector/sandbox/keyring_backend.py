"""A keyring backend for the sandbox, the demo and the tests ONLY.

It stores secrets in PLAIN TEXT: in a JSON file at $MLCONNECTOR_SANDBOX_KEYRING (mode
0600, created on the first write), or in a dict in memory when that variable is unset.
Never use it for real credentials. Its priority is negative, so keyring never picks it
on its own; select it explicitly with
PYTHON_KEYRING_BACKEND=mlconnector.sandbox.keyring_backend.SandboxKeyring
(or keyring.set_keyring(SandboxKeyring()) in a test).
"""

from __future__ import annotations

import fcntl
import json
import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from keyring.backend import KeyringBackend
from keyring.compat import properties
from keyring.errors import PasswordDeleteError

_MEMORY: dict[str, dict[str, str]] = {}
_LOCK = threading.RLock()


class SandboxKeyring(KeyringBackend):
    """Plain-text secrets for the sandbox only (see the module docstring)."""

    @properties.classproperty
    def priority(cls) -> float:
        return -1

    # -- storage -------------------------------------------------------------------------
    @staticmethod
    def _path() -> Path | None:
        value = os.environ.get("MLCONNECTOR_SANDBOX_KEYRING")
        return Path(value) if value else None

    @contextmanager
    def _locked(self) -> Iterator[dict[str, dict[str, str]]]:
        """The whole store, locked against other threads and processes; written back on
        exit (to the file when there is one)."""
        path = self._path()
        with _LOCK:
            if path is None:
                yield _MEMORY
                return
            path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(f"{path}.lock", os.O_RDWR | os.O_CREAT, 0o600)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX)
                try:
                    data = json.loads(path.read_text(encoding="utf-8"))
                except (FileNotFoundError, json.JSONDecodeError):
                    data = {}
                before = json.dumps(data, sort_keys=True)
                yield data
                if json.dumps(data, sort_keys=True) != before:
                    tmp = f"{path}.{os.getpid()}.{threading.get_ident()}.tmp"
                    out = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
                    with os.fdopen(out, "w", encoding="utf-8") as fh:
                        json.dump(data, fh, indent=1, sort_keys=True)
                    os.replace(tmp, path)
                    os.chmod(path, 0o600)
            finally:
                fcntl.flock(fd, fcntl.LOCK_UN)
                os.close(fd)

    # -- the keyring API -----------------------------------------------------------------
    def get_password(self, service: str, username: str) -> str | None:
        with self._locked() as data:
            return data.get(service, {}).get(username)

    def set_password(self, service: str, username: str, password: str) -> None:
        with self._locked() as data:
            data.setdefault(service, {})[username] = password

    def delete_password(self, service: str, username: str) -> None:
        with self._locked() as data:
            entries = data.get(service, {})
            if username not in entries:
                raise PasswordDeleteError(f"nothing stored for {username} in {service}")
            del entries[username]
            if not entries:
                del data[service]
