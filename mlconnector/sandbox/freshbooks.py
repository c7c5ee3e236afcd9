"""Offline FreshBooks: OAuth (authorization code, single-use refresh tokens), users/me, and the
accounting resources the FreshBooks -> BILL pair uses (bills, bill vendors, bill payments,
expense categories), in the wire format of `api/freshbooks.md`.

Choices where the API page is unsure (all marked [?] there):
- validation errors answer 422; a body that is not JSON answers 400 errno 1005;
- a wrong account_id answers 403 errno 1003; an unknown id 404 errno 1012;
- a reused or unknown refresh token answers 400 `invalid_grant` (the OAuth norm), a wrong
  client secret 401 `invalid_client`;
- random 503s are a gateway's HTML page; 429s carry `Retry-After: 1` and errno 429;
- bill-vendor `created_at`/`updated_at` are UTC (the Python SDK's reading; the Node SDK says
  Eastern); expense-category timestamps are US/Eastern; bill timestamps UTC;
- an empty list answers `pages: 1`;
- `updated_at` never repeats for a record: a change within the same second as the last one is
  stamped one second later, so a version check by timestamp sees every change.
"""

from __future__ import annotations

import copy
import math
import secrets
from datetime import UTC, date, datetime, timedelta
from decimal import ROUND_HALF_UP, Decimal, InvalidOperation
from typing import Any
from urllib.parse import urlencode

from .server import Abort, Emulator, Knobs, Reply, Request, encoded

try:
    from zoneinfo import ZoneInfo

    EASTERN: Any = ZoneInfo("America/New_York")
except Exception:  # no tz database: a fixed EST offset is close enough for a sandbox
    from datetime import timezone

    EASTERN = timezone(timedelta(hours=-5))

CENT = Decimal("0.01")
STAMP = "%Y-%m-%d %H:%M:%S"
NOT_AUTHORIZED = "The server could not verify that you are authorized to access the URL requested."
SCOPES = ("user:profile:read user:bills:read user:bills:write user:bill_vendors:read "
          "user:bill_vendors:write user:bill_payments:read user:bill_payments:write "
          "user:expenses:read")
PAYMENT_TYPES = {"Check", "Credit", "Cash", "Bank Transfer", "Credit Card", "Debit", "PayPal",
                 "2Checkout", "VISA", "MASTERCARD", "DISCOVER", "AMEX", "DINERS", "JCB", "ACH",
                 "Other"}
VENDOR_FIELDS = ("vendor_name", "account_number", "primary_contact_email",
                 "primary_contact_first_name", "primary_contact_last_name", "phone", "website",
                 "street", "street2", "city", "province", "postal_code", "country",
                 "currency_code", "language", "is_1099", "note")
GATEWAY_503 = "<html><body><h1>503 Service Temporarily Unavailable</h1></body></html>"

# path under /accounting/account/{account_id}/ -> (singular key, list key, store, writable)
KINDS = {
    "bills/bills": ("bill", "bills", "bills", True),
    "bill_vendors/bill_vendors": ("bill_vendor", "bill_vendors", "vendors", True),
    "bill_payments/bill_payments": ("bill_payment", "bill_payments", "bill_payments", True),
    "expenses/categories": ("category", "categories", "categories", False),
}


def money(amount: Decimal, code: str = "USD") -> dict[str, str]:
    return {"amount": str(amount.quantize(CENT, ROUND_HALF_UP)), "code": code}


def errors(status: int, errno: int, message: str, **extra: Any) -> Abort:
    return Abort(Reply(status, {"response": {"errors": [
        {"errno": errno, "message": message, **extra}]}}))


def invalid(obj: str, field: str, message: str, errno: int = 1004, value: Any = None) -> Abort:
    extra = {"field": field, "object": obj} | ({"value": str(value)} if value is not None else {})
    return errors(422, errno, message, **extra)


def oauth_error(status: int, error: str, description: str) -> Abort:
    return Abort(Reply(status, {"error": error, "error_description": description}))


def _int(value: Any) -> int | None:
    """Ids arrive as ints or quoted strings."""
    if isinstance(value, bool):
        return None
    try:
        return int(str(value).strip())
    except (TypeError, ValueError):
        return None


def _decimal(value: Any) -> Decimal | None:
    if isinstance(value, bool) or value is None:
        return None
    try:
        d = Decimal(str(value).strip())
    except InvalidOperation:
        return None
    return d if d.is_finite() else None


def _date(value: Any) -> date | None:
    try:
        return date.fromisoformat(str(value))
    except ValueError:
        return None


def _plain(d: Decimal) -> str:
    """"15" for 15, "1.5" for 1.50: how responses write quantities and percentages."""
    return format(d.normalize(), "f")


class FreshBooksSandbox(Emulator):
    client_id = "sandbox-client-id"
    client_secret = "sandbox-client-secret"

    def __init__(self, knobs: Knobs | None = None, *, account_id: str = "SBX123",
                 access_token_ttl: int = 43200, clock: Any = None):
        super().__init__(knobs, clock)
        self.account_id = account_id
        self.access_token_ttl = access_token_ttl
        self.token_calls = 0
        self.bills: dict[int, dict[str, Any]] = {}
        self.vendors: dict[int, dict[str, Any]] = {}
        self.bill_payments: dict[int, dict[str, Any]] = {}
        self.categories: dict[int, dict[str, Any]] = {}
        self._next = {"bills": 1141, "vendors": 5321, "bill_payments": 909,
                      "categories": 65773, "lines": 2621}
        self._access: dict[str, dict[str, Any]] = {}
        self._refresh: dict[str, str] = {}   # live refresh token -> scope
        self._codes: dict[str, dict[str, Any]] = {}
        self._paid_by_bill: dict[int, list[int]] = {}      # bill id -> bill payment ids
        self._owed: dict[int, Decimal] = {}                 # vendorid -> outstanding
        self._owed_by_bill: dict[int, tuple[int, Decimal]] = {}
        self._fail_left, self._fail_status, self._fail_body = 0, 503, None
        self._e200_left = 0

        self.route("POST", "/auth/oauth/token", self._token, open=True)
        self.route("POST", "/auth/oauth/revoke", self._revoke, open=True)
        self.route("GET", "/oauth/authorize", self._authorize, open=True)
        self.route("GET", "/auth/api/v1/users/me", self._me)
        for path, kind in KINDS.items():
            base = "/accounting/account/{account}/" + path
            self.route("GET", base, lambda r, k=kind: self._list(r, k))
            self.route("GET", base + "/{id}", lambda r, k=kind: self._get(r, k))
            if kind[3]:
                self.route("POST", base, lambda r, k=kind: self._create(r, k))
                self.route("PUT", base + "/{id}", lambda r, k=kind: self._update(r, k))

    @property
    def base_url(self) -> str:
        return self.root_url

    # -- knobs and test controls --------------------------------------------------------
    def issue_refresh_token(self) -> str:
        """A valid single-use refresh token, as a consent would have produced."""
        token = secrets.token_hex(32)
        with self.lock:
            self._refresh[token] = SCOPES
        return token

    def expire_access_tokens(self) -> None:
        with self.lock:
            for entry in self._access.values():
                entry["expired"] = True

    def fail_next(self, n: int, status: int = 503, body: Any = None) -> None:
        """The next n API requests (not token calls) get this answer."""
        with self._meta:
            self._fail_left, self._fail_status, self._fail_body = n, status, body

    def errors_in_200_next(self, n: int) -> None:
        """The next n API requests answer HTTP 200 with an errors body, as the real API may."""
        with self._meta:
            self._e200_left = n

    def fault_reply(self, req: Request, status: int) -> Reply:
        if status == 429:
            return Reply(429, {"response": {"errors": [
                {"errno": 429, "message": "Too many requests. Please retry later."}]}},
                {"Retry-After": "1"})
        return Reply(status, GATEWAY_503, content_type="text/html")

    def not_found_reply(self, req: Request) -> Reply:
        return Reply(404, {"response": {"errors": [
            {"errno": 1012, "message": "Requested resource could not be found."}]}})

    def guard(self, req: Request) -> Reply | None:
        if self.take("_fail_left"):
            body = self._fail_body
            if body is None:
                return self.fault_reply(req, self._fail_status) if self._fail_status in (
                    429, 503) else errors(self._fail_status, self._fail_status,
                                          "Failure injected by the sandbox.").reply
            return Reply(self._fail_status, body)
        if self.take("_e200_left"):
            return Reply(200, {"response": {"errors": [
                {"errno": 1005, "message": "Parse error: the request could not be processed."}]}})
        auth = req.header("Authorization") or ""
        token = auth[7:].strip() if auth.lower().startswith("bearer ") else ""
        with self.lock:
            entry = self._access.get(token)
            live = bool(entry) and not entry["expired"] and (
                self.clock.now() < entry["created"] + timedelta(seconds=self.access_token_ttl))
        if not live:
            if req.path.startswith("/auth/api/"):
                return Reply(401, {"error": "unauthenticated", "error_description":
                                   "This action requires authentication to continue."})
            return errors(401, 1003, NOT_AUTHORIZED).reply
        if "account" in req.match and req.match["account"] != self.account_id:
            return errors(403, 1003, NOT_AUTHORIZED).reply
        return None

    # -- OAuth ---------------------------------------------------------------------------
    def _token(self, req: Request) -> Reply:
        with self._meta:
            self.token_calls += 1
        data = self._auth_body(req)
        self._check_client(data)
        grant = data.get("grant_type")
        with self.lock:
            if grant == "refresh_token":
                scope = self._refresh.pop(str(data.get("refresh_token")), None)
                if scope is None:
                    raise oauth_error(400, "invalid_grant", "The provided authorization grant is "
                                      "invalid, expired, revoked, or was issued to another client.")
            elif grant == "authorization_code":
                code = self._codes.pop(str(data.get("code")), None)
                fresh = code and self.clock.now() < code["created"] + timedelta(minutes=5)
                if not fresh or code["redirect_uri"] != data.get("redirect_uri"):
                    raise oauth_error(400, "invalid_grant", "The authorization code is invalid, "
                                      "expired, used, or does not match the redirect URI.")
                scope = code["scope"]
            else:
                raise oauth_error(400, "unsupported_grant_type",
                                  f"grant_type {grant!r} is not supported.")
            now = self.clock.now()
            access, refresh = secrets.token_hex(32), secrets.token_hex(32)
            self._access[access] = {"created": now, "expired": False}
            self._refresh[refresh] = scope
        return Reply(200, {"access_token": access, "token_type": "Bearer",
                           "expires_in": self.access_token_ttl, "refresh_token": refresh,
                           "scope": scope, "created_at": int(now.timestamp())})

    def _revoke(self, req: Request) -> Reply:
        data = self._auth_body(req)
        self._check_client(data)
        with self.lock:
            self._refresh.pop(str(data.get("token")), None)
            self._access.pop(str(data.get("token")), None)
        return Reply(200, {})

    def _authorize(self, req: Request) -> Reply:
        redirect_uri = req.arg("redirect_uri") or ""
        if req.arg("client_id") != self.client_id:
            raise oauth_error(400, "invalid_client", "Unknown client_id.")
        if not redirect_uri or "?" in redirect_uri:
            raise oauth_error(400, "invalid_request",
                              "redirect_uri is required and may not contain a query string.")
        query: dict[str, str] = {}
        if req.arg("response_type") != "code":
            query["error"] = "unsupported_response_type"
        else:
            code = secrets.token_hex(16)
            with self.lock:
                self._codes[code] = {"created": self.clock.now(), "redirect_uri": redirect_uri,
                                     "scope": req.arg("scope") or SCOPES}
            query["code"] = code
        if req.arg("state") is not None:
            query["state"] = req.arg("state") or ""
        return Reply(302, None, {"Location": f"{redirect_uri}?{urlencode(query)}"})

    def _auth_body(self, req: Request) -> dict[str, Any]:
        if "json" in (req.header("Content-Type") or ""):
            try:
                data = req.json()
            except ValueError:
                data = None
            if not isinstance(data, dict):
                raise oauth_error(400, "invalid_request", "The body is not a JSON object.")
            return data
        return req.form()

    def _check_client(self, data: dict[str, Any]) -> None:
        if data.get("client_id") != self.client_id or \
                data.get("client_secret") != self.client_secret:
            raise oauth_error(401, "invalid_client", "Client authentication failed due to "
                              "unknown client or wrong client secret.")

    def _me(self, req: Request) -> Reply:
        business = {"id": 7654321, "business_uuid": "5b0c5e4e-98c1-4b1f-9d0e-0a1b2c3d4e5f",
                    "name": "Sandbox Supplies Co.", "account_id": self.account_id,
                    "date_format": "mm/dd/yyyy", "phone_number": None}
        return Reply(200, {"response": {
            "id": 2345678, "identity_id": 2345678, "first_name": "Sam", "last_name": "Sandbox",
            "email": "owner@sandbox.example", "language": "en", "confirmed_at":
            "2024-01-02T15:04:05Z", "created_at": "2024-01-02T15:04:05Z",
            "business_memberships": [{"id": 111, "role": "owner", "business": business}],
            "roles": [{"id": 222, "role": "admin", "accountid": self.account_id}]}})

    # -- generic REST ----------------------------------------------------------------------
    def _list(self, req: Request, kind: tuple) -> Reply:
        single, plural, store, _ = kind
        page = _int(req.arg("page", "1"))
        per_page = _int(req.arg("per_page", "15"))
        if page is None or page < 0:
            raise errors(400, 1014, "page must be a positive integer.", field="page")
        if per_page is None or per_page < 1:
            raise errors(400, 1013, "per_page must be a positive integer.", field="per_page")
        page, per_page = max(page, 1), min(per_page, 100)
        matches = self._matcher(req, store)
        with self.lock:
            rows = self._sorted(req, [r for r in getattr(self, store).values() if matches(r)])
            pages = max(1, math.ceil(len(rows) / per_page))
            chunk = [self._render(req, store, r)
                     for r in rows[(page - 1) * per_page: page * per_page]]
            return encoded(200, {"response": {"result": {
                plural: chunk, "page": page, "pages": pages, "per_page": per_page,
                "total": len(rows)}}})

    def _matcher(self, req: Request, store: str):
        """The list's search[...] filters as a predicate; unknown ones are ignored."""
        vis = _int(req.arg("search[vis_state]"))
        vis = 0 if vis is None else vis
        bills = store == "bills"  # bills are the only resource here with documented filters
        vendorid = _int(req.arg("search[vendorid]")) if req.arg("search[vendorid]") else None
        ids = {_int(v) for v in req.params.get("search[ids][]", []) + req.params.get(
            "search[ids]", [])}
        statuses = set(req.params.get("search[statuses][]", []))
        currency = req.arg("search[currency_code]")

        def matches(row: dict[str, Any]) -> bool:
            return row.get("vis_state", 0) == vis and (not bills or (
                (vendorid is None or vendorid == row["vendorid"])
                and (not ids or row["id"] in ids)
                and (not statuses or row["status"] in statuses)
                and (currency is None or currency == row["currency_code"])))
        return matches

    def _sorted(self, req: Request, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
        field, _, direction = (req.arg("sort") or "").rpartition("_")
        if direction not in ("asc", "desc") or not rows or field not in rows[0]:
            return rows

        def key(row: dict[str, Any]) -> tuple:
            value = row.get(field)
            if isinstance(value, dict):
                value = _decimal(value.get("amount"))
            return (value is None, value if value is not None else 0)
        return sorted(rows, key=key, reverse=direction == "desc")

    def _render(self, req: Request, store: str, row: dict[str, Any]) -> dict[str, Any]:
        """The record as answered (encode it before releasing the lock)."""
        if store == "bills" and "vendor" in req.params.get("include[]", []):
            return {**row, "vendor": self.vendors.get(row["vendorid"])}
        return row

    def _find(self, store: str, single: str, raw_id: str) -> dict[str, Any]:
        row = getattr(self, store).get(_int(raw_id))
        if row is None:
            raise errors(404, 1012, f"{single.replace('_', ' ').capitalize()} not found.",
                         field="id", object=single, value=raw_id)
        return row

    def _get(self, req: Request, kind: tuple) -> Reply:
        single, _, store, _ = kind
        with self.lock:
            row = self._render(req, store, self._find(store, single, req.match["id"]))
            return encoded(200, {"response": {"result": {single: row}}})

    def _payload(self, req: Request, single: str) -> dict[str, Any]:
        try:
            body = req.json()
        except ValueError:
            raise errors(400, 1005, "Parse error: the body is not valid JSON.") from None
        payload = body.get(single) if isinstance(body, dict) else None
        if not isinstance(payload, dict):
            raise errors(400, 1001, f"The body must be an object under {single!r}.",
                         field=single)
        return payload

    def _create(self, req: Request, kind: tuple) -> Reply:
        single, _, store, _ = kind
        payload = self._payload(req, single)
        create = {"bills": self._create_bill, "vendors": self._create_vendor,
                  "bill_payments": self._create_payment}[store]
        with self.lock:
            row = self._render(req, store, create(payload))
            return encoded(200, {"response": {"result": {single: row}}})

    def _update(self, req: Request, kind: tuple) -> Reply:
        single, _, store, _ = kind
        payload = self._payload(req, single)
        update = {"bills": self._update_bill, "vendors": self._update_vendor,
                  "bill_payments": self._update_payment}[store]
        with self.lock:
            row = self._find(store, single, req.match["id"])
            if "vis_state" in payload:  # the vis_state phase wins; the rest is discarded
                vis = _int(payload["vis_state"])
                if vis not in (0, 1, 2):
                    raise invalid(single, "vis_state", "vis_state must be 0, 1 or 2.")
                update(row, {"vis_state": vis})
            else:
                update(row, payload)
            out = self._render(req, store, row)
            return encoded(200, {"response": {"result": {single: out}}})

    # -- the data ------------------------------------------------------------------------
    def _id(self, counter: str) -> int:
        self._next[counter] += 1
        return self._next[counter] - 1

    def _utc(self) -> str:
        return self.clock.now().astimezone(UTC).strftime(STAMP)

    def _stamp(self, row: dict[str, Any]) -> None:
        """Bump updated_at, never to the same value twice."""
        new = self._utc()
        old = row.get("updated_at")
        if old and new <= old:
            new = (datetime.strptime(old, STAMP) + timedelta(seconds=1)).strftime(STAMP)
        row["updated_at"] = new

    def _create_category(self, name: str, parentid: int | None = None,
                         is_cogs: bool = False) -> dict[str, Any]:
        cid = self._id("categories")
        stamp = self.clock.now().astimezone(EASTERN).strftime(STAMP)
        row = {"id": cid, "categoryid": cid, "category": name, "parentid": parentid,
               "is_cogs": is_cogs, "is_editable": False, "transaction_posted": False,
               "created_at": stamp, "updated_at": stamp, "vis_state": 0}
        self.categories[cid] = row
        return row

    def _create_vendor(self, payload: dict[str, Any]) -> dict[str, Any]:
        name = payload.get("vendor_name")
        if not isinstance(name, str) or not name.strip():
            raise invalid("bill_vendor", "vendor_name", "vendor_name is required.", errno=1001)
        vid = self._id("vendors")
        row: dict[str, Any] = {"vendorid": vid} | {f: None for f in VENDOR_FIELDS}
        row |= {"currency_code": "USD", "language": "en", "is_1099": False, "tax_defaults": [],
                "outstanding_balance": [], "overdue_balance": [], "created_at": self._utc(),
                "updated_at": None, "vis_state": 0}
        self._apply_vendor(row, payload)
        row["updated_at"] = row["created_at"]
        self.vendors[vid] = row
        return row

    def _apply_vendor(self, row: dict[str, Any], payload: dict[str, Any]) -> None:
        if "vendor_name" in payload and not str(payload["vendor_name"] or "").strip():
            raise invalid("bill_vendor", "vendor_name", "vendor_name may not be blank.",
                          errno=1001)
        for key in VENDOR_FIELDS:
            if key in payload:
                row[key] = bool(payload[key]) if key == "is_1099" else payload[key]

    def _update_vendor(self, row: dict[str, Any], payload: dict[str, Any]) -> None:
        if "vis_state" in payload:
            row["vis_state"] = payload["vis_state"]
        self._apply_vendor(row, payload)
        self._stamp(row)

    def _create_bill(self, payload: dict[str, Any]) -> dict[str, Any]:
        row: dict[str, Any] = {"id": None, "vendorid": None, "bill_number": None,
                               "issue_date": None, "due_date": None, "due_offset_days": 0,
                               "currency_code": "USD", "language": "en", "status": "unpaid",
                               "amount": None, "tax_amount": None, "total_amount": None,
                               "outstanding": None, "paid": None, "overall_category": None,
                               "overall_description": None, "attachment": None,
                               "bill_payments": [], "lines": [], "created_at": self._utc(),
                               "updated_at": None, "vis_state": 0}
        for required in ("vendorid", "issue_date", "lines"):
            if payload.get(required) in (None, "", []):
                raise invalid("bill", required, f"{required} is required.", errno=1001)
        self._apply_bill(row, payload)
        row["id"] = self._id("bills")
        row["updated_at"] = row["created_at"]
        self.bills[row["id"]] = row
        self._refresh_bill(row)
        return row

    def _apply_bill(self, row: dict[str, Any], payload: dict[str, Any]) -> None:
        """Validate everything first, then change the row (a refused update changes nothing)."""
        new: dict[str, Any] = {}
        if "vendorid" in payload:
            vendor = self.vendors.get(_int(payload["vendorid"]))
            if vendor is None:
                raise invalid("bill", "vendorid", "No bill vendor with this vendorid.",
                              value=payload["vendorid"])
            if vendor["vis_state"] == 1:
                raise invalid("bill", "vendorid", "The bill vendor is deleted.", errno=1011,
                              value=payload["vendorid"])
            new["vendorid"] = vendor["vendorid"]
        if "issue_date" in payload:
            if _date(payload["issue_date"]) is None:
                raise invalid("bill", "issue_date", "issue_date must be YYYY-MM-DD.",
                              value=payload["issue_date"])
            new["issue_date"] = str(payload["issue_date"])
        if "due_offset_days" in payload:
            offset = _int(payload["due_offset_days"])
            if offset is None or offset < 0:
                raise invalid("bill", "due_offset_days", "due_offset_days must be a "
                              "non-negative integer.", value=payload["due_offset_days"])
            new["due_offset_days"] = offset
        for key in ("bill_number", "currency_code", "language", "attachment"):
            if key in payload:
                new[key] = payload[key]
        if "lines" in payload:
            lines = payload["lines"]
            if not isinstance(lines, list) or not lines:
                raise invalid("bill", "lines", "A bill needs at least one line.", errno=1001)
            code = new.get("currency_code", row["currency_code"])
            new["lines"] = [self._line(spec, n + 1, code) for n, spec in enumerate(lines)]
        row.update(new)

    def _line(self, spec: Any, index: int, code: str) -> dict[str, Any]:
        where = f"lines[{index - 1}]"
        if not isinstance(spec, dict):
            raise invalid("bill", where, "A line must be an object.")
        category = self.categories.get(_int(spec.get("categoryid")))
        if category is None:
            raise invalid("bill", f"{where}.categoryid", "No expense category with this "
                          "categoryid.", errno=1001 if spec.get("categoryid") is None else 1004,
                          value=spec.get("categoryid"))
        quantity = _decimal(spec.get("quantity", 1))
        cost = spec.get("unit_cost")
        unit = _decimal(cost.get("amount")) if isinstance(cost, dict) else None
        if quantity is None or quantity < 0:
            raise invalid("bill", f"{where}.quantity", "quantity must be a number.",
                          value=spec.get("quantity"))
        if unit is None:
            raise invalid("bill", f"{where}.unit_cost", "unit_cost must be an object "
                          '{"amount": "<decimal string>", "code": "USD"}.', value=cost)
        amount = (quantity * unit).quantize(CENT, ROUND_HALF_UP)
        line: dict[str, Any] = {
            "id": self._id("lines"), "list_index": index,
            "description": spec.get("description") or "", "quantity": _plain(quantity),
            "unit_cost": money(unit, code), "amount": money(amount, code),
            "total_amount": None, "category": copy.deepcopy(category)}
        total = amount
        for n in (1, 2):
            percent = _decimal(spec.get(f"tax_percent{n}"))
            tax = (amount * percent / 100).quantize(CENT, ROUND_HALF_UP) if percent else None
            total += tax or 0
            line |= {f"tax_name{n}": spec.get(f"tax_name{n}"),
                     f"tax_percent{n}": _plain(percent) if percent is not None else None,
                     f"tax_amount{n}": money(tax, code) if tax is not None else None,
                     f"tax_authorityid{n}": None}
        line["total_amount"] = money(total, code)
        return line

    def _update_bill(self, row: dict[str, Any], payload: dict[str, Any]) -> None:
        if "vis_state" in payload:
            row["vis_state"] = payload["vis_state"]
        else:
            self._apply_bill(row, payload)
        self._stamp(row)
        self._refresh_bill(row)

    def _refresh_bill(self, row: dict[str, Any]) -> None:
        """Recompute everything a bill derives from its lines and payments."""
        code = row["currency_code"]
        subtotal = sum((Decimal(li["amount"]["amount"]) for li in row["lines"]), Decimal(0))
        total = sum((Decimal(li["total_amount"]["amount"]) for li in row["lines"]), Decimal(0))
        payments = [self.bill_payments[pid] for pid in self._paid_by_bill.get(row["id"], [])
                    if self.bill_payments[pid]["vis_state"] == 0]
        paid = sum((Decimal(p["amount"]["amount"]) for p in payments), Decimal(0))
        first = row["lines"][0] if row["lines"] else {}
        outstanding = max(total - paid, Decimal(0))
        row.update({
            "amount": money(subtotal, code), "tax_amount": money(total - subtotal, code),
            "total_amount": money(total, code), "paid": money(paid, code),
            "outstanding": money(outstanding, code),
            "status": "paid" if total > 0 and paid >= total else "partial" if paid else "unpaid",
            "due_date": str(date.fromisoformat(row["issue_date"])
                            + timedelta(days=row["due_offset_days"])),
            "overall_category": (first.get("category") or {}).get("category"),
            "overall_description": first.get("description"),
            "bill_payments": [copy.deepcopy(p) for p in payments]})
        # the vendors' outstanding balances, kept incrementally (bills may number 10,000s)
        before = self._owed_by_bill.pop(row["id"], None)
        if before:
            self._owed[before[0]] -= before[1]
        if row["vis_state"] == 0:
            self._owed_by_bill[row["id"]] = (row["vendorid"], outstanding)
            self._owed[row["vendorid"]] = self._owed.get(row["vendorid"], Decimal(0)) \
                + outstanding
        for vid in {row["vendorid"], before[0] if before else row["vendorid"]}:
            owed = self._owed.get(vid, Decimal(0))
            if vid in self.vendors:
                self.vendors[vid]["outstanding_balance"] = [{"amount": money(owed, code)}] \
                    if owed else []

    def _create_payment(self, payload: dict[str, Any]) -> dict[str, Any]:
        bill = self.bills.get(_int(payload.get("billid")))
        if bill is None or bill["vis_state"] != 0:
            raise invalid("bill_payment", "billid", "billid must name an active bill.",
                          errno=1001 if payload.get("billid") is None else 1004,
                          value=payload.get("billid"))
        row = {"id": None, "billid": bill["id"], "amount": None,
               "paid_date": self.clock.now().astimezone(EASTERN).date().isoformat(),
               "payment_type": "Check", "note": "", "matched_with_expense": False,
               "vis_state": 0}
        if payload.get("amount") is None:
            raise invalid("bill_payment", "amount", "amount is required.", errno=1001)
        self._apply_payment(row, payload, bill["currency_code"])
        row["id"] = self._id("bill_payments")
        self.bill_payments[row["id"]] = row
        self._paid_by_bill.setdefault(bill["id"], []).append(row["id"])
        self._stamp(bill)
        self._refresh_bill(bill)
        return row

    def _apply_payment(self, row: dict[str, Any], payload: dict[str, Any], code: str) -> None:
        new: dict[str, Any] = {}
        if "amount" in payload:
            cost = payload["amount"]
            value = _decimal(cost.get("amount")) if isinstance(cost, dict) else None
            if value is None or value <= 0:
                raise invalid("bill_payment", "amount", 'amount must be an object {"amount": '
                              '"<positive decimal string>", "code": "USD"}.', value=cost)
            new["amount"] = money(value, cost.get("code") or code)
        if "paid_date" in payload:
            if _date(payload["paid_date"]) is None:
                raise invalid("bill_payment", "paid_date", "paid_date must be YYYY-MM-DD.",
                              value=payload["paid_date"])
            new["paid_date"] = str(payload["paid_date"])
        if "payment_type" in payload:
            if payload["payment_type"] not in PAYMENT_TYPES:
                raise invalid("bill_payment", "payment_type", "Unknown payment_type.",
                              value=payload["payment_type"])
            new["payment_type"] = payload["payment_type"]
        if "note" in payload:
            new["note"] = payload["note"] or ""
        row.update(new)

    def _update_payment(self, row: dict[str, Any], payload: dict[str, Any]) -> None:
        bill = self.bills[row["billid"]]
        if "vis_state" in payload:
            row["vis_state"] = payload["vis_state"]
        else:
            self._apply_payment(row, payload, bill["currency_code"])
        self._stamp(bill)
        self._refresh_bill(bill)

    # -- data helpers for tests and the demo (they return a snapshot of the stored record) --
    def _helper(self, fn: Any, *args: Any) -> dict[str, Any]:
        with self.lock:
            try:
                return copy.deepcopy(fn(*args))
            except Abort as refused:
                raise ValueError(refused.reply.body) from None

    def add_category(self, name: str, *, parentid: int | None = None,
                     is_cogs: bool = False) -> dict[str, Any]:
        return self._helper(self._create_category, name, parentid, is_cogs)

    def add_vendor(self, vendor_name: str, **fields: Any) -> dict[str, Any]:
        return self._helper(self._create_vendor, {"vendor_name": vendor_name, **fields})

    @staticmethod
    def _lines(lines: list[dict[str, Any]], code: str) -> list[dict[str, Any]]:
        return [{**li, "unit_cost": li["unit_cost"] if isinstance(li.get("unit_cost"), dict)
                 else {"amount": str(li.get("unit_cost")), "code": code}} for li in lines]

    def add_bill(self, vendorid: int, lines: list[dict[str, Any]], *,
                 bill_number: str | None = None, issue_date: str = "2026-01-05",
                 due_offset_days: int = 30, currency_code: str = "USD") -> dict[str, Any]:
        return self._helper(self._create_bill, {
            "vendorid": vendorid, "bill_number": bill_number, "issue_date": issue_date,
            "due_offset_days": due_offset_days, "currency_code": currency_code,
            "lines": self._lines(lines, currency_code)})

    def update_bill(self, bill_id: int, **changes: Any) -> dict[str, Any]:
        """Edit a bill as a user would in the web app; bumps updated_at."""
        with self.lock:
            row = self.bills[bill_id]
            if "lines" in changes:
                changes["lines"] = self._lines(changes["lines"], row["currency_code"])
            return self._helper(lambda: (self._update_bill(row, changes), row)[1])

    def add_bill_payment(self, billid: int, amount: str, *, paid_date: str = "2026-01-20",
                         payment_type: str = "Check", note: str = "") -> dict[str, Any]:
        with self.lock:
            code = self.bills[billid]["currency_code"] if billid in self.bills else "USD"
        return self._helper(self._create_payment, {
            "billid": billid, "amount": {"amount": str(amount), "code": code},
            "paid_date": paid_date, "payment_type": payment_type, "note": note})
