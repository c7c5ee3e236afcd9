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
