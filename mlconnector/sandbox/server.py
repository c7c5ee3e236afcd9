"""Plumbing shared by the offline emulators: a threaded HTTP server on loopback, routing, JSON
replies (exact Decimal numbers), the knobs (latency, random 503s and 429s), the request log
and in-flight counting.

An emulator subclasses `Emulator`, registers routes in `__init__` and overrides a few hooks
(`busy_reply`, `fault_reply`, `not_found_reply`, `guard`). Handlers take a `Request` and return
a `Reply`, or raise `Abort(reply)` from any depth to answer early.
"""

from __future__ import annotations

import json
import random
import re
import sys
import threading
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from decimal import Decimal
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

from ..clock import SYSTEM_CLOCK


@dataclass
class Knobs:
    """Failure and speed knobs. They are read on every request, so a test may change them
    while the emulator runs."""

    latency: float = 0.0     # seconds added to every request (through the clock's sleep)
    error_rate: float = 0.0  # fraction of requests answered 503
    rate_429: float = 0.0    # fraction answered "too many requests" (the system's own way)
    seed: int = 0            # seed of the random draws above


@dataclass
class Request:
    method: str
    path: str                        # decoded, without the query string
    params: dict[str, list[str]]     # every value of every query parameter
    headers: Any                     # email.message.Message: case-insensitive get()
    body: bytes = b""
    match: dict[str, str] = field(default_factory=dict)  # the route's {placeholders}

    @property
    def query(self) -> dict[str, str | list[str]]:
        """The query as logged: one value as a string, repeated ones as a list."""
        return {k: v[0] if len(v) == 1 else list(v) for k, v in self.params.items()}

    def arg(self, name: str, default: str | None = None) -> str | None:
        values = self.params.get(name)
        return values[0] if values else default

    def header(self, name: str) -> str | None:
        return self.headers.get(name) if self.headers is not None else None

    def json(self, **kw: Any) -> Any:
        """The body as JSON; raises ValueError when it is not."""
        return json.loads(self.body.decode("utf-8") or "null", **kw)

    def form(self) -> dict[str, str]:
        return {k: v[0] for k, v in parse_qs(self.body.decode("utf-8"),
                                             keep_blank_values=True).items()}


@dataclass
class Reply:
    status: int = 200
    body: Any = None                 # JSON-able (Decimal allowed), or str/bytes sent as is
    headers: dict[str, str] = field(default_factory=dict)
    content_type: str = "application/json"

    def encode(self) -> bytes:
        if isinstance(self.body, bytes):
            return self.body
        if isinstance(self.body, str) and self.content_type != "application/json":
            return self.body.encode("utf-8")
        if self.body is None and self.status in (204, 302):
            return b""
        return dumps(self.body).encode("utf-8")


class Abort(Exception):
    """Raised by a handler (or anything it calls) to answer with `reply` at once."""

    def __init__(self, reply: Reply):
        super().__init__(reply.status)
        self.reply = reply


_DECIMAL = "\x00decimal:"
_DECIMAL_TEXT = re.compile(r'"\\u0000decimal:(-?[0-9.]+)"')


def _decimal_marker(obj: Any) -> str:
    if isinstance(obj, Decimal) and obj.is_finite():
        return _DECIMAL + format(obj, "f")
    raise TypeError(f"{type(obj).__name__} is not JSON serializable")


def dumps(obj: Any) -> str:
    """JSON with Decimals written as exact numbers (142.50, never 142.49999999): the C encoder
    writes each Decimal as a marked string, which is then unquoted."""
    return _DECIMAL_TEXT.sub(r"\1", json.dumps(obj, default=_decimal_marker))


def encoded(status: int, obj: Any, headers: dict[str, str] | None = None) -> Reply:
    """A JSON reply encoded at once: call it while holding the data lock, so that the answer
    is a consistent snapshot without copying the records."""
    return Reply(status, dumps(obj).encode("utf-8"), headers or {})


@dataclass
class _Route:
    method: str
    regex: re.Pattern[str]
    handler: Callable[[Request], Reply]
    open: bool  # True: no credentials needed (token and login endpoints)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, like the real hosts
    server_version = "mlconnector-sandbox"
    disable_nagle_algorithm = True  # headers and body go out as separate writes

    def _serve(self) -> None:
        url = urlsplit(self.path)
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        req = Request(self.command, unquote(url.path),
                      parse_qs(url.query, keep_blank_values=True), self.headers, body)
        reply = self.server.emulator.handle(req)  # type: ignore[attr-defined]
        payload = reply.encode()
        self.send_response(reply.status)
        if payload or reply.status not in (204, 302):
            self.send_header("Content-Type", f"{reply.content_type}; charset=utf-8")
        self.send_header("Content-Length", str(len(payload)))
        for key, value in reply.headers.items():
            self.send_header(key, value)
        self.end_headers()
        if payload:
            self.wfile.write(payload)

    do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = _serve

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - quiet
        pass


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request: Any, client_address: Any) -> None:
        """A client that hangs up mid-answer (a killed sync run) is not worth a traceback."""
        if not isinstance(sys.exc_info()[1], ConnectionError):
            super().handle_error(request, client_address)


class Emulator:
    """One emulated API on 127.0.0.1:<free port>, served from a daemon thread."""

    max_concurrent: int | None = None  # requests in flight before `busy_reply`

    def __init__(self, knobs: Knobs | None = None, clock: Any = None):
        self.knobs = knobs or Knobs()
        self.clock = clock or SYSTEM_CLOCK
        self.lock = threading.RLock()       # guards the emulated data
        self._meta = threading.Lock()       # guards the log and the counters
        self._random = random.Random(self.knobs.seed)
        self._routes: list[_Route] = []
        self._httpd: _Server | None = None
        self._thread: threading.Thread | None = None
        self.request_log: list[tuple[str, str, dict[str, Any]]] = []
        self.in_flight = 0
        self.max_in_flight_seen = 0
        self.server_errors: list[str] = []  # tracebacks of handler crashes (answered 500)

    # -- life cycle ---------------------------------------------------------------------
    def start(self):
        if self._httpd is None:
            self._httpd = _Server(("127.0.0.1", 0), _Handler)
            self._httpd.emulator = self  # type: ignore[attr-defined]
            # a short poll interval so that stop() returns at once
            self._thread = threading.Thread(target=self._httpd.serve_forever, args=(0.05,),
                                            name=type(self).__name__, daemon=True)
            self._thread.start()
        return self

    def stop(self) -> None:
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._httpd = None

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    @property
    def root_url(self) -> str:
        if self._httpd is None:
            raise RuntimeError("the sandbox is not started")
        return f"http://127.0.0.1:{self._httpd.server_address[1]}"

    # -- routing ------------------------------------------------------------------------
    def route(self, method: str, pattern: str, handler: Callable[[Request], Reply],
              *, open: bool = False) -> None:  # noqa: A002
        """`pattern` is a path with `{name}` placeholders for one segment each."""
        regex = re.sub(r"\{(\w+)\}", r"(?P<\1>[^/]+)", pattern)
        self._routes.append(_Route(method, re.compile(f"^{regex}/?$"), handler, open))

    # -- hooks --------------------------------------------------------------------------
    def busy_reply(self, req: Request) -> Reply:
        return Reply(429, {"message": "too many requests in flight"}, {"Retry-After": "1"})

    def fault_reply(self, req: Request, status: int) -> Reply:
        """The answer to a random knob fault: 503, or 429 (rate_429)."""
        return Reply(status, {"message": "fault injected"})

    def not_found_reply(self, req: Request) -> Reply:
        return Reply(404, {"message": "not found"})

    def method_not_allowed_reply(self, req: Request) -> Reply:
        reply = self.not_found_reply(req)
        return Reply(405, reply.body, reply.headers, reply.content_type)

    def guard(self, req: Request) -> Reply | None:
        """Called before every handler of a non-open route: authentication, forced failures.
        Return a Reply to answer with it instead."""
        return None

    def crash_reply(self, req: Request) -> Reply:
        return Reply(500, {"message": "internal error in the sandbox"})

    # -- the request path ---------------------------------------------------------------
    def handle(self, req: Request) -> Reply:
        with self._meta:
            self.request_log.append((req.method, req.path, req.query))
            admitted = self.max_concurrent is None or self.in_flight < self.max_concurrent
            if admitted:
                self.in_flight += 1
                self.max_in_flight_seen = max(self.max_in_flight_seen, self.in_flight)
        try:
            # latency while the request counts as in flight, so that concurrency is real
            if self.knobs.latency > 0:
                self.clock.sleep(self.knobs.latency)
            if not admitted:
                return self.busy_reply(req)
            fault = self._roll_fault()
            if fault:
                return self.fault_reply(req, fault)
            return self._dispatch(req)
        except Abort as stop:
            return stop.reply
        except Exception:  # a bug in the emulator: answer 500 and keep the traceback
            self.server_errors.append(traceback.format_exc())
            return self.crash_reply(req)
        finally:
            if admitted:
                with self._meta:
                    self.in_flight -= 1

    def _roll_fault(self) -> int | None:
        knobs = self.knobs
        if knobs.error_rate <= 0 and knobs.rate_429 <= 0:
            return None
        with self._meta:
            draw = self._random.random()
        if draw < knobs.error_rate:
            return 503
        if draw < knobs.error_rate + knobs.rate_429:
            return 429
        return None

    def _dispatch(self, req: Request) -> Reply:
        path_known = False
        for route in self._routes:
            m = route.regex.match(req.path)
            if not m:
                continue
            path_known = True
            if route.method != req.method:
                continue
            req.match = {k: unquote(v) for k, v in m.groupdict().items()}
            if not route.open:
                early = self.guard(req)
                if early is not None:
                    return early
            return route.handler(req)
        return self.method_not_allowed_reply(req) if path_known else self.not_found_reply(req)

    # -- helpers for subclasses ---------------------------------------------------------
    def take(self, counter: str) -> bool:
        """Decrement a forced-failure counter attribute; True if one was pending."""
        with self._meta:
            left = getattr(self, counter)
            if left > 0:
                setattr(self, counter, left - 1)
                return True
            return False
