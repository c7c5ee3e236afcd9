"""The Salesforce emulator (auth side) over real loopback sockets, checked against
api/salesforce.md §1-2, §7, §11."""

from __future__ import annotations

import base64
import hashlib
import hmac

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
    for bad in ("SELECT Id FROM Account", "SELECT Name, Foo FROM Organization",
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
