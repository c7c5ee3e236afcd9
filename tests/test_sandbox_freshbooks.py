"""The FreshBooks emulator over real loopback sockets, checked against api/freshbooks.md."""

from __future__ import annotations

import re
from decimal import Decimal
from urllib.parse import parse_qs, urlsplit

import pytest
import requests

from mlconnector.clock import FakeClock
from mlconnector.sandbox import FreshBooksSandbox, Knobs


@pytest.fixture
def clock():
    return FakeClock()


@pytest.fixture
def fb(clock):
    with FreshBooksSandbox(clock=clock) as sandbox:
        yield sandbox


def refresh(fb, refresh_token, *, as_json=False, secret=None):
    body = {"grant_type": "refresh_token", "refresh_token": refresh_token,
            "client_id": fb.client_id, "client_secret": secret or fb.client_secret,
            "redirect_uri": "https://localhost:8765/callback"}
    url = f"{fb.base_url}/auth/oauth/token"
    return requests.post(url, json=body) if as_json else requests.post(url, data=body)


@pytest.fixture
def api(fb):
    """A session with a valid bearer token; `api.url(path)` is under the account."""
    s = requests.Session()
    token = refresh(fb, fb.issue_refresh_token()).json()["access_token"]
    s.headers["Authorization"] = f"Bearer {token}"
    s.url = lambda path: f"{fb.base_url}/accounting/account/{fb.account_id}/{path}"
    yield s
    s.close()


@pytest.fixture
def books(fb):
    """Two categories and a vendor."""
    office = fb.add_category("Office Expenses & Postage")["categoryid"]
    software = fb.add_category("Software")["categoryid"]
    vendor = fb.add_vendor("Northwind Office Supply",
                           primary_contact_email="ap@northwind.example")["vendorid"]
    return office, software, vendor


def errors_of(resp):
    return resp.json()["response"]["errors"]


def test_refresh_tokens_rotate_and_a_used_one_is_refused(fb, clock):
    first = fb.issue_refresh_token()
    got = refresh(fb, first)
    assert got.status_code == 200
    body = got.json()
    assert body["token_type"] == "Bearer" and body["expires_in"] == 43200
    assert body["refresh_token"] != first and body["created_at"] == int(clock.now().timestamp())
    again = refresh(fb, first)
    assert again.status_code == 400 and again.json()["error"] == "invalid_grant"
    # the new one works, posted as JSON this time (the Node SDK's way)
    assert refresh(fb, body["refresh_token"], as_json=True).status_code == 200
    wrong = refresh(fb, fb.issue_refresh_token(), secret="nope")
    assert wrong.status_code == 401 and wrong.json()["error"] == "invalid_client"
    assert fb.token_calls == 4


def test_access_tokens_expire_by_the_clock_and_on_demand(fb, clock, api, books):
    assert api.get(api.url("bills/bills")).status_code == 200
    clock.advance(43200)
    expired = api.get(api.url("bills/bills"))
    assert expired.status_code == 401 and errors_of(expired)[0]["errno"] == 1003
    api.headers["Authorization"] = "Bearer " + refresh(
        fb, fb.issue_refresh_token()).json()["access_token"]
    assert api.get(api.url("bills/bills")).status_code == 200
    fb.expire_access_tokens()
    assert api.get(api.url("bills/bills")).status_code == 401
    me = api.get(f"{fb.base_url}/auth/api/v1/users/me")
    assert me.status_code == 401 and me.json()["error"] == "unauthenticated"


def test_authorization_code_is_single_use_and_lives_five_minutes(fb, clock):
    redirect = "https://localhost:8765/callback"
    consent = requests.get(f"{fb.base_url}/oauth/authorize", allow_redirects=False, params={
        "client_id": fb.client_id, "response_type": "code", "redirect_uri": redirect,
        "state": "xyz"})
    assert consent.status_code == 302
    location = urlsplit(consent.headers["Location"])
    assert f"{location.scheme}://{location.netloc}{location.path}" == redirect
    query = parse_qs(location.query)
    assert query["state"] == ["xyz"]
    exchange = {"grant_type": "authorization_code", "code": query["code"][0],
                "client_id": fb.client_id, "client_secret": fb.client_secret,
                "redirect_uri": redirect}
    url = f"{fb.base_url}/auth/oauth/token"
    assert requests.post(url, data=exchange).status_code == 200
    assert requests.post(url, data=exchange).json()["error"] == "invalid_grant"
    late = requests.get(f"{fb.base_url}/oauth/authorize", allow_redirects=False, params={
        "client_id": fb.client_id, "response_type": "code", "redirect_uri": redirect})
    clock.advance(301)
    exchange["code"] = parse_qs(urlsplit(late.headers["Location"]).query)["code"][0]
    assert requests.post(url, data=exchange).status_code == 400


def test_users_me_names_the_account(fb, api):
    me = api.get(f"{fb.base_url}/auth/api/v1/users/me").json()["response"]
    (membership,) = me["business_memberships"]
    assert membership["role"] == "owner"
    assert membership["business"]["account_id"] == fb.account_id
    assert me["identity_id"] == me["id"]


def test_paging_envelope_per_page_cap_and_bad_values(fb, api, books):
    office, _, vendor = books
    for i in range(250):
        fb.add_bill(vendor, [{"categoryid": office, "description": "x", "quantity": 1,
                              "unit_cost": "1.00"}], bill_number=f"P-{i}")
    result = api.get(api.url("bills/bills"), params={"per_page": 500}).json()["response"][
        "result"]
    assert (result["page"], result["pages"], result["per_page"], result["total"]) == (
        1, 3, 100, 250)
    assert len(result["bills"]) == 100
    last = api.get(api.url("bills/bills"), params={"per_page": 100, "page": 3}).json()
    assert len(last["response"]["result"]["bills"]) == 50
    past = api.get(api.url("bills/bills"), params={"per_page": 100, "page": 4}).json()
    assert past["response"]["result"]["bills"] == []
    default = api.get(api.url("bills/bills"), params={"page": 0}).json()["response"]["result"]
    assert default["per_page"] == 15 and default["page"] == 1 and len(default["bills"]) == 15
    bad_page = api.get(api.url("bills/bills"), params={"page": "-1"})
    assert bad_page.status_code == 400 and errors_of(bad_page)[0]["errno"] == 1014
    bad_size = api.get(api.url("bills/bills"), params={"per_page": "many"})
    assert bad_size.status_code == 400 and errors_of(bad_size)[0]["errno"] == 1013


def test_bill_shape_follows_the_fact_sheet(fb, api, books):
    office, software, vendor = books
    made = fb.add_bill(vendor, [
        {"categoryid": office, "description": "Toner", "quantity": 3, "unit_cost": "100.00"},
        {"categoryid": software, "description": "Seats", "quantity": "2", "unit_cost": "10.05"},
    ], bill_number="INV-1", issue_date="2026-01-05", due_offset_days=30)
    got = api.get(api.url(f"bills/bills/{made['id']}")).json()["response"]["result"]["bill"]
    assert got["vendorid"] == vendor and got["due_date"] == "2026-02-04"
    assert got["amount"] == {"amount": "320.10", "code": "USD"}
    assert got["outstanding"]["amount"] == got["total_amount"]["amount"] == "320.10"
    assert got["status"] == "unpaid" and got["bill_payments"] == []
    line = got["lines"][0]
    assert line["quantity"] == "3" and line["amount"]["amount"] == "300.00"
    assert line["category"]["categoryid"] == office and "categoryid" not in line
    assert re.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d", got["updated_at"])
    assert got["created_at"] == "2026-01-05 12:00:00"  # UTC, the fake clock's noon
    category = api.get(api.url(f"expenses/categories/{office}")).json()
    assert category["response"]["result"]["category"]["created_at"] == "2026-01-05 07:00:00"
    with_vendor = api.get(api.url(f"bills/bills/{made['id']}"),
                          params={"include[]": "vendor"}).json()["response"]["result"]["bill"]
    assert with_vendor["vendor"]["vendor_name"] == "Northwind Office Supply"


def test_create_validates_and_accepts_quoted_ids(fb, api, books):
    office, _, vendor = books
    line = {"categoryid": str(office), "description": "Paper", "quantity": 1,
            "unit_cost": {"amount": "12.50", "code": "USD"}}
    ok = api.post(api.url("bills/bills"), json={"bill": {
        "vendorid": str(vendor), "issue_date": "2026-01-10", "lines": [line]}})
    assert ok.status_code == 200
    assert ok.json()["response"]["result"]["bill"]["total_amount"]["amount"] == "12.50"
    no_vendor = api.post(api.url("bills/bills"), json={"bill": {
        "vendorid": 999, "issue_date": "2026-01-10", "lines": [line]}})
    assert no_vendor.status_code == 422
    (err,) = errors_of(no_vendor)
    assert (err["errno"], err["field"], err["object"]) == (1004, "vendorid", "bill")
    no_lines = api.post(api.url("bills/bills"), json={"bill": {
        "vendorid": vendor, "issue_date": "2026-01-10"}})
    assert errors_of(no_lines)[0]["errno"] == 1001
    bad_cat = api.post(api.url("bills/bills"), json={"bill": {
        "vendorid": vendor, "issue_date": "2026-01-10", "lines": [{**line, "categoryid": 1}]}})
    assert bad_cat.status_code == 422 and "categoryid" in errors_of(bad_cat)[0]["field"]
    not_json = api.post(api.url("bills/bills"), data="{nope",
                        headers={"Content-Type": "application/json"})
    assert not_json.status_code == 400 and errors_of(not_json)[0]["errno"] == 1005
    assert len(fb.bills) == 1


def test_put_with_vis_state_discards_every_other_field(fb, api, books):
    office, software, vendor = books
    made = fb.add_bill(vendor, [{"categoryid": office, "description": "a", "quantity": 1,
                                 "unit_cost": "5.00"}], bill_number="KEEP")
    url = api.url(f"bills/bills/{made['id']}")
    deleted = api.put(url, json={"bill": {"vis_state": 1, "bill_number": "CHANGED"}}).json()
    bill = deleted["response"]["result"]["bill"]
    assert bill["vis_state"] == 1 and bill["bill_number"] == "KEEP"
    listed = api.get(api.url("bills/bills")).json()["response"]["result"]
    assert listed["total"] == 0
    gone = api.get(api.url("bills/bills"), params={"search[vis_state]": 1}).json()
    assert [b["id"] for b in gone["response"]["result"]["bills"]] == [made["id"]]
    api.put(url, json={"bill": {"vis_state": 0}})
    # without vis_state: a partial update, and lines replace the whole line set
    changed = api.put(url, json={"bill": {"lines": [
        {"categoryid": software, "description": "b", "quantity": 2,
         "unit_cost": {"amount": "7.25", "code": "USD"}}]}}).json()["response"]["result"]["bill"]
    assert changed["bill_number"] == "KEEP" and len(changed["lines"]) == 1
    assert changed["amount"]["amount"] == "14.50" and changed["updated_at"] > made["updated_at"]


def test_bill_payments_move_the_bill_and_a_deleted_one_is_reversed(fb, api, books):
    office, _, vendor = books
    made = fb.add_bill(vendor, [{"categoryid": office, "description": "a", "quantity": 1,
                                 "unit_cost": "40.20"}])
    post = {"billid": made["id"], "amount": {"amount": "10.00", "code": "USD"},
            "paid_date": "2026-01-20", "payment_type": "Check", "note": "BILL stp1"}
    first = api.post(api.url("bill_payments/bill_payments"), json={"bill_payment": post})
    assert first.status_code == 200
    payment = first.json()["response"]["result"]["bill_payment"]
    assert "updated_at" not in payment and payment["billid"] == made["id"]
    bill = fb.bills[made["id"]]
    assert bill["status"] == "partial" and bill["outstanding"]["amount"] == "30.20"
    assert [p["id"] for p in bill["bill_payments"]] == [payment["id"]]
    assert bill["updated_at"] > made["updated_at"]
    api.post(api.url("bill_payments/bill_payments"),
             json={"bill_payment": {**post, "amount": {"amount": "30.20", "code": "USD"}}})
    assert fb.bills[made["id"]]["status"] == "paid"
    api.put(api.url(f"bill_payments/bill_payments/{payment['id']}"),
            json={"bill_payment": {"vis_state": 1}})
    bill = fb.bills[made["id"]]
    assert bill["status"] == "partial" and Decimal(bill["paid"]["amount"]) == Decimal("30.20")
    bad = api.post(api.url("bill_payments/bill_payments"),
                   json={"bill_payment": {**post, "payment_type": "Wire"}})
    assert bad.status_code == 422


def test_bill_filters_and_unknown_search_params_are_ignored(fb, api, books):
    office, _, vendor = books
    other = fb.add_vendor("Contoso")["vendorid"]
    line = [{"categoryid": office, "description": "a", "quantity": 1, "unit_cost": "1.00"}]
    a = fb.add_bill(vendor, line)
    b = fb.add_bill(other, line)
    c = fb.add_bill(other, line)
    fb.add_bill_payment(c["id"], "1.00")

    def ids(**params):
        rows = api.get(api.url("bills/bills"), params=params).json()["response"]["result"]
        return sorted(r["id"] for r in rows["bills"])
    assert ids(**{"search[vendorid]": other}) == [b["id"], c["id"]]
    assert ids(**{"search[ids][]": [a["id"], c["id"]]}) == [a["id"], c["id"]]
    assert ids(**{"search[statuses][]": "paid"}) == [c["id"]]
    assert ids(**{"search[updated_min]": "2030-01-01"}) == [a["id"], b["id"], c["id"]]
    vendors = api.get(api.url("bill_vendors/bill_vendors")).json()["response"]["result"]
    assert vendors["total"] == 2 and vendors["bill_vendors"][0]["vendor_name"]


def test_errors_in_200_and_forced_failures_spare_the_token_endpoint(fb, api, books):
    fb.errors_in_200_next(1)
    odd = api.get(api.url("bills/bills"))
    assert odd.status_code == 200 and errors_of(odd)[0]["errno"] == 1005
    fb.fail_next(2)
    assert refresh(fb, fb.issue_refresh_token()).status_code == 200
    assert [api.get(api.url("bills/bills")).status_code for _ in range(3)] == [503, 503, 200]
    fb.fail_next(1, status=409, body={"response": {"errors": [{"errno": 409}]}})
    assert api.get(api.url("bills/bills")).status_code == 409


def test_wrong_account_unknown_id_and_knobs(fb, api, books):
    wrong = api.get(f"{fb.base_url}/accounting/account/NOPE/bills/bills")
    assert wrong.status_code == 403 and errors_of(wrong)[0]["errno"] == 1003
    missing = api.get(api.url("bills/bills/424242"))
    assert missing.status_code == 404 and errors_of(missing)[0]["errno"] == 1012
    fb.knobs.rate_429 = 1.0
    limited = api.get(api.url("bills/bills"))
    assert limited.status_code == 429 and limited.headers["Retry-After"] == "1"
    fb.knobs.rate_429, fb.knobs.error_rate = 0.0, 1.0
    assert api.get(api.url("bills/bills")).status_code == 503
    fb.knobs.error_rate = 0.0
    assert ("GET", f"/accounting/account/{fb.account_id}/bills/bills", {}) in fb.request_log


def test_knobs_are_seeded():
    def statuses():
        with FreshBooksSandbox(Knobs(error_rate=0.3, seed=3)) as sandbox:
            return [requests.get(f"{sandbox.base_url}/auth/api/v1/users/me").status_code
                    for _ in range(20)]
    first = statuses()
    assert first == statuses() and 503 in first and 401 in first


# -- receivables: clients, invoices (with lines), items, payments ---------------------------

def result_of(resp):
    assert resp.status_code == 200, resp.text
    return resp.json()["response"]["result"]


def later(fb, api, clock, days):
    """Advance the fake clock by whole days; the access token (12 h) is renewed."""
    clock.advance(days * 86400)
    api.headers["Authorization"] = "Bearer " + refresh(
        fb, fb.issue_refresh_token()).json()["access_token"]


@pytest.fixture
def acme(fb):
    return fb.add_client("billing@acme.example", organization="Acme Dental LLC", fname="Priya",
                         lname="Raman", p_street="400 Main St", p_city="Boston",
                         bus_phone="617-555-0100")


def test_clients_create_update_delete_and_validation(fb, api, clock, acme):
    url = api.url("users/clients")
    made = result_of(api.post(url, json={"client": {"email": "solo@example.com"}}))["client"]
    assert made["id"] == made["userid"] and made["organization"] == "solo@example.com"
    assert made["accounting_systemid"] == fb.account_id and made["vis_state"] == 0
    # signup_date is UTC, updated US/Eastern (the fake clock: 2026-01-05 12:00 UTC)
    assert (made["signup_date"], made["updated"]) == ("2026-01-05 12:00:00", "2026-01-05 07:00:00")
    got = result_of(api.get(f"{url}/{acme['id']}"))["client"]
    assert got["organization"] == "Acme Dental LLC" and got["p_city"] == "Boston"
    missing = api.get(f"{url}/999")
    assert missing.status_code == 404
    assert (errors_of(missing)[0]["errno"], errors_of(missing)[0]["field"]) == (1012, "userid")
    # PUT is partial and `updated` strictly increases even within the same second
    changed = result_of(api.put(f"{url}/{acme['id']}", json={"client": {"note": "VIP"}}))
    assert changed["client"]["note"] == "VIP" and changed["client"]["fname"] == "Priya"
    assert changed["client"]["updated"] > acme["updated"]
    # the vis_state phase wins and discards the rest
    deleted = result_of(api.put(f"{url}/{made['id']}", json={"client": {
        "vis_state": 1, "fname": "Ignored"}}))["client"]
    assert deleted["vis_state"] == 1 and deleted["fname"] == ""
    assert [c["id"] for c in result_of(api.get(url))["clients"]] == [acme["id"]]
    gone = result_of(api.get(url, params={"search[vis_state]": 1}))["clients"]
    assert [c["id"] for c in gone] == [made["id"]]
    # validation
    empty = api.post(url, json={"client": {"note": "nobody"}})
    assert empty.status_code == 422
    (err,) = errors_of(empty)
    assert (err["errno"], err["field"], err["object"]) == (1001, "email", "client")
    bad_email = api.post(url, json={"client": {"email": "nope"}})
    assert errors_of(bad_email)[0]["errno"] == 1004
    blanked = api.put(f"{url}/{made['id']}", json={"client": {"email": "", "organization": ""}})
    assert blanked.status_code == 422 and fb.clients[made["id"]]["email"] == "solo@example.com"
    assert api.post(url, json={"nope": {}}).status_code == 400


def test_client_search_filters(fb, api, clock, acme):
    other = fb.add_client("ap@contoso.example", organization="Contoso", fname="Lee",
                          lname="Wong", s_city="Denver", mob_phone="303-555-0199",
                          note="pays late")
    later(fb, api, clock, 1)  # a day later (US/Eastern 2026-01-06)
    fb.add_client("third@example.com")
    late = fb.add_client("fourth@example.com")

    def ids(**params):
        return [c["id"] for c in result_of(api.get(api.url("users/clients"),
                                                   params=params))["clients"]]
    assert ids(**{"search[email]": "AP@contoso.example"}) == [other["id"]]
    assert ids(**{"search[organization_like]": "dental"}) == [acme["id"]]
    assert ids(**{"search[fname_like]": "le"}) == [other["id"]]
    assert ids(**{"search[lname_like]": "RAM"}) == [acme["id"]]
    assert ids(**{"search[address_like]": "denv"}) == [other["id"]]
    assert ids(**{"search[phone_like]": "555-01"}) == [acme["id"], other["id"]]
    assert ids(**{"search[note_like]": "late"}) == [other["id"]]
    assert ids(**{"search[updated_min]": "2026-01-06"})[-1] == late["id"]
    assert len(ids(**{"search[updated_min]": "2026-01-06"})) == 2
    assert ids(**{"search[updated_max]": "2026-01-06"}) == [acme["id"], other["id"]]
    assert ids(**{"search[updated_min]": "2026-01-05", "search[updated_max]": "2026-01-05"}) == []
    assert ids(**{"search[unknown_thing]": "x"}) == ids()
    bad = api.get(api.url("users/clients"), params={"search[updated_min]": "yesterday"})
    assert bad.status_code == 400
    assert (errors_of(bad)[0]["errno"], errors_of(bad)[0]["field"]) == (
        1004, "search[updated_min]")


def test_invoice_lines_totals_and_include(fb, api, acme):
    url = api.url("invoices/invoices")
    body = {"invoice": {"customerid": str(acme["id"]), "create_date": "2024-03-04",
                        "due_offset_days": 15, "lines": [
                            {"name": "Cleaning service", "description": "March", "qty": 2,
                             "unit_cost": {"amount": "500.00", "code": "USD"}},
                            {"name": "Supplies", "qty": "1.5",
                             "unit_cost": {"amount": "148.00", "code": "USD"}}]}}
    made = result_of(api.post(url, json=body))["invoice"]
    assert "lines" not in made
    assert made["id"] == made["invoiceid"] and made["invoice_number"] == "0000001"
    assert made["customerid"] == acme["id"] and made["accountid"] == fb.account_id
    assert made["amount"] == {"amount": "1222.00", "code": "USD"}
    assert made["outstanding"]["amount"] == "1222.00" and made["paid"]["amount"] == "0.00"
    assert made["due_date"] == "2024-03-19"
    assert (made["status"], made["v3_status"], made["payment_status"]) == (1, "draft", "unpaid")
    assert (made["organization"], made["email"], made["city"]) == (
        "Acme Dental LLC", "billing@acme.example", "Boston")
    plain = result_of(api.get(f"{url}/{made['id']}"))["invoice"]
    assert "lines" not in plain
    full = result_of(api.get(f"{url}/{made['id']}", params={"include[]": "lines"}))["invoice"]
    first, second = full["lines"]
    assert (first["lineid"], first["invoiceid"], first["qty"]) == (1, made["id"], "2")
    assert first["amount"] == {"amount": "1000.00", "code": "USD"}
    assert second["qty"] == "1.5" and second["amount"]["amount"] == "222.00"
    assert first["taxName1"] == "" and first["taxAmount1"] == "0"
    listed = result_of(api.get(url, params={"include[]": "lines"}))["invoices"]
    assert len(listed[0]["lines"]) == 2
    assert "lines" not in result_of(api.get(url))["invoices"][0]
    # an update with lines replaces the whole set (taxes are percentages of the line)
    changed = result_of(api.put(f"{url}/{made['id']}", params={"include[]": "lines"}, json={
        "invoice": {"po_number": "PO-9", "lines": [
            {"name": "Audit", "qty": 3, "unit_cost": {"amount": "100.00", "code": "USD"},
             "taxName1": "HST", "taxAmount1": "13"}]}}))["invoice"]
    assert changed["po_number"] == "PO-9" and len(changed["lines"]) == 1
    assert changed["amount"]["amount"] == "339.00" and changed["updated"] > made["updated"]
    assert changed["lines"][0]["taxAmount1"] == "13"
    discounted = result_of(api.put(f"{url}/{made['id']}", json={"invoice": {
        "discount_value": "10"}}))["invoice"]
    assert discounted["discount_total"]["amount"] == "30.00"
    assert discounted["amount"]["amount"] == "309.00"


def test_invoice_actions_and_delete(fb, api, acme):
    inv = fb.add_invoice(acme["id"], [{"name": "A", "qty": 1, "unit_cost": "10.00"}])
    url = api.url(f"invoices/invoices/{inv['id']}")
    sent = result_of(api.put(url, json={"invoice": {"action_mark_as_sent": True,
                                                     "notes": "discarded"}}))["invoice"]
    assert (sent["status"], sent["v3_status"], sent["display_status"]) == (2, "sent", "sent")
    assert sent["notes"] == ""
    other = fb.add_invoice(acme["id"], [{"name": "B", "qty": 1, "unit_cost": "5.00"}])
    emailed = result_of(api.put(api.url(f"invoices/invoices/{other['id']}"), json={
        "invoice": {"action_email": True, "email_recipients": ["a@b.example"]}}))["invoice"]
    assert emailed["v3_status"] == "sent" and fb.invoice_emails == [(other["id"], ["a@b.example"])]
    deleted = result_of(api.put(url, json={"invoice": {"vis_state": 1, "po_number": "X"}}))
    assert deleted["invoice"]["vis_state"] == 1 and deleted["invoice"]["po_number"] is None
    listed = result_of(api.get(api.url("invoices/invoices")))
    assert listed["total"] == 1 and listed["invoices"][0]["id"] == other["id"]
    gone = result_of(api.get(api.url("invoices/invoices"), params={"search[vis_state]": 1}))
    assert [i["id"] for i in gone["invoices"]] == [inv["id"]]
    missing = api.get(api.url("invoices/invoices/1"))
    assert missing.status_code == 404 and errors_of(missing)[0]["field"] == "invoiceid"


def test_invoice_validation(fb, api, acme):
    url = api.url("invoices/invoices")
    line = {"name": "A", "qty": 1, "unit_cost": {"amount": "1.00", "code": "USD"}}

    def refused(payload, errno, field):
        resp = api.post(url, json={"invoice": payload})
        assert resp.status_code == 422, resp.text
        (err,) = errors_of(resp)
        assert (err["errno"], err["field"], err["object"]) == (errno, field, "invoice")
    refused({"create_date": "2026-03-02", "lines": [line]}, 1001, "customerid")
    refused({"customerid": 4242, "lines": [line]}, 1004, "customerid")
    refused({"customerid": acme["id"], "create_date": "03/02/2026"}, 1004, "create_date")
    refused({"customerid": acme["id"], "lines": [{**line, "qty": "two"}]}, 1004, "lines[0].qty")
    refused({"customerid": acme["id"], "lines": [{**line, "unit_cost": "1.00"}]}, 1004,
            "lines[0].unit_cost")
    refused({"customerid": acme["id"], "due_offset_days": -1}, 1004, "due_offset_days")
    gone = fb.add_client("gone@example.com")
    api.put(api.url(f"users/clients/{gone['id']}"), json={"client": {"vis_state": 1}})
    refused({"customerid": gone["id"]}, 1011, "customerid")
    assert fb.invoices == {}
    # no lines is a valid (empty) invoice
    empty = result_of(api.post(url, json={"invoice": {"customerid": acme["id"]}}))["invoice"]
    assert empty["amount"]["amount"] == "0.00" and empty["create_date"] == "2026-01-05"


def test_invoice_paging_filters_and_sort(fb, api, clock, acme):
    other = fb.add_client("ap@contoso.example", organization="Contoso")
    for n in range(30):
        fb.add_invoice(acme["id"] if n % 3 else other["id"],
                       [{"name": "x", "qty": 1, "unit_cost": "1.00"}],
                       create_date=f"2026-03-{n + 1:02d}")
    later(fb, api, clock, 2)
    late = fb.add_invoice(other["id"], [{"name": "y", "qty": 1, "unit_cost": "2.00"}],
                          invoice_number="SS007", create_date="2026-02-01")
    url = api.url("invoices/invoices")
    page = result_of(api.get(url, params={"per_page": 10, "page": 4}))
    assert (page["page"], page["pages"], page["per_page"], page["total"]) == (4, 4, 10, 31)
    assert [i["id"] for i in page["invoices"]] == [late["id"]]
    assert result_of(api.get(url))["per_page"] == 15

    def numbers(**params):
        rows = result_of(api.get(url, params={"per_page": 100, **params}))["invoices"]
        return [i["invoice_number"] for i in rows]
    assert len(numbers(**{"search[customerid]": other["id"]})) == 11
    assert len(numbers(**{"search[customerids][]": [other["id"], acme["id"]]})) == 31
    assert numbers(**{"search[invoice_number]": "SS007"}) == ["SS007"]
    assert numbers(**{"search[invoice_number]": "0000002"}) == ["0000002"]
    assert numbers(**{"search[date_min]": "2026-03-29"}) == ["0000029", "0000030"]
    assert numbers(**{"search[date_max]": "2026-03-02"}) == ["0000001", "SS007"]
    assert numbers(**{"search[updated_min]": "2026-01-07"}) == ["SS007"]
    assert len(numbers(**{"search[updated_max]": "2026-01-07"})) == 30
    assert numbers(sort="invoice_date_asc")[0] == "SS007"
    assert numbers(sort="invoice_date_desc")[0] == "0000030"
    bad = api.get(url, params={"search[customerid]": "acme"})
    assert bad.status_code == 400 and errors_of(bad)[0]["errno"] == 1004


def test_payments_move_the_invoice(fb, api, acme):
    inv = fb.add_invoice(acme["id"], [{"name": "A", "qty": 2, "unit_cost": "50.00"}],
                         action_mark_as_sent=True)
    assert inv["v3_status"] == "sent"
    url = api.url("payments/payments")
    post = {"invoiceid": inv["id"], "amount": {"amount": "40.00"}, "date": "2026-03-05",
            "type": "Check", "note": "first"}
    first = result_of(api.post(url, json={"payment": post}))["payment"]
    assert first["id"] == first["logid"] and first["clientid"] == acme["id"]
    assert first["amount"] == {"amount": "40.00", "code": "USD"}
    assert first["overpaymentid"] is None and first["updated"] == "2026-01-05 07:00:00"
    invoice = result_of(api.get(api.url(f"invoices/invoices/{inv['id']}")))["invoice"]
    assert (invoice["status"], invoice["v3_status"], invoice["payment_status"]) == (
        8, "partial", "partial")
    assert invoice["outstanding"]["amount"] == "60.00" and invoice["paid"]["amount"] == "40.00"
    assert invoice["updated"] > inv["updated"] and invoice["date_paid"] is None
    second = result_of(api.post(url, json={"payment": {**post, "amount": {"amount": "60.00"},
                                                        "date": "2026-03-09"}}))["payment"]
    invoice = fb.invoices[inv["id"]]
    assert (invoice["status"], invoice["payment_status"], invoice["date_paid"]) == (
        4, "paid", "2026-03-09")
    assert invoice["outstanding"]["amount"] == "0.00"
    # editing a payment: partial; the invoice follows; it cannot move to another invoice
    edited = result_of(api.put(f"{url}/{second['id']}", json={"payment": {
        "amount": {"amount": "10.00", "code": "USD"}, "invoiceid": inv["id"]}}))["payment"]
    assert edited["amount"]["amount"] == "10.00" and edited["note"] == "first"
    assert fb.invoices[inv["id"]]["outstanding"]["amount"] == "50.00"
    moved = api.put(f"{url}/{second['id']}", json={"payment": {"invoiceid": 1}})
    assert moved.status_code == 422 and errors_of(moved)[0]["field"] == "invoiceid"
    # a deleted payment is reversed and leaves the default list
    api.put(f"{url}/{first['id']}", json={"payment": {"vis_state": 1}})
    invoice = fb.invoices[inv["id"]]
    assert invoice["paid"]["amount"] == "10.00" and invoice["v3_status"] == "partial"
    assert [p["id"] for p in result_of(api.get(url))["payments"]] == [second["id"]]
    api.put(f"{url}/{second['id']}", json={"payment": {"vis_state": 1}})
    assert fb.invoices[inv["id"]]["v3_status"] == "sent"  # back to sent, not draft
    assert result_of(api.get(url, params={"search[vis_state]": 1}))["total"] == 2


def test_overpayment_credit_and_client_balances(fb, api, clock, acme):
    draft = fb.add_invoice(acme["id"], [{"name": "D", "qty": 1, "unit_cost": "7.00"}])
    sent = fb.add_invoice(acme["id"], [{"name": "S", "qty": 1, "unit_cost": "100.00"}],
                          create_date="2026-01-01", due_offset_days=10,
                          action_mark_as_sent=True)
    other = fb.add_client("nobody@example.com")
    clients = api.url("users/clients")
    include = {"include[]": ["outstanding_balance", "draft_balance", "overdue_balance",
                             "credit_balance"]}
    got = result_of(api.get(f"{clients}/{acme['id']}", params=include))["client"]
    assert got["outstanding_balance"] == [{"amount": {"amount": "100.00", "code": "USD"}}]
    assert got["draft_balance"] == [{"amount": {"amount": "7.00", "code": "USD"}}]
    assert got["overdue_balance"] == [] and got["credit_balance"] == []
    assert "outstanding_balance" not in result_of(api.get(f"{clients}/{acme['id']}"))["client"]

    def ids(**params):
        return [c["id"] for c in result_of(api.get(clients, params=params))["clients"]]
    assert ids(**{"search[has_draft]": "true"}) == [acme["id"]]
    assert ids(**{"search[has_outstanding]": "false"}) == [other["id"]]
    assert ids(**{"search[has_overdue]": "true"}) == []
    later(fb, api, clock, 10)  # 2026-01-15: past the 2026-01-11 due date
    assert ids(**{"search[has_overdue]": "1"}) == [acme["id"]]
    paid = fb.add_payment(sent["id"], "130.00")
    assert paid["overpaymentid"] is not None and paid["amount"]["amount"] == "130.00"
    invoice = fb.invoices[sent["id"]]
    assert invoice["paid"]["amount"] == "100.00" and invoice["outstanding"]["amount"] == "0.00"
    got = result_of(api.get(f"{clients}/{acme['id']}", params=include))["client"]
    assert got["credit_balance"] == [{"amount": {"amount": "30.00", "code": "USD"}}]
    assert got["outstanding_balance"] == [] and got["overdue_balance"] == []
    assert ids(**{"search[has_credit]": "true"}) == [acme["id"]]
    assert draft["v3_status"] == "draft"
    bad = api.get(clients, params={"search[has_credit]": "maybe"})
    assert bad.status_code == 400 and errors_of(bad)[0]["field"] == "search[has_credit]"


def test_payment_validation_filters_and_includes(fb, api, clock, acme):
    other = fb.add_client("ap@contoso.example", organization="Contoso")
    a = fb.add_invoice(acme["id"], [{"name": "A", "qty": 1, "unit_cost": "500.00"}])
    b = fb.add_invoice(other["id"], [{"name": "B", "qty": 1, "unit_cost": "500.00"}])
    p1 = fb.add_payment(a["id"], "100.00", date="2026-03-01", note="wire ref 7")
    p2 = fb.add_payment(a["id"], "50.00", date="2026-03-05", type="Cash")
    later(fb, api, clock, 1)
    p3 = fb.add_payment(b["id"], "250.00", date="2026-03-10", type="ACH")
    url = api.url("payments/payments")

    def ids(**params):
        return [p["id"] for p in result_of(api.get(url, params=params))["payments"]]
    assert ids(**{"search[invoiceid]": a["id"]}) == [p1["id"], p2["id"]]
    assert ids(**{"search[clientid]": other["id"]}) == [p3["id"]]
    assert ids(**{"search[customerid]": acme["id"]}) == [p1["id"], p2["id"]]
    assert ids(**{"search[logids][]": [p1["id"], p3["id"]]}) == [p1["id"], p3["id"]]
    assert ids(**{"search[logid]": p2["id"]}) == [p2["id"]]
    assert ids(**{"search[date_min]": "2026-03-05"}) == [p2["id"], p3["id"]]
    assert ids(**{"search[date_max]": "2026-03-05"}) == [p1["id"]]
    assert ids(**{"search[amount_min]": "100", "search[amount_max]": "250.00"}) == [p1["id"]]
    assert ids(**{"search[type]": "Cash"}) == [p2["id"]]
    assert ids(**{"search[notes]": "REF"}) == [p1["id"]]
    assert ids(**{"search[updated_min]": "2026-01-06"}) == [p3["id"]]
    assert ids(**{"search[client_name]": "contoso"}) == [p3["id"]]
    assert ids(**{"search[currency]": "USD"}) == [p1["id"], p2["id"], p3["id"]]
    embedded = result_of(api.get(f"{url}/{p3['id']}", params={
        "include[]": ["client", "invoice"]}))["payment"]
    assert embedded["client"]["organization"] == "Contoso"
    assert embedded["invoice"]["id"] == b["id"] and "lines" not in embedded["invoice"]

    def refused(payload, errno, field):
        resp = api.post(url, json={"payment": payload})
        assert resp.status_code == 422, resp.text
        (err,) = errors_of(resp)
        assert (err["errno"], err["field"], err["object"]) == (errno, field, "payment")
    ok = {"invoiceid": a["id"], "amount": {"amount": "1.00", "code": "USD"}}
    refused({"amount": ok["amount"]}, 1001, "invoiceid")
    refused({**ok, "invoiceid": 1}, 1004, "invoiceid")
    refused({"invoiceid": a["id"]}, 1001, "amount")
    refused({**ok, "amount": "1.00"}, 1004, "amount")
    refused({**ok, "amount": {"amount": "-5"}}, 1004, "amount")
    refused({**ok, "type": "Wire"}, 1004, "type")
    refused({**ok, "date": "soon"}, 1004, "date")
    fb.update_invoice(b["id"], vis_state=1)
    refused({**ok, "invoiceid": b["id"]}, 1011, "invoiceid")
    assert len(fb.payments) == 3


def test_items_create_update_delete_and_filters(fb, api, clock):
    url = api.url("items/items")
    made = result_of(api.post(url, json={"item": {
        "name": "Cleaning", "description": "Deep clean", "sku": "CL-1", "qty": 5,
        "unit_cost": {"amount": "80", "code": "USD"}, "tax1": 3}}))["item"]
    assert made["id"] == made["itemid"] and made["qty"] == "5" and made["tax1"] == 3
    assert made["unit_cost"] == {"amount": "80.00", "code": "USD"} and made["inventory"] is None
    assert made["accounting_systemid"] == fb.account_id
    cheap = fb.add_item("Gloves", sku="GL-2", unit_cost="4.50", inventory="100")
    later(fb, api, clock, 1)
    other = fb.add_item("Mop", unit_cost="25.00", description="A mop")

    def ids(**params):
        return [i["id"] for i in result_of(api.get(url, params=params))["items"]]
    assert ids(**{"search[sku]": "GL-2"}) == [cheap["id"]]
    assert ids(**{"search[itemid]": made["id"]}) == [made["id"]]
    assert ids(**{"search[itemids][]": [made["id"], other["id"]]}) == [made["id"], other["id"]]
    assert ids(**{"search[description]": "clean"}) == [made["id"]]
    assert ids(**{"search[unit_cost_min]": "25", "search[unit_cost_max]": "80"}) == [other["id"]]
    assert ids(**{"search[inventory_min]": "1"}) == [cheap["id"]]
    assert ids(**{"search[qty_min]": "1"}) == [made["id"]]
    assert ids(**{"search[updated_min]": "2026-01-06"}) == [other["id"]]
    changed = result_of(api.put(f"{url}/{made['id']}", json={"item": {
        "unit_cost": {"amount": "90.00", "code": "USD"}}}))["item"]
    assert changed["unit_cost"]["amount"] == "90.00" and changed["name"] == "Cleaning"
    assert changed["updated"] > made["updated"]
    api.put(f"{url}/{made['id']}", json={"item": {"vis_state": 1, "name": "ignored"}})
    assert fb.items[made["id"]]["name"] == "Cleaning"
    assert ids() == [cheap["id"], other["id"]]
    assert ids(**{"search[vis_state]": 1}) == [made["id"]]
    nameless = api.post(url, json={"item": {"unit_cost": {"amount": "1.00", "code": "USD"}}})
    assert nameless.status_code == 422 and errors_of(nameless)[0]["errno"] == 1001
    bad_cost = api.post(url, json={"item": {"name": "X", "unit_cost": "1.00"}})
    assert bad_cost.status_code == 422 and errors_of(bad_cost)[0]["field"] == "unit_cost"
    assert api.get(f"{url}/1").json()["response"]["errors"][0]["field"] == "itemid"


def test_receivable_updated_is_us_eastern_and_strictly_increases(fb, clock, acme):
    clock.advance(180 * 86400)  # 2026-07-04 12:00 UTC: daylight time, UTC-4
    inv = fb.add_invoice(acme["id"], [{"name": "A", "qty": 1, "unit_cost": "1.00"}])
    assert inv["created_at"] == inv["updated"] == "2026-07-04 08:00:00"
    assert inv["lines"][0]["date"] == "2026-07-04 08:00:00"
    stamps = [fb.update_invoice(inv["id"], notes=str(n))["updated"] for n in range(3)]
    assert stamps == ["2026-07-04 08:00:01", "2026-07-04 08:00:02", "2026-07-04 08:00:03"]
    relined = fb.update_invoice(inv["id"], lines=[{"name": "B", "qty": 4, "unit_cost": "2.5"}])
    assert relined["amount"]["amount"] == "10.00" and relined["lines"][0]["name"] == "B"
    client = fb.add_client(None, fname="Ana", lname="Lopez")
    assert client["signup_date"] == "2026-07-04 12:00:00" and client["organization"] == ""
    with pytest.raises(ValueError):
        fb.add_client("")
    with pytest.raises(ValueError):
        fb.add_invoice(999, [])
