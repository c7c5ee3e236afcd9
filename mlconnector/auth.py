"""Token lifecycles, in the one place http.py calls: `apply()` adds a live credential
(obtaining or refreshing it first when needed), `reauthenticate()` replaces one the
server refused.

Credentials that live longer than a run (access tokens, BILL sessions) are cached in the
keyring through SecretStore, so a cron job every five minutes neither refreshes nor logs
in every five minutes. Obtaining one is single-flight twice over: a mutex for the
threads of a run, and an inter-process file lock (`locks_dir/<system>.<kind>.lock`)
inside which the store is read again, so two overlapping runs never both spend the same
single-use refresh token nor both log in.

No secret reaches an exception message, the audit or a log: server messages are
scrubbed of the values in play before they are quoted.
"""

from __future__ import annotations

import base64
import fcntl
import json
import os
import threading
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol
from urllib.parse import urlsplit

from .clock import SYSTEM_CLOCK, Clock
from .errors import AuthError, MlcError, UnavailableError
from .secrets import KEYRING_FIXES, SecretStore, env_var

if TYPE_CHECKING:
    from .http import HttpClient, Response

ACCESS_FIELD = "access_token"    # keyring: JSON {access_token, expires_at, lifetime,
#                                  refreshed_at} (consent.py writes the same shape)
SESSION_FIELD = "session"        # keyring: JSON {session_id, last_used, logged_in_at}
REDACTED = "[redacted]"


class Authenticator(Protocol):
    fix_hint: str  # e.g. "run: mlconnector auth login books"

    def apply(self, headers: dict[str, str], http: HttpClient) -> None: ...
    def reauthenticate(self, http: HttpClient) -> None: ...


@contextmanager
def file_lock(path: Path) -> Iterator[None]:
    """An exclusive flock, between processes and between open files of one process."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)


def scrub(text: str, *secrets: str | None) -> str:
    for secret in secrets:
        if secret and len(secret) >= 4:
            text = text.replace(secret, REDACTED)
    return text


def _iso(ts: float | None) -> str | None:
    return datetime.fromtimestamp(ts, UTC).isoformat() if ts else None


def client_auth(form: dict[str, str], client_id: str, secret: str, *,
                basic: bool) -> dict[str, str]:
    """The client's credentials, as HTTP Basic (returned headers) or in the form."""
    if basic:
        pair = f"{client_id}:{secret}".encode()
        return {"Authorization": "Basic " + base64.b64encode(pair).decode()}
    form.update(client_id=client_id, client_secret=secret)
    return {}


def refresh_expiries(body: Any, now: float) -> dict[str, float]:
    """When the refresh token dies: QuickBooks' rolling and hard (5-year) expiries."""
    out = {}
    for key, name in (("x_refresh_token_expires_in", "refresh_expires_at"),
                      ("x_refresh_token_hard_expires_in", "refresh_hard_expires_at")):
        value = body.get(key) if isinstance(body, dict) else None
        if isinstance(value, int | float) and not isinstance(value, bool):
            out[name] = now + float(value)
    return out


class _Cached:
    """A credential held in memory and in the keyring, obtained single-flight."""

    kind = "token"
    cache_field = ACCESS_FIELD
    key_name = "access_token"
    cache_optional = False  # True: a keyring in trouble only costs a new token or login

    def __init__(self, system_name: str, *, secrets: SecretStore, locks_dir: Path,
                 clock: Clock):
        self.system, self.secrets, self.clock = system_name, secrets, clock
        self.lock_path = Path(locks_dir) / f"{system_name}.{self.kind}.lock"
        self._mutex = threading.Lock()
        self._cred: dict[str, Any] | None = None
        self._local = threading.local()
        self._token_clients: dict[str, HttpClient] = {}

    # -- to be provided ------------------------------------------------------------------
    def _usable(self, cred: dict[str, Any]) -> bool:
        raise NotImplementedError

    def _obtain(self, http: HttpClient) -> dict[str, Any]:
        raise NotImplementedError

    # -- shared ------------------------------------------------------------------------------
    def _load(self) -> dict[str, Any] | None:
        try:
            raw = self.secrets.get_stored(self.cache_field)
        except AuthError:
            if not self.cache_optional:
                raise
            return None
        try:
            cred = json.loads(raw) if raw else None
        except json.JSONDecodeError:
            return None
        return cred if isinstance(cred, dict) and cred.get(self.key_name) else None

    def _store(self, cred: dict[str, Any], *, required: bool) -> None:
        if not required and not self.secrets.writable():
            return  # kept in memory for this run only
        try:
            self.secrets.set(self.cache_field, json.dumps(cred))
        except AuthError:
            if required:
                raise

    def _current(self, http: HttpClient, *, force: bool = False) -> dict[str, Any]:
        refused = getattr(self._local, "sent", None) if force else None

        def good(cred: dict[str, Any] | None) -> bool:
            return bool(cred) and cred[self.key_name] != refused and self._usable(cred)

        with self._mutex:
            if good(self._cred):
                return self._cred  # type: ignore[return-value]
            with file_lock(self.lock_path):
                # another thread or process may have done it while we waited
                cached = self._load()
                if good(cached):
                    self._cred = cached
                    return cached  # type: ignore[return-value]
                self._cred = self._obtain(http)
                return self._cred

    def _sent(self, cred: dict[str, Any]) -> str:
        self._local.sent = cred[self.key_name]
        return cred[self.key_name]

    def reauthenticate(self, http: HttpClient) -> None:
        self._current(http, force=True)

    def forget(self) -> None:
        """Drop the cached credential (auth logout)."""
        with self._mutex:
            self._cred = None
            self.secrets.delete(self.cache_field)

    def _client_for(self, http: HttpClient, url: str) -> tuple[HttpClient, str]:
        """The client and path for a URL: `http` itself when the URL is under its base
        URL, else a client of the same settings for the URL's origin (QuickBooks and
        ServiceTitan keep their token endpoints on another host)."""
        base = http.base_url
        if url == base or url.startswith(base + "/"):
            return http, url[len(base):] or "/"
        parts = urlsplit(url)
        origin = f"{parts.scheme}://{parts.netloc}"
        path = url[len(origin):] or "/"
        client = self._token_clients.get(origin)
        if client is None:
            from .http import HttpClient

            client = HttpClient(http.system, origin, audit=http.audit, clock=http.clock,
                                timeout=http.timeout, max_retries=http.max_retries,
                                backoff_base=http.backoff_base, backoff_cap=http.backoff_cap,
                                retry_after_cap=http.retry_after_cap, jitter=http.jitter,
                                max_in_flight=1)
            self._token_clients[origin] = client
        return client, path


class _BearerToken(_Cached):
    """An OAuth access token with an expiry, refreshed `margin` seconds ahead of it."""

    def __init__(self, system_name: str, *, token_url: str, client_id: str,
                 secrets: SecretStore, locks_dir: Path, clock: Clock, margin: float,
                 default_lifetime: float):
        super().__init__(system_name, secrets=secrets, locks_dir=locks_dir, clock=clock)
        self.token_url, self.client_id = token_url, client_id
        self.margin, self.default_lifetime = margin, default_lifetime

    def apply(self, headers: dict[str, str], http: HttpClient) -> None:
        headers["Authorization"] = f"Bearer {self._sent(self._current(http))}"

    def _usable(self, cred: dict[str, Any]) -> bool:
        lifetime = float(cred.get("lifetime") or self.default_lifetime)
        margin = min(self.margin, lifetime / 2)  # a short-lived token is still used
        return float(cred.get("expires_at", 0)) - margin > self.clock.now().timestamp()

    def _token_from(self, body: Any) -> dict[str, Any]:
        if not isinstance(body, dict) or not isinstance(body.get("access_token"), str):
            raise AuthError(f"{self.system}: the token endpoint answered without an access "
                            "token", system=self.system, fix=self.fix_hint)
        now = self.clock.now().timestamp()
        lifetime = float(body.get("expires_in") or self.default_lifetime)
        created = float(body.get("created_at") or now)
        if abs(created - now) > lifetime / 2:  # a server clock far off: trust ours
            created = now
        return {"access_token": body["access_token"], "expires_at": created + lifetime,
                "lifetime": lifetime, "refreshed_at": now}

    def _token_errors(self, what: str, *secrets: str | None):
        """A classify for the token endpoint: OAuth's own error answers."""

        def classify(resp: Response) -> MlcError | None:
            if resp.status < 400:
                return None
            code, message, bits = _refusal(resp, secrets)
            if code == "invalid_grant":
                return AuthError(f"{self.system}: the {what} was refused (already used or "
                                 f"revoked) [{bits}]: {message}", system=self.system,
                                 fix=self.fix_hint)
            if code in ("invalid_client", "unauthorized_client") or resp.status == 401:
                return AuthError(f"{self.system}: the token endpoint refused the client id "
                                 f"or secret [{bits}]: {message}", system=self.system,
                                 fix=f"check systems.{self.system}.client_id, then run: "
                                     f"mlconnector auth set {self.system} client_secret")
            if resp.status != 429 and resp.status < 500:
                return AuthError(f"{self.system}: the token endpoint refused the request "
                                 f"[{bits}]: {message}", system=self.system, fix=self.fix_hint)
            return None  # 429 and 5xx: http.py's defaults

        return classify

    def _client_secret(self) -> str:
        secret = self.secrets.get("client_secret")
        if not secret:
            raise AuthError(f"{self.system}: no client_secret", system=self.system,
                            fix=f"set {env_var(self.system, 'client_secret')} or run: "
                                f"mlconnector auth set {self.system} client_secret")
        return secret

    def status(self) -> dict[str, Any]:
        """What `auth status` shows: where things come from and when the token expires."""
        cred = self._cred or self._load()
        return {"access_token_expires_at": _iso(cred.get("expires_at")) if cred else None,
                "client_secret": self.secrets.source("client_secret")}


class OAuthRefreshAuth(_BearerToken):
    """Authorization-code tokens with a refresh token (FreshBooks, QuickBooks).

    The refresh token is single-use: each refresh returns a new one and kills the old. So
    the refresh runs under the file lock, re-reads the store first, refuses to start when
    no keyring could keep the new token, and persists the new refresh and access tokens
    before either is used."""

    def __init__(self, system_name: str, *, token_url: str, client_id: str,
                 redirect_uri: str | None, secrets: SecretStore, locks_dir: Path,
                 clock: Clock = SYSTEM_CLOCK, margin: float = 300,
                 default_lifetime: float = 3600, basic: bool = False,
                 token_headers: Mapping[str, str] | None = None):
        super().__init__(system_name, token_url=token_url, client_id=client_id,
                         secrets=secrets, locks_dir=locks_dir, clock=clock, margin=margin,
                         default_lifetime=default_lifetime)
        self.redirect_uri = redirect_uri
        # QuickBooks: client id and secret as HTTP Basic, and the header that asks for
        # the refresh token's hard (5-year) expiry
        self.basic, self.token_headers = basic, dict(token_headers or {})
        self.fix_hint = f"run: mlconnector auth login {system_name}"

    def _obtain(self, http: HttpClient) -> dict[str, Any]:
        refresh_token = self.secrets.get_refresh_token()
        if not refresh_token:
            raise AuthError(f"{self.system}: no refresh token: not logged in yet",
                            system=self.system, fix=self.fix_hint)
        client_secret = self._client_secret()
        if not self.secrets.writable():
            # single-use: never spend it without a place to keep the next one
            var = env_var(self.system, "refresh_token")
            raise AuthError(
                f"{self.system}: no keyring can store the new refresh token that a refresh "
                "returns, and the current one is single-use, so it was not spent",
                system=self.system,
                fix=KEYRING_FIXES.format(var=var) + f" (the refresh tokens are single-use: "
                    f"with {var} alone, every refresh needs a new consent, "
                    f"mlconnector auth login {self.system}, and a new value of {var})")
        form = {"grant_type": "refresh_token", "refresh_token": refresh_token}
        headers = client_auth(form, self.client_id, client_secret, basic=self.basic)
        headers.update(self.token_headers)
        if self.redirect_uri and not self.basic:
            form["redirect_uri"] = self.redirect_uri
        client, path = self._client_for(http, self.token_url)
        resp = client.request("POST", path, data=form, headers=headers, authenticated=False,
                              idempotent=False,
                              classify=self._token_errors("refresh token", refresh_token,
                                                          client_secret))
        token = self._token_from(resp.body)
        token.update(refresh_expiries(resp.body, token["refreshed_at"]))
        new_refresh = resp.body.get("refresh_token")
        try:  # persisted before use: a crash after this loses nothing
            if isinstance(new_refresh, str) and new_refresh:
                self.secrets.save_refresh_token(new_refresh)
            self._store(token, required=True)
        except AuthError as exc:
            raise AuthError(f"{self.system}: the refresh token was spent, but its successor "
                            f"could not be stored: {exc}", system=self.system,
                            fix=f"{exc.fix}; then run: mlconnector auth login {self.system}"
                            ) from None
        return token

    def status(self) -> dict[str, Any]:
        return {**super().status(), "refresh_token": self.secrets.refresh_token_source()}

    def forget(self) -> None:
        super().forget()
        self.secrets.delete("refresh_token")
        from .secrets import CHAIN_FIELD

        self.secrets.delete(CHAIN_FIELD)


class ClientCredentialsAuth(_BearerToken):
    """OAuth client credentials (ServiceNow, ServiceTitan, Salesforce): no refresh token,
    a new access token when the cached one nears its expiry or is refused.

    `header_secrets` adds headers taken from secrets on every call (ServiceTitan's
    `ST-App-Key` from `app_key`); `basic=True` sends the client id and secret as HTTP
    Basic instead of in the form."""

    def __init__(self, system_name: str, *, token_url: str, client_id: str,
                 secrets: SecretStore, locks_dir: Path, clock: Clock = SYSTEM_CLOCK,
                 margin: float = 60, scope: str | None = None,
                 extra_form: Mapping[str, str] | None = None, basic: bool = False,
                 header_secrets: Mapping[str, str] | None = None,
                 default_lifetime: float = 1800):
        super().__init__(system_name, token_url=token_url, client_id=client_id,
                         secrets=secrets, locks_dir=locks_dir, clock=clock, margin=margin,
                         default_lifetime=default_lifetime)
        self.scope, self.extra_form, self.basic = scope, dict(extra_form or {}), basic
        self.header_secrets = dict(header_secrets or {})
        self.cache_optional = True
        self._headers: dict[str, str] | None = None
        self.fix_hint = (f"check systems.{system_name}.client_id, then run: "
                         f"mlconnector auth set {system_name} client_secret")

    def apply(self, headers: dict[str, str], http: HttpClient) -> None:
        super().apply(headers, http)
        if self._headers is None:
            values = {}
            for header, field in self.header_secrets.items():
                value = self.secrets.get(field)
                if not value:
                    raise AuthError(f"{self.system}: no {field}", system=self.system,
                                    fix=f"set {env_var(self.system, field)} or run: "
                                        f"mlconnector auth set {self.system} {field}")
                values[header] = value
            self._headers = values
        headers.update(self._headers)

    def _obtain(self, http: HttpClient) -> dict[str, Any]:
        secret = self._client_secret()
        form = {"grant_type": "client_credentials", **self.extra_form}
        headers = client_auth(form, self.client_id, secret, basic=self.basic)
        if self.scope:
            form["scope"] = self.scope
        client, path = self._client_for(http, self.token_url)
        # a token request changes nothing on the server: safe to resend
        resp = client.request("POST", path, data=form, headers=headers, authenticated=False,
                              idempotent=True,
                              classify=self._token_errors("client credentials", secret))
        token = self._token_from(resp.body)
        self._store(token, required=False)
        return token


class BasicAuth:
    """HTTP Basic (ServiceNow's alternative): nothing to refresh; a refusal is final."""

    def __init__(self, system_name: str, *, username: str, secrets: SecretStore,
                 field: str = "password"):
        self.system, self.username, self.secrets, self.field = (
            system_name, username, secrets, field)
        self.fix_hint = (f"check systems.{system_name}.username, then run: "
                         f"mlconnector auth set {system_name} {field}")

    def apply(self, headers: dict[str, str], http: HttpClient) -> None:
        password = self.secrets.get(self.field)
        if not password:
            raise AuthError(f"{self.system}: no {self.field}", system=self.system,
                            fix=f"set {env_var(self.system, self.field)} or run: "
                                f"mlconnector auth set {self.system} {self.field}")
        pair = f"{self.username}:{password}".encode()
        headers["Authorization"] = "Basic " + base64.b64encode(pair).decode()

    def reauthenticate(self, http: HttpClient) -> None:
        raise AuthError(f"{self.system} refused the user name or {self.field}",
                        system=self.system, fix=self.fix_hint)


class BillSessionAuth(_Cached):
    """BILL: devKey + username + password + organizationId → a sessionId that expires
    after `idle` seconds without a call. The session is reused across runs while
    `last_used + idle - margin` is ahead; its last use is written back at most every
    `touch_every` seconds. Logins are counted per rolling hour across runs
    (`locks_dir/<system>.logins.json`), and the one beyond `logins_per_hour` is refused
    before it burns the developer key's quota."""

    kind = "session"
    cache_field = SESSION_FIELD
    key_name = "session_id"
    cache_optional = True

    def __init__(self, system_name: str, *, dev_key_field: str = "dev_key", username: str,
                 organization_id: str, secrets: SecretStore, locks_dir: Path,
                 clock: Clock = SYSTEM_CLOCK, idle: float = 35 * 60, margin: float = 120,
                 logins_per_hour: int = 200, logins_per_minute: int = 5,
                 touch_every: float = 60, login_path: str = "/v3/login"):
        super().__init__(system_name, secrets=secrets, locks_dir=locks_dir, clock=clock)
        self.dev_key_field, self.username, self.organization_id = (
            dev_key_field, username, organization_id)
        self.idle, self.margin, self.touch_every = idle, margin, touch_every
        self.logins_per_hour, self.logins_per_minute = logins_per_hour, logins_per_minute
        self.login_path = login_path
        self.log_path = Path(locks_dir) / f"{system_name}.logins.json"
        self.fix_hint = f"run: mlconnector auth set {system_name} password"
        self._dev_key_value: str | None = None
        self._saved_at = 0.0

    def apply(self, headers: dict[str, str], http: HttpClient) -> None:
        session = self._current(http)
        headers["devKey"] = self._dev_key()
        headers["sessionId"] = self._sent(session)

    def succeeded(self, http: HttpClient) -> None:
        """A call went through: the session's idle clock restarted."""
        now = self.clock.now().timestamp()
        with self._mutex:
            if self._cred is None:
                return
            self._cred["last_used"] = now
            if now - self._saved_at < self.touch_every:
                return
            self._saved_at = now
            cred = dict(self._cred)
        self._store(cred, required=False)

    def _usable(self, cred: dict[str, Any]) -> bool:
        return float(cred.get("last_used", 0)) + self.idle - self.margin > \
            self.clock.now().timestamp()

    def _dev_key(self) -> str:
        if self._dev_key_value is None:
            key = self.secrets.get(self.dev_key_field)
            if not key:
                raise AuthError(f"{self.system}: no BILL developer key", system=self.system,
                                fix=f"set {env_var(self.system, self.dev_key_field)} or run: "
                                    f"mlconnector auth set {self.system} {self.dev_key_field}")
            self._dev_key_value = key
        return self._dev_key_value

    def _login_errors(self, *secrets: str | None):
        def classify(resp: Response) -> MlcError | None:
            if resp.status < 400:
                return None
            code, message, bits = _refusal(resp, secrets)
            if code == "BDC_1101":
                return AuthError(f"{self.system}: BILL refused the login [{bits}]: {message} "
                                 f"(user {self.username}, organization "
                                 f"{self.organization_id})", system=self.system,
                                 fix=f"run: mlconnector auth set {self.system} password")
            if code == "BDC_1102":
                return AuthError(f"{self.system}: BILL refused the developer key [{bits}]: "
                                 f"{message} (sandbox and production keys differ)",
                                 system=self.system,
                                 fix=f"run: mlconnector auth set {self.system} "
                                     f"{self.dev_key_field}")
            if code == "BDC_1144":
                return UnavailableError(f"BILL refuses logins for now: {message}",
                                        system=self.system, status=resp.status, code=code)
            return None  # the connector's table, then http.py's

        return classify

    def _obtain(self, http: HttpClient) -> dict[str, Any]:
        password = self.secrets.get("password")
        if not password:
            raise AuthError(f"{self.system}: no BILL password", system=self.system,
                            fix=f"set {env_var(self.system, 'password')} or run: "
                                f"mlconnector auth set {self.system} password")
        dev_key = self._dev_key()
        self._count_login()
        resp = http.request("POST", self.login_path, json={
            "username": self.username, "password": password,
            "organizationId": self.organization_id, "devKey": dev_key},
            authenticated=False, idempotent=True,
            classify=self._login_errors(password, dev_key))
        body = resp.body if isinstance(resp.body, dict) else {}
        if not isinstance(body.get("sessionId"), str):
            raise AuthError(f"{self.system}: BILL's login answered without a sessionId",
                            system=self.system, fix=self.fix_hint)
        now = self.clock.now().timestamp()
        session = {"session_id": body["sessionId"], "last_used": now, "logged_in_at": now}
        self._saved_at = now
        self._store(session, required=False)
        return session

    def _count_login(self) -> None:
        """Runs under the session file lock, so the count is exact across processes."""
        now = self.clock.now().timestamp()
        try:
            stamps = [float(t) for t in json.loads(self.log_path.read_text())]
        except (FileNotFoundError, ValueError, TypeError):
            stamps = []
        stamps = sorted(t for t in stamps if 0 <= now - t < 3600)
        if len(stamps) >= self.logins_per_hour:
            raise UnavailableError(
                f"{self.system}: {len(stamps)} BILL logins in the last hour; BILL allows "
                f"{self.logins_per_hour} per developer key, so no more until "
                f"{_iso(stamps[0] + 3600)}", system=self.system, code="login quota")
        recent = [t for t in stamps if now - t < 60]
        if self.logins_per_minute and len(recent) >= self.logins_per_minute:
            self.clock.sleep(recent[-self.logins_per_minute] + 60 - now)
            now = self.clock.now().timestamp()
        stamps.append(now)
        tmp = self.log_path.with_name(f"{self.log_path.name}.{os.getpid()}.tmp")
        self.log_path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        tmp.write_text(json.dumps(stamps))
        os.replace(tmp, self.log_path)

    def status(self) -> dict[str, Any]:
        cred = self._cred or self._load()
        expires = float(cred["last_used"]) + self.idle if cred else None
        return {"session_idle_expiry": _iso(expires),
                "password": self.secrets.source("password"),
                self.dev_key_field: self.secrets.source(self.dev_key_field)}


__all__ = ["Authenticator", "BasicAuth", "BillSessionAuth", "ClientCredentialsAuth",
           "OAuthRefreshAuth", "file_lock", "scrub"]


def _refusal(resp: Response, secrets: tuple[str | None, ...]) -> tuple[str | None, str, str]:
    """The server's code and message (any secret scrubbed out) and "status code" for a
    message, shared by the token and login error tables."""
    from .http import server_message

    code, message = server_message(resp)
    return code, scrub(message, *secrets), " ".join(b for b in (str(resp.status), code) if b)
