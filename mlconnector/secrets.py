"""Secrets: the environment first (MLCONNECTOR_<SYSTEM>_<FIELD>), else the OS keyring
(service "mlconnector/<system>"). Never in the config file, a log, the audit trail or a
message.

Rotating refresh tokens form a chain: the newest token saved in the keyring wins over the
bootstrap value in the environment (which the provider has already invalidated), until
the environment value changes, which starts a new chain. The keyring keeps a hash of the
environment value each chain grew from.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Mapping
from typing import Literal

from .errors import AuthError

KEYRING_FIXES = (
    "give the secret as an environment variable ({var}), or install a keyring that works "
    "without a desktop session: pip install keyrings.cryptfile, then set "
    "PYTHON_KEYRING_BACKEND=keyrings.cryptfile.cryptfile.CryptFileKeyring and "
    "KEYRING_CRYPTFILE_PASSWORD in the job's environment"
)
CHAIN_FIELD = "refresh_token.bootstrap_sha256"


def env_var(system: str, field: str) -> str:
    return f"MLCONNECTOR_{system}_{field}".upper().replace("-", "_")


def _digest(value: str) -> str:
    return hashlib.sha256(value.encode()).hexdigest()


class SecretStore:
    def __init__(self, system_name: str, *, env: Mapping[str, str] | None = None):
        self.system = system_name
        self.env = os.environ if env is None else env
        self.service = f"mlconnector/{system_name}"

    # -- keyring, wrapped so that it never hangs or leaks a value into a traceback -------------
    def _keyring(self):
        import keyring

        return keyring

    def _kr_get(self, field: str) -> str | None:
        try:
            return self._keyring().get_password(self.service, field)
        except Exception:  # no backend, a locked desktop keyring under cron, ...
            return None

    def writable(self) -> bool:
        try:
            backend = self._keyring().get_keyring()
        except Exception:
            return False
        name = f"{type(backend).__module__}.{type(backend).__name__}"
        if "fail" in name.lower():
            return False
        if name.endswith("chainer.ChainerBackend"):
            return bool(getattr(backend, "backends", []))
        return True

    # -- the public face -----------------------------------------------------------------------
    def get(self, field: str) -> str | None:
        value = self.env.get(env_var(self.system, field))
        return value if value else self._kr_get(field)

    def source(self, field: str) -> Literal["environment", "keyring"] | None:
        if self.env.get(env_var(self.system, field)):
            return "environment"
        return "keyring" if self._kr_get(field) else None

    def set(self, field: str, value: str) -> None:
        fix = KEYRING_FIXES.format(var=env_var(self.system, field))
        if not self.writable():
            raise AuthError(f"no usable keyring to store {self.system}.{field}",
                            system=self.system, fix=fix)
        try:
            self._keyring().set_password(self.service, field, value)
        except Exception as exc:
            raise AuthError(f"the keyring refused to store {self.system}.{field} "
                            f"({type(exc).__name__})", system=self.system, fix=fix) from None

    def delete(self, field: str) -> None:
        try:
            self._keyring().delete_password(self.service, field)
        except Exception:
            pass

    # -- rotating refresh tokens ------------------------------------------------------------
    def get_refresh_token(self) -> str | None:
        env_value = self.env.get(env_var(self.system, "refresh_token"))
        saved = self._kr_get("refresh_token")
        if env_value:
            chain = self._kr_get(CHAIN_FIELD)
            if saved and chain == _digest(env_value):
                return saved  # the environment value was spent; the chain moved on
            return env_value  # a new (or the first) bootstrap value
        return saved

    def save_refresh_token(self, token: str) -> None:
        env_value = self.env.get(env_var(self.system, "refresh_token"))
        self.set("refresh_token", token)
        if env_value:
            self.set(CHAIN_FIELD, _digest(env_value))
        else:
            self.delete(CHAIN_FIELD)
