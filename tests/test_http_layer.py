"""The one HTTP layer, case by case (responses; a fake clock, so nothing waits)."""

from __future__ import annotations

import threading
from decimal import Decimal

import pytest
import requests
import responses

from mlconnector.clock import FakeClock
from mlconnector.connectors.bill import classify as bill_classify
from mlconnector.connectors.freshbooks import classify as fb_classify
from mlconnector.errors import (
    AuthError,
    ConfigError,
    NotFound,
    RejectedError,
    TransientError,
    UnavailableError,
)
from mlconnector.http import HttpClient, _encode

from .fakes import CountingAuth, Lines

BASE = "https://api.example.test"




def client(**kw):
    kw.setdefault("clock", FakeClock())
    kw.setdefault("jitter", lambda: 1.0)
    return HttpClient("books", BASE, **kw)


@responses.activate
def test_a_503_is_retried_with_backoff_then_succeeds():
    responses.get(f"{BASE}/x", status=503, body="<html>gateway</html>")
    responses.get(f"{BASE}/x", json={"ok": True})
    audit = Lines()
    http = client(audit=audit)
    assert http.get("/x").body == {"ok": True}
    assert http.clock.slept == [0.5]
    assert [line["attempt"] for line in audit.lines] == [1, 2]
    assert http.calls == 2


@responses.activate
def test_retry_after_seconds_and_http_date_are_honoured_and_capped():
    clock = FakeClock()
    responses.get(f"{BASE}/x", status=429, headers={"Retry-After": "7"})
    responses.get(f"{BASE}/x", status=429, headers={"Retry-After": "Mon, 05 Jan 2026 12:00:37 GMT"})
    responses.get(f"{BASE}/x", status=503, headers={"Retry-After": "99999"})
    responses.get(f"{BASE}/x", json={})
    client(clock=clock, retry_after_cap=300).get("/x")
    assert clock.slept[0] == 7 and 29 <= clock.slept[1] <= 30 and clock.slept[2] == 300


@responses.activate
def test_a_post_is_not_resent_after_a_500_but_is_after_a_429():
    responses.post(f"{BASE}/bills", status=500)
    with pytest.raises(TransientError):
        client().post("/bills", json={})
    assert len(responses.calls) == 1
    responses.replace(responses.POST, f"{BASE}/bills", status=429)
    responses.add(responses.POST, f"{BASE}/bills", json={"id": 1}, status=201)
    assert client().post("/bills", json={}).body == {"id": 1}


@responses.activate
def test_a_post_that_timed_out_is_not_resent():
    responses.post(f"{BASE}/bills", body=requests.ReadTimeout("slow"))
    with pytest.raises(TransientError):
        client().post("/bills", json={})
    assert len(responses.calls) == 1


@responses.activate
def test_retries_run_out_into_a_transient_error():
    responses.get(f"{BASE}/x", status=502)
    with pytest.raises(TransientError, match="gave up after 4 attempts"):
        client(max_retries=3).get("/x")


@responses.activate
def test_a_refused_token_is_refreshed_once_then_auth_error():
    responses.get(f"{BASE}/x", status=401, json={"response": {"errors": [
        {"errno": 1003, "message": "not authorized"}]}})
    responses.get(f"{BASE}/x", json={"ok": 1})
    auth = CountingAuth()
    http = client(authenticator=auth, classify=fb_classify)
    assert http.get("/x").body == {"ok": 1} and auth.refreshes == 1
    responses.replace(responses.GET, f"{BASE}/x", status=401, json={})
    with pytest.raises(AuthError) as exc:
        http.get("/x")
    assert exc.value.fix == "run: mlconnector auth login books"


@responses.activate
def test_freshbooks_errors_in_a_200_body_are_errors():
    responses.get(f"{BASE}/x", json={"response": {"errors": [
        {"errno": 1012, "field": "userid", "message": "Client not found."}]}})
    with pytest.raises(NotFound, match="Client not found"):
        client(classify=fb_classify).get("/x")
    responses.replace(responses.GET, f"{BASE}/x", json={"response": {"errors": [
        {"errno": 1004, "message": "bad value"}]}})
    with pytest.raises(RejectedError) as exc:
        client(classify=fb_classify).get("/x")
    assert exc.value.code == "1004"


@responses.activate
def test_bill_codes_decide_not_the_status():
    busy = [{"code": "BDC_1322", "message": "Max number of concurrent requests"}]
    responses.post(f"{BASE}/v3/bills", status=400, json=busy)
    responses.post(f"{BASE}/v3/bills", status=201, json={"id": "00n1"})
    http = client(classify=bill_classify)
    assert http.post("/v3/bills", json={}).body == {"id": "00n1"}  # nothing was processed
    responses.replace(responses.POST, f"{BASE}/v3/bills", status=429, json=[
        {"code": "BDC_1144", "message": "Max number of allowed requests per hour reached"}])
    with pytest.raises(UnavailableError, match="top of the hour"):
        http.post("/v3/bills", json={})


def test_money_is_encoded_exactly():
    assert _encode({"amount": Decimal("142.50"), "n": [Decimal("0.1")]}) == \
        '{"amount": 142.50, "n": [0.1]}'


def test_plain_http_only_on_loopback():
    HttpClient("s", "http://127.0.0.1:9/x")
    with pytest.raises(ConfigError, match="loopback"):
        HttpClient("s", "http://api.example.com")


@responses.activate
def test_never_more_in_flight_than_the_cap():
    state = {"now": 0, "max": 0}
    lock = threading.Lock()
    gate = threading.Event()

    def slow(request):
        with lock:
            state["now"] += 1
            state["max"] = max(state["max"], state["now"])
        gate.wait(0.02)
        with lock:
            state["now"] -= 1
        return 200, {}, "{}"

    responses.add_callback(responses.GET, f"{BASE}/x", callback=slow)
    http = client(max_in_flight=3)
    threads = [threading.Thread(target=http.get, args=("/x",)) for _ in range(12)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert state["max"] <= 3


@responses.activate
def test_audit_lines_never_carry_secrets():
    responses.post(f"{BASE}/auth/oauth/token", json={"access_token": "AT-SECRET-1"})
    audit = Lines()
    client(audit=audit).request("POST", "/auth/oauth/token", params={"code": "C0DE-SECRET"},
                                data={"client_secret": "CS-SECRET"}, authenticated=False)
    text = repr(audit.lines)
    assert "SECRET" not in text and "[redacted]" in text
