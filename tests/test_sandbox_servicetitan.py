"""The ServiceTitan emulator over real loopback sockets, checked against api/servicetitan.md:
auth (§1-3) and the read-only data endpoints (§3-10)."""

from __future__ import annotations

import base64
import json
import re

import pytest
import requests

from mlconnector.clock import FakeClock
from mlconnector.sandbox.server import Knobs
from mlconnector.sandbox.servicetitan import ServiceTitanSandbox

PROBLEM_KEYS = {"type", "title", "status", "traceId", "errors", "data"}


@pytest.fixture
def clock():
    return FakeClock()


@pytest.fixture
def st(clock):
    with ServiceTitanSandbox(clock=clock) as sandbox:
        yield sandbox


def get_token(st, **override):
    form = {"grant_type": "client_credentials", "client_id": st.client_id,
            "client_secret": st.client_secret} | override
    return requests.post(f"{st.auth_url}/connect/token", data=form)


def units_url(st, tenant=None):
    return f"{st.base_url}/settings/v2/tenant/{tenant or st.tenant_id}/business-units"


@pytest.fixture
def api(st):
    s = requests.Session()
    s.headers["Authorization"] = "Bearer " + get_token(st).json()["access_token"]
    s.headers["ST-App-Key"] = st.app_key
    yield s
    s.close()


def test_token_success_shape(st, clock):
    got = get_token(st)
    assert got.status_code == 200
    body = got.json()
    assert set(body) == {"access_token", "expires_in", "token_type", "scope"}
    assert body["expires_in"] == 900 and body["token_type"] == "Bearer"
    assert isinstance(body["scope"], str) and body["scope"]
    head, claims, _sig = body["access_token"].split(".")
    pad = lambda s: s + "=" * (-len(s) % 4)  # noqa: E731
    assert json.loads(base64.urlsafe_b64decode(pad(head)))["typ"] == "at+jwt"
    assert json.loads(base64.urlsafe_b64decode(pad(claims)))["exp"] == \
        int(clock.now().timestamp()) + 900
    # a second call mints a different token; both stay usable
    assert get_token(st).json()["access_token"] != body["access_token"]
    assert st.token_calls == 2


def test_token_failures(st):
    for override in ({"client_secret": "nope"}, {"client_id": "nope"},
                     {"client_secret": ""}):
        bad = get_token(st, **override)
        assert bad.status_code == 400 and bad.json() == {"error": "invalid_client"}
    grant = get_token(st, grant_type="authorization_code")
    assert grant.status_code == 400 and grant.json() == {"error": "unsupported_grant_type"}
    assert st.token_calls == 4


def test_token_by_basic_auth(st):
    got = requests.post(f"{st.auth_url}/connect/token", data={"grant_type": "client_credentials"},
                        auth=(st.client_id, st.client_secret))
    assert got.status_code == 200 and got.json()["access_token"]


def test_who_am_i_names_the_tenant(st, api):
    got = api.get(units_url(st), params={"pageSize": 1})
    assert got.status_code == 200
    body = got.json()
    assert body["page"] == 1 and body["pageSize"] == 1 and body["hasMore"] is False
    assert body["totalCount"] is None
    (unit,) = body["data"]
    assert unit["name"] == "Sandbox Plumbing Co" and unit["active"] is True
    assert unit["tenant"] == {"id": 1234567, "name": "Sandbox Plumbing Co", "accountCode": None,
                              "franchiseId": None, "conceptCode": None,
                              "modifiedOn": unit["tenant"]["modifiedOn"]}
    total = api.get(units_url(st), params={"includeTotal": "true", "page": 2}).json()
    assert total["totalCount"] == 1 and total["data"] == [] and total["page"] == 2
    bad = api.get(units_url(st), params={"pageSize": 0})
    assert bad.status_code == 400 and set(bad.json()) == PROBLEM_KEYS
    assert "pageSize" in bad.json()["errors"]


def test_token_without_bearer_prefix_and_app_key_as_query(st):
    token = get_token(st).json()["access_token"]
    got = requests.get(units_url(st), headers={"Authorization": token},
                       params={"servicetitanapplicationkey": st.app_key})
    assert got.status_code == 200


def test_guard_failures(st, api):
    missing = requests.get(units_url(st), headers={"ST-App-Key": st.app_key})
    assert missing.status_code == 401 and set(missing.json()) == PROBLEM_KEYS
    assert missing.headers["WWW-Authenticate"] == "Bearer"
    unknown = requests.get(units_url(st), headers={"ST-App-Key": st.app_key,
                                                   "Authorization": "Bearer forged"})
    assert unknown.status_code == 401
    assert "invalid_token" in unknown.headers["WWW-Authenticate"]

    api.headers.pop("ST-App-Key")
    no_key = api.get(units_url(st))
    assert no_key.status_code == 403 and "ST-App-Key" in no_key.json()["errors"]
    api.headers["ST-App-Key"] = "wrong"
    wrong_key = api.get(units_url(st))
    assert wrong_key.status_code == 403 and wrong_key.json()["status"] == 403
    api.headers["ST-App-Key"] = st.app_key

    other = api.get(units_url(st, tenant="7654321"))
    assert other.status_code == 403 and "tenant" in other.json()["errors"]
    assert api.get(units_url(st)).status_code == 200
    nowhere = api.get(f"{st.base_url}/settings/v2/tenant/{st.tenant_id}/nothing")
    assert nowhere.status_code == 404 and set(nowhere.json()) == PROBLEM_KEYS


def test_token_reused_until_it_expires_by_the_clock(st, clock, api):
    for _ in range(3):
        assert api.get(units_url(st)).status_code == 200
    clock.advance(899)
    assert api.get(units_url(st)).status_code == 200
    clock.advance(1)
    expired = api.get(units_url(st))
    assert expired.status_code == 401 and "expired" in expired.json()["errors"][""][0]
    api.headers["Authorization"] = "Bearer " + get_token(st).json()["access_token"]
    assert api.get(units_url(st)).status_code == 200
    assert st.token_calls == 2


def test_expire_access_tokens_and_short_ttl(clock):
    with ServiceTitanSandbox(clock=clock, access_token_ttl=60, tenant_id="42",
                             tenant_name="Other Co") as st:
        body = get_token(st).json()
        assert body["expires_in"] == 60
        headers = {"Authorization": f"Bearer {body['access_token']}", "ST-App-Key": st.app_key}
        got = requests.get(units_url(st), headers=headers)
        assert got.json()["data"][0]["tenant"]["name"] == "Other Co"
        st.expire_access_tokens()
        assert requests.get(units_url(st), headers=headers).status_code == 401


def test_fail_next(st, api):
    st.fail_next(2)
    first = api.get(units_url(st))
    assert first.status_code == 503 and set(first.json()) == PROBLEM_KEYS
    assert api.get(units_url(st)).status_code == 503
    assert api.get(units_url(st)).status_code == 200
    st.fail_next(1, status=500, body={"oops": True})
    got = api.get(units_url(st))
    assert got.status_code == 500 and got.json() == {"oops": True}
    st.fail_next(1, status=429)
    limited = api.get(units_url(st))
    assert limited.status_code == 429 and limited.headers["Retry-After"] == "1"
    # token calls are not affected
    st.fail_next(1)
    assert get_token(st).status_code == 200
    assert api.get(units_url(st)).status_code == 503


def test_rate_limit_per_second(clock):
    with ServiceTitanSandbox(clock=clock, per_second=3) as st:
        s = requests.Session()
        s.headers.update({"Authorization": "Bearer " + get_token(st).json()["access_token"],
                          "ST-App-Key": st.app_key})
        assert [s.get(units_url(st)).status_code for _ in range(3)] == [200] * 3
        over = s.get(units_url(st))
        assert over.status_code == 429 and over.headers["Retry-After"] == "1"
        assert set(over.json()) == PROBLEM_KEYS and over.json()["status"] == 429
        # refused calls do not count; the window rolls with the clock
        clock.advance(0.5)
        assert s.get(units_url(st)).status_code == 429
        clock.advance(0.5)
        assert s.get(units_url(st)).status_code == 200
        # unauthenticated calls are refused before they count
        assert requests.get(units_url(st)).status_code == 401
        st.per_second = None
        assert [s.get(units_url(st)).status_code for _ in range(5)] == [200] * 5
        s.close()


def test_random_429_knob_is_the_documented_shape(clock):
    with ServiceTitanSandbox(Knobs(rate_429=1.0), clock=clock) as st:
        got = requests.get(units_url(st))
        assert got.status_code == 429 and got.headers["Retry-After"] == "1"
        assert set(got.json()) == PROBLEM_KEYS


# == data endpoints (api/servicetitan.md §3-10) ==========================================
STAMP = r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{7}Z$"


def url(st, module, resource):
    return f"{st.base_url}/{module}/v2/tenant/{st.tenant_id}/{resource}"


def export_all(api, address, start=None):
    """Follow an export feed to its end; returns (records, calls, last continueFrom)."""
    records, calls, params = [], 0, ({"from": start} if start else {})
    while True:
        got = api.get(address, params=params)
        assert got.status_code == 200, got.text
        body = got.json()
        assert set(body) == {"hasMore", "continueFrom", "data"}
        records += body["data"]
        calls += 1
        params = {"from": body["continueFrom"]}
        if not body["hasMore"]:
            return records, calls, body["continueFrom"]


def assert_problem(got, status, field):
    assert got.status_code == status, got.text
    body = got.json()
    assert set(body) == PROBLEM_KEYS and body["status"] == status
    assert field in body["errors"], body


def test_invoice_paging_envelope_and_totals(st, api):
    customer = st.add_customer("Maria Lopez")
    for n in range(250):
        st.add_invoice(customer["id"], [{"sku_id": None, "code": "SVC-1", "type": "Service",
                                         "description": "Visit", "quantity": "1",
                                         "unit_price": f"{n}.50"}])
    address = url(st, "accounting", "invoices")
    pages = [api.get(address, params={"page": p, "pageSize": 100, "includeTotal": "true"}).json()
             for p in (1, 2, 3, 4)]
    assert [len(p["data"]) for p in pages] == [100, 100, 50, 0]
    assert [p["hasMore"] for p in pages] == [True, True, False, False]
    assert {p["totalCount"] for p in pages} == {250}
    assert set(pages[0]) == {"page", "pageSize", "hasMore", "totalCount", "data"}
    ids = [i["id"] for p in pages for i in p["data"]]
    assert ids == sorted(ids) and len(set(ids)) == 250
    plain = api.get(address).json()
    assert plain["page"] == 1 and plain["pageSize"] == 50 and plain["totalCount"] is None
    newest = api.get(address, params={"sort": "-Id", "pageSize": 1}).json()["data"][0]
    assert newest["id"] == ids[-1] and newest["total"] == "249.50"
    assert api.get(address, params={"totalGreater": "249"}).json()["data"][0]["id"] == ids[-1]


def test_invoice_items_money_as_strings_and_stamps(st, api):
    customer = st.add_customer("Acme", address={"street": "12 Elm St", "city": "Fresno",
                                                "state": "CA", "zip": "93701",
                                                "country": "USA"})
    cap = st.add_material("CAP-455", "Capacitor 45/5", price="361.00", cost="14.20")
    diag = st.add_service("SVC-DIAG", "Diagnostic", price="89.00")
    inv = st.add_invoice(customer["id"], [
        {"sku_id": diag["id"], "code": "SVC-DIAG", "description": "Diagnostic visit",
         "quantity": "1", "unit_price": "89.00", "type": "Service"},
        {"sku_id": cap["id"], "code": "CAP-455", "description": "Run capacitor",
         "quantity": "2", "unit_price": "10.005", "type": "Material"}],
        number="10452", summary="Replaced capacitor")
    got = api.get(url(st, "accounting", "invoices"), params={"ids": str(inv["id"])}).json()
    (body,) = got["data"]
    assert body == inv
    assert body["referenceNumber"] == "10452" and body["active"] is True
    assert body["invoiceDate"] == "2026-03-02T00:00:00Z"
    assert body["dueDate"] == "2026-04-01T00:00:00Z"
    assert (body["subTotal"], body["salesTax"], body["total"], body["balance"]) == \
        ("109.01", "0.00", "109.01", "109.01")
    assert body["customer"] == {"id": customer["id"], "name": "Acme"}
    assert body["customerAddress"]["street"] == "12 Elm St"
    assert body["businessUnit"] == {"id": st.business_unit_id, "name": st.tenant_name}
    svc, mat = body["items"]
    assert (svc["type"], svc["skuId"], svc["skuName"], svc["quantity"], svc["price"],
            svc["total"], svc["order"]) == \
        ("Service", diag["id"], "SVC-DIAG", "1.0000", "89.00", "89.00", 1)
    assert svc["generalLedgerAccount"]["name"] == "Service Income"
    assert (mat["price"], mat["total"], mat["cost"], mat["totalCost"]) == \
        ("10.005", "20.01", "14.20", "28.40")
    assert mat["inventory"] is True and mat["displayName"] == "Capacitor 45/5"
    for stamp in (body["createdOn"], body["modifiedOn"], svc["createdOn"]):
        assert re.match(STAMP, stamp)
    # the invoice has no by-id route (§4): 404 problem
    assert_problem(api.get(url(st, "accounting", f"invoices/{inv['id']}")), 404, "")
    # items replaced by update: totals follow, modifiedOn moves on
    later = st.update("invoices", inv["id"], items=[
        {"sku_id": None, "code": "X", "description": "Flat", "quantity": "3",
         "unit_price": "5", "type": "Service"}])
    assert later["total"] == "15.00" and later["items"][0]["skuId"] == 0
    assert later["modifiedOn"] > inv["modifiedOn"]


def test_payments_apply_to_invoices(st, api):
    customer = st.add_customer("Payer")
    items = [{"sku_id": None, "code": "S", "description": "d", "quantity": "1",
              "unit_price": "100.00", "type": "Service"}]
    a = st.add_invoice(customer["id"], items)
    b = st.add_invoice(customer["id"], items)
    assert api.get(url(st, "crm", f"customers/{customer['id']}")).json()["balance"] == 200
    pay = st.add_payment([(a["id"], "100.00"), (b["id"], "40.50")], paid_on="2026-03-05")
    assert pay["total"] == "140.50" and pay["type"] == "Check" and pay["typeId"] == "2"
    assert pay["date"] == "2026-03-05T00:00:00Z"
    assert [(x["appliedTo"], x["appliedAmount"]) for x in pay["appliedTo"]] == \
        [(a["id"], "100.00"), (b["id"], "40.50")]
    invoices = {i["id"]: i for i in api.get(url(st, "accounting", "invoices")).json()["data"]}
    assert invoices[a["id"]]["balance"] == "0.00"
    assert invoices[a["id"]]["paidOn"] == "2026-03-05T00:00:00Z"
    assert invoices[b["id"]]["balance"] == "59.50" and invoices[b["id"]]["paidOn"] is None
    assert invoices[a["id"]]["modifiedOn"] > a["modifiedOn"]
    listed = api.get(url(st, "accounting", "payments"),
                     params={"appliedToInvoiceIds": str(b["id"])}).json()["data"]
    assert [p["id"] for p in listed] == [pay["id"]] and listed[0] == pay
    customer_now = api.get(url(st, "crm", f"customers/{customer['id']}")).json()
    assert customer_now["balance"] == 59.5
    assert '"balance": 59.50' in api.get(url(st, "crm", f"customers/{customer['id']}")).text
    # voiding the payment restores the balances
    st.deactivate("payments", pay["id"])
    again = {i["id"]: i for i in api.get(url(st, "accounting", "invoices")).json()["data"]}
    assert again[a["id"]]["balance"] == "100.00" and again[a["id"]]["paidOn"] is None
    assert api.get(url(st, "accounting", "payments")).json()["data"] == []
    everything = api.get(url(st, "accounting", "payments"), params={"activeState": "All"})
    assert [p["active"] for p in everything.json()["data"]] == [False]
    types = api.get(url(st, "accounting", "payment-types")).json()["data"]
    assert {"id": 2, "name": "Check"} == {k: types[1][k] for k in ("id", "name")}


def test_modified_filters_are_inclusive_and_exclusive(st, api, clock):
    first = st.add_vendor("Early Supply")
    clock.advance(60)
    second = st.add_vendor("Late Supply", email="ap@late.example")
    address = url(st, "inventory", "vendors")
    since = api.get(address, params={"modifiedOnOrAfter": second["modifiedOn"]}).json()["data"]
    assert [v["id"] for v in since] == [second["id"]]
    before = api.get(address, params={"modifiedBefore": second["modifiedOn"]}).json()["data"]
    assert [v["id"] for v in before] == [first["id"]]
    by_date = api.get(address, params={"createdOnOrAfter": "2026-01-05T12:00:30Z"}).json()
    assert [v["id"] for v in by_date["data"]] == [second["id"]]
    assert second["contactInfo"]["email"] == "ap@late.example"
    # a frozen clock still moves modifiedOn forward
    a = st.update("vendors", first["id"], name="Early Supply Co")
    b = st.update("vendors", first["id"], memo="net 30")
    assert first["modifiedOn"] < a["modifiedOn"] < b["modifiedOn"]
    recent = api.get(address, params={"modifiedOnOrAfter": a["modifiedOn"],
                                      "sort": "+ModifiedOn"}).json()["data"]
    assert [v["id"] for v in recent] == [first["id"]]


def test_ids_and_active_filters(st, api):
    made = [st.add_material(f"MAT-{n}", f"Part {n}", price=f"{n}.25") for n in range(5)]
    st.deactivate("materials", made[1]["id"])
    address = url(st, "pricebook", "materials")
    ids = f"{made[0]['id']},{made[1]['id']},{made[3]['id']}"
    assert [m["id"] for m in api.get(address, params={"ids": ids}).json()["data"]] == \
        [made[0]["id"], made[3]["id"]]
    anyway = api.get(address, params={"ids": ids, "active": "Any"}).json()["data"]
    assert [m["active"] for m in anyway] == [True, False, True]
    off = api.get(address, params={"active": "False"}).json()["data"]
    assert [m["code"] for m in off] == ["MAT-1"]
    one = api.get(f"{address}/{made[4]['id']}")
    assert one.status_code == 200 and one.json()["code"] == "MAT-4"
    assert '"price": 4.25' in one.text and one.json()["account"] == "Materials Income"
    assert api.get(address, params={"searchText": "part 2"}).json()["data"][0]["code"] == \
        "MAT-2"
    assert_problem(api.get(address, params={"ids": ",".join(str(n) for n in range(1, 52))}),
                   400, "ids")


def test_bad_parameters_and_unknown_ids(st, api):
    for module, resource in (("crm", "customers/999"), ("inventory", "vendors/999"),
                             ("inventory", "purchase-orders/999"),
                             ("pricebook", "services/abc"), ("pricebook", "equipment/1"),
                             ("crm", "customers/999/contacts")):
        got = api.get(url(st, module, resource))
        assert_problem(got, 404, "id")
        assert got.json()["title"] == "Not Found"
    invoices = url(st, "accounting", "invoices")
    assert_problem(api.get(invoices, params={"pageSize": "0"}), 400, "pageSize")
    assert_problem(api.get(invoices, params={"page": "x"}), 400, "page")
    assert_problem(api.get(invoices, params={"modifiedOnOrAfter": "yesterday"}), 400,
                   "modifiedOnOrAfter")
    assert_problem(api.get(invoices, params={"activeState": "Maybe"}), 400, "activeState")
    assert_problem(api.get(invoices, params={"sort": "+Total"}), 400, "sort")
    assert_problem(api.get(url(st, "pricebook", "services"), params={"sort": "-ModifiedOn"}),
                   400, "sort")
    assert_problem(api.get(url(st, "crm", "customers"), params={"active": "yes"}), 400,
                   "active")
    assert_problem(api.get(url(st, "crm", "customers/contacts")), 400, "")
    assert_problem(api.get(url(st, "crm", "export/customers"), params={"from": "garbage!"}),
                   400, "from")
    # several faults at once: one 400 naming each
    both = api.get(invoices, params={"pageSize": "-1", "includeTotal": "perhaps"}).json()
    assert set(both["errors"]) == {"pageSize", "includeTotal"}
    # vendors have no export feed (§7)
    assert api.get(url(st, "inventory", "export/vendors")).status_code == 404


def test_customer_contacts(st, api):
    maria = st.add_customer("Maria", email="maria@example.com", phone="555-0101",
                            contacts=[{"type": "Email", "value": "billing@example.com"}])
    other = st.add_customer("Other", contacts=[{"type": "MobilePhone", "value": "5550102"}])
    assert "email" not in maria  # email lives in contacts (§6)
    got = api.get(url(st, "crm", f"customers/{maria['id']}/contacts")).json()
    assert got["hasMore"] is False and [c["type"] for c in got["data"]] == \
        ["Email", "Phone", "Email"]
    email = got["data"][0]
    assert email["value"] == "maria@example.com" and "customerId" not in email
    assert email["phoneSettings"] is None and email["preferences"]["invoiceStatementNotification"]
    assert got["data"][1]["phoneSettings"] == {"phoneNumber": "555-0101", "doNotText": False}
    assert got["data"] == st.contacts_of(maria["id"])
    bulk = api.get(url(st, "crm", "customers/contacts"),
                   params={"customerIds": f"{maria['id']},{other['id']}"}).json()["data"]
    assert [c["customerId"] for c in bulk] == [maria["id"]] * 3 + [other["id"]]
    by_phone = api.get(url(st, "crm", "customers"), params={"phone": "(555) 0101"}).json()
    assert [c["id"] for c in by_phone["data"]] == [maria["id"]]
    # changing the email retires the old contact row; the export shows both
    st.update("customers", maria["id"], email="new@example.com")
    now = [c["value"] for c in st.contacts_of(maria["id"]) if c["type"] == "Email"]
    assert now == ["new@example.com"]
    rows, _, _ = export_all(api, url(st, "crm", "export/customers/contacts"))
    retired = [r for r in rows if r["value"] == "maria@example.com"]
    assert len(retired) == 1 and retired[0]["active"] is False
    assert retired[0]["customerId"] == maria["id"]
    fresh = api.get(url(st, "crm", "customers/contacts"),
                    params={"modifiedOnOrAfter": retired[0]["modifiedOn"]}).json()["data"]
    assert [c["value"] for c in fresh] == ["new@example.com"]


def test_export_continuation_and_later_changes(clock):
    with ServiceTitanSandbox(clock=clock, export_batch=40) as st:
        s = requests.Session()
        s.headers.update({"Authorization": "Bearer " + get_token(st).json()["access_token"],
                          "ST-App-Key": st.app_key})
        customers = [st.add_customer(f"C{n}") for n in range(100)]
        st.deactivate("customers", customers[5]["id"])
        address = url(st, "crm", "export/customers")
        first = s.get(address).json()
        assert first["hasMore"] is True and len(first["data"]) == 40
        rows, calls, token = export_all(s, address)
        assert calls == 3 and len({r["id"] for r in rows}) == 100
        mods = [(r["modifiedOn"], r["id"]) for r in rows]
        assert mods == sorted(mods)  # chronological by modification
        assert [r["active"] for r in rows if r["id"] == customers[5]["id"]] == [False]
        # at the end: nothing new, the token stays usable
        idle = s.get(address, params={"from": token}).json()
        assert idle == {"hasMore": False, "continueFrom": token, "data": []}
        clock.advance(300)
        st.update("customers", customers[0]["id"], name="C0 renamed")
        newer, _, token2 = export_all(s, address, token)
        assert [(r["id"], r["name"]) for r in newer] == [(customers[0]["id"], "C0 renamed")]
        assert s.get(address, params={"from": token2}).json()["data"] == []
        # a date as `from` starts at that modifiedOn
        dated = s.get(address, params={"from": "2026-01-05T12:04:00Z"}).json()
        assert [r["id"] for r in dated["data"]] == [customers[0]["id"]]
        # the paged list hides the deactivated customer unless active=Any
        listed = s.get(url(st, "crm", "customers"), params={"pageSize": 500}).json()
        assert len(listed["data"]) == 99
        assert s.get(url(st, "crm", "customers"),
                     params={"active": "Any", "includeTotal": "true"}).json()["totalCount"] == 100
        s.close()


def test_invoice_payment_and_item_exports(st, api):
    customer = st.add_customer("Feed")
    items = [{"sku_id": None, "code": "S", "description": "d", "quantity": "1",
              "unit_price": "10.00", "type": "Service"},
             {"sku_id": None, "code": "M", "description": "m", "quantity": "2",
              "unit_price": "1.00", "type": "Material"}]
    inv = st.add_invoice(customer["id"], items)
    invoices, _, inv_token = export_all(api, url(st, "accounting", "export/invoices"))
    assert [i["id"] for i in invoices] == [inv["id"]] and len(invoices[0]["items"]) == 2
    lines, _, line_token = export_all(api, url(st, "accounting", "export/invoice-items"))
    assert [(x["invoiceId"], x["active"], x["total"]) for x in lines] == \
        [(inv["id"], True, "10.00"), (inv["id"], True, "2.00")]
    payments, _, pay_token = export_all(api, url(st, "accounting", "export/payments"))
    assert payments == []
    pay = st.add_payment([(inv["id"], "12.00")], type_name="Cash")
    newer, _, _ = export_all(api, url(st, "accounting", "export/payments"), pay_token)
    assert [(p["id"], p["typeId"], p["total"]) for p in newer] == [(pay["id"], "1", "12.00")]
    changed, _, _ = export_all(api, url(st, "accounting", "export/invoices"), inv_token)
    assert [(i["id"], i["balance"]) for i in changed] == [(inv["id"], "0.00")]
    st.deactivate("invoices", inv["id"])
    voided, _, _ = export_all(api, url(st, "accounting", "export/invoice-items"), line_token)
    assert [x["active"] for x in voided] == [False, False]
    assert api.get(url(st, "accounting", "invoices")).json()["data"] == []
    gone = api.get(url(st, "accounting", "invoices"),
                   params={"activeState": "InactiveOnly"}).json()["data"]
    assert [i["active"] for i in gone] == [False]


def test_purchase_orders(st, api):
    vendor = st.add_vendor("Ferguson", address={"city": "Fresno"})
    pipe = st.add_material("PIPE-1", "Copper pipe", price="12.00", cost="7.50")
    po = st.add_purchase_order(vendor["id"], [
        {"sku_id": pipe["id"], "code": "PIPE-1", "description": "Copper pipe",
         "quantity": "3", "cost": "7.50"}], number="PO-100")
    got = api.get(url(st, "inventory", f"purchase-orders/{po['id']}"))
    assert got.status_code == 200 and got.json() == json.loads(json.dumps(po, default=str)) | {
        "total": 22.5, "tax": 0, "shipping": 0, "items": got.json()["items"]}
    assert '"total": 22.50' in got.text
    body = got.json()
    assert body["vendorId"] == vendor["id"] and body["status"] == "Pending"
    assert body["date"] == "2026-03-02T00:00:00Z" and body["number"] == "PO-100"
    (item,) = body["items"]
    assert (item["skuId"], item["skuCode"], item["skuType"], item["quantity"], item["cost"],
            item["total"]) == (pipe["id"], "PIPE-1", "material", 3, 7.5, 22.5)
    st.add_purchase_order(vendor["id"], [], status="Received")
    listed = api.get(url(st, "inventory", "purchase-orders"),
                     params={"status": "Received"}).json()["data"]
    assert [p["status"] for p in listed] == ["Received"]
    assert_problem(api.get(url(st, "inventory", "purchase-orders"), params={"status": "Lost"}),
                   400, "status")
    feed, _, token = export_all(api, url(st, "inventory", "export/purchase-orders"))
    assert len(feed) == 2
    st.update("purchase_orders", po["id"], status="Sent")
    newer, _, _ = export_all(api, url(st, "inventory", "export/purchase-orders"), token)
    assert [(p["id"], p["status"]) for p in newer] == [(po["id"], "Sent")]
    assert api.get(url(st, "inventory", f"vendors/{vendor['id']}")).json()["address"][
        "city"] == "Fresno"


def test_pricebook_services_and_equipment_feeds(st, api):
    svc = st.add_service("SVC-1", "Tune-up", price="149.99")
    eq = st.add_equipment("EQ-1", "Water heater", price="1299.00")
    services = api.get(url(st, "pricebook", "services")).json()["data"]
    assert [(s["code"], s["price"]) for s in services] == [("SVC-1", 149.99)]
    feed, _, token = export_all(api, url(st, "pricebook", "export/equipment"))
    assert [e["id"] for e in feed] == [eq["id"]] and feed[0]["manufacturer"] is None
    st.update("equipment", eq["id"], price="1199.00")
    newer, _, _ = export_all(api, url(st, "pricebook", "export/equipment"), token)
    assert [e["price"] for e in newer] == [1199.0] and newer[0]["memberPrice"] == 1199.0
    assert export_all(api, url(st, "pricebook", "export/services"))[0][0]["id"] == svc["id"]


def test_balance_moves_customer_modified_on_unless_excluded(st, api, clock):
    customer = st.add_customer("Ledger", address={"street": "1 Main", "city": "Fresno"})
    clock.advance(60)
    mark = "2026-01-05T12:00:30Z"
    st.add_invoice(customer["id"], [{"sku_id": None, "code": "S", "description": "d",
                                     "quantity": "1", "unit_price": "5", "type": "Service"}],
                   invoice_date="2026-03-10")
    address = url(st, "crm", "customers")
    moved = api.get(address, params={"modifiedOnOrAfter": mark}).json()["data"]
    assert [(c["id"], c["balance"]) for c in moved] == [(customer["id"], 5)]
    plain = api.get(address, params={"modifiedOnOrAfter": mark,
                                     "excludeAccountingChangesFromModifiedDateRange": "true"})
    assert plain.json()["data"] == []
    assert api.get(address, params={"city": "fresno"}).json()["data"][0]["id"] == customer["id"]
    invoices = url(st, "accounting", "invoices")
    assert len(api.get(invoices, params={"invoicedOnOrAfter": "2026-03-10"}).json()["data"]) == 1
    assert api.get(invoices, params={"invoicedOnBefore": "2026-03-10"}).json()["data"] == []
    assert len(api.get(invoices, params={"customerId": customer["id"],
                                         "balanceFilter.Balance": "0",
                                         "balanceFilter.Comparer": "Greater"}).json()["data"]) == 1
