"""Offline FreshBooks: OAuth (authorization code, single-use refresh tokens), users/me, the
accounting resources the FreshBooks -> BILL pair uses (bills, bill vendors, bill payments,
expense categories) and the receivables side (clients, invoices with lines, items, payments), in
the wire format of `api/freshbooks.md`.

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

Receivables (clients, invoices, items, payments), choices where the page is unsure or silent:
- `updated` (and invoice `created_at`, line `date`/`updated`) are US/Eastern, client
  `signup_date` UTC; `updated` strictly increases per record like `updated_at` above. A payment
  (create, edit, delete) bumps its invoice's `updated`; nothing else touches another record.
- search filters: `_min` is >=, `_max` is < (the page's reading of the docs' tables), also for
  dates and amounts; `updated_min/max` compare whole US/Eastern days (only the first 10 chars
  of the value are read). `*_like`, `notes` and `description` are case-insensitive substrings;
  `email`, `sku`, `invoice_number`, `type` exact (email case-insensitively). "in" lists take
  `search[x][]` or repeated `search[x]`. A malformed filter value answers 400 errno 1004 naming
  the parameter; unknown filters are ignored. Invoices take `customerid(s)`, `invoice_number`,
  `date_min/max` (create_date) and `updated_min/max`; `sort=invoice_date_*` sorts by create_date.
- scopes are not enforced (the token's scope string is unchanged).
- a client needs at least one of email, organization, fname, lname (422 errno 1001, field
  `email`); an email without "@" is 1004. With neither organization nor a name, organization =
  the email (as in the SDK fixture). Emails and invoice numbers may repeat.
- includes on clients: `outstanding_balance`, `draft_balance`, `overdue_balance`,
  `credit_balance`, each an array with one `{"amount": Money}` per currency, empty when zero;
  drafts count only in draft_balance; overdue = sent or part-paid, outstanding and due_date
  before today (US/Eastern). Other includes are ignored. Payments take `include[]=client` and
  `include[]=invoice` (the invoice without lines).
- invoices: `amount` = sum of lines (qty x unit_cost) plus line taxes (`taxAmount1/2` are
  percentages of the line amount) minus `discount_total` (= `discount_value` % of the line sum,
  not applied to taxes). An invoice may have no lines. Lines in an update replace the whole set.
  New invoices are drafts; `action_mark_as_sent`/`action_email` mark them sent (email recipients
  are recorded in `invoice_emails`), these actions win over ordinary fields (the page's phases;
  `ext_vis_state` is not modelled). A bad percentage (`discount_value`, line `taxAmount1/2`)
  is errno 1018; other bad values 1004, missing required ones 1001, all HTTP 422.
  Status: paid -> 4/"paid", part-paid -> 8/"partial", else 2/"sent" or 1/"draft"; it never
  turns "overdue" by itself. `date_paid` = the latest payment date once paid. Numbers are
  auto-assigned as "0000001", ... when absent. The client's name/email/address are copied at
  create and when customerid changes.
- payments: over the outstanding amount is accepted (the page: an overpayment credit); the
  payment keeps its full amount and gets an `overpaymentid`, the invoice's `paid` stops at its
  amount and the excess shows as the client's credit_balance. A payment on an unknown invoice
  is 422 errno 1004, on a deleted one 1011; an update that changes `invoiceid` is 1004.
- items: `name` is required (1001); `qty` defaults to "0", `inventory` to null.
- unknown ids answer 404 errno 1012 naming the resource's id field (userid, invoiceid, logid,
  itemid).
"""

from __future__ import annotations

import copy
import math
import secrets
import uuid
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
    "users/clients": ("client", "clients", "clients", True),
    "invoices/invoices": ("invoice", "invoices", "invoices", True),
    "items/items": ("item", "items", "items", True),
    "payments/payments": ("payment", "payments", "payments", True),
}
ID_FIELDS = {"clients": "userid", "invoices": "invoiceid", "payments": "logid", "items": "itemid"}
CLIENT_FIELDS = ("organization", "fname", "lname", "email", "currency_code", "language",
                 "bus_phone", "mob_phone", "home_phone", "fax", "note", "p_street", "p_street2",
                 "p_city", "p_province", "p_code", "p_country", "s_street", "s_street2",
                 "s_city", "s_province", "s_code", "s_country", "vat_name", "vat_number",
                 "username", "allow_late_fees", "allow_late_notifications")
ADDRESS = (("street", "p_street"), ("street2", "p_street2"), ("city", "p_city"),
           ("province", "p_province"), ("code", "p_code"), ("country", "p_country"))
INVOICE_TEXT = ("invoice_number", "po_number", "notes", "terms", "language", "organization",
                "fname", "lname", "email") + tuple(a for a, _ in ADDRESS)


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


def _bad_filter(name: str, value: Any, what: str) -> Abort:
    return errors(400, 1004, f"search[{name}] must be {what}.", field=f"search[{name}]",
                  value=str(value))


class _Search:
    """A list request's search[...] parameters, parsed (400 errno 1004 when malformed) into
    row predicates."""

    def __init__(self, req: Request):
        self.req = req

    def text(self, name: str) -> str | None:
        return self.req.arg(f"search[{name}]")

    def many(self, name: str) -> list[str]:
        return self.req.params.get(f"search[{name}][]", []) + self.req.params.get(
            f"search[{name}]", [])

    def ints(self, *names: str) -> set[int] | None:
        """Ids from any of `names` (an equals filter and its "in" list), or None if absent."""
        values = [(n, v) for n in names for v in self.many(n)]
        if not values:
            return None
        out = {_int(v) for _, v in values}
        if None in out:
            name, value = next((n, v) for n, v in values if _int(v) is None)
            raise _bad_filter(name, value, "an integer id")
        return out  # type: ignore[return-value]

    def flag(self, name: str) -> bool | None:
        value = self.text(name)
        if value is None:
            return None
        if value.lower() not in ("true", "1", "false", "0"):
            raise _bad_filter(name, value, "true or false")
        return value.lower() in ("true", "1")

    def equals(self, name: str, get: Any, *, fold: bool = False) -> list[Any]:
        value = self.text(name)
        if value is None:
            return []
        want = value.lower() if fold else value
        return [lambda row: ((get(row) or "").lower() if fold else get(row)) == want]

    def like(self, name: str, *fields: str) -> list[Any]:
        value = self.text(name)
        if value is None:
            return []
        needle = value.lower()
        return [lambda row: any(needle in str(row.get(f) or "").lower() for f in fields)]

    def between(self, name: str, get: Any, parse: Any, what: str) -> list[Any]:
        """`name_min` (>=) and `name_max` (<) on the value get(row) (rows without one fail)."""
        tests = []
        for suffix, ok in (("_min", lambda v, b: v >= b), ("_max", lambda v, b: v < b)):
            raw = self.text(name + suffix)
            if raw is None:
                continue
            bound = parse(raw)
            if bound is None:
                raise _bad_filter(name + suffix, raw, what)

            def test(row: dict[str, Any], ok: Any = ok, bound: Any = bound) -> bool:
                value = get(row)
                return value is not None and ok(value, bound)
            tests.append(test)
        return tests

    def days(self, name: str, field: str) -> list[Any]:
        """Day-granular betweens on a "YYYY-MM-DD[ HH:MM:SS]" field."""
        return self.between(name, lambda row: _date((row.get(field) or "")[:10]),
                            lambda raw: _date(raw.strip()[:10]), "a date YYYY-MM-DD")

    def amounts(self, name: str, field: str) -> list[Any]:
        def value(row: dict[str, Any]) -> Decimal | None:
            v = row.get(field)
            return _decimal(v.get("amount") if isinstance(v, dict) else v)
        return self.between(name, value, _decimal, "a decimal number")


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
        self.clients: dict[int, dict[str, Any]] = {}
        self.invoices: dict[int, dict[str, Any]] = {}
        self.items: dict[int, dict[str, Any]] = {}
        self.payments: dict[int, dict[str, Any]] = {}
        self.invoice_emails: list[tuple[int, list[str]]] = []  # (invoiceid, recipients)
        self._next = {"bills": 1141, "vendors": 5321, "bill_payments": 909,
                      "categories": 65773, "lines": 2621, "clients": 56789,
                      "invoices": 217506, "items": 8801, "payments": 30011,
                      "overpayments": 701, "invoice_numbers": 1}
        self._invoice_lines: dict[int, list[dict[str, Any]]] = {}  # invoice id -> lines
        self._sent: set[int] = set()                              # invoices marked sent
        self._paid_by_invoice: dict[int, list[int]] = {}          # invoice id -> payment ids
        self._excess: dict[int, Decimal] = {}                     # invoice id -> overpaid
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
        if store in ("clients", "invoices", "items", "payments"):
            tests = getattr(self, f"_{store}_filters")(_Search(req))
            return lambda row: row.get("vis_state", 0) == vis and all(t(row) for t in tests)
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
        field = {"invoice_date": "create_date"}.get(field, field)
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
        include = req.params.get("include[]", [])
        if store == "bills" and "vendor" in include:
            return {**row, "vendor": self.vendors.get(row["vendorid"])}
        if store == "invoices" and "lines" in include:
            return {**row, "lines": self._invoice_lines.get(row["id"], [])}
        if store == "clients" and include:
            return row | self._client_balances(row["id"], include)
        if store == "payments" and include:
            extra = {"client": self.clients.get(row["clientid"])} if "client" in include else {}
            if "invoice" in include:
                extra["invoice"] = self.invoices.get(row["invoiceid"])
            return {**row, **extra}
        return row

    def _find(self, store: str, single: str, raw_id: str) -> dict[str, Any]:
        row = getattr(self, store).get(_int(raw_id))
        if row is None:
            raise errors(404, 1012, f"{single.replace('_', ' ').capitalize()} not found.",
                         field=ID_FIELDS.get(store, "id"), object=single, value=raw_id)
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
                  "bill_payments": self._create_payment, "clients": self._create_client,
                  "invoices": self._create_invoice, "items": self._create_item,
                  "payments": self._create_inv_payment}[store]
        with self.lock:
            row = self._render(req, store, create(payload))
            return encoded(200, {"response": {"result": {single: row}}})

    def _update(self, req: Request, kind: tuple) -> Reply:
        single, _, store, _ = kind
        payload = self._payload(req, single)
        update = {"bills": self._update_bill, "vendors": self._update_vendor,
                  "bill_payments": self._update_payment, "clients": self._update_client,
                  "invoices": self._update_invoice, "items": self._update_item,
                  "payments": self._update_inv_payment}[store]
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

    def _eastern(self) -> str:
        return self.clock.now().astimezone(EASTERN).strftime(STAMP)

    def _stamp(self, row: dict[str, Any], key: str = "updated_at") -> None:
        """Bump updated_at (UTC), or `updated` (US/Eastern), never to the same value twice."""
        new = self._utc() if key == "updated_at" else self._eastern()
        old = row.get(key)
        if old and new <= old:
            new = (datetime.strptime(old, STAMP) + timedelta(seconds=1)).strftime(STAMP)
        row[key] = new

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

    # -- receivables: clients, items, invoices, payments --------------------------------------
    def _clients_filters(self, q: _Search) -> list[Any]:
        tests = q.equals("email", lambda r: r["email"], fold=True)
        for name, fields in (("fname_like", ("fname",)), ("lname_like", ("lname",)),
                             ("organization_like", ("organization",)),
                             ("address_like", tuple(f for f in CLIENT_FIELDS
                                                    if f[:2] in ("p_", "s_"))),
                             ("note_like", ("note",)),
                             ("phone_like", ("bus_phone", "mob_phone", "home_phone", "fax"))):
            tests += q.like(name, *fields)
        tests += q.days("updated", "updated")
        flags = {k: q.flag(f"has_{k}") for k in ("credit", "draft", "outstanding", "overdue")}
        for kind, want in flags.items():
            if want is not None:
                tests.append(lambda r, k=kind, w=want: bool(self._balances(r["id"])[k]) == w)
        return tests

    def _items_filters(self, q: _Search) -> list[Any]:
        tests = []
        ids = q.ints("itemid", "itemids")
        if ids is not None:
            tests.append(lambda r: r["id"] in ids)
        tests += q.equals("sku", lambda r: r["sku"])
        tests += q.like("description", "description")
        tests += q.amounts("unit_cost", "unit_cost") + q.amounts("inventory", "inventory")
        tests += q.amounts("qty", "qty") + q.days("updated", "updated")
        return tests

    def _invoices_filters(self, q: _Search) -> list[Any]:
        tests = []
        customers = q.ints("customerid", "customerids")
        if customers is not None:
            tests.append(lambda r: r["customerid"] in customers)
        tests += q.equals("invoice_number", lambda r: r["invoice_number"])
        tests += q.days("date", "create_date") + q.days("updated", "updated")
        return tests

    def _payments_filters(self, q: _Search) -> list[Any]:
        tests = []
        for names, field in ((("logid", "logids"), "id"), (("invoiceid", "invoiceids"),
                                                            "invoiceid"),
                             (("clientid", "clientids", "customerid", "customerids"),
                              "clientid")):
            ids = q.ints(*names)
            if ids is not None:
                tests.append(lambda r, f=field, ids=ids: r[f] in ids)
        tests += q.days("date", "date") + q.days("updated", "updated")
        tests += q.amounts("amount", "amount")
        tests += q.equals("type", lambda r: r["type"])
        tests += q.equals("currency", lambda r: r["amount"]["code"])
        tests += q.like("notes", "note")
        from_credit = q.flag("from_credit")
        if from_credit is not None:
            tests.append(lambda r: r["from_credit"] == from_credit)
        name = q.text("client_name")
        if name is not None:
            def named(row: dict[str, Any]) -> bool:
                client = self.clients.get(row["clientid"]) or {}
                whole = " ".join(str(client.get(f) or "") for f in
                                 ("organization", "fname", "lname"))
                return name.lower() in whole.lower()
            tests.append(named)
        return tests

    def _balances(self, clientid: int) -> dict[str, dict[str, Decimal]]:
        """A client's outstanding, draft, overdue and credit sums by currency (non-zero only),
        over its active invoices."""
        out: dict[str, dict[str, Decimal]] = {k: {} for k in ("outstanding", "draft",
                                                               "overdue", "credit")}
        today = self.clock.now().astimezone(EASTERN).date().isoformat()

        def add(kind: str, code: str, value: Decimal) -> None:
            if value:
                out[kind][code] = out[kind].get(code, Decimal(0)) + value
        for inv in self.invoices.values():
            if inv["customerid"] != clientid or inv["vis_state"] != 0:
                continue
            code = inv["currency_code"]
            owed = Decimal(inv["outstanding"]["amount"])
            if inv["v3_status"] == "draft":
                add("draft", code, Decimal(inv["amount"]["amount"]))
            else:
                add("outstanding", code, owed)
                if inv["due_date"] < today:
                    add("overdue", code, owed)
            add("credit", code, self._excess.get(inv["id"], Decimal(0)))
        return out

    def _client_balances(self, clientid: int, include: list[str]) -> dict[str, Any]:
        balances = self._balances(clientid)
        return {f"{kind}_balance": [{"amount": money(v, code)} for code, v in sums.items()]
                for kind, sums in balances.items() if f"{kind}_balance" in include}

    def _create_client(self, payload: dict[str, Any]) -> dict[str, Any]:
        row: dict[str, Any] = {"id": None, "userid": None} | {f: "" for f in CLIENT_FIELDS}
        row |= {"currency_code": "USD", "language": "en", "note": None, "vat_name": None,
                "vat_number": None, "accounting_systemid": self.account_id, "uuid": None,
                "role": "client", "level": 0, "allow_late_fees": True,
                "allow_late_notifications": True, "signup_date": self._utc(), "updated": None,
                "vis_state": 0}
        self._apply_client(row, payload)
        if not (row["organization"] or row["fname"] or row["lname"]):
            row["organization"] = row["email"]
        if not row["username"]:
            row["username"] = (f"{row['fname']}{row['lname']}".lower().replace(" ", "")
                               or row["email"].split("@")[0])
        row["id"] = row["userid"] = self._id("clients")
        row["uuid"] = str(uuid.uuid5(uuid.NAMESPACE_URL, f"freshbooks:{self.account_id}:"
                                                         f"client:{row['id']}"))
        self._stamp(row, "updated")
        self.clients[row["id"]] = row
        return row

    def _apply_client(self, row: dict[str, Any], payload: dict[str, Any]) -> None:
        new = {k: payload[k] for k in CLIENT_FIELDS if k in payload}
        for key in ("allow_late_fees", "allow_late_notifications"):
            if key in new:
                new[key] = bool(new[key])
        for key in ("organization", "fname", "lname", "email"):
            if key in new and new[key] is not None and not isinstance(new[key], str):
                raise invalid("client", key, f"{key} must be a string.", value=new[key])
            if key in new:
                new[key] = (new[key] or "").strip()
        if new.get("email") and "@" not in new["email"]:
            raise invalid("client", "email", "email is not a valid email address.",
                          value=new["email"])
        merged = row | new
        if not any(merged[k] for k in ("email", "organization", "fname", "lname")):
            raise invalid("client", "email", "A client needs an email, an organization or a "
                          "name.", errno=1001)
        row.update(new)

    def _update_client(self, row: dict[str, Any], payload: dict[str, Any]) -> None:
        if "vis_state" in payload:
            row["vis_state"] = payload["vis_state"]
        else:
            self._apply_client(row, payload)
        self._stamp(row, "updated")

    def _create_item(self, payload: dict[str, Any]) -> dict[str, Any]:
        if not str(payload.get("name") or "").strip():
            raise invalid("item", "name", "name is required.", errno=1001)
        row: dict[str, Any] = {"id": None, "itemid": None, "name": None, "description": "",
                               "sku": None, "qty": "0", "inventory": None,
                               "unit_cost": money(Decimal(0)), "tax1": 0, "tax2": 0,
                               "accounting_systemid": self.account_id, "updated": None,
                               "vis_state": 0}
        self._apply_item(row, payload)
        row["id"] = row["itemid"] = self._id("items")
        self._stamp(row, "updated")
        self.items[row["id"]] = row
        return row

    def _apply_item(self, row: dict[str, Any], payload: dict[str, Any]) -> None:
        new: dict[str, Any] = {}
        if "name" in payload:
            if not isinstance(payload["name"], str) or not payload["name"].strip():
                raise invalid("item", "name", "name may not be blank.", errno=1001)
            new["name"] = payload["name"]
        for key in ("description", "sku"):
            if key in payload:
                new[key] = payload[key] if key == "sku" else payload[key] or ""
        for key in ("qty", "inventory"):
            if key in payload:
                if payload[key] is None and key == "inventory":
                    new[key] = None
                    continue
                value = _decimal(payload[key])
                if value is None:
                    raise invalid("item", key, f"{key} must be a decimal string.",
                                  value=payload[key])
                new[key] = _plain(value)
        if "unit_cost" in payload:
            cost = payload["unit_cost"]
            value = _decimal(cost.get("amount")) if isinstance(cost, dict) else None
            if value is None or value < 0:
                raise invalid("item", "unit_cost", 'unit_cost must be an object {"amount": '
                              '"<decimal string>", "code": "USD"}.', value=cost)
            new["unit_cost"] = money(value, cost.get("code") or row["unit_cost"]["code"])
        for key in ("tax1", "tax2"):
            if key in payload:
                tax = _int(payload[key]) if payload[key] is not None else 0
                if tax is None or tax < 0:
                    raise invalid("item", key, f"{key} must be a tax id.", value=payload[key])
                new[key] = tax
        row.update(new)

    def _update_item(self, row: dict[str, Any], payload: dict[str, Any]) -> None:
        if "vis_state" in payload:
            row["vis_state"] = payload["vis_state"]
        else:
            self._apply_item(row, payload)
        self._stamp(row, "updated")

    def _create_invoice(self, payload: dict[str, Any]) -> dict[str, Any]:
        if payload.get("customerid") in (None, ""):
            raise invalid("invoice", "customerid", "customerid is required.", errno=1001)
        today = self.clock.now().astimezone(EASTERN).date().isoformat()
        row: dict[str, Any] = {
            "id": None, "invoiceid": None, "invoice_number": None, "customerid": None,
            "accountid": self.account_id, "accounting_systemid": self.account_id,
            "create_date": today, "due_offset_days": 0, "due_date": None,
            "currency_code": "USD", "language": "en", "amount": None, "outstanding": None,
            "paid": None, "discount_total": None, "discount_value": "0", "status": 1,
            "v3_status": "draft", "payment_status": "unpaid", "display_status": "draft",
            "date_paid": None, "po_number": None, "notes": "", "terms": None,
            "organization": "", "fname": "", "lname": "", "email": ""}
        row |= {a: "" for a, _ in ADDRESS}
        row |= {"created_at": self._eastern(), "updated": None, "vis_state": 0}
        lines = self._apply_invoice(row, payload)
        row["id"] = row["invoiceid"] = self._id("invoices")
        if not row["invoice_number"]:
            taken = {inv["invoice_number"] for inv in self.invoices.values()}
            while f"{self._next['invoice_numbers']:07d}" in taken:
                self._next["invoice_numbers"] += 1
            row["invoice_number"] = f"{self._id('invoice_numbers'):07d}"
        self._stamp(row, "updated")
        self.invoices[row["id"]] = row
        self._set_lines(row, lines or [])
        self._refresh_invoice(row)
        return row

    def _apply_invoice(self, row: dict[str, Any], payload: dict[str, Any]) -> list | None:
        """Validate everything, then change the row; returns the new lines (None: unchanged)."""
        new: dict[str, Any] = {}
        if "customerid" in payload:
            client = self.clients.get(_int(payload["customerid"]))
            if client is None:
                raise invalid("invoice", "customerid", "No client with this customerid.",
                              value=payload["customerid"])
            if client["vis_state"] == 1:
                raise invalid("invoice", "customerid", "The client is deleted.", errno=1011,
                              value=payload["customerid"])
            if client["id"] != row["customerid"]:
                new |= {k: client[k] or "" for k in ("organization", "fname", "lname",
                                                      "email")}
                new |= {a: client[c] or "" for a, c in ADDRESS}
            new["customerid"] = client["id"]
        if "create_date" in payload:
            if _date(payload["create_date"]) is None:
                raise invalid("invoice", "create_date", "create_date must be YYYY-MM-DD.",
                              value=payload["create_date"])
            new["create_date"] = str(payload["create_date"])
        if "due_offset_days" in payload:
            offset = _int(payload["due_offset_days"])
            if offset is None or offset < 0:
                raise invalid("invoice", "due_offset_days", "due_offset_days must be a "
                              "non-negative integer.", value=payload["due_offset_days"])
            new["due_offset_days"] = offset
        if "currency_code" in payload:
            code = payload["currency_code"]
            if not isinstance(code, str) or len(code) != 3:
                raise invalid("invoice", "currency_code", "currency_code must be a 3-letter "
                              "code.", value=code)
            new["currency_code"] = code.upper()
        if "discount_value" in payload:
            discount = _decimal(payload["discount_value"] or 0)
            if discount is None or not 0 <= discount <= 100:
                raise invalid("invoice", "discount_value", "discount_value must be a "
                              "percentage from 0 to 100.", errno=1018,
                              value=payload["discount_value"])
            new["discount_value"] = _plain(discount)
        for key in INVOICE_TEXT:
            if key in payload:
                new[key] = payload[key]
        lines = None
        if "lines" in payload:
            if not isinstance(payload["lines"], list):
                raise invalid("invoice", "lines", "lines must be a list.")
            lines = [self._invoice_line(spec, n) for n, spec in enumerate(payload["lines"])]
        row.update(new)
        return lines

    def _invoice_line(self, spec: Any, n: int) -> dict[str, Any]:
        where = f"lines[{n}]"
        if not isinstance(spec, dict):
            raise invalid("invoice", where, "A line must be an object.")
        qty = _decimal(spec.get("qty", 1))
        if qty is None or qty < 0:
            raise invalid("invoice", f"{where}.qty", "qty must be a non-negative number.",
                          value=spec.get("qty"))
        cost = spec.get("unit_cost")
        unit = _decimal(cost.get("amount")) if isinstance(cost, dict) else None
        if unit is None:
            raise invalid("invoice", f"{where}.unit_cost", "unit_cost must be an object "
                          '{"amount": "<decimal string>", "code": "USD"}.', value=cost)
        line_type = _int(spec.get("type", 0))
        if line_type not in (0, 1):
            raise invalid("invoice", f"{where}.type", "type must be 0 or 1.",
                          value=spec.get("type"))
        line: dict[str, Any] = {
            "lineid": n + 1, "invoiceid": None, "name": spec.get("name") or "",
            "description": spec.get("description") or "", "qty": _plain(qty),
            "unit_cost": unit, "amount": (qty * unit).quantize(CENT, ROUND_HALF_UP),
            "type": line_type, "expenseid": _int(spec.get("expenseid")) or 0}
        for k in (1, 2):
            percent = _decimal(spec.get(f"taxAmount{k}") or 0)
            if percent is None or percent < 0:
                raise invalid("invoice", f"{where}.taxAmount{k}", f"taxAmount{k} must be a "
                              "percentage as a decimal string.", errno=1018,
                              value=spec.get(f"taxAmount{k}"))
            line |= {f"taxName{k}": spec.get(f"taxName{k}") or "",
                     f"taxAmount{k}": _plain(percent)}
        stamp = self._eastern()
        return line | {"taxNumber1": spec.get("taxNumber1"), "taxNumber2":
                       spec.get("taxNumber2"), "compounded_tax": bool(spec.get(
                           "compounded_tax", False)), "date": stamp, "updated": stamp,
                       "retainer_id": None, "retainer_period_id": None}

    def _set_lines(self, row: dict[str, Any], lines: list[dict[str, Any]]) -> None:
        for line in lines:
            line["invoiceid"] = row["id"]
        self._invoice_lines[row["id"]] = lines

    def _update_invoice(self, row: dict[str, Any], payload: dict[str, Any]) -> None:
        if "vis_state" in payload:
            row["vis_state"] = payload["vis_state"]
        elif any(k.startswith("action_") for k in payload):  # the actions phase wins
            if payload.get("action_email"):
                recipients = payload.get("email_recipients") or [row["email"]]
                if not isinstance(recipients, list) or not all(
                        isinstance(r, str) and "@" in r for r in recipients):
                    raise invalid("invoice", "email_recipients", "email_recipients must be "
                                  "a list of email addresses.", value=recipients)
                self.invoice_emails.append((row["id"], list(recipients)))
                self._sent.add(row["id"])
            elif payload.get("action_mark_as_sent"):
                self._sent.add(row["id"])
        else:
            lines = self._apply_invoice(row, payload)
            if lines is not None:
                self._set_lines(row, lines)
        self._stamp(row, "updated")
        self._refresh_invoice(row)

    def _refresh_invoice(self, row: dict[str, Any]) -> None:
        """Recompute everything an invoice derives from its lines and payments."""
        code = row["currency_code"]
        subtotal = tax = Decimal(0)
        for line in self._invoice_lines.get(row["id"], []):
            unit = line["unit_cost"]
            unit = Decimal(unit["amount"]) if isinstance(unit, dict) else unit
            amount = line["amount"]
            amount = Decimal(amount["amount"]) if isinstance(amount, dict) else amount
            line["unit_cost"], line["amount"] = money(unit, code), money(amount, code)
            subtotal += amount
            for k in (1, 2):
                tax += (amount * Decimal(line[f"taxAmount{k}"]) / 100).quantize(
                    CENT, ROUND_HALF_UP)
        discount = (subtotal * Decimal(row["discount_value"]) / 100).quantize(
            CENT, ROUND_HALF_UP)
        total = subtotal - discount + tax
        payments = [self.payments[pid] for pid in self._paid_by_invoice.get(row["id"], [])
                    if self.payments[pid]["vis_state"] == 0]
        received = sum((Decimal(p["amount"]["amount"]) for p in payments), Decimal(0))
        paid = min(received, max(total, Decimal(0)))
        self._excess[row["id"]] = received - paid
        if paid and paid >= total:
            status = (4, "paid", "paid", "paid")
        elif paid:
            status = (8, "partial", "partial", "partial")
        elif row["id"] in self._sent:
            status = (2, "sent", "unpaid", "sent")
        else:
            status = (1, "draft", "unpaid", "draft")
        row.update({
            "amount": money(total, code), "paid": money(paid, code),
            "outstanding": money(total - paid, code), "discount_total": money(discount, code),
            "status": status[0], "v3_status": status[1], "payment_status": status[2],
            "display_status": status[3],
            "date_paid": max(p["date"] for p in payments) if status[0] == 4 else None,
            "due_date": str(date.fromisoformat(row["create_date"])
                            + timedelta(days=row["due_offset_days"]))})

    def _create_inv_payment(self, payload: dict[str, Any]) -> dict[str, Any]:
        invoice = self.invoices.get(_int(payload.get("invoiceid")))
        if invoice is None:
            raise invalid("payment", "invoiceid", "invoiceid must name an invoice.",
                          errno=1001 if payload.get("invoiceid") in (None, "") else 1004,
                          value=payload.get("invoiceid"))
        if invoice["vis_state"] == 1:
            raise invalid("payment", "invoiceid", "The invoice is deleted.", errno=1011,
                          value=payload.get("invoiceid"))
        if payload.get("amount") is None:
            raise invalid("payment", "amount", "amount is required.", errno=1001)
        row: dict[str, Any] = {
            "id": None, "logid": None, "invoiceid": invoice["id"],
            "clientid": invoice["customerid"], "amount": None,
            "date": self.clock.now().astimezone(EASTERN).date().isoformat(), "type": "Check",
            "note": "", "creditid": None, "overpaymentid": None, "orderid": None,
            "gateway": None, "transactionid": None, "from_credit": False,
            "accounting_systemid": self.account_id, "updated": None, "vis_state": 0}
        self._apply_inv_payment(row, payload, invoice["currency_code"])
        if Decimal(row["amount"]["amount"]) > Decimal(invoice["outstanding"]["amount"]):
            row["overpaymentid"] = self._id("overpayments")
        row["id"] = row["logid"] = self._id("payments")
        self._stamp(row, "updated")
        self.payments[row["id"]] = row
        self._paid_by_invoice.setdefault(invoice["id"], []).append(row["id"])
        self._stamp(invoice, "updated")
        self._refresh_invoice(invoice)
        return row

    def _apply_inv_payment(self, row: dict[str, Any], payload: dict[str, Any],
                           code: str) -> None:
        new: dict[str, Any] = {}
        if "invoiceid" in payload and _int(payload["invoiceid"]) != row["invoiceid"]:
            raise invalid("payment", "invoiceid", "A payment cannot move to another invoice.",
                          value=payload["invoiceid"])
        if "amount" in payload:
            cost = payload["amount"]
            value = _decimal(cost.get("amount")) if isinstance(cost, dict) else None
            if value is None or value <= 0:
                raise invalid("payment", "amount", 'amount must be an object {"amount": '
                              '"<positive decimal string>", "code": "USD"}.', value=cost)
            new["amount"] = money(value, cost.get("code") or code)
        if "date" in payload:
            if _date(payload["date"]) is None:
                raise invalid("payment", "date", "date must be YYYY-MM-DD.",
                              value=payload["date"])
            new["date"] = str(payload["date"])
        if "type" in payload:
            if payload["type"] not in PAYMENT_TYPES:
                raise invalid("payment", "type", "Unknown payment type.", value=payload["type"])
            new["type"] = payload["type"]
        if "note" in payload:
            new["note"] = payload["note"] or ""
        row.update(new)

    def _update_inv_payment(self, row: dict[str, Any], payload: dict[str, Any]) -> None:
        invoice = self.invoices[row["invoiceid"]]
        if "vis_state" in payload:
            row["vis_state"] = payload["vis_state"]
        else:
            self._apply_inv_payment(row, payload, invoice["currency_code"])
        self._stamp(row, "updated")
        self._stamp(invoice, "updated")
        self._refresh_invoice(invoice)

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


    def add_client(self, email: str | None, *, organization: str | None = None,
                   fname: str | None = None, lname: str | None = None,
                   **fields: Any) -> dict[str, Any]:
        named = {"organization": organization, "fname": fname, "lname": lname}
        return self._helper(self._create_client, {
            "email": email, **{k: v for k, v in named.items() if v is not None}, **fields})

    def add_item(self, name: str, *, sku: str | None = None, unit_cost: Any = "0.00",
                 **fields: Any) -> dict[str, Any]:
        if not isinstance(unit_cost, dict):
            unit_cost = {"amount": str(unit_cost), "code": fields.pop("currency_code", "USD")}
        return self._helper(self._create_item, {"name": name, "sku": sku,
                                                "unit_cost": unit_cost, **fields})

    def _with_lines(self, row: dict[str, Any]) -> dict[str, Any]:
        return {**row, "lines": self._invoice_lines.get(row["id"], [])}

    def add_invoice(self, clientid: int, lines: list[dict[str, Any]], *,
                    invoice_number: str | None = None, create_date: str = "2026-03-02",
                    due_offset_days: int = 30, **fields: Any) -> dict[str, Any]:
        """An invoice (a draft unless `action_mark_as_sent=True` is among the fields), returned
        with its lines; line unit_cost may be a plain decimal string."""
        sent = fields.pop("action_mark_as_sent", False)
        payload = {"customerid": clientid, "create_date": create_date,
                   "due_offset_days": due_offset_days,
                   "lines": self._lines(lines, fields.get("currency_code", "USD")), **fields}
        if invoice_number is not None:
            payload["invoice_number"] = invoice_number

        def create() -> dict[str, Any]:
            row = self._create_invoice(payload)
            if sent:
                self._sent.add(row["id"])
                self._refresh_invoice(row)
            return self._with_lines(row)
        return self._helper(create)

    def update_invoice(self, invoice_id: int, **changes: Any) -> dict[str, Any]:
        """Edit an invoice as a user would in the web app (vis_state and action_* too); bumps
        `updated`; returned with its lines."""
        with self.lock:
            row = self.invoices[invoice_id]
            if "lines" in changes:
                changes["lines"] = self._lines(changes["lines"], row["currency_code"])
            return self._helper(lambda: (self._update_invoice(row, changes),
                                         self._with_lines(row))[1])

    def add_payment(self, invoiceid: int, amount: Any, *, date: str = "2026-03-05",
                    type: str = "Check", **fields: Any) -> dict[str, Any]:  # noqa: A002
        with self.lock:
            code = self.invoices[invoiceid]["currency_code"] if invoiceid in self.invoices \
                else "USD"
        return self._helper(self._create_inv_payment, {
            "invoiceid": invoiceid, "amount": {"amount": str(amount), "code": code},
            "date": date, "type": type, **fields})
