"""http.py: retries, Retry-After, POST resend rules, one re-auth, limits, money, audit.

HTTP is mocked with `responses`; time is a FakeClock, so nothing waits in real time."""

from __future__ import annotations

import threading
from decimal import Decimal

import pytest
import requests
import responses
import urllib3.exceptions

from mlconnector.clock import FakeClock
from mlconnector.errors import (
    AuthError,
    ConfigError,
    NotFound,
    ReauthRequired,
    RejectedError,
    Throttled,
    TransientError,
    UnavailableError,
)
from mlconnector.http import HttpClient, Response, _encode, server_message, shown_path

from .fakes import CountingAuth, Lines

BASE = "https://api.example.test"




def client(**kw) -> HttpClient:
    kw.setdefault("clock", FakeClock())
    kw.setdefault("jitter", lambda: 1.0)
    return HttpClient("books", BASE, **kw)


def refused() -> requests.ConnectionError:
    """What requests raises when nothing listens: the request never left."""
    return requests.ConnectionError(urllib3.exceptions.NewConnectionError(
        None, "Failed to establish a new connection: [Errno 111] Connection refused"))


# -- backoff and Retry-After ---------------------------------------------------------------
@responses.activate
def test_503s_are_retried_with_exponential_backoff_then_succeed():
    for _ in range(3):
        responses.get(f"{BASE}/x", status=503, body="<html><b>gateway</b></html>")
    responses.get(f"{BASE}/x", json={"ok": True})
    http = client()
    assert http.get("/x").body == {"ok": True}
    assert http.clock.slept == [0.5, 1.0, 2.0]
    assert http.calls == 4


@responses.activate
def test_backoff_is_capped_and_jittered_between_half_and_full():
    for _ in range(4):
        responses.get(f"{BASE}/x", status=502)
    responses.get(f"{BASE}/x", json={})
    http = client(jitter=lambda: 0.0, backoff_base=1.0, backoff_cap=3.0)
    http.get("/x")
    assert http.clock.slept == [0.5, 1.0, 1.5, 1.5]


@responses.activate
def test_retry_after_seconds_and_http_date_are_honoured_and_capped():
    clock = FakeClock()  # starts 2026-01-05 12:00:00 UTC
    responses.get(f"{BASE}/x", status=429, headers={"Retry-After": "7"})
    responses.get(f"{BASE}/x", status=503,
                  headers={"Retry-After": "Mon, 05 Jan 2026 12:00:37 GMT"})
    responses.get(f"{BASE}/x", status=503, headers={"Retry-After": "99999"})
    responses.get(f"{BASE}/x", status=429, headers={"Retry-After": "not a date"})
    responses.get(f"{BASE}/x", json={})
    client(clock=clock, retry_after_cap=300).get("/x")
    assert clock.slept == [7.0, 30.0, 300.0, 4.0]  # the last: plain backoff, attempt 4


@responses.activate
def test_retries_run_out_into_a_transient_error_with_the_servers_words():
    responses.get(f"{BASE}/x", status=502, json={"message": "upstream down", "code": "E502"})
    http = client(max_retries=3)
    with pytest.raises(TransientError, match="gave up after 4 attempts") as exc:
        http.get("/x")
    assert (exc.value.status, exc.value.code, exc.value.system) == (502, "E502", "books")
    assert "upstream down" in str(exc.value)
    assert http.calls == 4 and len(http.clock.slept) == 3


# -- what a non-idempotent request may be resent after ---------------------------------------
@responses.activate
def test_a_post_is_not_resent_after_a_500():
    responses.post(f"{BASE}/bills", status=500)
    with pytest.raises(TransientError, match="not resent"):
        client().post("/bills", json={})
    assert len(responses.calls) == 1


@responses.activate
@pytest.mark.parametrize("method", ["POST", "PATCH"])
def test_a_write_that_timed_out_is_not_resent(method):
    responses.add(method, f"{BASE}/bills", body=requests.ReadTimeout("slow"))
    http = client()
    with pytest.raises(TransientError):
        http.request(method, "/bills", json={})
    assert len(responses.calls) == 1 and http.clock.slept == []


@responses.activate
def test_a_post_is_resent_after_a_429_and_after_a_refused_connection():
    responses.post(f"{BASE}/bills", status=429)
    responses.post(f"{BASE}/bills", body=refused())
    responses.post(f"{BASE}/bills", body=requests.ConnectTimeout("no SYN-ACK"))
    responses.post(f"{BASE}/bills", json={"id": 1}, status=201)
    http = client()
    assert http.post("/bills", json={}).body == {"id": 1}
    assert len(responses.calls) == 4


@responses.activate
def test_a_get_is_resent_after_a_read_timeout_and_a_dropped_connection():
    responses.get(f"{BASE}/x", body=requests.ReadTimeout("slow"))
    responses.get(f"{BASE}/x", body=requests.ConnectionError("Connection aborted."))
    responses.get(f"{BASE}/x", json={"ok": 1})
    assert client().get("/x").body == {"ok": 1}


@responses.activate
def test_idempotent_overrides_the_method_default():
    responses.post(f"{BASE}/search", status=500)
    responses.post(f"{BASE}/search", json={"hits": []})
    assert client().post("/search", json={}, idempotent=True).body == {"hits": []}
    responses.put(f"{BASE}/bills/1", status=500)
    with pytest.raises(TransientError):
        client().put("/bills/1", json={}, idempotent=False)
    assert len([c for c in responses.calls if c.request.method == "PUT"]) == 1


# -- classification ---------------------------------------------------------------------------
@responses.activate
def test_the_connectors_table_is_consulted_before_the_defaults():
    def classify(resp: Response):
        body = resp.body if isinstance(resp.body, list) else [{}]
        code = body[0].get("code") if body and isinstance(body[0], dict) else None
        if code == "BUSY":
            return Throttled("busy", system="bill", status=resp.status, code=code,
                             retry_after=1.5)
        if code == "QUOTA":
            return UnavailableError("quota spent", system="bill", code=code)
        if resp.status == 200 and code == "E":
            return RejectedError("an error in a 200", system="bill", code=code)
        return None

    responses.post(f"{BASE}/v3/bills", status=400, json=[{"code": "BUSY", "message": "b"}])
    responses.post(f"{BASE}/v3/bills", status=201, json={"id": "00n1"})
    http = client(classify=classify)
    assert http.post("/v3/bills", json={}).body == {"id": "00n1"}  # a 400 retried: BUSY
    assert http.clock.slept == [1.5]
    responses.get(f"{BASE}/v3/x", status=429, json=[{"code": "QUOTA", "message": "q"}])
    with pytest.raises(UnavailableError):  # a 429 not retried: QUOTA
        http.get("/v3/x")
    responses.get(f"{BASE}/v3/y", status=200, json=[{"code": "E", "message": "e"}])
    with pytest.raises(RejectedError, match="an error in a 200"):
        http.get("/v3/y")
    responses.get(f"{BASE}/v3/z", status=404, json=[{"code": "BDC_1121", "message": "nope"}])
    with pytest.raises(NotFound, match="nope") as exc:  # classify said None: defaults
        http.get("/v3/z")
    assert exc.value.code == "BDC_1121"


@responses.activate
def test_a_per_call_table_comes_before_the_clients():
    responses.post(f"{BASE}/token", status=400, json={"error": "invalid_grant"})
    seen = []

    def per_call(resp):
        seen.append("call")
        return AuthError("refused", fix="log in")

    def own(resp):
        seen.append("client")
        return None

    with pytest.raises(AuthError, match="refused"):
        client(classify=own).post("/token", data={}, classify=per_call)
    assert seen == ["call"]


@responses.activate
@pytest.mark.parametrize("status,kind", [(400, RejectedError), (404, NotFound),
                                         (403, AuthError), (422, RejectedError),
                                         (302, RejectedError)])
def test_the_default_table(status, kind):
    responses.get(f"{BASE}/x", status=status, json={"message": "the server's words"},
                  headers={"Location": "https://elsewhere.example/x"})
    with pytest.raises(kind) as exc:
        client().get("/x")
    if status != 302:
        assert "the server's words" in str(exc.value)
    assert len(responses.calls) == 1  # no redirect followed, nothing retried


@pytest.mark.parametrize("body,expected", [
    ({"error": "invalid_grant", "error_description": "used"}, ("invalid_grant", "used")),
    ({"message": "plain"}, (None, "plain")),
    ([{"code": "BDC_1109", "message": "Session is invalid."}], ("BDC_1109", "Session is invalid.")),
    ({"response": {"errors": [{"errno": 1012, "message": "Not found."}]}}, ("1012", "Not found.")),
    ([{"errorCode": "INVALID_FIELD", "message": "bad"}], ("INVALID_FIELD", "bad")),
    ({"error": {"message": "No Record found", "detail": "ACL"}, "status": "failure"},
     (None, "No Record found: ACL")),
    ({"Fault": {"Error": [{"Message": "Stale", "Detail": "SyncToken", "code": "5010"}]}},
     ("5010", "Stale: SyncToken")),
    ({"errors": {"message": "gone", "status": 404}}, (None, "gone")),
])
def test_server_message_reads_the_common_shapes(body, expected):
    assert server_message(Response(400, {}, body, "", 0.0)) == expected


def test_server_message_falls_back_to_tag_free_text():
    resp = Response(503, {}, None, "<html><body><h1>502 Bad Gateway</h1></body></html>", 0.0)
    assert server_message(resp) == (None, "502 Bad Gateway")
    assert server_message(Response(500, {}, None, "", 0.0)) == (None, "HTTP 500")


# -- re-authentication ------------------------------------------------------------------------
@responses.activate
def test_a_refused_token_is_replaced_once_and_the_call_repeated():
    responses.get(f"{BASE}/x", status=401, json={"error": "unauthenticated"})
    responses.get(f"{BASE}/x", json={"ok": 1})
    auth = CountingAuth()
    http = client(authenticator=auth)
    assert http.get("/x").body == {"ok": 1} and auth.refreshes == 1
    assert [c.request.headers["Authorization"] for c in responses.calls] == \
        ["Bearer tok-1", "Bearer tok-2"]


@responses.activate
def test_two_refusals_in_a_row_are_an_auth_error_with_the_fix():
    responses.get(f"{BASE}/x", status=401, json={"error": "unauthenticated",
                                                 "error_description": "go away"})
    auth = CountingAuth()
    with pytest.raises(AuthError, match="go away") as exc:
        client(authenticator=auth).get("/x")
    assert exc.value.fix == "run: mlconnector auth login books"
    assert auth.refreshes == 1 and len(responses.calls) == 2


@responses.activate
def test_a_connectors_reauth_code_goes_through_the_authenticator():
    def classify(resp):
        if resp.status == 400 and resp.body == [{"code": "BDC_1109"}]:
            return ReauthRequired("session", system="bill", code="BDC_1109")
        return None

    responses.post(f"{BASE}/v3/bills", status=400, json=[{"code": "BDC_1109"}])
    responses.post(f"{BASE}/v3/bills", status=201, json={"id": "b"})
    auth = CountingAuth()
    assert client(classify=classify, authenticator=auth).post("/v3/bills", json={}).body == \
        {"id": "b"}  # a POST refused for its credential was not processed: resent
    assert auth.refreshes == 1


@responses.activate
def test_a_401_without_an_authenticator_is_an_auth_error():
    responses.get(f"{BASE}/x", status=401)
    with pytest.raises(AuthError):
        client().get("/x")


# -- limits ------------------------------------------------------------------------------------
@responses.activate
def test_never_more_in_flight_than_the_cap():
    cap, total = 3, 12
    state = {"now": 0, "max": 0, "entered": 0}
    cond = threading.Condition()
    never = threading.Event()

    def slow(request):
        with cond:
            state["now"] += 1
            state["entered"] += 1
            state["max"] = max(state["max"], state["now"])
            cond.notify_all()
            # hold until the cap is reached (or nobody else can come), so a correct
            # client shows exactly `cap` in flight ...
            cond.wait_for(lambda: state["now"] >= cap or state["entered"] == total, 5)
        never.wait(0.005)  # ... and a leaky one has time to let a (cap+1)th in
        with cond:
            state["max"] = max(state["max"], state["now"])
            state["now"] -= 1
        return 200, {}, "{}"

    responses.add_callback(responses.GET, f"{BASE}/x", callback=slow)
    http = client(max_in_flight=cap)
    errors = []

    def call():
        try:
            http.get("/x")
        except Exception as exc:  # noqa: BLE001
            errors.append(exc)

    threads = [threading.Thread(target=call) for _ in range(total)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert not errors
    assert state["max"] == cap
    assert http.calls == total


@responses.activate
def test_the_slot_is_not_held_during_a_backoff_sleep():
    responses.get(f"{BASE}/a", status=503)
    responses.get(f"{BASE}/a", json={"a": 1})
    responses.get(f"{BASE}/b", json={"b": 1})
    done = threading.Event()

    class Clock(FakeClock):
        def sleep(self, seconds):
            # another thread must get through the only slot while this one waits
            other = threading.Thread(target=lambda: (http.get("/b"), done.set()))
            other.start()
            other.join(5)
            super().sleep(seconds)

    http = client(max_in_flight=1, clock=Clock())
    assert http.get("/a").body == {"a": 1}
    assert done.is_set()


@responses.activate
def test_the_rate_limit_is_a_token_bucket_on_the_clock():
    responses.get(f"{BASE}/x", json={})
    http = client(per_second=2)
    for _ in range(6):
        http.get("/x")
    assert sum(http.clock.slept) == pytest.approx(2.0)  # 2 in the burst, then 2 a second


@responses.activate
def test_a_slow_rate_below_one_a_second_still_flows():
    responses.get(f"{BASE}/x", json={})
    http = client(per_second=0.5)
    for _ in range(3):
        http.get("/x")
    assert sum(http.clock.slept) == pytest.approx(4.0)


# -- bodies and URLs ---------------------------------------------------------------------------
def test_money_is_encoded_exactly():
    assert _encode({"amount": Decimal("142.50"), "n": [Decimal("0.1"), Decimal("-0.00")],
                    "big": Decimal("12345678901234567890.12")}) == \
        '{"amount": 142.50, "n": [0.1, -0.00], "big": 12345678901234567890.12}'
    assert _encode({"e": Decimal("1E+2")}) == '{"e": 100}'
    assert _encode({"s": "@@dec-x-0@@", "a": Decimal("1.10")}) == \
        '{"s": "@@dec-x-0@@", "a": 1.10}'
    with pytest.raises(ValueError):
        _encode({"x": Decimal("NaN")})


@responses.activate
def test_json_goes_out_exact_and_comes_back_as_decimal():
    responses.post(f"{BASE}/v3/bills", json={"amount": 179.10}, status=201)
    resp = client().post("/v3/bills", json={"billLineItems": [{"amount": Decimal("142.50")}]})
    sent = responses.calls[0].request
    assert sent.body in ('{"billLineItems": [{"amount": 142.50}]}',
                         b'{"billLineItems": [{"amount": 142.50}]}')
    assert sent.headers["Content-Type"] == "application/json"
    assert sent.headers["Accept"] == "application/json"
    assert resp.body == {"amount": Decimal("179.10")}
    assert resp.headers["content-type"] == "application/json"  # case-insensitive


@pytest.mark.parametrize("url", ["http://127.0.0.1:8080", "http://127.3.4.5/x",
                                 "http://localhost:9/connect", "http://[::1]:9",
                                 "https://api.example.com"])
def test_allowed_base_urls(url):
    HttpClient("s", url)


@pytest.mark.parametrize("url", ["http://api.example.com", "http://10.0.0.1",
                                 "ftp://x.example", "https://user:hunter22@api.example.com"])
def test_refused_base_urls(url):
    with pytest.raises(ConfigError) as exc:
        HttpClient("s", url)
    assert "hunter22" not in str(exc.value)


@responses.activate
def test_paths_are_joined_under_the_base_url():
    responses.get("https://gw.example.test/connect/v3/vendors", json={"results": []})
    http = HttpClient("ap", "https://gw.example.test/connect/", clock=FakeClock())
    assert http.get("/v3/vendors").body == {"results": []}
    with pytest.raises(ValueError):
        http.get("https://evil.example/steal")


# -- audit -------------------------------------------------------------------------------------
@responses.activate
def test_one_audit_line_per_attempt_without_secrets():
    responses.get(f"{BASE}/x", status=503)
    responses.get(f"{BASE}/x", body=requests.ConnectionError("Connection aborted."))
    responses.get(f"{BASE}/x", json={"token": "BODY-SECRET"})
    audit = Lines()
    auth = CountingAuth()
    auth.token = "HEADER-SECRET"
    http = client(audit=audit, authenticator=auth)
    http.get("/x?access_token=Q1-SECRET&page=2", params={"client_secret": "Q2-SECRET",
                                                         "search[email]": "a@b.example"})
    assert [(line["event"], line["attempt"], line["status"]) for line in audit.lines] == \
        [("api.request", 1, 503), ("api.request", 2, None), ("api.request", 3, 200)]
    line = audit.lines[0]
    assert line["system"] == "books" and line["method"] == "GET"
    assert isinstance(line["duration_ms"], int)
    assert line["path"] == ("/x?access_token=[redacted]&page=2&client_secret=[redacted]"
                            "&search[email]=a%40b.example")
    assert "SECRET" not in repr(audit.lines)


@responses.activate
def test_a_token_request_leaves_no_secret_in_the_audit():
    responses.post(f"{BASE}/auth/oauth/token", json={"access_token": "AT-SECRET-1",
                                                     "refresh_token": "RT-SECRET-2"})
    audit = Lines()
    client(audit=audit).request("POST", "/auth/oauth/token", params={"code": "C0DE-SECRET"},
                                data={"client_secret": "CS-SECRET"}, authenticated=False)
    text = repr(audit.lines)
    assert "SECRET" not in text and "[redacted]" in text


def test_shown_path_redacts_by_name():
    assert shown_path("/a", {"devKey": "k", "sessionId": "s", "max": 100}) == \
        "/a?devKey=[redacted]&sessionId=[redacted]&max=100"
    assert shown_path("/a") == "/a"


@responses.activate
def test_calls_are_counted_across_threads():
    responses.get(f"{BASE}/x", json={})
    http = client(max_in_flight=4)
    threads = [threading.Thread(target=lambda: [http.get("/x") for _ in range(10)])
               for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert http.calls == 80
