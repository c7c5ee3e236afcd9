"""Token lifecycles, in one place that http.py calls: apply() adds a fresh credential,
reauthenticate() replaces one the server refused.

Cached tokens and sessions live in the keyring (SecretStore), so a cron job every five
minutes neither refreshes nor logs in every five minutes. Refreshes and logins run under
an inter-process file lock, and re-read the store inside it: two overlapping runs never
both spend the same single-use refresh token.
"""

from __future__ import annotations

import fcntl
import json
import os
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from .clock import SYSTEM_CLOCK, Clock
from .errors import AuthError, RejectedError, UnavailableError
from .secrets import KEYRING_FIXES, SecretStore, env_var


@contextmanager
def file_lock(path: Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)


class OAuthRefreshAuth:
    """Authorization-code tokens with a single-use (rotating) refresh token: FreshBooks,
    QuickBooks."""

    def __init__(self, system_name: str, *, token_url: str, client_id: str,
                 redirect_uri: str | None, secrets: SecretStore, locks_dir: Path,
                 clock: Clock = SYSTEM_CLOCK, margin: float = 300):
        self.system, self.token_url, self.client_id = system_name, token_url, client_id
        self.redirect_uri, self.secrets, self.clock, self.margin = (
            redirect_uri, secrets, clock, margin)
        self.lock_path = Path(locks_dir) / f"{system_name}.token.lock"
        self.fix_hint = f"run: mlconnector auth login {system_name}"
        self._mutex = threading.Lock()
        self._token: dict[str, Any] | None = None

    def apply(self, headers: dict[str, str], http: Any) -> None:
        token = self._current(http, force=False)
        headers["Authorization"] = f"Bearer {token['access_token']}"

    def reauthenticate(self, http: Any) -> None:
        refused = self._token["access_token"] if self._token else None
        self._current(http, force=True, refused=refused)

    # --------------------------------------------------------------------------------
    def _fresh(self, token: dict[str, Any] | None) -> bool:
        return bool(token) and float(token.get("expires_at", 0)) - self.margin > \
            self.clock.now().timestamp()

    def _cached(self) -> dict[str, Any] | None:
        raw = self.secrets._kr_get("access_token")
        try:
            return json.loads(raw) if raw else None
        except json.JSONDecodeError:
            return None

    def _current(self, http: Any, *, force: bool, refused: str | None = None) -> dict[str, Any]:
        with self._mutex:
            if not force and self._fresh(self._token):
                return self._token  # type: ignore[return-value]
            with file_lock(self.lock_path):
                cached = self._cached()
                # another thread or process may have refreshed while we waited
                if cached and self._fresh(cached) and cached["access_token"] != refused:
                    self._token = cached
                    return cached
                self._token = self._refresh(http)
                return self._token

    def _refresh(self, http: Any) -> dict[str, Any]:
        refresh_token = self.secrets.get_refresh_token()
        if not refresh_token:
            raise AuthError(f"{self.system}: no refresh token (not logged in)",
                            system=self.system, fix=self.fix_hint)
        client_secret = self.secrets.get("client_secret")
        if not client_secret:
            raise AuthError(f"{self.system}: no client_secret", system=self.system,
                            fix=f"set {env_var(self.system, 'client_secret')} or run: "
                                f"mlconnector auth set {self.system} client_secret")
        if not self.secrets.writable():
            # the refresh token is single-use: never spend it without a place to keep the next
            raise AuthError(
                f"{self.system}: no keyring can store the rotated refresh token, so the "
                "current one is not spent", system=self.system,
                fix=KEYRING_FIXES.format(var=env_var(self.system, "refresh_token")))
        form = {"grant_type": "refresh_token", "refresh_token": refresh_token,
                "client_id": self.client_id, "client_secret": client_secret}
        if self.redirect_uri:
            form["redirect_uri"] = self.redirect_uri
        try:
            resp = http.request("POST", _path_of(http, self.token_url), data=form,
                                authenticated=False, idempotent=False)
        except RejectedError as exc:
            raise AuthError(f"{self.system}: the refresh token was refused ({exc.code}: "
                            f"{exc.message}); it was already used or revoked",
                            system=self.system, fix=self.fix_hint) from None
        except AuthError as exc:
            raise AuthError(f"{self.system}: token refresh refused: {exc}", system=self.system,
                            fix=self.fix_hint) from None
        body = resp.body or {}
        now = self.clock.now().timestamp()
        created = float(body.get("created_at") or now)
        token = {"access_token": body["access_token"],
                 "expires_at": created + float(body.get("expires_in") or 3600),
                 "refreshed_at": now}
        # persisted before use: a crash after this line loses nothing
        if body.get("refresh_token"):
            self.secrets.save_refresh_token(body["refresh_token"])
        self.secrets.set("access_token", json.dumps(token))
        return token


class BillSessionAuth:
    """BILL's devKey + username + password login; the sessionId is reused across runs
    while it is alive (35 idle minutes), because logins are capped at 200 an hour."""

    def __init__(self, system_name: str, *, username: str, organization_id: str,
                 secrets: SecretStore, locks_dir: Path, clock: Clock = SYSTEM_CLOCK,
                 idle: float = 35 * 60, margin: float = 120, logins_per_hour: int = 200):
        self.system, self.username, self.organization_id = system_name, username, \
            organization_id
        self.secrets, self.clock, self.idle, self.margin = secrets, clock, idle, margin
        self.logins_per_hour = logins_per_hour
        self.lock_path = Path(locks_dir) / f"{system_name}.session.lock"
        self.log_path = Path(locks_dir) / f"{system_name}.logins.json"
        self.fix_hint = f"check: mlconnector auth set {system_name} password"
        self._mutex = threading.Lock()
        self._session: dict[str, Any] | None = None
        self._saved_at = 0.0

    def apply(self, headers: dict[str, str], http: Any) -> None:
        session = self._current(http, force=False)
        headers["devKey"] = self._dev_key()
        headers["sessionId"] = session["session_id"]
        self._touch()

    def reauthenticate(self, http: Any) -> None:
        refused = self._session["session_id"] if self._session else None
        self._current(http, force=True, refused=refused)

    def _dev_key(self) -> str:
        key = self.secrets.get("dev_key")
        if not key:
            raise AuthError(f"{self.system}: no BILL developer key", system=self.system,
                            fix=f"set {env_var(self.system, 'dev_key')} or run: "
                                f"mlconnector auth set {self.system} dev_key")
        return key

    def _alive(self, session: dict[str, Any] | None) -> bool:
        return bool(session) and float(session.get("last_used", 0)) + self.idle - \
            self.margin > self.clock.now().timestamp()

    def _touch(self) -> None:
        now = self.clock.now().timestamp()
        with self._mutex:
            if self._session is None:
                return
            self._session["last_used"] = now
            if now - self._saved_at > 60 and self.secrets.writable():
                self._saved_at = now
                self.secrets.set("session", json.dumps(self._session))

    def _current(self, http: Any, *, force: bool, refused: str | None = None) -> dict[str, Any]:
        with self._mutex:
            if not force and self._alive(self._session):
                return self._session  # type: ignore[return-value]
            with file_lock(self.lock_path):
                raw = self.secrets._kr_get("session")
                cached = json.loads(raw) if raw else None
                if cached and self._alive(cached) and cached["session_id"] != refused:
                    self._session = cached
                    return cached
                self._session = self._login(http)
                self._saved_at = self.clock.now().timestamp()
                return self._session

    def _login(self, http: Any) -> dict[str, Any]:
        password = self.secrets.get("password")
        if not password:
            raise AuthError(f"{self.system}: no BILL password", system=self.system,
                            fix=f"set {env_var(self.system, 'password')} or run: "
                                f"mlconnector auth set {self.system} password")
        self._count_login()
        resp = http.request("POST", "/v3/login", json={
            "username": self.username, "password": password,
            "organizationId": self.organization_id, "devKey": self._dev_key()},
            authenticated=False, idempotent=True)
        session = {"session_id": resp.body["sessionId"],
                   "last_used": self.clock.now().timestamp()}
        if self.secrets.writable():
            self.secrets.set("session", json.dumps(session))
        return session

    def _count_login(self) -> None:
        now = self.clock.now().timestamp()
        try:
            stamps = json.loads(self.log_path.read_text())
        except (FileNotFoundError, json.JSONDecodeError):
            stamps = []
        stamps = [t for t in stamps if now - t < 3600]
        if len(stamps) >= self.logins_per_hour:
            raise UnavailableError(
                f"{self.system}: {len(stamps)} BILL logins in the last hour; BILL allows "
                f"{self.logins_per_hour} per developer key. Waiting for the hour to pass.",
                system=self.system)
        stamps.append(now)
        tmp = self.log_path.with_suffix(".tmp")
        tmp.write_text(json.dumps(stamps))
        os.replace(tmp, self.log_path)


def _path_of(http: Any, url: str) -> str:
    """The token URL relative to the client's base URL (the same host for FreshBooks)."""
    base = getattr(http, "base_url", "")
    if url.startswith(base):
        return url[len(base):] or "/"
    raise AuthError(f"token URL {url} is not under {base}")


__all__ = ["OAuthRefreshAuth", "BillSessionAuth", "file_lock", "time"]
