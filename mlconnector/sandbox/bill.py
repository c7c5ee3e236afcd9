"""Offline BILL v3 (`/connect/v3/...`): session login, vendors, AP bills, payments (read) and the
chart of accounts, with BILL's list syntax (max, opaque page tokens, sort, filters), its error
arrays and its limits (3 requests in flight per organization, 20,000 requests and 200 logins
per devKey per hour, 35-minute idle sessions), in the wire format of `api/bill.md`.

Statuses and codes chosen where the API page is unsure (BILL's Postman collection only
documents 400 and 500 error answers):
- BDC_1101 bad user/password/organization, BDC_1102 bad devKey, BDC_1109 dead session: 401;
- BDC_1322 too many in flight (also the `rate_429` knob): 429;
- BDC_1144 hourly request quota: 400; the login quota answers BDC_1144 too, with 429 and a
  message about logins (BILL documents no code of its own for it);
- BDC_1002 for every refused request body, unknown field, bad filter, sort or page: 400;
- BDC_1001 for an id that does not exist: 404; BDC_1121 for an unknown path: 404;
- random 503s (`error_rate`) answer BDC_1001 "system error" with 503;
- lists include archived records unless filtered with `archived:eq:false`;
  `nextPage`/`prevPage` are null at the ends; string filters are case-sensitive.
Timestamps are UTC with milliseconds and strictly increase across writes, so `updatedTime`
always moves forward even under a frozen test clock.
"""

from __future__ import annotations

import base64
import copy
import json
import random
import re
import string
import uuid
from collections import deque
from datetime import UTC, date, datetime, timedelta
from decimal import ROUND_HALF_UP, Decimal, InvalidOperation
from typing import Any

from .server import Abort, Emulator, Knobs, Reply, Request, encoded

CENT = Decimal("0.01")
EQ_NE_IN = {"eq", "ne", "in"}
RANGE = {"gt", "gte", "lt", "lte"}
TIMES = {"createdTime": RANGE, "updatedTime": RANGE}
FILTERS: dict[str, dict[str, set[str]]] = {  # filterable fields, per api/bill.md §4
    "vendors": {"id": EQ_NE_IN, "archived": {"eq", "ne"}, "name": {"eq", "sw"},
                "accountType": {"eq", "ne", "in", "nin"}, "address.country": {"eq", "ne"},
                "billCurrency": {"eq", "ne", "in", "nin"}, **TIMES},
    "bills": {"id": EQ_NE_IN, "archived": {"eq", "ne"}, "vendorId": {"eq", "in"},
              "dueDate": RANGE, "paymentStatus": EQ_NE_IN, "payFromChartOfAccountId": EQ_NE_IN,
              **{f"classifications.{c}": EQ_NE_IN for c in (
                  "chartOfAccountId", "accountingClassId", "departmentId", "locationId",
                  "itemId")}, **TIMES},
    "payments": {"id": EQ_NE_IN, "vendorId": {"eq", "in"}, "status": {"eq", "ne", "in", "nin"},
                 "disbursementType": {"eq", "ne", "in", "nin"}, "processDate": RANGE,
                 "amount": RANGE | {"eq"}, **TIMES},
    "chart_of_accounts": {"id": EQ_NE_IN, "archived": {"eq", "ne"}, "name": {"eq", "sw"},
                          "parentId": {"eq"}, **TIMES},
}
VENDOR_FIELDS = {"name", "shortName", "accountNumber", "accountType", "email", "phone",
                 "address", "paymentInformation", "additionalInfo", "billCurrency", "autoPay"}
VENDOR_READ_ONLY = {"id", "archived", "rppsId", "bankAccountStatus", "recurringPayments",
                    "createdTime", "updatedTime", "balance", "networkStatus"}
BILL_FIELDS = {"vendorId", "dueDate", "invoice", "billLineItems", "description",
               "payFromChartOfAccountId", "classifications", "purchaseOrderNumber",
               "vendorCredits", "billApprovals"}
BILL_READ_ONLY = {"id", "archived", "vendorName", "amount", "fundingAmount", "paidAmount",
                  "dueAmount", "scheduledAmount", "creditAmount", "exchangeRate",
                  "paymentStatus", "approvalStatus", "createdTime", "updatedTime", "approvers"}
LINE_FIELDS = {"id", "amount", "quantity", "price", "description", "classifications"}
COUNTRIES = {"US": "United States", "CA": "Canada", "GB": "United Kingdom", "MX": "Mexico",
             "AU": "Australia", "DE": "Germany", "FR": "France", "IE": "Ireland"}
PAYMENT_STATUSES = {"SCHEDULED", "APPROVING", "PAID", "VOID", "CANCELLED", "FAILED", "PENDING"}
PENDING = {"SCHEDULED", "APPROVING", "PENDING"}
STATUS_CODES = {"BDC_1109": 401, "BDC_1101": 401, "BDC_1102": 401, "BDC_1322": 429,
                "BDC_1144": 400, "BDC_1001": 404, "BDC_1121": 404}
MESSAGES = {
    "BDC_1109": "Session is invalid. Please log in.",
    "BDC_1322": "Max number of concurrent requests per organization reached.",
    "BDC_1144": "Max number of allowed requests per hour reached: 20000.",
}
TIME_VALUE = re.compile(r"^\d{4}-\d{2}-\d{2}(T\d{2}:\d{2}(:\d{2}(\.\d{1,3})?)?)?"
                        r"(Z|[+-]\d{2}:?\d{2})?$")


def iso_ms(dt: datetime) -> str:
    dt = dt.astimezone(UTC)
    return dt.strftime("%Y-%m-%dT%H:%M:%S.") + f"{dt.microsecond // 1000:03d}Z"


def error_body(code: str, message: str, category: str = "REQUEST") -> list[dict[str, Any]]:
    stamp = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "+00:00"
    return [{"timestamp": stamp, "code": code, "severity": "ERROR", "category": category,
             "message": message}]


def bdc(code: str, message: str | None = None, status: int | None = None,
        category: str = "REQUEST") -> Abort:
    return Abort(Reply(status or STATUS_CODES.get(code, 400),
                       error_body(code, message or MESSAGES.get(code, code), category)))


def refused(message: str) -> Abort:
    return bdc("BDC_1002", message, 400)


def _num(value: Any, field: str) -> Decimal | None:
    """A JSON number (or numeric string) as an exact Decimal."""
    if value is None:
        return None
    if isinstance(value, bool):
        raise refused(f"{field}: must be a number")
    try:
        d = Decimal(str(value))
    except InvalidOperation:
        raise refused(f"{field}: must be a number") from None
    if not d.is_finite():
        raise refused(f"{field}: must be a number")
    return d


def _day(value: Any, field: str) -> str:
    try:
        return date.fromisoformat(str(value)).isoformat()
    except ValueError:
        raise refused(f"{field}: must be a date yyyy-MM-dd") from None


def _path(row: dict[str, Any], dotted: str) -> Any:
    for part in dotted.split("."):
        row = row.get(part) if isinstance(row, dict) else None
    return row


def _split(text: str) -> list[str]:
    """Split on commas outside double quotes."""
    parts, buf, quoted = [], [], False
    for ch in text:
        if ch == '"':
            quoted = not quoted
        if ch == "," and not quoted:
            parts.append("".join(buf))
            buf = []
        else:
            buf.append(ch)
    parts.append("".join(buf))
    return [p.strip() for p in parts]


def _unquote(value: str) -> str:
    return value[1:-1] if len(value) >= 2 and value[0] == value[-1] == '"' else value


class BillSandbox(Emulator):
    dev_key = "sandbox-dev-key"
    username = "ap@sandbox.example"
    password = "sandbox-password"
    user_id = "00601SANDBOXUSER0001"
    hourly_limit = 20000
    login_limit = 200

    def __init__(self, knobs: Knobs | None = None, *,
                 organization_id: str = "00801SANDBOXORG0001", session_idle: float = 35 * 60,
                 clock: Any = None, max_concurrent: int = 3):
        super().__init__(knobs, clock)
        self.organization_id = organization_id
        self.session_idle = session_idle
        self.max_concurrent = max_concurrent
        self.login_count = 0
        self.vendors: dict[str, dict[str, Any]] = {}
        self.bills: dict[str, dict[str, Any]] = {}
        self.payments: dict[str, dict[str, Any]] = {}
        self.chart_of_accounts: dict[str, dict[str, Any]] = {}
        self._sessions: dict[str, dict[str, Any]] = {}
        self._logins: deque[datetime] = deque()
        self._hour: tuple[datetime | None, int] = (None, 0)
        self._injected: deque[str] = deque()
        self._ids = random.Random(f"bill-ids-{organization_id}")
        self._last_stamp = datetime.min.replace(tzinfo=UTC)
        self._confirmations = 0
        self._paid_by_bill: dict[str, list[str]] = {}   # bill id -> payment ids
        self._due: dict[str, Decimal] = {}              # vendor id -> balance due
        self._due_by_bill: dict[str, tuple[str, Decimal]] = {}

        v3 = "/connect/v3"
        self.route("POST", f"{v3}/login", self._login, open=True)
        self.route("GET", f"{v3}/login/session", self._session)
        self.route("POST", f"{v3}/logout", self._logout)
        for name, store, create, bulk in (("vendors", "vendors", self._new_vendor, 20),
                                          ("bills", "bills", self._new_bill, 100)):
            self.route("GET", f"{v3}/{name}", lambda r, s=store: self._list(r, s))
            self.route("POST", f"{v3}/{name}/bulk",
                       lambda r, s=store, c=create, n=bulk: self._bulk(r, s, c, n))
            self.route("POST", f"{v3}/{name}", lambda r, s=store, c=create: self._create(r, s, c))
            self.route("GET", f"{v3}/{name}/{{id}}", lambda r, s=store: self._get(r, s))
            for verb in ("archive", "restore"):
                self.route("POST", f"{v3}/{name}/{{id}}/{verb}",
                           lambda r, s=store, v=verb: self._archive(r, s, v == "archive"))
        self.route("PATCH", f"{v3}/vendors/{{id}}", self._patch_vendor)
        self.route("PUT", f"{v3}/bills/{{id}}", lambda r: self._change_bill(r, full=True))
        self.route("PATCH", f"{v3}/bills/{{id}}", lambda r: self._change_bill(r, full=False))
        for path, store in (("payments", "payments"),
                            ("classifications/chart-of-accounts", "chart_of_accounts")):
            self.route("GET", f"{v3}/{path}", lambda r, s=store: self._list(r, s))
            self.route("GET", f"{v3}/{path}/{{id}}", lambda r, s=store: self._get(r, s))

    @property
    def base_url(self) -> str:
        return self.root_url + "/connect"

    # -- knobs and test controls --------------------------------------------------------
    def expire_sessions(self) -> None:
        with self.lock:
            self._sessions.clear()

    def inject(self, code: str, times: int = 1) -> None:
        """The next `times` authenticated requests answer this BDC code."""
        with self._meta:
            self._injected.extend([code] * times)

    def busy_reply(self, req: Request) -> Reply:
        return bdc("BDC_1322", category="DOWNSTREAM").reply

    def fault_reply(self, req: Request, status: int) -> Reply:
        if status == 429:
            return self.busy_reply(req)
        return bdc("BDC_1001", "System error. Please try again.", status, "SERVER").reply

    def not_found_reply(self, req: Request) -> Reply:
        return bdc("BDC_1121", "API not supported.", 404).reply

    def _count_request(self) -> None:
        hour = self.clock.now().astimezone(UTC).replace(minute=0, second=0, microsecond=0)
        with self._meta:
            start, count = self._hour
            count = count + 1 if start == hour else 1
            self._hour = (hour, count)
        if count > self.hourly_limit:
            raise bdc("BDC_1144", f"Max number of allowed requests per hour reached: "
                      f"{self.hourly_limit}.")

    def guard(self, req: Request) -> Reply | None:
        if req.header("devKey") != self.dev_key:
            raise bdc("BDC_1102", "Developer key is invalid.")
        now = self.clock.now()
        with self.lock:
            session = self._sessions.get(req.header("sessionId") or "")
            if session is None or now - session["last"] >= timedelta(seconds=self.session_idle):
                self._sessions.pop(req.header("sessionId") or "", None)
                raise bdc("BDC_1109", category="DOWNSTREAM")
            session["last"] = now
        self._count_request()
        with self._meta:
            code = self._injected.popleft() if self._injected else None
        if code:
            raise bdc(code, category="DOWNSTREAM")
        return None

    # -- sessions ------------------------------------------------------------------------
    def _login(self, req: Request) -> Reply:
        body = self._body(req)
        if not isinstance(body, dict):
            raise refused("The body must be a JSON object.")
        if body.get("devKey") != self.dev_key:
            raise bdc("BDC_1102", "Developer key is invalid.")
        now = self.clock.now()
        with self.lock:
            while self._logins and now - self._logins[0] >= timedelta(hours=1):
                self._logins.popleft()
            if len(self._logins) >= self.login_limit:
                raise bdc("BDC_1144", f"Max number of allowed logins per hour reached: "
                          f"{self.login_limit}.", 429)
            self._logins.append(now)
        self._count_request()
        if (body.get("username"), body.get("password"), body.get("organizationId")) != (
                self.username, self.password, self.organization_id):
            raise bdc("BDC_1101", "Incorrect user name, password or organization.")
        sid = str(uuid.uuid4())
        with self.lock:
            self._sessions[sid] = {"last": now}
            self.login_count += 1
        return Reply(200, {"organizationId": self.organization_id, "sessionId": sid,
                           "trusted": False, "userId": self.user_id})

    def _session(self, req: Request) -> Reply:
        return Reply(200, {"organizationId": self.organization_id, "userId": self.user_id,
                           "mfaStatus": "DISABLED", "mfaBypass": False})

    def _logout(self, req: Request) -> Reply:
        with self.lock:
            self._sessions.pop(req.header("sessionId") or "", None)
        return Reply(200, b"")

    # -- generic REST ----------------------------------------------------------------------
    def _body(self, req: Request) -> Any:
        try:
            return req.json(parse_float=Decimal)
        except ValueError:
            raise refused("Malformed JSON in the request body.") from None

    def _store(self, store: str) -> dict[str, dict[str, Any]]:
        return getattr(self, store)

    def _find(self, store: str, obj_id: str) -> dict[str, Any]:
        row = self._store(store).get(obj_id)
        if row is None:
            raise bdc("BDC_1001", f"Object not found: {obj_id}", 404)  # chosen code, see top
        return row

    def _get(self, req: Request, store: str) -> Reply:
        with self.lock:
            return encoded(200, self._find(store, req.match["id"]))

    def _list(self, req: Request, store: str) -> Reply:
        size = req.arg("max", "20")
        if not (size or "").isdigit() or not 1 <= int(size) <= 100:
            raise refused("max: must be between 1 and 100")
        size_n = int(size or 20)
        offset = self._decode_page(req.arg("page"))
        tests = [self._filter(store, clause)
                 for clause in _split(req.arg("filters") or "") if clause]
        keys = [self._sort_key(clause) for clause in _split(req.arg("sort") or "") if clause]
        with self.lock:
            rows = [r for r in self._store(store).values() if all(t(r) for t in tests)]
            for field, desc in reversed(keys):
                rows.sort(key=lambda r, f=field: (_path(r, f) is not None, _sortable(
                    _path(r, f))), reverse=desc)
            more = offset + size_n < len(rows)
            return encoded(200, {
                "nextPage": self._encode_page(offset + size_n) if more else None,
                "prevPage": self._encode_page(max(offset - size_n, 0)) if offset > 0 else None,
                "results": rows[offset:offset + size_n]})

    @staticmethod
    def _encode_page(offset: int) -> str:
        return base64.urlsafe_b64encode(json.dumps({"o": offset}).encode()).decode().rstrip("=")

    @staticmethod
    def _decode_page(token: str | None) -> int:
        if not token:
            return 0
        try:
            offset = json.loads(base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)))["o"]
            if isinstance(offset, int) and offset >= 0:
                return offset
        except (ValueError, KeyError, TypeError):
            pass
        raise refused("page: invalid page token")

    @staticmethod
    def _sort_key(clause: str) -> tuple[str, bool]:
        field, _, direction = clause.partition(":")
        if direction.lower() not in ("", "asc", "desc"):
            raise refused(f"sort: {clause!r} must be field:asc or field:desc")
        return field, direction.lower() == "desc"

    def _filter(self, store: str, clause: str):
        parts = clause.split(":", 2)
        if len(parts) != 3:
            raise refused(f"filters: {clause!r} must be field:operator:value")
        field, op, raw = parts
        allowed = FILTERS[store].get(field)
        if allowed is None:
            raise refused(f"filters: field {field!r} is not filterable")
        if op not in allowed:
            raise refused(f"filters: operator {op!r} is not supported for {field!r}")
        text = _unquote(raw.strip())
        values = [v.strip() for v in text.split(",")] if op in ("in", "nin") else [text]
        convert = self._converter(field)
        wanted = [convert(v) for v in values]

        def test(row: dict[str, Any]) -> bool:
            have = _path(row, field)
            have = convert(have) if have is not None else None
            if op in ("eq", "in"):
                return have in wanted
            if op in ("ne", "nin"):
                return have not in wanted
            if have is None:
                return False
            if op == "sw":
                return str(have).startswith(str(wanted[0]))
            return {"gt": have > wanted[0], "gte": have >= wanted[0], "lt": have < wanted[0],
                    "lte": have <= wanted[0]}[op]
        return test

    @staticmethod
    def _converter(field: str):
        if field in ("createdTime", "updatedTime"):
            def moment(v: Any) -> datetime:
                text = str(v)
                if not TIME_VALUE.match(text):
                    raise refused(f"filters: {text!r} is not a date-time "
                                  "(yyyy-MM-dd'T'HH:mm:ss.SSSX)")
                dt = datetime.fromisoformat(text.replace("Z", "+00:00"))
                return dt if dt.tzinfo else dt.replace(tzinfo=UTC)
            return moment
        if field in ("dueDate", "processDate"):
            return lambda v: _day(str(v)[:10], f"filters: {field}")
        if field == "archived":
            def flag(v: Any) -> bool:
                if isinstance(v, bool):
                    return v
                if str(v).lower() not in ("true", "false"):
                    raise refused("filters: archived takes true or false")
                return str(v).lower() == "true"
            return flag
        if field == "amount":
            return lambda v: _num(v, "filters: amount")
        return str

    def _stamp(self) -> str:
        """Now, in ms, strictly after every stamp given before."""
        now = self.clock.now().astimezone(UTC)
        now = now.replace(microsecond=now.microsecond // 1000 * 1000)
        if now <= self._last_stamp:
            now = self._last_stamp + timedelta(milliseconds=1)
        self._last_stamp = now
        return iso_ms(now)

    def _new_id(self, prefix: str) -> str:
        alphabet = string.ascii_letters + string.digits
        return prefix + "02" + "".join(self._ids.choice(alphabet) for _ in range(15))

    @staticmethod
    def _known_fields(payload: dict[str, Any], fields: set[str], read_only: set[str]) -> None:
        for key in payload:
            if key not in fields and key not in read_only:
                raise refused(f'Unrecognized field "{key}"')

    def _create(self, req: Request, store: str, create: Any) -> Reply:
        body = self._body(req)
        if not isinstance(body, dict):
            raise refused("The body must be a JSON object.")
        with self.lock:
            row = create(body)
            self._store(store)[row["id"]] = row
            if store == "bills":
                self._recompute(row)
            return encoded(201, row)

    def _bulk(self, req: Request, store: str, create: Any, limit: int) -> Reply:
        body = self._body(req)
        if not isinstance(body, list) or not body:
            raise refused("The body must be a non-empty JSON array.")
        if len(body) > limit:
            raise refused(f"At most {limit} {store} per bulk request.")
        with self.lock:
            made, problems = [], []
            for n, item in enumerate(body):
                try:
                    if not isinstance(item, dict):
                        raise refused("Each item must be a JSON object.")
                    made.append(create(item))
                except Abort as no:
                    problems.extend(dict(e, message=f"[{n}] {e['message']}")
                                    for e in no.reply.body)
            if problems:  # all or nothing
                return Reply(400, problems)
            for row in made:
                self._store(store)[row["id"]] = row
                if store == "bills":
                    self._recompute(row)
            return encoded(201, {"vendors": made} if store == "vendors" else made)

    def _archive(self, req: Request, store: str, archived: bool) -> Reply:
        with self.lock:
            row = self._find(store, req.match["id"])
            if row["archived"] != archived:
                row["archived"] = archived
                row["updatedTime"] = self._stamp()
                if store == "bills":
                    self._recompute(row)
            return encoded(200, row)

    # -- vendors -------------------------------------------------------------------------
    def _new_vendor(self, payload: dict[str, Any]) -> dict[str, Any]:
        self._known_fields(payload, VENDOR_FIELDS, VENDOR_READ_ONLY)
        stamp = self._stamp()
        row: dict[str, Any] = {
            "id": None, "archived": False, "name": None, "shortName": None,
            "accountNumber": None, "accountType": "UNDEFINED", "email": None, "phone": None,
            "address": {"line1": None, "line2": None, "city": None, "stateOrProvince": None,
                        "zipOrPostalCode": None, "country": None, "countryName": None},
            "paymentInformation": {"payeeName": None, "email": None, "lastPaymentDate": None,
                                   "payByType": "CHECK", "payBySubType": "NONE"},
            "additionalInfo": {"taxId": None, "taxIdType": None, "track1099": False,
                               "leadTimeInDays": 0, "combinePayments": False,
                               "paymentTermId": None, "companyName": None},
            "rppsId": None, "bankAccountStatus": "NO_ACCOUNT", "recurringPayments": False,
            "billCurrency": "USD", "createdTime": stamp, "updatedTime": stamp,
            "balance": {"amount": Decimal(0), "lastUpdatedDate": stamp},
            "autoPay": {"enabled": False}, "networkStatus": "NOT_CONNECTED"}
        if not str(payload.get("name") or "").strip():
            raise refused("name: must not be blank")
        self._apply_vendor(row, payload)
        row["id"] = self._new_id("009")
        return row

    def _apply_vendor(self, row: dict[str, Any], payload: dict[str, Any]) -> None:
        """Validate, then merge (nested objects merge key by key, as PATCH does)."""
        if "name" in payload and not str(payload["name"] or "").strip():
            raise refused("name: must not be blank")
        kind = payload.get("accountType")
        if kind is not None and kind not in ("BUSINESS", "PERSON", "NONE", "UNDEFINED"):
            raise refused("accountType: must be one of BUSINESS, PERSON, NONE, UNDEFINED")
        country = (payload.get("address") or {}).get("country")
        if country is not None and not re.fullmatch(r"[A-Z]{2}", str(country)):
            raise refused("address.country: must be a 2-letter ISO country code")
        for key in VENDOR_FIELDS & payload.keys():
            value = payload[key]
            if isinstance(row.get(key), dict) and isinstance(value, dict):
                row[key] = {**row[key], **value}
            elif key not in ("address", "paymentInformation", "additionalInfo", "autoPay"):
                row[key] = value
        if country is not None:
            row["address"]["countryName"] = COUNTRIES.get(country, country)
        if (payload.get("paymentInformation") or {}).get("bankAccount"):
            row["bankAccountStatus"] = "PENDING"

    def _patch_vendor(self, req: Request) -> Reply:
        body = self._body(req)
        if not isinstance(body, dict):
            raise refused("The body must be a JSON object.")
        self._known_fields(body, VENDOR_FIELDS, VENDOR_READ_ONLY)
        if (body.get("paymentInformation") or {}).get("bankAccount"):
            raise refused("paymentInformation.bankAccount: use the bank-account endpoints")
        with self.lock:
            row = self._find("vendors", req.match["id"])
            self._apply_vendor(row, body)
            row["updatedTime"] = self._stamp()
            for bill in self.bills.values():
                if bill["vendorId"] == row["id"]:
                    bill["vendorName"] = row["name"]
            return encoded(200, row)

    # -- bills ---------------------------------------------------------------------------
    def _new_bill(self, payload: dict[str, Any]) -> dict[str, Any]:
        stamp = self._stamp()
        row: dict[str, Any] = {
            "id": None, "archived": False, "vendorId": None, "vendorName": None,
            "amount": Decimal(0), "fundingAmount": Decimal(0), "paidAmount": Decimal(0),
            "dueAmount": Decimal(0), "scheduledAmount": Decimal(0), "creditAmount": 0,
            "exchangeRate": 1, "description": None, "dueDate": None, "invoice": None,
            "billLineItems": [], "payFromChartOfAccountId": None, "paymentStatus": "UNPAID",
            "approvalStatus": "UNASSIGNED", "createdTime": stamp, "updatedTime": stamp,
            "classifications": {}, "purchaseOrderNumber": None, "approvers": []}
        row.update(self._bill_fields(payload, row, full=True))
        row["id"] = self._new_id("00n")
        return row

    def _bill_fields(self, payload: dict[str, Any], row: dict[str, Any],
                     full: bool) -> dict[str, Any]:
        """The validated new values. `full`: a create or PUT, where the required fields must
        be present and absent optional ones are cleared."""
        self._known_fields(payload, BILL_FIELDS, BILL_READ_ONLY)
        if full:
            for key in ("vendorId", "dueDate", "invoice", "billLineItems"):
                if payload.get(key) in (None, "", [], {}):
                    raise refused(f"{key}: must not be blank")
        new: dict[str, Any] = {}
        if "vendorId" in payload:
            vendor = self.vendors.get(str(payload["vendorId"]))
            if vendor is None:
                raise refused(f"vendorId: no vendor {payload['vendorId']}")
            if vendor["archived"]:
                raise refused(f"vendorId: vendor {vendor['id']} is archived")
            new["vendorId"], new["vendorName"] = vendor["id"], vendor["name"]
        if "dueDate" in payload:
            new["dueDate"] = _day(payload["dueDate"], "dueDate")
        if "invoice" in payload:
            invoice = payload["invoice"]
            if not isinstance(invoice, dict):
                raise refused("invoice: must be an object")
            merged = {**({} if full else row.get("invoice") or {}), **invoice}
            if not str(merged.get("invoiceNumber") or "").strip():
                raise refused("invoice.invoiceNumber: must not be blank")
            if not merged.get("invoiceDate"):
                raise refused("invoice.invoiceDate: must not be blank")
            new["invoice"] = {"invoiceNumber": str(merged["invoiceNumber"]),
                              "invoiceDate": _day(merged["invoiceDate"], "invoice.invoiceDate")}
        if "billLineItems" in payload:
            new["billLineItems"] = self._lines(payload["billLineItems"], row["billLineItems"])
        for key, default in (("description", None), ("purchaseOrderNumber", None),
                             ("payFromChartOfAccountId", None), ("classifications", {})):
            if key in payload:
                new[key] = payload[key] if payload[key] is not None else default
            elif full:
                new[key] = default
        if new.get("payFromChartOfAccountId"):
            self._account(new["payFromChartOfAccountId"], "payFromChartOfAccountId")
        if new.get("classifications"):
            if not isinstance(new["classifications"], dict):
                raise refused("classifications: must be an object")
            if new["classifications"].get("chartOfAccountId"):
                self._account(new["classifications"]["chartOfAccountId"],
                              "classifications.chartOfAccountId")
        return new

    def _account(self, account_id: Any, field: str) -> None:
        if str(account_id) not in self.chart_of_accounts:
            raise refused(f"{field}: no chart of accounts entry {account_id}")

    def _lines(self, items: Any, old: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """PUT rules: lines without id are added, lines with an id replace that line,
        existing lines not sent are deleted."""
        if not isinstance(items, list) or not items:
            raise refused("billLineItems: must not be empty")
        known = {li["id"] for li in old}
        lines = []
        for n, item in enumerate(items):
            where = f"billLineItems[{n}]"
            if not isinstance(item, dict):
                raise refused(f"{where}: must be an object")
            for key in item:
                if key not in LINE_FIELDS:
                    raise refused(f'{where}: Unrecognized field "{key}"')
            if item.get("id") is not None and item["id"] not in known:
                raise refused(f"{where}.id: no line {item['id']} on this bill")
            amount = _num(item.get("amount"), f"{where}.amount")
            quantity = _num(item.get("quantity"), f"{where}.quantity")
            price = _num(item.get("price"), f"{where}.price")
            if amount is None:
                if quantity is None or price is None:
                    raise refused(f"{where}: send amount, or quantity and price")
                amount = (quantity * price).quantize(CENT, ROUND_HALF_UP)
            classes = item.get("classifications") or {}
            if not isinstance(classes, dict):
                raise refused(f"{where}.classifications: must be an object")
            if classes.get("chartOfAccountId"):
                self._account(classes["chartOfAccountId"], f"{where}.classifications."
                              "chartOfAccountId")
            lines.append({"id": item.get("id") or self._new_id("00t"), "amount": amount,
                          "quantity": quantity, "price": price,
                          "description": item.get("description"),
                          "classifications": dict(classes)})
        return lines

    def _change_bill(self, req: Request, full: bool) -> Reply:
        body = self._body(req)
        if not isinstance(body, dict):
            raise refused("The body must be a JSON object.")
        with self.lock:
            row = self._find("bills", req.match["id"])
            row.update(self._bill_fields(body, row, full))
            row["updatedTime"] = self._stamp()
            self._recompute(row)
            return encoded(200, row)

    def _recompute(self, bill: dict[str, Any]) -> None:
        """Amounts and payment status from the lines and the payments."""
        amount = sum((li["amount"] for li in bill["billLineItems"]), Decimal(0))
        paid = scheduled = Decimal(0)
        for payment_id in self._paid_by_bill.get(bill["id"], ()):
            payment = self.payments[payment_id]
            for part in payment["billPayments"]:
                if part["billId"] == bill["id"]:
                    if payment["status"] == "PAID":
                        paid += part["amount"]
                    elif payment["status"] in PENDING:
                        scheduled += part["amount"]
        status = ("PAID" if amount > 0 and paid >= amount else "PARTIAL" if paid > 0
                  else "SCHEDULED" if scheduled > 0 else "UNPAID")
        due = max(amount - paid, Decimal(0))
        bill.update(amount=amount, fundingAmount=amount, paidAmount=paid,
                    scheduledAmount=scheduled, dueAmount=due, paymentStatus=status)
        # vendor balances, kept incrementally (a bulk load may bring 10,000s of bills)
        before = self._due_by_bill.pop(bill["id"], None)
        if before:
            self._due[before[0]] -= before[1]
        if not bill["archived"]:
            self._due_by_bill[bill["id"]] = (bill["vendorId"], due)
            self._due[bill["vendorId"]] = self._due.get(bill["vendorId"], Decimal(0)) + due
        for vid in {bill["vendorId"], before[0] if before else bill["vendorId"]}:
            if vid in self.vendors:
                self.vendors[vid]["balance"] = {"amount": self._due.get(vid, Decimal(0)),
                                                "lastUpdatedDate": bill["updatedTime"]}

    # -- data helpers for tests and the demo (they return a snapshot of the stored record) --
    def _helper(self, fn: Any, *args: Any) -> dict[str, Any]:
        with self.lock:
            try:
                return copy.deepcopy(fn(*args))
            except Abort as no:
                raise ValueError(no.reply.body[0]["message"]) from None

    def add_chart_of_account(self, name: str, number: str | None = None, *,
                             type: str = "EXPENSE",  # noqa: A002 - BILL's own word
                             parent_id: str | None = None) -> dict[str, Any]:
        def make() -> dict[str, Any]:
            stamp = self._stamp()
            row = {"id": self._new_id("0ca"), "archived": False, "name": name,
                   "description": None, "parentId": parent_id,
                   "account": {"type": type, "number": number},
                   "createdTime": stamp, "updatedTime": stamp}
            self.chart_of_accounts[row["id"]] = row
            return row
        return self._helper(make)

    def add_vendor(self, name: str, **fields: Any) -> dict[str, Any]:
        def make() -> dict[str, Any]:
            row = self._new_vendor({"name": name, **fields})
            self.vendors[row["id"]] = row
            return row
        return self._helper(make)

    def add_bill(self, vendor_id: str, invoice_number: str, invoice_date: str, due_date: str,
                 lines: list[dict[str, Any]], **fields: Any) -> dict[str, Any]:
        items = [{k: v for k, v in li.items() if k != "chartOfAccountId"}
                 | ({"classifications": {"chartOfAccountId": li["chartOfAccountId"]}}
                    if li.get("chartOfAccountId") else {}) for li in lines]

        def make() -> dict[str, Any]:
            row = self._new_bill({"vendorId": vendor_id, "dueDate": due_date, "invoice": {
                "invoiceNumber": invoice_number, "invoiceDate": invoice_date},
                "billLineItems": items, **fields})
            self.bills[row["id"]] = row
            self._recompute(row)
            return row
        return self._helper(make)

    def pay_bill(self, bill_id: str, amount: Any, *, status: str = "PAID",
                 process_date: str = "2026-01-20",
                 disbursement_type: str = "ACH") -> dict[str, Any]:
        """The AP clerk pays a bill in BILL's web app."""
        if status not in PAYMENT_STATUSES:
            raise ValueError(f"status must be one of {sorted(PAYMENT_STATUSES)}")

        def make() -> dict[str, Any]:
            bill = self._find("bills", bill_id)
            value = _num(amount, "amount")
            stamp = self._stamp()
            self._confirmations += 1
            payment = {
                "id": self._new_id("stp"), "vendorId": bill["vendorId"],
                "vendorName": bill["vendorName"], "billId": bill["id"], "amount": value,
                "billPayments": [{"id": self._new_id("blp"), "billId": bill["id"],
                                  "amount": value, "vendorCredits": []}],
                "description": f"Invoice {bill['invoice']['invoiceNumber']}",
                "processDate": _day(process_date, "processDate"),
                "fundingAccount": {"type": "BANK_ACCOUNT", "id": "bac02OPERATINGACCT01"},
                "processingOptions": {"requestPayFaster": False, "createBill": False,
                                      "requestCheckDeliveryType": "STANDARD"},
                "transactionNumber": None,
                "confirmationNumber": f"P{process_date.replace('-', '')[2:]}"
                                      f"{self._confirmations:05d}",
                "status": status, "exchangeRate": 1, "fundingAmount": value,
                "onlinePayment": True, "disbursementType": disbursement_type,
                "remittanceEmail": None, "createdTime": stamp, "updatedTime": stamp,
                "createdBy": self.user_id, "voidInfo": [],
                "disbursementStatus": "DONE" if status == "PAID" else None,
                "singleStatus": status, "cancelRequestSubmitted": False}
            self.payments[payment["id"]] = payment
            self._paid_by_bill.setdefault(bill["id"], []).append(payment["id"])
            bill["updatedTime"] = stamp
            self._recompute(bill)
            return payment
        return self._helper(make)

    def set_payment_status(self, payment_id: str, status: str) -> dict[str, Any]:
        """A payment moves on in BILL (SCHEDULED -> PAID, or VOID, CANCELLED...)."""
        if status not in PAYMENT_STATUSES:
            raise ValueError(f"status must be one of {sorted(PAYMENT_STATUSES)}")

        def change() -> dict[str, Any]:
            payment = self._find("payments", payment_id)
            stamp = self._stamp()
            payment.update(status=status, singleStatus={"VOID": "VOIDED", "CANCELLED":
                                                        "CANCELED"}.get(status, status),
                           updatedTime=stamp,
                           disbursementStatus="DONE" if status == "PAID" else None)
            if status == "VOID":
                payment["voidInfo"].append({"id": self._new_id("vdi"),
                                            "requestedBy": self.user_id, "type": "VOID",
                                            "status": "DONE", "reason": "sandbox",
                                            "createdTime": stamp, "updatedTime": stamp})
            for part in payment["billPayments"]:
                bill = self.bills.get(part["billId"])
                if bill is not None:
                    bill["updatedTime"] = stamp
                    self._recompute(bill)
            return payment
        return self._helper(change)


def _sortable(value: Any) -> Any:
    return str(value) if not isinstance(value, Decimal | int | float | bool) else value
