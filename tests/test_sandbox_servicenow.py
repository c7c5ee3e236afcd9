"""The ServiceNow emulator over real loopback sockets, checked against api/servicenow.md."""

from __future__ import annotations

import re

import pytest
import requests

from mlconnector.clock import FakeClock
from mlconnector.sandbox.server import Knobs
from mlconnector.sandbox.servicenow import ServiceNowSandbox

INVOICE = {"u_external_invoice_number": "FB-INV-1", "u_external_invoice_source": "FreshBooks",
           "u_supplier": "100457", "u_invoice_date": "2026-03-02", "u_currency": "GBP",
           "u_subtotal": "1250.00", "u_tax_amount": "250.00", "u_sync_token": "7",
           "u_invoice_type": "non_po_invoice"}


@pytest.fixture
def clock():
    return FakeClock()


@pytest.fixture
def sn(clock):
    with ServiceNowSandbox(clock=clock) as sandbox:
        yield sandbox


def token(sn, **over):
    body = {"grant_type": "client_credentials", "client_id": sn.client_id,
            "client_secret": sn.client_secret, **over}
    return requests.post(f"{sn.base_url}/oauth_token.do", data=body)


@pytest.fixture
def api(sn):
    s = requests.Session()
    s.headers["Authorization"] = "Bearer " + token(sn).json()["access_token"]
    s.headers["Accept"] = "application/json"
    s.url = lambda path: f"{sn.base_url}/api/now/{path}"
    yield s
    s.close()


@pytest.fixture
def supplier(sn):
    return sn.add_supplier("Northwind Components Ltd", tax_id="GB123", u_external_id="100457")


def post_import(api, staging, body):
    resp = api.post(api.url(f"import/{staging}"), json=body)
    assert resp.status_code == 201, resp.text
    return resp.json()


def status_of(api, staging, body):
    return post_import(api, staging, body)["result"][0]


# -- auth ------------------------------------------------------------------------------------
def test_client_credentials_token_is_reused_while_valid(sn, clock):
    first = token(sn).json()
    assert set(first) == {"access_token", "scope", "token_type", "expires_in"}
    assert first["expires_in"] == 1799 and first["scope"] == "useraccount"
    assert first["token_type"] == "Bearer"
    clock.advance(600)
    again = token(sn).json()
    assert again["access_token"] == first["access_token"] and again["expires_in"] == 1199
    clock.advance(1300)
    assert token(sn).json()["access_token"] != first["access_token"]
    assert sn.token_calls == 3


def test_token_failures_share_one_shape(clock):
    with ServiceNowSandbox(clock=clock, client_credentials_enabled=False) as off:
        resp = token(off)
        assert resp.status_code == 401
        assert resp.json() == {"error_description": "access_denied", "error": "server_error"}
    with ServiceNowSandbox(clock=clock) as sn:
        assert token(sn, client_secret="wrong").status_code == 401
        assert token(sn, grant_type="magic").json()["error"] == "server_error"
        as_json = requests.post(f"{sn.base_url}/oauth_token.do", json={
            "grant_type": "client_credentials", "client_id": sn.client_id,
            "client_secret": sn.client_secret})
        assert as_json.status_code == 400


def test_guard_bearer_basic_and_expiry(sn, api):
    url = api.url("table/core_company")
    assert api.get(url).status_code == 200
    assert requests.get(url, auth=(sn.username, sn.password)).status_code == 200
    bad = requests.get(url, auth=(sn.username, "nope"))
    assert bad.status_code == 401
    assert bad.json() == {"error": {"message": "User Not Authenticated",
                                    "detail": "Required to provide Auth information"},
                          "status": "failure"}
    sn.expire_access_tokens()
    assert api.get(url).status_code == 401
    assert requests.get(url).status_code == 401


# -- Table API -------------------------------------------------------------------------------
def test_table_crud_and_value_formats(sn, api, clock):
    resp = api.post(api.url("table/core_company"), json={
        "name": "Acme", "vendor": True, "country": "GB", "bogus": "x", "sys_id": "mine"})
    assert resp.status_code == 201
    rec = resp.json()["result"]
    assert re.fullmatch(r"[0-9a-f]{32}", rec["sys_id"])
    assert resp.headers["Location"].endswith(f"/api/now/table/core_company/{rec['sys_id']}")
    assert rec["vendor"] == "true" and "bogus" not in rec
    assert rec["sys_created_on"] == "2026-01-05 12:00:00" and rec["number"] == "CMN0001001"
    assert "bogus" not in sn.rows("core_company")[0]
    clock.advance(61)
    url = api.url(f"table/core_company/{rec['sys_id']}")
    patched = api.patch(url, json={"city": "Leeds"}).json()["result"]
    assert patched["city"] == "Leeds" and patched["sys_updated_on"] == "2026-01-05 12:01:01"
    assert api.put(url, json={"city": "York"}).json()["result"]["city"] == "York"
    got = api.get(api.url(f"v2/table/core_company/{rec['sys_id']}"),
                  params={"sysparm_fields": "name,city,nothing"})
    assert got.json() == {"result": {"name": "Acme", "city": "York"}}
    deleted = api.delete(url)
    assert deleted.status_code == 204 and deleted.content == b""
    missing = api.get(url)
    assert missing.status_code == 404
    assert missing.json()["error"]["message"] == "No Record found"
    assert api.get(api.url("table/core_company")).json() == {"result": []}


def test_invalid_table_and_content_type(api):
    resp = api.get(api.url("table/sn_apo_invoice"))
    assert resp.status_code == 400
    assert resp.json() == {"error": {"message": "Invalid table sn_apo_invoice", "detail": None},
                           "status": "failure"}
    assert api.post(api.url("table/core_company"), data="name=x").status_code == 400
    assert api.post(api.url("table/core_company"), data={"name": "x"}).status_code == 415
    assert api.post(api.url("table/core_company"), data=b"{",
                    headers={"Content-Type": "application/json"}).status_code == 400


def test_references_render_three_ways(sn, api, supplier):
    inv = sn.add_invoice(supplier["sys_id"], "FB-1", subtotal="10.00", tax_amount="2.00")
    assert inv["invoice_amount"] == "12.00" and inv["state"] == "draft"
    assert inv["number"] == "INV0001001" and inv["supplier"] == supplier["sys_id"]
    url = api.url(f"table/sn_shop_invoice/{inv['sys_id']}")
    ref = api.get(url, params={"sysparm_fields": "supplier,purchase_order"}).json()["result"]
    assert ref["supplier"] == {
        "link": f"{sn.base_url}/api/now/table/sn_fin_supplier/{supplier['sys_id']}",
        "value": supplier["sys_id"]}
    assert ref["purchase_order"] == ""
    bare = api.get(url, params={"sysparm_fields": "supplier",
                                "sysparm_exclude_reference_link": "true"}).json()["result"]
    assert bare == {"supplier": supplier["sys_id"]}
    shown = api.get(url, params={"sysparm_fields": "supplier,state",
                                 "sysparm_display_value": "true"}).json()["result"]
    assert shown["supplier"]["display_value"] == "Northwind Components Ltd"
    assert shown["state"] == "draft"
    both = api.get(url, params={"sysparm_fields": "supplier,state,supplier.tax_id",
                                "sysparm_display_value": "all"}).json()["result"]
    assert both["state"] == {"display_value": "draft", "value": "draft"}
    assert set(both["supplier"]) == {"display_value", "link", "value"}
    assert both["supplier.tax_id"] == {"display_value": "GB123", "value": "GB123"}


def test_query_operators_and_ordering(sn, api):
    for name, country in (("Alpha Ltd", "GB"), ("Beta Inc", "US"), ("Gamma Ltd", ""),
                          ("Delta GmbH", "DE")):
        sn.add_company(name, country=country, vendor=name != "Beta Inc")

    def names(query):
        rows = api.get(api.url("table/core_company"),
                       params={"sysparm_query": query, "sysparm_fields": "name"}).json()
        return [r["name"] for r in rows["result"]]

    assert names("vendor=true^ORDERBYname") == ["Alpha Ltd", "Delta GmbH", "Gamma Ltd"]
    assert names("nameLIKELtd^ORDERBYDESCname") == ["Gamma Ltd", "Alpha Ltd"]
    assert names("nameSTARTSWITHBe") == ["Beta Inc"]
    assert names("nameENDSWITHGmbH") == ["Delta GmbH"]
    assert names("countryINGB,DE^ORDERBYname") == ["Alpha Ltd", "Delta GmbH"]
    assert names("countryISEMPTY") == ["Gamma Ltd"]
    assert names("countryISNOTEMPTY^country!=US^ORDERBYname") == ["Alpha Ltd", "Delta GmbH"]
    assert names("country=US^ORcountry=DE^ORDERBYname") == ["Beta Inc", "Delta GmbH"]
    assert names("nosuch=1^country=US") == ["Beta Inc"]  # invalid part dropped
    assert names("namelike") == names("")  # garbage is dropped too
    shorthand = api.get(api.url("table/core_company"), params={"country": "DE"}).json()
    assert [r["name"] for r in shorthand["result"]] == ["Delta GmbH"]


def test_dot_walk_query(sn, api, supplier):
    other = sn.add_supplier("Other Co")
    sn.add_invoice(supplier["sys_id"], "A")
    sn.add_invoice(other["sys_id"], "B")
    rows = api.get(api.url("table/sn_shop_invoice"), params={
        "sysparm_query": "supplier.name=Other Co",
        "sysparm_fields": "external_invoice_number"}).json()["result"]
    assert rows == [{"external_invoice_number": "B"}]


def test_paging_headers(sn, api):
    for n in range(5):
        sn.add_company(f"C{n}")
    resp = api.get(api.url("table/core_company"), params={
        "sysparm_limit": 2, "sysparm_offset": 2, "sysparm_query": "ORDERBYname"})
    assert [r["name"] for r in resp.json()["result"]] == ["C2", "C3"]
    assert resp.headers["X-Total-Count"] == "5"
    links = dict((rel, url) for url, rel in re.findall(r'<([^>]+)>;rel="(\w+)"',
                                                         resp.headers["Link"]))
    assert set(links) == {"first", "prev", "next", "last"}
    assert "sysparm_offset=4" in links["next"] and "sysparm_offset=4" in links["last"]
    assert "sysparm_offset=0" in links["prev"] and "sysparm_query=ORDERBYname" in links["next"]
    last = requests.get(links["last"], headers=api.headers)
    assert [r["name"] for r in last.json()["result"]] == ["C4"]
    assert 'rel="next"' not in last.headers["Link"]


def test_dictionary_models_inheritance(sn, api):
    tables = api.get(api.url("table/sys_db_object"), params={
        "sysparm_query": "name=sn_shop_invoice",
        "sysparm_fields": "name,super_class.name",
        "sysparm_exclude_reference_link": "true"}).json()["result"]
    assert tables == [{"name": "sn_shop_invoice", "super_class.name": "sn_fin_base_invoice"}]

    def elements(table):
        rows = api.get(api.url("table/sys_dictionary"), params={
            "sysparm_query": f"name={table}^elementISNOTEMPTY",
            "sysparm_fields": "element,internal_type,reference"}).json()["result"]
        return {r["element"]: r for r in rows}

    own, base = elements("sn_shop_invoice"), elements("sn_fin_base_invoice")
    assert "external_invoice_number" in own and "subtotal" not in own
    assert {"invoice_date", "due_date", "supplier", "subtotal", "tax_amount",
            "invoice_amount", "currency", "sys_id"} <= set(base)
    assert base["supplier"]["internal_type"] == "reference"
    assert base["supplier"]["reference"] == "sn_fin_supplier"
    assert api.post(api.url("table/sys_dictionary"), json={"name": "x"}).status_code == 403


# -- Import Set API --------------------------------------------------------------------------
def test_invoice_import_insert_ignore_update(sn, api, supplier, clock):
    body = post_import(api, "sn_spend_intg_imp_invoice", INVOICE)
    assert set(body) == {"import_set", "staging_table", "result"}
    assert body["staging_table"] == "sn_spend_intg_imp_invoice"
    assert body["import_set"].startswith("ISET")
    result = body["result"][0]
    assert set(result) == {"transform_map", "table", "display_name", "display_value",
                           "record_link", "status", "sys_id"}
    assert result["status"] == "inserted" and result["table"] == "sn_shop_invoice"
    assert result["display_value"] == "INV0001001"
    assert result["record_link"].endswith(f"/sn_shop_invoice/{result['sys_id']}")
    [inv] = sn.rows("sn_shop_invoice")
    assert inv["supplier"] == supplier["sys_id"] and inv["subtotal"] == "1250.00"
    assert inv["u_sync_token"] == "7" and inv["type"] == "non_po_invoice"
    assert inv["state"] == "draft" and inv["invoice_amount"] == "1500.00"

    again = status_of(api, "sn_spend_intg_imp_invoice", INVOICE)
    assert again["status"] == "ignored" and again["sys_id"] == result["sys_id"]
    assert again["status_message"] == "No field values changed"
    clock.advance(5)
    cancel = status_of(api, "sn_spend_intg_imp_invoice",
                       {**INVOICE, "u_subtotal": 1300, "u_state": "canceled"})
    assert cancel["status"] == "updated" and cancel["sys_id"] == result["sys_id"]
    [inv] = sn.rows("sn_shop_invoice")
    assert inv["subtotal"] == "1300" and inv["state"] == "canceled"
    staged = sn.rows("sn_spend_intg_imp_invoice")
    assert [r["sys_import_state"] for r in staged] == ["inserted", "ignored", "updated"]
    assert staged[0]["sys_target_sys_id"] == result["sys_id"]
    assert [r["status"] for r in sn.staging_results] == ["inserted", "ignored", "updated"]


def test_invoice_import_errors_write_nothing(sn, api, supplier):
    missing = status_of(api, "sn_spend_intg_imp_invoice",
                        {k: v for k, v in INVOICE.items() if k not in ("u_currency",
                                                                        "u_subtotal")})
    assert missing["status"] == "error"
    assert "u_currency" in missing["error_message"] and "u_subtotal" in missing["error_message"]
    nobody = status_of(api, "sn_spend_intg_imp_invoice", {**INVOICE, "u_supplier": "999"})
    assert nobody["status"] == "error" and "999" in nobody["error_message"]
    assert sn.rows("sn_shop_invoice") == []
    by_number = status_of(api, "sn_spend_intg_imp_invoice",
                          {**INVOICE, "u_supplier": supplier["number"]})
    assert by_number["status"] == "inserted"


def test_line_import_resolves_header_and_references(sn, api, supplier):
    gl = sn.add_gl_account("600100", "Consulting")
    cc = sn.add_cost_center("Operations", code="OPS")
    line = {"u_external_invoice_number": "FB-INV-1", "u_erp_line_number": "1",
            "u_line_description": "Hours", "u_line_quantity": "3",
            "u_line_unit_price": "100.00", "u_line_amount_invoiced": "300.00",
            "u_currency": "GBP", "u_gl_account": "600100", "u_cost_center": "OPS"}
    orphan = status_of(api, "sn_spend_intg_imp_invoice_line", line)
    assert orphan["status"] == "error" and "FB-INV-1" in orphan["error_message"]
    header = status_of(api, "sn_spend_intg_imp_invoice", INVOICE)
    first = status_of(api, "sn_spend_intg_imp_invoice_line", line)
    assert first["status"] == "inserted" and first["table"] == "sn_shop_invoice_line"
    [stored] = sn.rows("sn_shop_invoice_line")
    assert stored["invoice"] == header["sys_id"] and stored["invoiced_quantity"] == "3"
    assert stored["line_amount"] == "300.00" and stored["ledger_account"] == gl["sys_id"]
    assert stored["cost_center"] == cc["sys_id"]
    assert status_of(api, "sn_spend_intg_imp_invoice_line", line)["status"] == "ignored"
    changed = status_of(api, "sn_spend_intg_imp_invoice_line", {**line, "u_line_quantity": "4"})
    assert changed["status"] == "updated" and changed["sys_id"] == first["sys_id"]
    bad_gl = status_of(api, "sn_spend_intg_imp_invoice_line",
                       {**line, "u_erp_line_number": "2", "u_gl_account": "nope"})
    assert bad_gl["status"] == "error" and "u_gl_account" in bad_gl["error_message"]
    assert len(sn.rows("sn_shop_invoice_line")) == 1


def test_payment_detail_import_marks_invoice_paid(sn, api, supplier):
    pay = {"u_erp_invoice_number": "FB-INV-1", "u_payment_reference_id": "PAY-1",
           "u_payment_amount": "1000.00", "u_payment_date": "2026-03-20",
           "u_payment_method": "bank_transfer", "u_currency": "GBP",
           "u_erp_supplier_code": "100457"}
    assert status_of(api, "sn_spend_intg_imp_invoice_payment_detail", pay)["status"] == "error"
    status_of(api, "sn_spend_intg_imp_invoice", INVOICE)
    first = status_of(api, "sn_spend_intg_imp_invoice_payment_detail", pay)
    assert first["status"] == "inserted"
    [inv] = sn.rows("sn_shop_invoice")
    assert inv["payment_date"] == "2026-03-20" and inv["state"] == "draft"
    assert status_of(api, "sn_spend_intg_imp_invoice_payment_detail", pay)["status"] == "ignored"
    second = status_of(api, "sn_spend_intg_imp_invoice_payment_detail", {
        **pay, "u_payment_reference_id": "PAY-2", "u_payment_amount": "250.00",
        "u_payment_date": "2026-03-25"})
    assert second["status"] == "inserted"
    [inv] = sn.rows("sn_shop_invoice")
    assert inv["state"] == "paid" and inv["payment_date"] == "2026-03-25"
    [p1, _p2] = sn.rows("sn_shop_invoice_payment_detail")
    assert p1["supplier"] == supplier["sys_id"] and p1["invoice"] == inv["sys_id"]


def test_journal_import_and_insert_multiple(sn, api, supplier):
    lines = [{"u_external_id": "JE-1", "u_line_number": n, "u_journal_date": "2026-03-02",
              "u_account": "2000", "u_posting_type": "credit" if n == 1 else "debit",
              "u_amount": "100.00", "u_currency": "GBP", "u_supplier": supplier["sys_id"]}
             for n in (1, 2)]
    resp = api.post(api.url("import/u_ap_journal_import/insertMultiple"),
                    json={"records": lines})
    assert resp.status_code == 201
    assert set(resp.json()) == {"import_set_id", "multi_import_set_id"}
    rows = sn.rows("u_ap_journal_entry")
    assert [r["u_line_number"] for r in rows] == ["1", "2"]
    assert rows[0]["u_supplier"] == supplier["sys_id"]
    again = post_import(api, "u_ap_journal_import", {**lines[0], "u_amount": "101.00"})
    assert again["result"][0]["status"] == "updated"
    staged_id = sn.rows("u_ap_journal_import")[-1]["sys_id"]
    got = api.get(api.url(f"import/u_ap_journal_import/{staged_id}")).json()
    assert got["result"] == again["result"] and got["row"]["u_amount"] == "101.00"
    bad = status_of(api, "u_ap_journal_import", {**lines[0], "u_supplier": "0" * 32})
    assert bad["status"] == "error"
    with ServiceNowSandbox(journal_tables=False) as plain:
        resp = requests.post(f"{plain.base_url}/api/now/import/u_ap_journal_import",
                             json=lines[0], auth=(plain.username, plain.password))
        assert resp.status_code == 400


def test_renamed_invoice_table_end_to_end(clock):
    with ServiceNowSandbox(clock=clock, renames={"sn_shop_invoice": "sn_apo_invoice"}) as sn:
        auth = (sn.username, sn.password)
        sn.add_supplier("Northwind", u_external_id="100457")
        body = requests.post(f"{sn.base_url}/api/now/import/sn_spend_intg_imp_invoice",
                             json=INVOICE, auth=auth).json()
        result = body["result"][0]
        assert result["table"] == "sn_apo_invoice"
        assert f"/api/now/table/sn_apo_invoice/{result['sys_id']}" in result["record_link"]
        got = requests.get(f"{sn.base_url}/api/now/table/sn_apo_invoice", auth=auth).json()
        assert [r["external_invoice_number"] for r in got["result"]] == ["FB-INV-1"]
        old = requests.get(f"{sn.base_url}/api/now/table/sn_shop_invoice", auth=auth)
        assert old.status_code == 400 and old.json()["error"]["message"].startswith("Invalid")
        dictionary = requests.get(f"{sn.base_url}/api/now/table/sys_db_object", auth=auth,
                                  params={"sysparm_query": "nameINsn_apo_invoice,"
                                          "sn_shop_invoice"}).json()["result"]
        assert [t["name"] for t in dictionary] == ["sn_apo_invoice"]
        line = requests.post(f"{sn.base_url}/api/now/import/sn_spend_intg_imp_invoice_line",
                             json={"u_external_invoice_number": "FB-INV-1"}, auth=auth).json()
        assert line["result"][0]["status"] == "inserted"
        ref = sn.rows("sn_shop_invoice_line")[0]["invoice"]
        assert ref == result["sys_id"] and len(sn.rows("sn_apo_invoice")) == 1


def test_without_apo_suppliers_are_companies(clock):
    with ServiceNowSandbox(clock=clock, apo=False) as sn:
        auth = (sn.username, sn.password)
        company = sn.add_supplier("Northwind")
        assert requests.get(f"{sn.base_url}/api/now/table/sn_fin_supplier",
                            auth=auth).status_code == 400
        body = requests.post(f"{sn.base_url}/api/now/import/sn_spend_intg_imp_invoice",
                             json={**INVOICE, "u_supplier": "Northwind"}, auth=auth).json()
        assert body["result"][0]["status"] == "inserted"
        assert sn.rows("sn_shop_invoice")[0]["supplier"] == company["sys_id"]


# -- ACLs, faults and limits -----------------------------------------------------------------
def test_deny_and_missing_role(sn, api):
    sn.deny("core_company", "POST")
    resp = api.post(api.url("table/core_company"), json={"name": "x"})
    assert resp.status_code == 403
    assert resp.json() == {"error": {"message": "Operation Failed", "detail":
                                     "ACL Exception Insert Failed due to security constraints"},
                           "status": "failure"}
    assert api.get(api.url("table/core_company")).status_code == 200
    sn.roles.discard("import_set_loader")
    assert api.post(api.url("import/sn_spend_intg_imp_invoice"),
                    json=INVOICE).status_code == 403


def test_rate_limit_and_faults(sn, clock):
    api = requests.Session()
    api.auth = (sn.username, sn.password)
    api.url = lambda path: f"{sn.base_url}/api/now/{path}"
    clock.advance(20 * 60)  # 12:20
    sn.rate_limit_per_hour = 2
    url = api.url("table/core_company")
    ok = api.get(url)
    assert ok.headers["X-RateLimit-Limit"] == "2" and "X-RateLimit-Rule" in ok.headers
    api.get(url)
    limited = api.get(url)
    assert limited.status_code == 429 and limited.headers["Retry-After"] == "2400"
    assert limited.json()["error"]["message"] == "Rate limit exceeded"
    assert "2 requests per hour for Table API" in limited.json()["error"]["detail"]
    assert int(limited.headers["X-RateLimit-Reset"]) == int(clock.now().timestamp()) + 2400
    clock.advance(2400)
    assert api.get(url).status_code == 200
    sn.rate_limit_per_hour = None
    sn.fail_next(1)
    failed = api.get(url)
    assert failed.status_code == 503 and failed.json()["status"] == "failure"
    assert api.get(url).status_code == 200
    sn.knobs.rate_429 = 1.0
    assert api.get(url).status_code == 429
    assert sn.server_errors == []


def test_knob_error_rate(clock):
    with ServiceNowSandbox(Knobs(error_rate=1.0), clock=clock) as sn:
        resp = requests.get(f"{sn.base_url}/api/now/table/core_company")
        assert resp.status_code == 503 and "error" in resp.json()
