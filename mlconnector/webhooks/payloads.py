"""What each system sends: the signatures, the payload formats, the events."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import re
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any
from urllib.parse import parse_qsl

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


def form_pairs(body: bytes) -> list[tuple[str, str]]:
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


def freshbooks_signature(pairs: list[tuple[str, str]], secret: str) -> str:
    message = json.dumps(dict(pairs))  # ", " and ": ", ensure_ascii, insertion order
    digest = hmac.new(secret.encode("utf-8"), message.encode("utf-8"), hashlib.sha256).digest()
    return base64.b64encode(digest).decode("ascii")


def same_signature(expected: str, header: str | None) -> bool:
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
        pairs = form_pairs(body)
    except MalformedWebhook:
        return False
    return same_signature(freshbooks_signature(pairs, secret), header)


def parse_freshbooks(body: bytes) -> FreshBooksEvent:
    """The delivery's fields; a `verifier` field marks the registration handshake."""
    fields = dict(form_pairs(body))
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
    return same_signature(base64.b64encode(digest).decode("ascii"), header)


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
    return same_signature(base64.b64encode(mac).decode("ascii"), header)


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

