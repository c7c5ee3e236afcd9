"""Offline Salesforce: the client-credentials token endpoint on the My Domain host, session
checks, the version list, the resources list, `userinfo`, the identity URL, `/limits` and one
SOQL query (`SELECT Name FROM Organization`), in the wire format of `api/salesforce.md` §1-2,
§7, §9, §11. sObjects, upserts and collections come later.

Choices where the API page is unsure ([O]/[R]/[G] there):
- token errors are HTTP 400 `{"error", "error_description"}` (§2.4), checked in this order:
  a `Host` of login.salesforce.com / test.salesforce.com -> `invalid_grant` "request not
  supported on this domain"; a grant other than client_credentials ->
  `unsupported_grant_type`; unknown consumer key -> `invalid_client_id`; wrong secret ->
  `invalid_client`; `run_as_user = False` -> `invalid_grant` "no client credentials user
  enabled". Credentials may come in the form or as HTTP Basic (§2.2);
- every token call mints a new session (no `refresh_token`, no `expires_in`, §2.3); the token
  starts with the org id (`00D…!`); `signature` is base64 HMAC-SHA256 of `id + issued_at`
  keyed with the consumer secret (Salesforce's documented scheme); `issued_at` is epoch
  milliseconds as a string;
- the identity URL `id` points at this emulator (`{base_url}/id/{org}/{user}`, served), not at
  login.salesforce.com, so that nothing leaves the machine;
- a session dies after `session_ttl` seconds without a call (each accepted call renews it) or
  on `expire_access_tokens()`; a missing, unknown or dead session answers 401
  `[{"message":"Session expired or invalid","errorCode":"INVALID_SESSION_ID"}]` with
  `WWW-Authenticate: Token`, on every guarded path including `/services/oauth2/userinfo`;
  `Authorization: Bearer <t>` and the older `OAuth <t>` are both accepted (§2.5);
- `userinfo` carries `organization_id`, `user_id`, `preferred_username` but no org name (as on
  the real host; the page says nothing): the org name comes from the Organization query;
- the query parser knows only `SELECT <Id and/or Name> FROM Organization [LIMIT n]`
  (keywords case-insensitive); anything else, or no `q`, answers 400 `MALFORMED_QUERY`;
- no 429s (§0): the `rate_429` knob answers 403 `REQUEST_LIMIT_EXCEEDED`, as does a call once
  `api_usage` reaches `api_limit` (15,000, the Developer Edition figure of §9); random 503s
  are `[{"errorCode":"SERVER_UNAVAILABLE",…}]`;
- `Sforce-Limit-Info: api-usage=<used>/<limit>` is on every `/services/data/…` answer (§11);
  only accepted calls count;
- the API versions offered run from v31.0 to `api_version`; an unknown version answers 404
  `NOT_FOUND`.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
import secrets
from datetime import timedelta
from typing import Any

from .server import Abort, Emulator, Knobs, Reply, Request

_CHECKSUM = "ABCDEFGHIJKLMNOPQRSTUVWXYZ012345"
ERROR_CODES = {400: "BAD_REQUEST", 401: "INVALID_SESSION_ID", 403: "REQUEST_LIMIT_EXCEEDED",
               404: "NOT_FOUND", 500: "UNKNOWN_EXCEPTION", 503: "SERVER_UNAVAILABLE"}
SESSION_EXPIRED = [{"message": "Session expired or invalid", "errorCode": "INVALID_SESSION_ID"}]
QUERY = re.compile(r"^\s*SELECT\s+(?P<fields>[\w\s,]+?)\s+FROM\s+Organization"
                   r"(?:\s+LIMIT\s+(?P<limit>\d+))?\s*$", re.IGNORECASE)
ORG_FIELDS = {"id": "Id", "name": "Name"}


def sf18(id15: str) -> str:
    """The 18-character, case-insensitive form of a 15-character Salesforce id."""
    suffix = ""
    for start in (0, 5, 10):
        bits = sum(1 << n for n, c in enumerate(id15[start:start + 5]) if "A" <= c <= "Z")
        suffix += _CHECKSUM[bits]
    return id15 + suffix


def api_error(status: int, code: str, message: str) -> Abort:
    return Abort(Reply(status, [{"message": message, "errorCode": code}]))


def oauth_error(error: str, description: str) -> Abort:
    return Abort(Reply(400, {"error": error, "error_description": description}))


def release(version: int) -> str:
    """The release name of an API version: 65 is Winter '26, 66 Spring '26, 67 Summer '26."""
    index = version - 65
    return f"{('Winter', 'Spring', 'Summer')[index % 3]} '{26 + index // 3:02d}"


class SalesforceSandbox(Emulator):
    client_id = "sandbox-sf-consumer-key"
    client_secret = "sandbox-sf-consumer-secret"
    org_id = sf18("00DSB0000001234")
    user_id = sf18("005SB0000004567")
    username = "integration@sandbox-org.example"

    def __init__(self, knobs: Knobs | None = None, *, clock: Any = None,
                 session_ttl: int = 7200, org_name: str = "Sandbox Org",
                 api_version: str = "v66.0", api_limit: int = 15000):
        super().__init__(knobs, clock)
        match = re.fullmatch(r"v(\d+)\.0", api_version)
        if not match:
            raise ValueError(f"api_version must look like v66.0, not {api_version!r}")
        self.session_ttl = session_ttl
        self.org_name = org_name
        self.api_version = api_version
        self.versions = [f"{n}.0" for n in range(31, int(match.group(1)) + 1)]
        self.api_limit = api_limit
        self.api_usage = 0
        self.run_as_user = True  # False: the app has no Run-As user (§2.4)
        self.token_calls = 0
        self._sessions: dict[str, dict[str, Any]] = {}
        self._fail_left, self._fail_status, self._fail_body = 0, 503, None

        self.route("POST", "/services/oauth2/token", self._token, open=True)
        self.route("GET", "/services/data", self._versions, open=True)
        self.route("GET", "/services/data/{version}", self._resources)
        self.route("GET", "/services/data/{version}/query", self._query)
        self.route("GET", "/services/data/{version}/limits", self._limits)
        self.route("GET", "/services/oauth2/userinfo", self._userinfo)
        self.route("GET", "/id/{org}/{user}", self._identity)

    @property
    def base_url(self) -> str:
        """The My Domain root, also the `instance_url` of the token response."""
        return self.root_url

    # -- knobs and test controls --------------------------------------------------------
    def expire_access_tokens(self) -> None:
        with self.lock:
            for entry in self._sessions.values():
                entry["expired"] = True

    def fail_next(self, n: int, status: int = 503, body: Any = None) -> None:
        """The next n API requests (not token calls) get this answer."""
        with self._meta:
            self._fail_left, self._fail_status, self._fail_body = n, status, body

    # -- hooks ----------------------------------------------------------------------------
    def handle(self, req: Request) -> Reply:
        reply = super().handle(req)
        if req.path.startswith("/services/data/v"):
            with self._meta:
                used = self.api_usage
            reply.headers["Sforce-Limit-Info"] = f"api-usage={used}/{self.api_limit}"
        return reply

    def fault_reply(self, req: Request, status: int) -> Reply:
        if status == 429:  # Salesforce has no 429: quota trouble is 403 (§0)
            return api_error(403, "REQUEST_LIMIT_EXCEEDED", "TotalRequests Limit exceeded.").reply
        return api_error(status, ERROR_CODES.get(status, "UNKNOWN_EXCEPTION"),
                         "The server is temporarily unable to handle the request.").reply

    def not_found_reply(self, req: Request) -> Reply:
        return api_error(404, "NOT_FOUND", "The requested resource does not exist").reply

    def method_not_allowed_reply(self, req: Request) -> Reply:
        return api_error(405, "METHOD_NOT_ALLOWED",
                         f"HTTP Method '{req.method}' not allowed. Allowed are GET,HEAD").reply

    def guard(self, req: Request) -> Reply | None:
        if self.take("_fail_left"):
            if self._fail_body is not None:
                return Reply(self._fail_status, self._fail_body)
            return api_error(self._fail_status, ERROR_CODES.get(
                self._fail_status, "UNKNOWN_EXCEPTION"), "Failure injected by the sandbox.").reply
        auth = (req.header("Authorization") or "").strip()
        scheme, _, token = auth.partition(" ")
        token = token.strip() if scheme.lower() in ("bearer", "oauth") else ""
        now = self.clock.now()
        with self.lock:
            entry = self._sessions.get(token) if token else None
            live = entry is not None and not entry["expired"] and (
                now < entry["last"] + timedelta(seconds=self.session_ttl))
            if live:
                entry["last"] = now
        if not live:
            return Reply(401, SESSION_EXPIRED, {"WWW-Authenticate": "Token"})
        with self._meta:
            if self.api_usage >= self.api_limit:
                return api_error(403, "REQUEST_LIMIT_EXCEEDED",
                                 "TotalRequests Limit exceeded.").reply
            self.api_usage += 1
        return None

    # -- OAuth ---------------------------------------------------------------------------
    def _token(self, req: Request) -> Reply:
        with self._meta:
            self.token_calls += 1
        data = req.form()
        basic = req.header("Authorization") or ""
        if basic.lower().startswith("basic "):
            try:
                cid, _, secret = base64.b64decode(basic[6:].strip()).decode().partition(":")
            except ValueError:
                raise oauth_error("invalid_client", "invalid client credentials") from None
            data.setdefault("client_id", cid)
            data.setdefault("client_secret", secret)
        host = (req.header("Host") or "").split(":")[0].lower()
        if host in ("login.salesforce.com", "test.salesforce.com"):
            raise oauth_error("invalid_grant", "request not supported on this domain")
        if data.get("grant_type") != "client_credentials":
            raise oauth_error("unsupported_grant_type", "grant type not supported")
        if data.get("client_id") != self.client_id:
            raise oauth_error("invalid_client_id", "client identifier invalid")
        if data.get("client_secret") != self.client_secret:
            raise oauth_error("invalid_client", "invalid client credentials")
        if not self.run_as_user:
            raise oauth_error("invalid_grant", "no client credentials user enabled")
        now = self.clock.now()
        token = f"{self.org_id[:15]}!AQ{secrets.token_urlsafe(72)}"
        with self.lock:
            self._sessions[token] = {"last": now, "expired": False}
        identity = self._identity_url()
        issued_at = str(int(now.timestamp() * 1000))
        signature = base64.b64encode(hmac.new(
            self.client_secret.encode(), (identity + issued_at).encode(),
            hashlib.sha256).digest()).decode()
        return Reply(200, {"access_token": token, "signature": signature,
                           "token_format": "opaque", "instance_url": self.base_url,
                           "id": identity, "token_type": "Bearer", "issued_at": issued_at,
                           "scope": "api"})

    def _identity_url(self) -> str:
        return f"{self.base_url}/id/{self.org_id}/{self.user_id}"

    # -- REST -----------------------------------------------------------------------------
    def _version(self, req: Request) -> str:
        version = req.match["version"]
        if not version.startswith("v") or version[1:] not in self.versions:
            raise api_error(404, "NOT_FOUND", "The requested resource does not exist")
        return version

    def _versions(self, req: Request) -> Reply:
        return Reply(200, [{"label": release(int(v.split(".")[0])), "url": f"/services/data/v{v}",
                            "version": v} for v in self.versions])

    def _resources(self, req: Request) -> Reply:
        base = f"/services/data/{self._version(req)}"
        names = ("sobjects", "query", "queryAll", "limits", "composite", "search", "tooling",
                 "recent", "analytics", "connect", "chatter", "actions", "process", "quickActions",
                 "tabs", "theme", "appMenu", "compactLayouts", "jobs", "licensing", "support",
                 "ui-api")
        return Reply(200, {name: f"{base}/{name}" for name in names})

    def _query(self, req: Request) -> Reply:
        version = self._version(req)
        q = req.arg("q")
        if not q:
            raise api_error(400, "MALFORMED_QUERY", "A query string has to be specified")
        m = QUERY.match(q)
        fields = [f.strip() for f in m.group("fields").split(",")] if m else []
        canonical = [ORG_FIELDS.get(f.lower()) for f in fields]
        if not m or None in canonical or len(set(canonical)) != len(canonical):
            raise api_error(400, "MALFORMED_QUERY", f"unexpected token in query: {q!r} (the "
                            "sandbox understands only SELECT Id, Name FROM Organization)")
        record: dict[str, Any] = {"attributes": {
            "type": "Organization",
            "url": f"/services/data/{version}/sobjects/Organization/{self.org_id}"}}
        for name in canonical:
            record[name] = self.org_id if name == "Id" else self.org_name
        limit = m.group("limit")
        records = [record][:int(limit)] if limit is not None else [record]
        return Reply(200, {"totalSize": len(records), "done": True, "records": records})

    def _limits(self, req: Request) -> Reply:
        self._version(req)
        with self._meta:
            used = self.api_usage
        return Reply(200, {"DailyApiRequests": {"Max": self.api_limit,
                                                "Remaining": self.api_limit - used}})

    def _urls(self) -> dict[str, str]:
        rest = f"{self.base_url}/services/data/{{version}}/"
        return {"enterprise": f"{self.base_url}/services/Soap/c/{{version}}/{self.org_id[:15]}",
                "rest": rest, "sobjects": rest + "sobjects/", "query": rest + "query/",
                "search": rest + "search/", "recent": rest + "recent/",
                "limits": rest + "limits/", "custom_domain": self.base_url}

    def _userinfo(self, req: Request) -> Reply:
        return Reply(200, {
            "sub": self._identity_url(), "user_id": self.user_id,
            "organization_id": self.org_id, "preferred_username": self.username,
            "nickname": "integration", "name": "Integration User", "given_name": "Integration",
            "family_name": "User", "email": self.username, "email_verified": True,
            "zoneinfo": "America/Los_Angeles", "locale": "en_US", "language": "en_US",
            "utcOffset": -28800000, "active": True, "user_type": "STANDARD",
            "is_salesforce_integration_user": False, "is_app_installed": True,
            "updated_at": "2026-01-02T15:04:05Z", "urls": self._urls()})

    def _identity(self, req: Request) -> Reply:
        if (req.match["org"], req.match["user"]) != (self.org_id, self.user_id):
            raise api_error(404, "NOT_FOUND", "The requested resource does not exist")
        return Reply(200, {
            "id": self._identity_url(), "asserted_user": True, "user_id": self.user_id,
            "organization_id": self.org_id, "username": self.username,
            "nick_name": "integration", "display_name": "Integration User",
            "email": self.username, "email_verified": True, "first_name": "Integration",
            "last_name": "User", "timezone": "America/Los_Angeles", "active": True,
            "user_type": "STANDARD", "language": "en_US", "locale": "en_US",
            "utcOffset": -28800000, "last_modified_date": "2026-01-02T15:04:05.000+0000",
            "is_app_installed": True, "urls": self._urls()})
