"""The flagship pair end to end, over real loopback sockets against the sandbox."""

from __future__ import annotations

from decimal import Decimal


def seed(business, bills=3, lines=2):
    office = business.category("Office Expenses & Postage")
    software = business.category("Software")
    vendor = business.fb.add_vendor("Northwind Office Supply",
                                    primary_contact_email="ap@northwind.example",
                                    country="United States")
    made = []
    for i in range(bills):
        made.append(business.fb.add_bill(
            vendor["vendorid"], bill_number=f"INV-{i}",
            lines=[{"categoryid": office if n % 2 == 0 else software,
                    "description": f"line {n}", "quantity": 2, "unit_cost": "10.05"}
                   for n in range(lines)]))
    return vendor, made


def test_first_sync_creates_vendors_and_bills_on_their_gl_accounts(business):
    vendor, bills = seed(business)
    result = business.sync()
    assert result.exit_code == 0, result
    assert result.flows["vendors"].created == 1
    assert result.flows["bills"].created == 3
    assert len(business.bill.vendors) == 1 and len(business.bill.bills) == 3
    b = next(iter(business.bill.bills.values()))
    assert b["invoice"]["invoiceNumber"].startswith("INV-")
    assert Decimal(str(b["amount"])) == Decimal("40.20")
    accounts = {li["classifications"]["chartOfAccountId"] for li in b["billLineItems"]}
    assert accounts == {business.gl["Office Expenses & Postage"], business.gl["Software"]}


def test_second_sync_writes_nothing(business):
    seed(business)
    business.sync()
    before = [m for m, *_ in business.bill.request_log if m != "GET"]
    second = business.sync()
    after = [m for m, *_ in business.bill.request_log if m != "GET"]
    assert second.exit_code == 0
    assert second.flows["bills"].created == second.flows["bills"].updated == 0
    assert second.flows["bills"].unchanged == 3
    # the session was reused: no login, no write
    assert before == after


def test_edited_freshbooks_bill_updates_bill(business):
    _, bills = seed(business, bills=1)
    business.sync()
    business.fb.update_bill(bills[0]["id"], bill_number="INV-0-REV")
    result = business.sync()
    assert result.flows["bills"].updated == 1
    (b,) = business.bill.bills.values()
    assert b["invoice"]["invoiceNumber"] == "INV-0-REV"
    assert len(business.bill.bills) == 1


def test_bill_already_in_bill_is_matched_not_duplicated(business):
    vendor, bills = seed(business, bills=2)
    existing_vendor = business.bill.add_vendor("Northwind Office Supply",
                                               email="ap@northwind.example")
    business.bill.add_bill(existing_vendor["id"], "INV-1", "2026-01-05", "2026-02-04",
                           lines=[{"amount": "40.20", "description": "by hand"}])
    result = business.sync()
    assert result.flows["vendors"].matched == 1
    assert result.flows["bills"].matched == 1 and result.flows["bills"].created == 1
    assert len(business.bill.vendors) == 1 and len(business.bill.bills) == 2


def test_unmapped_category_is_held_then_replayed_after_the_lookup_is_added(business):
    vendor, _ = seed(business, bills=1)
    travel = business.category("Travel", mapped=False)
    held_bill = business.fb.add_bill(vendor["vendorid"], bill_number="TRV-1", lines=[
        {"categoryid": travel, "description": "flights", "quantity": 1, "unit_cost": "99.99"}])
    result = business.sync()
    assert result.exit_code == 4
    (alarm,) = result.alarms
    assert alarm.kind == "held" and alarm.source_id == str(held_bill["id"])
    assert "Travel" in alarm.reason
    assert len(business.bill.bills) == 1
    # the next cron run does not raise the same alarm again
    assert business.sync().exit_code == 0
    business.gl["Travel"] = business.bill.add_chart_of_account("Travel")["id"]
    (replayed,) = business.replay([alarm.parked_id])
    assert replayed.exit_code == 0 and replayed.flows["bills"].created == 1
    assert len(business.bill.bills) == 2
    st = business.state()
    assert st.parked("freshbooks-bill") == []
    st.close()


def test_bill_payment_lands_once_on_the_freshbooks_bill_partial_too(business):
    _, bills = seed(business, bills=2)
    business.sync()
    st = business.state()
    target = {b["id"]: st.mapped("freshbooks-bill", "bills", str(b["id"])).target_id
              for b in bills}
    st.close()
    business.bill.pay_bill(target[bills[0]["id"]], "10.00")
    business.bill.pay_bill(target[bills[0]["id"]], "30.20")
    business.bill.pay_bill(target[bills[1]["id"]], "5.00", status="SCHEDULED")
    result = business.sync()
    assert result.flows["payments"].created == 2
    assert result.flows["payments"].skipped == 1  # scheduled is not settled
    paid = [p for p in business.fb.bill_payments.values() if p.get("vis_state", 0) == 0]
    assert sorted(Decimal(p["amount"]["amount"]) for p in paid) == [Decimal("10.00"),
                                                                   Decimal("30.20")]
    assert business.fb.bills[bills[0]["id"]]["status"] == "paid"
    again = business.sync(full=True)
    assert again.flows["payments"].created == 0
    assert len(business.fb.bill_payments) == 2


def test_dry_run_writes_nothing(business):
    seed(business)
    result = business.sync(dry_run=True)
    assert result.dry_run and result.flows["bills"].created == 3
    assert business.bill.bills == {} and business.bill.vendors == {}


def test_session_expiry_and_busy_org_mid_run_are_survived(business):
    seed(business, bills=4)
    business.sync(flow="vendors")
    business.bill.expire_sessions()
    business.bill.inject("BDC_1322", times=2)
    result = business.sync()
    assert result.exit_code == 0, result.aborted
    assert len(business.bill.bills) == 4


def test_hourly_quota_stops_the_run_with_exit_5_and_the_next_run_finishes(business):
    seed(business, bills=4)
    business.sync(flow="vendors")
    business.bill.inject("BDC_1144", times=1)
    stopped = business.sync()
    assert stopped.exit_code == 5 and "hour" in stopped.aborted
    result = business.sync()
    assert result.exit_code == 0
    assert len(business.bill.bills) == 4


def test_a_bill_deleted_in_freshbooks_is_archived_in_bill_when_deletes_is_void(business):
    business.options["deletes"] = "void"
    _, bills = seed(business, bills=2)
    business.sync()

    business.fb.update_bill(bills[0]["id"], vis_state=1)
    result = business.sync()

    assert result.exit_code == 0, result.aborted
    assert result.flows["bills"].voided == 1
    archived = [b for b in business.bill.bills.values() if b["archived"]]
    assert [b["invoice"]["invoiceNumber"] for b in archived] == ["INV-0"]
    assert business.sync().flows["bills"].voided == 0  # once


def test_a_deleted_freshbooks_bill_is_left_in_bill_by_default_and_audited(business):
    _, bills = seed(business, bills=1)
    business.sync()
    business.fb.update_bill(bills[0]["id"], vis_state=1)

    result = business.sync()

    assert result.exit_code == 0 and result.flows["bills"].skipped == 1
    assert not any(b["archived"] for b in business.bill.bills.values())
