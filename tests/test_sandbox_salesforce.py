"""The Salesforce emulator over real loopback sockets, checked against api/salesforce.md:
the auth side (§1-2, §7, §11) and the data side (§3-9, §11-12)."""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
from decimal import Decimal

import pytest
import requests

from mlconnector.clock import FakeClock
from mlconnector.sandbox.salesforce import SalesforceSandbox, release, sf18
from mlconnector.sandbox.server import Knobs

EXPIRED = [{"message": "Session expired or invalid", "errorCode": "INVALID_SESSION_ID"}]


@pytest.fixture
def clock():
    return FakeClock()


@pytest.fixture
def sf(clock):
    with SalesforceSandbox(clock=clock) as sandbox:
        yield sandbox


def get_token(sf, headers=None, **override):
    form = {"grant_type": "client_credentials", "client_id": sf.client_id,
            "client_secret": sf.client_secret} | override
    return requests.post(f"{sf.base_url}/services/oauth2/token", data=form, headers=headers)


@pytest.fixture
def api(sf):
    s = requests.Session()
    s.headers["Authorization"] = "Bearer " + get_token(sf).json()["access_token"]
    yield s
    s.close()


def data_url(sf, rest=""):
    return f"{sf.base_url}/services/data/v66.0/{rest}"


def org_query(api, sf, q="SELECT Name FROM Organization"):
    return api.get(data_url(sf, "query"), params={"q": q})


def test_ids_and_release_names():
    assert sf18("001A0000006Vm9r") == "001A0000006Vm9rIAC"  # Salesforce's own example
    assert len(SalesforceSandbox.org_id) == 18 and SalesforceSandbox.org_id.startswith("00D")
    assert release(66) == "Spring '26" and release(65) == "Winter '26"
    assert release(67) == "Summer '26" and release(68) == "Winter '27"
    assert release(31) == "Summer '14"


def test_token_success_shape(sf, clock):
    got = get_token(sf)
    assert got.status_code == 200
    body = got.json()
    assert set(body) == {"access_token", "signature", "token_format", "instance_url", "id",
                         "token_type", "issued_at", "scope"}
    assert "refresh_token" not in body and "expires_in" not in body
    assert body["instance_url"] == sf.base_url and body["token_type"] == "Bearer"
    assert body["access_token"].startswith(sf.org_id[:15] + "!")
    assert body["issued_at"] == str(int(clock.now().timestamp() * 1000))
    assert body["id"] == f"{sf.base_url}/id/{sf.org_id}/{sf.user_id}"
    expected = base64.b64encode(hmac.new(sf.client_secret.encode(),
                                         (body["id"] + body["issued_at"]).encode(),
                                         hashlib.sha256).digest()).decode()
    assert body["signature"] == expected and body["scope"] == "api"
    # basic auth works too (simple-salesforce's way)
    basic = requests.post(f"{sf.base_url}/services/oauth2/token",
                          data={"grant_type": "client_credentials"},
                          auth=(sf.client_id, sf.client_secret))
    assert basic.status_code == 200 and basic.json()["access_token"] != body["access_token"]
    assert sf.token_calls == 2


@pytest.mark.parametrize("override, error, description", [
    ({"client_id": "nope"}, "invalid_client_id", "client identifier invalid"),
    ({"client_secret": "nope"}, "invalid_client", "invalid client credentials"),
    ({"grant_type": "password"}, "unsupported_grant_type", "grant type not supported"),
    ({"grant_type": ""}, "unsupported_grant_type", "grant type not supported"),
])
def test_token_failures(sf, override, error, description):
    got = get_token(sf, **override)
    assert got.status_code == 400
    assert got.json() == {"error": error, "error_description": description}


def test_token_failures_of_setup(sf):
    wrong_host = get_token(sf, headers={"Host": "login.salesforce.com"})
    assert wrong_host.status_code == 400 and wrong_host.json() == {
        "error": "invalid_grant", "error_description": "request not supported on this domain"}
    sf.run_as_user = False
    no_user = get_token(sf)
    assert no_user.status_code == 400 and no_user.json()["error_description"] == \
        "no client credentials user enabled"
    assert sf.token_calls == 2


def test_versions_need_no_auth_and_resources_do(sf, api):
    versions = requests.get(f"{sf.base_url}/services/data/").json()
    assert versions[-1] == {"label": "Spring '26", "url": "/services/data/v66.0",
                            "version": "66.0"}
    assert requests.get(data_url(sf)).json() == EXPIRED
    got = api.get(data_url(sf))
    assert got.status_code == 200
    assert got.json()["query"] == "/services/data/v66.0/query"
    assert got.json()["sobjects"] == "/services/data/v66.0/sobjects"
    assert got.headers["Sforce-Limit-Info"] == "api-usage=1/15000"
    future = api.get(f"{sf.base_url}/services/data/v99.0/")
    assert future.status_code == 404 and future.json()[0]["errorCode"] == "NOT_FOUND"


def test_userinfo_and_identity(sf, api):
    info = api.get(f"{sf.base_url}/services/oauth2/userinfo")
    assert info.status_code == 200
    body = info.json()
    assert body["organization_id"] == sf.org_id and body["user_id"] == sf.user_id
    assert body["preferred_username"] == sf.username
    identity = api.get(body["sub"])
    assert identity.status_code == 200 and identity.json()["organization_id"] == sf.org_id
    assert requests.get(f"{sf.base_url}/services/oauth2/userinfo").status_code == 401


def test_organization_query(sf, api):
    got = org_query(api, sf)
    assert got.status_code == 200
    assert got.json() == {"totalSize": 1, "done": True, "records": [{
        "attributes": {"type": "Organization",
                       "url": f"/services/data/v66.0/sobjects/Organization/{sf.org_id}"},
        "Name": "Sandbox Org"}]}
    both = org_query(api, sf, "select id, name from organization limit 1").json()
    assert both["records"][0]["Id"] == sf.org_id and both["records"][0]["Name"] == "Sandbox Org"
    # (before the data side, "SELECT Id FROM Account" was refused here; now it is a real query)
    for bad in ("SELECT Id FROM Account WHERE", "SELECT Name, Foo FROM Organization",
                "DELETE FROM Organization", "SELECT Name FROM Organization WHERE Id = '1'"):
        refused = org_query(api, sf, bad)
        assert refused.status_code == 400 and refused.json()[0]["errorCode"] == "MALFORMED_QUERY"
    missing = api.get(data_url(sf, "query"))
    assert missing.status_code == 400 and missing.json()[0]["errorCode"] == "MALFORMED_QUERY"


def test_org_name_and_version_are_settings(clock):
    with SalesforceSandbox(clock=clock, org_name="Acme Ltd", api_version="v65.0") as sf:
        token = get_token(sf).json()["access_token"]
        got = requests.get(f"{sf.base_url}/services/data/v65.0/query",
                           params={"q": "SELECT Name FROM Organization"},
                           headers={"Authorization": f"OAuth {token}"})
        assert got.json()["records"][0]["Name"] == "Acme Ltd"
        assert requests.get(f"{sf.base_url}/services/data").json()[-1]["version"] == "65.0"


def test_sessions_die_after_inactivity_not_while_used(sf, clock, api):
    for _ in range(3):
        clock.advance(7000)  # under two hours between calls: the session stays alive
        assert org_query(api, sf).status_code == 200
    clock.advance(7200)
    dead = org_query(api, sf)
    assert dead.status_code == 401 and dead.json() == EXPIRED
    assert dead.headers["WWW-Authenticate"] == "Token"
    api.headers["Authorization"] = "Bearer " + get_token(sf).json()["access_token"]
    assert org_query(api, sf).status_code == 200
    sf.expire_access_tokens()
    assert org_query(api, sf).json() == EXPIRED
    assert sf.token_calls == 2


def test_guard_failures(sf):
    assert requests.get(data_url(sf)).status_code == 401
    forged = requests.get(data_url(sf), headers={"Authorization": "Bearer 00Dforged!x"})
    assert forged.status_code == 401 and forged.json() == EXPIRED
    scheme = requests.get(data_url(sf), headers={"Authorization": "Basic abc"})
    assert scheme.status_code == 401
    nowhere = requests.get(data_url(sf, "nothing/here"))
    assert nowhere.status_code == 404 and nowhere.json()[0]["errorCode"] == "NOT_FOUND"
    wrong_method = requests.post(data_url(sf, "query"))
    assert wrong_method.status_code == 405


def test_fail_next_and_limits(clock):
    with SalesforceSandbox(clock=clock, api_limit=4) as sf:
        s = requests.Session()
        s.headers["Authorization"] = "Bearer " + get_token(sf).json()["access_token"]
        sf.fail_next(1)
        failed = s.get(data_url(sf))
        assert failed.status_code == 503 and failed.json()[0]["errorCode"] == \
            "SERVER_UNAVAILABLE"
        sf.fail_next(1, status=500, body={"oops": True})
        assert s.get(data_url(sf)).json() == {"oops": True}
        assert get_token(sf).status_code == 200  # token calls are not failed
        limits = s.get(data_url(sf, "limits")).json()
        assert limits == {"DailyApiRequests": {"Max": 4, "Remaining": 3}}
        assert [s.get(data_url(sf)).status_code for _ in range(4)] == [200, 200, 200, 403]
        over = s.get(data_url(sf))
        assert over.json() == [{"message": "TotalRequests Limit exceeded.",
                                "errorCode": "REQUEST_LIMIT_EXCEEDED"}]
        assert over.headers["Sforce-Limit-Info"] == "api-usage=4/4"
        s.close()


def test_random_429_knob_is_salesforces_403(clock):
    with SalesforceSandbox(Knobs(rate_429=1.0), clock=clock) as sf:
        got = requests.get(data_url(sf))
        assert got.status_code == 403
        assert got.json()[0]["errorCode"] == "REQUEST_LIMIT_EXCEEDED"
        assert "Retry-After" not in got.headers


# -- the data side (§3-9) --------------------------------------------------------------------
def sobj(sf, rest=""):
    return data_url(sf, "sobjects/" + rest)


def errors_of(reply):
    return [e["errorCode"] for e in reply.json()]


def test_crud_round_trip(sf, api, clock):
    raw = ('{"Name": "Northwind Components Ltd", "BillingCity": "Leeds", "AnnualRevenue": '
           '1500.10, "NumberOfEmployees": 12, "FreshBooks_Client_Id__c": "C-1001"}')
    created = api.post(sobj(sf, "Account"), data=raw,
                       headers={"Content-Type": "application/json"})
    assert created.status_code == 201
    body = created.json()
    assert set(body) == {"id", "success", "errors"} and body["success"] and body["errors"] == []
    rid = body["id"]
    assert len(rid) == 18 and rid.startswith("001") and sf18(rid[:15]) == rid
    assert created.headers["Location"] == f"/services/data/v66.0/sobjects/Account/{rid}"
    got = api.get(sobj(sf, f"Account/{rid}"))
    assert got.status_code == 200
    record = got.json()
    assert record["attributes"] == {"type": "Account",
                                    "url": f"/services/data/v66.0/sobjects/Account/{rid}"}
    assert record["Id"] == rid and record["Name"] == "Northwind Components Ltd"
    assert record["Phone"] is None and record["OwnerId"] == sf.user_id
    assert '"AnnualRevenue": 1500.10' in got.text  # exact, not 1500.0999...
    assert record["BillingAddress"]["city"] == "Leeds"
    assert record["LastModifiedDate"] == "2026-01-05T12:00:00.000+0000"
    assert record["SystemModstamp"] == record["LastModifiedDate"] == record["CreatedDate"]
    # 15-character ids and any case of the 18-character one work too
    assert api.get(sobj(sf, f"Account/{rid[:15]}")).json()["Id"] == rid
    assert api.get(sobj(sf, f"Account/{rid[:15]}{rid[15:].lower()}")).status_code == 200
    some = api.get(sobj(sf, f"Account/{rid}"), params={"fields": "name,Phone"}).json()
    assert list(some) == ["attributes", "Name", "Phone"]
    clock.advance(60)
    patched = api.patch(sobj(sf, f"Account/{rid}"), json={"Phone": "+44 113 496 0000"})
    assert patched.status_code == 204 and patched.content == b""
    row = sf.rows("Account")[0]
    assert row["Phone"] == "+44 113 496 0000" and row["AnnualRevenue"] == Decimal("1500.10")
    assert row["LastModifiedDate"] == "2026-01-05T12:01:00.000+0000"
    assert row["CreatedDate"] == "2026-01-05T12:00:00.000+0000"
    by_ext = api.get(sobj(sf, "Account/FreshBooks_Client_Id__c/c-1001"))  # case-insensitive
    assert by_ext.status_code == 200 and by_ext.json()["Id"] == rid
    deleted = api.delete(sobj(sf, f"Account/{rid}"))
    assert deleted.status_code == 204 and sf.rows("Account") == []
    gone = api.get(sobj(sf, f"Account/{rid}"))
    assert gone.status_code == 404 and errors_of(gone) == ["ENTITY_IS_DELETED"]
    assert api.delete(sobj(sf, f"Account/{rid}")).status_code == 404
    assert errors_of(api.get(sobj(sf, "Account/001SB0000000zzz"))) == ["NOT_FOUND"]
    assert errors_of(api.get(sobj(sf, "Nope__c/001SB0000000zzz"))) == ["NOT_FOUND"]


def test_ids_prefixes_and_stamps_strictly_increase(sf, api):
    acct = sf.add_account("Acme")
    opp = sf.add_opportunity(acct["Id"], "Deal", "Prospecting", "2026-03-20", 10)
    order = sf.add_order(acct["Id"], "2026-03-01")
    assert (acct["Id"][:3], opp["Id"][:3], order["Id"][:3]) == ("001", "006", "801")
    stamps = [acct["SystemModstamp"], opp["SystemModstamp"], order["SystemModstamp"]]
    assert stamps == sorted(set(stamps))  # the FakeClock stood still, stamps still rise
    assert stamps[1] == "2026-01-05T12:00:00.001+0000"
    assert order["OrderNumber"] == "00000100" and order["StatusCode"] == "Draft"
    assert opp["IsClosed"] is False and opp["Probability"] == Decimal(10)
    won = api.patch(sobj(sf, f"Opportunity/{opp['Id']}"), json={"StageName": "Closed Won"})
    assert won.status_code == 204
    row = sf.rows("Opportunity")[0]
    assert (row["IsClosed"], row["IsWon"], row["Probability"]) == (True, True, Decimal(100))
    assert row["ForecastCategoryName"] == "Closed"
    assert row["LastModifiedDate"] > stamps[2]


def test_upsert_created_updated_and_multiple(sf, api):
    url = sobj(sf, "Account/FreshBooks_Client_Id__c/C-1001")
    body = {"Name": "Northwind Components Ltd", "BillingStreet": "12 Harbour Rd",
            "Website": "https://northwind.example"}
    first = api.patch(url, json=body)
    assert first.status_code == 201
    rid = first.json()["id"]
    assert first.json() == {"id": rid, "success": True, "errors": [], "created": True}
    again = api.patch(url, json=body | {"Phone": "+44 113 496 0000"})
    assert again.status_code == 200
    assert again.json() == {"id": rid, "success": True, "errors": [], "created": False}
    assert len(sf.rows("Account")) == 1
    assert sf.rows("Account")[0]["FreshBooks_Client_Id__c"] == "C-1001"
    assert sf.rows("Account")[0]["Phone"] == "+44 113 496 0000"
    # the external id field may not be in the body (§4), nor Id
    twice = api.patch(url, json=body | {"FreshBooks_Client_Id__c": "C-1001"})
    assert twice.status_code == 400 and errors_of(twice) == ["INVALID_FIELD"]
    with_id = api.patch(url, json=body | {"Id": rid})
    assert errors_of(with_id) == ["INVALID_FIELD_FOR_INSERT_UPDATE"]
    # a field that is no external id, or no field at all: 404
    for field in ("Name", "Nope__c"):
        miss = api.patch(sobj(sf, f"Account/{field}/x"), json=body)
        assert miss.status_code == 404 and miss.json() == [
            {"errorCode": "NOT_FOUND", "message": "The requested resource does not exist"}]
    # several matches (a non-unique external id): 300 with the record URLs, nothing written
    sf.add_field("Account", "Legacy_Id__c", external_id=True, unique=False)
    a = sf.add_account("A", Legacy_Id__c="L-1")
    b = sf.add_account("B", Legacy_Id__c="L-1")
    many = api.patch(sobj(sf, "Account/Legacy_Id__c/L-1"), json={"Name": "C"})
    assert many.status_code == 300
    assert many.json() == [f"/services/data/v66.0/sobjects/Account/{a['Id']}",
                           f"/services/data/v66.0/sobjects/Account/{b['Id']}"]
    assert api.get(sobj(sf, "Account/Legacy_Id__c/L-1")).status_code == 300
    assert sorted(r["Name"] for r in sf.rows("Account")) == ["A", "B", "Northwind Components Ltd"]
    # Id as the key: update only
    by_id = api.patch(sobj(sf, f"Account/Id/{rid}"), json={"Fax": "1"})
    assert by_id.status_code == 200 and by_id.json()["created"] is False


def test_upsert_before_v46_answers_204(clock):
    with SalesforceSandbox(clock=clock, api_version="v45.0") as sf:
        s = requests.Session()
        s.headers["Authorization"] = "Bearer " + get_token(sf).json()["access_token"]
        url = f"{sf.base_url}/services/data/v45.0/sobjects/Account/FreshBooks_Client_Id__c/C-1"
        created = s.patch(url, json={"Name": "X"})
        assert created.status_code == 201 and "created" not in created.json()
        updated = s.patch(url, json={"Name": "Y"})
        assert updated.status_code == 204 and updated.content == b""
        s.close()


def test_opportunity_by_parent_external_id_and_order_rules(sf, api):
    sf.add_account("Northwind", FreshBooks_Client_Id__c="C-1001")
    opp = api.patch(sobj(sf, "Opportunity/FreshBooks_Invoice_Id__c/INV-0173"), json={
        "Name": "Northwind - INV-0173", "Account": {"FreshBooks_Client_Id__c": "C-1001"},
        "Amount": 1500.00, "CloseDate": "2026-03-20", "StageName": "Closed Won"})
    assert opp.status_code == 201
    row = sf.rows("Opportunity")[0]
    assert row["AccountId"] == sf.rows("Account")[0]["Id"] and row["IsWon"] is True
    assert row["Amount"] == Decimal("1500.00")
    lost = api.patch(sobj(sf, "Opportunity/FreshBooks_Invoice_Id__c/INV-0174"), json={
        "Name": "x", "Account": {"FreshBooks_Client_Id__c": "C-9999"},
        "CloseDate": "2026-03-20", "StageName": "Prospecting"})
    assert lost.status_code == 400 and lost.json()[0]["errorCode"] == "INVALID_FIELD"
    assert "Foreign key external ID: C-9999 not found" in lost.json()[0]["message"]
    acct = sf.rows("Account")[0]["Id"]
    active = api.post(sobj(sf, "Order"), json={"AccountId": acct, "EffectiveDate": "2026-03-01",
                                                "Status": "Activated"})
    assert errors_of(active) == ["FIELD_INTEGRITY_EXCEPTION"]
    draft = api.post(sobj(sf, "Order"), json={"AccountId": acct, "EffectiveDate": "2026-03-01",
                                               "Status": "Draft"})
    assert draft.status_code == 201 and draft.json()["id"].startswith("801")
    activate = api.patch(sobj(sf, f"Order/{draft.json()['id']}"), json={"Status": "Activated"})
    assert activate.status_code == 204 and sf.rows("Order")[0]["StatusCode"] == "Activated"
    # the account cannot go while an order points at it; Invoice cannot be created
    assert errors_of(api.delete(sobj(sf, f"Account/{acct}"))) == ["DELETE_FAILED"]
    invoice = api.post(sobj(sf, "Invoice"), json={"Description": "x"})
    assert invoice.status_code == 400 and errors_of(invoice) == ["INVALID_TYPE"]


WRITE_ERRORS = [
    ("Account", {"Name": "A", "Foo__c": 1}, "INVALID_FIELD", ["Foo__c"]),
    ("Account", {"Phone": "1"}, "REQUIRED_FIELD_MISSING", ["Name"]),
    ("Account", {"Name": "A", "IsDeleted": True}, "INVALID_FIELD_FOR_INSERT_UPDATE",
     ["IsDeleted"]),
    ("Account", {"Name": "A", "Id": "001SB0000000001"}, "INVALID_FIELD_FOR_INSERT_UPDATE",
     ["Id"]),
    ("Account", {"Name": "x" * 256}, "STRING_TOO_LONG", ["Name"]),
    ("Opportunity", {"Name": "O"}, "REQUIRED_FIELD_MISSING",
     ["StageName", "CloseDate"]),
    ("Opportunity", {"Name": "O", "StageName": "Won-ish", "CloseDate": "2026-03-01"},
     "INVALID_OR_NULL_FOR_RESTRICTED_PICKLIST", ["StageName"]),
    ("Opportunity", {"Name": "O", "StageName": "Prospecting", "CloseDate": "2026-03-01",
                     "AccountId": "001SB0000000zzz"}, "INVALID_CROSS_REFERENCE_KEY",
     ["AccountId"]),
    ("Opportunity", {"Name": "O", "StageName": "Prospecting", "CloseDate": "2026-03-01",
                     "AccountId": "not-an-id"}, "MALFORMED_ID", ["AccountId"]),
    ("Opportunity", {"Name": "O", "StageName": "Prospecting", "CloseDate": "01/03/2026"},
     "JSON_PARSER_ERROR", ["CloseDate"]),
    ("Opportunity", {"Name": "O", "StageName": "Prospecting", "CloseDate": "2026-02-30"},
     "JSON_PARSER_ERROR", ["CloseDate"]),
    ("Opportunity", {"Name": "O", "StageName": "Prospecting", "CloseDate": "2026-03-01",
                     "Amount": "1500.00"}, "JSON_PARSER_ERROR", None),
    ("Opportunity", {"Name": "O", "StageName": "Closed Won", "CloseDate": "2026-03-01",
                     "IsWon": True}, "INVALID_FIELD_FOR_INSERT_UPDATE", ["IsWon"]),
    ("Order", {"AccountId": None, "EffectiveDate": "2026-03-01", "Status": "Draft"},
     "REQUIRED_FIELD_MISSING", ["AccountId"]),
]


def test_write_errors(sf, api):  # one sandbox for all cases: each start/stop costs 50 ms
    for obj, body, code, fields in WRITE_ERRORS:
        got = api.post(sobj(sf, obj), json=body)
        assert got.status_code == 400, (body, got.text)
        [error] = got.json()
        assert error["errorCode"] == code and error["message"], body
        assert error.get("fields") == fields, body
        assert sf.rows(obj) == []


def test_duplicate_value_and_deleted_parent(sf, api):
    acct = sf.add_account("A", FreshBooks_Client_Id__c="C-1")
    dup = api.post(sobj(sf, "Account"), json={"Name": "B", "FreshBooks_Client_Id__c": "c-1"})
    assert dup.status_code == 400
    assert dup.json() == [{"message": "duplicate value found: FreshBooks_Client_Id__c duplicates"
                           f" value on record with id: {acct['Id'][:15]}",
                           "errorCode": "DUPLICATE_VALUE", "fields": []}]
    other = sf.add_account("B", FreshBooks_Client_Id__c="C-2")
    clash = api.patch(sobj(sf, f"Account/{other['Id']}"), json={"FreshBooks_Client_Id__c": "C-1"})
    assert errors_of(clash) == ["DUPLICATE_VALUE"]
    assert api.delete(sobj(sf, f"Account/{acct['Id']}")).status_code == 204
    # the deleted record frees its value; a lookup to it is refused
    assert api.post(sobj(sf, "Account"), json={"Name": "C", "FreshBooks_Client_Id__c": "C-1"}
                    ).status_code == 201
    orphan = api.post(sobj(sf, "Opportunity"), json={
        "Name": "O", "StageName": "Prospecting", "CloseDate": "2026-03-01",
        "AccountId": acct["Id"]})
    assert errors_of(orphan) == ["ENTITY_IS_DELETED"]


def test_unknown_field_and_missing_external_id_field(sf, api):
    sf.remove_field("Opportunity", "FreshBooks_Invoice_Id__c")
    sf.add_account("A")
    upsert = api.patch(sobj(sf, "Opportunity/FreshBooks_Invoice_Id__c/INV-1"), json={
        "Name": "O", "StageName": "Prospecting", "CloseDate": "2026-03-01"})
    assert upsert.status_code == 404 and errors_of(upsert) == ["NOT_FOUND"]
    create = api.post(sobj(sf, "Opportunity"), json={
        "Name": "O", "StageName": "Prospecting", "CloseDate": "2026-03-01",
        "FreshBooks_Invoice_Id__c": "INV-1"})
    assert create.status_code == 400 and create.json() == [{
        "message": "No such column 'FreshBooks_Invoice_Id__c' on sobject of type Opportunity",
        "errorCode": "INVALID_FIELD", "fields": ["FreshBooks_Invoice_Id__c"]}]
    names = [f["name"] for f in api.get(sobj(sf, "Opportunity/describe")).json()["fields"]]
    assert "FreshBooks_Invoice_Id__c" not in names
    query = api.get(data_url(sf, "query"), params={
        "q": "SELECT Id FROM Opportunity WHERE FreshBooks_Invoice_Id__c = 'INV-1'"})
    assert query.status_code == 400 and errors_of(query) == ["INVALID_FIELD"]
    sf.add_field("Opportunity", "FreshBooks_Invoice_Id__c", external_id=True)
    assert api.patch(sobj(sf, "Opportunity/FreshBooks_Invoice_Id__c/INV-1"), json={
        "Name": "O", "StageName": "Prospecting", "CloseDate": "2026-03-01"}).status_code == 201


def test_describe(sf, api):
    got = api.get(sobj(sf, "Opportunity/describe"))
    assert got.status_code == 200
    body = got.json()
    assert body["name"] == "Opportunity" and body["keyPrefix"] == "006"
    fields = {f["name"]: f for f in body["fields"]}
    for f in fields.values():
        assert {"name", "type", "externalId", "nillable", "createable", "updateable",
                "picklistValues"} <= set(f)
    stage = fields["StageName"]
    assert stage["type"] == "picklist" and not stage["nillable"] and stage["restrictedPicklist"]
    values = [v["value"] for v in stage["picklistValues"]]
    assert {"Prospecting", "Closed Won", "Closed Lost"} <= set(values)
    ext = fields["FreshBooks_Invoice_Id__c"]
    assert ext["externalId"] and ext["unique"] and ext["type"] == "string" and ext["custom"]
    assert fields["IsWon"]["createable"] is False and fields["IsWon"]["updateable"] is False
    assert fields["CloseDate"]["type"] == "date" and fields["Amount"]["type"] == "currency"
    assert fields["AccountId"]["referenceTo"] == ["Account"]
    assert fields["AccountId"]["relationshipName"] == "Account"
    required = {n for n, f in fields.items()
                if f["createable"] and not f["nillable"] and not f["defaultedOnCreate"]}
    assert required == {"Name", "StageName", "CloseDate"}
    account = api.get(sobj(sf, "Account/describe")).json()
    assert {f["name"] for f in account["fields"]} >= {"Name", "FreshBooks_Client_Id__c"}
    assert api.get(sobj(sf, "Nope__c/describe")).status_code == 404
    listing = api.get(data_url(sf, "sobjects")).json()
    assert {"Account", "Opportunity", "Order", "FreshBooks_Invoice__c"} <= {
        o["name"] for o in listing["sobjects"]}


def test_collections_create_update_all_or_none(sf, api):
    url = data_url(sf, "composite/sobjects")
    ok = {"attributes": {"type": "Account"}, "Name": "Good"}
    bad = {"attributes": {"type": "Account"}, "Phone": "1"}
    partial = api.post(url, json={"allOrNone": False, "records": [ok, bad]})
    assert partial.status_code == 200
    first, second = partial.json()
    assert first["success"] and first["errors"] == [] and first["id"].startswith("001")
    assert second == {"success": False, "errors": [{
        "statusCode": "REQUIRED_FIELD_MISSING", "message": "Required fields are missing: [Name]",
        "fields": ["Name"]}]}
    assert [r["Name"] for r in sf.rows("Account")] == ["Good"]
    usage = sf.api_usage
    strict = api.post(url, json={"allOrNone": True, "records": [ok, bad]})
    assert strict.status_code == 200 and sf.api_usage == usage + 1  # one call for the batch
    assert strict.json()[0] == {"success": False, "errors": [{
        "statusCode": "ALL_OR_NONE_OPERATION_ROLLED_BACK",
        "message": "Record rolled back because not all records were valid and the request "
                   "was using AllOrNone header", "fields": []}]}
    assert strict.json()[1]["errors"][0]["statusCode"] == "REQUIRED_FIELD_MISSING"
    assert [r["Name"] for r in sf.rows("Account")] == ["Good"]
    mixed = api.post(url, json={"records": [
        ok, {"attributes": {"type": "Opportunity"}, "Name": "O", "AccountId": first["id"],
             "StageName": "Closed Won", "CloseDate": "2026-03-20", "Amount": 1500.00}]})
    assert all(r["success"] for r in mixed.json())
    update = api.patch(url, json={"allOrNone": False, "records": [
        {"attributes": {"type": "Account"}, "id": first["id"], "Phone": "42"},
        {"attributes": {"type": "Account"}, "id": first["id"], "Nope__c": "x"},
        {"attributes": {"type": "Account"}, "Phone": "43"}]})
    results = update.json()
    assert results[0] == {"id": first["id"], "success": True, "errors": []}
    assert results[1]["id"] == first["id"] and \
        results[1]["errors"][0]["statusCode"] == "INVALID_FIELD"
    assert results[2]["errors"][0]["statusCode"] == "MISSING_ARGUMENT"
    assert sf.rows("Account")[0]["Phone"] == "42"
    undone = api.patch(url, json={"allOrNone": True, "records": [
        {"attributes": {"type": "Account"}, "id": first["id"], "Phone": "44"},
        {"attributes": {"type": "Account"}, "id": first["id"], "Name": None}]}).json()
    assert undone[0]["id"] == first["id"] and undone[0]["success"] is False
    assert undone[0]["errors"][0]["statusCode"] == "ALL_OR_NONE_OPERATION_ROLLED_BACK"
    assert undone[1]["errors"][0]["statusCode"] == "REQUIRED_FIELD_MISSING"
    assert sf.rows("Account")[0]["Phone"] == "42"
    too_many = api.post(url, json={"records": [ok] * 201})
    assert too_many.status_code == 400 and errors_of(too_many) == ["EXCEEDED_ID_LIMIT"]
    untyped = api.post(url, json={"records": [{"Name": "x"}]})
    assert untyped.status_code == 400 and errors_of(untyped) == ["INVALID_TYPE"]
    ids = ",".join(r["id"] for r in mixed.json())
    deleted = api.delete(url, params={"ids": ids + ",001SB0000000zzz", "allOrNone": "false"})
    assert [r["success"] for r in deleted.json()] == [True, True, False]
    assert len(sf.rows("Account")) == 1 and sf.rows("Opportunity") == []


def test_collections_upsert(sf, api):
    sf.add_account("Northwind", FreshBooks_Client_Id__c="C-1001")
    url = data_url(sf, "composite/sobjects/FreshBooks_Invoice__c/FreshBooks_Invoice_Id__c")
    record = {"attributes": {"type": "FreshBooks_Invoice__c"},
              "FreshBooks_Invoice_Id__c": "INV-0173", "Name": "INV-0173",
              "Account__r": {"FreshBooks_Client_Id__c": "C-1001"},
              "Invoice_Date__c": "2026-03-02", "Due_Date__c": "2026-04-01",
              "Amount__c": 1500.00, "Status__c": "Sent"}
    orphan = {"attributes": {"type": "FreshBooks_Invoice__c"},
              "FreshBooks_Invoice_Id__c": "INV-0174", "Name": "INV-0174",
              "Account__r": {"FreshBooks_Client_Id__c": "C-9999"}, "Amount__c": 360.00}
    got = api.patch(url, json={"allOrNone": False, "records": [record, orphan]})
    assert got.status_code == 200
    first, second = got.json()
    assert first["success"] and first["created"] is True and first["id"].startswith("a01")
    assert second == {"success": False, "errors": [{
        "statusCode": "INVALID_FIELD", "fields": [],
        "message": "Foreign key external ID: C-9999 not found for field "
                   "FreshBooks_Client_Id__c in entity Account"}]}
    again = api.patch(url, json={"records": [record | {"Amount__c": 1600}]}).json()
    assert again == [{"id": first["id"], "success": True, "errors": [], "created": False}]
    [row] = sf.rows("FreshBooks_Invoice__c")
    assert row["Amount__c"] == Decimal(1600) and row["Account__c"] == sf.rows("Account")[0]["Id"]
    twice = api.patch(url, json={"records": [orphan | {"Account__r": None}] * 2}).json()
    assert [r["errors"][0]["statusCode"] for r in twice] == ["DUPLICATE_EXTERNAL_ID"] * 2
    strict = api.patch(url, json={"allOrNone": True, "records": [
        {"attributes": {"type": "FreshBooks_Invoice__c"}, "FreshBooks_Invoice_Id__c": "INV-1"},
        orphan]}).json()
    assert strict[0]["errors"][0]["statusCode"] == "ALL_OR_NONE_OPERATION_ROLLED_BACK"
    assert len(sf.rows("FreshBooks_Invoice__c")) == 1
    wrong_type = api.patch(url, json={"records": [{"attributes": {"type": "Account"},
                                                   "FreshBooks_Invoice_Id__c": "X"}]})
    assert wrong_type.status_code == 400
    not_ext = api.patch(data_url(sf, "composite/sobjects/Account/Name"),
                        json={"records": []})
    assert not_ext.status_code == 404


def test_composite_with_references(sf, api):
    base = "/services/data/v66.0"
    got = api.post(data_url(sf, "composite"), json={"allOrNone": True, "compositeRequest": [
        {"method": "POST", "url": f"{base}/sobjects/Account", "referenceId": "refAcct",
         "body": {"Name": "Acme"}},
        {"method": "POST", "url": f"{base}/sobjects/Opportunity", "referenceId": "refOpp",
         "body": {"Name": "Deal", "AccountId": "@{refAcct.id}", "StageName": "Prospecting",
                  "CloseDate": "2026-03-01"}},
        {"method": "GET", "url": f"{base}/sobjects/Opportunity/@{{refOpp.id}}?fields=AccountId",
         "referenceId": "read"}]})
    assert got.status_code == 200
    results = got.json()["compositeResponse"]
    assert [r["httpStatusCode"] for r in results] == [201, 201, 200]
    assert results[2]["body"]["AccountId"] == results[0]["body"]["id"]
    failing = api.post(data_url(sf, "composite"), json={"allOrNone": True, "compositeRequest": [
        {"method": "POST", "url": f"{base}/sobjects/Account", "referenceId": "a",
         "body": {"Name": "Rolled back"}},
        {"method": "POST", "url": f"{base}/sobjects/Account", "referenceId": "b",
         "body": {"Phone": "1"}}]}).json()["compositeResponse"]
    assert failing[0]["body"][0]["errorCode"] == "PROCESSING_HALTED"
    assert failing[1]["body"][0]["errorCode"] == "REQUIRED_FIELD_MISSING"
    assert [r["Name"] for r in sf.rows("Account")] == ["Acme"]


def soql(api, sf, q, headers=None):
    return api.get(data_url(sf, "query"), params={"q": q}, headers=headers)


def test_soql_where_in_order_limit(sf, api, clock):
    a = sf.add_account("Beta", FreshBooks_Client_Id__c="C-2", AnnualRevenue=Decimal("10.5"))
    sf.add_account("alpha", FreshBooks_Client_Id__c="C-1")
    sf.add_account("Gamma", FreshBooks_Client_Id__c="C-3", Phone="1")
    sf.add_account("Delta")
    got = soql(api, sf, "SELECT Id, Name, FreshBooks_Client_Id__c FROM Account "
                        "WHERE FreshBooks_Client_Id__c IN ('C-1','c-2', 'C-3') "
                        "AND FreshBooks_Client_Id__c != null ORDER BY Name LIMIT 2")
    assert got.status_code == 200
    body = got.json()
    assert body["totalSize"] == 2 and body["done"] is True
    assert [r["Name"] for r in body["records"]] == ["alpha", "Beta"]
    assert body["records"][1] == {
        "attributes": {"type": "Account",
                       "url": f"/services/data/v66.0/sobjects/Account/{a['Id']}"},
        "Id": a["Id"], "Name": "Beta", "FreshBooks_Client_Id__c": "C-2"}
    assert got.headers["Sforce-Limit-Info"].startswith("api-usage=")

    def names(q):
        reply = soql(api, sf, q)
        assert reply.status_code == 200, reply.text
        return [r.get("Name") for r in reply.json()["records"]]
    assert names("select name from account where name = 'BETA'") == ["Beta"]
    assert names("SELECT Name FROM Account WHERE Phone = null ORDER BY Name DESC") == \
        ["Delta", "Beta", "alpha"]
    assert names("SELECT Name FROM Account WHERE AnnualRevenue > 10 AND Name LIKE 'b%'") == \
        ["Beta"]
    assert names("SELECT Name FROM Account ORDER BY FreshBooks_Client_Id__c NULLS LAST") == \
        ["alpha", "Beta", "Gamma", "Delta"]
    assert names(f"SELECT Name FROM Account WHERE Id = '{a['Id'][:15]}'") == ["Beta"]
    assert names("SELECT Name FROM Account WHERE FreshBooks_Client_Id__c NOT IN ('C-1') "
                 "ORDER BY Name LIMIT 2 OFFSET 1") == ["Delta", "Gamma"]
    clock.advance(3600)
    sf.add_opportunity(a["Id"], "Deal", "Closed Won", "2026-03-20", 1500)
    assert names("SELECT Name FROM Opportunity WHERE LastModifiedDate > 2026-01-05T12:30:00Z "
                 "AND CloseDate >= 2026-03-01 AND IsWon = true") == ["Deal"]
    nested = soql(api, sf, "SELECT Name, Account.Name, Account.FreshBooks_Client_Id__c "
                           "FROM Opportunity WHERE Account.FreshBooks_Client_Id__c = 'C-2'")
    record = nested.json()["records"][0]
    assert record["Account"]["Name"] == "Beta"
    assert record["Account"]["FreshBooks_Client_Id__c"] == "C-2"
    counted = soql(api, sf, "SELECT COUNT() FROM Account WHERE Name != 'Delta'").json()
    assert counted == {"totalSize": 3, "done": True, "records": []}


SOQL_ERRORS = [
    ("SELECT Nope FROM Account", "INVALID_FIELD"),
    ("SELECT Id FROM Nope__c", "INVALID_TYPE"),
    ("SELECT Id FROM Account WHERE Name = 'a' OR Name = 'b'", "MALFORMED_QUERY"),
    ("SELECT Id FROM Account WHERE Name = 'a' LIMIT", "MALFORMED_QUERY"),
    ("SELECT Id FROM Opportunity WHERE CloseDate = '2026-01-01'", "INVALID_FIELD"),
    ("SELECT Id FROM Account WHERE Name = 5", "INVALID_FIELD"),
    ("SELECT Id FROM Account WHERE Id = 'nope'", "INVALID_QUERY_FILTER_OPERATOR"),
]


def test_soql_errors(sf, api):
    for q, code in SOQL_ERRORS:
        got = soql(api, sf, q)
        assert got.status_code == 400 and errors_of(got) == [code], q


def test_soql_paging_and_query_all(sf, api):
    for n in range(450):
        sf.add_account(f"Acct {n:03d}")
    url = data_url(sf, "query")
    everything = api.get(url, params={"q": "SELECT Id, Name FROM Account"}).json()
    assert everything["done"] is True and len(everything["records"]) == 450  # batch 2000
    first = api.get(url, params={"q": "SELECT Id, Name FROM Account ORDER BY Name"},
                    headers={"Sforce-Query-Options": "batchSize=200"}).json()
    assert first["totalSize"] == 450 and first["done"] is False
    assert len(first["records"]) == 200
    assert re.fullmatch(r"/services/data/v66\.0/query/01g\w+-200", first["nextRecordsUrl"])
    names = [r["Name"] for r in first["records"]]
    page = first
    while not page["done"]:
        page = api.get(sf.base_url + page["nextRecordsUrl"]).json()
        names += [r["Name"] for r in page["records"]]
    assert names == [f"Acct {n:03d}" for n in range(450)]
    assert "nextRecordsUrl" not in page
    stale = api.get(sf.base_url + first["nextRecordsUrl"])
    assert stale.status_code == 400 and errors_of(stale) == ["INVALID_QUERY_LOCATOR"]
    victim = sf.rows("Account")[0]["Id"]
    assert api.delete(sobj(sf, f"Account/{victim}")).status_code == 204
    q = {"q": f"SELECT Id, IsDeleted FROM Account WHERE Id = '{victim}'"}
    assert api.get(url, params=q).json()["totalSize"] == 0
    assert api.get(data_url(sf, "queryAll"), params=q).json()["records"][0]["IsDeleted"] is True


def test_data_calls_count_against_the_limit(clock):
    with SalesforceSandbox(clock=clock, api_limit=3) as sf:
        s = requests.Session()
        s.headers["Authorization"] = "Bearer " + get_token(sf).json()["access_token"]
        assert s.post(sobj(sf, "Account"), json={"Name": "A"}).status_code == 201
        assert s.get(sobj(sf, "Account/describe")).headers["Sforce-Limit-Info"] == \
            "api-usage=2/3"
        assert s.get(data_url(sf, "query"), params={"q": "SELECT Id FROM Account"}
                     ).status_code == 200
        over = s.post(sobj(sf, "Account"), json={"Name": "B"})
        assert over.status_code == 403 and errors_of(over) == ["REQUEST_LIMIT_EXCEEDED"]
        assert len(sf.rows("Account")) == 1
        s.close()
