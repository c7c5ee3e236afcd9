"""Webhook signatures (FreshBooks' worked example and its wrong variants, BILL), the inbox,
the receiver over a real loopback socket, and callback registration."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import socket
import sqlite3
import threading
from datetime import timedelta
from decimal import Decimal
from types import SimpleNamespace

import pytest
import requests

from mlconnector.audit import Audit, read_lines
from mlconnector.clock import FakeClock
from mlconnector.errors import ApiError
from mlconnector.webhooks import (
    BILL_HEADER,
    FRESHBOOKS_HEADER,
    Inbox,
    WebhookReceiver,
    bill_dedupe_key,
    confirm_freshbooks_callback,
    freshbooks_dedupe_key,
    parse_bill,
    parse_freshbooks,
    register_freshbooks_callback,
    verify_bill,
    verify_freshbooks,
)

# the worked example of api/freshbooks.md §6
FB_SECRET = "9f3kQ2xV7mLpR4tZ"
FB_BODY = (b"name=bill.create&object_id=4112233&account_id=Xy9Ab2&business_id=7654321"
           b"&identity_id=2345678&user_id=1")
FB_SIGNATURE = "vsBbq1+DT1OFgfk2NY+W2ker42GL1otuyXHpFP4Upvk="
WRONG_VARIANTS = {
    "raw body": "hKD4a5HhhR1qWrviCUkeC8HrEff/R5XkYue9YFSMiJI=",
    "compact JSON": "OPZHw034YBB5c/h5AFZVwCwXOdM5ZGGKcZeOcB2OuYE=",
    "keys sorted": "8bNdSQJgoEGX612x0hXM554rnrerkkadsYqd/R9mPT4=",
}

BILL_KEY = "bill-security-key-0123456789"
BILL_EVENT = {
    "metadata": {"eventId": "6b1e0c9a-3f52-4d7e-8a41-0f2b9c7d5e11",
                 "subscriptionId": "c0a8012e-7d4b-4e0f-9b1a-5e6f7a8b9c0d",
                 "organizationId": "00801QWERTYUIOPAS1a2", "eventType": "bill.created",
                 "version": "1"},
    "bill": {"id": "00n02BILL0000000001q", "vendorId": "00902VALLEYHVAC0001a",
             "amount": 179.00, "paymentStatus": "UNPAID"},
}


def _sign(key: str, message: bytes) -> str:
    return base64.b64encode(hmac.new(key.encode(), message, hashlib.sha256).digest()).decode()


# ----------------------------------------------------------------------- FreshBooks sig
def test_freshbooks_worked_example_verifies():
    assert verify_freshbooks(FB_BODY, FB_SIGNATURE, FB_SECRET)
    assert verify_freshbooks(FB_BODY, FB_SIGNATURE + "\r\n", FB_SECRET)  # header whitespace


@pytest.mark.parametrize("variant", sorted(WRONG_VARIANTS))
def test_freshbooks_wrong_variants_are_rejected(variant):
    # the variants really are what the page says they are ...
    fields = dict(parse_freshbooks(FB_BODY).fields)
    message = {
        "raw body": FB_BODY,
        "compact JSON": json.dumps(fields, separators=(",", ":")).encode(),
        "keys sorted": json.dumps(fields, sort_keys=True).encode(),
    }[variant]
    assert _sign(FB_SECRET, message) == WRONG_VARIANTS[variant]
    # ... and none of them passes
    assert not verify_freshbooks(FB_BODY, WRONG_VARIANTS[variant], FB_SECRET)


def test_freshbooks_other_failures():
    assert not verify_freshbooks(FB_BODY, None, FB_SECRET)
    assert not verify_freshbooks(FB_BODY, "", FB_SECRET)
    assert not verify_freshbooks(FB_BODY, FB_SIGNATURE, "another-verifier")
    assert not verify_freshbooks(FB_BODY, FB_SIGNATURE, "")
    assert not verify_freshbooks(FB_BODY.replace(b"4112233", b"4112234"), FB_SIGNATURE,
                                 FB_SECRET)
    # the order received is signed: the same fields in another order do not verify
    reordered = b"object_id=4112233&name=bill.create" + FB_BODY[36:]
    assert not verify_freshbooks(reordered, FB_SIGNATURE, FB_SECRET)
    assert not verify_freshbooks(FB_BODY, "vsBbq1+DT1OFgfk2NY+W2ker42GL1otuyXHpFP4Upvk=é",
                                 FB_SECRET)


def test_freshbooks_non_ascii_is_signed_as_python_escapes_it():
    body = b"name=client.update&object_id=7&note=Caf%C3%A9+%E2%82%AC"
    signed = '{"name": "client.update", "object_id": "7", "note": "Caf\\u00e9 \\u20ac"}'
    assert verify_freshbooks(body, _sign("k", signed.encode()), "k")


def test_parse_freshbooks_event_and_handshake():
    event = parse_freshbooks(FB_BODY)
    assert (event.name, event.object_id, event.account_id, event.verifier) == \
        ("bill.create", "4112233", "Xy9Ab2", None)
    assert list(event.fields) == ["name", "object_id", "account_id", "business_id",
                                  "identity_id", "user_id"]
    assert not event.is_handshake
    shake = parse_freshbooks(b"object_id=2001&verifier=Qm7Tz4Wc9Rb2Hs6N")
    assert shake.is_handshake and (shake.object_id, shake.verifier) == \
        ("2001", "Qm7Tz4Wc9Rb2Hs6N")
    assert shake.name is None


# ----------------------------------------------------------------------------- BILL sig
def test_bill_signature_good_and_bad():
    body = json.dumps(BILL_EVENT).encode()
    good = _sign(BILL_KEY, body)
    assert verify_bill(body, good, BILL_KEY)
    assert not verify_bill(body, good, "other-key")
    assert not verify_bill(body + b" ", good, BILL_KEY)  # the raw bytes are signed
    assert not verify_bill(body, hmac.new(BILL_KEY.encode(), body, hashlib.sha256).hexdigest(),
                           BILL_KEY)
    assert not verify_bill(body, None, BILL_KEY)
    assert not verify_bill(body, good, "")


def test_parse_bill_object_and_json_string():
    as_object = parse_bill(json.dumps(BILL_EVENT).encode())
    as_string = parse_bill(json.dumps(json.dumps(BILL_EVENT)).encode())
    for event in (as_object, as_string):
        assert event.event_id == "6b1e0c9a-3f52-4d7e-8a41-0f2b9c7d5e11"
        assert event.event_type == "bill.created"
        assert (event.entity, event.object_id) == ("bill", "00n02BILL0000000001q")
        assert event.payload["bill"]["amount"] == Decimal("179.0")
    # an entity that is itself JSON-escaped
    escaped = {**BILL_EVENT, "bill": json.dumps(BILL_EVENT["bill"])}
    assert parse_bill(json.dumps(escaped).encode()).object_id == "00n02BILL0000000001q"


@pytest.mark.parametrize("body", [b"", b"not json", b"[1, 2]", b'"just a string"',
                                  b'{"bill": {"id": "x"}}', b'{"metadata": {"eventId": "1"}}'])
def test_parse_bill_rejects_malformed(body):
    from mlconnector.webhooks import MalformedWebhook

    with pytest.raises(MalformedWebhook):
        parse_bill(body)


# -------------------------------------------------------------------------------- inbox
@pytest.fixture
def clock():  # as in conftest, so that the file also runs with --noconftest
    return FakeClock()


@pytest.fixture
def inbox(tmp_path):
    box = Inbox(tmp_path / "data" / "state.db")
    yield box
    box.close()


def test_inbox_freshbooks_dedupes_while_unprocessed(inbox, clock):
    key = freshbooks_dedupe_key("books", "bill.update", "41")
    assert inbox.add("books", "bill.update", "41", key, {"name": "bill.update"}, clock.now())
    assert not inbox.add("books", "bill.update", "41", key, {}, clock.now())
    (item,) = inbox.pending()
    assert inbox.mark_processed([item.id], clock.now()) == 1
    assert inbox.pending() == []
    # a later change to the same object is a new event once the first was handled
    assert inbox.add("books", "bill.update", "41", key, {}, clock.now())
    assert len(inbox.pending()) == 1


def test_inbox_bill_dedupes_on_event_id_for_good(inbox, clock):
    key = bill_dedupe_key("ap", "evt-1")
    assert inbox.add("ap", "bill.created", "00n1", key, {"amount": Decimal("179.00")},
                     clock.now())
    (item,) = inbox.pending(system="ap")
    assert item.payload == {"amount": Decimal("179.00")}
    inbox.mark_processed([item], clock.now())
    assert not inbox.add("ap", "bill.created", "00n1", key, {}, clock.now())
    assert inbox.pending() == []


def test_inbox_filters_and_stale_items(inbox, clock):
    now = clock.now()
    inbox.add("books", "bill.create", "1", freshbooks_dedupe_key("books", "bill.create", "1"),
              {}, now)
    inbox.add("books", "bill_vendor.update", "2",
              freshbooks_dedupe_key("books", "bill_vendor.update", "2"), {}, now)
    inbox.add("ap", "payment.updated", "3", bill_dedupe_key("ap", "e3"), {}, now)
    assert [i.object_id for i in inbox.pending(system="books")] == ["1", "2"]
    assert [i.object_id for i in inbox.pending(event_prefix="bill.")] == ["1"]
    assert [i.object_id for i in inbox.pending(system="ap", event_prefix="payment.")] == ["3"]
    assert inbox.pending(event_prefix="%") == []  # a prefix, not a LIKE pattern

    # delivered again while a sync was working on it: stays pending
    (item,) = inbox.pending(event_prefix="bill.")
    clock.advance(5)
    key = freshbooks_dedupe_key("books", "bill.create", "1")
    assert not inbox.add("books", "bill.create", "1", key, {}, clock.now())
    assert inbox.mark_processed([item], clock.now()) == 0
    (again,) = inbox.pending(event_prefix="bill.")
    assert inbox.mark_processed([again], clock.now()) == 1

    clock.advance(86400)
    assert inbox.prune(clock.now() - timedelta(seconds=1)) == 1
    assert len(inbox.pending()) == 2


def test_inbox_shares_the_state_file(tmp_path, clock):
    from mlconnector.state import State

    path = tmp_path / "state.db"
    state = State(path)
    box = Inbox(path)
    box.add("books", "bill.create", "1", "k", {}, clock.now())
    state.set_value("x", "y")
    db = sqlite3.connect(path)
    assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert db.execute("SELECT count(*) FROM webhook_inbox").fetchone()[0] == 1
    db.close()
    box.close()
    state.close()


# ----------------------------------------------------------------------------- receiver
class Hooks:
    def __init__(self):
        self.events: list = []
        self.handshakes: list = []
        self.fired = threading.Event()

    def on_event(self, system, event):
        self.events.append((system, event))
        self.fired.set()

    def on_handshake(self, system, callback_id, verifier):
        self.handshakes.append((system, callback_id, verifier))
        self.fired.set()


SECRETS = {
    "books": {"type": "freshbooks", "verifiers": {"2001": "some-other-callback",
                                                  "2002": FB_SECRET}},
    "ap": {"type": "bill", "security_key": BILL_KEY},
    "fresh": {"type": "freshbooks"},  # registered, handshake not done yet
}


@pytest.fixture
def receiver(tmp_path, clock, inbox):
    audit = Audit(tmp_path / "data" / "audit", clock=clock)
    hooks = Hooks()
    server = WebhookReceiver(secrets_for=lambda name: SECRETS.get(name), inbox=inbox,
                             audit=audit, clock=clock, on_event=hooks.on_event,
                             on_handshake=hooks.on_handshake, port=0).start()
    server.hooks = hooks
    server.audit_lines = lambda: list(read_lines(tmp_path / "data" / "audit"))
    yield server
    server.stop()
    audit.close()


def _post_fb(receiver, body=FB_BODY, signature=FB_SIGNATURE, system="books"):
    headers = {"Content-Type": "application/x-www-form-urlencoded"}
    if signature is not None:
        headers[FRESHBOOKS_HEADER] = signature
    return requests.post(f"{receiver.url}/webhooks/freshbooks/{system}", data=body,
                         headers=headers, timeout=5)


def test_receiver_stores_a_good_freshbooks_event_once(receiver, inbox):
    first = _post_fb(receiver)
    assert first.status_code == 200
    assert receiver.hooks.fired.wait(5)
    second = _post_fb(receiver)
    assert second.status_code == 200

    (item,) = inbox.pending()
    assert (item.system, item.event, item.object_id) == ("books", "bill.create", "4112233")
    assert item.payload["account_id"] == "Xy9Ab2"
    (system, event), = receiver.hooks.events  # the duplicate does not trigger again
    assert (system, event.name, event.object_id) == ("books", "bill.create", "4112233")

    lines = [x for x in receiver.audit_lines() if x["event"] == "webhook.received"]
    assert len(lines) == 2
    assert lines[0]["system"] == "books" and lines[0]["webhook_event"] == "bill.create"
    assert lines[0]["object_id"] == lines[0]["source_id"] == "4112233"
    assert "duplicate" not in lines[0] and lines[1]["duplicate"] is True
    raw = json.dumps(receiver.audit_lines())
    assert FB_SECRET not in raw and FB_SIGNATURE not in raw


def test_receiver_rejects_a_bad_signature_without_leaking(receiver, inbox):
    resp = _post_fb(receiver, signature=WRONG_VARIANTS["raw body"])
    assert resp.status_code == 401
    missing = _post_fb(receiver, signature=None)
    assert missing.status_code == 401
    assert inbox.pending() == []
    assert receiver.hooks.events == []

    rejected = [x for x in receiver.audit_lines() if x["event"] == "webhook.rejected"]
    assert len(rejected) == 2
    line = rejected[0]
    assert line["reason"] == "bad signature" and line["system"] == "books"
    assert line["path"] == "/webhooks/freshbooks/books" and line["remote"] == "127.0.0.1"
    with open(receiver.audit.current_path, encoding="utf-8") as fh:
        text = fh.read()
    for secret in (FB_SECRET, WRONG_VARIANTS["raw body"], FB_SIGNATURE, "4112233", "Xy9Ab2"):
        assert secret not in text


def test_receiver_without_a_verifier_yet_rejects_events(receiver, inbox):
    assert _post_fb(receiver, system="fresh").status_code == 401
    (line,) = receiver.audit_lines()
    assert line["reason"] == "bad signature" and "no verifier" in line["detail"]


def test_receiver_unknown_system_and_wrong_kind(receiver):
    assert _post_fb(receiver, system="nope").status_code == 404
    body = json.dumps(BILL_EVENT).encode()
    resp = requests.post(f"{receiver.url}/webhooks/bill/books", data=body,
                         headers={BILL_HEADER: _sign(BILL_KEY, body)}, timeout=5)
    assert resp.status_code == 404
    assert [x["reason"] for x in receiver.audit_lines()] == ["unknown system"] * 2
    assert requests.post(f"{receiver.url}/elsewhere", data=b"x", timeout=5).status_code == 404
    assert requests.get(f"{receiver.url}/webhooks/bill/ap", timeout=5).status_code == 405
    assert len(receiver.audit_lines()) == 2  # stray requests are not audited


def test_receiver_refuses_an_oversize_body(receiver, inbox):
    big = b"name=bill.create&object_id=1&pad=" + b"x" * (1 << 20)
    resp = _post_fb(receiver, body=big)
    assert resp.status_code == 413
    (line,) = receiver.audit_lines()
    assert line["event"] == "webhook.rejected" and line["reason"] == "too large"
    assert inbox.pending() == []


def test_receiver_refuses_an_oversize_chunked_body(receiver):
    chunks = (b"x" * 65536 for _ in range(20))
    resp = requests.post(f"{receiver.url}/webhooks/freshbooks/books", data=chunks,
                         headers={FRESHBOOKS_HEADER: FB_SIGNATURE}, timeout=5)
    assert resp.status_code == 413


def test_receiver_accepts_a_chunked_body(receiver, inbox):
    resp = requests.post(f"{receiver.url}/webhooks/freshbooks/books",
                         data=iter([FB_BODY[:20], FB_BODY[20:]]),
                         headers={FRESHBOOKS_HEADER: FB_SIGNATURE}, timeout=5)
    assert resp.status_code == 200
    assert len(inbox.pending()) == 1


def test_receiver_malformed_signed_body(receiver):
    body = b"account_id=Xy9Ab2"  # signed, but names no event
    assert _post_fb(receiver, body=body, signature=_sign(FB_SECRET, json.dumps(
        {"account_id": "Xy9Ab2"}).encode())).status_code == 400
    assert _post_fb(receiver, body=b"\xff\xfe=1").status_code == 400
    assert [x["reason"] for x in receiver.audit_lines()] == ["malformed body"] * 2


def test_receiver_handshake_calls_the_hook(receiver, inbox):
    resp = _post_fb(receiver, body=b"object_id=2003&verifier=Qm7Tz4Wc9Rb2Hs6N",
                    signature=None, system="fresh")
    assert resp.status_code == 200
    assert receiver.hooks.fired.wait(5)
    assert receiver.hooks.handshakes == [("fresh", "2003", "Qm7Tz4Wc9Rb2Hs6N")]
    assert inbox.pending() == []
    (line,) = receiver.audit_lines()
    assert line["event"] == "webhook.received" and line["webhook_event"] == "handshake"
    assert line["object_id"] == "2003"
    with open(receiver.audit.current_path, encoding="utf-8") as fh:
        assert "Qm7Tz4Wc9Rb2Hs6N" not in fh.read()


def test_receiver_bill_event(receiver, inbox):
    body = json.dumps(json.dumps(BILL_EVENT)).encode()  # the JSON-string form
    headers = {BILL_HEADER: _sign(BILL_KEY, body), "Content-Type": "application/json"}
    url = f"{receiver.url}/webhooks/bill/ap"
    assert requests.post(url, data=body, headers=headers, timeout=5).status_code == 200
    assert requests.post(url, data=body, headers=headers, timeout=5).status_code == 200
    bad = {BILL_HEADER: _sign("wrong", body)}
    assert requests.post(url, data=body, headers=bad, timeout=5).status_code == 401
    (item,) = inbox.pending(system="ap")
    assert (item.event, item.object_id) == ("bill.created", "00n02BILL0000000001q")
    assert item.payload["metadata"]["eventId"] == BILL_EVENT["metadata"]["eventId"]
    events = [x["event"] for x in receiver.audit_lines()]
    assert events == ["webhook.received", "webhook.received", "webhook.rejected"]
    assert BILL_KEY not in json.dumps(receiver.audit_lines())


def test_receiver_answers_413_before_an_announced_body(receiver):
    """With `Expect: 100-continue`, an oversize body is refused before it is sent."""
    host, port = receiver.server_address[:2]
    with socket.create_connection((host, port), timeout=5) as sock:
        sock.sendall(b"POST /webhooks/bill/ap HTTP/1.1\r\nHost: x\r\n"
                     b"Content-Length: 5000000\r\nExpect: 100-continue\r\n\r\n")
        answer = sock.recv(4096)
    assert answer.startswith(b"HTTP/1.1 413")


# ------------------------------------------------------------------------- registration
class FakeHttp:
    def __init__(self, *answers):
        self.calls: list = []
        self.answers = list(answers)

    def _answer(self, method, path, json):
        self.calls.append((method, path, json))
        return SimpleNamespace(body=self.answers.pop(0), status=200)

    def post(self, path, json=None):
        return self._answer("POST", path, json)

    def put(self, path, json=None):
        return self._answer("PUT", path, json)


def test_register_and_confirm_freshbooks_callback():
    http = FakeHttp(
        {"response": {"result": {"callback": {"callbackid": 2001, "event": "bill.create",
                                              "uri": "https://example.com/fb/hook",
                                              "verified": False}}}},
        {"response": {"result": {"callback": {"id": 2001, "verified": True}}}},
    )
    cb = register_freshbooks_callback(http, "Xy9Ab2", "bill.create",
                                      "https://example.com/fb/hook")
    assert (cb.callback_id, cb.event, cb.verified) == ("2001", "bill.create", False)
    done = confirm_freshbooks_callback(http, "Xy9Ab2", cb.callback_id, "Qm7Tz4Wc9Rb2Hs6N")
    assert (done.callback_id, done.verified) == ("2001", True)
    assert http.calls == [
        ("POST", "/events/account/Xy9Ab2/events/callbacks",
         {"callback": {"event": "bill.create", "uri": "https://example.com/fb/hook"}}),
        ("PUT", "/events/account/Xy9Ab2/events/callbacks/2001",
         {"callback": {"verifier": "Qm7Tz4Wc9Rb2Hs6N"}}),
    ]


def test_register_without_a_callback_id_is_an_error():
    http = FakeHttp({"response": {"result": {"callback": {"event": "bill.create"}}}})
    with pytest.raises(ApiError):
        register_freshbooks_callback(http, "Xy9Ab2", "bill.create", "https://x/h")


def test_receiver_concurrent_duplicates_are_stored_once(receiver, inbox):
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(8) as pool:
        codes = list(pool.map(lambda _: _post_fb(receiver).status_code, range(16)))
    assert codes == [200] * 16
    assert len(inbox.pending()) == 1
    received = [x for x in receiver.audit_lines() if x["event"] == "webhook.received"]
    assert sum(1 for x in received if not x.get("duplicate")) == 1
