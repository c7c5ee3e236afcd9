"""auth.py: OAuth refresh-token rotation under a file lock, BILL sessions, client
credentials. HTTP is mocked with `responses`, time is a FakeClock, the keyring is the
SandboxKeyring (conftest), and every `process` is a second authenticator on the same
keyring and locks directory."""

from __future__ import annotations

import json
import threading
from datetime import timedelta
from urllib.parse import parse_qs

import keyring
import pytest
import responses
from keyring.backends import fail

from mlconnector.auth import (
    BasicAuth,
    BillSessionAuth,
    ClientCredentialsAuth,
    OAuthRefreshAuth,
)
from mlconnector.clock import FakeClock
from mlconnector.errors import AuthError, ReauthRequired, UnavailableError
from mlconnector.http import HttpClient, Response
from mlconnector.sandbox.keyring_backend import SandboxKeyring
from mlconnector.secrets import CHAIN_FIELD, SecretStore, digest

BASE = "https://api.example.test"
TOKEN_URL = f"{BASE}/auth/oauth/token"
CLIENT_SECRET = "CLIENT-SECRET-0123"
BOOTSTRAP = "RT-BOOTSTRAP-0000"


class Lines:
    def __init__(self):
        self.lines: list[dict] = []

    def write(self, event, **fields):
        self.lines.append({"event": event, **fields})


class Provider:
    """A FreshBooks-like token endpoint: single-use refresh tokens, 12-hour access tokens.

    Registers itself with `responses`; `seen_at_api` records, for each API call, the
    bearer it carried and what the keyring held at that moment."""

    def __init__(self, clock: FakeClock, store: SecretStore, lifetime: int = 43200):
        self.clock, self.store, self.lifetime = clock, store, lifetime
        self.valid = {BOOTSTRAP}
        self.issued: list[tuple[str, str]] = []
        self.token_calls = 0
        self.forms: list[dict] = []
        self.live: set[str] = set()
        self.seen_at_api: list[dict] = []
        self.lock = threading.Lock()
        responses.add_callback(responses.POST, TOKEN_URL, callback=self.token)
        responses.add_callback(responses.GET, f"{BASE}/api", callback=self.api)

    def token(self, request):
        form = {k: v[0] for k, v in parse_qs(request.body).items()}
        with self.lock:
            self.token_calls += 1
            self.forms.append(form)
            if form.get("client_secret") != CLIENT_SECRET:
                return 401, {}, json.dumps({"error": "invalid_client",
                                            "error_description": "bad client"})
            if form.get("refresh_token") not in self.valid:
                return 400, {}, json.dumps({
                    "error": "invalid_grant", "error_description":
                    f"The grant {form.get('refresh_token')} is invalid or was used."})
            self.valid.discard(form["refresh_token"])
            n = len(self.issued) + 1
            access, refresh = f"AT-{n:04d}-SECRET", f"RT-{n:04d}-SECRET"
            self.issued.append((access, refresh))
            self.valid.add(refresh)
            self.live.add(access)
        return 200, {}, json.dumps({
            "access_token": access, "token_type": "Bearer", "expires_in": self.lifetime,
            "refresh_token": refresh, "scope": "user:profile:read",
            "created_at": int(self.clock.now().timestamp())})

    def api(self, request):
        bearer = request.headers.get("Authorization", "")[7:]
        self.seen_at_api.append({"bearer": bearer,
                                 "stored_refresh": self.store.get_stored("refresh_token"),
                                 "stored_access": self.store.get_stored("access_token")})
        if bearer not in self.live:
            return 401, {}, json.dumps({"error": "unauthenticated"})
        return 200, {}, json.dumps({"ok": True})


@pytest.fixture
def clock():
    return FakeClock()


@pytest.fixture
def env():
    return {"MLCONNECTOR_BOOKS_CLIENT_SECRET": CLIENT_SECRET,
            "MLCONNECTOR_BOOKS_REFRESH_TOKEN": BOOTSTRAP}


@pytest.fixture
def store(env):
    return SecretStore("books", env=env)


def oauth(store, tmp_path, clock, **kw) -> OAuthRefreshAuth:
    return OAuthRefreshAuth("books", token_url=TOKEN_URL, client_id="CID",
                            redirect_uri="https://localhost:8765/callback", secrets=store,
                            locks_dir=tmp_path / "locks", clock=clock, **kw)


def http_for(auth, clock, **kw) -> HttpClient:
    return HttpClient("books", BASE, authenticator=auth, clock=clock, jitter=lambda: 1.0, **kw)


# -- OAuth refresh tokens -------------------------------------------------------------------
@responses.activate
def test_the_first_call_refreshes_and_persists_both_tokens_before_using_them(
        store, tmp_path, clock):
    provider = Provider(clock, store)
    http = http_for(oauth(store, tmp_path, clock), clock)
    assert http.get("/api").body == {"ok": True}
    assert provider.token_calls == 1
    form = provider.forms[0]
    assert form == {"grant_type": "refresh_token", "refresh_token": BOOTSTRAP,
                    "client_id": "CID", "client_secret": CLIENT_SECRET,
                    "redirect_uri": "https://localhost:8765/callback"}
    access, refresh = provider.issued[0]
    seen = provider.seen_at_api[0]
    assert seen["bearer"] == access
    assert seen["stored_refresh"] == refresh          # stored before the first use
    assert json.loads(seen["stored_access"])["access_token"] == access
    assert store.get_stored(CHAIN_FIELD) == digest(BOOTSTRAP)
    assert store.get_refresh_token() == refresh        # the keyring now wins over the env


@responses.activate
def test_the_token_is_reused_then_refreshed_ahead_of_its_expiry(store, tmp_path, clock):
    provider = Provider(clock, store)
    http = http_for(oauth(store, tmp_path, clock, margin=300), clock)
    http.get("/api")
    clock.advance(43200 - 301)
    http.get("/api")
    assert provider.token_calls == 1
    clock.advance(2)  # now inside the 5-minute margin
    http.get("/api")
    assert provider.token_calls == 2
    assert provider.forms[1]["refresh_token"] == provider.issued[0][1]
    assert [s["bearer"] for s in provider.seen_at_api] == [
        provider.issued[0][0], provider.issued[0][0], provider.issued[1][0]]


@responses.activate
def test_a_second_process_reuses_the_fresh_token_instead_of_refreshing(
        store, tmp_path, clock):
    provider = Provider(clock, store)
    first, second = oauth(store, tmp_path, clock), oauth(store, tmp_path, clock)
    http_for(first, clock).get("/api")
    # a later run: a new authenticator, same keyring and locks
    http_for(second, clock).get("/api")
    assert provider.token_calls == 1
    # both hold the token; it expires; one of them refreshes, the other picks that up
    clock.advance(43200)
    http_for(first, clock).get("/api")
    http_for(second, clock).get("/api")
    assert provider.token_calls == 2
    assert {s["bearer"] for s in provider.seen_at_api[2:]} == {provider.issued[1][0]}


@responses.activate
def test_a_later_run_continues_the_chain_not_the_spent_environment_value(
        env, tmp_path, clock):
    provider = Provider(clock, SecretStore("books", env=env))
    http_for(oauth(SecretStore("books", env=env), tmp_path, clock), clock).get("/api")
    clock.advance(86400)
    http_for(oauth(SecretStore("books", env=env), tmp_path, clock), clock).get("/api")
    assert provider.token_calls == 2
    assert provider.forms[1]["refresh_token"] == provider.issued[0][1]


@responses.activate
def test_a_hundred_threads_on_an_expired_token_make_one_token_call(store, tmp_path, clock):
    provider = Provider(clock, store)
    auth = oauth(store, tmp_path, clock)
    other = oauth(store, tmp_path, clock)  # a second process, racing too
    http = http_for(auth, clock)
    http.get("/api")
    http_for(other, clock).get("/api")
    clock.advance(43200)
    headers: list[dict] = []
    errors: list[Exception] = []
    start = threading.Barrier(100, timeout=10)

    def work(i):
        h: dict[str, str] = {}
        try:
            start.wait()
            (auth if i % 2 else other).apply(h, http)
        except Exception as exc:  # noqa: BLE001
            errors.append(exc)
        headers.append(h)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(100)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(20)
    assert not errors
    assert provider.token_calls == 2  # the first refresh, and exactly one more
    assert {h["Authorization"] for h in headers} == {f"Bearer {provider.issued[1][0]}"}


@responses.activate
def test_a_refused_access_token_is_refreshed_once_and_the_call_repeated(
        store, tmp_path, clock):
    provider = Provider(clock, store)
    http = http_for(oauth(store, tmp_path, clock), clock)
    http.get("/api")
    provider.live.clear()  # the provider revoked it early
    assert http.get("/api").body == {"ok": True}
    assert provider.token_calls == 2
    assert [s["bearer"] for s in provider.seen_at_api] == [
        provider.issued[0][0], provider.issued[0][0], provider.issued[1][0]]


@responses.activate
def test_threads_refused_together_refresh_once(store, tmp_path, clock):
    provider = Provider(clock, store)
    auth = oauth(store, tmp_path, clock)
    http = http_for(auth, clock)
    http.get("/api")
    provider.live.clear()
    threads = [threading.Thread(target=http.get, args=("/api",)) for _ in range(10)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert provider.token_calls == 2


@responses.activate
def test_invalid_grant_is_an_auth_error_with_the_fix(env, tmp_path, clock):
    env["MLCONNECTOR_BOOKS_REFRESH_TOKEN"] = "RT-ALREADY-USED-SECRET"
    store = SecretStore("books", env=env)
    Provider(clock, store)
    audit = Lines()
    with pytest.raises(AuthError) as exc:
        http_for(oauth(store, tmp_path, clock), clock, audit=audit).get("/api")
    assert "already used or revoked" in str(exc.value)
    assert exc.value.fix == "run: mlconnector auth login books"
    assert "SECRET" not in str(exc.value) and "SECRET" not in repr(audit.lines)


@responses.activate
def test_a_wrong_client_secret_names_its_fix(env, tmp_path, clock):
    env["MLCONNECTOR_BOOKS_CLIENT_SECRET"] = "WRONG-SECRET-1"
    store = SecretStore("books", env=env)
    Provider(clock, store)
    with pytest.raises(AuthError) as exc:
        http_for(oauth(store, tmp_path, clock), clock).get("/api")
    assert "auth set books client_secret" in exc.value.fix
    assert "WRONG-SECRET-1" not in str(exc.value)


@responses.activate
def test_no_writable_keyring_stops_before_the_refresh_token_is_spent(store, tmp_path, clock):
    provider = Provider(clock, store)
    keyring.set_keyring(fail.Keyring())
    with pytest.raises(AuthError) as exc:
        http_for(oauth(store, tmp_path, clock), clock).get("/api")
    assert provider.token_calls == 0 and BOOTSTRAP in provider.valid
    assert "keyrings.cryptfile" in exc.value.fix
    assert "KEYRING_CRYPTFILE_PASSWORD" in exc.value.fix
    assert "MLCONNECTOR_BOOKS_REFRESH_TOKEN" in exc.value.fix
    assert BOOTSTRAP not in str(exc.value) + exc.value.fix


@responses.activate
def test_no_refresh_token_anywhere_asks_for_a_login(tmp_path, clock):
    store = SecretStore("books", env={"MLCONNECTOR_BOOKS_CLIENT_SECRET": CLIENT_SECRET})
    provider = Provider(clock, store)
    with pytest.raises(AuthError) as exc:
        http_for(oauth(store, tmp_path, clock), clock).get("/api")
    assert exc.value.fix == "run: mlconnector auth login books"
    assert provider.token_calls == 0


@responses.activate
def test_a_failed_store_after_the_refresh_says_the_token_was_spent(store, tmp_path, clock):
    Provider(clock, store)
    ring = keyring.get_keyring()
    original = ring.set_password

    def broken(service, username, password):
        if username == "refresh_token":
            raise keyring.errors.PasswordSetError("disk full")
        original(service, username, password)

    ring.set_password = broken
    with pytest.raises(AuthError, match="spent") as exc:
        http_for(oauth(store, tmp_path, clock), clock).get("/api")
    assert "auth login books" in exc.value.fix


@responses.activate
def test_a_token_endpoint_on_another_host(store, tmp_path, clock):
    responses.post("https://oauth.other.test/oauth2/v1/tokens/bearer", json={
        "access_token": "AT-QB", "expires_in": 3600, "refresh_token": "RT-QB",
        "x_refresh_token_expires_in": 8726400})
    responses.get(f"{BASE}/v3/company/1/query", json={"QueryResponse": {}})
    auth = OAuthRefreshAuth("books", token_url="https://oauth.other.test/oauth2/v1/tokens/bearer",
                            client_id="CID", redirect_uri=None, secrets=store,
                            locks_dir=tmp_path, clock=clock)
    audit = Lines()
    http_for(auth, clock, audit=audit).get("/v3/company/1/query")
    assert responses.calls[1].request.headers["Authorization"] == "Bearer AT-QB"
    assert store.get_refresh_token() == "RT-QB"
    assert [line["path"] for line in audit.lines] == ["/oauth2/v1/tokens/bearer",
                                                      "/v3/company/1/query"]


@responses.activate
def test_a_short_lived_token_is_still_used(store, tmp_path, clock):
    provider = Provider(clock, store, lifetime=120)  # shorter than the 5-minute margin
    http = http_for(oauth(store, tmp_path, clock), clock)
    http.get("/api")
    http.get("/api")
    assert provider.token_calls == 1


@responses.activate
def test_no_secret_reaches_the_audit(store, tmp_path, clock):
    provider = Provider(clock, store)
    audit = Lines()
    http = http_for(oauth(store, tmp_path, clock), clock, audit=audit)
    http.get("/api")
    clock.advance(43200)
    http.get("/api")
    text = repr(audit.lines)
    for secret in [BOOTSTRAP, CLIENT_SECRET, *[t for pair in provider.issued for t in pair]]:
        assert secret not in text
    assert [line["path"] for line in audit.lines] == ["/auth/oauth/token", "/api",
                                                      "/auth/oauth/token", "/api"]


# -- BILL sessions ------------------------------------------------------------------------------
BILL = "https://gateway.example.test/connect"
PASSWORD = "BILL-PASSWORD-SECRET"
DEV_KEY = "DEVKEY-SECRET-01"


class BillServer:
    def __init__(self, clock: FakeClock, idle: float = 35 * 60):
        self.clock, self.idle = clock, idle
        self.logins = 0
        self.sessions: dict[str, float] = {}
        self.lock = threading.Lock()
        self.bodies: list[dict] = []
        responses.add_callback(responses.POST, f"{BILL}/v3/login", callback=self.login)
        responses.add_callback(responses.GET, f"{BILL}/v3/vendors", callback=self.vendors)

    def login(self, request):
        body = json.loads(request.body)
        with self.lock:
            self.bodies.append(body)
            if body.get("password") != PASSWORD:
                return 401, {}, json.dumps([{"code": "BDC_1101", "message":
                                             "Incorrect user name, password or organization."}])
            self.logins += 1
            sid = f"SID-{self.logins}-SECRET"
            self.sessions[sid] = self.clock.now().timestamp()
        return 200, {}, json.dumps({"organizationId": body["organizationId"],
                                    "sessionId": sid, "userId": "00601"})

    def vendors(self, request):
        sid = request.headers.get("sessionId")
        now = self.clock.now().timestamp()
        assert request.headers.get("devKey") == DEV_KEY
        with self.lock:
            last = self.sessions.get(sid)
            if last is None or now - last >= self.idle:
                self.sessions.pop(sid, None)
                return 401, {}, json.dumps([{"code": "BDC_1109",
                                             "message": "Session is invalid. Please log in."}])
            self.sessions[sid] = now
        return 200, {}, json.dumps({"results": []})


def bill_classify(resp: Response):
    body = resp.body if isinstance(resp.body, list) else []
    code = body[0].get("code") if body and isinstance(body[0], dict) else None
    if code == "BDC_1109":
        return ReauthRequired("session invalid", system="ap", status=resp.status, code=code)
    return None


@pytest.fixture
def bill_store():
    return SecretStore("ap", env={"MLCONNECTOR_AP_PASSWORD": PASSWORD,
                                  "MLCONNECTOR_AP_DEV_KEY": DEV_KEY})


def bill_auth(store, tmp_path, clock, **kw) -> BillSessionAuth:
    return BillSessionAuth("ap", username="ap@example.test", organization_id="00801ORG",
                           secrets=store, locks_dir=tmp_path / "locks", clock=clock, **kw)


def bill_http(auth, clock, **kw) -> HttpClient:
    return HttpClient("ap", BILL, classify=bill_classify, authenticator=auth, clock=clock,
                      max_in_flight=3, jitter=lambda: 1.0, **kw)


@responses.activate
def test_bill_logs_in_once_and_sends_devkey_and_session(bill_store, tmp_path, clock):
    server = BillServer(clock)
    http = bill_http(bill_auth(bill_store, tmp_path, clock), clock)
    http.get("/v3/vendors")
    http.get("/v3/vendors")
    assert server.logins == 1
    assert server.bodies[0] == {"username": "ap@example.test", "password": PASSWORD,
                                "organizationId": "00801ORG", "devKey": DEV_KEY}
    last = responses.calls[-1].request.headers
    assert last["sessionId"] == "SID-1-SECRET" and last["devKey"] == DEV_KEY


@responses.activate
def test_bill_session_is_reused_across_runs(bill_store, tmp_path, clock):
    server = BillServer(clock)
    bill_http(bill_auth(bill_store, tmp_path, clock), clock).get("/v3/vendors")
    clock.advance(10 * 60)
    bill_http(bill_auth(bill_store, tmp_path, clock), clock).get("/v3/vendors")
    assert server.logins == 1


@responses.activate
def test_bill_last_use_is_written_back_at_most_once_a_minute(bill_store, tmp_path, clock):
    server = BillServer(clock)
    http = bill_http(bill_auth(bill_store, tmp_path, clock), clock)
    writes = []
    ring = keyring.get_keyring()
    original = ring.set_password
    ring.set_password = lambda s, u, p: (writes.append(u), original(s, u, p))
    for _ in range(30):  # a call every 10 s for 5 minutes
        http.get("/v3/vendors")
        clock.advance(10)
    assert 1 <= writes.count("session") <= 1 + 5
    for _ in range(8):  # then one every 5 minutes: 45 minutes after the login in all
        http.get("/v3/vendors")
        clock.advance(5 * 60)
    # a later run sees the recent use and keeps the session, long after the login
    bill_http(bill_auth(bill_store, tmp_path, clock), clock).get("/v3/vendors")
    assert server.logins == 1


@responses.activate
def test_bill_idle_expiry_means_a_new_login(bill_store, tmp_path, clock):
    server = BillServer(clock)
    http = bill_http(bill_auth(bill_store, tmp_path, clock), clock)
    http.get("/v3/vendors")
    clock.advance(34 * 60)  # within 35 minutes but inside the 2-minute margin
    http.get("/v3/vendors")
    assert server.logins == 2
    assert [c.request.url.rsplit("/", 1)[1] for c in responses.calls] == [
        "login", "vendors", "login", "vendors"]


@responses.activate
def test_bill_session_refused_with_bdc_1109_logs_in_again(bill_store, tmp_path, clock):
    server = BillServer(clock)
    http = bill_http(bill_auth(bill_store, tmp_path, clock), clock)
    http.get("/v3/vendors")
    server.sessions.clear()  # BILL dropped it
    assert http.get("/v3/vendors").body == {"results": []}
    assert server.logins == 2


@responses.activate
def test_bill_two_processes_log_in_once(bill_store, tmp_path, clock):
    server = BillServer(clock)
    auths = [bill_auth(bill_store, tmp_path, clock) for _ in range(2)]
    https = [bill_http(a, clock) for a in auths]
    threads = [threading.Thread(target=https[i % 2].get, args=("/v3/vendors",))
               for i in range(20)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert server.logins == 1


@responses.activate
def test_bill_login_cap_refuses_before_burning_the_dev_key(bill_store, tmp_path, clock):
    server = BillServer(clock)
    locks = tmp_path / "locks"
    locks.mkdir()
    now = clock.now().timestamp()
    stamps = [now - 3700] * 5 + [now - 3500 + i for i in range(200)]
    (locks / "ap.logins.json").write_text(json.dumps(stamps))
    with pytest.raises(UnavailableError, match="200 BILL logins in the last hour"):
        bill_http(bill_auth(bill_store, tmp_path, clock), clock).get("/v3/vendors")
    assert server.logins == 0
    clock.advance(101)  # the oldest of the 200 ages out
    bill_http(bill_auth(bill_store, tmp_path, clock), clock).get("/v3/vendors")
    assert server.logins == 1


@responses.activate
def test_bill_logins_are_counted_across_runs(bill_store, tmp_path, clock):
    server = BillServer(clock)
    for _ in range(3):
        bill_http(bill_auth(bill_store, tmp_path, clock, logins_per_hour=3),
                  clock).get("/v3/vendors")
        bill_store.delete("session")  # as if each run found no usable session
    with pytest.raises(UnavailableError):
        bill_http(bill_auth(bill_store, tmp_path, clock, logins_per_hour=3),
                  clock).get("/v3/vendors")
    assert server.logins == 3


@responses.activate
def test_bill_logins_slow_down_beyond_five_a_minute(bill_store, tmp_path, clock):
    server = BillServer(clock)
    auth = bill_auth(bill_store, tmp_path, clock)
    http = bill_http(auth, clock)
    for _ in range(5):
        auth.apply({}, http)       # logs in the first time only
        auth.reauthenticate(http)  # replaces the session this thread sent
    assert server.logins == 6
    assert clock.slept == [60.0]  # the 6th login waited for the minute to pass


@responses.activate
def test_bill_wrong_password_names_its_fix(tmp_path, clock):
    BillServer(clock)
    store = SecretStore("ap", env={"MLCONNECTOR_AP_PASSWORD": "WRONG-PASSWORD-9",
                                   "MLCONNECTOR_AP_DEV_KEY": DEV_KEY})
    with pytest.raises(AuthError) as exc:
        bill_http(bill_auth(store, tmp_path, clock), clock).get("/v3/vendors")
    assert exc.value.fix == "run: mlconnector auth set ap password"
    assert "BDC_1101" in str(exc.value)
    assert "WRONG-PASSWORD-9" not in str(exc.value) and DEV_KEY not in str(exc.value)


@responses.activate
def test_bill_works_without_a_keyring(bill_store, tmp_path, clock):
    server = BillServer(clock)
    keyring.set_keyring(fail.Keyring())
    http = bill_http(bill_auth(bill_store, tmp_path, clock), clock)
    http.get("/v3/vendors")
    http.get("/v3/vendors")
    assert server.logins == 1


@responses.activate
def test_bill_audit_never_carries_a_secret(bill_store, tmp_path, clock):
    server = BillServer(clock)
    audit = Lines()
    http = bill_http(bill_auth(bill_store, tmp_path, clock), clock, audit=audit)
    http.get("/v3/vendors")
    server.sessions.clear()
    http.get("/v3/vendors")
    text = repr(audit.lines)
    assert "SECRET" not in text and PASSWORD not in text
    assert len(audit.lines) == 5


# -- client credentials and Basic ---------------------------------------------------------------
@responses.activate
def test_client_credentials_are_cached_across_runs_and_renewed_on_refusal(tmp_path, clock):
    calls = {"n": 0}

    def token(request):
        calls["n"] += 1
        form = {k: v[0] for k, v in parse_qs(request.body).items()}
        assert form == {"grant_type": "client_credentials", "client_id": "CID",
                        "client_secret": "CC-SECRET"}
        return 200, {}, json.dumps({"access_token": f"CC-AT-{calls['n']}", "expires_in": 900})

    responses.add_callback(responses.POST, "https://auth.example.test/connect/token",
                           callback=token)
    responses.get(f"{BASE}/tenant/1/customers", status=200, json={"data": []})
    store = SecretStore("st", env={"MLCONNECTOR_ST_CLIENT_SECRET": "CC-SECRET",
                                   "MLCONNECTOR_ST_APP_KEY": "APP-KEY"})

    def make():
        return ClientCredentialsAuth("st", token_url="https://auth.example.test/connect/token",
                                     client_id="CID", secrets=store, locks_dir=tmp_path,
                                     clock=clock, header_secrets={"ST-App-Key": "app_key"})

    http = HttpClient("st", BASE, authenticator=make(), clock=clock)
    http.get("/tenant/1/customers")
    HttpClient("st", BASE, authenticator=make(), clock=clock).get("/tenant/1/customers")
    assert calls["n"] == 1
    sent = responses.calls[-1].request.headers
    assert sent["Authorization"] == "Bearer CC-AT-1" and sent["ST-App-Key"] == "APP-KEY"
    clock.advance(900 - 59)
    http.get("/tenant/1/customers")
    assert calls["n"] == 2


@responses.activate
def test_basic_auth_refused_is_final(tmp_path, clock):
    responses.get(f"{BASE}/api/now/table/x", status=401, json={"error": {"message": "no"}})
    store = SecretStore("sn", env={"MLCONNECTOR_SN_PASSWORD": "pw"})
    auth = BasicAuth("sn", username="svc", secrets=store)
    with pytest.raises(AuthError) as exc:
        HttpClient("sn", BASE, authenticator=auth, clock=clock).get("/api/now/table/x")
    assert "auth set sn password" in exc.value.fix
    assert responses.calls[0].request.headers["Authorization"] == "Basic c3ZjOnB3"


def test_the_clock_margin_defaults(store, tmp_path, clock):
    auth = oauth(store, tmp_path, clock)
    token = {"access_token": "x", "lifetime": 43200,
             "expires_at": (clock.now() + timedelta(seconds=301)).timestamp()}
    assert auth._usable(token)
    token["expires_at"] -= 2
    assert not auth._usable(token)


@responses.activate
def test_bill_runs_on_a_keyring_in_trouble_when_its_secrets_are_in_the_environment(
        bill_store, tmp_path, clock):
    class Locked(SandboxKeyring):
        def get_password(self, service, username):
            raise keyring.errors.KeyringLocked("Failed to unlock the collection")

        def set_password(self, service, username, password):
            raise keyring.errors.KeyringLocked("Failed to unlock the collection")

    server = BillServer(clock)
    keyring.set_keyring(Locked())
    http = bill_http(bill_auth(bill_store, tmp_path, clock), clock)
    http.get("/v3/vendors")
    http.get("/v3/vendors")
    assert server.logins == 1
