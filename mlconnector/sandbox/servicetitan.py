"""Offline ServiceTitan: the client-credentials token endpoint, the per-call checks (bearer
token, `ST-App-Key`, `{tenant}` in the path), the 60-calls-a-second limit, one cheap
authenticated call, and the read-only data a ServiceTitan -> FreshBooks sync reads, in the wire
format of `api/servicetitan.md` §1-10.

Data routes (all GET, all under `/{module}/v2/tenant/{tenant}`):
- accounting: `invoices`, `export/invoices`, `export/invoice-items`, `payments`,
  `export/payments`, `payment-types` (no `invoices/{id}`: §4 says there is none);
- crm: `customers`, `customers/{id}`, `customers/{id}/contacts`, `customers/contacts` (bulk),
  `export/customers`, `export/customers/contacts`;
- inventory: `vendors`, `vendors/{id}` (no export, §7), `purchase-orders`,
  `purchase-orders/{id}`, `export/purchase-orders`;
- pricebook: `materials|services|equipment`, `.../{id}`, `export/materials|services|equipment`.
Seed helpers (`add_customer`, `add_vendor`, `add_material`, `add_service`, `add_equipment`,
`add_invoice`, `add_payment`, `add_purchase_order`, `update`, `deactivate`, `contacts_of`)
take the data lock and return a deep copy of the record as the API renders it.

Choices where the page is unsure or silent, for the data:
- stamps (`createdOn`, `modifiedOn`, `appliedOn`) are UTC with 7 fractional digits
  ("2026-01-05T12:00:00.0000000Z", sample B); calendar dates (`invoiceDate`, `dueDate`,
  payment `date`, PO `date`, `paidOn`) are midnight UTC without fraction ("...T00:00:00Z");
  every write takes a stamp strictly later than the last one (+1 µs under a frozen clock);
- money follows §3.5 literally: accounting invoices/items/payments as strings ("105.00",
  item `quantity` with 4 places "2.0000"; more digits than that are kept, never rounded away),
  CRM `balance`, PO money/quantities and pricebook prices as exact JSON numbers (Decimal);
  line totals are quantity x price rounded half-up to cents; tax is always 0;
- invoices: `referenceNumber` and PO `number` default to the id as text; `dueDate` defaults
  to invoice date + 30 with `termName: "Net 30"`; `skuName` carries the pricebook `code`;
  an item without a SKU has `skuId: 0`; item GL accounts are fixed per type (Service Income
  4000, Materials Income 4100, Equipment Income 4200; COGS 5000/5100), pricebook `account`
  names the same account; `balance` = total - amounts applied by active payments, `paidOn`
  = latest such payment date once the balance reaches 0; `statuses` filters `syncStatus`
  (always "Pending" unless updated); job/batch/custom-field/orderBy filters are ignored;
- payments: `typeId` is the payment type's id as a string (Cash 1, Check 2, Credit Card 3,
  ACH 4, new names get the next id); a deactivated payment no longer counts towards balances;
  `paidOnAfter` is exclusive, `paidOnBefore` exclusive;
- customers: a balance change (invoice or payment) moves `modifiedOn` unless
  `excludeAccountingChangesFromModifiedDateRange=true`, which filters on the non-accounting
  stamp; `email`/`phone` given to `add_customer` become Email/Phone contacts (email lives in
  contacts, §6); a missing address is empty strings; `name` filter is a case-insensitive
  substring, address filters case-insensitive equality, `phone` compares digits only;
- contacts: `phoneSettings` is null on Email rows; `preferences.invoiceStatementNotification`
  is true on Email rows; replaced or removed contacts become `active: false` (seen only in
  the export), the paged and bulk contact lists return active rows only; the bulk list needs
  one of customerIds/modifiedOnOrAfter/modifiedBefore, else 400 with errors key "";
- `export/invoice-items` rows are the invoice item plus `invoiceId` and `active` (false once
  the invoice is voided or the item replaced), ordered by the item's own `modifiedOn`;
- vendors: `contactInfo` names are empty strings, `memo` "", `deliveryOption` "None",
  `ids` has no 50 cap (the page gives none); POs: `shipTo` is the business unit's address;
- lists: `ids` may be comma-delimited and/or repeated, more than 50 -> 400; `pageSize` 1-5000;
  default order is `id` ascending; `sort` fields are `Id, ModifiedOn, CreatedOn` (pricebook
  and per-customer contacts `Id` only), case-insensitive, a "+" sent unencoded (a space) counts
  as ascending; unknown query parameters are ignored; by-id routes answer 404 for unknown or
  non-numeric ids (`errors: {"id": [...]}`);
- exports: `export_batch` (default 500) records per call, ordered by (`modifiedOn`, `id`);
  `continueFrom` is url-safe base64 of `{"modifiedOn", "id"}` of the last record sent (the
  same token again when nothing new); `from` is that token or a date/date-time (records with
  `modifiedOn` on or after it); anything else -> 400 `errors.from`; `includeRecentChanges` is
  validated and otherwise changes nothing; exports include inactive rows.

Choices for auth:
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
import copy
import json
import operator
import secrets
from collections import deque
from collections.abc import Callable
from datetime import UTC, date, datetime, timedelta
from decimal import ROUND_HALF_UP, Decimal, InvalidOperation
from typing import Any

from .server import Abort, Emulator, Knobs, Reply, Request, encoded

SCOPE = ("tn.acc.invoices:r tn.acc.payments:r tn.crm.customers:r tn.inv.vendors:r "
         "tn.inv.purchaseorders:r tn.pbk.materials:r tn.pbk.services:r tn.pbk.equipment:r "
         "tn.set.businessunits:r")
SANDBOX_USER, SANDBOX_USER_ID = "sandbox", 1
MAX_PAGE_SIZE = 5000
KINDS = {"customers": "customer", "vendors": "vendor", "invoices": "invoice",
         "payments": "payment", "purchase_orders": "purchase_order", "materials": "sku",
         "services": "sku", "equipment": "sku"}
NOUNS = {"customers": "Customer", "vendors": "Vendor", "purchase_orders": "Purchase order",
         "materials": "Material", "services": "Service", "equipment": "Equipment"}
ID_BASES = {"customers": 5_550_000, "contacts": 9_900_000, "vendors": 6_600_000,
            "materials": 30_000, "services": 20_000, "equipment": 40_000,
            "invoices": 88_000_000, "invoice_items": 300_000, "payments": 77_000_000,
            "applied": 91_000, "purchase_orders": 44_000_000, "po_items": 500_000}
SKU_TYPES = {"materials": "Material", "services": "Service", "equipment": "Equipment"}
ITEM_TYPES = ("Service", "Material", "Equipment", "PriceModifier", "Unspecified")
CONTACT_TYPES = ("Phone", "Email", "Fax", "MobilePhone")
PO_STATUSES = ("Pending", "Sent", "PartiallyReceived", "Received", "Exported", "Canceled")
COMPARERS = {"Equals": operator.eq, "NotEquals": operator.ne, "Greater": operator.gt,
             "Less": operator.lt}
GL_ACCOUNTS = {
    "Service": {"id": 401, "name": "Service Income", "number": "4000", "type": "Income",
                "detailType": "ServiceFeeIncome"},
    "Material": {"id": 402, "name": "Materials Income", "number": "4100", "type": "Income",
                 "detailType": None},
    "Equipment": {"id": 403, "name": "Equipment Income", "number": "4200", "type": "Income",
                  "detailType": None}}
COST_ACCOUNTS = {
    "Material": {"id": 501, "name": "COGS - Materials", "number": "5000",
                 "type": "CostOfGoodsSold", "detailType": None},
    "Equipment": {"id": 502, "name": "COGS - Equipment", "number": "5100",
                  "type": "CostOfGoodsSold", "detailType": None}}
UNDEPOSITED_FUNDS = {"id": 120, "name": "Undeposited Funds", "number": "1200", "type": "Asset",
                     "detailType": None}
SHIP_TO = {"street": "1 Sandbox Way", "city": "Fresno", "state": "CA", "zip": "93701",
           "country": "USA"}
PAYMENT_TYPES = ("Cash", "Check", "Credit Card", "ACH")
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
                 tenant_name: str = "Sandbox Plumbing Co", per_second: int | None = 60,
                 export_batch: int = 500):
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

        # the data (§3-10): rows as the API renders them, by kind and id
        self.export_batch = export_batch  # records per export call; read on every call
        self._rows: dict[str, dict[int, dict[str, Any]]] = {
            kind: {} for kind in ("customers", "contacts", "vendors", "invoices", "payments",
                                  "purchase_orders", "materials", "services", "equipment")}
        self._item_rows: dict[int, dict[str, Any]] = {}  # export/invoice-items rows
        self._plain_modified: dict[int, str] = {}  # customer modifiedOn sans balance moves
        self._seq = dict(ID_BASES)
        self._last_stamp: datetime | None = None
        seeded = "2024-01-02T15:04:05.0000000Z"
        self._payment_types = [{"id": n, "name": name, "modifiedOn": seeded,
                                "createdOn": seeded}
                               for n, name in enumerate(PAYMENT_TYPES, 1)]
        self._register_data_routes()

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

    # == data (api/servicetitan.md §3-10) =================================================
    # -- stamps, ids ----------------------------------------------------------------------
    def _stamp(self) -> str:
        """Now, as ServiceTitan writes it; strictly later than the last stamp handed out."""
        now = self.clock.now().astimezone(UTC)
        if self._last_stamp is not None and now <= self._last_stamp:
            now = self._last_stamp + timedelta(microseconds=1)
        self._last_stamp = now
        return _iso(now)

    def _new_id(self, kind: str) -> int:
        self._seq[kind] += 1
        return self._seq[kind]

    def _get(self, kind: str, obj_id: int) -> dict[str, Any]:
        try:
            return self._rows[kind][int(obj_id)]
        except (KeyError, ValueError, TypeError):
            raise KeyError(f"no {kind} with id {obj_id}") from None

    # -- seed / test helpers ------------------------------------------------------------
    def add_customer(self, name: str, *, email: str | None = None, phone: str | None = None,
                     address: dict[str, Any] | None = None, active: bool = True,
                     contacts: list[dict[str, Any]] | None = None) -> dict[str, Any]:
        with self.lock:
            stamp = self._stamp()
            cid = self._new_id("customers")
            row = {"id": cid, "active": bool(active), "name": name, "type": "Residential",
                   "address": _customer_address(address), "customFields": [],
                   "balance": Decimal("0.00"), "taxExempt": False, "tagTypeIds": [],
                   "doNotMail": False, "doNotService": False, "nationalAccount": False,
                   "createdOn": stamp, "createdById": SANDBOX_USER_ID, "modifiedOn": stamp,
                   "mergedToId": None, "paymentTermId": None, "creditLimit": None,
                   "creditLimitBalance": None, "externalData": []}
            self._rows["customers"][cid] = row
            self._plain_modified[cid] = stamp
            wanted = ([{"type": "Email", "value": email}] if email else []) + \
                ([{"type": "Phone", "value": phone}] if phone else []) + list(contacts or [])
            for spec in wanted:
                self._add_contact(cid, spec, stamp)
            return copy.deepcopy(row)

    def contacts_of(self, customer_id: int) -> list[dict[str, Any]]:
        """The customer's active contacts as `GET /customers/{id}/contacts` renders them."""
        with self.lock:
            self._get("customers", customer_id)
            return [_contact_view(c) for c in self._rows["contacts"].values()
                    if c["customerId"] == customer_id and c["active"]]

    def add_vendor(self, name: str, *, email: str | None = None, phone: str | None = None,
                   active: bool = True, address: dict[str, Any] | None = None) -> dict[str, Any]:
        with self.lock:
            stamp = self._stamp()
            vid = self._new_id("vendors")
            row = {"id": vid, "name": name, "active": bool(active),
                   "isTruckReplenishment": False, "isMobileCreationRestricted": False,
                   "memo": "", "deliveryOption": "None", "defaultTaxRate": Decimal("0"),
                   "contactInfo": {"firstName": "", "lastName": "", "phone": phone or "",
                                   "email": email or "", "fax": ""},
                   "address": _plain_address(address), "createdOn": stamp,
                   "modifiedOn": stamp, "externalData": [], "customFields": []}
            self._rows["vendors"][vid] = row
            return copy.deepcopy(row)

    def add_material(self, code: str, name: str, *, price: Any = "0.00", cost: Any = "0.00",
                     active: bool = True) -> dict[str, Any]:
        return self._add_sku("materials", code, name, price=price, cost=cost, active=active)

    def add_service(self, code: str, name: str, *, price: Any) -> dict[str, Any]:
        return self._add_sku("services", code, name, price=price, cost="0.00", active=True)

    def add_equipment(self, code: str, name: str, *, price: Any) -> dict[str, Any]:
        return self._add_sku("equipment", code, name, price=price, cost="0.00", active=True)

    def _add_sku(self, kind: str, code: str, name: str, *, price: Any, cost: Any,
                 active: bool) -> dict[str, Any]:
        price_d, cost_d = _number(price), _number(cost)
        item_type = SKU_TYPES[kind]
        gl, cogs = GL_ACCOUNTS.get(item_type), COST_ACCOUNTS.get(item_type)
        with self.lock:
            stamp = self._stamp()
            sid = self._new_id(kind)
            row: dict[str, Any] = {
                "id": sid, "code": code, "displayName": name, "description": name,
                "price": price_d, "memberPrice": price_d, "addOnPrice": price_d,
                "addOnMemberPrice": price_d, "cost": cost_d, "hours": Decimal("0"),
                "taxable": False, "account": gl["name"] if gl else None,
                "active": bool(active), "categories": [], "businessUnitId": None,
                "createdOn": stamp, "modifiedOn": stamp, "createdById": SANDBOX_USER_ID,
                "externalData": []}
            if kind == "services":
                row |= {"warranty": None, "isLabor": True, "serviceMaterials": [],
                        "serviceEquipment": [], "calculatedPrice": None}
            else:
                row |= {"unitOfMeasure": None, "costOfSaleAccount": cogs["name"] if cogs else None,
                        "assetAccount": None,
                        "generalLedgerAccountId": gl["id"] if gl else None,
                        "primaryVendor": None, "otherVendors": [], "chargeableByDefault": True}
                if kind == "materials":
                    row |= {"isInventory": True, "isOtherDirectCost": False, "costTypeId": None}
                else:
                    row |= {"manufacturer": None, "model": None, "manufacturerWarranty": None,
                            "serviceProviderWarranty": None, "equipmentMaterials": [],
                            "isConfigurableEquipment": False, "typeId": None,
                            "dimensions": None}
            self._rows[kind][sid] = row
            return copy.deepcopy(row)

    def add_invoice(self, customer_id: int, items: list[dict[str, Any]], *,
                    number: str | None = None, invoice_date: str = "2026-03-02",
                    due_date: str | None = None, summary: str | None = None,
                    business_unit_id: int | None = None) -> dict[str, Any]:
        with self.lock:
            customer = self._get("customers", customer_id)
            stamp = self._stamp()
            iid = self._new_id("invoices")
            day = _day(invoice_date)
            row: dict[str, Any] = {
                "id": iid, "syncStatus": "Pending",
                "referenceNumber": number if number is not None else str(iid),
                "invoiceDate": _date_iso(day),
                "dueDate": _date_iso(due_date if due_date else day + timedelta(days=30)),
                "subTotal": "0.00", "salesTax": "0.00", "total": "0.00", "balance": "0.00",
                "discountTotal": "0.00", "salesTaxCode": None, "taxZoneId": None,
                "invoiceType": None, "customer": {"id": customer["id"], "name": customer["name"]},
                "customerAddress": _short_address(customer["address"]), "location": None,
                "locationAddress": None, "businessUnit": self._unit_ref(business_unit_id),
                "termName": None if due_date else "Net 30", "createdBy": SANDBOX_USER,
                "batch": None, "depositedOn": None, "paidOn": None, "createdOn": stamp,
                "modifiedOn": stamp, "adjustmentToId": None, "job": None, "projectId": None,
                "budgetCodeId": None, "materialSkuId": None, "membershipId": None,
                "royalty": None, "employeeInfo": None, "commissionEligibilityDate": None,
                "sentStatus": "NotSent", "reviewStatus": "NeedsReview", "assignedTo": None,
                "summary": summary, "items": [], "customFields": [], "active": True,
                "importId": None, "exportId": None, "invoiceConfiguration": "JobInvoice"}
            self._rows["invoices"][iid] = row
            self._set_invoice_items(row, items, stamp)
            self._settle_invoice(row, stamp)
            self._settle_customer(row["customer"]["id"])
            return copy.deepcopy(row)

    def add_payment(self, invoice_ids_amounts: list[tuple[int, Any]], *,
                    type_name: str = "Check", paid_on: str = "2026-03-05",
                    customer_id: int | None = None) -> dict[str, Any]:
        with self.lock:
            if not invoice_ids_amounts:
                raise ValueError("a payment is applied to at least one invoice")
            invoices = [self._get("invoices", iid) for iid, _ in invoice_ids_amounts]
            cid = customer_id if customer_id is not None else invoices[0]["customer"]["id"]
            customer = self._get("customers", cid)
            stamp = self._stamp()
            pid = self._new_id("payments")
            row: dict[str, Any] = {
                "id": pid, "active": True, "syncStatus": "Pending", "referenceNumber": None,
                "date": _date_iso(paid_on), "type": type_name,
                "typeId": str(self._payment_type(type_name, stamp)), "total": "0.00",
                "unappliedAmount": "0.00", "memo": None, "authCode": None,
                "checkNumber": None, "createdBy": SANDBOX_USER,
                "customer": {"id": customer["id"], "name": customer["name"]},
                "businessUnit": invoices[0]["businessUnit"], "batch": None, "deposit": None,
                "generalLedgerAccount": dict(UNDEPOSITED_FUNDS), "appliedTo": [],
                "customFields": [], "refundedPaymentId": None, "createdOn": stamp,
                "modifiedOn": stamp}
            self._rows["payments"][pid] = row
            self._apply_payment(row, invoice_ids_amounts, stamp)
            return copy.deepcopy(row)

    def add_purchase_order(self, vendor_id: int, items: list[dict[str, Any]], *,
                           number: str | None = None, date: str = "2026-03-02",
                           status: str = "Pending") -> dict[str, Any]:
        if status not in PO_STATUSES:
            raise ValueError(f"unknown purchase-order status {status!r}")
        with self.lock:
            self._get("vendors", vendor_id)
            stamp = self._stamp()
            oid = self._new_id("purchase_orders")
            row: dict[str, Any] = {
                "id": oid, "number": number if number is not None else str(oid),
                "invoiceId": None, "jobId": None, "projectId": None, "status": status,
                "typeId": 1, "vendorId": int(vendor_id), "technicianId": None,
                "shipTo": _plain_address(None) | SHIP_TO,
                "businessUnitId": self.business_unit_id, "inventoryLocationId": None,
                "batchId": None, "budgetCodeId": None, "vendorDocumentNumber": "",
                "date": _date_iso(date), "requiredOn": None, "sentOn": None,
                "receivedOn": None, "createdOn": stamp, "modifiedOn": stamp,
                "total": Decimal("0.00"), "tax": Decimal("0.00"), "shipping": Decimal("0.00"),
                "summary": "", "customFields": [], "items": []}
            self._set_po_items(row, items, stamp)
            self._rows["purchase_orders"][oid] = row
            return copy.deepcopy(row)

    def update(self, kind: str, obj_id: int, **changes: Any) -> dict[str, Any]:
        """Change a record the way a ServiceTitan user would; `modifiedOn` moves on. Keys are
        the helpers' own names (`email`, `price`, `items`, `number`, ...) or API field names."""
        if kind not in KINDS:
            raise ValueError(f"unknown kind {kind!r}; one of {', '.join(KINDS)}")
        with self.lock:
            row = self._get(kind, obj_id)
            stamp = self._stamp()
            getattr(self, f"_update_{KINDS[kind]}")(row, dict(changes), stamp)
            return copy.deepcopy(row)

    def deactivate(self, kind: str, obj_id: int) -> dict[str, Any]:
        return self.update(kind, obj_id, active=False)

    # -- writes behind the helpers ------------------------------------------------------
    def _add_contact(self, customer_id: int, spec: dict[str, Any], stamp: str) -> None:
        kind = spec.get("type", "Email")
        if kind not in CONTACT_TYPES:
            raise ValueError(f"unknown contact type {kind!r}")
        value = str(spec["value"])
        phone = kind != "Email"
        ctid = self._new_id("contacts")
        self._rows["contacts"][ctid] = {
            "id": ctid, "type": kind, "value": value, "memo": spec.get("memo"),
            "modifiedOn": stamp, "createdOn": stamp,
            "phoneSettings": {"phoneNumber": value, "doNotText": False} if phone else None,
            "preferences": {"jobRemindersEnabled": False, "marketingUpdatesEnabled": False,
                            "invoiceStatementNotification": bool(
                                spec.get("invoiceStatementNotification", not phone))},
            "customerId": customer_id, "active": True}

    def _drop_contacts(self, customer_id: int, stamp: str, kind: str | None = None) -> None:
        for contact in self._rows["contacts"].values():
            if contact["customerId"] == customer_id and contact["active"] and \
                    (kind is None or contact["type"] == kind):
                contact["active"] = False
                contact["modifiedOn"] = stamp

    def _update_customer(self, row: dict[str, Any], changes: dict[str, Any], stamp: str) -> None:
        cid = row["id"]
        for kind, key in (("Email", "email"), ("Phone", "phone")):
            if key in changes:
                value = changes.pop(key)
                self._drop_contacts(cid, stamp, kind)
                if value:
                    self._add_contact(cid, {"type": kind, "value": value}, stamp)
        if "contacts" in changes:
            self._drop_contacts(cid, stamp)
            for spec in changes.pop("contacts") or []:
                self._add_contact(cid, spec, stamp)
        if "address" in changes:
            merged = {k: v for k, v in row["address"].items() if v not in ("", None)}
            row["address"] = _customer_address(merged | (changes.pop("address") or {}))
        self._set_fields(row, changes)
        row["modifiedOn"] = self._plain_modified[cid] = stamp
        for invoice in self._rows["invoices"].values():  # the name shown on invoices
            if invoice["customer"]["id"] == cid:
                invoice["customer"]["name"] = row["name"]
        for payment in self._rows["payments"].values():
            if payment["customer"]["id"] == cid:
                payment["customer"]["name"] = row["name"]

    def _update_vendor(self, row: dict[str, Any], changes: dict[str, Any], stamp: str) -> None:
        for key in ("email", "phone"):
            if key in changes:
                row["contactInfo"][key] = changes.pop(key) or ""
        if "address" in changes:
            row["address"] = _plain_address(
                {k: v for k, v in row["address"].items() if v is not None}
                | (changes.pop("address") or {}))
        self._set_fields(row, changes)
        row["modifiedOn"] = stamp

    def _update_sku(self, row: dict[str, Any], changes: dict[str, Any], stamp: str) -> None:
        if "name" in changes:
            row["displayName"] = row["description"] = changes.pop("name")
        if "price" in changes:  # member and add-on prices follow unless given
            row["memberPrice"] = row["addOnPrice"] = row["addOnMemberPrice"] = \
                _number(changes["price"])
        for key in ("price", "cost", "memberPrice", "addOnPrice", "addOnMemberPrice"):
            if key in changes:
                row[key] = _number(changes.pop(key))
        self._set_fields(row, changes)
        row["modifiedOn"] = stamp

    def _update_invoice(self, row: dict[str, Any], changes: dict[str, Any], stamp: str) -> None:
        old_customer = row["customer"]["id"]
        if "customer_id" in changes:
            customer = self._get("customers", changes.pop("customer_id"))
            row["customer"] = {"id": customer["id"], "name": customer["name"]}
            row["customerAddress"] = _short_address(customer["address"])
        renames = {"number": "referenceNumber", "invoice_date": "invoiceDate",
                   "due_date": "dueDate"}
        for old, new in renames.items():
            if old in changes:
                changes[new] = changes.pop(old)
        for key in ("invoiceDate", "dueDate"):
            if key in changes and changes[key] is not None:
                changes[key] = _date_iso(changes[key])
        if "business_unit_id" in changes:
            row["businessUnit"] = self._unit_ref(changes.pop("business_unit_id"))
        items = changes.pop("items", None)
        self._set_fields(row, changes)
        if items is not None:
            self._set_invoice_items(row, items, stamp)
        elif "active" in changes:
            for item in row["items"]:
                self._item_rows[item["id"]]["active"] = row["active"]
                self._item_rows[item["id"]]["modifiedOn"] = stamp
        self._settle_invoice(row, stamp)
        self._settle_customer(old_customer)
        self._settle_customer(row["customer"]["id"])

    def _update_payment(self, row: dict[str, Any], changes: dict[str, Any], stamp: str) -> None:
        touched = {a["appliedTo"] for a in row["appliedTo"]}
        if "type_name" in changes:
            name = changes.pop("type_name")
            row["type"], row["typeId"] = name, str(self._payment_type(name, stamp))
        if "paid_on" in changes:
            row["date"] = _date_iso(changes.pop("paid_on"))
        if "customer_id" in changes:
            customer = self._get("customers", changes.pop("customer_id"))
            row["customer"] = {"id": customer["id"], "name": customer["name"]}
        applied = changes.pop("invoice_ids_amounts", None)
        self._set_fields(row, changes)
        row["modifiedOn"] = stamp
        if applied is not None:
            self._apply_payment(row, applied, stamp)
        if applied is None and "active" in changes:
            for iid in touched:
                invoice = self._rows["invoices"][iid]
                self._settle_invoice(invoice, stamp)
                self._settle_customer(invoice["customer"]["id"])

    def _update_purchase_order(self, row: dict[str, Any], changes: dict[str, Any],
                               stamp: str) -> None:
        if "vendor_id" in changes:
            row["vendorId"] = self._get("vendors", changes.pop("vendor_id"))["id"]
        if "date" in changes:
            row["date"] = _date_iso(changes.pop("date"))
        if "status" in changes and changes["status"] not in PO_STATUSES:
            raise ValueError(f"unknown purchase-order status {changes['status']!r}")
        items = changes.pop("items", None)
        self._set_fields(row, changes)
        if items is not None:
            self._set_po_items(row, items, stamp)
        row["modifiedOn"] = stamp

    @staticmethod
    def _set_fields(row: dict[str, Any], changes: dict[str, Any]) -> None:
        unknown = [k for k in changes if k not in row or k in ("id", "createdOn", "modifiedOn")]
        if unknown:
            raise ValueError(f"cannot change {', '.join(unknown)}")
        for key, value in changes.items():
            row[key] = bool(value) if key == "active" else value

    def _unit_ref(self, unit_id: int | None) -> dict[str, Any]:
        if unit_id is None or unit_id == self.business_unit_id:
            return {"id": self.business_unit_id, "name": self.tenant_name}
        return {"id": int(unit_id), "name": f"Business Unit {unit_id}"}

    def _payment_type(self, name: str, stamp: str) -> int:
        for ptype in self._payment_types:
            if ptype["name"] == name:
                return ptype["id"]
        ptype = {"id": max(p["id"] for p in self._payment_types) + 1, "name": name,
                 "modifiedOn": stamp, "createdOn": stamp}
        self._payment_types.append(ptype)
        return ptype["id"]

    def _find_sku(self, sku_id: Any, item_type: str | None) -> dict[str, Any] | None:
        if sku_id is None:
            return None
        kinds = [k for k, t in SKU_TYPES.items() if item_type in (None, t)]
        for kind in kinds:
            if int(sku_id) in self._rows[kind]:
                return self._rows[kind][int(sku_id)] | {"_type": SKU_TYPES[kind]}
        return None

    def _set_invoice_items(self, row: dict[str, Any], specs: list[dict[str, Any]],
                           stamp: str) -> None:
        for old in row["items"]:
            self._item_rows[old["id"]] |= {"active": False, "modifiedOn": stamp}
        items = []
        for order, spec in enumerate(specs, 1):
            sku = self._find_sku(spec.get("sku_id"), spec.get("type"))
            item_type = spec.get("type") or (sku["_type"] if sku else "Unspecified")
            if item_type not in ITEM_TYPES:
                raise ValueError(f"unknown item type {item_type!r}")
            quantity = _number(spec.get("quantity", "1"))
            price = _number(spec.get("unit_price", sku["price"] if sku else "0"))
            cost = _number(spec.get("cost", sku["cost"] if sku else "0"))
            code = spec.get("code") or (sku["code"] if sku else None)
            description = spec.get("description") or (sku["description"] if sku else "")
            gl, cogs = GL_ACCOUNTS.get(item_type), COST_ACCOUNTS.get(item_type)
            item = {
                "id": self._new_id("invoice_items"), "description": description,
                "quantity": _text(quantity, 4), "cost": _text(cost),
                "totalCost": _text(_cents(quantity * cost)), "price": _text(price),
                "total": _text(_cents(quantity * price)), "memberPrice": _text(price),
                "type": item_type, "skuName": code,
                "skuId": int(spec["sku_id"]) if spec.get("sku_id") is not None else 0,
                "displayName": sku["displayName"] if sku else description,
                "generalLedgerAccount": dict(gl) if gl else None,
                "costOfSaleAccount": dict(cogs) if cogs else None, "assetAccount": None,
                "inventory": item_type == "Material", "taxable": False,
                "isChargeable": True, "addOn": False, "membershipTypeId": 0,
                "itemGroup": None, "soldHours": None, "createdOn": stamp, "modifiedOn": stamp,
                "serviceDate": row["invoiceDate"], "order": order,
                "businessUnit": dict(row["businessUnit"]), "budgetCodeId": None,
                "inventoryLocationId": None, "createdById": SANDBOX_USER_ID,
                "technicianId": None, "installedEquipmentId": None, "estimateItemId": None,
                "inventoryLocation": None, "importId": None, "exportId": None,
                "inventoryStatus": None, "displayInAmount": None}
            items.append(item)
            self._item_rows[item["id"]] = item | {"invoiceId": row["id"], "active": row["active"]}
        row["items"] = items
        sub_total = sum((Decimal(i["total"]) for i in items), Decimal("0.00"))
        row["subTotal"] = row["total"] = _text(sub_total)

    def _apply_payment(self, row: dict[str, Any], pairs: list[tuple[int, Any]],
                       stamp: str) -> None:
        before = {a["appliedTo"] for a in row["appliedTo"]}
        applied, total = [], Decimal("0.00")
        for iid, amount in pairs:
            invoice = self._get("invoices", iid)
            value = _number(amount)
            total += value
            applied.append({"appliedId": self._new_id("applied"), "appliedTo": invoice["id"],
                            "appliedAmount": _text(value), "appliedOn": stamp,
                            "appliedBy": SANDBOX_USER,
                            "appliedToReferenceNumber": invoice["referenceNumber"]})
        row["appliedTo"] = applied
        row["total"], row["unappliedAmount"] = _text(total), "0.00"
        for iid in before | {a["appliedTo"] for a in applied}:
            invoice = self._rows["invoices"][iid]
            self._settle_invoice(invoice, stamp)
            self._settle_customer(invoice["customer"]["id"])

    def _settle_invoice(self, row: dict[str, Any], stamp: str) -> None:
        """Balance = total - what active payments apply to it; paidOn once it reaches 0."""
        paid, last = Decimal("0.00"), None
        for payment in self._rows["payments"].values():
            if not payment["active"]:
                continue
            for applied in payment["appliedTo"]:
                if applied["appliedTo"] == row["id"]:
                    paid += Decimal(applied["appliedAmount"])
                    last = max(last or payment["date"], payment["date"])
        total = Decimal(row["total"])
        row["balance"] = _text(total - paid)
        row["paidOn"] = last if paid and total - paid <= 0 else None
        row["modifiedOn"] = stamp

    def _settle_customer(self, customer_id: int) -> None:
        """The customer's balance (open invoices); a change moves `modifiedOn` (§6)."""
        row = self._rows["customers"][customer_id]
        balance = sum((Decimal(i["balance"]) for i in self._rows["invoices"].values()
                       if i["customer"]["id"] == customer_id and i["active"]), Decimal("0.00"))
        if balance != row["balance"]:
            row["balance"] = _cents(balance)
            row["modifiedOn"] = self._stamp()

    def _set_po_items(self, row: dict[str, Any], specs: list[dict[str, Any]],
                      stamp: str) -> None:
        items, total = [], Decimal("0.00")
        for spec in specs:
            sku = self._find_sku(spec.get("sku_id"), None)
            quantity = _number(spec.get("quantity", "1"))
            cost = _number(spec.get("cost", sku["cost"] if sku else "0"))
            line = _cents(quantity * cost)
            total += line
            code = spec.get("code") or (sku["code"] if sku else "")
            description = spec.get("description") or (sku["description"] if sku else "")
            sku_type = (spec.get("type") or (sku["_type"] if sku else "Material")).lower()
            items.append({
                "id": self._new_id("po_items"),
                "skuId": int(spec["sku_id"]) if spec.get("sku_id") is not None else 0,
                "description": description, "createdOn": stamp, "modifiedOn": stamp,
                "skuName": sku["displayName"] if sku else description, "skuCode": code,
                "skuType": sku_type, "vendorPartNumber": "", "quantity": quantity,
                "quantityReceived": Decimal("0"), "cost": cost, "total": line,
                "serialNumbers": [], "status": "Pending", "chargeable": False,
                "budgetCodeId": None})
        row["items"], row["total"] = items, total

    # -- the read endpoints -------------------------------------------------------------
    def _register_data_routes(self) -> None:
        acc, crm = "/accounting/v2/tenant/{tenant}", "/crm/v2/tenant/{tenant}"
        inv, pbk = "/inventory/v2/tenant/{tenant}", "/pricebook/v2/tenant/{tenant}"
        get = lambda path, handler: self.route("GET", path, handler)  # noqa: E731
        get(f"{acc}/invoices", self._invoices)
        get(f"{acc}/export/invoices", self._export_of("invoices"))
        get(f"{acc}/export/invoice-items", self._export_items)
        get(f"{acc}/payments", self._payments)
        get(f"{acc}/export/payments", self._export_of("payments"))
        get(f"{acc}/payment-types", self._payment_types_list)
        get(f"{crm}/customers", self._customers)
        get(f"{crm}/customers/contacts", self._contacts_bulk)  # before /customers/{id}
        get(f"{crm}/customers/{{id}}", self._by_id("customers"))
        get(f"{crm}/customers/{{id}}/contacts", self._customer_contacts)
        get(f"{crm}/export/customers", self._export_of("customers"))
        get(f"{crm}/export/customers/contacts", self._export_contacts)
        get(f"{inv}/vendors", self._vendors)
        get(f"{inv}/vendors/{{id}}", self._by_id("vendors"))
        get(f"{inv}/purchase-orders", self._purchase_orders)
        get(f"{inv}/purchase-orders/{{id}}", self._by_id("purchase_orders"))
        get(f"{inv}/export/purchase-orders", self._export_of("purchase_orders"))
        for kind in ("materials", "services", "equipment"):
            get(f"{pbk}/{kind}", self._pricebook(kind))
            get(f"{pbk}/{kind}/{{id}}", self._by_id(kind))
            get(f"{pbk}/export/{kind}", self._export_of(kind))

    def _page(self, q: _Query, kind: str, preds: list[Callable[[dict[str, Any]], bool]],
              sort_fields: tuple[str, ...] = ("Id", "ModifiedOn", "CreatedOn"),
              view: Callable[[dict[str, Any]], Any] | None = None,
              rows: Callable[[], Any] | None = None) -> Reply:
        """The §3.1 envelope over the rows of `kind` that pass every predicate."""
        page, size, include_total = q.paging()
        key, descending = q.sort(sort_fields)
        q.done()
        with self.lock:
            found = [r for r in (rows() if rows else self._rows[kind].values())
                     if all(p(r) for p in preds)]
            found.sort(key=lambda r: (r[key], r["id"]), reverse=descending)
            start = (page - 1) * size
            chunk = found[start:start + size]
            return encoded(200, {"page": page, "pageSize": size,
                                 "hasMore": start + size < len(found),
                                 "totalCount": len(found) if include_total else None,
                                 "data": [view(r) for r in chunk] if view else chunk})

    def _by_id(self, kind: str) -> Callable[[Request], Reply]:
        def handler(req: Request) -> Reply:
            raw = req.match["id"]
            with self.lock:
                row = self._rows[kind].get(int(raw)) if raw.isdigit() else None
                if row is None:
                    return problem(404, {"id": [f"{NOUNS[kind]} with id {raw} was not found."]})
                return encoded(200, row)
        return handler

    def _invoices(self, req: Request) -> Reply:
        q = _Query(req)
        preds = q.common() + [q.active_state()]
        statuses = q.all_of("statuses", {"pending": "Pending", "posted": "Posted",
                                         "exported": "Exported"})
        if statuses:
            preds.append(lambda r: r["syncStatus"] in statuses)
        for name, path in (("businessUnitId", ("businessUnit", "id")),
                           ("customerId", ("customer", "id"))):
            wanted = q.int_(name, low=1)
            if wanted is not None:
                preds.append(lambda r, w=wanted, p=path: (r[p[0]] or {}).get(p[1]) == w)
        number = q.raw("number")
        if number is not None:
            preds.append(lambda r: r["referenceNumber"] == number)
        preds += q.window("invoicedOnOrAfter", "invoicedOnBefore", "invoiceDate")
        preds += q.window("dueDateOnOrAfter", "dueDateBefore", "dueDate")
        preds += q.amounts("totalGreater", "totalLess", "total")
        balance = q.decimal("balanceFilter.Balance")
        comparer = q.choice("balanceFilter.Comparer", {c.lower(): c for c in COMPARERS},
                            "Equals")
        if balance is not None:
            preds.append(lambda r: COMPARERS[comparer](Decimal(r["balance"]), balance))
        return self._page(q, "invoices", preds)

    def _payments(self, req: Request) -> Reply:
        q = _Query(req)
        preds = q.common() + [q.active_state()]
        applied = q.ids("appliedToInvoiceIds", limit=None)
        if applied is not None:
            preds.append(lambda r: any(a["appliedTo"] in applied for a in r["appliedTo"]))
        ref = q.raw("appliedToReferenceNumber")
        if ref is not None:
            preds.append(lambda r: any(a["appliedToReferenceNumber"] == ref
                                       for a in r["appliedTo"]))
        units = q.ids("businessUnitIds", limit=None)
        if units is not None:
            preds.append(lambda r: (r["businessUnit"] or {}).get("id") in units)
        customer = q.int_("customerId", low=1)
        if customer is not None:
            preds.append(lambda r: r["customer"]["id"] == customer)
        after, before = q.when("paidOnAfter"), q.when("paidOnBefore")
        if after is not None:
            preds.append(lambda r: _norm(r["date"]) > after)
        if before is not None:
            preds.append(lambda r: _norm(r["date"]) < before)
        preds += q.amounts("totalGreater", "totalLess", "total")
        return self._page(q, "payments", preds)

    def _payment_types_list(self, req: Request) -> Reply:
        q = _Query(req)
        return self._page(q, "", q.common(created=False),
                          rows=lambda: list(self._payment_types))

    def _customers(self, req: Request) -> Reply:
        q = _Query(req)
        plain = q.bool_("excludeAccountingChangesFromModifiedDateRange")
        if plain:
            stamp = lambda r: self._plain_modified[r["id"]]  # noqa: E731
            preds = q.common(modified=False) + q.window(
                "modifiedOnOrAfter", "modifiedBefore", None, get=stamp)
        else:
            preds = q.common()
        preds.append(q.active())
        name = q.raw("name")
        if name is not None:
            preds.append(lambda r: name.lower() in r["name"].lower())
        for field_name in ("street", "unit", "city", "state", "zip", "country"):
            value = q.raw(field_name)
            if value is not None:
                preds.append(lambda r, f=field_name, v=value:
                             (r["address"][f] or "").lower() == v.lower())
        phone = q.raw("phone")
        if phone is not None:
            digits = _digits(phone)
            preds.append(lambda r: any(
                c["customerId"] == r["id"] and c["active"] and c["type"] != "Email"
                and _digits(c["value"]) == digits for c in self._rows["contacts"].values()))
        return self._page(q, "customers", preds)

    def _customer_contacts(self, req: Request) -> Reply:
        raw = req.match["id"]
        with self.lock:
            if not raw.isdigit() or int(raw) not in self._rows["customers"]:
                return problem(404, {"id": [f"Customer with id {raw} was not found."]})
        cid = int(raw)
        q = _Query(req)
        return self._page(q, "contacts",
                          [lambda r: r["customerId"] == cid and r["active"]],
                          sort_fields=("Id",), view=_contact_view)

    def _contacts_bulk(self, req: Request) -> Reply:
        q = _Query(req)
        customers = q.ids("customerIds", limit=None)
        preds = q.window("modifiedOnOrAfter", "modifiedBefore", "modifiedOn")
        if customers is None and not preds and not q.errors:
            q.bad("", "One of customerIds, modifiedBefore or modifiedOnOrAfter is required.")
        if customers is not None:
            preds.append(lambda r: r["customerId"] in customers)
        preds.append(lambda r: r["active"])
        return self._page(q, "contacts", preds, sort_fields=("Id", "ModifiedOn", "CreatedOn"),
                          view=lambda r: {k: v for k, v in r.items() if k != "active"})

    def _vendors(self, req: Request) -> Reply:
        q = _Query(req)
        return self._page(q, "vendors", q.common(ids_limit=None) + [q.active()])

    def _purchase_orders(self, req: Request) -> Reply:
        q = _Query(req)
        preds = q.common()
        status = q.choice("status", {s.lower(): s for s in PO_STATUSES}, None)
        if status is not None:
            preds.append(lambda r: r["status"] == status)
        number = q.raw("number")
        if number is not None:
            preds.append(lambda r: r["number"] == number)
        preds += q.window("dateOnOrAfter", "dateBefore", "date")
        preds += q.window("sentOnOrAfter", "sentBefore", "sentOn")
        return self._page(q, "purchase_orders", preds)

    def _pricebook(self, kind: str) -> Callable[[Request], Reply]:
        def handler(req: Request) -> Reply:
            q = _Query(req)
            preds = q.common() + [q.active()]
            text = q.raw("searchText")
            if text is not None:
                preds.append(lambda r: any(text.lower() in (r[f] or "").lower()
                                           for f in ("code", "displayName", "description")))
            if kind == "materials":
                odc = q.bool_("isOtherDirectCost")
                if odc is not None:
                    preds.append(lambda r: r["isOtherDirectCost"] == odc)
            if kind == "services":
                q.bool_("calculatePrices")
            return self._page(q, kind, preds, sort_fields=("Id",))
        return handler

    # -- export feeds (§3.2) ------------------------------------------------------------
    def _export_of(self, kind: str) -> Callable[[Request], Reply]:
        return lambda req: self._export(req, lambda: self._rows[kind].values())

    def _export_items(self, req: Request) -> Reply:
        return self._export(req, lambda: self._item_rows.values())

    def _export_contacts(self, req: Request) -> Reply:
        return self._export(req, lambda: self._rows["contacts"].values())

    def _export(self, req: Request, rows: Callable[[], Any]) -> Reply:
        q = _Query(req)
        q.bool_("includeRecentChanges")  # validated; every change is "recent" here
        cursor = q.cursor()
        q.done()
        with self.lock:
            ordered = sorted(rows(), key=lambda r: (r["modifiedOn"], r["id"]))
            if cursor is not None:
                ordered = [r for r in ordered if (r["modifiedOn"], r["id"]) > cursor]
            chunk = ordered[:self.export_batch]
            last = (chunk[-1]["modifiedOn"], chunk[-1]["id"]) if chunk else \
                cursor or (_iso(datetime(1, 1, 1, tzinfo=UTC)), 0)
            return encoded(200, {"hasMore": len(ordered) > len(chunk),
                                 "continueFrom": _token(last), "data": chunk})


# == wire formats and the query parser ===================================================
def _iso(moment: datetime) -> str:
    """UTC with seven fractional digits, the .NET way (§3.5, sample B)."""
    moment = moment.astimezone(UTC)
    whole = moment.replace(tzinfo=None, microsecond=0).isoformat()
    return f"{whole}.{moment.microsecond:06d}0Z"


def _date_iso(value: Any) -> str:
    """A calendar date as a midnight-UTC date-time without fraction (§3.5, sample B)."""
    return _day(value).strftime("%Y-%m-%dT00:00:00Z")


def _norm(stamp: str | None) -> str | None:
    """Stamps in one comparable form: a date-only "...T00:00:00Z" gains its fraction."""
    if stamp is not None and len(stamp) == 20:
        return stamp[:-1] + ".0000000Z"
    return stamp


def _day(value: Any) -> datetime:
    if isinstance(value, datetime):
        return value.astimezone(UTC)
    if isinstance(value, date):
        return datetime(value.year, value.month, value.day, tzinfo=UTC)
    parsed = datetime.fromisoformat(str(value))
    return parsed.replace(tzinfo=UTC) if parsed.tzinfo is None else parsed.astimezone(UTC)


def _number(value: Any) -> Decimal:
    try:
        number = Decimal(str(value))
    except InvalidOperation:
        raise ValueError(f"not a number: {value!r}") from None
    if not number.is_finite():
        raise ValueError(f"not a number: {value!r}")
    return number


def _cents(value: Decimal) -> Decimal:
    return value.quantize(Decimal("0.01"), rounding=ROUND_HALF_UP)


def _text(value: Decimal, places: int = 2) -> str:
    """Money as accounting writes it ("105.00"); never drops digits it was given."""
    if value.as_tuple().exponent >= -places:  # type: ignore[operator]
        value = value.quantize(Decimal(1).scaleb(-places))
    return format(value, "f")


def _digits(text: str) -> str:
    return "".join(ch for ch in text if ch.isdigit())


def _token(cursor: tuple[str, int]) -> str:
    raw = json.dumps({"modifiedOn": cursor[0], "id": cursor[1]}, separators=(",", ":"))
    return base64.urlsafe_b64encode(raw.encode()).decode()


def _customer_address(address: dict[str, Any] | None) -> dict[str, Any]:
    a = address or {}
    return {"street": a.get("street") or "", "unit": a.get("unit"),
            "city": a.get("city") or "", "state": a.get("state") or "",
            "zip": a.get("zip") or "", "country": a.get("country") or "",
            "latitude": a.get("latitude"), "longitude": a.get("longitude")}


def _plain_address(address: dict[str, Any] | None) -> dict[str, Any]:
    a = address or {}
    return {k: a.get(k) for k in ("street", "unit", "city", "state", "zip", "country")}


def _short_address(address: dict[str, Any]) -> dict[str, Any]:
    return {k: address.get(k) for k in ("street", "unit", "city", "state", "zip", "country")}


def _contact_view(row: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in row.items() if k not in ("customerId", "active")}


class _Query:
    """Reads and checks query parameters; every fault lands in `errors` (one 400 at the end)."""

    def __init__(self, req: Request):
        self.req = req
        self.errors: dict[str, list[str]] = {}

    def bad(self, name: str, message: str | None = None) -> None:
        self.errors.setdefault(name, []).append(
            message or f"The value '{self.req.arg(name)}' is not valid.")

    def done(self) -> None:
        if self.errors:
            raise Abort(problem(400, self.errors))

    def raw(self, name: str) -> str | None:
        value = self.req.arg(name)
        return None if value is None or value == "" else value

    def int_(self, name: str, default: int | None = None, low: int | None = None,
             high: int | None = None) -> int | None:
        raw = self.raw(name)
        if raw is None:
            return default
        try:
            value = int(raw)
        except ValueError:
            self.bad(name)
            return default
        if (low is not None and value < low) or (high is not None and value > high):
            self.bad(name, f"{name} must be between {low} and {high or 2**31 - 1}.")
            return default
        return value

    def bool_(self, name: str) -> bool | None:
        raw = self.raw(name)
        if raw is None:
            return None
        if raw.lower() not in ("true", "false"):
            self.bad(name)
            return None
        return raw.lower() == "true"

    def decimal(self, name: str) -> Decimal | None:
        raw = self.raw(name)
        if raw is None:
            return None
        try:
            return _number(raw)
        except ValueError:
            self.bad(name)
            return None

    def when(self, name: str) -> str | None:
        raw = self.raw(name)
        if raw is None:
            return None
        try:
            return _iso(_day(raw.replace(" ", "+")))  # a "+01:00" offset sent unencoded
        except ValueError:
            self.bad(name)
            return None

    def choice(self, name: str, options: dict[str, str], default: str | None) -> str | None:
        raw = self.raw(name)
        if raw is None:
            return default
        if raw.lower() not in options:
            self.bad(name, f"The value '{raw}' is not valid; one of "
                           f"{', '.join(options.values())}.")
            return default
        return options[raw.lower()]

    def all_of(self, name: str, options: dict[str, str]) -> set[str] | None:
        values = [v for raw in self.req.params.get(name, []) for v in raw.split(",") if v]
        if not values:
            return None
        unknown = [v for v in values if v.lower() not in options]
        if unknown:
            self.bad(name, f"The value '{unknown[0]}' is not valid.")
        return {options[v.lower()] for v in values if v.lower() in options}

    def ids(self, name: str = "ids", limit: int | None = 50) -> set[int] | None:
        parts = [p.strip() for raw in self.req.params.get(name, []) for p in raw.split(",")]
        parts = [p for p in parts if p]
        if not parts:
            return None
        if not all(p.isdigit() for p in parts):
            self.bad(name, f"The value '{','.join(parts)}' is not a list of ids.")
            return None
        if limit is not None and len(parts) > limit:
            self.bad(name, f"{name} accepts at most {limit} ids.")
            return None
        return {int(p) for p in parts}

    def paging(self) -> tuple[int, int, bool]:
        page = self.int_("page", 1, 1, None)
        size = self.int_("pageSize", 50, 1, MAX_PAGE_SIZE)
        return page or 1, size or 50, bool(self.bool_("includeTotal"))

    def sort(self, allowed: tuple[str, ...]) -> tuple[str, bool]:
        raw = self.raw("sort")
        if raw is None:
            return "id", False
        descending = raw.startswith("-")
        name = raw.lstrip("+- ")  # a "+" sent unencoded arrives as a space
        for field_name in allowed:
            if field_name.lower() == name.lower():
                return field_name[0].lower() + field_name[1:], descending
        self.bad("sort", f"The value '{raw}' is not valid; sort by "
                         f"{', '.join(allowed)} with a + or - prefix.")
        return "id", False

    def window(self, after: str, before: str, field_name: str | None, *,
               get: Callable[[dict[str, Any]], Any] | None = None
               ) -> list[Callable[[dict[str, Any]], bool]]:
        """`after` inclusive, `before` exclusive (§3.1) on a stamp field."""
        value = get or (lambda r: r[field_name])
        low, high = self.when(after), self.when(before)
        preds: list[Callable[[dict[str, Any]], bool]] = []
        if low is not None:
            preds.append(lambda r: value(r) is not None and _norm(value(r)) >= low)
        if high is not None:
            preds.append(lambda r: value(r) is not None and _norm(value(r)) < high)
        return preds

    def amounts(self, greater: str, less: str, field_name: str
                ) -> list[Callable[[dict[str, Any]], bool]]:
        low, high = self.decimal(greater), self.decimal(less)
        preds: list[Callable[[dict[str, Any]], bool]] = []
        if low is not None:
            preds.append(lambda r: Decimal(r[field_name]) > low)
        if high is not None:
            preds.append(lambda r: Decimal(r[field_name]) < high)
        return preds

    def common(self, *, created: bool = True, modified: bool = True,
               ids_limit: int | None = 50) -> list[Callable[[dict[str, Any]], bool]]:
        preds: list[Callable[[dict[str, Any]], bool]] = []
        wanted = self.ids("ids", ids_limit)
        if wanted is not None:
            preds.append(lambda r: r["id"] in wanted)
        if created:
            preds += self.window("createdOnOrAfter", "createdBefore", "createdOn")
        if modified:
            preds += self.window("modifiedOnOrAfter", "modifiedBefore", "modifiedOn")
        return preds

    def active(self) -> Callable[[dict[str, Any]], bool]:
        mode = self.choice("active", {"true": "True", "any": "Any", "false": "False"}, "True")
        if mode == "Any":
            return lambda r: True
        return lambda r: r["active"] is (mode == "True")

    def active_state(self) -> Callable[[dict[str, Any]], bool]:
        mode = self.choice("activeState", {"activeonly": "ActiveOnly",
                                           "inactiveonly": "InactiveOnly", "all": "All"},
                           "ActiveOnly")
        if mode == "All":
            return lambda r: True
        return lambda r: r["active"] is (mode == "ActiveOnly")

    def cursor(self) -> tuple[str, int] | None:
        """`from`: a `continueFrom` token, or a date to start at that `modifiedOn` (§3.2)."""
        raw = self.raw("from")
        if raw is None:
            return None
        try:
            return (_iso(_day(raw)), 0)
        except ValueError:
            pass
        try:
            decoded = json.loads(base64.urlsafe_b64decode(raw + "=" * (-len(raw) % 4)))
            cursor = (_iso(_day(decoded["modifiedOn"])), int(decoded["id"]))
        except (ValueError, KeyError, TypeError):
            self.bad("from", f"The value '{raw}' is neither a continuation token nor a date.")
            return None
        return cursor
