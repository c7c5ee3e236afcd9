"""The HTTP receiver: verify, store in the inbox, answer at once, audit."""

from __future__ import annotations

import logging
import re
import socketserver
import sqlite3
import threading
from collections.abc import Callable, Mapping
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import unquote, urlsplit

from ..audit import Audit
from ..clock import SYSTEM_CLOCK, Clock
from .inbox import Inbox
from .payloads import (
    BAD_SIGNATURE,
    BILL_HEADER,
    DEFAULT_HOST,
    DEFAULT_PORT,
    FRESHBOOKS_HEADER,
    INBOX_UNAVAILABLE,
    MALFORMED,
    MAX_BODY,
    QUICKBOOKS_HEADER,
    SECRET_UNAVAILABLE,
    TOO_LARGE,
    UNKNOWN_SYSTEM,
    BillEvent,
    FreshBooksEvent,
    MalformedWebhook,
    bill_dedupe_key,
    form_pairs,
    freshbooks_dedupe_key,
    freshbooks_signature,
    parse_bill,
    parse_freshbooks,
    parse_quickbooks,
    same_signature,
    verify_bill,
    verify_quickbooks,
)

log = logging.getLogger(__name__)

# ----------------------------------------------------------------------------- receiver
SecretsFor = Callable[[str], Mapping[str, Any] | None]
OnEvent = Callable[[str, FreshBooksEvent | BillEvent], None]
OnHandshake = Callable[[str, str, str], None]

_ROUTE = re.compile(r"^/webhooks/(freshbooks|bill|quickbooks)/([^/]{1,200})/?$")
_DRAIN_LIMIT = 4 * MAX_BODY


class _Reject(Exception):
    def __init__(self, status: int, reason: str, **detail: Any):
        self.status, self.reason, self.detail = status, reason, detail
        super().__init__(reason)


def _keys(secrets: Mapping[str, Any], many: str, one: str) -> list[str]:
    keys: list[str] = []
    group = secrets.get(many)
    if isinstance(group, Mapping):
        keys += [str(v) for v in group.values() if v]
    elif isinstance(group, list | tuple):
        keys += [str(v) for v in group if v]
    if secrets.get(one):
        keys.append(str(secrets[one]))
    return keys


def _signed(header: str | None, keys: list[str], what: str,
            check: Callable[[str, str], bool]) -> None:
    """A delivery signed with one of the system's keys, or a 401 saying what is wrong."""
    if not keys:
        raise _Reject(401, BAD_SIGNATURE, detail=f"no {what} stored for this system")
    if header is None:
        raise _Reject(401, BAD_SIGNATURE, detail="no signature header")
    if not _any_match(lambda k: check(k, header), keys):
        raise _Reject(401, BAD_SIGNATURE)


def _any_match(check: Callable[[str], bool], keys: list[str]) -> bool:
    matched = False
    for key in keys:  # no early exit: the time taken does not depend on which key matched
        matched |= check(key)
    return matched


class _Handler(BaseHTTPRequestHandler):
    server: WebhookReceiver
    protocol_version = "HTTP/1.1"
    timeout = 30  # seconds a client may stall mid-request
    server_version = "mlconnector-webhooks"
    sys_version = ""

    def log_message(self, format: str, *args: Any) -> None:
        pass  # the audit trail records what matters; nothing goes to stderr under cron

    def do_POST(self) -> None:
        self.server._handle(self)

    def _not_allowed(self) -> None:
        path = urlsplit(self.path).path
        if _ROUTE.match(path):
            self.server._send(self, 405, "method not allowed", extra={"Allow": "POST"})
        else:
            self.server._send(self, 404, "not found")

    do_GET = do_PUT = do_DELETE = do_PATCH = _not_allowed

    def handle_expect_100(self) -> bool:
        """Refuse an announced oversize body before the client sends it."""
        length = self.headers.get("Content-Length", "")
        if length.isdigit() and int(length) > self.server.max_body:
            route = _ROUTE.match(urlsplit(self.path).path)
            if route:
                self.server._reject(self, _Reject(413, TOO_LARGE), unquote(route.group(2)))
            else:
                self.server._send(self, 404, "not found")
            return False
        return super().handle_expect_100()


class WebhookReceiver(ThreadingHTTPServer):
    """`POST /webhooks/freshbooks/{system}` and `POST /webhooks/bill/{system}` into the
    inbox. Answers: 200 stored or duplicate or handshake; 400 malformed; 401 bad or missing
    signature (or no secret known yet); 404 unknown system; 413 over `max_body`; 503 the
    secret store or the inbox failed (the sender retries).

    Hooks run after the answer is sent, on the request's thread, and their errors are
    logged by type only: `on_event(system, event)` for each newly stored event,
    `on_handshake(system, callback_id, verifier)` for a FreshBooks registration handshake.
    A handshake cannot be authenticated (its verifier is the secret to be); the hook must
    confirm it with FreshBooks (`confirm_freshbooks_callback`) before trusting it, and
    store the verifier only once FreshBooks accepted it.
    """

    daemon_threads = True
    block_on_close = False

    def __init__(self, *, secrets_for: SecretsFor, inbox: Inbox, audit: Audit,
                 clock: Clock = SYSTEM_CLOCK, on_event: OnEvent | None = None,
                 on_handshake: OnHandshake | None = None, host: str = DEFAULT_HOST,
                 port: int = DEFAULT_PORT, max_body: int = MAX_BODY):
        self.secrets_for, self.inbox, self.audit, self.clock = secrets_for, inbox, audit, clock
        self.on_event, self.on_handshake, self.max_body = on_event, on_handshake, max_body
        self._thread: threading.Thread | None = None
        super().__init__((host, port), _Handler)

    # -- lifecycle ------------------------------------------------------------------------
    def server_bind(self) -> None:
        # HTTPServer.server_bind resolves the host's FQDN, which can stall on a DNS lookup
        socketserver.TCPServer.server_bind(self)
        host, port = self.server_address[:2]
        self.server_name, self.server_port = str(host), port

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        host = host.decode() if isinstance(host, bytes) else host
        return f"http://{'[' + host + ']' if ':' in host else host}:{port}"

    def start(self, poll_interval: float = 0.05) -> WebhookReceiver:
        """Serve on a background thread (tests, or a CLI that does other work)."""
        self._thread = threading.Thread(target=self.serve_forever, args=(poll_interval,),
                                        name="webhooks", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._thread is not None:
            self.shutdown()
            self._thread.join()
            self._thread = None
        self.server_close()

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    # -- requests -------------------------------------------------------------------------
    def _send(self, h: BaseHTTPRequestHandler, status: int, text: str,
              extra: Mapping[str, str] | None = None) -> None:
        body = (text + "\n").encode("utf-8")
        h.close_connection = True
        try:
            h.send_response(status)
            h.send_header("Content-Type", "text/plain; charset=utf-8")
            h.send_header("Content-Length", str(len(body)))
            h.send_header("Connection", "close")
            for key, value in (extra or {}).items():
                h.send_header(key, value)
            h.end_headers()
            h.wfile.write(body)
            h.wfile.flush()
        except OSError:
            pass  # the sender hung up; it will retry

    def _reject(self, h: BaseHTTPRequestHandler, rej: _Reject, system: str | None) -> None:
        path = urlsplit(h.path).path[:300]
        self.audit.write("webhook.rejected", system=system, path=path, reason=rej.reason,
                         status=rej.status, remote=h.client_address[0], **rej.detail)
        self._send(h, rej.status, rej.reason)

    def _read_body(self, h: BaseHTTPRequestHandler) -> bytes:
        encoding = h.headers.get("Transfer-Encoding", "").strip().lower()
        if encoding == "chunked":
            return self._read_chunked(h)
        if encoding and encoding != "identity":
            raise _Reject(400, MALFORMED, detail="unsupported transfer encoding")
        raw = (h.headers.get("Content-Length") or "0").strip()
        if not raw.isdigit():
            raise _Reject(400, MALFORMED, detail="bad Content-Length")
        length = int(raw)
        if length > self.max_body:
            # read what was sent (up to a bound) so that the client sees the 413, not a reset
            left = min(length, _DRAIN_LIMIT)
            while left > 0:
                chunk = h.rfile.read(min(left, 65536))
                if not chunk:
                    break
                left -= len(chunk)
            raise _Reject(413, TOO_LARGE)
        body = h.rfile.read(length)
        if len(body) != length:
            raise ConnectionError("the sender hung up mid-body")
        return body

    def _read_chunked(self, h: BaseHTTPRequestHandler) -> bytes:
        parts: list[bytes] = []
        total = 0
        while True:
            line = h.rfile.readline(1024)
            try:
                size = int(line.split(b";", 1)[0].strip(), 16)
            except ValueError:
                raise _Reject(400, MALFORMED, detail="bad chunk") from None
            if size == 0:
                while h.rfile.readline(1024) not in (b"\r\n", b"\n", b""):
                    pass  # trailers
                return b"".join(parts)
            total += size
            if total > self.max_body:
                raise _Reject(413, TOO_LARGE)
            chunk = h.rfile.read(size)
            if len(chunk) != size:
                raise ConnectionError("the sender hung up mid-body")
            parts.append(chunk)
            h.rfile.readline(8)  # the chunk's CRLF

    def _handle(self, h: BaseHTTPRequestHandler) -> None:
        route = _ROUTE.match(urlsplit(h.path).path)
        if not route:
            try:  # read what was sent, so that the client sees the answer, not a reset
                self._read_body(h)
            except (_Reject, ConnectionError, TimeoutError):
                pass
            self._send(h, 404, "not found")
            return
        kind, system = route.group(1), unquote(route.group(2))
        after: Callable[[], None] | None = None
        try:
            try:
                body = self._read_body(h)
            except (ConnectionError, TimeoutError):
                h.close_connection = True
                return
            try:
                secrets = self.secrets_for(system)
            except KeyError:
                secrets = None
            except Exception as exc:  # the keyring, say: let the sender retry later
                raise _Reject(503, SECRET_UNAVAILABLE, error=type(exc).__name__) from None
            if not isinstance(secrets, Mapping) or secrets.get("type", kind) != kind:
                raise _Reject(404, UNKNOWN_SYSTEM)
            if kind == "freshbooks":
                after = self._freshbooks(h, system, body, secrets)
            elif kind == "quickbooks":
                after = self._quickbooks(h, system, body, secrets)
            else:
                after = self._bill(h, system, body, secrets)
        except _Reject as rej:
            self._reject(h, rej, system)
            return
        self._send(h, 200, "ok")
        if after is not None:
            try:
                after()
            except Exception as exc:  # a hook's trouble is not the sender's
                log.warning("webhook hook failed for %s: %s", system, type(exc).__name__)

    def _store(self, h: BaseHTTPRequestHandler, system: str, event: str, object_id: str,
               key: str, payload: Any, **audit: Any) -> bool:
        now = self.clock.now()
        try:
            added = self.inbox.add(system, event, object_id, key, payload, now)
        except sqlite3.Error as exc:
            raise _Reject(503, INBOX_UNAVAILABLE, error=type(exc).__name__) from None
        self.audit.write("webhook.received", system=system, webhook_event=event,
                         object_id=object_id, source_id=object_id,
                         duplicate=True if not added else None,
                         remote=h.client_address[0], **audit)
        return added

    def _freshbooks(self, h: BaseHTTPRequestHandler, system: str, body: bytes,
                    secrets: Mapping[str, Any]) -> Callable[[], None] | None:
        try:
            pairs = form_pairs(body)
            event = parse_freshbooks(body)
        except MalformedWebhook:
            raise _Reject(400, MALFORMED) from None
        header = h.headers.get(FRESHBOOKS_HEADER)
        if event.is_handshake:
            callback_id, verifier = event.object_id, event.verifier
            if not callback_id or verifier is None:
                raise _Reject(400, MALFORMED, detail="handshake without object_id")
            signed = None if header is None else same_signature(
                freshbooks_signature(pairs, verifier), header)
            self.audit.write("webhook.received", system=system, webhook_event="handshake",
                             object_id=callback_id, callback_id=callback_id,
                             self_signed=signed, remote=h.client_address[0])
            hook = self.on_handshake
            return (lambda: hook(system, callback_id, verifier)) if hook else None
        _signed(header, _keys(secrets, "verifiers", "verifier"), "verifier",
                lambda k, sig: same_signature(freshbooks_signature(pairs, k), sig))
        if not event.name or not event.object_id:
            raise _Reject(400, MALFORMED, detail="no name or object_id")
        added = self._store(h, system, event.name, event.object_id,
                            freshbooks_dedupe_key(system, event.name, event.object_id),
                            event.fields, account_id=event.account_id)
        hook = self.on_event
        return (lambda: hook(system, event)) if added and hook else None

    def _bill(self, h: BaseHTTPRequestHandler, system: str, body: bytes,
              secrets: Mapping[str, Any]) -> Callable[[], None] | None:
        _signed(h.headers.get(BILL_HEADER), _keys(secrets, "security_keys", "security_key"),
                "security key", lambda k, sig: verify_bill(body, sig, k))
        try:
            event = parse_bill(body)
        except MalformedWebhook:
            raise _Reject(400, MALFORMED) from None
        added = self._store(h, system, event.event_type, event.object_id,
                            bill_dedupe_key(system, event.event_id), event.payload,
                            event_id=event.event_id, entity=event.entity)
        hook = self.on_event
        return (lambda: hook(system, event)) if added and hook else None

    def _quickbooks(self, h: BaseHTTPRequestHandler, system: str, body: bytes,
                    secrets: Mapping[str, Any]) -> Callable[[], None] | None:
        _signed(h.headers.get(QUICKBOOKS_HEADER), _keys(secrets, "verifiers", "verifier"),
                "verifier token", lambda k, sig: verify_quickbooks(body, sig, k))
        try:
            events = parse_quickbooks(body)
        except MalformedWebhook:
            raise _Reject(400, MALFORMED) from None
        realm = secrets.get("realm_id")
        added = []
        for event in events:
            if realm and event.realm_id and event.realm_id != str(realm):
                self.audit.write("webhook.received", system=system, webhook_event=event.name,
                                 source_id=event.object_id, ignored="another company",
                                 remote=h.client_address[0])
                continue
            payload = {"entity": event.entity, "id": event.object_id,
                       "operation": event.operation, "time": event.when,
                       "deleted_id": event.deleted_id, "realm_id": event.realm_id}
            if self._store(h, system, event.name, event.object_id,
                           f"quickbooks:{system}:{event.event_id}", payload,
                           event_id=event.event_id):
                added.append(event)
        hook = self.on_event
        return (lambda: [hook(system, e) for e in added]) if added and hook else None

