"""Offline ServiceNow instance: OAuth (client credentials, password, refresh) and Basic auth,
the Table API (`/api/now/table/...`, also `/api/now/v2/table/...`) with encoded queries,
paging headers and reference rendering, the read-only `sys_db_object`/`sys_dictionary` tables
generated from the schema, and the Import Set API with synchronous transforms into the
Accounts Payable Operations tables, in the wire format of `api/servicenow.md`.

Choices where the fact sheet is unsure (tagged [O]/[R]/[G] there):
- every token failure answers 401 `{"error_description":"access_denied","error":"server_error"}`;
  a JSON body to `oauth_token.do` answers 400 with the same body;
- asking for a client-credentials token while one is live returns the same token, with
  `expires_in` = remaining seconds - 1 (1799 for a fresh token);
- writes with no Content-Type answer 400, with a non-JSON one 415; a body that is not JSON 400;
- an unknown path answers 400 "Requested URI does not represent any resource";
- a denied GET answers 403 "ACL Exception Read Failed due to security constraints";
- string comparisons in queries are case-sensitive (also LIKE); `>`/`<` compare numbers when
  both sides are numbers; invalid query parts are dropped;
- transforms never overwrite a target value with an empty staging value ("copy empty fields"
  off); a given but unresolvable reference (supplier, GL account, cost center, payment
  supplier, journal supplier) is an error; staging columns not in the staging table are
  dropped; `invoice_amount` is a read-only roll-up: subtotal + tax_amount;
- staging tables extend `sys_import_set_row` (sys_import_set, sys_import_state,
  sys_target_sys_id, sys_target_table, sys_transform_map, sys_import_state_comment);
- `sys_dictionary` holds one "collection" row (element "") per table, like the real one;
  internal types: string, reference (+ `reference` column), boolean, currency, decimal,
  glide_date, integer, glide_date_time, GUID;
- one import set per staging table per UTC day for single-row posts, one per insertMultiple;
- `GET /api/now/import/{staging}/{sys_id}` answers the POST shape plus `"row"` (the staging row).
"""

from __future__ import annotations

import base64
import copy
import hashlib
import json
import random
import re
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal, InvalidOperation
from typing import Any
from urllib.parse import urlencode

from .server import Abort, Emulator, Knobs, Reply, Request, encoded

STAMP = "%Y-%m-%d %H:%M:%S"
SYS_COLUMNS = {"sys_id": "guid", "sys_created_on": "datetime", "sys_updated_on": "datetime",
               "sys_created_by": "string", "sys_updated_by": "string",
               "sys_mod_count": "integer"}
INTERNAL_TYPES = {"date": "glide_date", "datetime": "glide_date_time", "guid": "GUID"}
DEFAULT_ROLES = frozenset({"sn_ap_apm.admin", "import_set_loader", "import_transformer",
                           "sn_spend_intg_admin", "sn_fcms_intg.integration_user"})
NUMBER_PREFIX = {"sn_shop_invoice": "INV", "sn_fin_supplier": "SUP", "core_company": "CMN",
                 "sn_shop_invoice_line": "INVL", "sn_shop_purchase_order": "PO",
                 "proc_po": "PO"}
READ_ONLY_TABLES = {"sys_db_object", "sys_dictionary"}
READ_ONLY_COLUMNS = {"invoice_amount"}
ACL_VERBS = {"GET": "Read", "POST": "Insert", "PUT": "Update", "PATCH": "Update",
             "DELETE": "Delete"}
RATE_RULE = hashlib.md5(b"sandbox-rate-limit-rule").hexdigest()
HEX32 = re.compile(r"^[0-9a-f]{32}$")
COND = re.compile(r"^(?P<f>[a-z0-9_.]+?)(?P<op>ISNOTEMPTY|ISEMPTY|STARTSWITH|ENDSWITH|NOT LIKE"
                  r"|LIKE|NOT IN|IN|!=|>=|<=|=|>|<)(?P<v>.*)$", re.S)


def _address(prefix: str, parts: tuple[str, ...]) -> dict[str, str]:
    return {f"{prefix}_{p}": "string" for p in parts}


ADDRESS = ("street", "city", "state_or_province", "zip_or_postal_code", "country")
INVOICE_STAGING = {c: "string" for c in (
    "u_external_invoice_number", "u_external_invoice_source", "u_erp_source",
    "u_supplier_invoice_number", "u_supplier", "u_purchase_order", "u_invoice_type",
    "u_invoice_date", "u_due_date", "u_date_format", "u_payment_terms", "u_legal_entity",
    "u_business_owner", "u_original_invoice", "u_supplier_tax_id", "u_erp_number",
    "u_currency", "u_subtotal", "u_tax_amount", "u_amount_invoiced", "u_shipping_amount",
    "u_other_charges", "u_discounts", "u_invoice_line_count", "u_short_description",
    "u_sync_token", "u_state", "u_remit_address")}
for _p in ("u_bill_to", "u_ship_to", "u_ship_from"):
    INVOICE_STAGING.update(_address(_p, ADDRESS))
INVOICE_STAGING.update(_address("u_remit_to", ADDRESS[1:]))

# Default table names -> (super class or None, own columns). Types: string, boolean, currency,
# decimal, date, integer, reference:<table>.
SCHEMA: dict[str, tuple[str | None, dict[str, str]]] = {
    "sys_db_object": (None, {"name": "string", "label": "string",
                             "super_class": "reference:sys_db_object",
                             "is_extendable": "boolean"}),
    "sys_dictionary": (None, {"name": "string", "element": "string", "column_label": "string",
                              "internal_type": "string", "reference": "string",
                              "mandatory": "boolean", "active": "boolean"}),
    "core_company": (None, {
        "name": "string", "number": "string", "vendor": "boolean", "vendor_type": "string",
        "customer": "boolean", "manufacturer": "boolean", "street": "string", "city": "string",
        "state": "string", "zip": "string", "country": "string", "phone": "string",
        "website": "string", "notes": "string", "u_tax_id": "string",
        "parent": "reference:core_company"}),
    "sn_fin_supplier": (None, {
        "number": "string", "name": "string", "related_company": "reference:core_company",
        "tax_id": "string", "duns": "string", "registration_country": "string",
        "payment_term": "string", "onboarded": "boolean", "u_external_id": "string"}),
    "sn_fin_gl_account": (None, {"number": "string", "name": "string"}),
    "cmn_cost_center": (None, {"name": "string", "code": "string"}),
    "sn_shop_purchase_order": (None, {
        "number": "string", "supplier": "reference:sn_fin_supplier", "state": "string",
        "total_amount": "currency", "invoiced_amount": "currency",
        "in_process_invoiced_amount": "currency", "currency": "string"}),
    "proc_po": (None, {"number": "string", "vendor": "reference:core_company",
                       "status": "string", "total_cost": "currency"}),
    "sn_fin_base_invoice": (None, {
        "invoice_date": "date", "due_date": "date", "supplier": "reference:sn_fin_supplier",
        "subtotal": "currency", "tax_amount": "currency", "invoice_amount": "currency",
        "currency": "string", "sys_class_name": "string"}),
    "sn_shop_invoice": ("sn_fin_base_invoice", {
        "number": "string", "short_description": "string", "supplier_invoice_number": "string",
        "external_invoice_number": "string", "external_invoice_source": "string",
        "type": "string", "state": "string", "payment_date": "date",
        "payment_terms": "string", "purchase_order": "reference:sn_shop_purchase_order",
        "legal_entity": "string", "u_sync_token": "string", "erp_source": "string"}),
    "sn_shop_invoice_line": (None, {
        "invoice": "reference:sn_shop_invoice", "number": "string",
        "erp_line_number": "string", "line_description": "string",
        "invoiced_quantity": "decimal", "line_unit_price": "currency",
        "line_amount": "currency", "tax_amount": "currency", "uom": "string",
        "order_line": "string", "cost_center": "reference:cmn_cost_center",
        "ledger_account": "reference:sn_fin_gl_account", "supplier_part_number": "string",
        "currency": "string"}),
    "sn_shop_invoice_payment_detail": (None, {
        "invoice": "reference:sn_shop_invoice", "payment_amount": "currency",
        "payment_date": "date", "scheduled_payment_date": "date", "payment_method": "string",
        "payment_reference_id": "string", "currency": "string",
        "erp_invoice_number": "string", "supplier": "reference:sn_fin_supplier"}),
    "u_ap_journal_entry": (None, {
        "u_external_id": "string", "u_line_number": "integer", "u_journal_date": "date",
        "u_account": "string", "u_posting_type": "string", "u_amount": "currency",
        "u_currency": "string", "u_description": "string",
        "u_supplier": "reference:sn_fin_supplier"}),
    "sys_import_set_row": (None, {
        "sys_import_set": "string", "sys_import_row": "integer", "sys_import_state": "string",
        "sys_import_state_comment": "string", "sys_target_sys_id": "string",
        "sys_target_table": "string", "sys_transform_map": "string"}),
    "sn_spend_intg_imp_invoice": ("sys_import_set_row", INVOICE_STAGING),
    "sn_spend_intg_imp_invoice_line": ("sys_import_set_row", {c: "string" for c in (
        "u_external_invoice_number", "u_external_invoice_source", "u_erp_line_number",
        "u_line_description", "u_line_quantity", "u_line_unit_price",
        "u_line_amount_invoiced", "u_subtotal", "u_tax_amount", "u_currency",
        "u_cost_center", "u_gl_account", "u_tax_code", "u_purchase_order_line",
        "u_po_line_description", "u_supplier_part_number", "u_uom",
        *_address("u_ship_to", ADDRESS))}),
    "sn_spend_intg_imp_invoice_payment_detail": ("sys_import_set_row", {c: "string" for c in (
        "u_currency", "u_erp_invoice_number", "u_erp_source", "u_erp_supplier_code",
        "u_payment_amount", "u_payment_date", "u_scheduled_payment_date", "u_payment_method",
        "u_payment_reference_id", "u_third_party_import_id",
        *_address("u_remit_to", ADDRESS))}),
    "u_ap_journal_import": ("sys_import_set_row", {c: "string" for c in (
        "u_external_id", "u_line_number", "u_journal_date", "u_account", "u_posting_type",
        "u_amount", "u_currency", "u_description", "u_supplier")}),
}
DEFAULTS = {"sn_shop_invoice": {"state": "draft"}}
DISPLAY = {"core_company": "name", "sn_fin_supplier": "name", "sn_fin_gl_account": "name",
           "cmn_cost_center": "name", "sys_dictionary": "element"}
LABELS = {"sn_shop_invoice": "Invoice", "sn_fin_base_invoice": "Base Invoice",
          "sn_fin_supplier": "Supplier", "core_company": "Company",
          "sn_shop_invoice_line": "Invoice Line", "sys_db_object": "Table",
          "sys_dictionary": "Dictionary Entry"}


@dataclass
class Transform:
    target: str          # default (logical) name of the target table
    name: str            # transform map name
    display: str         # display column of the target
    explicit: dict[str, str]  # staging column -> target column
    skip: frozenset[str]      # staging columns handled by hand
    plan: str                 # method _plan_<plan>: coalesce match and references


TRANSFORMS = {
    "sn_spend_intg_imp_invoice": Transform(
        "sn_shop_invoice", "Invoice Import", "number",
        {"u_invoice_type": "type", "u_state": "state"},
        frozenset({"u_supplier", "u_amount_invoiced", "u_purchase_order"}), "invoice"),
    "sn_spend_intg_imp_invoice_line": Transform(
        "sn_shop_invoice_line", "Invoice Line Import", "number",
        {"u_line_quantity": "invoiced_quantity", "u_line_amount_invoiced": "line_amount"},
        frozenset({"u_external_invoice_number", "u_external_invoice_source", "u_gl_account",
                   "u_cost_center", "u_subtotal"}), "line"),
    "sn_spend_intg_imp_invoice_payment_detail": Transform(
        "sn_shop_invoice_payment_detail", "Invoice Payment Detail Import",
        "payment_reference_id", {}, frozenset({"u_erp_supplier_code"}), "payment"),
    "u_ap_journal_import": Transform(
        "u_ap_journal_entry", "AP Journal Import", "u_external_id", {},
        frozenset({"u_supplier"}), "journal"),
}
INVOICE_MANDATORY = ("u_external_invoice_number", "u_supplier", "u_invoice_date", "u_currency",
                     "u_subtotal")


def envelope(message: str, detail: str | None) -> dict[str, Any]:
    return {"error": {"message": message, "detail": detail}, "status": "failure"}


def sn_error(status: int, message: str, detail: str | None = None,
             headers: dict[str, str] | None = None) -> Abort:
    return Abort(Reply(status, envelope(message, detail), headers or {}))


def oauth_denied(status: int = 401) -> Abort:
    return Abort(Reply(status, {"error_description": "access_denied", "error": "server_error"}))


class _Reject(Exception):
    """A transform refuses a staging row: status "error" with this message."""


def _coerce(value: Any) -> str:
    """A written value as ServiceNow stores it: always a string."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, dict) and "value" in value and not isinstance(value["value"], dict):
        return _coerce(value["value"])
    if isinstance(value, dict | list):  # nested JSON is mangled, ':' -> '='
        return json.dumps(value, separators=(",", ":")).replace(":", "=")
    if isinstance(value, float):
        return repr(value)
    return str(value)


def _number(text: str) -> Decimal | None:
    try:
        d = Decimal(text)
    except (InvalidOperation, TypeError, ValueError):
        return None
    return d if d.is_finite() else None


class ServiceNowSandbox(Emulator):
    client_id = "sandbox-sn-client-id"
    client_secret = "sandbox-sn-client-secret"
    username = "sandbox-sn-integration"
    password = "sandbox-sn-password"

    def __init__(self, knobs: Knobs | None = None, *, clock: Any = None,
                 access_token_ttl: int = 1800, renames: dict[str, str] | None = None,
                 client_credentials_enabled: bool = True, apo: bool = True,
                 journal_tables: bool = True):
        super().__init__(knobs, clock)
        self.access_token_ttl = access_token_ttl
        self.client_credentials_enabled = client_credentials_enabled
        self.apo = apo
        self.journal_tables = journal_tables
        self.roles: set[str] = set(DEFAULT_ROLES)
        self.rate_limit_per_hour: int | None = None
        self.token_calls = 0
        self.staging_results: list[dict[str, Any]] = []
        self._denied: set[tuple[str, str]] = set()
        self._access: dict[str, dict[str, Any]] = {}
        self._refresh: set[str] = set()
        self._cc_token: str | None = None
        self._fail_left, self._fail_status, self._fail_body = 0, 503, None
        self._hour: tuple[datetime | None, int] = (None, 0)
        self._ids = random.Random("servicenow-sandbox-ids")
        self._numbers: dict[str, int] = {}
        self._seq = 0
        self._import_sets: dict[tuple[str, str], str] = {}  # (staging, day) -> ISET number
        self._iset_next = 10001
        self._results: dict[str, tuple[str, dict[str, Any]]] = {}  # staging row -> result

        # the schema, with logical (default) names
        tables = {name: (sup, dict(cols)) for name, (sup, cols) in SCHEMA.items()}
        if not apo:
            del tables["sn_fin_supplier"]
            for _sup, cols in tables.values():
                for col, kind in cols.items():
                    if kind == "reference:sn_fin_supplier":
                        cols[col] = "reference:core_company"
        if not journal_tables:
            del tables["u_ap_journal_entry"], tables["u_ap_journal_import"]
        self._schema = tables
        renames = dict(renames or {})
        unknown = set(renames) - set(tables)
        if unknown:
            raise ValueError(f"renames names unknown tables: {sorted(unknown)}")
        self._phys = {name: renames.get(name, name) for name in tables}
        self._logical = {phys: name for name, phys in self._phys.items()}
        if len(self._logical) != len(self._phys):
            raise ValueError("renames make two tables share a name")
        self._data: dict[str, dict[str, dict[str, str]]] = {name: {} for name in tables}
        self._columns_cache: dict[str, dict[str, str]] = {}
        self._seed_dictionary()

        for prefix in ("/api/now/table", "/api/now/v2/table"):
            self.route("GET", prefix + "/{table}", self._list)
            self.route("POST", prefix + "/{table}", self._create)
            self.route("GET", prefix + "/{table}/{sys_id}", self._get)
            self.route("PUT", prefix + "/{table}/{sys_id}", self._update)
            self.route("PATCH", prefix + "/{table}/{sys_id}", self._update)
            self.route("DELETE", prefix + "/{table}/{sys_id}", self._delete)
        for prefix in ("/api/now/import", "/api/now/v1/import"):
            self.route("POST", prefix + "/{table}/insertMultiple", self._insert_multiple)
            self.route("POST", prefix + "/{table}", self._import)
            self.route("GET", prefix + "/{table}/{sys_id}", self._import_get)
        self.route("POST", "/oauth_token.do", self._token, open=True)

    @property
    def base_url(self) -> str:
        return self.root_url

    @property
    def schema(self) -> dict[str, dict[str, str]]:
        """Physical table name -> its own columns (not inherited ones) -> type, with
        reference types naming physical tables."""
        return {self._phys[name]: {c: self._phys_type(t) for c, t in cols.items()}
                for name, (_sup, cols) in self._schema.items()}

    # -- knobs and test controls --------------------------------------------------------
    def expire_access_tokens(self) -> None:
        with self.lock:
            for entry in self._access.values():
                entry["expired"] = True
            self._cc_token = None

    def fail_next(self, n: int, status: int = 503, body: Any = None) -> None:
        """The next n API requests (not token calls) get this answer."""
        with self._meta:
            self._fail_left, self._fail_status, self._fail_body = n, status, body

    def deny(self, table: str, method: str = "*") -> None:
        """Requests with this HTTP method ("*": any) on this table answer 403 (an ACL)."""
        with self.lock:
            self._denied.add((table, method.upper()))

    def allow(self, table: str, method: str = "*") -> None:
        with self.lock:
            self._denied.discard((table, method.upper()))

    def fault_reply(self, req: Request, status: int) -> Reply:
        if status == 429:
            return self._rate_reply(req, self.rate_limit_per_hour or 100)
        if status == 503:
            return Reply(503, envelope("Service Unavailable",
                                       "The instance is temporarily unavailable"))
        return Reply(status, envelope("Failure injected by the sandbox", None))

    def not_found_reply(self, req: Request) -> Reply:
        return Reply(400, envelope("Requested URI does not represent any resource", None))

    def method_not_allowed_reply(self, req: Request) -> Reply:
        return Reply(405, envelope("Method not Supported",
                                   f"HTTP method {req.method} is not supported for this URI"))

    def _rate_window(self) -> tuple[datetime, int]:
        now = self.clock.now().astimezone(UTC)
        hour = now.replace(minute=0, second=0, microsecond=0)
        nxt = hour + timedelta(hours=1)
        return hour, max(1, int((nxt - now).total_seconds()))

    def _rate_headers(self, limit: int) -> dict[str, str]:
        hour, _left = self._rate_window()
        return {"X-RateLimit-Limit": str(limit),
                "X-RateLimit-Reset": str(int((hour + timedelta(hours=1)).timestamp())),
                "X-RateLimit-Rule": RATE_RULE}

    def _rate_reply(self, req: Request, limit: int) -> Reply:
        api = ("Import Set API" if "/import/" in req.path else
               "Table API" if "/table/" in req.path else "REST API")
        _hour, left = self._rate_window()
        return Reply(429, envelope("Rate limit exceeded",
                                   f"Rate limit of {limit} requests per hour for {api} exceeded"),
                     {"Retry-After": str(left), **self._rate_headers(limit)})

    def handle(self, req: Request) -> Reply:
        reply = super().handle(req)
        limit = self.rate_limit_per_hour
        if limit is not None and req.path.startswith("/api/"):
            reply.headers = {**self._rate_headers(limit), **reply.headers}
        return reply

    def guard(self, req: Request) -> Reply | None:
        if self.take("_fail_left"):
            if self._fail_body is None:
                return self.fault_reply(req, self._fail_status)
            return Reply(self._fail_status, self._fail_body)
        if not self._authenticated(req):
            return Reply(401, envelope("User Not Authenticated",
                                       "Required to provide Auth information"))
        limit = self.rate_limit_per_hour
        if limit is not None:
            hour, _left = self._rate_window()
            with self._meta:
                start, count = self._hour
                count = count + 1 if start == hour else 1
                self._hour = (hour, count)
            if count > limit:
                return self._rate_reply(req, limit)
        return None

    def _authenticated(self, req: Request) -> bool:
        auth = req.header("Authorization") or ""
        kind, _, cred = auth.partition(" ")
        if kind.lower() == "bearer":
            with self.lock:
                entry = self._access.get(cred.strip())
                return bool(entry) and self._live(entry)
        if kind.lower() == "basic":
            try:
                user, _, pwd = base64.b64decode(cred.strip()).decode("utf-8").partition(":")
            except (ValueError, UnicodeDecodeError):
                return False
            return (user, pwd) == (self.username, self.password)
        return False

    def _live(self, entry: dict[str, Any]) -> bool:
        return not entry["expired"] and self.clock.now() < entry["expires"]

    # -- OAuth ---------------------------------------------------------------------------
    def _token(self, req: Request) -> Reply:
        with self._meta:
            self.token_calls += 1
        ctype = (req.header("Content-Type") or "").lower()
        if "json" in ctype or req.body.lstrip().startswith((b"{", b"[")):
            raise oauth_denied(400)
        form = req.form()
        if (form.get("client_id"), form.get("client_secret")) != (self.client_id,
                                                                  self.client_secret):
            raise oauth_denied()
        grant = form.get("grant_type")
        now = self.clock.now()
        with self.lock:
            if grant == "client_credentials":
                if not self.client_credentials_enabled:
                    raise oauth_denied()
                entry = self._access.get(self._cc_token or "")
                if entry is None or not self._live(entry):
                    self._cc_token = self._new_token(now)
                    entry = self._access[self._cc_token]
                left = int((entry["expires"] - now).total_seconds()) - 1
                return Reply(200, {"access_token": self._cc_token, "scope": "useraccount",
                                   "token_type": "Bearer", "expires_in": max(left, 0)})
            if grant == "password":
                if (form.get("username"), form.get("password")) != (self.username,
                                                                    self.password):
                    raise oauth_denied()
            elif grant == "refresh_token":
                if form.get("refresh_token") not in self._refresh:
                    raise oauth_denied()
            else:
                raise oauth_denied()
            access = self._new_token(now)
            refresh = form.get("refresh_token") or secrets.token_urlsafe(64)
            self._refresh.add(refresh)
        return Reply(200, {"scope": "useraccount", "token_type": "Bearer",
                           "expires_in": self.access_token_ttl, "refresh_token": refresh,
                           "access_token": access})

    def _new_token(self, now: datetime) -> str:
        token = secrets.token_urlsafe(64)
        self._access[token] = {"expires": now + timedelta(seconds=self.access_token_ttl),
                               "expired": False}
        return token

    # -- schema helpers ------------------------------------------------------------------
    def _phys_type(self, kind: str) -> str:
        if kind.startswith("reference:"):
            return "reference:" + self._phys[kind.split(":", 1)[1]]
        return kind

    def _chain(self, name: str) -> list[str]:
        """The table and its ancestors, root first."""
        chain: list[str] = []
        cur: str | None = name
        while cur:
            chain.insert(0, cur)
            cur = self._schema[cur][0]
        return chain

    def _columns(self, name: str) -> dict[str, str]:
        cols = self._columns_cache.get(name)
        if cols is None:
            cols = dict(SYS_COLUMNS)
            for table in self._chain(name):
                cols.update(self._schema[table][1])
            self._columns_cache[name] = cols
        return cols

    def _descendants(self, name: str) -> list[str]:
        return [t for t in self._schema if name in self._chain(t)]

    def _ref_table(self, name: str, column: str) -> str | None:
        kind = self._columns(name).get(column, "")
        return kind.split(":", 1)[1] if kind.startswith("reference:") else None

    def _table(self, req: Request) -> str:
        phys = req.match["table"]
        name = self._logical.get(phys)
        if name is None:
            raise sn_error(400, f"Invalid table {phys}")
        return name

    def _acl(self, name: str, method: str) -> None:
        phys = self._phys[name]
        if (phys, method) in self._denied or (phys, "*") in self._denied or (
                method != "GET" and name in READ_ONLY_TABLES):
            verb = ACL_VERBS.get(method, "Read")
            raise sn_error(403, "Operation Failed",
                           f"ACL Exception {verb} Failed due to security constraints")

    # -- storage -------------------------------------------------------------------------
    def _new_id(self) -> str:
        return f"{self._ids.getrandbits(128):032x}"

    def _stamp(self) -> str:
        return self.clock.now().astimezone(UTC).strftime(STAMP)

    def _find(self, name: str, sys_id: str) -> tuple[str, dict[str, str]] | None:
        for table in self._descendants(name):
            row = self._data[table].get(sys_id)
            if row is not None:
                return table, row
        return None

    def _rows_of(self, name: str) -> list[tuple[str, dict[str, str]]]:
        tables = self._descendants(name)
        found = [(table, row) for table in tables for row in self._data[table].values()]
        if len(tables) > 1:
            found.sort(key=lambda tr: tr[1]["_seq"])
        return found

    def _insert(self, name: str, values: dict[str, str], sys_id: str | None = None
                ) -> dict[str, str]:
        cols = self._columns(name)
        stamp = self._stamp()
        row = {c: ("false" if kind == "boolean" else "") for c, kind in cols.items()}
        row.update(DEFAULTS.get(name, {}))
        row.update({k: v for k, v in values.items() if k in cols})
        row.update(sys_id=sys_id or self._new_id(), sys_created_on=stamp, sys_updated_on=stamp,
                   sys_created_by=self.username, sys_updated_by=self.username,
                   sys_mod_count="0")
        if "sys_class_name" in cols:
            row["sys_class_name"] = self._phys[name]
        if name in NUMBER_PREFIX and not row.get("number"):
            n = self._numbers.get(name, 1000) + 1
            self._numbers[name] = n
            row["number"] = f"{NUMBER_PREFIX[name]}{n:07d}"
        self._roll_up(row)
        self._seq += 1
        row["_seq"] = f"{self._seq:010d}"
        self._data[name][row["sys_id"]] = row
        return row

    def _apply(self, row: dict[str, str], values: dict[str, str]) -> bool:
        """Write `values` (already filtered to the table's columns); True if anything
        changed, and then the row's update stamps move."""
        changed = {k: v for k, v in values.items() if row.get(k) != v}
        if not changed:
            return False
        row.update(changed)
        self._roll_up(row)
        row.update(sys_updated_on=self._stamp(), sys_updated_by=self.username,
                   sys_mod_count=str(int(row["sys_mod_count"] or 0) + 1))
        return True

    @staticmethod
    def _roll_up(row: dict[str, str]) -> None:
        if "invoice_amount" in row:
            subtotal, tax = _number(row.get("subtotal", "")), _number(row.get("tax_amount", ""))
            row["invoice_amount"] = "" if subtotal is None else str(subtotal + (tax or 0))

    def _writable(self, name: str, body: dict[str, Any]) -> dict[str, str]:
        cols = self._columns(name)
        return {k: _coerce(v) for k, v in body.items()
                if k in cols and not k.startswith("sys_") and k not in READ_ONLY_COLUMNS}

    def _seed_dictionary(self) -> None:
        ids = {name: hashlib.md5(f"sys_db_object:{self._phys[name]}".encode()).hexdigest()
               for name in self._schema}
        for name, (sup, cols) in self._schema.items():
            phys = self._phys[name]
            self._insert("sys_db_object", {
                "name": phys, "label": LABELS.get(name, phys.replace("_", " ").title()),
                "super_class": ids[sup] if sup else "",
                "is_extendable": "true" if self._descendants(name)[1:] else "false"},
                sys_id=ids[name])
            own = dict(SYS_COLUMNS) if sup is None else {}
            own.update(cols)
            entries = [("", "collection")] + list(own.items())
            for element, kind in entries:
                ref = kind.split(":", 1)[1] if kind.startswith("reference:") else ""
                self._insert("sys_dictionary", {
                    "name": phys, "element": element,
                    "column_label": element.replace("_", " ").strip().capitalize() or
                    LABELS.get(name, phys),
                    "internal_type": "reference" if ref else INTERNAL_TYPES.get(kind, kind),
                    "reference": self._phys[ref] if ref else "",
                    "mandatory": "false", "active": "true"})

    # -- rendering -----------------------------------------------------------------------
    def _display(self, table: str, row: dict[str, str]) -> str:
        cols = self._columns(table)
        if table == "sys_db_object":
            return row["label"]
        for col in (DISPLAY.get(table, ""), "number", "name", "u_external_id"):
            if col in cols and row.get(col):
                return row[col]
        return row["sys_id"] if "number" not in cols and "name" not in cols else ""

    def _link(self, table: str, sys_id: str) -> str:
        return f"{self.root_url}/api/now/table/{self._phys[table]}/{sys_id}"

    def _cell(self, name: str, row: dict[str, str], col: str, opts: dict[str, Any]) -> Any:
        display, no_link = opts["display"], opts["no_link"]
        value = row.get(col, "")
        ref = self._ref_table(name, col)
        if ref is None:
            if display == "all":
                return {"display_value": value, "value": value}
            return value
        if not value:
            return {"display_value": "", "value": ""} if display == "all" else ""
        target = self._find(ref, value)
        dv = self._display(*target) if target else ""
        link = self._link(ref, value)
        if display == "false":
            return value if no_link else {"link": link, "value": value}
        out: dict[str, str] = {"display_value": dv}
        if not no_link:
            out["link"] = link
        if display == "all":
            out["value"] = value
        return out if (display == "all" or not no_link) else dv

    def _walk(self, name: str, row: dict[str, str], field: str
              ) -> tuple[str, dict[str, str]] | None:
        """(table, row) holding `field`'s last part, or None when the path is invalid or
        the reference is empty. Fields: `col` or `ref.col` (one level)."""
        if "." not in field:
            return (name, row) if field in self._columns(name) else None
        head, tail = field.split(".", 1)
        ref = self._ref_table(name, head)
        if ref is None or "." in tail or tail not in self._columns(ref):
            return None
        found = self._find(ref, row.get(head, ""))
        return (ref, found[1]) if found else (ref, {})

    def _valid_field(self, name: str, field: str) -> bool:
        if "." not in field:
            return field in self._columns(name)
        head, tail = field.split(".", 1)
        ref = self._ref_table(name, head)
        return ref is not None and "." not in tail and tail in self._columns(ref)

    def _render(self, name: str, row: dict[str, str], opts: dict[str, Any]) -> dict[str, Any]:
        fields = opts["fields"]
        if fields is None:
            return {c: self._cell(name, row, c, opts) for c in self._columns(name)}
        out: dict[str, Any] = {}
        for field in fields:
            if not self._valid_field(name, field):
                continue
            table, holder = self._walk(name, row, field) or (name, {})
            col = field.rsplit(".", 1)[-1]
            out[field] = self._cell(table, holder, col, opts) if holder else ""
        return out

    @staticmethod
    def _options(req: Request) -> dict[str, Any]:
        fields = req.arg("sysparm_fields")
        display = (req.arg("sysparm_display_value") or "false").lower()
        return {"fields": [f.strip() for f in fields.split(",") if f.strip()]
                if fields else None,
                "display": display if display in ("true", "all") else "false",
                "no_link": (req.arg("sysparm_exclude_reference_link") or "").lower() == "true"}

    # -- encoded queries -----------------------------------------------------------------
    def _value(self, name: str, row: dict[str, str], field: str) -> str:
        found = self._walk(name, row, field)
        if not found:
            return ""
        return found[1].get(field.rsplit(".", 1)[-1], "")

    def _condition(self, name: str, text: str) -> Any:
        m = COND.match(text)
        if not m or not self._valid_field(name, m["f"]):
            return None
        field, op, want = m["f"], m["op"], m["v"]
        if op in ("ISEMPTY", "ISNOTEMPTY") and want:
            return None

        def test(row: dict[str, str]) -> bool:
            have = self._value(name, row, field)
            if op == "=":
                return have == want
            if op == "!=":
                return have != want
            if op == "LIKE":
                return want in have
            if op == "NOT LIKE":
                return want not in have
            if op == "STARTSWITH":
                return have.startswith(want)
            if op == "ENDSWITH":
                return have.endswith(want)
            if op == "IN":
                return have in want.split(",")
            if op == "NOT IN":
                return have not in want.split(",")
            if op == "ISEMPTY":
                return have == ""
            if op == "ISNOTEMPTY":
                return have != ""
            a, b = _number(have), _number(want)
            left, right = (a, b) if a is not None and b is not None else (have, want)
            return {">": left > right, "<": left < right, ">=": left >= right,
                    "<=": left <= right}[op]
        return test

    def _query(self, name: str, rows: list[tuple[str, dict[str, str]]], query: str
               ) -> list[tuple[str, dict[str, str]]]:
        segments_eq = [self._plain_equalities(name, q) for q in query.split("^NQ")]
        if all(seg is not None for seg in segments_eq):  # the common case, kept fast
            hits: dict[int, tuple[str, dict[str, str]]] = {}
            for seg in segments_eq:
                out = rows
                for f, v in seg or []:
                    out = [tr for tr in out if tr[1].get(f) == v]
                hits.update((id(tr[1]), tr) for tr in out)
            return [tr for tr in rows if id(tr[1]) in hits] if len(segments_eq) > 1 \
                else list(hits.values())
        segments: list[list[list[Any]]] = []
        order: list[tuple[str, bool]] = []
        for segment in query.split("^NQ"):
            groups: list[list[Any]] = []
            for part in segment.split("^"):
                if part.startswith("ORDERBYDESC") or part.startswith("ORDERBY"):
                    desc = part.startswith("ORDERBYDESC")
                    field = part[11:] if desc else part[7:]
                    if self._valid_field(name, field):
                        order.append((field, desc))
                    continue
                is_or = part.startswith("OR") and bool(groups)
                cond = self._condition(name, part[2:] if is_or else part)
                if cond is None:
                    continue
                if is_or:
                    groups[-1].append(cond)
                else:
                    groups.append([cond])
            segments.append(groups)
        out = [tr for tr in rows
               if any(all(any(c(tr[1]) for c in g) for g in groups) for groups in segments)]
        for field, desc in reversed(order):
            out.sort(key=lambda tr, f=field: self._sort_key(name, tr[1], f), reverse=desc)
        return out

    def _plain_equalities(self, name: str, query: str) -> list[tuple[str, str]] | None:
        """`a=x^b=y` on the table's own columns, or None for anything richer."""
        if "^OR" in query or "ORDERBY" in query:
            return None
        cols = self._columns(name)
        pairs = []
        for part in query.split("^"):
            field, eq, value = part.partition("=")
            if not eq or field not in cols or not re.fullmatch(r"\w+", field) or \
                    value.startswith("="):
                return None
            pairs.append((field, value))
        return pairs

    def _sort_key(self, name: str, row: dict[str, str], field: str) -> tuple[int, Any]:
        value = self._value(name, row, field)
        found = self._walk(name, row, field)
        kind = self._columns(found[0]).get(field.rsplit(".", 1)[-1], "") if found else ""
        if kind in ("currency", "decimal", "integer"):
            n = _number(value)
            return (0, n) if n is not None else (-1, 0)
        return (1, value)

    # -- Table API -----------------------------------------------------------------------
    def _body(self, req: Request) -> dict[str, Any]:
        ctype = (req.header("Content-Type") or "").lower()
        if not ctype:
            raise sn_error(400, "Content-Type header missing",
                           "Provide Content-Type: application/json")
        if "json" not in ctype:
            raise sn_error(415, "Unsupported Media Type",
                           f"Content-Type {ctype} is not supported")
        try:
            body = req.json(parse_float=Decimal)
        except ValueError:
            raise sn_error(400, "Exception while reading request",
                           "The payload is not valid JSON.") from None
        if isinstance(body, list) and body and isinstance(body[0], dict):
            body = body[0]  # one record only, the others are ignored
        if not isinstance(body, dict):
            raise sn_error(400, "Exception while reading request",
                           "The payload must be a JSON object.")
        return body

    def _list(self, req: Request) -> Reply:
        name = self._table(req)
        self._acl(name, "GET")
        opts = self._options(req)
        try:
            limit = int(req.arg("sysparm_limit") or 10000)
            offset = max(0, int(req.arg("sysparm_offset") or 0))
        except ValueError:
            raise sn_error(400, "Invalid parameter", "sysparm_limit and sysparm_offset "
                           "must be integers") from None
        limit = limit if limit > 0 else 10000
        with self.lock:
            rows = self._rows_of(name)
            query = req.arg("sysparm_query")
            if not query:
                query = "^".join(f"{k}={v[0]}" for k, v in req.params.items()
                                 if not k.startswith("sysparm_") and v)
            if query:
                rows = self._query(name, rows, query)
            total = len(rows)
            page = [self._render(name, row, opts) for _t, row in rows[offset:offset + limit]]
            headers = {"X-Total-Count": str(total)}
            if (req.arg("sysparm_suppress_pagination_header") or "").lower() != "true":
                headers["Link"] = self._links(req, offset, limit, total)
            return encoded(200, {"result": page}, headers)

    def _links(self, req: Request, offset: int, limit: int, total: int) -> str:
        def url(off: int) -> str:
            params = {k: v[0] for k, v in req.params.items()
                      if k not in ("sysparm_offset", "sysparm_limit")}
            params.update(sysparm_limit=str(limit), sysparm_offset=str(off))
            return f"<{self.root_url}{req.path}?{urlencode(params)}>"
        parts = [f'{url(0)};rel="first"']
        if offset > 0:
            parts.append(f'{url(max(0, offset - limit))};rel="prev"')
        if offset + limit < total:
            parts.append(f'{url(offset + limit)};rel="next"')
        last = ((total - 1) // limit) * limit if total else 0
        parts.append(f'{url(last)};rel="last"')
        return ",".join(parts)

    def _record(self, name: str, req: Request) -> tuple[str, dict[str, str]]:
        found = self._find(name, req.match["sys_id"])
        if found is None:
            raise sn_error(404, "No Record found",
                           "Record doesn't exist or ACL restricts the record retrieval")
        return found

    def _one(self, req: Request, name: str, row: dict[str, str], status: int = 200,
             headers: dict[str, str] | None = None) -> Reply:
        if (req.header("X-no-response-body") or "").lower() == "true":
            return Reply(status, b"", headers or {})
        return encoded(status, {"result": self._render(name, row, self._options(req))},
                       headers)

    def _get(self, req: Request) -> Reply:
        name = self._table(req)
        self._acl(name, "GET")
        with self.lock:
            _table, row = self._record(name, req)
            return self._one(req, name, row)

    def _create(self, req: Request) -> Reply:
        name = self._table(req)
        self._acl(name, "POST")
        body = self._body(req)
        with self.lock:
            if name in TRANSFORMS:  # inserting into an import set table runs the transform
                row, _result = self._stage(name, body, self._import_set(name))
            else:
                row = self._insert(name, self._writable(name, body))
            return self._one(req, name, row, 201,
                             {"Location": self._link(name, row["sys_id"])})

    def _update(self, req: Request) -> Reply:
        name = self._table(req)
        self._acl(name, req.method)
        body = self._body(req)
        with self.lock:
            _table, row = self._record(name, req)
            self._apply(row, self._writable(name, body))
            return self._one(req, name, row)

    def _delete(self, req: Request) -> Reply:
        name = self._table(req)
        self._acl(name, "DELETE")
        with self.lock:
            table, row = self._record(name, req)
            del self._data[table][row["sys_id"]]
        return Reply(204, None)

    # -- Import Set API ------------------------------------------------------------------
    def _staging(self, req: Request) -> str:
        name = self._table(req)
        if name not in TRANSFORMS:
            raise sn_error(400, f"Invalid table {req.match['table']}",
                           "Not an import set table")
        self._acl(name, "POST" if req.method == "POST" else "GET")
        if req.method == "POST" and "import_set_loader" not in self.roles:
            raise sn_error(403, "Operation Failed",
                           "ACL Exception Insert Failed due to security constraints")
        return name

    def _import_set(self, staging: str, fresh: bool = False) -> str:
        day = self.clock.now().astimezone(UTC).date().isoformat()
        key = (staging, day)
        if fresh or key not in self._import_sets:
            number = f"ISET{self._iset_next:07d}"
            self._iset_next += 1
            if fresh:
                return number
            self._import_sets[key] = number
        return self._import_sets[key]

    def _import(self, req: Request) -> Reply:
        name = self._staging(req)
        body = self._body(req)
        with self.lock:
            iset = self._import_set(name)
            _row, result = self._stage(name, body, iset)
            return encoded(201, {"import_set": iset, "staging_table": self._phys[name],
                                 "result": [result]})

    def _insert_multiple(self, req: Request) -> Reply:
        name = self._staging(req)
        body = self._body(req)
        records = body.get("records")
        if not isinstance(records, list) or not all(isinstance(r, dict) for r in records):
            raise sn_error(400, "Exception while reading request",
                           "The payload must be {\"records\":[{...},...]}")
        with self.lock:
            iset = self._import_set(name, fresh=True)
            for record in records:
                self._stage(name, record, iset)
            iset_id = hashlib.md5(iset.encode()).hexdigest()
            multi = req.arg("multi_import_set_id") or self._new_id()
            return encoded(201, {"import_set_id": iset_id, "multi_import_set_id": multi})

    def _import_get(self, req: Request) -> Reply:
        name = self._staging(req)
        with self.lock:
            row = self._data[name].get(req.match["sys_id"])
            if row is None or row["sys_id"] not in self._results:
                raise sn_error(404, "No Record found",
                               "Record doesn't exist or ACL restricts the record retrieval")
            iset, result = self._results[row["sys_id"]]
            opts = {"fields": None, "display": "false", "no_link": True}
            return encoded(200, {"import_set": iset, "staging_table": self._phys[name],
                                 "result": [result], "row": self._render(name, row, opts)})

    def _stage(self, name: str, body: dict[str, Any], iset: str
               ) -> tuple[dict[str, str], dict[str, Any]]:
        """Store a staging row and run its transform at once."""
        values = self._writable(name, body)
        values["sys_import_set"] = iset
        values["sys_import_row"] = str(sum(1 for r in self._data[name].values()
                                           if r["sys_import_set"] == iset))
        row = self._insert(name, values)
        result = self._transform(name, row)
        row.update(sys_import_state=result["status"], sys_target_sys_id=result["sys_id"],
                   sys_target_table=result["table"], sys_transform_map=result["transform_map"],
                   sys_import_state_comment=result.get("error_message")
                   or result.get("status_message", ""))
        self._results[row["sys_id"]] = (iset, result)
        self.staging_results.append(copy.deepcopy(result))
        return row, result

    # -- transforms ----------------------------------------------------------------------
    def _transform(self, staging: str, row: dict[str, str]) -> dict[str, Any]:
        spec = TRANSFORMS[staging]
        target = spec.target
        result: dict[str, Any] = {"transform_map": spec.name, "table": self._phys[target],
                                  "display_name": spec.display, "display_value": "",
                                  "record_link": "", "status": "", "sys_id": ""}
        plan = getattr(self, "_plan_" + spec.plan)
        try:
            match, values = plan(row, self._mapped(staging, row))
        except _Reject as no:
            result.update(status="error", error_message=str(no))
            return result
        if match is None:
            record = self._insert(target, values)
            result["status"] = "inserted"
        else:
            record = match
            if self._apply(record, values):
                result["status"] = "updated"
            else:
                result.update(status="ignored", status_message="No field values changed")
        if staging == "sn_spend_intg_imp_invoice_payment_detail" and \
                result["status"] != "ignored":
            self._paid(record["invoice"])
        result.update(display_value=record.get(spec.display, ""),
                      record_link=self._link(target, record["sys_id"]),
                      sys_id=record["sys_id"])
        return result

    def _mapped(self, staging: str, row: dict[str, str]) -> dict[str, str]:
        """Staging values copied by name: explicit maps, u_X -> X, or u_X -> u_X; empty
        values and references are left to the plan."""
        spec = TRANSFORMS[staging]
        cols = self._columns(spec.target)
        out: dict[str, str] = {}
        for col in self._schema[staging][1]:
            value = row.get(col, "")
            if not value or col in spec.skip:
                continue
            dest = spec.explicit.get(col) or (col[2:] if col[2:] in cols else
                                              col if col in cols else None)
            if dest and not cols[dest].startswith("reference:") and \
                    dest not in READ_ONLY_COLUMNS and not dest.startswith("sys_"):
                out[dest] = value
        return out

    def _lookup(self, table: str, value: str, columns: tuple[str, ...]) -> str | None:
        """sys_id of the first row of `table` whose sys_id or one of `columns` (tried in
        order) equals `value`."""
        if table not in self._schema or not value:
            return None
        if HEX32.match(value) and self._find(table, value):
            return value
        rows = [r for _t, r in self._rows_of(table)]
        for col in columns:
            for r in rows:
                if r.get(col) == value:
                    return r["sys_id"]
        return None

    def _supplier(self, value: str) -> str | None:
        if self.apo:
            return self._lookup("sn_fin_supplier", value, ("number", "u_external_id"))
        return self._lookup("core_company", value, ("name",))

    def _invoice_by_number(self, number: str, source: str = "") -> dict[str, str] | None:
        for _t, r in self._rows_of("sn_shop_invoice"):
            if r["external_invoice_number"] == number and (
                    not source or r["external_invoice_source"] == source):
                return r
        return None

    def _plan_invoice(self, row: dict[str, str], values: dict[str, str]) -> tuple[Any, Any]:
        missing = [c for c in INVOICE_MANDATORY if not row.get(c)]
        if missing:
            raise _Reject(f"Mandatory field(s) missing: {', '.join(missing)}")
        supplier = self._supplier(row["u_supplier"])
        if supplier is None:
            table = self._phys["sn_fin_supplier" if self.apo else "core_company"]
            raise _Reject(f"Unable to resolve u_supplier '{row['u_supplier']}' to a {table} "
                          "record")
        values["supplier"] = supplier
        match = self._invoice_by_number(row["u_external_invoice_number"],
                                        row.get("u_external_invoice_source", ""))
        return match, values

    def _plan_line(self, row: dict[str, str], values: dict[str, str]
                           ) -> tuple[Any, Any]:
        number = row.get("u_external_invoice_number", "")
        if not number:
            raise _Reject("Mandatory field(s) missing: u_external_invoice_number")
        invoice = self._invoice_by_number(number, row.get("u_external_invoice_source", ""))
        if invoice is None:
            raise _Reject(f"No {self._phys['sn_shop_invoice']} record with "
                          f"external_invoice_number '{number}'")
        values["invoice"] = invoice["sys_id"]
        for col, target, table, keys in (
                ("u_gl_account", "ledger_account", "sn_fin_gl_account", ("number",)),
                ("u_cost_center", "cost_center", "cmn_cost_center", ("code", "name"))):
            if row.get(col):
                found = self._lookup(table, row[col], keys)
                if found is None:
                    raise _Reject(f"Unable to resolve {col} '{row[col]}' to a "
                                  f"{self._phys[table]} record")
                values[target] = found
        match = None
        if values.get("erp_line_number"):
            match = next((r for _t, r in self._rows_of("sn_shop_invoice_line")
                          if r["invoice"] == invoice["sys_id"]
                          and r["erp_line_number"] == values["erp_line_number"]), None)
        return match, values

    def _plan_payment(self, row: dict[str, str], values: dict[str, str]
                                     ) -> tuple[Any, Any]:
        number = row.get("u_erp_invoice_number", "")
        if not number:
            raise _Reject("Mandatory field(s) missing: u_erp_invoice_number")
        invoice = self._invoice_by_number(number)
        if invoice is None:
            raise _Reject(f"No {self._phys['sn_shop_invoice']} record with "
                          f"external_invoice_number '{number}'")
        values["invoice"] = invoice["sys_id"]
        code = row.get("u_erp_supplier_code", "")
        if code:
            supplier = self._supplier(code)
            if supplier is None:
                raise _Reject(f"Unable to resolve u_erp_supplier_code '{code}'")
            values["supplier"] = supplier
        match = None
        ref = row.get("u_payment_reference_id", "")
        if ref:
            match = next((r for _t, r in self._rows_of("sn_shop_invoice_payment_detail")
                          if r["payment_reference_id"] == ref
                          and r["erp_invoice_number"] == number), None)
        return match, values

    def _plan_journal(self, row: dict[str, str], values: dict[str, str]
                             ) -> tuple[Any, Any]:
        missing = [c for c in ("u_external_id", "u_line_number") if not row.get(c)]
        if missing:
            raise _Reject(f"Mandatory field(s) missing: {', '.join(missing)}")
        if row.get("u_supplier"):
            table = "sn_fin_supplier" if self.apo else "core_company"
            if not self._find(table, row["u_supplier"]):
                raise _Reject(f"Unable to resolve u_supplier '{row['u_supplier']}' to a "
                              f"{self._phys[table]} record")
            values["u_supplier"] = row["u_supplier"]
        match = next((r for _t, r in self._rows_of("u_ap_journal_entry")
                      if r["u_external_id"] == row["u_external_id"]
                      and r["u_line_number"] == row["u_line_number"]), None)
        return match, values

    def _paid(self, invoice_id: str) -> None:
        found = self._find("sn_shop_invoice", invoice_id)
        if found is None:
            return
        invoice = found[1]
        payments = [r for _t, r in self._rows_of("sn_shop_invoice_payment_detail")
                    if r["invoice"] == invoice_id]
        total = sum((_number(p["payment_amount"]) or Decimal(0) for p in payments), Decimal(0))
        dates = [p["payment_date"] for p in payments if p["payment_date"]]
        change = {"payment_date": max(dates)} if dates else {}
        subtotal = _number(invoice["subtotal"])
        if subtotal is not None and payments and total >= subtotal:
            change["state"] = "paid"
        self._apply(invoice, change)

    # -- data helpers for tests and the demo (they return rendered snapshots) -------------
    def _snapshot(self, name: str, row: dict[str, str]) -> dict[str, Any]:
        return self._render(name, row, {"fields": None, "display": "false", "no_link": True})

    def _seed(self, name: str, values: dict[str, Any]) -> dict[str, str]:
        if name not in self._schema:
            raise ValueError(f"this instance has no table {name}")
        cols = self._columns(name)
        unknown = set(values) - set(cols)
        if unknown:
            raise ValueError(f"{self._phys[name]} has no column(s) {sorted(unknown)}")
        return self._insert(name, {k: _coerce(v) for k, v in values.items()})

    def add_company(self, name: str, **extra: Any) -> dict[str, Any]:
        with self.lock:
            return self._snapshot("core_company", self._seed("core_company",
                                                             {"name": name, **extra}))

    def add_supplier(self, name: str, *, tax_id: str | None = None, **extra: Any
                     ) -> dict[str, Any]:
        """A supplier as onboarding makes it: a vendor core_company and an sn_fin_supplier
        (only the core_company when the instance has no APO)."""
        with self.lock:
            company_cols = self._columns("core_company")
            supplier_cols = self._columns("sn_fin_supplier") if self.apo else {}
            to_supplier = {k: v for k, v in extra.items() if k in supplier_cols}
            to_company = {k: v for k, v in extra.items() if k not in to_supplier}
            bad = set(to_company) - set(company_cols)
            if bad:
                raise ValueError(f"no column(s) {sorted(bad)} for a supplier")
            company = self._seed("core_company", {"name": name, "vendor": True,
                                                  "u_tax_id": tax_id or "", **to_company})
            if not self.apo:
                return self._snapshot("core_company", company)
            supplier = self._seed("sn_fin_supplier", {
                "name": name, "related_company": company["sys_id"], "tax_id": tax_id or "",
                "onboarded": True, **to_supplier})
            return self._snapshot("sn_fin_supplier", supplier)

    def add_gl_account(self, number: str, name: str) -> dict[str, Any]:
        with self.lock:
            return self._snapshot("sn_fin_gl_account", self._seed(
                "sn_fin_gl_account", {"number": number, "name": name}))

    def add_cost_center(self, name: str, code: str | None = None) -> dict[str, Any]:
        with self.lock:
            return self._snapshot("cmn_cost_center", self._seed(
                "cmn_cost_center", {"name": name, "code": code or ""}))

    def add_invoice(self, supplier_sys_id: str, external_invoice_number: str,
                    **fields: Any) -> dict[str, Any]:
        with self.lock:
            return self._snapshot("sn_shop_invoice", self._seed("sn_shop_invoice", {
                "supplier": supplier_sys_id, "external_invoice_number": external_invoice_number,
                **fields}))

    def rows(self, table: str) -> list[dict[str, str]]:
        """Stored rows of a table (its physical name, or its default name) and of the tables
        extending it, as plain dicts of strings."""
        with self.lock:
            name = self._logical.get(table) or (table if table in self._schema else None)
            if name is None:
                raise ValueError(f"this instance has no table {table}")
            return [{k: v for k, v in row.items() if not k.startswith("_")}
                    for _t, row in self._rows_of(name)]
