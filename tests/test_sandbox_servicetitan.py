"""The ServiceTitan emulator (auth side) over real loopback sockets, checked against
api/servicetitan.md §1-3."""

from __future__ import annotations

import base64
import json

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
