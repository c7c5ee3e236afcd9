"""The QuickBooks Online emulator over real loopback sockets, checked against api/quickbooks.md."""

from __future__ import annotations

import base64
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from urllib.parse import parse_qs, urlsplit

import pytest
import requests

from mlconnector.clock import FakeClock
from mlconnector.sandbox.quickbooks import QuickBooksSandbox, parse_time

REDIRECT = "https://localhost:8765/callback"
PACIFIC_NOON = datetime(2026, 3, 2, 20, 0, tzinfo=UTC)  # 12:00 at -08:00


@pytest.fixture
def clock():
    return FakeClock(PACIFIC_NOON)


@pytest.fixture
def qb(clock):
    with QuickBooksSandbox(clock=clock) as sandbox:
        yield sandbox


def basic(qb, secret=None):
    pair = f"{qb.client_id}:{secret or qb.client_secret}".encode()
    return {"Authorization": "Basic " + base64.b64encode(pair).decode(),
            "Accept": "application/json"}


def refresh(qb, token, *, secret=None, hard=False):
    headers = basic(qb, secret)
    if hard:
        headers["x-include-refresh-token-hard-expires-in"] = "true"
    return requests.post(f"{qb.auth_url}/oauth2/v1/tokens/bearer", headers=headers,
                         data={"grant_type": "refresh_token", "refresh_token": token})


class Api(requests.Session):
    def __init__(self, qb, token):
        super().__init__()
        self.qb = qb
        self.headers["Authorization"] = f"Bearer {token}"
        self.headers["Accept"] = "application/json"

    def url(self, path, realm=None):
        return f"{self.qb.base_url}/v3/company/{realm or self.qb.realm_id}/{path}"

    def query(self, sql, *, post=False):
        if post:
            return self.post(self.url("query"), data=sql.encode(),
                             headers={"Content-Type": "application/text"},
                             params={"minorversion": "75"})
        return self.get(self.url("query"), params={"query": sql, "minorversion": "75"})

    def cdc(self, entities, since):
        return self.get(self.url("cdc"), params={"entities": entities, "changedSince": since,
                                                 "minorversion": "75"})


@pytest.fixture
def api(qb):
    token = refresh(qb, qb.issue_refresh_token()).json()["access_token"]
    with Api(qb, token) as session:
        yield session


@pytest.fixture
def books(qb):
    """An expense account, a class, a department and a vendor."""
    office = qb.add_account("Office Supplies")["Id"]
    ops = qb.add_class("Operations")["Id"]
    west = qb.add_department("West Region")["Id"]
    acme = qb.add_vendor("Acme Paper Supply", CompanyName="Acme Paper Supply LLC",
                         PrimaryEmailAddr={"Address": "ap@acmepaper.example"},
                         TaxIdentifier="123-45-6789", AcctNum="ACME-001")["Id"]
    return office, ops, west, acme


def line(account, amount, **extra):
    return {"amount": amount, "account_id": account, **extra}


def fault_of(resp):
    return resp.json()["Fault"]["Error"][0]


# -- OAuth ----------------------------------------------------------------------------------
def test_authorize_redirect_carries_code_state_and_realm_and_the_code_is_single_use(qb):
    got = requests.get(f"{qb.auth_url}/connect/oauth2", allow_redirects=False, params={
        "client_id": qb.client_id, "response_type": "code", "redirect_uri": REDIRECT,
        "scope": "com.intuit.quickbooks.accounting", "state": "xyz-123"})
    assert got.status_code == 302 and "intuit_tid" in got.headers
    location = urlsplit(got.headers["Location"])
    assert f"{location.scheme}://{location.netloc}{location.path}" == REDIRECT
    query = {k: v[0] for k, v in parse_qs(location.query).items()}
    assert query["state"] == "xyz-123" and query["realmId"] == qb.realm_id
    url = f"{qb.auth_url}/oauth2/v1/tokens/bearer"
    form = {"grant_type": "authorization_code", "code": query["code"], "redirect_uri": REDIRECT}
    token = requests.post(url, headers=basic(qb), data=form)
    assert token.status_code == 200 and "intuit_tid" in token.headers
    body = token.json()
    assert body["token_type"] == "bearer" and body["expires_in"] == 3600
    assert body["x_refresh_token_expires_in"] == 8640000
    assert "x_refresh_token_hard_expires_in" not in body
    assert body["access_token"] and body["refresh_token"]
    again = requests.post(url, headers=basic(qb), data=form)
    assert again.status_code == 400 and again.json() == {"error": "invalid_grant"}
    bad = requests.get(f"{qb.auth_url}/connect/oauth2", allow_redirects=False, params={
        "client_id": "nope", "response_type": "code", "redirect_uri": REDIRECT})
    assert bad.status_code == 400


def test_code_needs_the_same_redirect_uri_and_expires_after_five_minutes(qb, clock):
    def code():
        got = requests.get(f"{qb.auth_url}/connect/oauth2", allow_redirects=False, params={
            "client_id": qb.client_id, "response_type": "code", "redirect_uri": REDIRECT})
        return parse_qs(urlsplit(got.headers["Location"]).query)["code"][0]

    url = f"{qb.auth_url}/oauth2/v1/tokens/bearer"
    wrong = requests.post(url, headers=basic(qb), data={
        "grant_type": "authorization_code", "code": code(), "redirect_uri": REDIRECT + "x"})
    assert wrong.status_code == 400
    late = code()
    clock.advance(301)
    assert requests.post(url, headers=basic(qb), data={
        "grant_type": "authorization_code", "code": late,
        "redirect_uri": REDIRECT}).json() == {"error": "invalid_grant"}


def test_refresh_keeps_the_value_within_a_day_then_rotates_and_the_old_one_dies(qb, clock):
    first = qb.issue_refresh_token()
    one = refresh(qb, first).json()
    assert one["refresh_token"] == first
    clock.advance(23 * 3600)
    two = refresh(qb, first).json()
    assert two["refresh_token"] == first and two["access_token"] != one["access_token"]
    clock.advance(3600)
    three = refresh(qb, first)
    assert three.status_code == 200
    rotated = three.json()["refresh_token"]
    assert rotated != first
    old = refresh(qb, first)
    assert old.status_code == 400 and old.json() == {"error": "invalid_grant"}
    assert "intuit_tid" in old.headers
    assert refresh(qb, rotated).json()["refresh_token"] == rotated
    assert qb.token_calls == 5


def test_rotate_after_zero_rotates_every_time_and_wrong_client_is_401(clock):
    with QuickBooksSandbox(clock=clock, refresh_rotate_after=0) as qb:
        first = qb.issue_refresh_token()
        second = refresh(qb, first).json()["refresh_token"]
        assert second != first
        assert refresh(qb, first).status_code == 400
        wrong = refresh(qb, second, secret="nope")
        assert wrong.status_code == 401 and wrong.json() == {"error": "invalid_client"}
        assert refresh(qb, second).json()["refresh_token"] != second


def test_hard_expiry_header_counts_down_from_first_consent(qb, clock):
    token = qb.issue_refresh_token()
    cap = 5 * 365 * 86400
    assert refresh(qb, token, hard=True).json()["x_refresh_token_hard_expires_in"] == cap
    clock.advance(1000)
    body = refresh(qb, token, hard=True).json()
    assert body["x_refresh_token_hard_expires_in"] == cap - 1000


def test_revoke_kills_refresh_and_access_tokens(qb, api):
    assert api.get(api.url("companyinfo/" + qb.realm_id)).status_code == 200
    token = qb.issue_refresh_token()
    access = refresh(qb, token).json()["access_token"]
    got = requests.post(f"{qb.auth_url}/v2/oauth2/tokens/revoke", headers=basic(qb),
                        json={"token": token})
    assert got.status_code == 200
    assert refresh(qb, token).json() == {"error": "invalid_grant"}
    with Api(qb, access) as other:
        assert other.get(other.url("companyinfo/" + qb.realm_id)).status_code == 401
    assert api.get(api.url("companyinfo/" + qb.realm_id)).status_code == 200
    qb.revoke_all()
    assert api.get(api.url("companyinfo/" + qb.realm_id)).status_code == 401


# -- 401 and 429 shapes ------------------------------------------------------------------------
def test_401_shapes_expired_json_and_wrong_realm_xml(qb, api, clock):
    info = api.get(api.url(f"companyinfo/{qb.realm_id}"))
    assert info.status_code == 200 and info.json()["CompanyInfo"]["CompanyName"] == \
        "Sandbox Books LLC"
    wrong_realm = api.get(api.url("companyinfo/123", realm="123"))
    assert wrong_realm.status_code == 401
    assert wrong_realm.headers["Content-Type"].startswith("application/xml")
    assert '<Fault type="AuthenticationFault"><Error code="100">' in wrong_realm.text
    clock.advance(3600)
    expired = api.get(api.url(f"companyinfo/{qb.realm_id}"))
    assert expired.status_code == 401 and "intuit_tid" in expired.headers
    body = expired.json()
    assert body["fault"]["type"] == "AUTHENTICATION"
    assert body["fault"]["error"][0]["code"] == "3200"
    assert isinstance(body["time"], int)
    fresh = Api(qb, refresh(qb, qb.issue_refresh_token()).json()["access_token"])
    assert fresh.get(fresh.url(f"companyinfo/{qb.realm_id}")).status_code == 200
    qb.expire_access_tokens()
    assert fresh.get(fresh.url(f"companyinfo/{qb.realm_id}")).status_code == 401
    fresh.close()


def test_xml_errors_for_401_and_429(clock):
    with QuickBooksSandbox(clock=clock, xml_errors=True, per_minute=1) as qb:
        with Api(qb, "bogus") as bad:
            got = bad.get(bad.url("companyinfo/" + qb.realm_id))
            assert got.status_code == 401 and '<Error code="3200">' in got.text
        with Api(qb, refresh(qb, qb.issue_refresh_token()).json()["access_token"]) as api:
            assert api.get(api.url("companyinfo/" + qb.realm_id)).status_code == 200
            throttled = api.get(api.url("companyinfo/" + qb.realm_id))
            assert throttled.status_code == 429
            assert '<Fault type="SERVICE"><Error code="3001">' in throttled.text


def test_429_after_per_minute_requests_in_a_sliding_window(clock):
    with QuickBooksSandbox(clock=clock, per_minute=5) as qb:
        with Api(qb, refresh(qb, qb.issue_refresh_token()).json()["access_token"]) as api:
            url = api.url("companyinfo/" + qb.realm_id)
            assert [api.get(url).status_code for _ in range(5)] == [200] * 5
            throttled = api.get(url)
            assert throttled.status_code == 429 and "intuit_tid" in throttled.headers
            assert throttled.json()["Fault"]["type"] == "SERVICE"
            assert fault_of(throttled)["code"] == "3001"
            clock.advance(59)
            assert api.get(url).status_code == 429
            clock.advance(1)
            assert api.get(url).status_code == 200


def test_fail_next_and_503(qb, api):
    qb.fail_next(1)
    got = api.get(api.url("companyinfo/" + qb.realm_id))
    assert got.status_code == 503 and got.json()["Fault"]["type"] == "SystemFault"
    assert fault_of(got)["code"] == "10000"
    qb.fail_next(1, 429)
    assert api.get(api.url("companyinfo/" + qb.realm_id)).status_code == 429
    assert api.get(api.url("companyinfo/" + qb.realm_id)).status_code == 200


# -- reads -----------------------------------------------------------------------------------
def test_entity_get_and_610(qb, api, books):
    office, ops, west, acme = books
    bill = qb.add_bill(acme, [line(office, "1000.00", description="Copier paper",
                                   class_id=ops), line(office, "250.00")],
                       doc_number="INV-88121", department_id=west)
    got = api.get(api.url(f"bill/{bill['Id']}"), params={"minorversion": "75"})
    assert got.status_code == 200 and "intuit_tid" in got.headers
    body = got.json(parse_float=Decimal)["Bill"]
    assert body["TotalAmt"] == Decimal("1250.00") and body["Balance"] == Decimal("1250.00")
    assert body["SyncToken"] == "0" and body["domain"] == "QBO" and body["sparse"] is False
    assert body["VendorRef"] == {"value": acme, "name": "Acme Paper Supply"}
    assert body["APAccountRef"]["name"] == "Accounts Payable (A/P)"
    assert body["DepartmentRef"] == {"value": west, "name": "West Region"}
    first = body["Line"][0]
    assert first["Id"] == "1" and first["DetailType"] == "AccountBasedExpenseLineDetail"
    assert first["AccountBasedExpenseLineDetail"]["ClassRef"]["value"] == ops
    assert len(ops) == 19
    assert body["MetaData"]["CreateTime"] == "2026-03-02T12:00:05-08:00"  # AP account: 12:00:04
    assert ("bill/" + bill["Id"]) in qb.request_log[-1][1]
    assert qb.request_log[-1][2] == {"minorversion": "75"}
    vendor = api.get(api.url(f"vendor/{acme}")).json()["Vendor"]
    assert vendor["TaxIdentifier"] == "XXXXXX6789" and vendor["Balance"] == 1250
    assert api.get(api.url(f"account/{office}")).json()["Account"]["Name"] == "Office Supplies"
    qb.delete("Bill", bill["Id"])
    gone = api.get(api.url(f"bill/{bill['Id']}"))
    assert gone.status_code == 400 and fault_of(gone)["code"] == "610"
    assert gone.json()["Fault"]["type"] == "ValidationFault"
    assert fault_of(api.get(api.url("journalentry/99999")))["code"] == "610"
    with pytest.raises(ValueError):
        qb.delete("Vendor", acme)


def test_payments_voids_and_journal_entries(qb, api, books):
    office, ops, west, acme = books
    bill = qb.add_bill(acme, [line(office, "480.00")])
    pay = qb.add_bill_payment(acme, [(bill["Id"], "480.00")], doc_number="1047")
    assert pay["Line"] == [{"Amount": Decimal("480.00"),
                            "LinkedTxn": [{"TxnId": bill["Id"], "TxnType": "Bill"}]}]
    assert pay["CheckPayment"]["BankAccountRef"]["name"] == "Checking"
    paid = api.get(api.url(f"bill/{bill['Id']}")).json()
    assert paid["Bill"]["Balance"] == 0 and paid["Bill"]["SyncToken"] == "1"
    assert paid["Bill"]["LinkedTxn"] == [{"TxnId": pay["Id"], "TxnType": "BillPaymentCheck"}]
    void = qb.void_bill_payment(pay["Id"])
    assert void["TotalAmt"] == 0 and void["PrivateNote"].startswith("Voided")
    assert void["SyncToken"] == "1"
    restored = api.get(api.url(f"billpayment/{pay['Id']}"))
    assert restored.json()["BillPayment"]["Line"][0]["Amount"] == 0
    assert api.get(api.url(f"bill/{bill['Id']}")).json()["Bill"]["Balance"] == 480
    je = qb.add_journal_entry([
        {"amount": "310.00", "posting_type": "Debit", "account_id": office, "class_id": ops,
         "department_id": west, "description": "Accrue"},
        {"amount": "310.00", "posting_type": "Credit", "account_id": office,
         "vendor_id": acme}], doc_number="JE-0042")
    got = api.get(api.url(f"journalentry/{je['Id']}")).json()["JournalEntry"]
    credit = got["Line"][1]["JournalEntryLineDetail"]
    assert credit["Entity"] == {"Type": "Vendor",
                                "EntityRef": {"value": acme, "name": "Acme Paper Supply"}}
    assert got["Line"][0]["JournalEntryLineDetail"]["DepartmentRef"]["value"] == west
    with pytest.raises(ValueError):
        qb.add_journal_entry([{"amount": "1", "posting_type": "Debit", "account_id": office}])


# -- CDC -------------------------------------------------------------------------------------
def test_cdc_shape_ordering_and_deleted_stubs_last(qb, api, books, clock):
    office, ops, west, acme = books
    since = "2026-03-02T12:00:00-08:00"
    a = qb.add_bill(acme, [line(office, "100.00")], doc_number="A")["Id"]
    b = qb.add_bill(acme, [line(office, "200.00")], doc_number="B")["Id"]
    c = qb.add_bill(acme, [line(office, "300.00")], doc_number="C")["Id"]
    qb.delete("Bill", b)
    qb.update("Bill", a, PrivateNote="edited")
    qb.update("Vendor", acme, Active=False)
    got = api.cdc("bill,VENDOR,Class", since)
    assert got.status_code == 200 and "intuit_tid" in got.headers
    body = got.json()
    parts = body["CDCResponse"][0]["QueryResponse"]
    assert [next(iter(p)) for p in parts] == ["Bill", "Vendor", "Class"]
    bills = parts[0]
    assert bills["startPosition"] == 1 and bills["maxResults"] == 3
    assert [x["Id"] for x in bills["Bill"]] == [c, a, b]
    assert bills["Bill"][1]["SyncToken"] == "1" and bills["Bill"][1]["PrivateNote"] == "edited"
    stub = bills["Bill"][2]
    assert stub == {"domain": "QBO", "status": "Deleted", "Id": b,
                    "MetaData": {"LastUpdatedTime": stub["MetaData"]["LastUpdatedTime"]}}
    assert parts[1]["Vendor"][0]["Active"] is False
    # the clock stands still: `time` is the last write's stamp, not before it
    assert body["time"] == "2026-03-02T12:00:10.000-08:00"
    # stamps strictly increase under a frozen clock; the stub is last although it is older
    stamps = [parse_time(x["MetaData"]["LastUpdatedTime"]) for x in bills["Bill"]]
    assert stamps[0] < stamps[1] and stamps[2] < stamps[1] and len(set(stamps)) == 3
    # nothing changed since the last stamp
    empty = api.cdc("Bill,Vendor", body["time"]).json()
    assert empty["CDCResponse"] == [{"QueryResponse": [{}]}]
    assert empty["time"].endswith("-08:00")
    # a write after an answer is stamped after its time, even within the same second
    clock.advance(10.5)  # the clock catches up with the stamps: now 12:00:10.5
    answered = api.cdc("Bill", body["time"]).json()["time"]
    assert answered == "2026-03-02T12:00:10.500-08:00"
    qb.update("Bill", c, PrivateNote="later")
    again = api.cdc("Bill", answered).json()["CDCResponse"][0]["QueryResponse"][0]["Bill"]
    assert [x["Id"] for x in again] == [c]
    assert again[0]["MetaData"]["LastUpdatedTime"] == "2026-03-02T12:00:11-08:00"


def test_cdc_rejects_over_30_days_and_bad_parameters(qb, api, clock):
    ok = api.cdc("Bill", (clock.now() - timedelta(days=30)).isoformat())
    assert ok.status_code == 200
    old = api.cdc("Bill", (clock.now() - timedelta(days=30, seconds=1)).isoformat())
    assert old.status_code == 400 and old.json()["Fault"]["type"] == "ValidationFault"
    assert "older than fixed days is not supported" in fault_of(old)["Message"]
    assert api.cdc("Bill", "yesterday").status_code == 400
    missing = api.get(api.url("cdc"), params={"entities": "Bill"})
    assert missing.status_code == 400 and missing.json()["Fault"]["type"] == "ValidationFault"
    assert api.cdc("Bogus", clock.now().isoformat()).status_code == 400


def test_cdc_caps_at_1000_dropping_deletions_first(qb, api, books):
    office, ops, west, acme = books
    doomed = [qb.add_bill(acme, [line(office, "1.00")])["Id"] for _ in range(20)]
    for bill_id in doomed:
        qb.delete("Bill", bill_id)
    kept = [qb.add_bill(acme, [line(office, "2.00")])["Id"] for _ in range(994)]
    got = api.cdc("Bill,Vendor", "2026-03-02T11:00:00-08:00").json()
    parts = {next(iter(p)): p for p in got["CDCResponse"][0]["QueryResponse"]}
    bills = parts["Bill"]["Bill"]
    assert len(bills) + len(parts["Vendor"]["Vendor"]) == 1000
    active = [x for x in bills if x.get("status") != "Deleted"]
    deleted = [x for x in bills if x.get("status") == "Deleted"]
    assert [x["Id"] for x in active] == kept and len(deleted) == 5
    assert [x["Id"] for x in deleted] == doomed[:5]   # the oldest deletions survive


# -- query -----------------------------------------------------------------------------------
def test_query_pages_2500_bills_and_counts(qb, api, books, clock):
    office, ops, west, acme = books
    ids = [qb.add_bill(acme, [line(office, "10.00")], doc_number=f"D{n}")["Id"]
           for n in range(2500)]
    snapshot = parse_time(qb.update("Bill", ids[0], PrivateNote="x")["MetaData"][
        "LastUpdatedTime"])
    seen, start = [], 1
    while True:
        sql = ("select * from Bill where MetaData.LastUpdatedTime > '2026-03-02T11:00:00-08:00'"
               f" and MetaData.LastUpdatedTime <= '{snapshot.isoformat()}'"
               f" ORDERBY MetaData.LastUpdatedTime STARTPOSITION {start} MAXRESULTS 1000")
        page = api.query(sql, post=start > 1).json()["QueryResponse"]
        rows = page.get("Bill", [])
        if rows:
            assert page["startPosition"] == start and page["maxResults"] == len(rows)
        seen += [r["Id"] for r in rows]
        if len(rows) < 1000:
            break
        start += 1000
    assert seen == ids[1:] + ids[:1]
    count = api.query("SELECT COUNT(*) FROM Bill").json()
    assert count["QueryResponse"] == {"totalCount": 2500}
    default = api.query("SELECT * FROM Bill").json()["QueryResponse"]
    assert default["maxResults"] == 100 and default["Bill"][0]["Id"] == ids[0]
    capped = api.query("SELECT * FROM Bill MAXRESULTS 5000").json()["QueryResponse"]
    assert capped["maxResults"] == 1000
    desc = api.query("SELECT * FROM Bill ORDERBY DocNumber DESC MAXRESULTS 1").json()
    assert desc["QueryResponse"]["Bill"][0]["DocNumber"] == "D999"
    window = api.query("SELECT * FROM Bill WHERE MetaData.LastUpdatedTime >= "
                       f"'{snapshot.isoformat()}'").json()["QueryResponse"]
    assert [r["Id"] for r in window["Bill"]] == [ids[0]]
    empty = api.query("SELECT * FROM Bill STARTPOSITION 9000").json()
    assert empty["QueryResponse"] == {} and empty["time"].endswith("-08:00")


def test_query_filters_active_ids_and_names(qb, api, books):
    office, ops, west, acme = books
    other = qb.add_vendor("O'Brien Freight")["Id"]
    qb.update("Vendor", other, Active=False)
    visible = api.query("SELECT * FROM Vendor").json()["QueryResponse"]["Vendor"]
    assert [v["Id"] for v in visible] == [acme]
    both = api.query("SELECT * FROM Vendor WHERE Active IN (true, false)").json()
    assert {v["Id"] for v in both["QueryResponse"]["Vendor"]} == {acme, other}
    inactive = api.query("select * from vendor where active = false").json()["QueryResponse"]
    assert [v["Id"] for v in inactive["Vendor"]] == [other]
    named = api.query(r"SELECT * FROM Vendor WHERE DisplayName = 'O\'Brien Freight' "
                      "AND Active = false").json()["QueryResponse"]
    assert named["Vendor"][0]["Id"] == other
    bill = qb.add_bill(acme, [line(office, "5.00")], doc_number="INV-1")["Id"]
    qb.add_bill(acme, [line(office, "6.00")], doc_number="INV-2")
    by_id = api.query(f"SELECT * FROM Bill WHERE Id IN ('{bill}', '99999')").json()
    assert [b["Id"] for b in by_id["QueryResponse"]["Bill"]] == [bill]
    by_doc = api.query("SELECT * FROM Bill WHERE DocNumber = 'INV-2'").json()["QueryResponse"]
    assert by_doc["Bill"][0]["DocNumber"] == "INV-2"
    assert api.query("SELECT * FROM Account WHERE Name = 'Office Supplies'").json()[
        "QueryResponse"]["Account"][0]["Id"] == office
    qb.delete("Bill", bill)
    assert api.query(f"SELECT * FROM Bill WHERE Id = '{bill}'").json()["QueryResponse"] == {}


def test_query_errors(api):
    bad = api.query("SELECT * FROM Bill WHERE")
    assert bad.status_code == 400 and fault_of(bad)["code"] == "4000"
    assert fault_of(bad)["Message"] == "Error parsing query"
    assert fault_of(api.query("SELEC * FROM Bill"))["code"] == "4000"
    assert fault_of(api.query("SELECT * FROM Bill WHERE DocNumber = 'x"))["code"] == "4000"
    unknown = api.query("SELECT * FROM Bill WHERE Colour = 'red'")
    assert unknown.status_code == 400 and fault_of(unknown)["code"] == "4001"
    assert fault_of(api.query("SELECT * FROM Bill WHERE Id > '5'"))["code"] == "4001"


def test_knob_faults_and_the_concurrency_cap_answer_in_qbo_shapes(clock):
    from mlconnector.sandbox import Knobs

    with QuickBooksSandbox(Knobs(rate_429=1.0), clock=clock) as qb:
        got = requests.get(f"{qb.base_url}/v3/company/{qb.realm_id}/companyinfo/{qb.realm_id}")
        assert got.status_code == 429 and fault_of(got)["code"] == "3001"
        assert "intuit_tid" in got.headers
    with QuickBooksSandbox(Knobs(error_rate=1.0), clock=clock) as qb:
        got = requests.get(f"{qb.base_url}/v3/company/{qb.realm_id}/companyinfo/{qb.realm_id}")
        assert got.status_code == 503 and fault_of(got)["code"] == "10000"
    with QuickBooksSandbox(clock=clock) as qb:
        qb.in_flight = qb.max_concurrent   # ten requests already in flight
        got = requests.get(f"{qb.base_url}/v3/company/{qb.realm_id}/companyinfo/{qb.realm_id}")
        assert got.status_code == 429 and fault_of(got)["code"] == "3001"
        qb.in_flight = 0


def test_companyinfo_of_another_id_is_610_and_unknown_paths_404(qb, api):
    got = api.get(api.url("companyinfo/42"))
    assert got.status_code == 400 and fault_of(got)["code"] == "610"
    assert api.get(api.url("invoice/1")).status_code == 404
