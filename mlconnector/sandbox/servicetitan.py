"""Offline ServiceTitan: the client-credentials token endpoint, the per-call checks (bearer
token, `ST-App-Key`, `{tenant}` in the path), the 60-calls-a-second limit and one cheap
authenticated call, in the wire format of `api/servicetitan.md` §1-3. Data endpoints come later.

Choices where the API page is unsure ([unconfirmed]/[community] there):
- tokens live `access_token_ttl` (900) seconds; each token call mints a new one (no refresh
  token); the token is JWT-shaped (`typ: at+jwt`) but opaque to the emulator;
- token errors are IdentityServer's bare `{"error": ...}` with HTTP 400: `invalid_client`
  (unknown id or wrong secret, missing either), `unsupported_grant_type` (anything but
  client_credentials); credentials may come in the form or as HTTP Basic;
- a missing, unknown or expired token answers 401, an RFC 7807 `ApiErrorResponse` body
  (§3.3) with `title: "Unauthorized"` and `WWW-Authenticate: Bearer` (plus
  `error="invalid_token"` when a token was sent). The token is accepted with or without the
  `Bearer ` prefix (§2.3);
- a missing or wrong app key answers **403** (not 401), `title: "Forbidden"`, with
  `errors: {"ST-App-Key": [...]}`: it is a configuration error, so a client that re-fetches
  the token once on 401 will not do so for it. The key may also come as the query parameter
  `servicetitanapplicationkey` (§2.3);
- a `{tenant}` other than the one the token was issued for answers 403 with
  `errors: {"tenant": [...]}` ("app not connected to tenant", §2.3);
- checks run in that order: token, app key, tenant, then the rate limit;
- rate limit (§3.4): `per_second` (default 60) calls per rolling second per tenant, counted
  on calls that pass authentication; over it: 429, `Retry-After: 1`, an ApiErrorResponse;
  random 503s (knobs, fail_next) are ApiErrorResponse bodies too;
- the cheap "who am I" call: the page documents no tenant-info endpoint, so it is
  `GET /settings/v2/tenant/{tenant}/business-units` (paginated envelope of §3.1) holding one
  business unit named `tenant_name`, whose `tenant` object names the tenant (fields per
  ServiceTitan's `tenant-settings-v2` spec, `BusinessUnitResponse`).
"""

from __future__ import annotations

import base64
import json
import secrets
from collections import deque
from datetime import timedelta
from typing import Any

from .server import Abort, Emulator, Knobs, Reply, Request

SCOPE = ("tn.acc.invoices:r tn.acc.payments:r tn.crm.customers:r tn.inv.vendors:r "
         "tn.inv.purchaseorders:r tn.pbk.materials:r tn.pbk.services:r tn.pbk.equipment:r "
         "tn.set.businessunits:r")
TITLES = {400: "One or more validation errors occurred.", 401: "Unauthorized",
          403: "Forbidden", 404: "Not Found", 405: "Method Not Allowed",
          409: "Conflict", 429: "Too Many Requests", 500: "Internal Server Error",
          502: "Bad Gateway", 503: "Service Unavailable"}
TYPES = {400: "https://tools.ietf.org/html/rfc7231#section-6.5.1",
         401: "https://tools.ietf.org/html/rfc7235#section-3.1",
         403: "https://tools.ietf.org/html/rfc7231#section-6.5.3",
         404: "https://tools.ietf.org/html/rfc7231#section-6.5.4",
         429: "https://tools.ietf.org/html/rfc6585#section-4",
         503: "https://tools.ietf.org/html/rfc7231#section-6.6.4"}


def problem(status: int, errors: dict[str, list[str]] | None = None, *,
            title: str | None = None, headers: dict[str, str] | None = None) -> Reply:
    """An `ApiErrorResponse` (RFC 7807, api/servicetitan.md §3.3)."""
    body = {"type": TYPES.get(status, "https://tools.ietf.org/html/rfc7231"),
            "title": title or TITLES.get(status, "Error"), "status": status,
            "traceId": f"00-{secrets.token_hex(16)}-{secrets.token_hex(8)}-00",
            "errors": errors or {}, "data": {}}
    return Reply(status, body, headers or {})


def oauth_error(error: str) -> Abort:
    return Abort(Reply(400, {"error": error}))


def _b64(obj: Any) -> str:
    raw = json.dumps(obj, separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


class ServiceTitanSandbox(Emulator):
    client_id = "sandbox-st-client-id"
    client_secret = "sandbox-st-client-secret"
    app_key = "sandbox-st-app-key"

    def __init__(self, knobs: Knobs | None = None, *, tenant_id: str = "1234567",
                 clock: Any = None, access_token_ttl: int = 900,
                 tenant_name: str = "Sandbox Plumbing Co", per_second: int | None = 60):
        super().__init__(knobs, clock)
        self.tenant_id = str(tenant_id)
        self.tenant_name = tenant_name
        self.access_token_ttl = access_token_ttl
        self.per_second = per_second  # None: no limit; read on every call
        self.token_calls = 0
        self.business_unit_id = 1001
        self._access: dict[str, dict[str, Any]] = {}
        self._recent: deque[float] = deque()  # monotonic times of the last second's calls
        self._fail_left, self._fail_status, self._fail_body = 0, 503, None

        self.route("POST", "/connect/token", self._token, open=True)
        self.route("GET", "/settings/v2/tenant/{tenant}/business-units", self._business_units)

    @property
    def base_url(self) -> str:
        return self.root_url

    @property
    def auth_url(self) -> str:
        """The real auth host is separate (auth[-integration].servicetitan.io); the path is
        the same."""
        return self.root_url

    # -- knobs and test controls --------------------------------------------------------
    def expire_access_tokens(self) -> None:
        with self.lock:
            for entry in self._access.values():
                entry["expired"] = True

    def fail_next(self, n: int, status: int = 503, body: Any = None) -> None:
        """The next n API requests (not token calls) get this answer."""
        with self._meta:
            self._fail_left, self._fail_status, self._fail_body = n, status, body

    # -- hooks ----------------------------------------------------------------------------
    def fault_reply(self, req: Request, status: int) -> Reply:
        if status == 429:
            return problem(429, {"": ["Rate limit exceeded. Retry later."]},
                           headers={"Retry-After": "1"})
        return problem(status, {"": ["The service is temporarily unavailable."]})

    def not_found_reply(self, req: Request) -> Reply:
        return problem(404, {"": [f"No resource at {req.path}."]})

    def method_not_allowed_reply(self, req: Request) -> Reply:
        return problem(405, {"": [f"{req.method} is not allowed on {req.path}."]})

    def guard(self, req: Request) -> Reply | None:
        if self.take("_fail_left"):
            if self._fail_body is not None:
                return Reply(self._fail_status, self._fail_body)
            return self.fault_reply(req, self._fail_status)
        early = self._check_token(req) or self._check_app_key(req) or self._check_tenant(req)
        return early or self._check_rate()

    def _check_token(self, req: Request) -> Reply | None:
        auth = (req.header("Authorization") or "").strip()
        token = auth[7:].strip() if auth.lower().startswith("bearer ") else auth
        with self.lock:
            entry = self._access.get(token) if token else None
            live = entry is not None and not entry["expired"] and (
                self.clock.now() < entry["created"] + timedelta(seconds=entry["ttl"]))
        if live:
            return None
        challenge = 'Bearer error="invalid_token"' if token else "Bearer"
        message = ("The access token is missing." if not token else
                   "The access token is expired." if entry is not None else
                   "The access token is invalid.")
        return problem(401, {"": [message]}, headers={"WWW-Authenticate": challenge})

    def _check_app_key(self, req: Request) -> Reply | None:
        key = req.header("ST-App-Key") or req.arg("servicetitanapplicationkey")
        if key == self.app_key:
            return None
        message = "The ST-App-Key header is required." if not key else \
            "The application key is not valid."
        return problem(403, {"ST-App-Key": [message]})

    def _check_tenant(self, req: Request) -> Reply | None:
        tenant = req.match.get("tenant")
        if tenant is None or tenant == self.tenant_id:
            return None
        return problem(403, {"tenant": [
            f"The application is not connected to tenant {tenant}."]})

    def _check_rate(self) -> Reply | None:
        limit = self.per_second
        if limit is None:
            return None
        now = self.clock.monotonic()
        with self._meta:
            while self._recent and self._recent[0] <= now - 1.0:
                self._recent.popleft()
            if len(self._recent) >= limit:
                return problem(429, {"": [f"Rate limit of {limit} calls per second per "
                                          "application per tenant exceeded."]},
                               headers={"Retry-After": "1"})
            self._recent.append(now)
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
                raise oauth_error("invalid_client") from None
            data.setdefault("client_id", cid)
            data.setdefault("client_secret", secret)
        if data.get("client_id") != self.client_id or \
                data.get("client_secret") != self.client_secret:
            raise oauth_error("invalid_client")
        if data.get("grant_type") != "client_credentials":
            raise oauth_error("unsupported_grant_type")
        now = self.clock.now()
        ttl = self.access_token_ttl
        stamp = int(now.timestamp())
        header = {"alg": "RS256", "kid": "SANDBOX", "typ": "at+jwt"}
        claims = {"nbf": stamp, "exp": stamp + ttl, "iss": self.auth_url,
                  "client_id": self.client_id, "tenant": self.tenant_id,
                  "jti": secrets.token_hex(16), "iat": stamp, "scope": SCOPE.split()}
        token = f"{_b64(header)}.{_b64(claims)}.{secrets.token_urlsafe(32)}"
        with self.lock:
            self._access[token] = {"created": now, "ttl": ttl, "expired": False}
        return Reply(200, {"access_token": token, "expires_in": ttl, "token_type": "Bearer",
                           "scope": SCOPE})

    # -- the cheap authenticated call ---------------------------------------------------
    def _business_units(self, req: Request) -> Reply:
        errors: dict[str, list[str]] = {}
        values: dict[str, int] = {}
        for name, default, low, high in (("page", 1, 1, None), ("pageSize", 50, 1, 5000)):
            raw = req.arg(name)
            try:
                values[name] = default if raw in (None, "") else int(raw)
            except ValueError:
                errors[name] = [f"The value '{raw}' is not valid."]
                continue
            if values[name] < low or (high is not None and values[name] > high):
                errors[name] = [f"{name} must be between {low} and {high or 2**31 - 1}."]
        include_total = (req.arg("includeTotal") or "").lower()
        if include_total not in ("", "true", "false"):
            errors["includeTotal"] = [f"The value '{req.arg('includeTotal')}' is not valid."]
        if errors:
            return problem(400, errors)
        page, size = values["page"], values["pageSize"]
        units = [self._business_unit()]
        start = (page - 1) * size
        return Reply(200, {"page": page, "pageSize": size,
                           "hasMore": start + size < len(units),
                           "totalCount": len(units) if include_total == "true" else None,
                           "data": units[start:start + size]})

    def _business_unit(self) -> dict[str, Any]:
        stamp = "2024-01-02T15:04:05.0000000Z"
        return {"id": self.business_unit_id, "active": True, "name": self.tenant_name,
                "officialName": self.tenant_name, "email": "office@sandbox.example",
                "currency": "USD", "phoneNumber": "5555550100", "invoiceHeader": None,
                "invoiceMessage": None, "defaultTaxRate": 0.0825,
                "authorizationParagraph": None, "acknowledgementParagraph": None,
                "address": {"street": "1 Sandbox Way", "unit": None, "city": "Fresno",
                            "state": "CA", "zip": "93701", "country": "USA",
                            "latitude": None, "longitude": None,
                            "isManualCoordinates": False, "isMilitary": False},
                "materialSku": None, "quickbooksClass": None, "accountCode": None,
                "franchiseId": None, "conceptCode": None, "corporateContractNumber": None,
                "trade": None, "division": None, "tagTypeIds": [],
                "tenant": {"id": int(self.tenant_id) if self.tenant_id.isdigit()
                           else self.tenant_id, "name": self.tenant_name,
                           "accountCode": None, "franchiseId": None, "conceptCode": None,
                           "modifiedOn": stamp},
                "createdOn": stamp, "modifiedOn": stamp, "externalData": []}
