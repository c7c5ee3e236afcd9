"""The one HTTP layer: timeouts, retries with backoff and Retry-After, per-system
concurrency caps and rate limits, one re-authentication on a refused credential, and an
audit line per request. Sleep and clock are injected, so no test waits in real time."""

from __future__ import annotations

import ipaddress
import json
import os
import random
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from decimal import Decimal
from email.utils import parsedate_to_datetime
from typing import Any, Protocol
from urllib.parse import urlencode, urlsplit

import requests

from .clock import SYSTEM_CLOCK, Clock
from .errors import (
    ApiError,
    AuthError,
    ConfigError,
    NotFound,
    ReauthRequired,
    RejectedError,
    RetryableError,
    Throttled,
    TransientError,
)

SECRET_PARAMS = {"client_secret", "refresh_token", "access_token", "code", "password",
                 "devkey", "dev_key", "sessionid", "token"}
IDEMPOTENT = {"GET", "HEAD", "PUT", "DELETE", "OPTIONS"}


@dataclass
class Response:
    status: int
    headers: Mapping[str, str]
    body: Any
    text: str
    elapsed: float

    def json(self) -> Any:
        return self.body


Classify = Callable[[Response], ApiError | None]


class AuditSink(Protocol):
    def write(self, event: str, **fields: Any) -> None: ...


class Authenticator(Protocol):
    fix_hint: str

    def apply(self, headers: dict[str, str], http: HttpClient) -> None: ...
    def reauthenticate(self, http: HttpClient) -> None: ...


def is_loopback(host: str | None) -> bool:
    if not host:
        return False
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def server_message(resp: Response) -> tuple[str | None, str]:
    """The server's own error code and message, from the common JSON shapes."""
    body = resp.body
    if isinstance(body, list) and body and isinstance(body[0], dict):
        body = body[0]
    if isinstance(body, dict):
        errors = (body.get("response") or {}).get("errors") if isinstance(
            body.get("response"), dict) else None
        if isinstance(errors, list) and errors and isinstance(errors[0], dict):
            return str(errors[0].get("errno")), str(errors[0].get("message", ""))
        if "error" in body and isinstance(body["error"], str):
            return body["error"], str(body.get("error_description", ""))
        for code_key in ("code", "errno", "errorCode"):
            if code_key in body:
                return str(body[code_key]), str(body.get("message", ""))
        if "message" in body:
            return None, str(body["message"])
    return None, resp.text[:200].strip() or f"HTTP {resp.status}"


def retry_after(resp: Response, clock: Clock) -> float | None:
    value = resp.headers.get("Retry-After")
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, (when - clock.now()).total_seconds())


def default_classify(resp: Response, system: str, clock: Clock) -> ApiError | None:
    if resp.status < 400:
        return None
    code, message = server_message(resp)
    kw = {"system": system, "status": resp.status, "code": code}
    if resp.status == 429:
        return Throttled(message, retry_after=retry_after(resp, clock), **kw)
    if resp.status >= 500:
        return RetryableError(message, retry_after=retry_after(resp, clock), **kw)
    if resp.status == 401:
        return ReauthRequired(message, **kw)
    if resp.status == 403:
        return AuthError(f"{system} refused the request: {message}", system=system)
    if resp.status == 404:
        return NotFound(message, **kw)
    return RejectedError(message, **kw)


def _encode(obj: Any) -> str:
    """JSON with Decimals as exact numbers (never through float)."""
    marks: dict[str, str] = {}

    def default(o: Any) -> Any:
        if isinstance(o, Decimal):
            key = f"__dec_{len(marks)}__"
            marks[key] = format(o, "f")
            return key
        raise TypeError(f"cannot encode {type(o).__name__}")

    text = json.dumps(obj, default=default)
    for key, number in marks.items():
        text = text.replace(f'"{key}"', number)
    return text


class _RateLimit:
    """A token bucket on the injected clock."""

    def __init__(self, per_second: float, clock: Clock):
        self.rate, self.clock = per_second, clock
        self.tokens, self.stamp = per_second, clock.monotonic()
        self.lock = threading.Lock()

    def take(self) -> None:
        while True:
            with self.lock:
                now = self.clock.monotonic()
                self.tokens = min(self.rate, self.tokens + (now - self.stamp) * self.rate)
                self.stamp = now
                if self.tokens >= 1:
                    self.tokens -= 1
                    return
                wait = (1 - self.tokens) / self.rate
            self.clock.sleep(wait)


def _session(base_url: str) -> requests.Session:
    """A session that reads the proxy and CA settings of the environment once, not on
    every request (requests re-reads os.environ per call: a fifth of a fast sync)."""
    session = requests.Session()
    session.trust_env = False
    session.proxies = requests.utils.get_environ_proxies(base_url)
    bundle = os.environ.get("REQUESTS_CA_BUNDLE") or os.environ.get("CURL_CA_BUNDLE")
    if bundle:
        session.verify = bundle
    return session


class HttpClient:
    def __init__(self, system: str, base_url: str, *, classify: Classify | None = None,
                 authenticator: Authenticator | None = None, audit: AuditSink | None = None,
                 max_in_flight: int = 4, per_second: float | None = None,
                 timeout: float = 30.0, max_retries: int = 5, backoff_base: float = 0.5,
                 backoff_cap: float = 60.0, retry_after_cap: float = 300.0,
                 clock: Clock = SYSTEM_CLOCK, jitter: Callable[[], float] = random.random,
                 session: requests.Session | None = None):
        parts = urlsplit(base_url)
        if parts.scheme not in ("https", "http") or not parts.hostname:
            raise ConfigError(f"{system}: base URL {base_url!r} is not an http(s) URL")
        if parts.scheme == "http" and not is_loopback(parts.hostname):
            raise ConfigError(f"{system}: plain http is only allowed on loopback (the sandbox "
                              f"and tests), not {parts.hostname}")
        self.system, self.base_url = system, base_url.rstrip("/")
        self.classify, self.authenticator, self.audit = classify, authenticator, audit
        self.timeout, self.max_retries = timeout, max_retries
        self.backoff_base, self.backoff_cap = backoff_base, backoff_cap
        self.retry_after_cap, self.clock, self.jitter = retry_after_cap, clock, jitter
        self.session = session or _session(self.base_url)
        adapter = requests.adapters.HTTPAdapter(pool_connections=4,
                                                pool_maxsize=max(4, max_in_flight * 2))
        self.session.mount("http://", adapter)
        self.session.mount("https://", adapter)
        self._slots = threading.BoundedSemaphore(max_in_flight)
        self._rate = _RateLimit(per_second, clock) if per_second else None
        self._count_lock = threading.Lock()
        self.calls = 0

    def get(self, path: str, **kw: Any) -> Response:
        return self.request("GET", path, **kw)

    def post(self, path: str, **kw: Any) -> Response:
        return self.request("POST", path, **kw)

    def put(self, path: str, **kw: Any) -> Response:
        return self.request("PUT", path, **kw)

    def patch(self, path: str, **kw: Any) -> Response:
        return self.request("PATCH", path, **kw)

    def request(self, method: str, path: str, *, params: Mapping[str, Any] | None = None,
                json: Any = None, data: Any = None, headers: Mapping[str, str] | None = None,
                idempotent: bool | None = None, authenticated: bool = True) -> Response:
        method = method.upper()
        safe = (method in IDEMPOTENT) if idempotent is None else idempotent
        url = self.base_url + (path if path.startswith("/") else "/" + path)
        body = _encode(json) if json is not None else None
        reauthed = False
        attempt = 0
        while True:
            attempt += 1
            hdrs = {"Accept": "application/json", **(headers or {})}
            if body is not None:
                hdrs["Content-Type"] = "application/json"
            if authenticated and self.authenticator is not None:
                self.authenticator.apply(hdrs, self)
            try:
                resp = self._send(method, url, path, params, body if body is not None else data,
                                  hdrs, attempt)
            except requests.ConnectionError as exc:
                sent = not isinstance(exc, requests.exceptions.ConnectTimeout) and not (
                    "NewConnectionError" in repr(exc) or "Connection refused" in str(exc))
                err: ApiError = RetryableError(f"connection failed ({type(exc).__name__})",
                                               system=self.system)
                if not safe and sent:
                    raise TransientError(err.message, system=self.system) from None
            except requests.Timeout:
                err = RetryableError(f"no answer within {self.timeout:g} s", system=self.system)
                if not safe:
                    raise TransientError(err.message, system=self.system) from None
            else:
                err = (self.classify(resp) if self.classify else None) or default_classify(
                    resp, self.system, self.clock)
                if err is None:
                    return resp
            if isinstance(err, ReauthRequired):
                if self.authenticator is None or reauthed or not authenticated:
                    fix = getattr(self.authenticator, "fix_hint", None)
                    raise AuthError(f"{self.system} refused the credential: {err.message}",
                                    system=self.system, fix=fix)
                reauthed = True
                self.authenticator.reauthenticate(self)
                continue
            if not isinstance(err, RetryableError):
                raise err
            if not safe and not isinstance(err, Throttled):
                # e.g. a 5xx after a POST: it may have been processed; the engine looks the
                # record up by its natural key before trying again
                raise TransientError(err.message, system=err.system, status=err.status,
                                     code=err.code)
            if attempt > self.max_retries:
                raise TransientError(f"{err.message} (gave up after {attempt} attempts)",
                                     system=err.system, status=err.status, code=err.code)
            self.clock.sleep(self._backoff(attempt, err.retry_after))

    def _backoff(self, attempt: int, hint: float | None) -> float:
        if hint is not None:
            return min(hint, self.retry_after_cap)
        base = min(self.backoff_cap, self.backoff_base * 2 ** (attempt - 1))
        return base * (0.5 + 0.5 * self.jitter())

    def _send(self, method: str, url: str, path: str, params: Mapping[str, Any] | None,
              payload: Any, headers: dict[str, str], attempt: int) -> Response:
        if self._rate:
            self._rate.take()
        status: int | None = None
        started = time.perf_counter()
        try:
            with self._slots:
                with self._count_lock:
                    self.calls += 1
                raw = self.session.request(method, url, params=params, data=payload,
                                           headers=headers, timeout=self.timeout)
            status = raw.status_code
            try:
                body = raw.json(parse_float=Decimal) if raw.content else None
            except ValueError:
                body = None
            return Response(raw.status_code, raw.headers, body, raw.text,
                            time.perf_counter() - started)
        finally:
            if self.audit is not None:
                self.audit.write("api.request", system=self.system, method=method,
                                 path=_shown_path(path, params), status=status,
                                 duration_ms=int((time.perf_counter() - started) * 1000),
                                 attempt=attempt)


def _shown_path(path: str, params: Mapping[str, Any] | None) -> str:
    path = path.split("?", 1)[0]
    if not params:
        return path
    shown = {k: ("[redacted]" if k.lower() in SECRET_PARAMS else v) for k, v in params.items()}
    return f"{path}?{urlencode(shown, doseq=True, safe='[]:,')}"
