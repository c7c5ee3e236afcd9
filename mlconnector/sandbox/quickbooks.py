"""Offline QuickBooks Online (Accounting API v3): OAuth 2.0 (authorize page, code exchange,
refresh-token rotation, revoke), Change Data Capture, the query endpoint, reads by Id and
CompanyInfo, for Vendor, Bill, BillPayment, JournalEntry, Account, Department and Class, in the
wire format of `api/quickbooks.md`.

Choices where the fact sheet is unsure ([U]/[S] there):
- times are rendered with a fixed company offset of -08:00 (no daylight saving); every write gets
  a `LastUpdatedTime` (whole seconds) strictly after the previous write's and after any `time`
  already answered (one second later when the clock has not moved), so under a frozen test
  clock stamps run ahead of the clock; the `time` of CDC, query and read answers is the clock's
  now to the millisecond, or the latest write's stamp when that is later: nothing in an answer
  is newer than its `time`, and every later change is stamped after it;
- a naive `changedSince` (or a bare date) is read in the company offset; a `+` that arrived
  un-encoded (read as a space) makes `changedSince` unparseable;
- `changedSince` more than 30 days before now: 400 ValidationFault code "10002"; a missing
  `entities`/`changedSince`: 400 code "2020"; an unparseable one or an unknown entity: 400
  code "2010";
- a superseded refresh token dies at once (no grace period); the refresh-token value lives
  `refresh_rotate_after` seconds; each use extends a rolling 100-day window
  (`x_refresh_token_expires_in`, never more than what is left of the hard cap); the hard cap is
  5 x 365 days from the first consent; an authorization code is single use and lives 5 minutes;
- bad client credentials: 401 `{"error":"invalid_client"}`; revoke answers 200 with an empty
  body whatever the token (after client auth); either token kind disconnects the grant;
- a bad authorize request (client_id, response_type, redirect_uri) answers 400 JSON, not a
  redirect; a `scope` without `com.intuit.quickbooks.accounting` redirects with
  `error=invalid_scope`;
- 401 for an expired/unknown/revoked token: the lower-case envelope of Sample 4 (code 3200) with
  `WWW-Authenticate`; a live token used on another realm: XML AuthenticationFault code 100;
  with `xml_errors=True` the 3200 answer and every 429 are XML too;
- rate limit: only authenticated API requests count, in a sliding 60 s window of the clock's
  monotonic time; a 429 answer is not counted; the 10 req/s rule is not emulated; no
  `Retry-After` header;
- query: `ORDER BY` is accepted as well as `ORDERBY`; without it rows come by numeric Id;
  MAXRESULTS above 1000 is cut to 1000 silently, below 1 is 4001; STARTPOSITION below 1 is
  read as 1; `=` on strings is case-sensitive, `LIKE` (only `%`) is not; a bad time literal or
  an operator a property does not take is 4001; an unknown entity is 4001;
- GET of an unknown or deleted object, or companyinfo of another realm: 400 code 610; an
  inactive name-list object is still readable by Id; an unknown path: 404 Fault code "114";
- Vendor `Balance` follows its bills' open balances without a new SyncToken or
  LastUpdatedTime (QBO does not version a vendor on each bill); a voided payment stays in the
  bill's `LinkedTxn`; deleting a bill payment restores the bills' balances (a bill change);
  deleting a bill leaves its payments alone; `TaxIdentifier` is stored masked "XXXXXX" + the
  last 4 digits; journal entry line Ids start at "0" (Sample 2), bill line Ids at "1";
- a payment may not exceed a bill's open balance; a journal entry must balance (ValueError).
"""

from __future__ import annotations

import base64
import binascii
import copy
import hashlib
import hmac
import re
import secrets
import string
from collections import deque
from datetime import date, datetime, timedelta, timezone
from decimal import Decimal, InvalidOperation
from typing import Any
from urllib.parse import urlencode
from xml.sax.saxutils import escape, quoteattr

from .server import Abort, Emulator, Knobs, Reply, Request, encoded

COMPANY_TZ = timezone(timedelta(hours=-8))
CENT = Decimal("0.01")
ZERO = Decimal("0.00")
SCOPE = "com.intuit.quickbooks.accounting"
CODE_TTL = timedelta(minutes=5)
REFRESH_WINDOW = 8_640_000          # seconds: the rolling ~100-day refresh-token window
HARD_CAP = timedelta(days=5 * 365)  # from the first consent
CDC_DAYS = 30
CDC_CAP = 1000
MAX_RESULTS = 1000
DEFAULT_RESULTS = 100

NAME_LISTS = ("Vendor", "Account", "Class", "Department")
TRANSACTIONS = ("Bill", "BillPayment", "JournalEntry")
ENTITIES = NAME_LISTS + TRANSACTIONS
CANONICAL = {e.lower(): e for e in ENTITIES}
CURRENCIES = {"USD": "United States Dollar", "CAD": "Canadian Dollar", "EUR": "Euro",
              "GBP": "British Pound Sterling", "AUD": "Australian Dollar"}
CLASSIFICATION = {
    "Bank": "Asset", "Accounts Receivable": "Asset", "Other Current Asset": "Asset",
    "Fixed Asset": "Asset", "Other Asset": "Asset", "Accounts Payable": "Liability",
    "Credit Card": "Liability", "Other Current Liability": "Liability",
    "Long Term Liability": "Liability", "Equity": "Equity", "Income": "Revenue",
    "Other Income": "Revenue", "Expense": "Expense", "Other Expense": "Expense",
    "Cost of Goods Sold": "Expense"}
SUB_TYPES = {
    "Bank": "Checking", "Accounts Payable": "AccountsPayable", "Credit Card": "CreditCard",
    "Expense": "OtherMiscellaneousServiceCost", "Other Expense": "OtherMiscellaneousExpense",
    "Cost of Goods Sold": "SuppliesMaterialsCogs", "Income": "ServiceFeeIncome",
    "Other Current Liability": "OtherCurrentLiabilities", "Equity": "OwnersEquity",
    "Accounts Receivable": "AccountsReceivable", "Other Current Asset": "OtherCurrentAssets",
    "Fixed Asset": "OtherFixedAssets", "Long Term Liability": "OtherLongTermLiabilities",
    "Other Income": "OtherMiscellaneousIncome", "Other Asset": "OtherLongTermAssets"}
NOT_FOUND_DETAIL = ("Object Not Found : Something you're trying to use has been made inactive. "
                    "Check the fields with accounts, customers, items, vendors or employees.")
THROTTLE_MESSAGE = "message=ThrottleExceeded; errorCode=003001; statusCode=429"
THROTTLE_DETAIL = "The request limit was reached.  Try again later"
ALNUM = string.ascii_letters + string.digits

# query properties per entity: name -> kind
ID, TIME, BOOL, TEXT, NUM, REF = "id", "time", "bool", "text", "num", "ref"
COMMON_PROPERTIES = {"Id": ID, "MetaData.CreateTime": TIME, "MetaData.LastUpdatedTime": TIME,
                     "SyncToken": TEXT}
PROPERTIES: dict[str, dict[str, str]] = {
    "Vendor": {"DisplayName": TEXT, "CompanyName": TEXT, "GivenName": TEXT, "FamilyName": TEXT,
               "PrintOnCheckName": TEXT, "AcctNum": TEXT, "Active": BOOL, "Balance": NUM,
               "Vendor1099": BOOL, "CurrencyRef": REF},
    "Account": {"Name": TEXT, "FullyQualifiedName": TEXT, "AccountType": TEXT,
                "AccountSubType": TEXT, "Classification": TEXT, "AcctNum": TEXT, "Active": BOOL,
                "CurrentBalance": NUM, "SubAccount": BOOL},
    "Class": {"Name": TEXT, "FullyQualifiedName": TEXT, "Active": BOOL, "SubClass": BOOL},
    "Department": {"Name": TEXT, "FullyQualifiedName": TEXT, "Active": BOOL,
                   "SubDepartment": BOOL},
    "Bill": {"DocNumber": TEXT, "TxnDate": TEXT, "DueDate": TEXT, "TotalAmt": NUM,
             "Balance": NUM, "VendorRef": REF, "DepartmentRef": REF, "APAccountRef": REF,
             "CurrencyRef": REF},
    "BillPayment": {"DocNumber": TEXT, "TxnDate": TEXT, "TotalAmt": NUM, "VendorRef": REF,
                    "PayType": TEXT, "CurrencyRef": REF},
    "JournalEntry": {"DocNumber": TEXT, "TxnDate": TEXT, "TotalAmt": NUM, "Adjustment": BOOL,
                     "CurrencyRef": REF},
}
OPERATORS = {ID: {"=", "IN"}, TIME: {"=", "<", ">", "<=", ">="}, BOOL: {"=", "IN"},
             TEXT: {"=", "<", ">", "<=", ">=", "IN", "LIKE"}, REF: {"=", "IN"},
             NUM: {"=", "<", ">", "<=", ">=", "IN"}}


def render(stamp: datetime) -> str:
    """A stored time as QBO writes it: "2026-03-02T10:04:11-08:00"."""
    return stamp.astimezone(COMPANY_TZ).isoformat(timespec="seconds")


def parse_time(text: str | None) -> datetime | None:
    """An ISO-8601 time (or date); naive ones are in the company offset."""
    if not text:
        return None
    try:
        value = datetime.fromisoformat(text.strip())
    except ValueError:
        return None
    return value.replace(tzinfo=COMPANY_TZ) if value.tzinfo is None else value


def _money(value: Any) -> Decimal:
    if isinstance(value, bool):
        raise ValueError(f"not an amount: {value!r}")
    try:
        amount = Decimal(str(value).strip())
    except InvalidOperation:
        raise ValueError(f"not an amount: {value!r}") from None
    if not amount.is_finite():
        raise ValueError(f"not an amount: {value!r}")
    return amount.quantize(CENT)


def _date(value: Any) -> str:
    return date.fromisoformat(str(value)).isoformat()  # ValueError when it is not a date


def _token(length: int) -> str:
    return "".join(secrets.choice(ALNUM) for _ in range(length))


# -- the query language ------------------------------------------------------------------------
class QueryError(Exception):
    def __init__(self, code: str, message: str, detail: str):
        super().__init__(detail)
        self.code, self.message, self.detail = code, message, detail


_TOKEN = re.compile(r"""\s*(?:(?P<str>'(?:\\.|[^'\\])*')|(?P<num>-?\d+(?:\.\d+)?(?![\w.]))"""
                    r"""|(?P<op><=|>=|=|<|>)|(?P<punct>[(),*])|(?P<word>[A-Za-z_][\w.]*))""")
_KEYWORDS = {"SELECT", "FROM", "WHERE", "AND", "ORDERBY", "ORDER", "BY", "ASC", "DESC",
             "STARTPOSITION", "MAXRESULTS", "IN", "LIKE", "COUNT"}


def _tokenize(sql: str) -> list[tuple[str, str, int]]:
    tokens, pos = [], 0
    while pos < len(sql):
        m = _TOKEN.match(sql, pos)
        if m is None or m.lastgroup is None:
            if sql[pos:].strip() == "":
                break
            col = pos + len(sql[pos:]) - len(sql[pos:].lstrip()) + 1
            raise _parse_error(sql[col - 1], col)
        tokens.append((m.lastgroup, m.group(m.lastgroup), m.start(m.lastgroup) + 1))
        pos = m.end()
    return tokens


def _parse_error(text: str, col: int) -> QueryError:
    return QueryError("4000", "Error parsing query",
                      f'QueryParserError: Encountered " {text} " at line 1, column {col}.')


def _invalid(detail: str) -> QueryError:
    return QueryError("4001", "Invalid query", f"QueryValidationError: {detail}")


class Query:
    """A parsed and validated SELECT."""

    def __init__(self, sql: str):
        self.sql = sql
        self.count = False
        self.entity = ""
        self.conditions: list[tuple[str, str, str, Any]] = []  # (property, kind, op, value)
        self.order: tuple[str, str, bool] | None = None          # (property, kind, descending)
        self.start = 1
        self.max_results = DEFAULT_RESULTS
        self._tokens = _tokenize(sql)
        self._i = 0
        self._parse()

    # -- token helpers
    def _peek(self) -> tuple[str, str, int]:
        if self._i < len(self._tokens):
            return self._tokens[self._i]
        return ("eof", "<EOF>", len(self.sql) + 1)

    def _next(self) -> tuple[str, str, int]:
        tok = self._peek()
        if tok[0] == "eof":
            raise _parse_error(tok[1], tok[2])
        self._i += 1
        return tok

    def _fail(self) -> QueryError:
        tok = self._peek()
        return _parse_error(tok[1], tok[2])

    def _is(self, *words: str) -> bool:
        kind, text, _ = self._peek()
        return kind == "word" and text.upper() in words

    def _expect(self, word: str) -> None:
        if not self._is(word):
            raise self._fail()
        self._i += 1

    def _punct(self, char: str) -> bool:
        kind, text, _ = self._peek()
        if kind == "punct" and text == char:
            self._i += 1
            return True
        return False

    def _integer(self) -> int:
        kind, text, _ = self._peek()
        if kind != "num" or not re.fullmatch(r"-?\d+", text):
            raise self._fail()
        self._i += 1
        return int(text)

    # -- grammar
    def _parse(self) -> None:
        self._expect("SELECT")
        if self._punct("*"):
            pass
        elif self._is("COUNT"):
            self._i += 1
            if not (self._punct("(") and self._punct("*") and self._punct(")")):
                raise self._fail()
            self.count = True
        else:
            raise self._fail()
        self._expect("FROM")
        kind, text, _ = self._peek()
        if kind != "word" or text.upper() in _KEYWORDS:
            raise self._fail()
        self._i += 1
        entity = CANONICAL.get(text.lower())
        if entity is None:
            raise _invalid(f"{text} is not a supported entity")
        self.entity = entity
        if self._is("WHERE"):
            self._i += 1
            self.conditions.append(self._condition())
            while self._is("AND"):
                self._i += 1
                self.conditions.append(self._condition())
        if self._is("ORDERBY", "ORDER"):
            if self._next()[1].upper() == "ORDER":
                self._expect("BY")
            name, kind = self._property()
            descending = False
            if self._is("ASC", "DESC"):
                descending = self._next()[1].upper() == "DESC"
            self.order = (name, kind, descending)
        seen: set[str] = set()
        while self._is("STARTPOSITION", "MAXRESULTS") and self._peek()[1].upper() not in seen:
            word = self._next()[1].upper()
            seen.add(word)
            value = self._integer()
            if word == "STARTPOSITION":
                self.start = max(value, 1)
            elif value < 1:
                raise _invalid("MAXRESULTS must be a positive number")
            else:
                self.max_results = min(value, MAX_RESULTS)
        if self._peek()[0] != "eof":
            raise self._fail()

    def _property(self) -> tuple[str, str]:
        kind, text, _ = self._peek()
        if kind != "word" or text.upper() in _KEYWORDS:
            raise self._fail()
        self._i += 1
        known = COMMON_PROPERTIES | PROPERTIES[self.entity]
        for name, prop_kind in known.items():
            if name.lower() == text.lower():
                return name, prop_kind
        raise _invalid(f"property '{text}' is not queryable for {self.entity}")

    def _condition(self) -> tuple[str, str, str, Any]:
        name, kind = self._property()
        tok_kind, text, _ = self._peek()
        if tok_kind == "op":
            op = text
        elif tok_kind == "word" and text.upper() in ("IN", "LIKE"):
            op = text.upper()
        else:
            raise self._fail()
        self._i += 1
        if op == "IN":
            if not self._punct("("):
                raise self._fail()
            values = [self._literal()]
            while self._punct(","):
                values.append(self._literal())
            if not self._punct(")"):
                raise self._fail()
        else:
            values = [self._literal()]
        if op not in OPERATORS[kind]:
            raise _invalid(f"operator {op} is not supported for property '{name}'")
        converted = [self._convert(name, kind, op, v) for v in values]
        return name, kind, op, converted if op == "IN" else converted[0]

    def _literal(self) -> Any:
        kind, text, _ = self._peek()
        if kind == "str":
            self._i += 1
            return re.sub(r"\\(.)", r"\1", text[1:-1])
        if kind == "num":
            self._i += 1
            return Decimal(text)
        if kind == "word" and text.lower() in ("true", "false"):
            self._i += 1
            return text.lower() == "true"
        raise self._fail()

    @staticmethod
    def _convert(name: str, kind: str, op: str, value: Any) -> Any:
        if kind == ID:
            if isinstance(value, bool):
                raise _invalid(f"bad value for {name}")
            return str(value)
        if kind == TIME:
            stamp = parse_time(value) if isinstance(value, str) else None
            if stamp is None:
                raise _invalid(f"bad date/time value {value!r} for {name}")
            return stamp
        if kind == BOOL:
            if isinstance(value, str) and value.lower() in ("true", "false"):
                return value.lower() == "true"
            if not isinstance(value, bool):
                raise _invalid(f"bad boolean value for {name}")
            return value
        if kind == NUM:
            try:
                return Decimal(str(value)) if not isinstance(value, bool) else None
            except InvalidOperation:
                raise _invalid(f"bad number value for {name}") from None
        if isinstance(value, bool):
            raise _invalid(f"bad value for {name}")
        text = str(value)
        if op == "LIKE":
            pattern = ".*".join(re.escape(part) for part in text.split("%"))
            return re.compile(pattern, re.IGNORECASE | re.DOTALL)
        return text


def _compare(op: str, actual: Any, expected: Any) -> bool:
    if actual is None:
        return False
    if op == "=":
        return actual == expected
    if op == "IN":
        return actual in expected
    if op == "LIKE":
        return expected.fullmatch(str(actual)) is not None
    if op == "<":
        return actual < expected
    if op == ">":
        return actual > expected
    if op == "<=":
        return actual <= expected
    return actual >= expected


# -- the emulator ------------------------------------------------------------------------------
class QuickBooksSandbox(Emulator):
    client_id = "sandbox-qbo-client-id"
    client_secret = "sandbox-qbo-client-secret"
    verifier_token = "sandbox-qbo-verifier"
    max_concurrent = 10

    def __init__(self, knobs: Knobs | None = None, *, realm_id: str = "9341453000123456",
                 clock: Any = None, access_token_ttl: int = 3600,
                 refresh_rotate_after: float = 86400, company_name: str = "Sandbox Books LLC",
                 xml_errors: bool = False, per_minute: int = 500):
        super().__init__(knobs, clock)
        self.realm_id = realm_id
        self.access_token_ttl = access_token_ttl
        self.refresh_rotate_after = refresh_rotate_after
        self.company_name = company_name
        self.xml_errors = xml_errors
        self.per_minute = per_minute
        self.token_calls = 0
        self._store: dict[str, dict[str, dict[str, Any]]] = {e: {} for e in ENTITIES}
        self._times: dict[str, dict[str, tuple[datetime, datetime]]] = {e: {} for e in ENTITIES}
        self._deleted: dict[str, dict[str, datetime]] = {e: {} for e in ENTITIES}
        self._paid: dict[str, dict[str, Decimal]] = {}   # bill id -> {payment id: amount}
        self._voided: set[str] = set()
        self._last_stamp: datetime | None = None
        self._answered: datetime | None = None   # the latest `time` given out in an answer
        self._next_id = {"txn": 140, "Vendor": 56, "Account": 20, "Department": 1,
                         "Class": 5000000000000007280}
        self._special: dict[str, str] = {}   # role ("ap", "bank", "card") -> account id
        self._codes: dict[str, dict[str, Any]] = {}
        self._grants: dict[str, dict[str, Any]] = {}
        self._refresh: dict[str, str] = {}   # live refresh token -> grant id
        self._access: dict[str, dict[str, Any]] = {}
        self._hits: deque[float] = deque()
        self._fail_left, self._fail_status, self._fail_body = 0, 503, None
        self._company_created = render(self.clock.now())

        self.route("GET", "/connect/oauth2", self._authorize, open=True)
        self.route("POST", "/oauth2/v1/tokens/bearer", self._token, open=True)
        self.route("POST", "/v2/oauth2/tokens/revoke", self._revoke, open=True)
        base = "/v3/company/{realm}"
        self.route("GET", base + "/cdc", self._cdc)
        self.route("GET", base + "/query", self._query)
        self.route("POST", base + "/query", self._query)
        self.route("GET", base + "/companyinfo/{id}", self._company_info)
        for entity in ENTITIES:
            self.route("GET", f"{base}/{entity.lower()}/{{id}}",
                       lambda r, e=entity: self._read(r, e))

    @property
    def base_url(self) -> str:
        return self.root_url

    @property
    def auth_url(self) -> str:
        return self.root_url

    # -- test controls -----------------------------------------------------------------------
    def issue_refresh_token(self) -> str:
        """A valid refresh token for the realm, as if the user had just consented."""
        with self.lock:
            return self._grants[self._new_grant(self.clock.now())]["refresh"]

    def expire_access_tokens(self) -> None:
        with self.lock:
            for entry in self._access.values():
                entry["expired"] = True

    def revoke_all(self) -> None:
        """Every grant disconnected: refresh and access tokens all dead."""
        with self.lock:
            for gid in list(self._grants):
                self._revoke_grant(gid)

    def fail_next(self, n: int, status: int = 503, body: Any = None) -> None:
        """The next n API requests (not OAuth calls) get this answer."""
        with self._meta:
            self._fail_left, self._fail_status, self._fail_body = n, status, body

    def sign_webhook(self, body: bytes) -> str:
        """The `intuit-signature` header for a webhook body (base64 HMAC-SHA256)."""
        mac = hmac.new(self.verifier_token.encode("utf-8"), body, hashlib.sha256).digest()
        return base64.b64encode(mac).decode("ascii")

    # -- framework hooks ---------------------------------------------------------------------
    def handle(self, req: Request) -> Reply:
        reply = super().handle(req)
        reply.headers = {**reply.headers, "intuit_tid": self._tid()}
        return reply

    def busy_reply(self, req: Request) -> Reply:
        return self._throttle_reply()

    def fault_reply(self, req: Request, status: int) -> Reply:
        if status == 429:
            return self._throttle_reply()
        return self._fault(status, "10000", "An application error has occurred while "
                           "processing your request", "System Failure Error: Service "
                           "Unavailable", "SystemFault").reply

    def not_found_reply(self, req: Request) -> Reply:
        return self._fault(404, "114", "Unsupported Operation",
                           f"Operation {req.path} is not supported.", "ValidationFault").reply

    def guard(self, req: Request) -> Reply | None:
        if self.take("_fail_left"):
            status, body = self._fail_status, self._fail_body
            if body is not None:
                return Reply(status, body)
            if status in (429, 503):
                return self.fault_reply(req, status)
            if status == 401:
                return self._unauthenticated("Token revoked")
            return self._fault(status, str(status), "Failure injected by the sandbox", "",
                               "SystemFault" if status >= 500 else "ValidationFault").reply
        auth = req.header("Authorization") or ""
        token = auth[7:].strip() if auth.lower().startswith("bearer ") else ""
        now = self.clock.now()
        with self.lock:
            entry = self._access.get(token)
            live = entry is not None and not entry["expired"] and \
                now < entry["created"] + timedelta(seconds=self.access_token_ttl)
        if entry is None or not live:
            shown = f"{token[:6]}…" if token else "(none)"
            return self._unauthenticated(f"Token {'expired' if entry else 'invalid'}: {shown}")
        if req.match.get("realm") != entry["realm"]:
            return Reply(401, self._xml_fault(
                "AuthenticationFault", "100", "General Authentication Error",
                "AuthenticationErrorGeneral: SRV-110-Authentication Failure , statusCode: 401"),
                {"WWW-Authenticate": 'Bearer realm="Intuit", error="invalid_token"'},
                content_type="application/xml")
        with self._meta:
            moment = self.clock.monotonic()
            while self._hits and self._hits[0] <= moment - 60:
                self._hits.popleft()
            if len(self._hits) >= self.per_minute:
                return self._throttle_reply()
            self._hits.append(moment)
        return None

    # -- replies -----------------------------------------------------------------------------
    def _tid(self) -> str:
        return f"1-{int(self.clock.now().timestamp()):08x}-{secrets.token_hex(12)}"

    def _time(self) -> str:
        return self.clock.now().astimezone(COMPANY_TZ).isoformat(timespec="milliseconds")

    def _watermark(self) -> str:
        """The `time` of a data answer (call with the lock held): never before a stamp."""
        now = self.clock.now()
        if self._last_stamp is not None and self._last_stamp > now:
            now = self._last_stamp
        if self._answered is None or now > self._answered:
            self._answered = now
        return now.astimezone(COMPANY_TZ).isoformat(timespec="milliseconds")

    def _fault(self, status: int, code: str, message: str, detail: str = "",
               kind: str = "ValidationFault", element: str = "") -> Abort:
        return Abort(Reply(status, {"Fault": {"Error": [
            {"Message": message, "Detail": detail, "code": code, "element": element}],
            "type": kind}, "time": self._time()}))

    def _xml_fault(self, kind: str, code: str, message: str, detail: str) -> str:
        return ('<?xml version="1.0" encoding="UTF-8" standalone="yes"?>'
                '<IntuitResponse xmlns="http://schema.intuit.com/finance/v3" '
                f'time={quoteattr(self._time())}><Fault type={quoteattr(kind)}>'
                f'<Error code={quoteattr(code)}><Message>{escape(message)}</Message>'
                f'<Detail>{escape(detail)}</Detail></Error></Fault></IntuitResponse>')

    def _throttle_reply(self) -> Reply:
        if self.xml_errors:
            return Reply(429, self._xml_fault("SERVICE", "3001", THROTTLE_MESSAGE,
                                              THROTTLE_DETAIL), content_type="application/xml")
        return Reply(429, {"Fault": {"Error": [{"Message": THROTTLE_MESSAGE,
                                                "Detail": THROTTLE_DETAIL, "code": "3001"}],
                                     "type": "SERVICE"}, "time": self._time()})

    def _unauthenticated(self, detail: str) -> Reply:
        message = "message=AuthenticationFailed; errorCode=003200; statusCode=401"
        headers = {"WWW-Authenticate": 'Bearer realm="Intuit", error="invalid_token"'}
        if self.xml_errors:
            return Reply(401, self._xml_fault("AUTHENTICATION", "3200", message, detail),
                         headers, content_type="application/xml")
        return Reply(401, {
            "warnings": None, "intuitObject": None,
            "fault": {"error": [{"message": message, "detail": detail, "code": "3200",
                                 "element": None}], "type": "AUTHENTICATION"},
            "report": None, "queryResponse": None, "batchItemResponse": [],
            "attachableResponse": [], "syncErrorResponse": None, "requestId": None,
            "time": int(self.clock.now().timestamp() * 1000), "status": None,
            "cdcresponse": []}, headers)

    # -- OAuth -------------------------------------------------------------------------------
    def _authorize(self, req: Request) -> Reply:
        redirect_uri = req.arg("redirect_uri") or ""
        if req.arg("client_id") != self.client_id:
            raise Abort(Reply(400, {"error": "invalid_client"}))
        if not redirect_uri:
            raise Abort(Reply(400, {"error": "invalid_request",
                                    "error_description": "redirect_uri is required"}))
        if req.arg("response_type") != "code":
            raise Abort(Reply(400, {"error": "unsupported_response_type"}))
        query: dict[str, str] = {}
        scope = req.arg("scope")
        if scope is not None and SCOPE not in scope.split():
            query["error"] = "invalid_scope"
        else:
            code = "AB" + _token(38)
            with self.lock:
                self._codes[code] = {"created": self.clock.now(), "redirect_uri": redirect_uri}
            query["code"] = code
        if req.arg("state") is not None:
            query["state"] = req.arg("state") or ""
        if "code" in query:
            query["realmId"] = self.realm_id
        glue = "&" if "?" in redirect_uri else "?"
        return Reply(302, None, {"Location": f"{redirect_uri}{glue}{urlencode(query)}"})

    def _check_client(self, req: Request) -> None:
        auth = req.header("Authorization") or ""
        ok = False
        if auth.lower().startswith("basic "):
            try:
                pair = base64.b64decode(auth[6:].strip(), validate=True).decode("utf-8")
            except (binascii.Error, UnicodeDecodeError):
                pair = ""
            ok = hmac.compare_digest(pair, f"{self.client_id}:{self.client_secret}")
        if not ok:
            raise Abort(Reply(401, {"error": "invalid_client"}))

    def _token(self, req: Request) -> Reply:
        with self._meta:
            self.token_calls += 1
        self._check_client(req)
        form = req.form()
        grant_type = form.get("grant_type")
        now = self.clock.now()
        dead = Abort(Reply(400, {"error": "invalid_grant"}))
        with self.lock:
            if grant_type == "authorization_code":
                code = self._codes.pop(form.get("code", ""), None)
                if code is None or now >= code["created"] + CODE_TTL or \
                        code["redirect_uri"] != form.get("redirect_uri"):
                    raise dead
                gid = self._new_grant(code["created"])
            elif grant_type == "refresh_token":
                value = form.get("refresh_token", "")
                gid = self._refresh.get(value, "")
                grant = self._grants.get(gid)
                if grant is None or now >= grant["expires"] or \
                        now >= grant["consent"] + HARD_CAP:
                    raise dead
                if (now - grant["born"]).total_seconds() >= self.refresh_rotate_after:
                    del self._refresh[value]
                    grant["refresh"], grant["born"] = self._new_refresh_value(), now
                    self._refresh[grant["refresh"]] = gid
                grant["expires"] = now + timedelta(seconds=REFRESH_WINDOW)
            else:
                raise Abort(Reply(400, {"error": "unsupported_grant_type"}))
            grant = self._grants[gid]
            access = "eyJlbmMiOiJBMTI4Q0JDLUhTMjU2IiwiYWxnIjoiZGlyIn0.." + _token(160)
            self._access[access] = {"created": now, "expired": False, "grant": gid,
                                    "realm": grant["realm"]}
            hard_left = max(int((grant["consent"] + HARD_CAP - now).total_seconds()), 0)
            body: dict[str, Any] = {
                "token_type": "bearer", "expires_in": self.access_token_ttl,
                "access_token": access, "refresh_token": grant["refresh"],
                "x_refresh_token_expires_in": min(REFRESH_WINDOW, hard_left)}
        if (req.header("x-include-refresh-token-hard-expires-in") or "").lower() == "true":
            body["x_refresh_token_hard_expires_in"] = hard_left
        return Reply(200, body, {"Cache-Control": "no-cache, no-store"})

    def _revoke(self, req: Request) -> Reply:
        self._check_client(req)
        try:
            data = req.json()
        except ValueError:
            data = None
        if not isinstance(data, dict) or not isinstance(data.get("token"), str):
            raise Abort(Reply(400, {"error": "invalid_request"}))
        token = data["token"]
        with self.lock:
            gid = self._refresh.get(token) or (self._access.get(token) or {}).get("grant")
            if gid:
                self._revoke_grant(gid)
        return Reply(200, "", content_type="text/plain")

    def _new_refresh_value(self) -> str:
        return "AB11" + str(int(self.clock.now().timestamp()) % 10**9).zfill(9) + _token(37)

    def _new_grant(self, consent: datetime) -> str:
        gid = secrets.token_hex(8)
        now = self.clock.now()
        value = self._new_refresh_value()
        self._grants[gid] = {"consent": consent, "born": now, "refresh": value,
                             "expires": now + timedelta(seconds=REFRESH_WINDOW),
                             "realm": self.realm_id}
        self._refresh[value] = gid
        return gid

    def _revoke_grant(self, gid: str) -> None:
        grant = self._grants.pop(gid, None)
        if grant is not None:
            self._refresh.pop(grant["refresh"], None)
        for token in [t for t, e in self._access.items() if e["grant"] == gid]:
            del self._access[token]

    # -- API handlers ------------------------------------------------------------------------
    def _cdc(self, req: Request) -> Reply:
        raw_entities, raw_since = req.arg("entities"), req.arg("changedSince")
        if not raw_entities or not raw_since:
            missing = "entities" if not raw_entities else "changedSince"
            raise self._fault(400, "2020", "Required param missing, need to supply the "
                              "required value for the API",
                              f"Required parameter {missing} is missing in the request")
        entities: list[str] = []
        for name in raw_entities.split(","):
            entity = CANONICAL.get(name.strip().lower())
            if entity is None:
                raise self._fault(400, "2010", "Request has invalid or unsupported property",
                                  f"Property Name:{name.strip()} is not supported for cdc",
                                  element="entities")
            if entity not in entities:
                entities.append(entity)
        since = parse_time(raw_since)
        if since is None:
            raise self._fault(400, "2010", "Request has invalid or unsupported property",
                              f"Invalid changedSince value: {raw_since}", element="changedSince")
        if since < self.clock.now() - timedelta(days=CDC_DAYS):
            raise self._fault(400, "10002", "Operation cdc with changedSince date "
                              f"{raw_since} which is older than fixed days is not supported",
                              f"changedSince may be at most {CDC_DAYS} days in the past",
                              element="changedSince")
        with self.lock:
            active = sorted(((self._times[e][oid][1], e, obj) for e in entities
                             for oid, obj in self._store[e].items()
                             if self._times[e][oid][1] > since), key=lambda t: t[0])
            gone = sorted(((stamp, e, oid) for e in entities
                           for oid, stamp in self._deleted[e].items() if stamp > since),
                          key=lambda t: t[0])
            active = active[:CDC_CAP]
            gone = gone[:CDC_CAP - len(active)]
            groups: dict[str, list[dict[str, Any]]] = {e: [] for e in entities}
            for _, entity, obj in active:
                groups[entity].append(obj)
            for stamp, entity, oid in gone:
                groups[entity].append({"domain": "QBO", "status": "Deleted", "Id": oid,
                                       "MetaData": {"LastUpdatedTime": render(stamp)}})
            parts: list[dict[str, Any]] = [
                {entity: rows, "startPosition": 1, "maxResults": len(rows)}
                for entity, rows in groups.items() if rows] or [{}]
            return encoded(200, {"CDCResponse": [{"QueryResponse": parts}],
                                 "time": self._watermark()})

    def _query(self, req: Request) -> Reply:
        sql = req.arg("query")
        if req.method == "POST" and req.body:
            sql = req.body.decode("utf-8", errors="replace")
        try:
            query = Query(sql or "")
        except QueryError as bad:
            raise self._fault(400, bad.code, bad.message, bad.detail) from None
        entity = query.entity
        with self.lock:
            rows = list(self._store[entity].values())
            if entity in NAME_LISTS and not any(c[0] == "Active" for c in query.conditions):
                rows = [r for r in rows if r.get("Active", True)]
            for name, kind, op, expected in query.conditions:
                rows = [r for r in rows
                        if _compare(op, self._property(entity, r, name, kind), expected)]
            if query.count:
                return encoded(200, {"QueryResponse": {"totalCount": len(rows)},
                                     "time": self._watermark()})
            rows.sort(key=lambda r: int(r["Id"]))
            if query.order is not None:
                name, kind, descending = query.order

                def key(row: dict[str, Any]) -> tuple[bool, Any]:
                    value = self._property(entity, row, name, kind)
                    return (value is None) != descending, value

                rows.sort(key=key, reverse=descending)
            page = rows[query.start - 1:query.start - 1 + query.max_results]
            body: dict[str, Any] = {entity: page, "startPosition": query.start,
                                    "maxResults": len(page)} if page else {}
            return encoded(200, {"QueryResponse": body, "time": self._watermark()})

    def _property(self, entity: str, obj: dict[str, Any], name: str, kind: str) -> Any:
        if kind == TIME:
            created, updated = self._times[entity][obj["Id"]]
            return created if name == "MetaData.CreateTime" else updated
        value = obj.get(name)
        if kind == REF:
            return value.get("value") if isinstance(value, dict) else None
        return value

    def _read(self, req: Request, entity: str) -> Reply:
        with self.lock:
            obj = self._store[entity].get(req.match["id"])
            if obj is None:
                raise self._fault(400, "610", "Object Not Found", NOT_FOUND_DETAIL)
            return encoded(200, {entity: obj, "time": self._watermark()})

    def _company_info(self, req: Request) -> Reply:
        if req.match["id"] not in (self.realm_id, "1"):
            raise self._fault(400, "610", "Object Not Found", NOT_FOUND_DETAIL)
        return Reply(200, {"CompanyInfo": {
            "Id": "1", "SyncToken": "0", "domain": "QBO", "sparse": False,
            "CompanyName": self.company_name, "LegalName": self.company_name,
            "Country": "US", "DefaultTimeZone": "America/Los_Angeles",
            "CompanyAddr": {"Line1": "2700 Coast Ave", "City": "Mountain View",
                            "CountrySubDivisionCode": "CA", "PostalCode": "94043"},
            "SupportedLanguages": "en", "FiscalYearStartMonth": "January",
            "MetaData": {"CreateTime": self._company_created,
                         "LastUpdatedTime": self._company_created}},
            "time": self._time()})

    # -- the data model (call with the lock held) --------------------------------------------
    def _stamp(self) -> datetime:
        """The time of a write: never the same as, nor before, the previous write's."""
        now = self.clock.now().replace(microsecond=0)
        floor = max((t.replace(microsecond=0) for t in (self._last_stamp, self._answered)
                     if t is not None), default=None)
        if floor is not None and now <= floor:
            now = floor + timedelta(seconds=1)
        self._last_stamp = now
        return now

    def _new_id(self, entity: str) -> str:
        counter = "txn" if entity in TRANSACTIONS else entity
        value = self._next_id[counter]
        self._next_id[counter] = value + 1
        return str(value)

    def _create(self, entity: str, fields: dict[str, Any]) -> dict[str, Any]:
        oid, stamp = self._new_id(entity), self._stamp()
        obj = {"Id": oid, "SyncToken": "0", "domain": "QBO", "sparse": False, **fields,
               "MetaData": {"CreateTime": render(stamp), "LastUpdatedTime": render(stamp)}}
        self._store[entity][oid] = obj
        self._times[entity][oid] = (stamp, stamp)
        return obj

    def _touch(self, entity: str, obj: dict[str, Any]) -> None:
        stamp = self._stamp()
        obj["SyncToken"] = str(int(obj["SyncToken"]) + 1)
        obj["MetaData"]["LastUpdatedTime"] = render(stamp)
        self._times[entity][obj["Id"]] = (self._times[entity][obj["Id"]][0], stamp)

    def _live(self, entity: str, oid: Any) -> dict[str, Any]:
        obj = self._store[entity].get(str(oid))
        if obj is None:
            raise ValueError(f"no {entity} with Id {oid!r}")
        return obj

    def _ref(self, entity: str, oid: Any) -> dict[str, str]:
        obj = self._live(entity, oid)
        name = obj.get("DisplayName") if entity == "Vendor" else obj.get("FullyQualifiedName")
        return {"value": obj["Id"], "name": name}

    @staticmethod
    def _currency(code: str) -> dict[str, str]:
        return {"value": code, "name": CURRENCIES.get(code, code)}

    def _create_account(self, name: str, account_type: str, acct_num: str | None,
                        sub_type: str | None) -> dict[str, Any]:
        if not name or '"' in name or ":" in name:
            raise ValueError(f"bad account name {name!r}")
        if account_type not in CLASSIFICATION:
            raise ValueError(f"unknown AccountType {account_type!r}")
        fields: dict[str, Any] = {"Name": name, "SubAccount": False, "FullyQualifiedName": name,
                                  "Active": True, "Classification": CLASSIFICATION[account_type],
                                  "AccountType": account_type,
                                  "AccountSubType": sub_type or SUB_TYPES[account_type]}
        if acct_num is not None:
            fields["AcctNum"] = str(acct_num)
        fields |= {"CurrentBalance": ZERO, "CurrentBalanceWithSubAccounts": ZERO,
                   "CurrencyRef": self._currency("USD")}
        return self._create("Account", fields)

    def _special_account(self, role: str) -> str:
        """The A/P, bank or credit-card account, created on first use."""
        if role not in self._special or self._special[role] not in self._store["Account"]:
            name, kind = {"ap": ("Accounts Payable (A/P)", "Accounts Payable"),
                          "bank": ("Checking", "Bank"), "card": ("Visa", "Credit Card")}[role]
            self._special[role] = self._create_account(name, kind, None, None)["Id"]
        return self._special[role]

    def _create_segment(self, entity: str, name: str) -> dict[str, Any]:
        if not name or ":" in name:
            raise ValueError(f"bad {entity} name {name!r}")
        sub = "SubClass" if entity == "Class" else "SubDepartment"
        return self._create(entity, {"Name": name, sub: False, "FullyQualifiedName": name,
                                     "Active": True})

    def _vendor_fields(self, fields: dict[str, Any]) -> dict[str, Any]:
        out = dict(fields)
        if out.get("TaxIdentifier"):
            digits = re.sub(r"\D", "", str(out["TaxIdentifier"]))
            out["TaxIdentifier"] = "XXXXXX" + digits[-4:]
        for key in ("Id", "SyncToken", "MetaData", "domain", "sparse"):
            if key in out:
                raise ValueError(f"{key} is not writable")
        return out

    def _create_vendor(self, display_name: str, fields: dict[str, Any]) -> dict[str, Any]:
        if not display_name:
            raise ValueError("DisplayName is required")
        taken = {v["DisplayName"].lower() for v in self._store["Vendor"].values()}
        if display_name.lower() in taken:
            raise ValueError(f"Duplicate Name Exists Error: {display_name!r}")
        extra = self._vendor_fields(fields)
        base = {"DisplayName": display_name, "PrintOnCheckName": display_name, "Active": True,
                "Vendor1099": False, "Balance": ZERO, "CurrencyRef": self._currency("USD")}
        return self._create("Vendor", base | extra)

    def _create_bill(self, vendor_id: Any, lines: list[dict[str, Any]], doc_number: Any,
                     txn_date: str, due_date: str | None, department_id: Any, currency: str,
                     private_note: str | None) -> dict[str, Any]:
        vendor_ref = self._ref("Vendor", vendor_id)
        built = self._bill_lines(lines)
        total = sum((li["Amount"] for li in built), ZERO)
        fields: dict[str, Any] = {"VendorRef": vendor_ref, "TxnDate": _date(txn_date),
                                  "DueDate": _date(due_date or txn_date)}
        if doc_number is not None:
            if len(str(doc_number)) > 21:
                raise ValueError("DocNumber is at most 21 characters")
            fields["DocNumber"] = str(doc_number)
        fields["CurrencyRef"] = self._currency(currency)
        if department_id is not None:
            fields["DepartmentRef"] = self._ref("Department", department_id)
        fields |= {"TotalAmt": total, "Balance": total}
        if private_note is not None:
            fields["PrivateNote"] = private_note
        fields["Line"] = built
        fields = {"APAccountRef": self._ref("Account", self._special_account("ap")), **fields}
        bill = self._create("Bill", fields)
        self._vendor_balance(vendor_ref["value"], total)
        return bill

    def _bill_lines(self, lines: list[dict[str, Any]]) -> list[dict[str, Any]]:
        if not lines:
            raise ValueError("a bill needs at least one line")
        built = []
        for n, spec in enumerate(lines, 1):
            detail: dict[str, Any] = {"AccountRef": self._ref("Account", spec["account_id"])}
            if spec.get("class_id") is not None:
                detail["ClassRef"] = self._ref("Class", spec["class_id"])
            detail |= {"BillableStatus": "NotBillable", "TaxCodeRef": {"value": "NON"}}
            line: dict[str, Any] = {"Id": str(n)}
            if spec.get("description") is not None:
                line["Description"] = spec["description"]
            line |= {"Amount": _money(spec["amount"]),
                     "DetailType": "AccountBasedExpenseLineDetail",
                     "AccountBasedExpenseLineDetail": detail}
            built.append(line)
        return built

    def _vendor_balance(self, vendor_id: str, delta: Decimal) -> None:
        vendor = self._store["Vendor"].get(vendor_id)
        if vendor is not None:
            vendor["Balance"] = _money(vendor.get("Balance", ZERO)) + delta

    def _rebalance(self, bill: dict[str, Any]) -> None:
        paid = sum(self._paid.get(bill["Id"], {}).values(), ZERO)
        balance = _money(bill["TotalAmt"]) - paid
        self._vendor_balance(bill["VendorRef"]["value"], balance - _money(bill["Balance"]))
        bill["Balance"] = balance

    def _create_payment(self, vendor_id: Any, paid: list[tuple[Any, Any]], pay_type: str,
                        txn_date: str, doc_number: Any) -> dict[str, Any]:
        vendor_ref = self._ref("Vendor", vendor_id)
        if pay_type not in ("Check", "CreditCard"):
            raise ValueError("PayType is Check or CreditCard")
        if not paid:
            raise ValueError("a bill payment pays at least one bill")
        amounts: dict[str, Decimal] = {}
        for bill_id, amount in paid:
            bill = self._live("Bill", bill_id)
            if bill["VendorRef"]["value"] != vendor_ref["value"]:
                raise ValueError(f"bill {bill_id} is not from vendor {vendor_id}")
            amounts[bill["Id"]] = amounts.get(bill["Id"], ZERO) + _money(amount)
        for bill_id, amount in amounts.items():
            if amount <= 0 or amount > _money(self._store["Bill"][bill_id]["Balance"]):
                raise ValueError(f"{amount} is not payable on bill {bill_id}")
        first = self._store["Bill"][next(iter(amounts))]
        fields: dict[str, Any] = {"VendorRef": vendor_ref, "PayType": pay_type,
                                  "TxnDate": _date(txn_date)}
        if doc_number is not None:
            fields["DocNumber"] = str(doc_number)
        fields |= {"TotalAmt": sum(amounts.values(), ZERO),
                   "CurrencyRef": copy.deepcopy(first["CurrencyRef"]),
                   "APAccountRef": self._ref("Account", self._special_account("ap"))}
        if pay_type == "Check":
            fields["CheckPayment"] = {"BankAccountRef": self._ref(
                "Account", self._special_account("bank")), "PrintStatus": "NotSet"}
        else:
            fields["CreditCardPayment"] = {"CCAccountRef": self._ref(
                "Account", self._special_account("card"))}
        fields["Line"] = [{"Amount": amount, "LinkedTxn": [{"TxnId": bill_id,
                                                            "TxnType": "Bill"}]}
                          for bill_id, amount in amounts.items()]
        payment = self._create("BillPayment", fields)
        link = "BillPaymentCheck" if pay_type == "Check" else "BillPaymentCreditCard"
        for bill_id, amount in amounts.items():
            bill = self._store["Bill"][bill_id]
            self._paid.setdefault(bill_id, {})[payment["Id"]] = amount
            bill.setdefault("LinkedTxn", []).append({"TxnId": payment["Id"], "TxnType": link})
            self._rebalance(bill)
            self._touch("Bill", bill)
        return payment

    def _unapply(self, payment: dict[str, Any]) -> None:
        """Give the bills back what this payment paid (void or delete)."""
        for line in payment["Line"]:
            for linked in line.get("LinkedTxn", []):
                bill_id = linked["TxnId"]
                if self._paid.get(bill_id, {}).pop(payment["Id"], None) is None:
                    continue
                bill = self._store["Bill"].get(bill_id)
                if bill is not None:
                    self._rebalance(bill)
                    self._touch("Bill", bill)

    def _void_payment(self, payment_id: Any) -> dict[str, Any]:
        payment = self._live("BillPayment", payment_id)
        if payment["Id"] in self._voided:
            raise ValueError(f"bill payment {payment_id} is already void")
        self._voided.add(payment["Id"])
        payment["TotalAmt"] = ZERO
        for line in payment["Line"]:
            line["Amount"] = ZERO
        note = payment.get("PrivateNote")
        payment["PrivateNote"] = f"Voided - {note}" if note else "Voided"
        self._touch("BillPayment", payment)
        self._unapply(payment)
        return payment

    def _create_journal(self, lines: list[dict[str, Any]], txn_date: str,
                        doc_number: Any) -> dict[str, Any]:
        if not lines:
            raise ValueError("a journal entry needs lines")
        built, sums = [], {"Debit": ZERO, "Credit": ZERO}
        for n, spec in enumerate(lines):
            posting = spec.get("posting_type")
            if posting not in sums:
                raise ValueError("posting_type is Debit or Credit")
            amount = _money(spec["amount"])
            sums[posting] += amount
            detail: dict[str, Any] = {"PostingType": posting,
                                      "AccountRef": self._ref("Account", spec["account_id"])}
            if spec.get("vendor_id") is not None:
                detail["Entity"] = {"Type": "Vendor",
                                    "EntityRef": self._ref("Vendor", spec["vendor_id"])}
            if spec.get("class_id") is not None:
                detail["ClassRef"] = self._ref("Class", spec["class_id"])
            if spec.get("department_id") is not None:
                detail["DepartmentRef"] = self._ref("Department", spec["department_id"])
            line: dict[str, Any] = {"Id": str(n)}
            if spec.get("description") is not None:
                line["Description"] = spec["description"]
            line |= {"Amount": amount, "DetailType": "JournalEntryLineDetail",
                     "JournalEntryLineDetail": detail}
            built.append(line)
        if sums["Debit"] != sums["Credit"]:
            raise ValueError(f"debits {sums['Debit']} differ from credits {sums['Credit']}")
        fields: dict[str, Any] = {"TxnDate": _date(txn_date)}
        if doc_number is not None:
            fields["DocNumber"] = str(doc_number)
        fields |= {"Adjustment": False, "TotalAmt": ZERO, "CurrencyRef": self._currency("USD"),
                   "Line": built}
        return self._create("JournalEntry", fields)

    def _update(self, entity: str, obj_id: Any, changes: dict[str, Any]) -> dict[str, Any]:
        obj = self._live(entity, obj_id)
        if entity == "Vendor":
            changes = self._vendor_fields(changes)
        for key in ("Id", "SyncToken", "MetaData", "domain", "sparse"):
            if key in changes:
                raise ValueError(f"{key} is not writable")
        if entity == "Bill" and "Line" in changes:
            lines = copy.deepcopy(changes["Line"])
            for line in lines:
                line["Amount"] = _money(line["Amount"])
            obj["Line"] = lines
            obj["TotalAmt"] = sum((li["Amount"] for li in lines), ZERO)
            changes = {k: v for k, v in changes.items() if k not in ("Line", "TotalAmt")}
        obj.update(copy.deepcopy(changes))
        if entity == "Bill":
            self._rebalance(obj)
        if entity in ("Account", "Class", "Department") and "Name" in changes:
            obj["FullyQualifiedName"] = obj["Name"]
        self._touch(entity, obj)
        return obj

    def _delete(self, entity: str, obj_id: Any) -> None:
        if entity in NAME_LISTS:
            raise ValueError(f"{entity} is a name list: deactivate it with "
                             f"update({entity!r}, id, Active=False)")
        obj = self._live(entity, obj_id)
        oid = obj["Id"]
        if entity == "Bill":
            self._vendor_balance(obj["VendorRef"]["value"], -_money(obj["Balance"]))
            self._paid.pop(oid, None)
        elif entity == "BillPayment" and oid not in self._voided:
            self._unapply(obj)
        del self._store[entity][oid]
        del self._times[entity][oid]
        self._deleted[entity][oid] = self._stamp()

    # -- seed helpers (each returns a snapshot of the stored object) -------------------------
    def _helper(self, fn: Any, *args: Any) -> Any:
        with self.lock:
            return copy.deepcopy(fn(*args))

    @staticmethod
    def _entity(name: str) -> str:
        entity = CANONICAL.get(str(name).lower())
        if entity is None:
            raise ValueError(f"unknown entity {name!r}")
        return entity

    def add_account(self, name: str, *, account_type: str = "Expense",
                    acct_num: str | None = None, sub_type: str | None = None) -> dict[str, Any]:
        return self._helper(self._create_account, name, account_type, acct_num, sub_type)

    def add_class(self, name: str) -> dict[str, Any]:
        return self._helper(self._create_segment, "Class", name)

    def add_department(self, name: str) -> dict[str, Any]:
        return self._helper(self._create_segment, "Department", name)

    def add_vendor(self, display_name: str, **fields: Any) -> dict[str, Any]:
        return self._helper(self._create_vendor, display_name, fields)

    def add_bill(self, vendor_id: Any, lines: list[dict[str, Any]], *, doc_number: Any = None,
                 txn_date: str = "2026-03-02", due_date: str | None = None,
                 department_id: Any = None, currency: str = "USD",
                 private_note: str | None = None) -> dict[str, Any]:
        return self._helper(self._create_bill, vendor_id, lines, doc_number, txn_date,
                            due_date, department_id, currency, private_note)

    def add_bill_payment(self, vendor_id: Any, paid: list[tuple[Any, Any]], *,
                         pay_type: str = "Check", txn_date: str = "2026-03-05",
                         doc_number: Any = None) -> dict[str, Any]:
        return self._helper(self._create_payment, vendor_id, list(paid), pay_type, txn_date,
                            doc_number)

    def void_bill_payment(self, payment_id: Any) -> dict[str, Any]:
        return self._helper(self._void_payment, payment_id)

    def add_journal_entry(self, lines: list[dict[str, Any]], *, txn_date: str = "2026-03-02",
                          doc_number: Any = None) -> dict[str, Any]:
        return self._helper(self._create_journal, lines, txn_date, doc_number)

    def update(self, entity: str, obj_id: Any, **changes: Any) -> dict[str, Any]:
        """Change top-level fields as a user would in the web app: SyncToken + 1, a new
        LastUpdatedTime."""
        return self._helper(self._update, self._entity(entity), obj_id, changes)

    def delete(self, entity: str, obj_id: Any) -> None:
        """Delete a transaction; name lists raise ValueError (deactivate them instead)."""
        with self.lock:
            self._delete(self._entity(entity), obj_id)
