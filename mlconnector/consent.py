"""`mlconnector auth …`: consent, storing and inspecting credentials, and a ping.

OAuth consent (authorization code): a random `state` that must come back unchanged; the
browser where there is one, catching the redirect on a plain-http loopback redirect URI;
otherwise (and always for FreshBooks' https-only redirect URIs, which nothing local can
answer without a certificate) the user pastes the address the browser was sent to.
"""

from __future__ import annotations

import http.server
import json
import secrets as pysecrets
import sys
import webbrowser
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

from .audit import Audit
from .auth import client_auth, refresh_expiries
from .clock import SYSTEM_CLOCK, Clock
from .errors import AuthError, ConfigError, MlcError
from .http import HttpClient, is_loopback
from .secrets import SecretStore
from .state import State

OAUTH_TYPES = ("freshbooks", "quickbooks")
QUICKBOOKS_SCOPE = "com.intuit.quickbooks.accounting"
FRESHBOOKS_SCOPES = (
    "user:profile:read user:bills:read user:bills:write user:bill_vendors:read "
    "user:bill_vendors:write user:bill_payments:read user:bill_payments:write "
    "user:expenses:read"
)


def authorize_url(system: Any, state: str) -> str:
    query = {"client_id": system.client_id, "response_type": "code",
             "redirect_uri": system.redirect_uri, "state": state}
    if system.type == "quickbooks":
        query["scope"] = QUICKBOOKS_SCOPE
    return f"{system.authorize_url()}?{urlencode(query)}"


def parse_redirect(pasted: str, expected_state: str) -> str:
    """The authorization code from the address the browser landed on."""
    return redirect_params(pasted, expected_state)["code"]


def redirect_params(pasted: str, expected_state: str) -> dict[str, str]:
    """The redirect's parameters (code, and QuickBooks' realmId), its state checked."""
    text = pasted.strip()
    query = parse_qs(urlsplit(text).query) if "?" in text else parse_qs(text)
    if "error" in query:
        raise AuthError(f"consent was refused: {query['error'][0]} "
                        f"{query.get('error_description', [''])[0]}".strip())
    state = (query.get("state") or [""])[0]
    if not pysecrets.compare_digest(state, expected_state):
        raise AuthError("the redirect's state does not match this login (a stale or forged "
                        "redirect); nothing was stored", fix="start again: mlconnector auth login")
    code = (query.get("code") or [""])[0]
    if not code:
        raise AuthError("the pasted address has no authorization code")
    return {k: v[0] for k, v in query.items()}


class RedirectCatcher:
    """One request on a loopback http redirect URI: bound before the browser is opened
    (a fast browser must not find nothing listening), answered, then closed."""

    def __init__(self, redirect_uri: str):
        parts = urlsplit(redirect_uri)
        hit: dict[str, str] = {}
        self.hit = hit

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802
                hit["url"] = f"{redirect_uri.split('?')[0]}?{urlsplit(self.path).query}"
                self.send_response(200)
                self.send_header("Content-Type", "text/plain; charset=utf-8")
                self.end_headers()
                self.wfile.write(b"mlconnector: consent received; you can close this tab.\n")

            def log_message(self, *args: Any) -> None:
                pass

        self.server = http.server.HTTPServer((parts.hostname or "127.0.0.1", parts.port or 80),
                                             Handler)

    def wait(self, timeout: float = 300) -> str:
        self.server.timeout = timeout
        try:
            self.server.handle_request()
        finally:
            self.close()
        if "url" not in self.hit:
            raise AuthError("no redirect arrived in time",
                            fix="mlconnector auth login --no-browser")
        return self.hit["url"]

    def close(self) -> None:
        self.server.server_close()


def login(system: Any, *, state_db: State, audit: Audit, data_dir: Path,
          no_browser: bool = False, account_id: str | None = None,
          read_line: Callable[[], str] | None = None, out: Callable[[str], None] | None = None,
          open_browser: Callable[[str], bool] | None = None, clock: Clock = SYSTEM_CLOCK,
          choose: Callable[[list[dict[str, str]]], str] | None = None) -> dict[str, str]:
    if system.type not in OAUTH_TYPES:
        raise ConfigError(f"`auth login` is for OAuth consent ({', '.join(OAUTH_TYPES)}); "
                          f"{system.name} is {system.type}: store its secrets with "
                          f"`mlconnector auth set {system.name} FIELD`")
    say = out or (lambda s: sys.stderr.write(s + "\n"))
    store = SecretStore(system.name)
    client_secret = store.get("client_secret")
    if not client_secret:
        raise AuthError(f"{system.name}: no client_secret yet",
                        fix=f"mlconnector auth set {system.name} client_secret")
    if not store.writable():
        raise AuthError(f"{system.name}: no keyring to keep the tokens in",
                        fix="see `mlconnector auth status` and the README (keyrings.cryptfile)")
    state = pysecrets.token_urlsafe(24)
    url = authorize_url(system, state)
    parts = urlsplit(system.redirect_uri)
    local = parts.scheme == "http" and is_loopback(parts.hostname)
    opener = open_browser or webbrowser.open
    catcher = RedirectCatcher(system.redirect_uri) if not no_browser and local else None
    if catcher is not None and opener(url):
        say("Waiting for the browser to come back to " + system.redirect_uri)
        landed = catcher.wait()
    else:
        if catcher is not None:
            catcher.close()
        say("Open this address in a browser, approve access, then paste here the whole "
            "address the browser was sent to (it may show an error page; that is fine):")
        say(url)
        landed = (read_line or sys.stdin.readline)()
    params = redirect_params(landed, state)
    form = {"grant_type": "authorization_code", "code": params["code"],
            "redirect_uri": system.redirect_uri}
    headers = client_auth(form, system.client_id, client_secret,
                          basic=system.type == "quickbooks")
    token_client = HttpClient(system.name, _origin(system.token_url()), audit=audit,
                              clock=clock)
    resp = token_client.request("POST", urlsplit(system.token_url()).path, data=form,
                                headers={**headers, "x-include-refresh-token-hard-expires-in":
                                         "true"} if system.type == "quickbooks" else headers,
                                authenticated=False, idempotent=False)
    body = resp.body or {}
    if not isinstance(body.get("refresh_token"), str) or not body.get("access_token"):
        raise AuthError(f"{system.name}: the token endpoint answered without tokens")
    now = clock.now().timestamp()
    expires_at = float(body.get("created_at") or now) + float(body.get("expires_in") or 3600)
    store.save_refresh_token(body["refresh_token"])
    store.set("access_token", json.dumps({"access_token": body["access_token"],
                                          "expires_at": expires_at, "refreshed_at": now,
                                          **refresh_expiries(body, now)}))
    headers = {"Authorization": f"Bearer {body['access_token']}"}
    api = _WithHeaders(HttpClient(system.name, system.resolved_base_url(), audit=audit,
                                  clock=clock), headers)
    expires = datetime.fromtimestamp(expires_at, UTC).isoformat(timespec="minutes")
    if system.type == "quickbooks":
        return _learn_realm(system, params, api, state_db, audit) | {"expires": expires}
    chosen = _choose_business(system, api, account_id, choose)
    state_db.set_value(f"freshbooks:{system.name}:account_id", chosen)
    audit.write("auth.login", system=system.name, account_id=chosen)
    return {"account_id": chosen, "expires": expires}


def _origin(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}"


def _learn_realm(system: Any, params: dict[str, str], api: Any, state_db: State,
                 audit: Audit) -> dict[str, str]:
    """QuickBooks names the company (realmId) only on the redirect."""
    realm = params.get("realmId") or ""
    if not realm.isdigit():
        raise AuthError("the redirect carries no realmId (QuickBooks company id); nothing "
                        "was stored", fix=f"start again: mlconnector auth login {system.name}")
    if system.realm_id and system.realm_id != realm:
        raise AuthError(f"consent was given for QuickBooks company {realm}, but "
                        f"systems.{system.name}.realm_id is {system.realm_id}",
                        fix=f"remove realm_id from the config or log in to company "
                            f"{system.realm_id}")
    state_db.set_value(f"quickbooks:{system.name}:realm_id", realm)
    info = api.get(f"/v3/company/{realm}/companyinfo/{realm}",
                   params={"minorversion": system.minor_version}).body or {}
    company = str((info.get("CompanyInfo") or {}).get("CompanyName") or "?")
    audit.write("auth.login", system=system.name, realm_id=realm)
    return {"account_id": f"{realm} ({company})", "realm_id": realm, "company": company}


def _choose_business(system: Any, api: Any, account_id: str | None,
                     choose: Callable[[list[dict[str, str]]], str] | None) -> str:
    from .connectors.freshbooks import discover_account_id

    businesses = discover_account_id(api)
    chosen = account_id or system.account_id
    if not chosen:
        owners = [b for b in businesses if b["role"] in ("owner", "business_partner")]
        pool = owners or businesses
        if len(pool) == 1:
            chosen = pool[0]["account_id"]
        elif pool and choose:
            chosen = choose(pool)
        else:
            listing = ", ".join(f"{b['account_id']} ({b['name']}, {b['role']})" for b in pool)
            raise AuthError(f"the login reaches several businesses: {listing or 'none'}",
                            fix=f"mlconnector auth login {system.name} --account-id ID")
    if chosen not in {b["account_id"] for b in businesses}:
        raise AuthError(f"account {chosen} is not one this login can reach")
    return chosen


class _WithHeaders:
    """An HttpClient that adds fixed headers (the token just received)."""

    def __init__(self, http: HttpClient, headers: dict[str, str]):
        self.http, self.headers = http, headers

    def get(self, path: str, **kw: Any):
        return self.http.request("GET", path, headers=self.headers, **kw)


def status(system: Any, state_db: State) -> dict[str, Any]:
    store = SecretStore(system.name)
    out: dict[str, Any] = {"system": system.name, "type": system.type, "secrets": {}}
    for field in system.secret_fields:
        out["secrets"][field] = store.source(field) or "missing"
        if field == "refresh_token" and store.source(field) == "environment" and \
                store.get_stored("refresh_token") and store.get_refresh_token() != \
                store.env.get(system.env_var("refresh_token")):
            out["secrets"][field] = "keyring (rotated from the environment value)"
    cached = store.get_stored("access_token")
    if cached:
        token = json.loads(cached)
        out["access_token_expires"] = _when(token.get("expires_at"))
        out["last_refresh"] = _when(token.get("refreshed_at"))
        # QuickBooks: the refresh token's rolling (100-day) and hard (5-year) ends
        out["refresh_token_expires"] = _when(token.get("refresh_expires_at"))
        out["consent_expires"] = _when(token.get("refresh_hard_expires_at"))
    session = store.get_stored("session")
    if session:
        out["session_last_used"] = _when(json.loads(session).get("last_used"))
    for what in ("account_id", "realm_id"):
        learned = state_db.get_value(f"{system.type}:{system.name}:{what}")
        if learned or getattr(system, what, None):
            out[what] = getattr(system, what, None) or learned
    out["keyring_usable"] = store.writable()
    return out


def logout(system: Any, state_db: State, audit: Audit) -> list[str]:
    store = SecretStore(system.name)
    done = []
    if system.type == "freshbooks":
        token = store.get_refresh_token()
        secret = store.get("client_secret")
        if token and secret:
            try:
                http = HttpClient(system.name, system.resolved_base_url(), audit=audit)
                http.request("POST", "/auth/oauth/revoke", json={
                    "client_id": system.client_id, "client_secret": secret, "token": token},
                    authenticated=False, idempotent=True)
                done.append("revoked the refresh token at FreshBooks")
            except MlcError as exc:
                done.append(f"could not revoke at FreshBooks ({exc}); forgotten here anyway")
    if system.type == "quickbooks":
        token = store.get_refresh_token()
        secret = store.get("client_secret")
        if token and secret:
            try:
                http = HttpClient(system.name, _origin(system.revoke_url()), audit=audit)
                http.request("POST", urlsplit(system.revoke_url()).path, json={"token": token},
                             headers=client_auth({}, system.client_id, secret, basic=True),
                             authenticated=False, idempotent=True)
                done.append("revoked the consent at QuickBooks (the app is disconnected)")
            except MlcError as exc:
                done.append(f"could not revoke at QuickBooks ({exc}); forgotten here anyway")
        state_db.delete_value(f"quickbooks:{system.name}:realm_id")
    for field in ("refresh_token", "refresh_token.bootstrap_sha256", "access_token",
                  "session"):
        if store.get_stored(field):
            store.delete(field)
            done.append(f"forgot {field}")
    state_db.delete_value(f"freshbooks:{system.name}:account_id")
    if store.source("refresh_token") == "environment":
        done.append(f"{system.env_var('refresh_token')} is still set in the environment")
    audit.write("auth.logout", system=system.name)
    return done


def ping(system: Any, *, state_db: State, audit: Audit, data_dir: Path,
         writes: list[tuple[str, Any, dict[str, Any]]] | None = None) -> str:
    """One cheap authenticated call; for ServiceNow also the tables and columns the pairs
    write (`writes`: their flows' write entity and mapping), since it ignores unknown
    ones without a word."""
    from .connectors import open_system

    conn: Any = open_system(system, state=state_db, audit=audit, data_dir=data_dir)
    if system.type == "freshbooks":
        me = conn.http.get("/auth/api/v1/users/me").body.get("response", {})
        names = [m.get("business", {}).get("name") for m in me.get("business_memberships", [])
                 if m.get("business", {}).get("account_id") == conn.account_id]
        return (f"connected to FreshBooks as {me.get('email', '?')}, business "
                f"{names[0] if names else '?'} (account {conn.account_id})")
    if system.type == "bill":
        info = conn.http.get("/v3/login/session").body or {}
        return (f"connected to BILL organization {info.get('organizationId', '?')} as user "
                f"{info.get('userId', '?')}")
    if system.type == "quickbooks":
        return (f"connected to QuickBooks company {conn.company_name()} "
                f"(realm {conn.realm_id})")
    if system.type == "servicenow":
        return _ping_servicenow(system, conn, conn.schema_for(
            [(entity, mapping) for entity, mapping, _ in writes or []]))
    if system.type == "servicetitan":
        body = conn.http.get(f"/settings/v2/tenant/{system.tenant_id}/business-units",
                             params={"pageSize": 1}).body or {}
        units = body.get("data") or []
        tenant = (units[0].get("tenant") or {}).get("name") if units else None
        name = tenant or (units[0].get("name") if units else "?")
        return f"connected to ServiceTitan tenant {system.tenant_id} ({name})"
    if system.type == "salesforce":
        body = conn.http.get(f"/services/data/{system.api_version}/query",
                             params={"q": "SELECT Name FROM Organization"}).body or {}
        org = ((body.get("records") or [{}])[0]).get("Name", "?")
        head = f"connected to Salesforce organization {org} ({system.resolved_base_url()})"
        wanted: dict[str, set[str]] = {}
        for entity, mapping, options in writes or []:
            for obj, names in conn.schema_for([(entity, mapping)], options).items():
                wanted.setdefault(obj, set()).update(names)
        problems = conn.check_fields(wanted)
        if problems:
            raise ConfigError("Salesforce lacks fields the pairs write (it would refuse "
                              "every record):\n  " + "\n  ".join(problems) + f"\n  ({head})")
        return head + (f"; {sum(len(v) for v in wanted.values())} fields on "
                       f"{len(wanted)} objects checked" if wanted else "")
    return f"connected to {system.name}"


def _ping_servicenow(system: Any, conn: Any, schema: dict[str, set[str]]) -> str:
    from .connectors.servicenow import ROLES

    conn.list("company", "", limit=1, fields=["sys_id"])  # authenticates, or exit 3
    who = system.username if system.auth == "basic" else f"OAuth client {system.client_id}"
    problems = conn.check_schema(schema) if schema else []
    head = (f"connected to ServiceNow {system.resolved_base_url()} as {who}; "
            f"Accounts Payable Operations: {'yes' if conn.has_apo() else 'no (suppliers are '}"
            f"{'' if conn.has_apo() else 'core_company rows only)'}")
    if problems:
        raise ConfigError("ServiceNow does not have what the pairs write (it would ignore "
                          "unknown columns without a word):\n  " + "\n  ".join(problems)
                          + f"\n  ({head}; the service account needs {ROLES})")
    return head + (f"; {sum(len(v) for v in schema.values())} columns in "
                   f"{len(schema)} tables checked" if schema else "")


def _when(ts: Any) -> str | None:
    return datetime.fromtimestamp(float(ts), UTC).isoformat(timespec="minutes") if ts else None
