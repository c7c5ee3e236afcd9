"""Offline Salesforce: the client-credentials token endpoint on the My Domain host, session
checks, the version list, the resources list, `userinfo`, the identity URL, `/limits`, and the
data side a FreshBooks -> Salesforce sync writes and reads: sObject CRUD, upsert by external
id, sObject Collections, composite, describe and SOQL, in the wire format of
`api/salesforce.md` §1-9, §11-12.

Objects (§8, §11): Account (001), Opportunity (006), Order (801), the custom
FreshBooks_Invoice__c (a01) of §8.4 and a read-only standard Invoice (3tt). Account carries
FreshBooks_Client_Id__c and Opportunity and FreshBooks_Invoice__c carry
FreshBooks_Invoice_Id__c: Text(255), External ID, Unique, case-insensitive.

Test interface: `rows(object, include_deleted=False)`, `add_account(name, **fields)`,
`add_opportunity(account_id, name, stage, close_date, amount, **fields)`,
`add_order(account_id, effective_date, status="Draft", **fields)`,
`add_record(object, **fields)` (all validated like the API, ValueError on a failure; read-only
fields may be seeded), `add_field(object, name, external_id=False, *, type, unique, required,
picklist, restricted, case_sensitive, reference_to, length)`, `remove_field(object, name)`.

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
- `SELECT <Id and/or Name> FROM Organization [LIMIT n]` keeps its own narrow parser (anything
  else about Organization answers 400 `MALFORMED_QUERY`);
- no 429s (§0): the `rate_429` knob answers 403 `REQUEST_LIMIT_EXCEEDED`, as does a call once
  `api_usage` reaches `api_limit` (15,000, the Developer Edition figure of §9); random 503s
  are `[{"errorCode":"SERVER_UNAVAILABLE",…}]`;
- `Sforce-Limit-Info: api-usage=<used>/<limit>` is on every `/services/data/…` answer (§11);
  only accepted calls count, and a collection or composite call counts once (§5, §5.1);
- the API versions offered run from v31.0 to `api_version`; an unknown version answers 404
  `NOT_FOUND`.

Data side:
- ids are `prefix + "SB" + 10 base-62 digits` plus the checksum (`sf18`); URLs and bodies take
  15-character ids or 18-character ones in any case; answers always carry 18;
- field and object names are case-insensitive on input (as on the platform) and canonical on
  output; a GET returns every field, nulls included, `?fields=` only those listed (no `Id`
  unless listed); compound `BillingAddress`/`ShippingAddress` are read-only, derived;
- error order on a write (one error per answer): unknown field `INVALID_FIELD` (fields: the
  unknown names; message "No such column 'X' on sobject of type Account") -> read-only field
  or `Id` in a body `INVALID_FIELD_FOR_INSERT_UPDATE` (§3) -> value types (`MALFORMED_ID`,
  `STRING_TOO_LONG`, `JSON_PARSER_ERROR`) -> `REQUIRED_FIELD_MISSING` -> restricted picklist
  `INVALID_OR_NULL_FOR_RESTRICTED_PICKLIST` -> object rules -> lookups -> `DUPLICATE_VALUE`
  (`fields: []`, 15-character id in the message, as in §12 (6));
- numbers: currency/double/percent must be JSON numbers (a numeric string is refused with
  `JSON_PARSER_ERROR`, stricter than the platform may be); they are stored as the exact
  Decimal sent (no rounding to the scale); int fields must be integral; dates must be a valid
  `YYYY-MM-DD` (else `JSON_PARSER_ERROR`); "" in a text field is stored as null;
- lookups: a well-formed id of a missing record, or of another object, ->
  `INVALID_CROSS_REFERENCE_KEY` "invalid cross reference id"; of a deleted record ->
  `ENTITY_IS_DELETED`; references to objects not emulated (Pricebook2, Contract) only need a
  well-formed id; OwnerId must be the integration user. A lookup may be given by the
  parent's external id (`"Account": {"FreshBooks_Client_Id__c": "C-1"}`, `Account__r` on
  custom objects); no match -> `INVALID_FIELD` "Foreign key external ID: X not found for
  field F in entity Account" with `fields: []` (§12 (3));
- Opportunity: StageName is a restricted picklist of the ten standard stages; a stage sets
  Probability and ForecastCategoryName (unless sent in the same body) and the read-only
  IsClosed/IsWon (§8.2). Order: AccountId, EffectiveDate and Status (Draft/Activated,
  restricted) are required; creating one not in Draft, or changing AccountId once activated,
  -> `FIELD_INTEGRITY_EXCEPTION` [G]; OrderNumber counts from 00000100; TotalAmount is 0.
  FreshBooks_Invoice__c.Name defaults to the record id; its Status__c is not restricted;
- `Invoice` is read-only: create, upsert and delete answer 400 `INVALID_TYPE` (§8.4);
- delete moves the record to a recycle bin (`queryAll` still sees it, `IsDeleted` true):
  a GET/PATCH/DELETE of it answers 404 `ENTITY_IS_DELETED`; it frees its unique values;
  deleting an Account deletes its Opportunities, is refused with `DELETE_FAILED` while Orders
  point at it, and clears other lookups to it;
- upsert (§4): the external id field may NOT be in the body (400 `INVALID_FIELD`), nor `Id`
  (400 `INVALID_FIELD_FOR_INSERT_UPDATE`); matching is case-insensitive; 201 created /
  200 `created:false` from v46.0, before that 201 without `created` and 204; several matches
  -> 300 with a JSON array of record URLs, nothing written; an unknown field or one that is
  not an external id -> 404 NOT_FOUND. `Id` works as the key for updates (404 if unknown);
  `GET`/`DELETE /sobjects/{Object}/{ExtField}/{value}` answer 200/204, 404 or 300. A value
  containing "/" cannot be addressed (the path is decoded before routing);
- collections (§5): body problems answer 400 (not an object, `records` not a list of objects
  -> `JSON_PARSER_ERROR`; > 200 records -> `EXCEEDED_ID_LIMIT`; a record without
  `attributes.type` -> `INVALID_TYPE` "Must send a concrete entity type."; an unknown type,
  or in an upsert a type other than the URI's, -> `INVALID_TYPE`); everything else is
  per record, in order, with `statusCode` errors. Failed creates/upserts carry no `id`, failed
  updates/deletes carry the id sent. allOrNone validates every record, then rolls all back:
  valid ones answer `ALL_OR_NONE_OPERATION_ROLLED_BACK`. Update without id ->
  `MISSING_ARGUMENT`; upsert: the same external id twice in one call, or several stored
  matches -> `DUPLICATE_EXTERNAL_ID`; a missing external id value -> `MISSING_ARGUMENT`;
- composite (§5.1): ≤ 25 subrequests (else 400 `LIMIT_EXCEEDED`), `@{ref.path}` references
  (also `records[0].Id`); with allOrNone the first failure rolls back: earlier and later
  subrequests answer 400 `PROCESSING_HALTED`; an unresolvable reference answers 400
  `PROCESSING_HALTED` for that subrequest;
- SOQL (§6): `SELECT f, Rel.f | COUNT() FROM Obj [WHERE c AND c ...] [ORDER BY f [ASC|DESC]
  [NULLS FIRST|LAST], ...] [LIMIT n] [OFFSET n]`, conditions `=, !=, <>, <, >, <=, >=`,
  `[NOT] IN (...)`, `LIKE`; OR, NOT, sub-queries, functions and date literals like TODAY
  answer `MALFORMED_QUERY`. Text comparisons and ORDER BY on text are case-insensitive; nulls
  sort first ascending, last descending; a literal of the wrong kind for its field (quoted
  date, a number for a text field) -> `INVALID_FIELD`; a bad id literal ->
  `INVALID_QUERY_FILTER_OPERATOR`; unknown object -> `INVALID_TYPE`. Batches are 2000, or
  `Sforce-Query-Options: batchSize=n` clamped to 200..2000; locators look like
  `01gSB0000000001-2000`, die when the last page is read or after 15 idle minutes, and an
  unknown one answers 400 `INVALID_QUERY_LOCATOR`;
- CreatedDate/LastModifiedDate/SystemModstamp come from the clock as
  `2026-03-01T09:30:00.000+0000`, millisecond precision, strictly increasing across the org
  (a stalled clock gets +1 ms per write); a delete stamps the record too;
- request bodies with a non-JSON Content-Type answer 415 `UNSUPPORTED_MEDIA_TYPE`; bodies
  that are not JSON 400 `JSON_PARSER_ERROR`. No duplicate rules, no validation rules, no
  OrderItem, no multi-currency.
"""

from __future__ import annotations

import base64
import copy
import hashlib
import hmac
import json
import re
import secrets
from dataclasses import dataclass
from dataclasses import field as dataclass_field
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

from .server import Abort, Emulator, Knobs, Reply, Request, dumps

_CHECKSUM = "ABCDEFGHIJKLMNOPQRSTUVWXYZ012345"
_BASE62 = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
ERROR_CODES = {400: "BAD_REQUEST", 401: "INVALID_SESSION_ID", 403: "REQUEST_LIMIT_EXCEEDED",
               404: "NOT_FOUND", 500: "UNKNOWN_EXCEPTION", 503: "SERVER_UNAVAILABLE"}
SESSION_EXPIRED = [{"message": "Session expired or invalid", "errorCode": "INVALID_SESSION_ID"}]
QUERY = re.compile(r"^\s*SELECT\s+(?P<fields>[\w\s,]+?)\s+FROM\s+Organization"
                   r"(?:\s+LIMIT\s+(?P<limit>\d+))?\s*$", re.IGNORECASE)
ORG_QUERY = re.compile(r"^\s*SELECT\s+[\w\s,]+?\s+FROM\s+Organization\b", re.IGNORECASE)
ORG_FIELDS = {"id": "Id", "name": "Name"}
NOT_FOUND = "The requested resource does not exist"
MAX_COLLECTION = 200    # records per sObject Collections call (§5)
MAX_COMPOSITE = 25      # subrequests per composite call (§5.1)
QUERY_BATCH = 2000      # default SOQL batch (§6)
CURSOR_TTL = 15 * 60    # seconds an idle query locator lives
READ_ONLY = ("Unable to create/update fields: {}. Please check the security settings of this "
             "field and verify that it is read/write for your current user profile or "
             "permission set.")
ROLLED_BACK = {"statusCode": "ALL_OR_NONE_OPERATION_ROLLED_BACK",
               "message": "Record rolled back because not all records were valid and the "
                          "request was using AllOrNone header", "fields": []}
TEXT_TYPES = frozenset({"string", "textarea", "picklist", "phone", "url", "email"})
NUMBER_TYPES = frozenset({"currency", "double", "percent", "int"})
# stage -> (probability, forecast category, IsClosed, IsWon): the standard values of §8.2
STAGES = {"Prospecting": (10, "Pipeline", False, False),
          "Qualification": (10, "Pipeline", False, False),
          "Needs Analysis": (20, "Pipeline", False, False),
          "Value Proposition": (50, "Pipeline", False, False),
          "Id. Decision Makers": (60, "Pipeline", False, False),
          "Perception Analysis": (70, "Pipeline", False, False),
          "Proposal/Price Quote": (75, "Pipeline", False, False),
          "Negotiation/Review": (90, "Pipeline", False, False),
          "Closed Won": (100, "Closed", True, True),
          "Closed Lost": (0, "Omitted", True, False)}
ORDER_STATUSES = {"Draft": "Draft", "Activated": "Activated"}  # Status -> StatusCode


def sf18(id15: str) -> str:
    """The 18-character, case-insensitive form of a 15-character Salesforce id."""
    suffix = ""
    for start in (0, 5, 10):
        bits = sum(1 << n for n, c in enumerate(id15[start:start + 5]) if "A" <= c <= "Z")
        suffix += _CHECKSUM[bits]
    return id15 + suffix


def canonical_id(text: Any) -> str | None:
    """The 18-character id meant by a 15- or 18-character id (any case for the latter), or
    None when `text` is no well-formed id."""
    if not isinstance(text, str) or not re.fullmatch(r"[A-Za-z0-9]{15}(?:[A-Za-z0-9]{3})?",
                                                       text):
        return None
    if len(text) == 15:
        return sf18(text)
    chars = list(text[:15])
    for chunk, check in enumerate(text[15:].upper()):
        if check not in _CHECKSUM:
            return None
        bits = _CHECKSUM.index(check)
        for n in range(5):
            pos = chunk * 5 + n
            chars[pos] = chars[pos].upper() if bits >> n & 1 else chars[pos].lower()
    full = sf18("".join(chars))
    return full if full[15:] == text[15:].upper() else None


def api_error(status: int, code: str, message: str) -> Abort:
    return Abort(Reply(status, [{"message": message, "errorCode": code}]))


def oauth_error(error: str, description: str) -> Abort:
    return Abort(Reply(400, {"error": error, "error_description": description}))


def release(version: int) -> str:
    """The release name of an API version: 65 is Winter '26, 66 Spring '26, 67 Summer '26."""
    index = version - 65
    return f"{('Winter', 'Spring', 'Summer')[index % 3]} '{26 + index // 3:02d}"


class Fail(Exception):
    """A record-level failure: `[{"message","errorCode","fields"}]` on single-record calls,
    `{"statusCode","message","fields"}` inside collections."""

    def __init__(self, code: str, message: str, fields: list[str] | None = None,
                 status: int = 400):
        super().__init__(f"{code}: {message}")
        self.code, self.message, self.fields, self.status = code, message, fields, status

    def abort(self) -> Abort:
        error: dict[str, Any] = {"message": self.message, "errorCode": self.code}
        if self.fields is not None:
            error["fields"] = self.fields
        return Abort(Reply(self.status, [error]))

    def item(self) -> dict[str, Any]:
        return {"statusCode": self.code, "message": self.message, "fields": self.fields or []}


class Multiple(Exception):
    """More than one record carries an external id value (HTTP 300)."""

    def __init__(self, ids: list[str]):
        super().__init__(ids)
        self.ids = ids


@dataclass
class Field:
    name: str
    type: str = "string"
    label: str = ""
    length: int = 0
    nillable: bool = True
    createable: bool = True
    updateable: bool = True
    defaulted: bool = False
    external_id: bool = False
    unique: bool = False
    case_sensitive: bool = False
    picklist: tuple[str, ...] = ()
    restricted: bool = False
    reference_to: tuple[str, ...] = ()
    custom: bool = False

    def __post_init__(self) -> None:
        self.custom = self.name.endswith("__c")
        if not self.label:
            base = self.name[:-3] if self.custom else self.name
            if self.type == "reference" and base.endswith("Id") and not self.custom:
                base = base[:-2]
            words = re.sub(r"(?<=[a-z0-9])(?=[A-Z])", " ", base.replace("_", " "))
            self.label = " ".join(words.split()) or self.name
        if not self.length and self.type in TEXT_TYPES:
            self.length = {"phone": 40, "textarea": 32000}.get(self.type, 255)
        if self.type in ("id", "reference"):
            self.length = 18

    @property
    def required(self) -> bool:
        """What a client must send on create (describe: createable, not nillable, not
        defaulted on create)."""
        return self.createable and not self.nillable and not self.defaulted

    @property
    def relationship(self) -> str | None:
        if self.type != "reference":
            return None
        if self.custom:
            return self.name[:-3] + "__r"
        return self.name[:-2] if self.name.endswith("Id") else None

    @property
    def soap_type(self) -> str:
        return {"id": "tns:ID", "reference": "tns:ID", "boolean": "xsd:boolean",
                "currency": "xsd:double", "double": "xsd:double", "percent": "xsd:double",
                "int": "xsd:int", "date": "xsd:date", "datetime": "xsd:dateTime",
                "address": "urn:address"}.get(self.type, "xsd:string")

    def describe(self) -> dict[str, Any]:
        numeric = self.type in ("currency", "double", "percent")
        return {
            "name": self.name, "label": self.label, "type": self.type, "soapType": self.soap_type,
            "length": self.length, "precision": 18 if numeric else 0,
            "scale": 2 if numeric else 0, "digits": 9 if self.type == "int" else 0,
            "externalId": self.external_id, "unique": self.unique,
            "caseSensitive": self.case_sensitive, "nillable": self.nillable,
            "createable": self.createable, "updateable": self.updateable,
            "defaultedOnCreate": self.defaulted, "custom": self.custom,
            "idLookup": self.type == "id" or self.external_id,
            "filterable": True, "sortable": self.type not in ("textarea", "address"),
            "calculated": False, "autoNumber": self.name == "OrderNumber",
            "restrictedPicklist": self.restricted,
            "picklistValues": [{"active": True, "defaultValue": False, "label": v,
                                "validFor": None, "value": v} for v in self.picklist],
            "referenceTo": list(self.reference_to), "relationshipName": self.relationship,
        }


@dataclass
class SObject:
    name: str
    prefix: str
    label: str
    plural: str
    fields: dict[str, Field]
    createable: bool = True
    deletable: bool = True

    @property
    def custom(self) -> bool:
        return self.name.endswith("__c")

    def field(self, name: str) -> Field | None:
        wanted = name.lower()
        for f in self.fields.values():
            if f.name.lower() == wanted:
                return f
        return None

    def relation(self, name: str) -> Field | None:
        wanted = name.lower()
        for f in self.fields.values():
            if f.relationship and f.relationship.lower() == wanted:
                return f
        return None


def _ro(name: str, type_: str = "string", **kw: Any) -> Field:
    return Field(name, type_, createable=False, updateable=False, defaulted=True, **kw)


def _address(prefix: str) -> list[Field]:
    return [Field(f"{prefix}Street", "textarea", length=255),
            Field(f"{prefix}City", length=40), Field(f"{prefix}State", length=80),
            Field(f"{prefix}PostalCode", length=20), Field(f"{prefix}Country", length=80),
            _ro(f"{prefix}Address", "address")]


def _system() -> list[Field]:
    return [_ro("Id", "id", nillable=False),
            _ro("IsDeleted", "boolean", nillable=False),
            Field("OwnerId", "reference", nillable=False, defaulted=True,
                  reference_to=("User",)),
            _ro("CreatedDate", "datetime", nillable=False),
            _ro("CreatedById", "reference", nillable=False, reference_to=("User",)),
            _ro("LastModifiedDate", "datetime", nillable=False),
            _ro("LastModifiedById", "reference", nillable=False, reference_to=("User",)),
            _ro("SystemModstamp", "datetime", nillable=False)]


def _external(name: str) -> Field:
    return Field(name, external_id=True, unique=True, length=255)


def standard_objects() -> dict[str, SObject]:
    """The seed schema of §8 and §11."""
    def make(name: str, prefix: str, label: str, plural: str, fields: list[Field],
             **kw: Any) -> SObject:
        return SObject(name, prefix, label, plural, {f.name: f for f in _system() + fields},
                       **kw)

    account = make("Account", "001", "Account", "Accounts", [
        Field("Name", nillable=False), Field("AccountNumber", length=40),
        Field("Type", "picklist", picklist=(
            "Prospect", "Customer - Direct", "Customer - Channel",
            "Channel Partner / Reseller", "Installation Partner", "Technology Partner",
            "Other")),
        Field("ParentId", "reference", reference_to=("Account",)),
        *_address("Billing"), *_address("Shipping"),
        Field("Phone", "phone"), Field("Fax", "phone"), Field("Website", "url"),
        Field("Industry", "picklist", picklist=(
            "Agriculture", "Banking", "Construction", "Consulting", "Education",
            "Electronics", "Energy", "Engineering", "Finance", "Healthcare", "Manufacturing",
            "Retail", "Technology", "Other")),
        Field("AnnualRevenue", "currency"), Field("NumberOfEmployees", "int"),
        Field("Description", "textarea"), _external("FreshBooks_Client_Id__c")])
    opportunity = make("Opportunity", "006", "Opportunity", "Opportunities", [
        Field("AccountId", "reference", reference_to=("Account",)),
        Field("Name", nillable=False, length=120), Field("Description", "textarea"),
        Field("StageName", "picklist", nillable=False, picklist=tuple(STAGES),
              restricted=True),
        Field("Amount", "currency"), Field("Probability", "percent", defaulted=True),
        Field("CloseDate", "date", nillable=False),
        Field("Type", "picklist", picklist=(
            "New Customer", "Existing Customer - Upgrade", "Existing Customer - Replacement",
            "Existing Customer - Downgrade")),
        Field("LeadSource", "picklist", picklist=(
            "Web", "Phone Inquiry", "Partner Referral", "Purchased List", "Other")),
        _ro("IsClosed", "boolean", nillable=False), _ro("IsWon", "boolean", nillable=False),
        Field("ForecastCategoryName", "picklist", defaulted=True, restricted=True,
              picklist=("Omitted", "Pipeline", "Best Case", "Commit", "Closed")),
        Field("Pricebook2Id", "reference", reference_to=("Pricebook2",)),
        _external("FreshBooks_Invoice_Id__c")])
    order = make("Order", "801", "Order", "Orders", [
        Field("AccountId", "reference", nillable=False, reference_to=("Account",)),
        Field("Pricebook2Id", "reference", reference_to=("Pricebook2",)),
        Field("ContractId", "reference", reference_to=("Contract",)),
        Field("EffectiveDate", "date", nillable=False),
        Field("Status", "picklist", nillable=False, picklist=tuple(ORDER_STATUSES),
              restricted=True),
        _ro("StatusCode", "picklist", nillable=False, picklist=("Draft", "Activated")),
        _ro("OrderNumber", nillable=False, length=30), _ro("TotalAmount", "currency"),
        Field("Description", "textarea"), *_address("Billing"), *_address("Shipping")])
    invoice_c = make("FreshBooks_Invoice__c", "a01", "FreshBooks Invoice",
                     "FreshBooks Invoices", [
        Field("Name", nillable=False, defaulted=True, length=80),
        _external("FreshBooks_Invoice_Id__c"),
        Field("Account__c", "reference", reference_to=("Account",)),
        Field("Opportunity__c", "reference", reference_to=("Opportunity",)),
        Field("Invoice_Number__c", length=80), Field("Invoice_Date__c", "date"),
        Field("Due_Date__c", "date"), Field("Amount__c", "currency"),
        Field("Amount_Outstanding__c", "currency"), Field("Currency__c", length=3),
        Field("Status__c", "picklist", picklist=(
            "Draft", "Sent", "Viewed", "Partial", "Paid", "Overdue", "Disputed"))])
    invoice = make("Invoice", "3tt", "Invoice", "Invoices", [
        _ro("DocumentNumber"), _ro("BillingAccountId", "reference", reference_to=("Account",)),
        _ro("InvoiceDate", "date"), _ro("DueDate", "date"), _ro("Balance", "currency"),
        _ro("TotalAmount", "currency"), _ro("TotalAmountWithTax", "currency"),
        Field("Status", "picklist", picklist=("Draft", "Posted", "Canceled")),
        Field("Description", "textarea")], createable=False, deletable=False)
    return {o.name: o for o in (account, opportunity, order, invoice_c, invoice)}


# -- SOQL ---------------------------------------------------------------------------------
_TOKEN = re.compile(r"""\s*(?:
    (?P<str>'(?:[^'\\]|\\.)*')
  | (?P<dt>\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(?:\.\d+)?(?:Z|[+-]\d\d:?\d\d))
  | (?P<date>\d{4}-\d\d-\d\d)
  | (?P<num>-?\d+(?:\.\d+)?)
  | (?P<op><>|!=|<=|>=|=|<|>)
  | (?P<punct>[(),])
  | (?P<name>[A-Za-z_][\w.]*)
)""", re.VERBOSE)
_UNESCAPE = re.compile(r"\\(.)")


def malformed(message: str) -> Fail:
    return Fail("MALFORMED_QUERY", message)


@dataclass
class Soql:
    obj: str
    fields: list[str]                    # as written; empty for COUNT()
    count: bool = False
    where: list[tuple[str, str, Any]] = dataclass_field(default_factory=list)
    order: list[tuple[str, bool, bool]] = dataclass_field(default_factory=list)
    limit: int | None = None
    offset: int = 0


def parse_soql(q: str) -> Soql:
    """SELECT a, b.c | COUNT() FROM Obj [WHERE cond AND cond ...] [ORDER BY f [ASC|DESC]
    [NULLS FIRST|LAST], ...] [LIMIT n] [OFFSET n]. A condition is `f op literal`,
    `f [NOT] IN (literal, ...)` or `f LIKE 'pattern'`; literals are 'strings', numbers,
    dates, datetimes, true, false and null. Literals come back as (kind, value)."""
    tokens: list[tuple[str, str]] = []
    text, pos = q.strip(), 0
    while pos < len(text):
        m = _TOKEN.match(text, pos)
        if not m or m.end() == pos:
            raise malformed(f"unexpected token: '{text[pos:pos + 20].split()[0]}'")
        kind = m.lastgroup or ""
        tokens.append((kind, m.group(kind)))
        pos = m.end()
    at = 0

    def peek(word: str | None = None) -> bool:
        if at >= len(tokens):
            return False
        return word is None or tokens[at][1].upper() == word

    def take(word: str | None = None, kind: str | None = None) -> str:
        nonlocal at
        if at >= len(tokens):
            raise malformed(f"unexpected end of query, expected {word or kind}")
        got_kind, got = tokens[at]
        if (word and got.upper() != word) or (kind and got_kind != kind):
            raise malformed(f"unexpected token: '{got}'")
        at += 1
        return got

    def literal() -> tuple[str, Any]:
        kind, value = tokens[at] if at < len(tokens) else ("", "")
        take()
        if kind == "str":
            return "str", _UNESCAPE.sub(r"\1", value[1:-1])
        if kind == "num":
            return "num", Decimal(value)
        if kind in ("date", "dt"):
            return kind, value
        if kind == "name" and value.lower() in ("true", "false"):
            return "bool", value.lower() == "true"
        if kind == "name" and value.lower() == "null":
            return "null", None
        raise malformed(f"unexpected token: '{value}'")

    take("SELECT")
    fields: list[str] = []
    count = False
    if peek("COUNT"):
        take("COUNT"), take("("), take(")")
        count = True
    else:
        fields.append(take(kind="name"))
        while peek(","):
            take(",")
            fields.append(take(kind="name"))
    take("FROM")
    query = Soql(take(kind="name"), fields, count)
    if peek("WHERE"):
        take("WHERE")
        while True:
            name = take(kind="name")
            if peek("NOT") or peek("IN"):
                negate = bool(peek("NOT")) and bool(take("NOT"))
                take("IN"), take("(")
                values = [literal()]
                while peek(","):
                    take(",")
                    values.append(literal())
                take(")")
                query.where.append((name, "NOT IN" if negate else "IN", values))
            elif peek("LIKE"):
                take("LIKE")
                query.where.append((name, "LIKE", literal()))
            else:
                query.where.append((name, take(kind="op"), literal()))
            if peek("OR"):
                raise malformed("the sandbox understands only AND between conditions")
            if not peek("AND"):
                break
            take("AND")
    if peek("ORDER"):
        take("ORDER"), take("BY")
        while True:
            name = take(kind="name")
            desc = bool(peek("DESC")) and bool(take("DESC"))
            if not desc and peek("ASC"):
                take("ASC")
            nulls_first = not desc
            if peek("NULLS"):
                take("NULLS")
                nulls_first = take().upper() == "FIRST"
            query.order.append((name, desc, nulls_first))
            if not peek(","):
                break
            take(",")
    if peek("LIMIT"):
        take("LIMIT")
        query.limit = int(take(kind="num"))
    if peek("OFFSET"):
        take("OFFSET")
        query.offset = int(take(kind="num"))
    if at < len(tokens):
        raise malformed(f"unexpected token: '{tokens[at][1]}'")
    return query


def format_datetime(moment: datetime) -> str:
    """2026-03-01T09:30:00.000+0000, as Salesforce writes datetimes (§3)."""
    moment = moment.astimezone(UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}+0000"


def parse_datetime(text: str) -> str | None:
    try:
        moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return format_datetime(moment)


def _valid_date(text: str) -> bool:
    if not re.fullmatch(r"\d{4}-\d\d-\d\d", text):
        return False
    try:
        date.fromisoformat(text)
    except ValueError:
        return False
    return True


def _parse_error(kind: str, value: Any) -> Fail:
    token = {bool: "VALUE_TRUE" if value else "VALUE_FALSE", str: "VALUE_STRING",
             dict: "START_OBJECT", list: "START_ARRAY"}.get(type(value), "VALUE_NUMBER")
    return Fail("JSON_PARSER_ERROR", f"Cannot deserialize instance of {kind} from {token} "
                f"value {value!r} or request may be missing a required field")


def _plain(value: Any) -> Any:
    """Test-helper values as JSON would carry them: floats -> Decimal, dates -> text."""
    if isinstance(value, float):
        return Decimal(str(value))
    if isinstance(value, datetime):
        return format_datetime(value)
    if isinstance(value, date):
        return value.isoformat()
    return value


def _key(f: Field, value: Any) -> Any:
    """The comparison form of a value: text casefolded unless the field is case-sensitive."""
    if value is None:
        return None
    if f.type in TEXT_TYPES and not f.case_sensitive:
        return str(value).casefold()
    return value


def _url_value(f: Field, value: str) -> Any:
    """An external id value from a URL path, typed for its field."""
    if f.type in NUMBER_TYPES:
        try:
            return Decimal(value)
        except ArithmeticError:
            return value
    return value


def _literal(f: Field, literal: tuple[str, Any]) -> Any:
    """A SOQL literal checked against the field's type, in the stored form."""
    kind, value = literal
    if kind == "null":
        return None
    expect = {"id": "str", "reference": "str", "boolean": "bool", "date": "date",
              "datetime": "dt", "currency": "num", "double": "num", "percent": "num",
              "int": "num"}.get(f.type, "str")
    if kind != expect:
        quoted = "should be enclosed in quotes" if expect == "str" else \
            "should not be enclosed in quotes"
        raise Fail("INVALID_FIELD", f"value of filter criterion for field '{f.name}' must be "
                   f"of type {f.type} and {quoted}")
    if f.type in ("id", "reference"):
        rid = canonical_id(value)
        if rid is None:
            raise Fail("INVALID_QUERY_FILTER_OPERATOR", f"invalid ID field: {value}")
        return rid
    if kind == "dt":
        return parse_datetime(value)
    return value


def _test(f: Field, op: str, value: Any, operand: Any) -> bool:
    if op == "LIKE":
        return value is not None and bool(operand.fullmatch(str(value)))
    if op in ("IN", "NOT IN"):
        hit = any(_key(f, value) == _key(f, v) for v in operand if v is not None) \
            or (value is None and None in operand)
        return hit if op == "IN" else not hit
    a, b = _key(f, value), _key(f, operand)
    if op == "=":
        return a == b
    if op in ("!=", "<>"):
        return a != b
    if a is None or b is None:
        return False
    return {"<": a < b, ">": a > b, "<=": a <= b, ">=": a >= b}[op]


def _batch_size(header: str | None) -> int:
    m = re.search(r"batchSize\s*=\s*(\d+)", header or "", re.IGNORECASE)
    return min(max(int(m.group(1)), 200), QUERY_BATCH) if m else QUERY_BATCH


_REFERENCE = re.compile(r"@\{([\w-]+)\.([^}]+)\}")


def _substitute(value: Any, refs: dict[str, Any]) -> Any:
    """Replace `@{ref.path}` in composite subrequests (KeyError for an unknown one)."""
    if isinstance(value, dict):
        return {k: _substitute(v, refs) for k, v in value.items()}
    if isinstance(value, list):
        return [_substitute(v, refs) for v in value]
    if not isinstance(value, str):
        return value

    def lookup(m: re.Match[str]) -> Any:
        node = refs.get(m.group(1))
        for part in re.findall(r"[^.\[\]]+", m.group(2)):
            if isinstance(node, list) and part.isdigit() and int(part) < len(node):
                node = node[int(part)]
            elif isinstance(node, dict) and part in node:
                node = node[part]
            else:
                raise KeyError(m.group(0))
        return node

    whole = _REFERENCE.fullmatch(value)
    if whole:
        return lookup(whole)
    return _REFERENCE.sub(lambda m: str(lookup(m)), value)


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
        self.route("GET", "/services/data/{version}/queryAll", self._query_all)
        self.route("GET", "/services/data/{version}/query/{locator}", self._more)
        self.route("GET", "/services/data/{version}/queryAll/{locator}", self._more_all)
        self.route("GET", "/services/data/{version}/limits", self._limits)
        self.route("GET", "/services/oauth2/userinfo", self._userinfo)
        self.route("GET", "/id/{org}/{user}", self._identity)

        # the data side (§3-6)
        self._schema = standard_objects()
        self._records: dict[str, dict[str, dict[str, Any]]] = {n: {} for n in self._schema}
        self._id_counter: dict[str, int] = {}
        self._order_number = 99
        self._last_stamp: datetime | None = None
        self._cursors: dict[str, dict[str, Any]] = {}
        self._cursor_seq = 0
        data = "/services/data/{version}"
        sobjects = data + "/sobjects/{object}"
        self.route("GET", data + "/sobjects", self._global_describe)
        self.route("GET", sobjects, self._sobject_info)
        self.route("POST", sobjects, self._create)
        self.route("GET", sobjects + "/describe", self._describe)
        self.route("GET", sobjects + "/{id}", self._read)
        self.route("PATCH", sobjects + "/{id}", self._update)
        self.route("DELETE", sobjects + "/{id}", self._remove)
        self.route("POST", sobjects + "/{id}", self._create_by_id)
        self.route("GET", sobjects + "/{field}/{value}", self._read_by_external)
        self.route("PATCH", sobjects + "/{field}/{value}", self._upsert_one)
        self.route("DELETE", sobjects + "/{field}/{value}", self._delete_by_external)
        collections = data + "/composite/sobjects"
        self.route("POST", collections, self._collection_create)
        self.route("PATCH", collections, self._collection_update)
        self.route("DELETE", collections, self._collection_delete)
        self.route("GET", collections + "/{object}", self._collection_read)
        self.route("PATCH", collections + "/{object}/{field}", self._collection_upsert)
        self.route("POST", data + "/composite", self._composite)

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

    def _query(self, req: Request, include_deleted: bool = False) -> Reply:
        version = self._version(req)
        q = req.arg("q")
        if not q:
            raise api_error(400, "MALFORMED_QUERY", "A query string has to be specified")
        if not ORG_QUERY.search(q):
            return self._soql(req, version, q, include_deleted)
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

    # -- data: schema and test helpers ------------------------------------------------------
    def add_field(self, object: str, name: str, external_id: bool = False, *,  # noqa: A002
                  type: str = "string", unique: bool | None = None,  # noqa: A002
                  required: bool = False, picklist: tuple[str, ...] | list[str] = (),
                  restricted: bool = False, case_sensitive: bool = False,
                  reference_to: str | None = None, length: int = 0) -> None:
        """Add a field to an object (existing records get null). An external id is unique
        unless `unique=False`."""
        with self.lock:
            sobject = self._sobject(object)
            if sobject.field(name) is not None:
                raise ValueError(f"{sobject.name} already has a field {name}")
            sobject.fields[name] = Field(
                name, type, length=length, nillable=not required, external_id=external_id,
                unique=external_id if unique is None else unique,
                case_sensitive=case_sensitive, picklist=tuple(picklist), restricted=restricted,
                reference_to=(reference_to,) if reference_to else ())
            for record in self._records[sobject.name].values():
                record.setdefault(name, None)

    def remove_field(self, object: str, name: str) -> None:  # noqa: A002
        """Delete a field and its values (a client must then see it missing)."""
        with self.lock:
            sobject = self._sobject(object)
            found = sobject.field(name)
            if found is None or found.name in ("Id", "Name"):
                raise ValueError(f"{sobject.name} has no removable field {name}")
            del sobject.fields[found.name]
            for record in self._records[sobject.name].values():
                record.pop(found.name, None)

    def rows(self, object: str, include_deleted: bool = False  # noqa: A002
             ) -> list[dict[str, Any]]:
        """Stored records of an object, oldest first, as plain dicts (Decimal numbers,
        dates and datetimes as Salesforce writes them)."""
        with self.lock:
            name = self._sobject(object).name
            return [dict(r) for r in self._records[name].values()
                    if include_deleted or not r["IsDeleted"]]

    def add_account(self, name: str, **fields: Any) -> dict[str, Any]:
        return self._seed("Account", {"Name": name, **fields})

    def add_opportunity(self, account_id: str | None, name: str, stage: str,
                        close_date: str | date, amount: Any = None,
                        **fields: Any) -> dict[str, Any]:
        return self._seed("Opportunity", {"AccountId": account_id, "Name": name,
                                          "StageName": stage, "CloseDate": close_date,
                                          "Amount": amount, **fields})

    def add_order(self, account_id: str, effective_date: str | date, status: str = "Draft",
                  **fields: Any) -> dict[str, Any]:
        return self._seed("Order", {"AccountId": account_id, "EffectiveDate": effective_date,
                                    "Status": status, **fields})

    def add_record(self, object: str, **fields: Any) -> dict[str, Any]:  # noqa: A002
        return self._seed(object, fields)

    def _seed(self, obj: str, fields: dict[str, Any]) -> dict[str, Any]:
        body = {k: _plain(v) for k, v in fields.items()}
        with self.lock:
            try:
                rid = self._save(self._sobject(obj).name, body, seeding=True)
            except Fail as fail:
                raise ValueError(str(fail)) from None
            return dict(self._records[self._sobject(obj).name][rid])

    def _sobject(self, name: str) -> SObject:
        found = self._object(name)
        if found is None:
            raise ValueError(f"this org has no sObject {name}")
        return found

    def _object(self, name: str) -> SObject | None:
        wanted = name.lower()
        for sobject in self._schema.values():
            if sobject.name.lower() == wanted:
                return sobject
        return None

    # -- data: the write path ---------------------------------------------------------------
    def _stamp(self) -> str:
        """Now, as Salesforce writes datetimes, strictly after the previous stamp."""
        now = self.clock.now().astimezone(UTC)
        now = now.replace(microsecond=now.microsecond // 1000 * 1000)
        if self._last_stamp is not None and now <= self._last_stamp:
            now = self._last_stamp + timedelta(milliseconds=1)
        self._last_stamp = now
        return format_datetime(now)

    def _new_id(self, sobject: SObject) -> str:
        n = self._id_counter.get(sobject.prefix, 0) + 1
        self._id_counter[sobject.prefix] = n
        digits = ""
        for _ in range(10):
            n, rest = divmod(n, 62)
            digits = _BASE62[rest] + digits
        return sf18(f"{sobject.prefix}SB{digits}")

    def _locate(self, text: Any) -> tuple[SObject, dict[str, Any]] | None:
        rid = canonical_id(text)
        if rid is None:
            return None
        for sobject in self._schema.values():
            if rid.startswith(sobject.prefix) and rid in self._records[sobject.name]:
                return sobject, self._records[sobject.name][rid]
        return None

    def _coerce(self, f: Field, value: Any) -> Any:
        if value is None:
            return None
        kind = f.type
        if kind in ("id", "reference"):
            rid = canonical_id(value)
            if rid is None:
                raise Fail("MALFORMED_ID", f"{f.label} ID: id value of incorrect type: {value}",
                           [f.name])
            return rid
        if kind in TEXT_TYPES:
            if isinstance(value, bool) or not isinstance(value, str | int | Decimal):
                raise _parse_error(kind, value)
            text = value if isinstance(value, str) else str(value)
            if len(text) > f.length:
                raise Fail("STRING_TOO_LONG", f"{f.label}: data value too large: "
                           f"{text[:40]} (max length={f.length})", [f.name])
            return text or None
        if kind in NUMBER_TYPES:
            if isinstance(value, bool) or not isinstance(value, int | Decimal):
                raise _parse_error(kind, value)
            if kind == "int":
                if Decimal(value) != Decimal(value).to_integral_value():
                    raise _parse_error(kind, value)
                return int(value)
            return Decimal(value)
        if kind == "boolean":
            if not isinstance(value, bool):
                raise _parse_error(kind, value)
            return value
        if kind == "date":
            if not isinstance(value, str) or not _valid_date(value):
                raise Fail("JSON_PARSER_ERROR", f"Cannot deserialize value of type date from "
                           f"String {value!r}: expected format yyyy-MM-dd", [f.name])
            return value
        if kind == "datetime":
            stamp = parse_datetime(value) if isinstance(value, str) else None
            if stamp is None:
                raise _parse_error(kind, value)
            return stamp
        raise _parse_error(kind, value)

    def _resolve_foreign(self, f: Field, value: dict[str, Any]) -> str:
        """A lookup given by the parent's external id: `"Account": {"Ext__c": "C-1"}`."""
        target = self._object(f.reference_to[0]) if f.reference_to else None
        keys = [k for k in value if k != "attributes"]
        if target is None or len(keys) != 1:
            raise Fail("INVALID_FIELD", f"{f.relationship}: a foreign key reference needs "
                       "exactly one external id field", [])
        ext = target.field(keys[0])
        if ext is None or not (ext.external_id or ext.name == "Id"):
            raise Fail("INVALID_FIELD", f"Field name provided, {keys[0]} is not an External "
                       f"ID or indexed field for {target.name}", [])
        found = self._match(target, ext, value[keys[0]])
        if len(found) != 1:
            raise Fail("INVALID_FIELD", f"Foreign key external ID: {value[keys[0]]} "
                       + ("not found" if not found else "matched more than one record")
                       + f" for field {ext.name} in entity {target.name}", [])
        return found[0]

    def _match(self, sobject: SObject, f: Field, value: Any) -> list[str]:
        """Ids of the live records whose field `f` equals `value` (text case-insensitive
        unless the field is case-sensitive)."""
        if f.name == "Id":
            rid = canonical_id(value)
            record = self._records[sobject.name].get(rid or "")
            return [rid] if rid and record and not record["IsDeleted"] else []
        key = _key(f, value)
        if key is None:
            return []
        return [rid for rid, r in self._records[sobject.name].items()
                if not r["IsDeleted"] and _key(f, r.get(f.name)) == key]

    def _save(self, obj: str, body: dict[str, Any], rid: str | None = None, *,
              seeding: bool = False) -> str:
        """Validate and write one record (insert when `rid` is None); the record's id.
        Raises Fail. Call with the lock held."""
        sobject = self._schema[obj]
        insert = rid is None
        if not sobject.createable and not seeding and insert:
            raise Fail("INVALID_TYPE", f"entity type {obj} does not support create")
        current = None if insert else self._records[obj][rid or ""]
        changes: dict[str, Any] = {}
        unknown, readonly, foreign = [], [], {}
        for key, value in body.items():
            if key == "attributes":
                continue
            f = sobject.field(key)
            if f is None:
                rel = sobject.relation(key)
                if rel is not None and isinstance(value, dict):
                    foreign[rel.name] = value
                else:
                    unknown.append(key)
                continue
            allowed = f.createable if insert else f.updateable
            if seeding and f.type != "address" and f.name != "Id":
                allowed = True
            if not allowed or f.type == "address":
                readonly.append(f.name)
                continue
            changes[f.name] = value
        if unknown:
            raise Fail("INVALID_FIELD", f"No such column '{unknown[0]}' on sobject of type "
                       f"{obj}", unknown)
        if readonly:
            raise Fail("INVALID_FIELD_FOR_INSERT_UPDATE", READ_ONLY.format(", ".join(readonly)),
                       readonly)
        for name, value in changes.items():
            changes[name] = self._coerce(sobject.fields[name], value)
        for name, value in foreign.items():
            changes[name] = self._resolve_foreign(sobject.fields[name], value)
        merged = self._defaults(sobject) if insert else dict(current or {})
        merged.update(changes)
        missing = [f.name for f in sobject.fields.values()
                   if f.required and merged.get(f.name) is None]
        if missing:
            raise Fail("REQUIRED_FIELD_MISSING",
                       f"Required fields are missing: [{', '.join(missing)}]", missing)
        for name, value in changes.items():
            f = sobject.fields[name]
            if f.restricted and value is not None and value not in f.picklist:
                raise Fail("INVALID_OR_NULL_FOR_RESTRICTED_PICKLIST",
                           f"{f.label}: bad value for restricted picklist field: {value}",
                           [name])
        self._rules(sobject, merged, changes, current)
        for name, value in changes.items():
            f = sobject.fields[name]
            if f.type == "reference" and value is not None:
                self._check_reference(f, value)
        for f in sobject.fields.values():
            if f.unique and f.name in changes and changes[f.name] is not None:
                key = _key(f, changes[f.name])
                for other_id, other in self._records[obj].items():
                    if other_id != rid and not other["IsDeleted"] and \
                            _key(f, other.get(f.name)) == key:
                        raise Fail("DUPLICATE_VALUE", f"duplicate value found: {f.name} "
                                   f"duplicates value on record with id: {other_id[:15]}", [])
        stamp = self._stamp()
        if insert:
            rid = self._new_id(sobject)
            merged.update(Id=rid, IsDeleted=False, CreatedDate=stamp,
                          CreatedById=self.user_id)
            if sobject.custom and merged.get("Name") is None:
                merged["Name"] = rid
            if obj == "Order":
                self._order_number += 1
                merged["OrderNumber"] = f"{self._order_number:08d}"
        merged.update(LastModifiedDate=stamp, SystemModstamp=stamp,
                      LastModifiedById=self.user_id)
        self._records[obj][rid or ""] = merged
        return rid or ""

    def _defaults(self, sobject: SObject) -> dict[str, Any]:
        record: dict[str, Any] = dict.fromkeys(sobject.fields)
        record.update(IsDeleted=False, OwnerId=self.user_id)
        if sobject.name == "Order":
            record["TotalAmount"] = Decimal("0.00")
        return record

    def _rules(self, sobject: SObject, merged: dict[str, Any], changes: dict[str, Any],
               current: dict[str, Any] | None) -> None:
        """Derived fields and object rules (§8.2, §8.3)."""
        if sobject.name == "Opportunity" and "StageName" in changes:
            probability, forecast, closed, won = STAGES[merged["StageName"]]
            if "Probability" not in changes:
                merged["Probability"] = Decimal(probability)
            if "ForecastCategoryName" not in changes:
                merged["ForecastCategoryName"] = forecast
            merged["IsClosed"], merged["IsWon"] = closed, won
        if sobject.name == "Order":
            if current is None and merged["Status"] != "Draft":
                raise Fail("FIELD_INTEGRITY_EXCEPTION", "Choose a valid order status and save "
                           "your changes. Only an order with a Draft status can be created.",
                           ["Status"])
            if current is not None and current["StatusCode"] != "Draft" and \
                    merged["AccountId"] != current["AccountId"]:
                raise Fail("FIELD_INTEGRITY_EXCEPTION", "Account ID: You can't change the "
                           "account of an order that isn't in a Draft status.", ["AccountId"])
            merged["StatusCode"] = ORDER_STATUSES[merged["Status"]]

    def _check_reference(self, f: Field, rid: str) -> None:
        if "User" in f.reference_to:
            if rid != self.user_id:
                raise Fail("INVALID_CROSS_REFERENCE_KEY", "invalid cross reference id", [f.name])
            return
        targets = [self._schema[t] for t in f.reference_to if t in self._schema]
        if not targets:
            return  # Pricebook2, Contract: not emulated, any well-formed id passes
        for target in targets:
            record = self._records[target.name].get(rid)
            if record is not None:
                if record["IsDeleted"]:
                    raise Fail("ENTITY_IS_DELETED", "entity is deleted", [f.name])
                return
        raise Fail("INVALID_CROSS_REFERENCE_KEY", "invalid cross reference id", [f.name])

    def _delete(self, sobject: SObject, rid: str) -> None:
        """Move a record to the recycle bin: Account deletes cascade to its Opportunities,
        are refused while Orders point at it, and clear lookups elsewhere."""
        if not sobject.deletable:
            raise Fail("INVALID_TYPE", f"entity type {sobject.name} does not support delete")
        record = self._records[sobject.name][rid]
        if record["IsDeleted"]:
            raise Fail("ENTITY_IS_DELETED", "entity is deleted", status=404)
        if sobject.name == "Account":
            orders = [o["OrderNumber"] for o in self._records["Order"].values()
                      if not o["IsDeleted"] and o["AccountId"] == rid]
            if orders:
                raise Fail("DELETE_FAILED", f"Your attempt to delete {record['Name']} could "
                           "not be completed because it is associated with the following "
                           f"orders.: {', '.join(orders)}")
        stamp = self._stamp()
        record.update(IsDeleted=True, LastModifiedDate=stamp, SystemModstamp=stamp)
        for other in self._schema.values():
            for f in other.fields.values():
                if f.type != "reference" or sobject.name not in f.reference_to:
                    continue
                for child in self._records[other.name].values():
                    if child["IsDeleted"] or child.get(f.name) != rid:
                        continue
                    if other.name == "Opportunity" and f.name == "AccountId":
                        child.update(IsDeleted=True, LastModifiedDate=stamp,
                                     SystemModstamp=stamp)
                    elif f.nillable:
                        child.update({f.name: None, "LastModifiedDate": stamp,
                                      "SystemModstamp": stamp})

    def _upsert(self, sobject: SObject, ext: Field, value: Any, body: dict[str, Any]
                ) -> tuple[str, bool]:
        """(id, created) of an upsert by external id. Raises Fail or Multiple."""
        if not sobject.createable:
            raise Fail("INVALID_TYPE", f"entity type {sobject.name} does not support upsert")
        if ext.name != "Id":
            value = self._coerce(ext, _url_value(ext, value))
        if value is None or value == "":
            raise Fail("MISSING_ARGUMENT", f"{ext.name} not specified", [ext.name])
        found = self._match(sobject, ext, value)
        if len(found) > 1:
            raise Multiple(found)
        if found:
            return self._save(sobject.name, body, found[0]), False
        if ext.name == "Id":
            raise Fail("NOT_FOUND", NOT_FOUND, status=404)
        return self._save(sobject.name, {**body, ext.name: value}), True

    # -- data: rendering --------------------------------------------------------------------
    def _url(self, version: str, obj: str, rid: str) -> str:
        return f"/services/data/{version}/sobjects/{obj}/{rid}"

    def _render(self, sobject: SObject, record: dict[str, Any], version: str,
                fields: list[str] | None = None) -> dict[str, Any]:
        out: dict[str, Any] = {"attributes": {
            "type": sobject.name, "url": self._url(version, sobject.name, record["Id"])}}
        for name in fields if fields is not None else list(sobject.fields):
            out[name] = self._value(sobject, record, name)
        return out

    def _value(self, sobject: SObject, record: dict[str, Any], name: str) -> Any:
        f = sobject.fields[name]
        if f.type == "address":
            prefix = name[:-len("Address")]
            parts = {"street": "Street", "city": "City", "state": "State",
                     "postalCode": "PostalCode", "country": "Country"}
            values = {k: record.get(prefix + v) for k, v in parts.items()}
            if not any(values.values()):
                return None
            return {"city": values["city"], "country": values["country"],
                    "geocodeAccuracy": None, "latitude": None, "longitude": None,
                    "postalCode": values["postalCode"], "state": values["state"],
                    "street": values["street"]}
        return record.get(name)

    # -- data: REST handlers ----------------------------------------------------------------
    def _target(self, req: Request) -> tuple[str, SObject]:
        version = self._version(req)
        sobject = self._object(req.match["object"])
        if sobject is None:
            raise api_error(404, "NOT_FOUND", NOT_FOUND)
        return version, sobject

    def _body(self, req: Request) -> Any:
        ctype = (req.header("Content-Type") or "application/json").lower()
        if "json" not in ctype:
            raise api_error(415, "UNSUPPORTED_MEDIA_TYPE", f"MediaType of '{ctype}' is not "
                            "supported by this resource")
        try:
            return req.json(parse_float=Decimal)
        except ValueError:
            raise api_error(400, "JSON_PARSER_ERROR", "The request body is not valid JSON"
                            ) from None

    def _record_body(self, req: Request) -> dict[str, Any]:
        body = self._body(req)
        if not isinstance(body, dict):
            raise api_error(400, "JSON_PARSER_ERROR", "Cannot deserialize instance of SObject "
                            "from a non-object JSON value")
        return body

    def _live(self, sobject: SObject, raw: str) -> str:
        rid = canonical_id(raw)
        record = self._records[sobject.name].get(rid or "") if rid else None
        if record is None:
            raise api_error(404, "NOT_FOUND", NOT_FOUND)
        if record["IsDeleted"]:
            raise api_error(404, "ENTITY_IS_DELETED", "entity is deleted")
        return rid or ""

    def _field_list(self, sobject: SObject, req: Request) -> list[str] | None:
        wanted = req.arg("fields")
        if not wanted:
            return None
        names = []
        for raw in wanted.split(","):
            f = sobject.field(raw.strip())
            if f is None:
                raise Fail("INVALID_FIELD", f"No such column '{raw.strip()}' on entity "
                           f"'{sobject.name}'. If you are attempting to use a custom field, be "
                           "sure to append the '__c' after the custom field name.").abort()
            names.append(f.name)
        return names

    def _global_describe(self, req: Request) -> Reply:
        version = self._version(req)
        return Reply(200, {"encoding": "UTF-8", "maxBatchSize": MAX_COLLECTION,
                           "sobjects": [self._object_info(o, version)
                                        for o in self._schema.values()]})

    def _object_info(self, sobject: SObject, version: str) -> dict[str, Any]:
        base = f"/services/data/{version}/sobjects/{sobject.name}"
        return {"name": sobject.name, "label": sobject.label, "labelPlural": sobject.plural,
                "keyPrefix": sobject.prefix, "custom": sobject.custom,
                "createable": sobject.createable, "updateable": True,
                "deletable": sobject.deletable, "queryable": True, "retrieveable": True,
                "searchable": True, "urls": {"sobject": base, "describe": f"{base}/describe",
                                             "rowTemplate": f"{base}/{{ID}}"}}

    def _sobject_info(self, req: Request) -> Reply:
        version, sobject = self._target(req)
        with self.lock:
            recent = [self._render(sobject, r, version, ["Id", "Name"])
                      for r in list(self._records[sobject.name].values())[-10:][::-1]
                      if not r["IsDeleted"] and "Name" in sobject.fields]
        return Reply(200, {"objectDescribe": self._object_info(sobject, version),
                           "recentItems": recent})

    def _describe(self, req: Request) -> Reply:
        version, sobject = self._target(req)
        with self.lock:
            body = self._object_info(sobject, version)
            body["fields"] = [f.describe() for f in sobject.fields.values()]
        return Reply(200, body)

    def _create(self, req: Request) -> Reply:
        version, sobject = self._target(req)
        body = self._record_body(req)
        with self.lock:
            try:
                rid = self._save(sobject.name, body)
            except Fail as fail:
                raise fail.abort() from None
        return Reply(201, {"id": rid, "success": True, "errors": []},
                     {"Location": self._url(version, sobject.name, rid)})

    def _create_by_id(self, req: Request) -> Reply:
        """`POST /sobjects/{Object}/Id` creates a record (v37+); nothing else is a POST."""
        if req.match["id"].lower() != "id":
            return self.method_not_allowed_reply(req)
        return self._create(req)

    def _read(self, req: Request) -> Reply:
        version, sobject = self._target(req)
        with self.lock:
            rid = self._live(sobject, req.match["id"])
            fields = self._field_list(sobject, req)
            return Reply(200, self._render(sobject, self._records[sobject.name][rid],
                                           version, fields))

    def _update(self, req: Request) -> Reply:
        _version, sobject = self._target(req)
        body = self._record_body(req)
        with self.lock:
            rid = self._live(sobject, req.match["id"])
            try:
                self._save(sobject.name, body, rid)
            except Fail as fail:
                raise fail.abort() from None
        return Reply(204)

    def _remove(self, req: Request) -> Reply:
        _version, sobject = self._target(req)
        with self.lock:
            rid = canonical_id(req.match["id"])
            if not rid or rid not in self._records[sobject.name]:
                raise api_error(404, "NOT_FOUND", NOT_FOUND)
            try:
                self._delete(sobject, rid)
            except Fail as fail:
                raise fail.abort() from None
        return Reply(204)

    def _ext_field(self, sobject: SObject, name: str) -> Field:
        f = sobject.field(name)
        if f is None or not (f.external_id or f.name == "Id"):
            raise api_error(404, "NOT_FOUND", NOT_FOUND)
        return f

    def _multiple(self, version: str, sobject: SObject, ids: list[str]) -> Reply:
        return Reply(300, [self._url(version, sobject.name, i) for i in ids])

    def _read_by_external(self, req: Request) -> Reply:
        version, sobject = self._target(req)
        with self.lock:
            ext = self._ext_field(sobject, req.match["field"])
            found = self._match(sobject, ext, _url_value(ext, req.match["value"]))
            if len(found) > 1:
                return self._multiple(version, sobject, found)
            if not found:
                raise api_error(404, "NOT_FOUND", NOT_FOUND)
            fields = self._field_list(sobject, req)
            return Reply(200, self._render(sobject, self._records[sobject.name][found[0]],
                                           version, fields))

    def _upsert_one(self, req: Request) -> Reply:
        version, sobject = self._target(req)
        body = self._record_body(req)
        with self.lock:
            ext = self._ext_field(sobject, req.match["field"])
            in_body = [k for k in body if sobject.field(k) is ext]
            if in_body and ext.name != "Id":
                raise Fail("INVALID_FIELD", f"The external ID field {ext.name} is given in the "
                           "URL; do not send it in the request body too", [ext.name]).abort()
            try:
                rid, created = self._upsert(sobject, ext, req.match["value"], body)
            except Fail as fail:
                raise fail.abort() from None
            except Multiple as many:
                return self._multiple(version, sobject, many.ids)
        result = {"id": rid, "success": True, "errors": [], "created": created}
        if created:
            if self._version_number(version) < 46:
                del result["created"]
            return Reply(201, result, {"Location": self._url(version, sobject.name, rid)})
        if self._version_number(version) < 46:
            return Reply(204)
        return Reply(200, result)

    def _delete_by_external(self, req: Request) -> Reply:
        version, sobject = self._target(req)
        with self.lock:
            ext = self._ext_field(sobject, req.match["field"])
            found = self._match(sobject, ext, _url_value(ext, req.match["value"]))
            if len(found) > 1:
                return self._multiple(version, sobject, found)
            if not found:
                raise api_error(404, "NOT_FOUND", NOT_FOUND)
            try:
                self._delete(sobject, found[0])
            except Fail as fail:
                raise fail.abort() from None
        return Reply(204)

    @staticmethod
    def _version_number(version: str) -> int:
        return int(version[1:].split(".")[0])

    # -- sObject Collections (§5) -----------------------------------------------------------
    def _collection(self, req: Request) -> tuple[list[dict[str, Any]], bool]:
        body = self._record_body(req)
        records = body.get("records")
        if not isinstance(records, list) or not all(isinstance(r, dict) for r in records):
            raise api_error(400, "JSON_PARSER_ERROR", "records must be an array of objects")
        if len(records) > MAX_COLLECTION:
            raise api_error(400, "EXCEEDED_ID_LIMIT", "record limit reached. cannot submit "
                            f"more than {MAX_COLLECTION} records into this call")
        all_or_none = body.get("allOrNone", False)
        if not isinstance(all_or_none, bool):
            raise api_error(400, "JSON_PARSER_ERROR", "allOrNone must be true or false")
        for record in records:
            kind = record.get("attributes", {}).get("type") \
                if isinstance(record.get("attributes"), dict) else None
            if not kind:
                raise api_error(400, "INVALID_TYPE", "Must send a concrete entity type.")
            if self._object(kind) is None:
                raise api_error(400, "INVALID_TYPE", f"sObject type '{kind}' is not supported.")
        return records, all_or_none

    def _run(self, items: list[Any], all_or_none: bool, op: Any,
             given: list[str | None] | None = None) -> Reply:
        """Apply `op(item) -> result` to each item in order, under the lock; a Fail becomes
        a failed result (carrying the record's own id, for updates); with allOrNone any
        failure rolls every write of the call back."""
        given = given or [None] * len(items)
        with self.lock:
            saved = copy.deepcopy((self._records, self._order_number)) if all_or_none else None
            results: list[dict[str, Any]] = []
            for item, rid in zip(items, given, strict=True):
                try:
                    results.append(op(item))
                except Fail as fail:
                    failed: dict[str, Any] = {"success": False, "errors": [fail.item()]}
                    results.append({"id": rid, **failed} if rid else failed)
            if saved is not None and any(not r["success"] for r in results):
                self._records, self._order_number = saved
                rolled = [{"success": False, "errors": [dict(ROLLED_BACK)]} for _ in results]
                results = [r if not r["success"] else {"id": rid, **back} if rid else back
                           for r, back, rid in zip(results, rolled, given, strict=True)]
        return Reply(200, results)

    def _collection_create(self, req: Request) -> Reply:
        self._version(req)
        records, all_or_none = self._collection(req)

        def create(record: dict[str, Any]) -> dict[str, Any]:
            sobject = self._sobject(record["attributes"]["type"])
            return {"id": self._save(sobject.name, record), "success": True, "errors": []}
        return self._run([dict(r) for r in records], all_or_none, create)

    def _collection_update(self, req: Request) -> Reply:
        self._version(req)
        records, all_or_none = self._collection(req)

        def update(record: dict[str, Any]) -> dict[str, Any]:
            sobject = self._sobject(record["attributes"]["type"])
            raw = next((record.pop(k) for k in list(record) if k.lower() == "id"), None)
            if raw is None:
                raise Fail("MISSING_ARGUMENT", "Id not specified in an update call", [])
            rid = canonical_id(raw)
            if rid is None:
                raise Fail("MALFORMED_ID", f"bad id {raw}", ["Id"])
            current = self._records[sobject.name].get(rid)
            if current is None:
                raise Fail("INVALID_CROSS_REFERENCE_KEY", "invalid cross reference id", [])
            if current["IsDeleted"]:
                raise Fail("ENTITY_IS_DELETED", "entity is deleted", [])
            return {"id": self._save(sobject.name, record, rid), "success": True, "errors": []}

        given = [next((r[k] for k in r if k.lower() == "id"), None) for r in records]
        return self._run([dict(r) for r in records], all_or_none, update,
                         [g if isinstance(g, str) else None for g in given])

    def _collection_upsert(self, req: Request) -> Reply:
        _version, sobject = self._target(req)
        records, all_or_none = self._collection(req)
        with self.lock:
            ext = self._ext_field(sobject, req.match["field"])
        for record in records:
            if self._sobject(record["attributes"]["type"]) is not sobject:
                raise api_error(400, "INVALID_TYPE", f"This upsert works on {sobject.name} "
                                "records only: every record's attributes.type must be it")
        values = [next((r[k] for k in r if sobject.field(k) is ext), None) for r in records]
        keys = [_key(ext, v) for v in values]
        repeated = {k for k in keys if k is not None and keys.count(k) > 1}

        def upsert(item: tuple[dict[str, Any], Any, Any]) -> dict[str, Any]:
            record, value, key = item
            if key in repeated:
                raise Fail("DUPLICATE_EXTERNAL_ID", f"Duplicate external id specified: {value}",
                           [ext.name])
            body = {k: v for k, v in record.items() if sobject.field(k) is not ext}
            try:
                rid, created = self._upsert(sobject, ext, value, body)
            except Multiple as many:
                raise Fail("DUPLICATE_EXTERNAL_ID", f"{ext.name}: more than one record found "
                           f"for external id field: {many.ids}", [ext.name]) from None
            return {"id": rid, "success": True, "errors": [], "created": created}
        return self._run(list(zip(records, values, keys, strict=True)), all_or_none, upsert)

    def _collection_delete(self, req: Request) -> Reply:
        self._version(req)
        ids = [i.strip() for i in (req.arg("ids") or "").split(",") if i.strip()]
        if not ids:
            raise api_error(400, "MISSING_ARGUMENT", "ids must be given")
        if len(ids) > MAX_COLLECTION:
            raise api_error(400, "EXCEEDED_ID_LIMIT", "record limit reached. cannot submit "
                            f"more than {MAX_COLLECTION} records into this call")
        all_or_none = (req.arg("allOrNone") or "false").lower() == "true"

        def delete(raw: str) -> dict[str, Any]:
            found = self._locate(raw)
            if found is None:
                code = "MALFORMED_ID" if canonical_id(raw) is None else \
                    "INVALID_CROSS_REFERENCE_KEY"
                raise Fail(code, f"bad id {raw}" if code == "MALFORMED_ID"
                           else "invalid cross reference id", [])
            sobject, record = found
            self._delete(sobject, record["Id"])
            return {"id": record["Id"], "success": True, "errors": []}

        def keep_id(raw: str) -> dict[str, Any]:
            try:
                return delete(raw)
            except Fail as fail:
                return {"id": raw, "success": False, "errors": [fail.item()]}
        with self.lock:
            saved = copy.deepcopy((self._records, self._order_number)) if all_or_none else None
            results = [keep_id(raw) for raw in ids]
            if saved is not None and any(not r["success"] for r in results):
                self._records, self._order_number = saved
                results = [r if not r["success"] else
                           {"id": r["id"], "success": False, "errors": [dict(ROLLED_BACK)]}
                           for r in results]
        return Reply(200, results)

    def _collection_read(self, req: Request) -> Reply:
        version, sobject = self._target(req)
        ids = [i.strip() for i in (req.arg("ids") or "").split(",") if i.strip()]
        if len(ids) > 2000:
            raise api_error(400, "EXCEEDED_ID_LIMIT", "Too many ids: at most 2000")
        with self.lock:
            fields = self._field_list(sobject, req)
            out = []
            for raw in ids:
                rid = canonical_id(raw)
                record = self._records[sobject.name].get(rid or "")
                out.append(None if record is None or record["IsDeleted"]
                           else self._render(sobject, record, version, fields))
        return Reply(200, out)

    # -- composite (§5.1) -------------------------------------------------------------------
    def _composite(self, req: Request) -> Reply:
        self._version(req)
        body = self._record_body(req)
        subs = body.get("compositeRequest")
        if not isinstance(subs, list) or not subs or \
                not all(isinstance(s, dict) for s in subs):
            raise api_error(400, "JSON_PARSER_ERROR", "compositeRequest must be a non-empty "
                            "array of subrequests")
        if len(subs) > MAX_COMPOSITE:
            raise api_error(400, "LIMIT_EXCEEDED", f"Maximum number of subrequests is "
                            f"{MAX_COMPOSITE}")
        all_or_none = bool(body.get("allOrNone", False))
        halted = [{"errorCode": "PROCESSING_HALTED", "message": "The transaction was rolled "
                   "back since another operation in the same transaction failed."}]
        with self.lock:
            saved = copy.deepcopy((self._records, self._order_number)) if all_or_none else None
            results: list[dict[str, Any]] = []
            refs: dict[str, Any] = {}
            failed = False
            for sub in subs:
                ref = sub.get("referenceId")
                if failed and all_or_none:
                    results.append({"body": halted, "httpHeaders": {}, "httpStatusCode": 400,
                                    "referenceId": ref})
                    continue
                try:
                    url = _substitute(sub.get("url", ""), refs)
                    payload = _substitute(sub.get("body"), refs)
                except KeyError as missing:
                    reply = Reply(400, [{"errorCode": "PROCESSING_HALTED", "message":
                                         f"Invalid reference specified. No value for "
                                         f"{missing.args[0]} found."}])
                else:
                    reply = self._internal(str(sub.get("method", "GET")).upper(), url, payload)
                if isinstance(reply.body, bytes):
                    reply.body = json.loads(reply.body, parse_float=Decimal)
                results.append({"body": reply.body, "httpHeaders": dict(reply.headers),
                                "httpStatusCode": reply.status, "referenceId": ref})
                if reply.status < 300:
                    refs[str(ref)] = reply.body
                else:
                    failed = True
            if saved is not None and failed:
                self._records, self._order_number = saved
                for result in results:
                    if result["httpStatusCode"] < 300:
                        result.update(body=halted, httpHeaders={}, httpStatusCode=400)
        return Reply(200, {"compositeResponse": results})

    def _internal(self, method: str, url: str, payload: Any) -> Reply:
        parts = urlsplit(url)
        if not parts.path.startswith("/services/data/v") or "/composite" in parts.path \
                and parts.path.rstrip("/").endswith("/composite"):
            return api_error(400, "INVALID_INPUT", f"The URL {url} is not allowed in a "
                             "composite subrequest").reply
        body = b"" if payload is None else dumps(payload).encode("utf-8")
        sub = Request(method, unquote(parts.path), parse_qs(parts.query, keep_blank_values=True),
                      None, body)
        known = False
        for route in self._routes:
            m = route.regex.match(sub.path)
            if not m:
                continue
            known = True
            if route.method != method:
                continue
            sub.match = {k: unquote(v) for k, v in m.groupdict().items()}
            try:
                return route.handler(sub)
            except Abort as stop:
                return stop.reply
        return self.method_not_allowed_reply(sub) if known else self.not_found_reply(sub)

    # -- SOQL (§6) --------------------------------------------------------------------------
    def _soql(self, req: Request, version: str, q: str, include_deleted: bool) -> Reply:
        try:
            query = parse_soql(q)
        except Fail as fail:
            raise fail.abort() from None
        sobject = self._object(query.obj)
        if sobject is None:
            raise api_error(400, "INVALID_TYPE", f"sObject type '{query.obj}' is not supported. "
                            "If you are attempting to use a custom object, be sure to append "
                            "the '__c' after the entity name.")
        with self.lock:
            try:
                records = self._select(sobject, query, version, include_deleted)
            except Fail as fail:
                raise fail.abort() from None
            if query.count:
                return Reply(200, {"totalSize": records, "done": True, "records": []})
            assert isinstance(records, list)
            batch = _batch_size(req.header("Sforce-Query-Options"))
            if len(records) <= batch:
                return Reply(200, {"totalSize": len(records), "done": True,
                                   "records": records})
            self._cursor_seq += 1
            locator = f"01gSB{self._cursor_seq:010d}"
            self._cursors[locator] = {"records": records, "batch": batch,
                                      "seen": self.clock.monotonic()}
            return self._page(locator, 0, version, include_deleted)

    def _page(self, locator: str, offset: int, version: str, include_deleted: bool) -> Reply:
        cursor = self._cursors[locator]
        records, batch = cursor["records"], cursor["batch"]
        chunk = records[offset:offset + batch]
        body: dict[str, Any] = {"totalSize": len(records), "done": True, "records": chunk}
        if offset + batch < len(records):
            resource = "queryAll" if include_deleted else "query"
            body["done"] = False
            body["nextRecordsUrl"] = f"/services/data/{version}/{resource}/{locator}-" \
                                     f"{offset + batch}"
            cursor["seen"] = self.clock.monotonic()
        else:
            del self._cursors[locator]
        return Reply(200, body)

    def _more(self, req: Request, include_deleted: bool = False) -> Reply:
        version = self._version(req)
        locator, _, offset = req.match["locator"].rpartition("-")
        with self.lock:
            now = self.clock.monotonic()
            for key in [k for k, c in self._cursors.items() if now - c["seen"] > CURSOR_TTL]:
                del self._cursors[key]
            if locator not in self._cursors or not offset.isdigit():
                raise api_error(400, "INVALID_QUERY_LOCATOR", "invalid query locator")
            return self._page(locator, int(offset), version, include_deleted)

    def _more_all(self, req: Request) -> Reply:
        return self._more(req, include_deleted=True)

    def _query_all(self, req: Request) -> Reply:
        return self._query(req, include_deleted=True)

    def _path(self, sobject: SObject, name: str) -> tuple[str, ...]:
        """Canonical names of a field or of `Relationship.Field` (one level)."""
        parts = name.split(".")
        if len(parts) == 1:
            f = sobject.field(name)
            if f is not None:
                return (f.name,)
        elif len(parts) == 2:
            rel = sobject.relation(parts[0])
            parent = self._object(rel.reference_to[0]) if rel and rel.reference_to else None
            f = parent.field(parts[1]) if parent else None
            if rel and parent and f:
                return (rel.name, parent.name, f.name)
        raise Fail("INVALID_FIELD", f"No such column '{name}' on entity '{sobject.name}'. If "
                   "you are attempting to use a custom field, be sure to append the '__c' "
                   "after the custom field name. Please reference your WSDL or the describe "
                   "call for the appropriate names.")

    def _get(self, sobject: SObject, record: dict[str, Any], path: tuple[str, ...]) -> Any:
        if len(path) == 1:
            return self._value(sobject, record, path[0])
        ref, parent_name, name = path
        parent = self._records[parent_name].get(record.get(ref) or "")
        return None if parent is None else self._value(self._schema[parent_name], parent, name)

    def _field_of(self, sobject: SObject, path: tuple[str, ...]) -> Field:
        if len(path) == 1:
            return sobject.fields[path[0]]
        return self._schema[path[1]].fields[path[2]]

    def _select(self, sobject: SObject, query: Soql, version: str,
                include_deleted: bool) -> list[dict[str, Any]] | int:
        paths = [self._path(sobject, name) for name in query.fields]
        tests = []
        for name, op, operand in query.where:
            path = self._path(sobject, name)
            f = self._field_of(sobject, path)
            if op in ("IN", "NOT IN"):
                values = [_literal(f, lit) for lit in operand]
            elif op == "LIKE":
                if operand[0] != "str":
                    raise malformed("LIKE needs a quoted string")
                values = re.compile("".join(
                    ".*" if c == "%" else "." if c == "_" else re.escape(c)
                    for c in operand[1]), re.IGNORECASE | re.DOTALL)
            else:
                values = _literal(f, operand)
            tests.append((path, f, op, values))
        order = [(self._path(sobject, name), desc, nulls_first)
                 for name, desc, nulls_first in query.order]
        rows = [r for r in self._records[sobject.name].values()
                if (include_deleted or not r["IsDeleted"])
                and all(_test(f, op, self._get(sobject, r, path), values)
                        for path, f, op, values in tests)]
        for path, desc, nulls_first in reversed(order):
            f = self._field_of(sobject, path)
            present = [r for r in rows if self._get(sobject, r, path) is not None]
            absent = [r for r in rows if self._get(sobject, r, path) is None]
            present.sort(key=lambda r, p=path, f=f: _key(f, self._get(sobject, r, p)),
                         reverse=desc)
            rows = absent + present if nulls_first else present + absent
        rows = rows[query.offset:]
        if query.limit is not None:
            rows = rows[:query.limit]
        if query.count:
            return len(rows)
        out = []
        for record in rows:
            item: dict[str, Any] = {"attributes": {
                "type": sobject.name,
                "url": self._url(version, sobject.name, record["Id"])}}
            for path in paths:
                if len(path) == 1:
                    item[path[0]] = self._get(sobject, record, path)
                    continue
                ref, parent_name, name = path
                rel = sobject.fields[ref].relationship or ref
                parent = self._records[parent_name].get(record.get(ref) or "")
                if parent is None:
                    item[rel] = None
                    continue
                nested = item.get(rel) or {"attributes": {
                    "type": parent_name, "url": self._url(version, parent_name, parent["Id"])}}
                nested[name] = self._value(self._schema[parent_name], parent, name)
                item[rel] = nested
            out.append(item)
        return out
