"""The one HTTP layer: timeouts, retries with backoff and Retry-After, per-system
concurrency caps and rate limits, one re-authentication on a refused credential, and an
audit line per attempt. Nothing else in mlconnector retries.

What is retried (see errors.py for the table):
- RetryableError (5xx, 429, connection trouble, whatever a connector's `classify` says):
  with exponential backoff and jitter, or after the server's Retry-After (capped), up to
  `max_retries` times, then TransientError.
- A request that is not idempotent (POST and PATCH unless `idempotent=` says otherwise)
  is resent only when it surely was not processed: the connection was never made, or the
  answer was a `Throttled` (429, BILL BDC_1322, ...). Any other failure of such a request
  (a read timeout, a 5xx) raises TransientError at once: the engine looks the record up
  by its natural key before it tries again.
- ReauthRequired: the authenticator replaces the credential once and the call is
  repeated; a second refusal is an AuthError.

Sleeps and time come from an injected clock, so no test waits in real time.
"""

from __future__ import annotations

import json as jsonlib
import os
import random
import re
import threading
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from decimal import Decimal
from email.utils import parsedate_to_datetime
from typing import TYPE_CHECKING, Any, Protocol
from urllib.parse import parse_qsl, urlencode, urlsplit

import requests
import urllib3.exceptions

from .clock import SYSTEM_CLOCK, Clock
from .errors import (
    ApiError,
    AuthError,
    ConfigError,
    MlcError,
    NotFound,
    ReauthRequired,
    RejectedError,
    RetryableError,
    Throttled,
    TransientError,
)
from .urls import is_loopback  # noqa: F401 (re-exported)

if TYPE_CHECKING:
    from .auth import Authenticator

IDEMPOTENT = frozenset({"GET", "HEAD", "PUT", "DELETE", "OPTIONS"})
SECRET_PARAMS = frozenset({"code", "token", "key", "sig", "verifier", "assertion"})
_SECRET_WORDS = ("secret", "token", "password", "passwd", "apikey", "api_key", "devkey",
                 "dev_key", "sessionid", "session_id", "credential", "signature")
REDACTED = "[redacted]"


@dataclass
class Response:
    status: int
    headers: Mapping[str, str]  # case-insensitive
    body: Any                   # parsed JSON (floats as Decimal), else None
    text: str
    elapsed: float              # seconds

    def json(self) -> Any:
        return self.body


Classify = Callable[[Response], "ApiError | MlcError | None"]


class AuditSink(Protocol):
    def write(self, event: str, **fields: Any) -> None: ...


# -- helpers a connector may reuse ---------------------------------------------------------
def _first(value: Any) -> Any:
    return value[0] if isinstance(value, list) and value else value


def server_message(resp: Response) -> tuple[str | None, str]:
    """The server's own error code and message, from the common JSON shapes:
    `{"error","error_description"}` (OAuth), `{"message"}`, `[{"code","message"}]` (BILL,
    Salesforce `errorCode`), `{"response":{"errors":[{"errno","message"}]}}` (FreshBooks),
    `{"errors":{"message"}}`, `{"error":{"message","detail"}}` (ServiceNow),
    `{"Fault":{"Error":[{"code","Message","Detail"}]}}` (QuickBooks), `{"title","detail"}`
    (RFC 7807). Falls back to a short, tag-free excerpt of the text."""
    body = _first(resp.body)
    if isinstance(body, dict):
        inner = body.get("response")
        if isinstance(inner, dict) and inner.get("errors"):
            body = _first(inner["errors"])
        elif isinstance(body.get("Fault"), dict) and body["Fault"].get("Error"):
            body = _first(body["Fault"]["Error"])
        elif isinstance(body.get("errors"), dict | list) and body["errors"] and \
                not body.get("message"):
            nested = _first(body["errors"])
            if isinstance(nested, dict) and ("message" in nested or "code" in nested):
                body = nested
    if isinstance(body, dict):
        err = body.get("error")
        if isinstance(err, str):
            return err, str(body.get("error_description") or body.get("message") or "")
        if isinstance(err, dict):
            msg = err.get("message") or ""
            detail = err.get("detail")
            code = err.get("code")
            return (str(code) if code is not None else None,
                    f"{msg}: {detail}" if detail and detail != msg else str(msg))
        code = next((body[k] for k in ("code", "errno", "errorCode", "error_code")
                     if body.get(k) is not None), None)
        message = next((body[k] for k in ("message", "Message", "error_message", "title")
                        if body.get(k)), None)
        detail = body.get("Detail") or body.get("detail")
        if message is not None or code is not None:
            text = str(message or "")
            if isinstance(detail, str) and detail and detail != text:
                text = f"{text}: {detail}" if text else detail
            return (str(code) if code is not None else None), text
    text = re.sub(r"<[^>]*>", " ", resp.text or "")
    text = " ".join(text.split())[:200]
    return None, text or f"HTTP {resp.status}"


def retry_after(resp: Response, clock: Clock) -> float | None:
    """Retry-After in seconds, from either of its forms (seconds, HTTP-date)."""
    value = (resp.headers.get("Retry-After") or "").strip()
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:
        return None
    return max(0.0, (when - clock.now()).total_seconds())


def default_classify(resp: Response, system: str, clock: Clock) -> MlcError | None:
    """The table for answers a connector's `classify` left alone."""
    if resp.status < 300 or resp.status == 304:
        return None
    code, message = server_message(resp)
    kw: dict[str, Any] = {"system": system, "status": resp.status, "code": code}
    if resp.status < 400:  # redirects are not followed: they could carry credentials away
        where = urlsplit(resp.headers.get("Location") or "").hostname or "elsewhere"
        return RejectedError(f"unexpected redirect to {where}", **kw)
    if resp.status == 429:
        return Throttled(message, retry_after=retry_after(resp, clock), **kw)
    if resp.status >= 500:
        return RetryableError(message, retry_after=retry_after(resp, clock), **kw)
    if resp.status == 401:
        return ReauthRequired(message, **kw)
    if resp.status == 403:
        bits = " ".join(b for b in (str(resp.status), code) if b)
        return AuthError(f"{system} refused the request [{bits}]: {message} (a permission or "
                         "scope is missing)", system=system)
    if resp.status == 404:
        return NotFound(message, **kw)
    return RejectedError(message, **kw)


def _encode(obj: Any) -> str:
    """JSON with Decimals as exact numbers, never through float: Decimal("142.50") is
    written 142.50."""
    mark = f"@@dec-{uuid.uuid4().hex}-"
    numbers: list[str] = []

    def default(o: Any) -> Any:
        if isinstance(o, Decimal):
            if not o.is_finite():
                raise ValueError(f"{o} is not a JSON number")
            numbers.append(format(o, "f"))
            return f"{mark}{len(numbers) - 1}@@"
        raise TypeError(f"{type(o).__name__} is not JSON serializable")

    text = jsonlib.dumps(obj, default=default)
    if not numbers:
        return text
    # one compiled pattern for every call; only this call's mark is replaced
    return _DECIMAL_MARK.sub(
        lambda m: numbers[int(m.group(2))] if m.group(1) == mark else m.group(0), text)


_DECIMAL_MARK = re.compile(r'"(@@dec-[0-9a-f]{32}-)(\d+)@@"')


encode_json = _encode


encode_json = _encode


def _secret_name(name: str) -> bool:
    low = name.lower()
    return low in SECRET_PARAMS or any(word in low for word in _SECRET_WORDS)


def shown_path(path: str, params: Mapping[str, Any] | None = None) -> str:
    """The path and query as the audit shows them: values of secret-looking parameters
    redacted."""
    path, _, query = path.partition("?")
    pairs: list[tuple[str, Any]] = parse_qsl(query, keep_blank_values=True)
    for key, value in (params or {}).items():
        values = value if isinstance(value, list | tuple) else [value]
        pairs.extend((key, v) for v in values)
    if not pairs:
        return path
    shown = [(k, REDACTED if _secret_name(str(k)) else v) for k, v in pairs]
    return f"{path}?{urlencode(shown, safe='[]:,')}"


def _surely_unsent(exc: BaseException) -> bool:
    """The connection was never made, so the server cannot have seen the request."""
    if isinstance(exc, requests.exceptions.ConnectTimeout | requests.exceptions.SSLError):
        return True
    seen: set[int] = set()
    stack: list[Any] = [exc]
    while stack:
        e = stack.pop()
        if not isinstance(e, BaseException) or id(e) in seen:
            continue
        seen.add(id(e))
        if isinstance(e, urllib3.exceptions.NewConnectionError |
                      urllib3.exceptions.ConnectTimeoutError |
                      urllib3.exceptions.NameResolutionError | ConnectionRefusedError):
            return True
        stack.extend((e.__cause__, e.__context__, getattr(e, "reason", None), *e.args))
    return False


class _RateLimit:
    """A token bucket on the injected clock (burst: one second's worth, at least 1)."""

    def __init__(self, per_second: float, clock: Clock):
        self.rate, self.clock = per_second, clock
        self.capacity = max(1.0, per_second)
        self.tokens, self.stamp = self.capacity, clock.monotonic()
        self.lock = threading.Lock()

    def take(self) -> None:
        while True:
            with self.lock:
                now = self.clock.monotonic()
                self.tokens = min(self.capacity,
                                  self.tokens + max(0.0, now - self.stamp) * self.rate)
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
    """One system's HTTP client. Thread-safe: the engine calls `request` from a small pool.

    `calls` counts every attempt sent (the run summary shows it)."""

    def __init__(self, system: str, base_url: str, *, classify: Classify | None = None,
                 authenticator: Authenticator | None = None, audit: AuditSink | None = None,
                 max_in_flight: int = 4, per_second: float | None = None,
                 timeout: float = 30.0, max_retries: int = 5, backoff_base: float = 0.5,
                 backoff_cap: float = 60.0, retry_after_cap: float = 300.0,
                 clock: Clock = SYSTEM_CLOCK, jitter: Callable[[], float] = random.random,
                 session: requests.Session | None = None):
        try:
            parts = urlsplit(base_url)
            parts.port  # noqa: B018 - raises ValueError on a bad port
        except ValueError:
            raise ConfigError(f"{system}: the base URL is not a valid URL") from None
        if parts.scheme not in ("https", "http") or not parts.hostname:
            raise ConfigError(f"{system}: the base URL must be an https:// URL with a host")
        if parts.username is not None or parts.password is not None:
            raise ConfigError(f"{system}: the base URL must not carry a user name or password")
        if parts.query or parts.fragment:
            raise ConfigError(f"{system}: the base URL must not have a query or fragment")
        if parts.scheme == "http" and not is_loopback(parts.hostname):
            raise ConfigError(f"{system}: plain http is only allowed on loopback (the sandbox "
                              f"and tests), not on {parts.hostname}; use https")
        if max_in_flight < 1:
            raise ConfigError(f"{system}: max_in_flight must be at least 1")
        self.system, self.base_url = system, base_url.rstrip("/")
        self.classify, self.authenticator, self.audit = classify, authenticator, audit
        self.max_in_flight, self.per_second = max_in_flight, per_second
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

    def url(self, path: str) -> str:
        if "://" in path.split("?", 1)[0] or path.startswith("//"):
            raise ValueError("a path, not a URL, goes to HttpClient.request")
        return self.base_url + (path if path.startswith("/") else "/" + path)

    def get(self, path: str, **kw: Any) -> Response:
        return self.request("GET", path, **kw)

    def post(self, path: str, **kw: Any) -> Response:
        return self.request("POST", path, **kw)

    def put(self, path: str, **kw: Any) -> Response:
        return self.request("PUT", path, **kw)

    def patch(self, path: str, **kw: Any) -> Response:
        return self.request("PATCH", path, **kw)

    def delete(self, path: str, **kw: Any) -> Response:
        return self.request("DELETE", path, **kw)

    def request(self, method: str, path: str, *, params: Mapping[str, Any] | None = None,
                json: Any = None, data: Any = None, headers: Mapping[str, str] | None = None,
                idempotent: bool | None = None, authenticated: bool = True,
                classify: Classify | None = None) -> Response:
        """Send, retrying what may be retried; the answer, or the error it maps to.

        `classify`, when given, is consulted before the client's own table (the token
        endpoint of an API speaks OAuth, not the API's error format)."""
        method = method.upper()
        safe = (method in IDEMPOTENT) if idempotent is None else idempotent
        url = self.url(path)
        payload = _encode(json) if json is not None else data
        auth = self.authenticator if authenticated else None
        reauthed = False
        attempt = 0
        while True:
            attempt += 1
            hdrs = {"Accept": "application/json", **(headers or {})}
            if json is not None:
                hdrs["Content-Type"] = "application/json"
            if auth is not None:
                auth.apply(hdrs, self)
            err: MlcError | None
            try:
                resp = self._send(method, url, path, params, payload, hdrs, attempt)
            except requests.Timeout as exc:
                unsent = _surely_unsent(exc)
                err = (Throttled if unsent else RetryableError)(
                    "could not connect" if unsent else
                    f"no answer within {self.timeout:g} s", system=self.system)
            except (requests.ConnectionError, requests.exceptions.ChunkedEncodingError,
                    requests.exceptions.ContentDecodingError) as exc:
                unsent = _surely_unsent(exc)
                err = (Throttled if unsent else RetryableError)(
                    f"{'could not connect' if unsent else 'connection failed'} "
                    f"({type(exc).__name__})", system=self.system)
            else:
                err = None
                for table in (classify, self.classify):
                    if table is not None and err is None:
                        err = table(resp)
                if err is None:
                    err = default_classify(resp, self.system, self.clock)
                if err is None:
                    hook = getattr(auth, "succeeded", None)
                    if hook is not None:
                        hook(self)
                    return resp
            if isinstance(err, ReauthRequired):
                if auth is None or reauthed:
                    fix = getattr(self.authenticator, "fix_hint", None)
                    bits = " ".join(b for b in (str(err.status or ""), err.code or "") if b)
                    raise AuthError(f"{self.system} refused the credential"
                                    f"{f' [{bits}]' if bits else ''}: {err.message}",
                                    system=self.system, fix=fix)
                reauthed = True
                auth.reauthenticate(self)
                continue
            if not isinstance(err, RetryableError):
                # a connector's table cannot know which [systems.NAME] it serves
                if isinstance(err, AuthError) and err.fix:
                    err.fix = err.fix.replace("<system>", self.system)
                if isinstance(err, ConfigError) and "<system>" in err.problem:
                    raise ConfigError(err.problem.replace("<system>", self.system))
                raise err
            if not safe and not isinstance(err, Throttled):
                # it may have been processed: the engine looks the record up by its
                # natural key before it tries again
                raise TransientError(f"{err.message} (not resent: {method} is not "
                                     "idempotent and may have been processed)",
                                     system=err.system, status=err.status, code=err.code)
            if attempt > self.max_retries:
                raise TransientError(f"{err.message} (gave up after {attempt} attempts)",
                                     system=err.system, status=err.status, code=err.code)
            self.clock.sleep(self.backoff(attempt, err.retry_after))

    def backoff(self, attempt: int, hint: float | None = None) -> float:
        """Seconds to wait after failed attempt `attempt` (1-based)."""
        if hint is not None:
            return min(max(0.0, hint), self.retry_after_cap)
        base = min(self.backoff_cap, self.backoff_base * 2 ** (attempt - 1))
        return base * (0.5 + 0.5 * min(1.0, max(0.0, self.jitter())))

    def _send(self, method: str, url: str, path: str, params: Mapping[str, Any] | None,
              payload: Any, headers: dict[str, str], attempt: int) -> Response:
        if self._rate is not None:
            self._rate.take()
        status: int | None = None
        started = time.perf_counter()
        try:
            with self._slots:  # held for the send only, never during a backoff sleep
                with self._count_lock:
                    self.calls += 1
                raw = self.session.request(method, url, params=params, data=payload,
                                           headers=headers, timeout=self.timeout,
                                           allow_redirects=False)
            status = raw.status_code
            try:
                body = jsonlib.loads(raw.content, parse_float=Decimal) if raw.content \
                    else None
            except ValueError:
                body = None
            # not raw.text: for a body without a charset, requests runs charset detection
            # over the whole body (slow, and it made RSS grow with every page read)
            text = raw.content.decode(raw.encoding or "utf-8", "replace") if raw.content else ""
            return Response(raw.status_code, raw.headers, body, text,
                            time.perf_counter() - started)
        finally:
            if self.audit is not None:
                self.audit.write("api.request", system=self.system, method=method,
                                 path=shown_path(path, params), status=status,
                                 duration_ms=int((time.perf_counter() - started) * 1000),
                                 attempt=attempt)


# kept for callers of the old name
_shown_path = shown_path
