"""QuickBooks webhooks: the signature as Intuit computes it, both payload formats, and the
inbox read by the next sync (a webhook is a hint: the object is read back)."""

from __future__ import annotations

import json

import requests
from typer.testing import CliRunner

from mlconnector.cli import app
from mlconnector.webhooks import Inbox, parse_quickbooks, verify_quickbooks

# api/quickbooks.md, Sample 5a: the exact bytes and the signature Intuit sends for them
VERIFIER = "a1b2c3d4-verifier-token-EXAMPLE"
LEGACY = (b'{"eventNotifications":[{"realmId":"9341453000123456","dataChangeEvent":{"entities":'
          b'[{"name":"Bill","id":"145","operation":"Update","lastUpdated":"2026-03-02T18:04:11.'
          b'000Z"},{"name":"Bill","id":"139","operation":"Delete","lastUpdated":"2026-03-02T18:0'
          b'4:40.000Z"},{"name":"Vendor","id":"58","operation":"Merge","lastUpdated":"2026-03-02'
          b'T18:05:02.000Z","deletedId":"61"}]}}]}')
CLOUD = (b'[{"specversion":"1.0","id":"3f0e6a52-8c1d-4e55-9a0b-7d2c1e9f4a10","source":"intuit.'
         b'exampleSourceValue=","type":"qbo.bill.updated.v1","datacontenttype":"application/json'
         b'","time":"2026-03-02T18:04:11.512Z","intuitentityid":"145","intuitaccountid":"934145'
         b'3000123456","data":{}}]')


def test_signatures_match_intuits_worked_examples():
    assert len(LEGACY) == 372 and len(CLOUD) == 275
    assert verify_quickbooks(LEGACY, "pyoU59An5LVQZb/sSq8wVtj+hInBcwJkV7doCDlaq+E=", VERIFIER)
    assert verify_quickbooks(CLOUD, "q/qD2p6G/pFvt7KbxPM1qx/agINhzK8HWJNNTqkHk14=", VERIFIER)
    reserialized = json.dumps(json.loads(LEGACY), separators=(", ", ": ")).encode()
    assert not verify_quickbooks(reserialized, "pyoU59An5LVQZb/sSq8wVtj+hInBcwJkV7doCDlaq+E=",
                                 VERIFIER)


def test_both_formats_parse_to_the_same_events():
    legacy = parse_quickbooks(LEGACY)
    assert [(e.entity, e.object_id, e.operation) for e in legacy] == [
        ("Bill", "145", "Update"), ("Bill", "139", "Delete"), ("Vendor", "58", "Merge")]
    assert legacy[2].deleted_id == "61"
    (cloud,) = parse_quickbooks(CLOUD)
    assert (cloud.entity, cloud.object_id, cloud.operation, cloud.realm_id) == (
        "Bill", "145", "Update", "9341453000123456")
    assert cloud.event_id == "3f0e6a52-8c1d-4e55-9a0b-7d2c1e9f4a10"


def legacy_body(realm: str, *entities: tuple[str, str, str]) -> bytes:
    return json.dumps({"eventNotifications": [{"realmId": realm, "dataChangeEvent": {
        "entities": [{"name": n, "id": i, "operation": op,
                      "lastUpdated": "2026-03-02T18:04:11.000Z"} for n, i, op in entities]}}]},
        separators=(",", ":")).encode()


def test_webhooks_reach_the_inbox_and_the_next_sync_reads_them(ledger, monkeypatch):
    from mlconnector.serve import build_receiver

    monkeypatch.setenv("MLCONNECTOR_QBO_WEBHOOK_VERIFIER", ledger.qbo.verifier_token)
    ledger.options["deletes"] = "void"
    office = ledger.account("Office Supplies", "600100")
    vendor = ledger.qbo.add_vendor("Hook Supplies")
    bills = [ledger.qbo.add_bill(vendor["Id"], [{"amount": "10.00", "account_id": office}])
             for _ in range(2)]
    assert ledger.sync().exit_code == 0
    ledger.clock.advance(600)
    ledger.qbo.delete("Bill", bills[0]["Id"])
    ledger.qbo.update("Bill", bills[1]["Id"], PrivateNote="changed")

    cfg = ledger.config()
    with ledger.state() as state:
        receiver = build_receiver(cfg, state, ledger.data_dir, port=0, clock=ledger.clock)
        with receiver.start():
            url = f"{receiver.url}/webhooks/quickbooks/qbo"
            realm = ledger.qbo.realm_id
            body = legacy_body(realm, ("Bill", bills[0]["Id"], "Delete"),
                               ("Bill", bills[1]["Id"], "Update"))
            signed = {"intuit-signature": ledger.qbo.sign_webhook(body),
                      "Content-Type": "application/json"}
            assert requests.post(url, data=body, headers=signed, timeout=5).status_code == 200
            assert requests.post(url, data=body, headers=signed, timeout=5).status_code == 200
            forged = {**signed, "intuit-signature": ledger.qbo.sign_webhook(b"other")}
            assert requests.post(url, data=body, headers=forged, timeout=5).status_code == 401
            other = legacy_body("123", ("Bill", "1", "Delete"))
            assert requests.post(url, data=other, timeout=5, headers={
                "intuit-signature": ledger.qbo.sign_webhook(other)}).status_code == 200
        with Inbox(state.path) as inbox:
            assert len(inbox.pending("qbo")) == 2  # the duplicate and the other company: no

    ledger.qbo.request_log.clear()
    result = ledger.sync()

    assert result.exit_code == 0, result.aborted
    assert result.flows["bills"].voided == 1 and result.flows["bills"].updated == 1
    with ledger.state() as state, Inbox(state.path) as inbox:
        assert inbox.pending("qbo") == []
    paths = [p for _, p, _ in ledger.qbo.request_log]
    assert any(p.endswith(f"/bill/{bills[0]['Id']}") for p in paths)  # the deletion: checked
    assert not any(p.endswith(f"/bill/{bills[1]['Id']}") for p in paths)  # the update: CDC
    events = [json.loads(line)["event"] for f in (ledger.data_dir / "audit").glob("*.jsonl")
              for line in f.read_text().splitlines()]
    assert "webhook.rejected" in events and "webhook.received" in events
    text = "".join(f.read_text() for f in (ledger.data_dir / "audit").glob("*.jsonl"))
    assert ledger.qbo.verifier_token not in text


def test_register_says_where_quickbooks_webhooks_are_set(ledger):
    result = CliRunner().invoke(app, ["--config", str(ledger.write_config()), "webhook",
                                      "register", "qbo", "--url", "https://hooks.example"])
    assert result.exit_code == 0, result.output
    assert "https://hooks.example/webhooks/quickbooks/qbo" in result.output
    assert "auth set qbo webhook_verifier" in result.output
