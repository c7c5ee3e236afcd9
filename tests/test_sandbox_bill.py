"""The BILL emulator over real loopback sockets, checked against api/bill.md."""

from __future__ import annotations

import json
import threading
from decimal import Decimal

import pytest
import requests

from mlconnector.clock import FakeClock
from mlconnector.sandbox import BillSandbox, FreshBooksSandbox, Knobs
from mlconnector.sandbox.seed import seed_demo


@pytest.fixture
def clock():
    return FakeClock()


@pytest.fixture
def bill(clock):
    with BillSandbox(clock=clock) as sandbox:
        yield sandbox


def login(bill, **override):
    body = {"username": bill.username, "password": bill.password,
            "organizationId": bill.organization_id, "devKey": bill.dev_key, **override}
    return requests.post(f"{bill.base_url}/v3/login", json=body)


@pytest.fixture
def api(bill):
    """A logged-in session; `api.url(path)` is under /connect/v3."""
    s = requests.Session()
    s.headers.update({"devKey": bill.dev_key, "sessionId": login(bill).json()["sessionId"]})
    s.url = lambda path: f"{bill.base_url}/v3/{path}"
    yield s
    s.close()


def code_of(resp):
    (err,) = resp.json()
    return err["code"]


def lines(*amounts, account=None):
    return [{"amount": a, "description": f"line {n}",
             **({"classifications": {"chartOfAccountId": account}} if account else {})}
            for n, a in enumerate(amounts)]


def test_login_session_reuse_and_idle_expiry(bill, clock):
    got = login(bill)
    assert got.status_code == 200
    body = got.json()
    assert body["organizationId"] == bill.organization_id and body["trusted"] is False
    headers = {"devKey": bill.dev_key, "sessionId": body["sessionId"]}
    for _ in range(3):  # each call resets the idle timer
        clock.advance(34 * 60)
        assert requests.get(f"{bill.base_url}/v3/vendors", headers=headers).status_code == 200
    me = requests.get(f"{bill.base_url}/v3/login/session", headers=headers).json()
    assert me["organizationId"] == bill.organization_id and me["mfaStatus"] == "DISABLED"
    clock.advance(35 * 60)
    dead = requests.get(f"{bill.base_url}/v3/vendors", headers=headers)
    assert dead.status_code == 401
    (err,) = dead.json()
    assert err["code"] == "BDC_1109" and err["message"] == "Session is invalid. Please log in."
    assert err["category"] == "DOWNSTREAM" and "timestamp" in err
    assert bill.login_count == 1
    headers["sessionId"] = login(bill).json()["sessionId"]
    assert requests.post(f"{bill.base_url}/v3/logout", headers=headers).status_code == 200
    assert requests.get(f"{bill.base_url}/v3/vendors", headers=headers).status_code == 401
    bill_headers = {"devKey": bill.dev_key, "sessionId": login(bill).json()["sessionId"]}
    bill.expire_sessions()
    assert code_of(requests.get(f"{bill.base_url}/v3/bills", headers=bill_headers)) == "BDC_1109"


def test_bad_credentials_and_the_login_quota(bill, clock):
    wrong = login(bill, password="nope")
    assert wrong.status_code == 401 and code_of(wrong) == "BDC_1101"
    assert code_of(login(bill, devKey="nope")) == "BDC_1102"
    bill.login_limit = 3  # 200 per devKey per hour, shrunk for the test
    assert login(bill).status_code == 200  # the failed password counted as the first
    assert login(bill).status_code == 200
    capped = login(bill)
    assert capped.status_code == 429 and code_of(capped) == "BDC_1144"
    assert "login" in capped.json()[0]["message"]
    clock.advance(3600)
    assert login(bill).status_code == 200


def test_a_fourth_request_in_flight_gets_bdc_1322():
    with BillSandbox(Knobs(latency=0.05)) as bill:
        headers = {"devKey": bill.dev_key, "sessionId": login(bill).json()["sessionId"]}

        def four_at_once():
            gate, answers = threading.Barrier(4), []

            def call():
                gate.wait()
                answers.append(requests.get(f"{bill.base_url}/v3/vendors", headers=headers))
            threads = [threading.Thread(target=call) for _ in range(4)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            return answers
        for _ in range(3):  # a thread scheduled 50 ms late would miss the crowd: try again
            answers = four_at_once()
            if sorted(r.status_code for r in answers) == [200, 200, 200, 429]:
                break
        assert sorted(r.status_code for r in answers) == [200, 200, 200, 429]
        (busy,) = [r for r in answers if r.status_code == 429]
        assert code_of(busy) == "BDC_1322"
        assert bill.max_in_flight_seen == 3


def test_injected_codes_and_the_hourly_quota(bill, clock, api):
    bill.inject("BDC_1322", times=2)
    bill.inject("BDC_1144")
    answers = [api.get(api.url("vendors")) for _ in range(4)]
    assert [r.status_code for r in answers] == [429, 429, 400, 200]
    assert [code_of(r) for r in answers[:3]] == ["BDC_1322", "BDC_1322", "BDC_1144"]
    bill.hourly_limit = len(bill.request_log) + 1
    assert api.get(api.url("vendors")).status_code == 200
    spent = api.get(api.url("vendors"))
    assert spent.status_code == 400 and code_of(spent) == "BDC_1144"
    clock.advance(1800)  # still 12:30: everything fails until the top of the hour
    assert code_of(api.get(api.url("vendors"))) == "BDC_1144"
    clock.advance(1800)
    assert api.get(api.url("vendors")).status_code == 200


def test_lists_page_with_opaque_tokens(bill, api):
    for i in range(45):
        bill.add_vendor(f"Vendor {i:02d}")
    first = api.get(api.url("vendors")).json()
    assert len(first["results"]) == 20 and first["prevPage"] is None
    second = api.get(api.url("vendors"), params={"page": first["nextPage"]}).json()
    third = api.get(api.url("vendors"), params={"page": second["nextPage"]}).json()
    assert len(third["results"]) == 5 and third["nextPage"] is None
    names = [v["name"] for page in (first, second, third) for v in page["results"]]
    assert names == [f"Vendor {i:02d}" for i in range(45)]
    back = api.get(api.url("vendors"), params={"page": third["prevPage"]}).json()
    assert back["results"] == second["results"]
    big = api.get(api.url("vendors"), params={"max": 100}).json()
    assert len(big["results"]) == 45 and big["nextPage"] is None
    assert api.get(api.url("vendors"), params={"max": 101}).status_code == 400
    assert code_of(api.get(api.url("vendors"), params={"page": "garbage!"})) == "BDC_1002"
    desc = api.get(api.url("vendors"), params={"sort": "name:desc", "max": 1}).json()
    assert desc["results"][0]["name"] == "Vendor 44"


def test_filters_quoted_commas_dotted_fields_and_times(bill, clock, api):
    acme = bill.add_vendor("Acme, Inc.", email="ap@acme.example")
    tools = bill.add_vendor("Acme Tools")
    clock.advance(60)
    other = bill.add_vendor("Zeta LLC")

    def names(filters):
        got = api.get(api.url("vendors"), params={"filters": filters})
        assert got.status_code == 200, got.text
        return [v["name"] for v in got.json()["results"]]
    assert names('name:eq:"Acme, Inc."') == ["Acme, Inc."]
    assert names('name:sw:"Acme"') == ["Acme, Inc.", "Acme Tools"]
    assert names(f'id:in:"{acme["id"]},{other["id"]}"') == ["Acme, Inc.", "Zeta LLC"]
    assert names(f'createdTime:gt:"{tools["createdTime"]}"') == ["Zeta LLC"]
    assert names('updatedTime:gte:"2026-01-05T12:01:00.000Z",archived:eq:false') == ["Zeta LLC"]
    assert names('createdTime:lt:"2026-01-05"') == []
    bill.add_bill(acme["id"], "A-1", "2026-01-05", "2026-02-04", lines=[{"amount": "5"}])
    bill.add_bill(other["id"], "Z-1", "2026-01-05", "2026-02-04", lines=[{"amount": "6"}])
    by_vendor = api.get(api.url("bills"), params={
        "filters": f'vendorId:in:"{acme["id"]},{tools["id"]}"'}).json()["results"]
    assert [b["invoice"]["invoiceNumber"] for b in by_vendor] == ["A-1"]
    for bad in ('invoice.invoiceNumber:eq:"A-1"', 'vendorId:sw:"009"', "name:eq"):
        refused = api.get(api.url("bills"), params={"filters": bad})
        assert refused.status_code == 400 and code_of(refused) == "BDC_1002", bad


def test_bills_keep_exact_decimals_and_validate(bill, api):
    vendor = api.post(api.url("vendors"), json={"name": "Valley HVAC Supply",
                                                "address": {"country": "US"}})
    assert vendor.status_code == 201
    vendor = vendor.json()
    assert vendor["id"].startswith("009") and len(vendor["id"]) == 20
    assert vendor["address"]["countryName"] == "United States"
    assert vendor["createdTime"].endswith("Z") and len(vendor["createdTime"]) == 24
    account = bill.add_chart_of_account("Materials", "5000")["id"]
    body = {"vendorId": vendor["id"], "dueDate": "2026-02-15",
            "invoice": {"invoiceNumber": "VH-88123", "invoiceDate": "2026-01-16"},
            "billLineItems": [{"amount": 142.5, "description": "caps",
                               "classifications": {"chartOfAccountId": account}},
                              {"quantity": 3, "price": 0.1, "description": "freight"}]}
    made = api.post(api.url("bills"), json=body)
    assert made.status_code == 201
    assert '"amount": 142.5,' in made.text and '"amount": 142.80' in made.text
    got = json.loads(made.text, parse_float=Decimal)
    assert got["amount"] == Decimal("142.80") and got["dueAmount"] == Decimal("142.80")
    assert got["paymentStatus"] == "UNPAID" and got["approvalStatus"] == "UNASSIGNED"
    assert got["id"].startswith("00n") and got["billLineItems"][0]["id"].startswith("00t")
    assert got["vendorName"] == "Valley HVAC Supply"
    for broken, why in (
            ({**body, "vendorId": "00902NOSUCHVENDOR000"}, "vendorId"),
            ({**body, "invoice": {"invoiceDate": "2026-01-16"}}, "invoiceNumber"),
            ({**body, "billLineItems": lines(1, account="0ca02NOSUCHACCOUNT00")}, "chartOf"),
            ({**body, "billLineItems": [{"description": "no amount"}]}, "amount"),
            ({**body, "dueDate": "15/02/2026"}, "dueDate"),
            ({**body, "bogus": 1}, "bogus")):
        refused = api.post(api.url("bills"), json=broken)
        assert refused.status_code == 400 and why in refused.json()[0]["message"], why
    assert api.post(api.url("vendors"), json={"email": "x@y.example"}).status_code == 400
    missing = api.get(api.url("bills/00n02NOSUCHBILL00000"))
    assert missing.status_code == 404 and code_of(missing) == "BDC_1001"
    assert code_of(api.get(api.url("nothing-here"))) == "BDC_1121"
    assert len(bill.bills) == 1


def test_bulk_is_all_or_nothing(bill, api):
    vendor = bill.add_vendor("Northwind")["id"]
    good = {"vendorId": vendor, "dueDate": "2026-02-01",
            "invoice": {"invoiceNumber": "N-1", "invoiceDate": "2026-01-02"},
            "billLineItems": lines(10)}
    bad = {**good, "vendorId": "00902NOSUCHVENDOR000"}
    refused = api.post(api.url("bills/bulk"), json=[good, bad, good])
    assert refused.status_code == 400 and refused.json()[0]["message"].startswith("[1]")
    assert bill.bills == {}
    too_many = api.post(api.url("bills/bulk"), json=[good] * 101)
    assert too_many.status_code == 400 and bill.bills == {}
    made = api.post(api.url("bills/bulk"), json=[good, {**good, "invoice": {
        "invoiceNumber": "N-2", "invoiceDate": "2026-01-03"}}])
    assert made.status_code == 201 and len(made.json()) == 2 and len(bill.bills) == 2
    vendors = api.post(api.url("vendors/bulk"), json=[{"name": "A"}, {"name": "B"}])
    assert vendors.status_code == 201 and [v["name"] for v in vendors.json()["vendors"]] == [
        "A", "B"]
    assert api.post(api.url("vendors/bulk"), json=[{"name": "C"}, {}]).status_code == 400
    assert api.post(api.url("vendors/bulk"), json=[{"name": "x"}] * 21).status_code == 400
    assert len(bill.vendors) == 3


def test_put_replaces_lines_patch_merges_and_archive_restore(bill, api):
    vendor = bill.add_vendor("Northwind")
    made = bill.add_bill(vendor["id"], "N-1", "2026-01-02", "2026-02-01",
                         lines=[{"amount": "10.00", "description": "keep"},
                                {"amount": "5.00", "description": "drop"}])
    keep = made["billLineItems"][0]["id"]
    put = api.put(api.url(f"bills/{made['id']}"), json={
        "vendorId": vendor["id"], "dueDate": "2026-02-01",
        "invoice": {"invoiceNumber": "N-1", "invoiceDate": "2026-01-02"},
        "billLineItems": [{"id": keep, "amount": 12, "description": "kept"},
                          {"amount": 1.25, "description": "new"}]}).json()
    assert [li["description"] for li in put["billLineItems"]] == ["kept", "new"]
    assert put["billLineItems"][0]["id"] == keep and put["amount"] == 13.25
    assert put["updatedTime"] > made["updatedTime"]
    patched = api.patch(api.url(f"bills/{made['id']}"), json={"description": "memo"}).json()
    assert patched["description"] == "memo" and len(patched["billLineItems"]) == 2
    renamed = api.patch(api.url(f"vendors/{vendor['id']}"), json={"email": "ap@nw.example"})
    assert renamed.status_code == 200 and renamed.json()["name"] == "Northwind"
    archived = api.post(api.url(f"bills/{made['id']}/archive")).json()
    assert archived["archived"] is True
    active = api.get(api.url("bills"), params={"filters": "archived:eq:false"}).json()
    assert active["results"] == []
    assert api.post(api.url(f"bills/{made['id']}/restore")).json()["archived"] is False


def test_pay_bill_shows_in_the_bill_and_the_payments_list(bill, clock, api):
    vendor = bill.add_vendor("Northwind")
    made = bill.add_bill(vendor["id"], "N-1", "2026-01-02", "2026-02-01",
                         lines=[{"amount": "40.20", "description": "x"}])
    clock.advance(5)
    first = bill.pay_bill(made["id"], "10.00")
    assert first["id"].startswith("stp") and first["billPayments"][0]["id"].startswith("blp")
    got = api.get(api.url(f"bills/{made['id']}")).json()
    assert (got["paymentStatus"], got["paidAmount"], got["dueAmount"]) == ("PARTIAL", 10, 30.2)
    assert got["updatedTime"] > made["updatedTime"]
    bill.pay_bill(made["id"], "30.20")
    scheduled = bill.pay_bill(made["id"], "1.00", status="SCHEDULED")
    assert bill.bills[made["id"]]["paymentStatus"] == "PAID"
    payments = api.get(api.url("payments"), params={"sort": "updatedTime:asc"}).json()["results"]
    assert [p["status"] for p in payments] == ["PAID", "PAID", "SCHEDULED"]
    assert payments[0]["billPayments"] == [{"id": first["billPayments"][0]["id"],
                                            "billId": made["id"], "amount": 10.00,
                                            "vendorCredits": []}]
    assert payments[0]["vendorName"] == "Northwind" and payments[0]["processDate"]
    newer = api.get(api.url("payments"), params={
        "filters": f'updatedTime:gt:"{first["updatedTime"]}"'}).json()["results"]
    assert len(newer) == 2
    one = api.get(api.url(f"payments/{scheduled['id']}")).json()
    assert one["status"] == "SCHEDULED"
    bill.set_payment_status(first["id"], "VOID")
    assert bill.bills[made["id"]]["paymentStatus"] == "PARTIAL"
    accounts = api.get(api.url("classifications/chart-of-accounts")).json()["results"]
    assert accounts == []


def test_demo_seed_is_deterministic_and_overlaps_on_purpose():
    def seeded():
        with FreshBooksSandbox() as fb, BillSandbox() as bill:
            seed = seed_demo(fb, bill)
            bills = [(b["bill_number"], b["total_amount"]["amount"]) for b in fb.bills.values()]
            known = [(b["vendorName"], b["invoice"]["invoiceNumber"], b["paymentStatus"],
                      b["amount"]) for b in bill.bills.values()]
            return seed, fb, bill, bills, known
    seed, fb, bill, bills, known = seeded()
    assert (seed.vendors, seed.bills) == (24, 120) == (len(fb.vendors), len(fb.bills))
    assert set(seed.gl_lookup) | set(seed.unmapped) == {
        c["category"] for c in fb.categories.values()} and len(fb.categories) == 8
    travel = [b for b in fb.bills.values()
              if any(li["category"]["category"] in seed.unmapped for li in b["lines"])]
    assert 3 <= len(travel) <= 5
    assert all(1 <= len(b["lines"]) <= 4 for b in fb.bills.values())
    assert len(bill.vendors) == 3 and len(bill.bills) == 4 and len(bill.payments) == 2
    assert sorted(s for _, _, s, _ in known) == ["PAID", "PARTIAL", "UNPAID", "UNPAID"]
    by_number = {b["bill_number"]: b for b in fb.bills.values()}
    for _, number, _, amount in known:
        assert Decimal(by_number[number]["total_amount"]["amount"]) == amount
    fb_emails = {v["primary_contact_email"] for v in fb.vendors.values()}
    assert {v["email"] for v in bill.vendors.values()} <= fb_emails
    assert seeded()[3:] == (bills, known)
