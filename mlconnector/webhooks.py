"""Webhooks: signature checks, the inbox, the receiver, and callback registration.

FreshBooks signs the *form fields*, re-serialized the way Python's default `json.dumps`
writes a dict, with the callback's verifier (one secret per callback, learned in the
registration handshake). BILL signs the raw body with the subscription's security key.
Both headers are base64 of an HMAC-SHA256 and compared in constant time.

A verified event is stored in the `webhook_inbox` table of the state database and answered
200 at once; the sync reads the inbox later (webhooks carry ids, never the truth: the
record is fetched again). Every delivery is audited as `webhook.received` or
`webhook.rejected`; neither line ever holds the body, a signature or a secret.

`secrets_for(system_name)` tells the receiver what a configured system verifies with, as a
dict (None, or a KeyError, means "no such system"):

| route                                | keys of the dict                                        |
|--------------------------------------|---------------------------------------------------------|
| `POST /webhooks/freshbooks/{system}` | `verifiers` {callback id: verifier} and/or `verifier`   |
| `POST /webhooks/bill/{system}`       | `security_keys` {subscription id: key} or `security_key` |
| `POST /webhooks/quickbooks/{system}` | `verifier` (the app's verifier token), `realm_id`        |

An optional `type` ("freshbooks" / "bill") makes a route of the other kind "unknown
system". A FreshBooks delivery does not say which callback it belongs to, so every known
verifier of the system is tried (each callback covers one event; there are few).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import logging
import re
import socketserver
import sqlite3
import threading
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, unquote, urlsplit

from .audit import Audit
from .clock import SYSTEM_CLOCK, Clock
from .errors import ApiError
from .http import encode_json

log = logging.getLogger(__name__)

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8770
MAX_BODY = 1 << 20  # 1 MiB
FRESHBOOKS_HEADER = "X-FreshBooks-Hmac-SHA256"
BILL_HEADER = "x-bill-sha-signature"
QUICKBOOKS_HEADER = "intuit-signature"

# reasons written in `webhook.rejected`
BAD_SIGNATURE = "bad signature"
UNKNOWN_SYSTEM = "unknown system"
MALFORMED = "malformed body"
TOO_LARGE = "too large"
SECRET_UNAVAILABLE = "secret unavailable"
INBOX_UNAVAILABLE = "inbox unavailable"


class MalformedWebhook(ValueError):
    """A body that cannot be read as the system's webhook format."""


# --------------------------------------------------------------------------- FreshBooks
@dataclass(frozen=True)
class FreshBooksEvent:
    name: str | None            # "bill.create"; may be absent in the handshake
    object_id: str | None       # the changed object's id; the callback id in the handshake
    account_id: str | None
    verifier: str | None        # present only in the registration handshake
    fields: dict[str, str] = field(repr=False)  # every form field, in the order received

    @property
    def is_handshake(self) -> bool:
        return self.verifier is not None


def _form_pairs(body: bytes) -> list[tuple[str, str]]:
    """The form fields in the order received. A key sent twice keeps its first place and
    its first value, as `json.dumps(request.form)` does in FreshBooks' Flask recipe."""
    try:
        text = body.decode("utf-8")
        pairs = parse_qsl(text, keep_blank_values=True, strict_parsing=False,
                          encoding="utf-8", errors="strict")
    except (UnicodeDecodeError, ValueError) as exc:
        raise MalformedWebhook("the form body is not UTF-8 form data") from exc
    seen: dict[str, str] = {}
    for key, value in pairs:
        seen.setdefault(key, value)
    return list(seen.items())


def _freshbooks_signature(pairs: list[tuple[str, str]], secret: str) -> str:
    message = json.dumps(dict(pairs))  # ", " and ": ", ensure_ascii, insertion order
    digest = hmac.new(secret.encode("utf-8"), message.encode("utf-8"), hashlib.sha256).digest()
    return base64.b64encode(digest).decode("ascii")


def _same(expected: str, header: str | None) -> bool:
    if header is None:
        return False
    return hmac.compare_digest(expected.encode("ascii"),
                               header.strip().encode("utf-8", "replace"))


def verify_freshbooks(body: bytes, header: str | None, secret: str) -> bool:
    """Whether `X-FreshBooks-Hmac-SHA256: header` signs this form body with `secret` (the
    callback's verifier)."""
    if not secret or header is None:
        return False
    try:
        pairs = _form_pairs(body)
    except MalformedWebhook:
        return False
    return _same(_freshbooks_signature(pairs, secret), header)


def parse_freshbooks(body: bytes) -> FreshBooksEvent:
    """The delivery's fields; a `verifier` field marks the registration handshake."""
    fields = dict(_form_pairs(body))
    if not fields:
        raise MalformedWebhook("the form body is empty")

    def get(key: str) -> str | None:
        return fields.get(key) or None  # as sent: a verifier is a key, byte for byte

    return FreshBooksEvent(name=get("name"), object_id=get("object_id"),
                           account_id=get("account_id"), verifier=get("verifier"),
                           fields=fields)


# --------------------------------------------------------------------------------- BILL
@dataclass(frozen=True)
class BillEvent:
    event_id: str
    event_type: str             # "bill.created", "payment.updated", …
    entity: str | None          # the payload's entity key: "bill", "vendor", "payment", …
    object_id: str | None       # that entity's `id`
    payload: dict[str, Any] = field(repr=False)  # the whole notification (numbers Decimal)


def verify_bill(body: bytes, header: str | None, key: str) -> bool:
    """Whether `x-bill-sha-signature: header` is base64(HMAC-SHA256(key, raw body))."""
    if not key or header is None:
        return False
    digest = hmac.new(key.encode("utf-8"), body, hashlib.sha256).digest()
    return _same(base64.b64encode(digest).decode("ascii"), header)


def _json_object(value: Any) -> dict[str, Any] | None:
    """An object, or an object JSON-encoded in a string (BILL may send either)."""
    if isinstance(value, str):
        try:
            value = json.loads(value, parse_float=Decimal)
        except ValueError:
            return None
    return value if isinstance(value, dict) else None


def _norm(name: str) -> str:
    return re.sub(r"[^a-z0-9]", "", name.lower())


def parse_bill(body: bytes) -> BillEvent:
    try:
        outer = json.loads(body.decode("utf-8-sig"), parse_float=Decimal)
    except (UnicodeDecodeError, ValueError) as exc:
        raise MalformedWebhook("the body is not JSON") from exc
    payload = _json_object(outer)
    if payload is None:
        raise MalformedWebhook("the body is not a JSON object (nor one in a string)")
    metadata = _json_object(payload.get("metadata"))
    if metadata is None:
        raise MalformedWebhook("no metadata object")
    event_id, event_type = metadata.get("eventId"), metadata.get("eventType")
    if not isinstance(event_id, str | int) or not str(event_id).strip() \
            or not isinstance(event_type, str) or not event_type.strip():
        raise MalformedWebhook("metadata lacks eventId or eventType")
    payload = {**payload, "metadata": metadata}
    entities: dict[str, dict[str, Any]] = {}
    for key, value in payload.items():
        obj = _json_object(value) if key != "metadata" else None
        if obj is not None:
            entities[key] = payload[key] = obj
    noun = _norm(event_type.split(".", 1)[0])
    entity = next((k for k in entities if _norm(k) == noun), next(iter(entities), None))
    object_id = entities[entity].get("id") if entity else None
    return BillEvent(event_id=str(event_id).strip(), event_type=event_type.strip(),
                     entity=entity, object_id=str(object_id) if object_id is not None else None,
                     payload=payload)


# --------------------------------------------------------------------------- QuickBooks
QB_ENTITIES = {e.lower(): e for e in ("Bill", "BillPayment", "Vendor", "JournalEntry",
                                      "Account", "Class", "Department", "Customer",
                                      "Invoice", "Payment", "Purchase", "VendorCredit")}
QB_OPERATIONS = {"created": "Create", "updated": "Update", "deleted": "Delete",
                 "voided": "Void", "merged": "Merge", "emailed": "Emailed"}


@dataclass(frozen=True)
class QuickBooksEvent:
    realm_id: str
    entity: str                 # "Bill", as the API names it
    object_id: str
    operation: str              # Create | Update | Delete | Merge | Void | Emailed
    event_id: str               # CloudEvents `id`; built from the fields in the legacy form
    when: str | None = None
    deleted_id: str | None = None  # a Merge: the id merged away

    @property
    def name(self) -> str:
        return f"{self.entity}.{self.operation}"


def verify_quickbooks(body: bytes, header: str | None, token: str) -> bool:
    """`intuit-signature`: base64 HMAC-SHA256 of the raw body, keyed with the verifier."""
    mac = hmac.new(token.encode("utf-8"), body, hashlib.sha256).digest()
    return _same(base64.b64encode(mac).decode("ascii"), header)


def parse_quickbooks(body: bytes) -> list[QuickBooksEvent]:
    """Both payload formats, told apart by shape: a JSON array is CloudEvents (2026 on),
    an object with `eventNotifications` the legacy form. One delivery may mix realms."""
    try:
        data = json.loads(body.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise MalformedWebhook("not JSON") from None
    out: list[QuickBooksEvent] = []
    if isinstance(data, list):
        for ev in data:
            kind = str(ev.get("type") or "").split(".") if isinstance(ev, dict) else []
            if len(kind) < 3 or not ev.get("id") or not ev.get("intuitentityid"):
                raise MalformedWebhook("a CloudEvent without type, id or entity id")
            out.append(QuickBooksEvent(
                realm_id=str(ev.get("intuitaccountid") or ""),
                entity=QB_ENTITIES.get(kind[1], kind[1].capitalize()),
                object_id=str(ev["intuitentityid"]),
                operation=QB_OPERATIONS.get(kind[2], kind[2].capitalize()),
                event_id=str(ev["id"]), when=ev.get("time")))
        return out
    if not isinstance(data, dict) or not isinstance(data.get("eventNotifications"), list):
        raise MalformedWebhook("neither CloudEvents nor eventNotifications")
    for note in data["eventNotifications"]:
        realm = str((note or {}).get("realmId") or "")
        for ent in ((note or {}).get("dataChangeEvent") or {}).get("entities") or []:
            if not ent.get("name") or not ent.get("id"):
                raise MalformedWebhook("an entity without name or id")
            op = str(ent.get("operation") or "Update")
            out.append(QuickBooksEvent(
                realm_id=realm, entity=QB_ENTITIES.get(str(ent["name"]).lower(), ent["name"]),
                object_id=str(ent["id"]), operation=op,
                event_id=f"{realm}:{ent['name']}:{ent['id']}:{op}:{ent.get('lastUpdated')}",
                when=ent.get("lastUpdated"), deleted_id=ent.get("deletedId")))
    return out


def freshbooks_dedupe_key(system: str, name: str, object_id: str) -> str:
    """FreshBooks sends no event id: (name, object_id) is one event while unprocessed."""
    return f"freshbooks:{system}:{name}:{object_id}"


def bill_dedupe_key(system: str, event_id: str) -> str:
    return f"bill:{system}:{event_id}"


# -------------------------------------------------------------------------------- inbox
INBOX_SCHEMA = """
CREATE TABLE IF NOT EXISTS webhook_inbox (
    id INTEGER PRIMARY KEY, system TEXT, event TEXT, object_id TEXT,
    dedupe_key TEXT UNIQUE, received_at TEXT, processed_at TEXT, payload TEXT
);
CREATE INDEX IF NOT EXISTS webhook_inbox_pending ON webhook_inbox(processed_at, system);
"""
# Keys with this prefix dedupe only while unprocessed: once processed, the key is freed
# (rewritten to "<key>#<id>") so that the next change to the object is a new event.
# Other keys (BILL event ids) stay taken for good.
_RELEASED_ON_PROCESS = "freshbooks:"


@dataclass(frozen=True)
class InboxItem:
    id: int
    system: str
    event: str
    object_id: str | None
    dedupe_key: str
    received_at: str            # the last delivery (a duplicate while pending moves it)
    processed_at: str | None
    payload: Any


def _iso(dt: datetime) -> str:
    return dt.astimezone(UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")


class Inbox:
    """Verified webhook events waiting for a sync, in the state database (WAL)."""

    def __init__(self, db_path: Path, *, busy_timeout_ms: int = 10000):
        self.path = Path(db_path)
        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        existed = self.path.exists()
        self._lock = threading.Lock()
        self._db = sqlite3.connect(str(self.path), check_same_thread=False,
                                   isolation_level=None, timeout=busy_timeout_ms / 1000)
        if not existed:
            self.path.chmod(0o600)
        self._db.execute(f"PRAGMA busy_timeout={int(busy_timeout_ms)}")
        from .state import opening

        with opening(self.path):
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.executescript(INBOX_SCHEMA)

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def __enter__(self) -> Inbox:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def add(self, system: str, event: str, object_id: str | None, dedupe_key: str,
            payload: Any, now: datetime) -> bool:
        """Store an event; False if `dedupe_key` is already taken (a duplicate). A
        FreshBooks duplicate of a pending event moves its `received_at` forward."""
        text = encode_json(payload)
        when = _iso(now)
        with self._lock:
            cur = self._db.execute(
                "INSERT OR IGNORE INTO webhook_inbox(system, event, object_id, dedupe_key,"
                " received_at, payload) VALUES (?,?,?,?,?,?)",
                (system, event, object_id, dedupe_key, when, text))
            if cur.rowcount:
                return True
            if dedupe_key.startswith(_RELEASED_ON_PROCESS):
                self._db.execute(
                    "UPDATE webhook_inbox SET received_at = max(received_at, ?)"
                    " WHERE dedupe_key = ? AND processed_at IS NULL", (when, dedupe_key))
            return False

    def pending(self, system: str | None = None,
                event_prefix: str | None = None) -> list[InboxItem]:
        sql = ("SELECT id, system, event, object_id, dedupe_key, received_at, processed_at,"
               " payload FROM webhook_inbox WHERE processed_at IS NULL")
        args: list[Any] = []
        if system is not None:
            sql += " AND system = ?"
            args.append(system)
        if event_prefix:
            sql += " AND substr(event, 1, ?) = ?"
            args += [len(event_prefix), event_prefix]
        with self._lock:
            rows = self._db.execute(sql + " ORDER BY id", args).fetchall()
        return [InboxItem(*row[:7], payload=json.loads(row[7], parse_float=Decimal)
                          if row[7] else None) for row in rows]

    def mark_processed(self, ids: Iterable[int | InboxItem], now: datetime) -> int:
        """Mark events handled; how many were. Given an `InboxItem` (as `pending` returned
        it), a row delivered again since it was read stays pending, so a change made while
        the sync was working on the object is not lost."""
        when, count = _iso(now), 0
        update = ("UPDATE webhook_inbox SET processed_at = ?, dedupe_key = CASE"
                  " WHEN substr(dedupe_key, 1, ?) = ? THEN dedupe_key || '#' || id"
                  " ELSE dedupe_key END WHERE id = ? AND processed_at IS NULL")
        release = (len(_RELEASED_ON_PROCESS), _RELEASED_ON_PROCESS)
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                for item in ids:
                    if isinstance(item, InboxItem):
                        cur = self._db.execute(update + " AND received_at = ?",
                                               (when, *release, item.id, item.received_at))
                    else:
                        cur = self._db.execute(update, (when, *release, int(item)))
                    count += cur.rowcount
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
        return count

    def prune(self, before: datetime) -> int:
        """Forget events processed before `before` (BILL keeps its history 180 days, so a
        redelivery of an older event id is not expected)."""
        with self._lock:
            cur = self._db.execute(
                "DELETE FROM webhook_inbox WHERE processed_at IS NOT NULL AND processed_at < ?",
                (_iso(before),))
        return cur.rowcount


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
            pairs = _form_pairs(body)
            event = parse_freshbooks(body)
        except MalformedWebhook:
            raise _Reject(400, MALFORMED) from None
        header = h.headers.get(FRESHBOOKS_HEADER)
        if event.is_handshake:
            callback_id, verifier = event.object_id, event.verifier
            if not callback_id or verifier is None:
                raise _Reject(400, MALFORMED, detail="handshake without object_id")
            signed = None if header is None else _same(
                _freshbooks_signature(pairs, verifier), header)
            self.audit.write("webhook.received", system=system, webhook_event="handshake",
                             object_id=callback_id, callback_id=callback_id,
                             self_signed=signed, remote=h.client_address[0])
            hook = self.on_handshake
            return (lambda: hook(system, callback_id, verifier)) if hook else None
        keys = _keys(secrets, "verifiers", "verifier")
        if not keys:
            raise _Reject(401, BAD_SIGNATURE, detail="no verifier stored for this system")
        if header is None:
            raise _Reject(401, BAD_SIGNATURE, detail="no signature header")
        if not _any_match(lambda k: _same(_freshbooks_signature(pairs, k), header), keys):
            raise _Reject(401, BAD_SIGNATURE)
        if not event.name or not event.object_id:
            raise _Reject(400, MALFORMED, detail="no name or object_id")
        added = self._store(h, system, event.name, event.object_id,
                            freshbooks_dedupe_key(system, event.name, event.object_id),
                            event.fields, account_id=event.account_id)
        hook = self.on_event
        return (lambda: hook(system, event)) if added and hook else None

    def _bill(self, h: BaseHTTPRequestHandler, system: str, body: bytes,
              secrets: Mapping[str, Any]) -> Callable[[], None] | None:
        keys = _keys(secrets, "security_keys", "security_key")
        if not keys:
            raise _Reject(401, BAD_SIGNATURE, detail="no security key stored for this system")
        header = h.headers.get(BILL_HEADER)
        if header is None:
            raise _Reject(401, BAD_SIGNATURE, detail="no signature header")
        if not _any_match(lambda k: verify_bill(body, header, k), keys):
            raise _Reject(401, BAD_SIGNATURE)
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
        keys = _keys(secrets, "verifiers", "verifier")
        if not keys:
            raise _Reject(401, BAD_SIGNATURE, detail="no verifier token stored for this system")
        header = h.headers.get(QUICKBOOKS_HEADER)
        if header is None:
            raise _Reject(401, BAD_SIGNATURE, detail="no signature header")
        if not _any_match(lambda k: verify_quickbooks(body, header, k), keys):
            raise _Reject(401, BAD_SIGNATURE)
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


# ------------------------------------------------------------------------- registration
@dataclass(frozen=True)
class Callback:
    callback_id: str
    event: str | None
    uri: str | None
    verified: bool


def _callbacks_path(account_id: str, callback_id: str | None = None) -> str:
    path = f"/events/account/{account_id}/events/callbacks"
    return f"{path}/{callback_id}" if callback_id is not None else path


def _callback(body: Any) -> Callback:
    result = body.get("response", {}).get("result", {}) if isinstance(body, dict) else {}
    cb = result.get("callback") if isinstance(result, dict) else None
    if not isinstance(cb, dict):
        raise ApiError("FreshBooks answered without a callback", system="freshbooks")
    callback_id = cb.get("callbackid", cb.get("id"))
    if callback_id is None or str(callback_id) == "":
        raise ApiError("FreshBooks answered without a callback id", system="freshbooks")
    return Callback(callback_id=str(callback_id), event=cb.get("event"), uri=cb.get("uri"),
                    verified=bool(cb.get("verified")))


def register_freshbooks_callback(http: Any, account_id: str, event: str, uri: str) -> Callback:
    """Register `uri` for `event` ("bill.create", or a bare noun such as "bill"). FreshBooks
    then POSTs the handshake (object_id = callback id, verifier) to `uri`; nothing is
    delivered until `confirm_freshbooks_callback` sends the verifier back."""
    resp = http.post(_callbacks_path(account_id),
                     json={"callback": {"event": event, "uri": uri}})
    return _callback(resp.body)


def confirm_freshbooks_callback(http: Any, account_id: str, callback_id: str,
                                verifier: str) -> Callback:
    resp = http.put(_callbacks_path(account_id, str(callback_id)),
                    json={"callback": {"verifier": verifier}})
    return _callback(resp.body)


def resend_freshbooks_verification(http: Any, account_id: str, callback_id: str) -> Callback:
    resp = http.put(_callbacks_path(account_id, str(callback_id)),
                    json={"callback": {"resend": True}})
    return _callback(resp.body)
