"""QuickBooks Online -> ServiceNow AP, end to end over loopback: the sandboxes, a config as a
user writes it, and `run_pairs` as `mlconnector sync` calls it."""

from __future__ import annotations

import json

import pytest


def staged(ledger, table: str) -> list[dict]:
    return [r for r in ledger.sn.staging_results if r.get("staging_table", "").endswith(table)
            or table in json.dumps(r)]


def invoice_by_number(ledger, number: str) -> dict:
    (row,) = [r for r in ledger.sn.rows("sn_shop_invoice")
              if r["external_invoice_number"] == number]
    return row


def seed(ledger, bills: int = 3):
    office = ledger.account("Office Supplies", "600100")
    ops = ledger.qbo.add_class("Operations")
    ledger.sn.add_cost_center("Operations", "CC-OPS")
    ledger.cost_centers["Operations"] = "CC-OPS"
    acme = ledger.qbo.add_vendor("Acme Paper Supply", CompanyName="Acme Paper Supply LLC",
                                 TaxIdentifier="123-45-6789",
                                 TermRef={"value": "3", "name": "Net 30"},
                                 PrimaryEmailAddr={"Address": "ap@acme.example"})
    made = [ledger.qbo.add_bill(acme["Id"], [
        {"amount": f"{100 + i}.50", "account_id": office, "description": f"paper {i}",
         "class_id": ops["Id"]},
        {"amount": "20.00", "account_id": office, "description": "toner"}],
        doc_number=f"INV-{i}", private_note=f"order {i}") for i in range(bills)]
    return acme, made


def test_first_sync_writes_suppliers_invoices_and_lines_then_nothing(ledger):
    acme, bills = seed(ledger)

    first = ledger.sync()

    assert first.exit_code == 0, first.aborted
    assert (first.flows["vendors"].created, first.flows["bills"].created) == (1, 3)
    (supplier,) = ledger.sn.rows("sn_fin_supplier")
    assert supplier["u_external_id"] == f"QBO-{acme['Id']}"
    assert supplier["tax_id"] == "XXXXXX6789"  # QuickBooks only ever shows it masked
    (company,) = ledger.sn.rows("core_company")
    assert (company["name"], company["vendor"]) == ("Acme Paper Supply", "true")
    assert supplier["related_company"] == company["sys_id"]
    invoice = invoice_by_number(ledger, f"QBO-{bills[0]['Id']}")
    assert invoice["supplier"] == supplier["sys_id"]
    assert (invoice["subtotal"], invoice["supplier_invoice_number"]) == ("120.50", "INV-0")
    assert invoice["u_sync_token"] == "0"
    lines = [r for r in ledger.sn.rows("sn_shop_invoice_line") if r["invoice"] == invoice["sys_id"]]
    (gl,) = ledger.sn.rows("sn_fin_gl_account")
    (cc,) = ledger.sn.rows("cmn_cost_center")
    assert sorted((r["line_amount"], r["ledger_account"], r["cost_center"]) for r in lines) == [
        ("100.50", gl["sys_id"], cc["sys_id"]), ("20.00", gl["sys_id"], "")]
    with ledger.state() as state:
        assert state.mapped(ledger.PAIR, "bills", bills[0]["Id"]).version.startswith("0@")

    writes = len(ledger.sn.staging_results)
    second = ledger.sync()
    assert second.exit_code == 0
    assert len(ledger.sn.staging_results) == writes
    assert second.flows["bills"].created == second.flows["bills"].updated == 0


def test_edited_bill_updates_the_invoice_and_its_sync_token(ledger):
    _, bills = seed(ledger, bills=1)
    ledger.sync()
    ledger.clock.advance(600)

    ledger.qbo.update("Bill", bills[0]["Id"], PrivateNote="corrected", DocNumber="INV-0-A")
    result = ledger.sync()

    assert result.flows["bills"].updated == 1
    invoice = invoice_by_number(ledger, f"QBO-{bills[0]['Id']}")
    assert (invoice["supplier_invoice_number"], invoice["u_sync_token"]) == ("INV-0-A", "1")
    assert len(ledger.sn.rows("sn_shop_invoice")) == 1


def test_supplier_and_invoice_already_in_servicenow_are_matched_not_duplicated(ledger):
    office = ledger.account("Office Supplies", "600100")
    vendor = ledger.qbo.add_vendor("Northwind Components")
    bill = ledger.qbo.add_bill(vendor["Id"], [{"amount": "50.00", "account_id": office}],
                               doc_number="NW-88231")
    existing = ledger.sn.add_supplier("Northwind Components")
    entered = ledger.sn.add_invoice(existing["sys_id"], "", supplier_invoice_number="NW-88231",
                                    subtotal="50.00", invoice_date="2026-03-02", currency="USD")

    result = ledger.sync()

    assert result.exit_code == 0, result.aborted
    assert (result.flows["vendors"].matched, result.flows["bills"].matched) == (1, 1)
    assert len(ledger.sn.rows("sn_fin_supplier")) == len(ledger.sn.rows("core_company")) == 1
    (invoice,) = ledger.sn.rows("sn_shop_invoice")
    assert invoice["sys_id"] == entered["sys_id"]
    assert invoice["external_invoice_number"] == f"QBO-{bill['Id']}"  # claimed for staging

    ledger.clock.advance(600)
    ledger.qbo.update("Bill", bill["Id"], PrivateNote="now synced")
    assert ledger.sync().flows["bills"].updated == 1
    assert len(ledger.sn.rows("sn_shop_invoice")) == 1


def test_bill_on_an_unmapped_account_is_held_then_replayed(ledger):
    travel = ledger.account("Travel", "610000", mapped=False)
    vendor = ledger.qbo.add_vendor("Skyways")
    bill = ledger.qbo.add_bill(vendor["Id"], [{"amount": "300.00", "account_id": travel}])

    held = ledger.sync()

    assert held.exit_code == 4
    (alarm,) = held.alarms
    assert alarm.kind == "held" and "GL account not mapped for" in alarm.reason
    assert "'Travel'" in alarm.reason
    assert ledger.sn.rows("sn_shop_invoice") == []
    assert ledger.sync().exit_code == 0  # still held: no new alarm every five minutes

    ledger.sn.add_gl_account("610000", "Travel")
    ledger.gl["Travel"] = "610000"
    (replayed,) = ledger.replay([alarm.parked_id])
    assert replayed.exit_code == 0 and replayed.flows["bills"].created == 1
    invoice_by_number(ledger, f"QBO-{bill['Id']}")


def test_payments_are_linked_to_the_invoices_they_pay(ledger):
    _, bills = seed(ledger, bills=2)
    ledger.qbo.add_bill_payment(bills[0]["VendorRef"]["value"],
                                [(bills[0]["Id"], "120.50"), (bills[1]["Id"], "21.50")])
    result = ledger.sync()

    assert result.exit_code == 0, result.aborted
    assert result.flows["payments"].created == 2
    details = ledger.sn.rows("sn_shop_invoice_payment_detail")
    by_invoice = {d["invoice"]: d["payment_amount"] for d in details}
    first = invoice_by_number(ledger, f"QBO-{bills[0]['Id']}")
    second = invoice_by_number(ledger, f"QBO-{bills[1]['Id']}")
    assert by_invoice == {first["sys_id"]: "120.50", second["sys_id"]: "21.50"}
    assert first["state"] == "paid" and second["state"] != "paid"


def test_voided_payment_zeroes_its_payment_details(ledger):
    _, bills = seed(ledger, bills=1)
    payment = ledger.qbo.add_bill_payment(bills[0]["VendorRef"]["value"],
                                          [(bills[0]["Id"], "120.50")])
    ledger.sync()
    ledger.clock.advance(600)

    ledger.qbo.void_bill_payment(payment["Id"])
    result = ledger.sync()

    assert result.flows["payments"].updated == 1
    (detail,) = ledger.sn.rows("sn_shop_invoice_payment_detail")
    assert detail["payment_amount"] in ("0", "0.00")


@pytest.mark.parametrize("deletes", ["ignore", "void"])
def test_deleted_bill_is_audited_and_handled_per_config(ledger, deletes):
    ledger.options["deletes"] = deletes
    _, bills = seed(ledger, bills=2)
    ledger.sync()
    ledger.clock.advance(600)

    ledger.qbo.delete("Bill", bills[0]["Id"])
    result = ledger.sync()

    assert result.exit_code == 0, result.aborted
    invoice = invoice_by_number(ledger, f"QBO-{bills[0]['Id']}")
    lines = (ledger.data_dir / "audit").glob("*.jsonl")
    events = [json.loads(x) for f in lines for x in f.read_text().splitlines()]
    about = [e for e in events if e.get("source_id") == bills[0]["Id"]
             and e["event"] in ("record.skipped", "record.written")]
    if deletes == "void":
        assert invoice["state"] == "canceled"
        assert result.flows["bills"].voided == 1
        assert about[-1]["action"] == "voided"
    else:
        assert invoice["state"] == "draft"
        assert about[-1]["event"] == "record.skipped" and about[-1]["deleted"] is True
    assert ledger.sync().flows["bills"].skipped == 0  # seen once, not again every run


def test_inactive_vendor_is_deactivated_when_deletes_is_void(ledger):
    ledger.options["deletes"] = "void"
    vendor = ledger.qbo.add_vendor("Old Supplier")
    ledger.sync()
    ledger.clock.advance(600)

    ledger.qbo.update("Vendor", vendor["Id"], Active=False)
    result = ledger.sync()

    assert result.flows["vendors"].voided == 1
    (company,) = ledger.sn.rows("core_company")
    assert company["vendor"] == "false"


def test_2500_changes_inside_one_cdc_window_all_arrive(ledger):
    """CDC stops at 1,000 objects without saying so and drops deletions first."""
    ledger.options["deletes"] = "void"
    office = ledger.account("Office Supplies", "600100")
    vendor = ledger.qbo.add_vendor("Bulk Vendor")
    early = ledger.qbo.add_bill(vendor["Id"], [{"amount": "1.00", "account_id": office}])
    ledger.sync()
    ledger.clock.advance(600)

    for i in range(2500):
        ledger.qbo.add_bill(vendor["Id"], [{"amount": f"{i + 1}.00", "account_id": office}],
                            doc_number=f"B-{i}")
    ledger.qbo.delete("Bill", early["Id"])
    ledger.qbo.request_log.clear()
    result = ledger.sync()

    assert result.exit_code == 0, result.aborted
    assert result.flows["bills"].created == 2500
    assert result.flows["bills"].voided == 1  # the deletion CDC dropped, found again
    assert len(ledger.sn.rows("sn_shop_invoice")) == 2501
    assert invoice_by_number(ledger, f"QBO-{early['Id']}")["state"] == "canceled"
    calls = [(p.rsplit("/", 1)[-1], q) for _, p, q in ledger.qbo.request_log]
    assert [q["entities"] for name, q in calls if name == "cdc"][1:] == [
        "Vendor", "Bill", "BillPayment", "JournalEntry"]  # narrowed: one entity per call
    assert all(q.get("minorversion") == "75" for _, q in calls)


def test_watermark_older_than_30_days_falls_back_to_query(ledger):
    ledger.options["deletes"] = "void"
    _, bills = seed(ledger, bills=3)
    ledger.sync()
    ledger.clock.advance(40 * 86400)

    ledger.qbo.update("Bill", bills[1]["Id"], PrivateNote="changed after 40 days")
    ledger.qbo.delete("Bill", bills[2]["Id"])
    late = ledger.qbo.add_bill(bills[0]["VendorRef"]["value"], [
        {"amount": "9.99", "account_id": bills[0]["Line"][0]["AccountBasedExpenseLineDetail"][
            "AccountRef"]["value"]}])
    ledger.qbo.request_log.clear()
    result = ledger.sync()

    assert result.exit_code == 0, result.aborted
    paths = [p.rsplit("/", 1)[-1] for _, p, _ in ledger.qbo.request_log]
    assert "cdc" not in paths and "query" in paths
    assert (result.flows["bills"].created, result.flows["bills"].updated,
            result.flows["bills"].voided) == (1, 1, 1)
    invoice_by_number(ledger, f"QBO-{late['Id']}")
    assert invoice_by_number(ledger, f"QBO-{bills[2]['Id']}")["state"] == "canceled"

    ledger.qbo.request_log.clear()
    assert ledger.sync().exit_code == 0
    assert "cdc" in [p.rsplit("/", 1)[-1] for _, p, _ in ledger.qbo.request_log]


def test_a_crash_between_write_and_commit_heals_without_duplicates(ledger, monkeypatch):
    _, bills = seed(ledger, bills=4)
    from mlconnector.state import State

    real = State.record_synced
    calls = {"n": 0}

    def dies_on_the_third_bill(self, pair, flow, *a, **kw):
        if flow == "bills":
            calls["n"] += 1
            if calls["n"] == 3:
                raise KeyboardInterrupt("killed")
        return real(self, pair, flow, *a, **kw)

    monkeypatch.setattr(State, "record_synced", dies_on_the_third_bill)
    with pytest.raises(KeyboardInterrupt):
        ledger.sync()
    monkeypatch.setattr(State, "record_synced", real)

    again = ledger.sync()
    assert again.exit_code == 0, again.aborted
    numbers = sorted(r["external_invoice_number"] for r in ledger.sn.rows("sn_shop_invoice"))
    assert numbers == sorted(f"QBO-{b['Id']}" for b in bills)


def test_journal_entries_on_an_ap_account_reach_gl_staging(ledger):
    ap = ledger.qbo.add_account("Accounts Payable (A/P)", account_type="Accounts Payable")
    freight = ledger.account("Freight", "620000")
    ledger.gl["Accounts Payable (A/P)"] = "200000"
    vendor = ledger.qbo.add_vendor("Carrier Co")
    ledger.qbo.add_journal_entry([
        {"amount": "310.00", "posting_type": "Debit", "account_id": freight},
        {"amount": "310.00", "posting_type": "Credit", "account_id": ap["Id"],
         "vendor_id": vendor["Id"]}], doc_number="JE-1")
    bank = ledger.qbo.add_account("Checking", account_type="Bank")
    ledger.qbo.add_journal_entry([
        {"amount": "5.00", "posting_type": "Debit", "account_id": freight},
        {"amount": "5.00", "posting_type": "Credit", "account_id": bank["Id"]}])

    result = ledger.sync()

    assert result.exit_code == 0, result.aborted
    assert (result.flows["journal_entries"].created,
            result.flows["journal_entries"].skipped) == (1, 1)
    rows = ledger.sn.rows("u_ap_journal_entry")
    assert sorted((r["u_posting_type"], r["u_amount"], r["u_account"]) for r in rows) == [
        ("Credit", "310.00", "200000"), ("Debit", "310.00", "620000")]


def test_an_instance_with_the_product_pages_table_names_works_by_renaming(
        tmp_path, monkeypatch, clock):
    from mlconnector.sandbox import QuickBooksSandbox, ServiceNowSandbox
    from tests.conftest import Ledger

    with QuickBooksSandbox(clock=clock) as qbo, ServiceNowSandbox(
            clock=clock, renames={"sn_shop_invoice": "sn_apo_invoice"}) as sn:
        ledger = Ledger(qbo, sn, clock, tmp_path, monkeypatch)
        _, bills = seed(ledger, bills=1)
        refused = ledger.sync()  # sn_shop_invoice does not exist there
        assert refused.exit_code == 2
        assert "[systems.sn.tables]" in refused.aborted

        ledger.sn_extra = {"tables": {"invoice": "sn_apo_invoice"}}
        result = ledger.sync()
        assert result.exit_code == 0, result.aborted
        (invoice,) = sn.rows("sn_apo_invoice")
        assert invoice["external_invoice_number"] == f"QBO-{bills[0]['Id']}"


def test_a_missing_role_exits_3_naming_it(ledger):
    seed(ledger, bills=1)
    ledger.sn.deny("sn_spend_intg_imp_invoice", "POST")

    result = ledger.sync()

    assert result.exit_code == 3
    assert "import_set_loader" in result.aborted


def test_tokens_expiring_mid_run_on_both_sides_are_renewed(ledger):
    _, bills = seed(ledger, bills=2)
    ledger.sync()
    ledger.clock.advance(600)
    ledger.qbo.update("Bill", bills[0]["Id"], PrivateNote="x")
    ledger.qbo.expire_access_tokens()
    ledger.sn.expire_access_tokens()

    result = ledger.sync()

    assert result.exit_code == 0, result.aborted
    assert result.flows["bills"].updated == 1
    assert len(ledger.sn.rows("sn_shop_invoice")) == 2


def test_quickbooks_throttling_in_xml_is_waited_out(ledger):
    seed(ledger, bills=1)
    ledger.qbo.xml_errors = True
    ledger.qbo.fail_next(1, status=429)

    result = ledger.sync()

    assert result.exit_code == 0, result.aborted
    assert 60 in ledger.clock.slept  # Intuit: wait 60 s after a 429


def test_an_invoice_left_without_its_lines_is_completed_not_duplicated(ledger, monkeypatch):
    """The header was staged, then the target stopped answering before the lines: the
    record waits for a retry, which finds the invoice by its number and writes it whole."""
    from mlconnector.connectors.servicenow import ServiceNow
    from mlconnector.errors import TransientError

    _, bills = seed(ledger, bills=1)
    real = ServiceNow.stage
    broken = {"left": 1}

    def stage(self, logical, row, what):
        if logical == "invoice_line_import" and broken["left"]:
            broken["left"] -= 1
            raise TransientError("connection reset", system="servicenow")
        return real(self, logical, row, what)

    monkeypatch.setattr(ServiceNow, "stage", stage)
    first = ledger.sync()
    assert first.exit_code == 4 and first.flows["bills"].failed == 1
    assert ledger.sn.rows("sn_shop_invoice_line") == []

    ledger.clock.advance(3600)  # the automatic retry is due
    again = ledger.sync()
    assert again.exit_code == 0, again.aborted
    (invoice,) = ledger.sn.rows("sn_shop_invoice")
    lines = [r for r in ledger.sn.rows("sn_shop_invoice_line") if r["invoice"] == invoice["sys_id"]]
    assert len(lines) == 2


def test_a_deleted_payment_of_two_bills_zeroes_both_payment_details(ledger):
    ledger.options["deletes"] = "void"
    _, bills = seed(ledger, bills=2)
    payment = ledger.qbo.add_bill_payment(bills[0]["VendorRef"]["value"],
                                          [(bills[0]["Id"], "120.50"), (bills[1]["Id"], "21.50")])
    ledger.sync()
    ledger.clock.advance(600)

    ledger.qbo.delete("BillPayment", payment["Id"])  # a stub without the bills it paid
    result = ledger.sync()

    assert result.exit_code == 0, result.aborted
    assert result.flows["payments"].voided == 2
    assert {d["payment_amount"] for d in ledger.sn.rows("sn_shop_invoice_payment_detail")} <= {
        "0", "0.00"}


def test_dry_run_reads_and_maps_but_writes_nothing(ledger):
    seed(ledger, bills=2)

    result = ledger.sync(dry_run=True)

    assert result.exit_code == 0, result.aborted
    assert {w["action"] for w in result.would_write} == {"created"}
    assert len([w for w in result.would_write if w["flow"] == "bills"]) == 2
    assert ledger.sn.staging_results == [] and ledger.sn.rows("sn_shop_invoice") == []
    with ledger.state() as state:
        assert state.watermarks(ledger.PAIR) == {}


def test_dry_run_does_not_claim_a_hand_entered_invoice(ledger):
    office = ledger.account("Office Supplies", "600100")
    vendor = ledger.qbo.add_vendor("Northwind Components")
    ledger.qbo.add_bill(vendor["Id"], [{"amount": "70.00", "account_id": office}],
                        doc_number="NW-2")
    existing = ledger.sn.add_supplier("Northwind Components")
    ledger.sn.add_invoice(existing["sys_id"], "", supplier_invoice_number="NW-2",
                          subtotal="70.00", invoice_date="2026-03-03", currency="USD")
    assert ledger.sync(flow="vendors").exit_code == 0  # the supplier is linked for real

    result = ledger.sync(dry_run=True)

    assert result.exit_code == 0, result.aborted
    assert [w["action"] for w in result.would_write if w["flow"] == "bills"] == ["matched"]
    (hand,) = ledger.sn.rows("sn_shop_invoice")
    assert hand["external_invoice_number"] == ""  # a dry run writes nothing, not even a claim
