"""Secrets: the environment first (MLCONNECTOR_<SYSTEM>_<FIELD>), else the OS keyring
(service "mlconnector/<system>", user name = the field). Never in the config file, a log,
the audit trail or a message.

Whatever keyring backend the user selected (PYTHON_KEYRING_BACKEND, keyringrc) is used as
it is. A keyring that fails, or that would wait for a prompt nobody answers under cron,
becomes an AuthError naming the two fixes instead of a hang or a traceback.

Rotating refresh tokens form a chain: the newest token saved in the keyring wins over the
bootstrap value in the environment (which the provider has already invalidated), until
the environment value changes, which starts a new chain. Beside the saved token the
keyring keeps the sha256 of the environment value its chain grew from.
"""

from __future__ import annotations

import hashlib
import os
import sys
import threading
from collections.abc import Callable, Mapping
from typing import Any, Literal, TypeVar

from .errors import AuthError

T = TypeVar("T")

KEYRING_FIXES = (
    "either install a keyring that works without a desktop session (pip install "
    "keyrings.cryptfile, then set PYTHON_KEYRING_BACKEND=keyrings.cryptfile.cryptfile."
    "CryptFileKeyring and KEYRING_CRYPTFILE_PASSWORD in the job's environment), or give "
    "the secret in the environment as {var}"
)
CHAIN_FIELD = "refresh_token.bootstrap_sha256"
FILE_KEYRING_PASSWORD = "KEYRING_CRYPTFILE_PASSWORD"
Source = Literal["environment", "keyring"]


def env_var(system: str, field: str) -> str:
    """`MLCONNECTOR_<SYSTEM>_<FIELD>`, upper-cased, `-` as `_` (the same rule as
    config.env_var_name)."""
    return f"MLCONNECTOR_{system}_{field}".upper().replace("-", "_")


def digest(value: str) -> str:
    return hashlib.sha256(value.encode()).hexdigest()


def _interactive() -> bool:
    try:
        return bool(sys.stdin) and sys.stdin.isatty()
    except (AttributeError, ValueError):
        return False


def unlock_file_keyring(backend: Any, env: Mapping[str, str]) -> None:
    """keyrings.cryptfile asks for its password at a prompt, which nobody answers under
    cron: give it the one in the environment instead (KEYRING_CRYPTFILE_PASSWORD)."""
    from keyring.backends import chainer

    if isinstance(backend, chainer.ChainerBackend):
        for inner in backend.backends:
            unlock_file_keyring(inner, env)
        return
    password = env.get(FILE_KEYRING_PASSWORD)
    if password and isinstance(getattr(type(backend), "keyring_key", None), property) \
            and getattr(backend, "_keyring_key", "") is None:
        backend.keyring_key = password  # raises ValueError("Incorrect Password")


def locked_file_keyring(backend: Any, env: Mapping[str, str]) -> bool:
    """A file keyring that would ask for its password (none in the environment)."""
    from keyring.backends import chainer

    if isinstance(backend, chainer.ChainerBackend):
        return any(locked_file_keyring(b, env) for b in backend.backends)
    return (isinstance(getattr(type(backend), "keyring_key", None), property)
            and getattr(backend, "_keyring_key", "") is None
            and not env.get(FILE_KEYRING_PASSWORD))


def usable_backend(backend: Any) -> bool:
    """A backend that can store: not keyring's fail or null backend, not a chainer with
    nothing to chain."""
    from keyring.backends import chainer, fail, null

    if isinstance(backend, fail.Keyring | null.Keyring):
        return False
    if isinstance(backend, chainer.ChainerBackend):
        return any(usable_backend(b) for b in backend.backends)
    return True


class SecretStore:
    """One system's secrets. `keyring_timeout` bounds each keyring call when nobody sits at
    a terminal (cron): a backend waiting for a password prompt or an unlock dialog turns
    into an AuthError instead of a hung job. None: no bound."""

    def __init__(self, system_name: str, *, env: Mapping[str, str] | None = None,
                 keyring_timeout: float | None = 30.0):
        self.system = system_name
        self.env = os.environ if env is None else env
        self.service = f"mlconnector/{system_name}"
        self.keyring_timeout = keyring_timeout

    # -- the keyring, wrapped: it never hangs, and never leaks a value into a message ---------
    def _fix(self, field: str) -> str:
        return KEYRING_FIXES.format(var=env_var(self.system, field))

    def _call(self, what: str, field: str, fn: Callable[..., T], *args: Any) -> T:
        import keyring.errors

        def failed(reason: str) -> AuthError:
            return AuthError(f"the keyring could not {what} {self.system}.{field} ({reason})",
                             system=self.system, fix=self._fix(field))

        def call() -> T:
            unlock_file_keyring(self._backend(), self.env)
            return fn(*args)

        try:
            if self.keyring_timeout is None or _interactive():
                return call()
            box: dict[str, Any] = {}

            def run() -> None:
                try:
                    box["value"] = call()
                except BaseException as exc:  # noqa: BLE001 - handed to the caller below
                    box["error"] = exc

            worker = threading.Thread(target=run, name="mlconnector-keyring", daemon=True)
            worker.start()
            worker.join(self.keyring_timeout)
            if worker.is_alive():
                raise failed(f"no answer within {self.keyring_timeout:g} s: is it waiting "
                             "for a password prompt or a locked desktop keyring?")
            if "error" in box:
                raise box["error"]
            return box["value"]
        except AuthError:
            raise
        except keyring.errors.NoKeyringError:
            raise
        except ValueError as exc:
            if "Incorrect Password" in str(exc):
                raise failed(f"{FILE_KEYRING_PASSWORD} does not open the encrypted keyring "
                             "file") from None
            raise failed(type(exc).__name__) from None
        except Exception as exc:  # a locked keyring, no D-Bus under cron, EOF at a prompt
            raise failed(type(exc).__name__) from None

    def _backend(self) -> Any:
        import keyring

        return keyring.get_keyring()

    def get_stored(self, field: str) -> str | None:
        """The keyring's value only (None when there is no keyring at all)."""
        import keyring
        import keyring.errors

        try:
            return self._call("read", field, keyring.get_password, self.service, field)
        except keyring.errors.NoKeyringError:
            return None  # environment-only operation is a supported set-up

    def writable(self) -> bool:
        """A keyring backend that can store is present, and answers without a prompt (a
        file keyring without its password would only fail after the refresh token was
        spent: so it is asked first)."""
        import keyring

        try:
            backend = self._backend()
            if not usable_backend(backend) or (
                    locked_file_keyring(backend, self.env) and not _interactive()):
                return False
            self._call("read", CHAIN_FIELD, keyring.get_password, self.service, CHAIN_FIELD)
            return True
        except Exception:
            return False

    # -- the public face ---------------------------------------------------------------------
    def get(self, field: str) -> str | None:
        value = self.env.get(env_var(self.system, field))
        return value if value else self.get_stored(field)

    def source(self, field: str) -> Source | None:
        if self.env.get(env_var(self.system, field)):
            return "environment"
        return "keyring" if self.get_stored(field) else None

    def set(self, field: str, value: str) -> None:
        import keyring
        import keyring.errors

        if not self.writable():
            raise AuthError(f"no usable keyring to store {self.system}.{field}",
                            system=self.system, fix=self._fix(field))
        try:
            self._call("store", field, keyring.set_password, self.service, field, value)
        except keyring.errors.NoKeyringError:
            raise AuthError(f"no usable keyring to store {self.system}.{field}",
                            system=self.system, fix=self._fix(field)) from None

    def delete(self, field: str) -> None:
        """Forget a stored value; nothing stored (or no keyring at all) is not an error."""
        import keyring
        import keyring.errors

        if not self.writable() or self.get_stored(field) is None:
            return
        try:
            self._call("delete", field, keyring.delete_password, self.service, field)
        except keyring.errors.NoKeyringError:
            pass
        except AuthError:
            if self.get_stored(field) is not None:
                raise

    # -- rotating refresh tokens -----------------------------------------------------------
    def get_refresh_token(self) -> str | None:
        env_value = self.env.get(env_var(self.system, "refresh_token"))
        saved = self.get_stored("refresh_token")
        if env_value:
            if saved and self.get_stored(CHAIN_FIELD) == digest(env_value):
                return saved  # the environment value was spent; its chain moved on
            return env_value  # the first value, or a new one: a new chain starts
        return saved

    def refresh_token_source(self) -> Source | None:
        env_value = self.env.get(env_var(self.system, "refresh_token"))
        if env_value and not (self.get_stored("refresh_token") and
                              self.get_stored(CHAIN_FIELD) == digest(env_value)):
            return "environment"
        return "keyring" if self.get_stored("refresh_token") else None

    def save_refresh_token(self, token: str) -> None:
        """Store a rotated (or newly consented) refresh token as the head of its chain.

        The token is written first: within a chain the hash is already there, so a crash
        between the two writes loses nothing."""
        env_value = self.env.get(env_var(self.system, "refresh_token"))
        self.set("refresh_token", token)
        if env_value:
            if self.get_stored(CHAIN_FIELD) != digest(env_value):
                self.set(CHAIN_FIELD, digest(env_value))
        else:
            self.delete(CHAIN_FIELD)
