"""QuickBooks Online Accounting API v3, read-only (api/quickbooks.md).

Odd things handled here:
- Change Data Capture answers for every entity of the pair in one call, so the first read
  of a run fetches the whole window for all of them into a spool (a temporary SQLite
  table: memory stays flat) and each flow then reads its entity from there.
- CDC silently stops at 1,000 objects and drops deletions first. CDC has no upper time
  bound, so the window is narrowed by entity: a full answer is redone one entity per call;
  an entity still at the cap is read through the query endpoint (STARTPOSITION paging,
  bounded by the CDC answer's time), which never shows deleted transactions, so the
  engine is asked to reconcile the ids it wrote.
- CDC refuses windows older than 30 days: the first sync, and a watermark older than
  `CDC_DAYS`, read through the query endpoint (with reconciliation of deletions).
- Errors come as `Fault` (JSON, upper or lower case, sometimes with HTTP 200) or XML.
- The watermark is the server's own `time` of the answer, never our clock.
"""

from __future__ import annotations

import json
import re
import sqlite3
import threading
from collections.abc import Iterator, Mapping
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

from ..errors import ApiError, NotFound, ReauthRequired, RejectedError, Throttled
from ..http import HttpClient, Response, encode_json
from .base import Connector, Endpoint, Page, Record

CAP = 1000                   # CDC objects per answer; query rows per page
CDC_DAYS = 29                # CDC looks back 30 days; keep a day of margin
OVERLAP = timedelta(minutes=5)
QUERY_STEP = CAP - 20        # pages overlap a little: rows updated mid-scan shift offsets
RECONCILE_CHUNK = 100
NAME_LISTS = {"Vendor", "Account", "Class", "Department"}


def utc(stamp: str) -> str:
    """A QuickBooks time (company offset, maybe fractional) as ISO UTC, to the second."""
    dt = datetime.fromisoformat(stamp.replace("Z", "+00:00"))
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    return dt.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _parse(stamp: str) -> datetime:
    dt = datetime.fromisoformat(stamp.replace("Z", "+00:00"))
    return dt if dt.tzinfo else dt.replace(tzinfo=UTC)


# -- errors ---------------------------------------------------------------------------------
_XML_CODE = re.compile(r"<Error[^>]*\bcode=\"(\d+)\"", re.I)
_XML_TEXT = re.compile(r"<(?:Message|Detail)>([^<]*)</", re.I)


def fault(resp: Response) -> tuple[str | None, str] | None:
    """(code, message) of a Fault in any of its shapes, or None."""
    body = resp.body
    if isinstance(body, dict):
        env = body.get("Fault") or body.get("fault")
        if isinstance(env, dict):
            errors = env.get("Error") or env.get("error") or [{}]
            first = errors[0] if isinstance(errors, list) and errors else {}
            code = first.get("code")
            msg = first.get("Message") or first.get("message") or ""
            detail = first.get("Detail") or first.get("detail") or ""
            if detail and "Token" in str(detail):
                detail = "token refused"  # the detail echoes the start of the token
            text = f"{msg}: {detail}" if detail and detail != msg else str(msg)
            return (str(code) if code is not None else None), text
        return None
    if "<Fault" in (resp.text or ""):
        code = _XML_CODE.search(resp.text)
        texts = [t.strip() for t in _XML_TEXT.findall(resp.text) if "Token" not in t]
        return (code.group(1) if code else None), ": ".join(texts) or "Fault"
    return None


def classify(resp: Response) -> ApiError | None:
    found = fault(resp)
    if found is None and resp.status < 400:
        return None
    code, message = found or (None, "")
    kw = {"system": "quickbooks", "status": resp.status, "code": code}
    tid = resp.headers.get("intuit_tid")
    if tid:  # Intuit support asks for it
        message = f"{message} (intuit_tid {tid})"
    if resp.status == 401 or code in ("3200", "100", "120"):
        return ReauthRequired(message or "access token refused", **kw)
    if resp.status == 429 or code == "3001":
        return Throttled(message or "throttled", retry_after=60.0, **kw)
    if resp.status >= 500:
        return None  # http.py retries 5xx
    if code == "610":
        return NotFound(message or "object not found", **kw)
    if found is not None or resp.status >= 400:
        return RejectedError(message or f"HTTP {resp.status}", **kw)
    return None


# -- the spool of one run's CDC answers ----------------------------------------------------
class Spool:
    """Objects of one CDC window, per entity, ordered by update time; on disk."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._db = sqlite3.connect("", check_same_thread=False)
        self._db.execute("CREATE TABLE o (entity TEXT, id TEXT, updated TEXT, body TEXT, "
                         "PRIMARY KEY (entity, id))")

    def add(self, entity: str, rows: list[dict[str, Any]]) -> None:
        with self._lock:
            self._db.executemany(
                "INSERT OR REPLACE INTO o VALUES (?, ?, ?, ?)",
                [(entity, str(r.get("Id")), utc(r["MetaData"]["LastUpdatedTime"]),
                  encode_json(r)) for r in rows])

    def pages(self, entity: str, size: int = 200) -> Iterator[list[dict[str, Any]]]:
        last = ("", "")
        while True:
            with self._lock:
                rows = self._db.execute(
                    "SELECT updated, id, body FROM o WHERE entity=? AND (updated, id) > (?, ?) "
                    "ORDER BY updated, id LIMIT ?", (entity, *last, size)).fetchall()
            if not rows:
                return
            yield [json.loads(r[2], parse_float=Decimal) for r in rows]
            last = (rows[-1][0], rows[-1][1])

    def clear(self) -> None:
        with self._lock:
            self._db.execute("DELETE FROM o")


def _entity_rows(cdc_body: Any) -> tuple[dict[str, list[dict[str, Any]]], str | None]:
    """{entity: objects} and the server time of a CDC answer."""
    out: dict[str, list[dict[str, Any]]] = {}
    for block in (cdc_body or {}).get("CDCResponse") or []:
        for group in block.get("QueryResponse") or []:
            for key, value in group.items():
                if isinstance(value, list):
                    out.setdefault(key, []).extend(value)
    return out, (cdc_body or {}).get("time")


class QuickBooks(Connector):
    system_type = "quickbooks"
    write_concurrency = 1  # read-only
    endpoints = {
        "vendors": Endpoint("vendor", id_field="Id", item_key="Vendor", label="vendor"),
        "bills": Endpoint("bill", id_field="Id", item_key="Bill", label="bill"),
        "bill_payments": Endpoint("billpayment", id_field="Id", item_key="BillPayment",
                                  label="bill payment"),
        "journal_entries": Endpoint("journalentry", id_field="Id", item_key="JournalEntry",
                                    label="journal entry"),
        "accounts": Endpoint("account", id_field="Id", item_key="Account", label="account"),
    }

    def __init__(self, http: HttpClient, *, realm_id: str, minor_version: int = 75,
                 clock: Any = None):
        super().__init__(http, to_utc=utc)
        self.realm_id, self.minor_version = realm_id, minor_version
        from ..clock import SYSTEM_CLOCK

        self.clock = clock or SYSTEM_CLOCK
        self._spool = Spool()
        self._plan: dict[str, str | None] = {}      # QuickBooks entity -> since
        self._fetched = False
        self._cdc_time: str | None = None
        self._by_query: dict[str, str | None] = {}  # entity -> since (None: everything)
        self._reconcile: set[str] = set()
        self._ap_accounts: set[str] | None = None

    # -- paths --------------------------------------------------------------------------
    def root(self) -> str:
        return f"/v3/company/{self.realm_id}"

    def _get(self, path: str, params: dict[str, Any] | None = None) -> Any:
        resp = self.http.get(f"{self.root()}/{path}",
                             params={**(params or {}), "minorversion": self.minor_version})
        return resp.body

    def get(self, entity: str, obj_id: str) -> dict[str, Any]:
        ep = self.endpoints[entity]
        return self._get(f"{ep.path}/{obj_id}")[ep.item_key]

    def query(self, sql: str) -> tuple[list[dict[str, Any]], str | None]:
        body = self._get("query", {"query": sql})
        result = (body or {}).get("QueryResponse") or {}
        rows = next((v for v in result.values() if isinstance(v, list)), [])
        return rows, (body or {}).get("time")

    # -- planning one run's reads ---------------------------------------------------------
    def plan_reads(self, reads: Mapping[str, str | None]) -> None:
        self._plan = {self.endpoints[e].item_key or e: since for e, since in reads.items()}
        self._fetched = False

    def reset_run_caches(self) -> None:
        self._spool.clear()
        self._fetched, self._cdc_time = False, None
        self._by_query.clear()
        self._reconcile.clear()
        self._ap_accounts = None

    def _fetch(self) -> None:
        """One CDC call for every planned entity whose window CDC can serve; narrow by
        entity when an answer is at the cap; the query endpoint for the rest."""
        self._fetched = True
        oldest_cdc = self.clock.now() - timedelta(days=CDC_DAYS)
        cdc: dict[str, str] = {}
        for entity, since in self._plan.items():
            if since is None or _parse(since) < oldest_cdc:
                self._by_query[entity] = since
                if since is not None:
                    self._reconcile.add(entity)
            else:
                cdc[entity] = since
        if not cdc:
            return
        start = min(_parse(s) for s in cdc.values()) - OVERLAP
        rows, when = self._cdc(list(cdc), start)
        if sum(len(v) for v in rows.values()) >= CAP and len(cdc) > 1:
            rows = {}
            for entity in cdc:  # narrow: one entity per call
                one, when_one = self._cdc([entity], start)
                rows.update(one)
                when = min(when, when_one) if when and when_one else when or when_one
                if len(one.get(entity, [])) >= CAP:
                    self._at_cap(entity, start, rows)
        elif sum(len(v) for v in rows.values()) >= CAP:
            self._at_cap(next(iter(cdc)), start, rows)
        for entity in cdc:
            if entity not in self._by_query:
                self._spool.add(entity, rows.get(entity, []))
        self._cdc_time = utc(when) if when else None

    def _at_cap(self, entity: str, start: datetime, rows: dict[str, Any]) -> None:
        rows.pop(entity, None)
        self._by_query[entity] = start.astimezone(UTC).isoformat()
        self._reconcile.add(entity)

    def _cdc(self, entities: list[str], start: datetime) -> tuple[dict[str, Any], str | None]:
        body = self._get("cdc", {"entities": ",".join(entities),
                                 "changedSince": start.astimezone(UTC).isoformat()})
        return _entity_rows(body)

    # -- reading --------------------------------------------------------------------------
    def read(self, entity: str, *, since: str | None = None) -> Iterator[list[Record]]:
        ep = self.endpoints[entity]
        name = ep.item_key or entity
        if name not in self._plan:  # a read the run did not plan (tests, --flow)
            self._plan[name], self._fetched = since, False
        if not self._fetched:
            self._fetch()
        if name in self._by_query:
            yield from self._query_pages(ep, name, self._by_query[name])
            return
        pending: list[Record] = []
        for rows in self._spool.pages(name):
            if pending:
                yield Page(pending)
            pending = [rec for row in rows for rec in self.records(ep, row)]
        yield Page(pending, watermark=self._cdc_time)

    def _query_pages(self, ep: Endpoint, name: str, since: str | None) -> Iterator[Page]:
        """Everything changed since `since`, bounded by the server time of the first
        answer, in pages that overlap a little; ids already yielded are not repeated."""
        where = ["Active IN (true,false)"] if name in NAME_LISTS else []
        if since:
            where.append(f"MetaData.LastUpdatedTime > '{_parse(since).isoformat()}'")
        upper: str | None = None
        position, seen = 1, set[str]()
        while True:
            cond = list(where) + ([f"MetaData.LastUpdatedTime <= '{upper}'"] if upper else [])
            sql = (f"SELECT * FROM {name}" + (f" WHERE {' AND '.join(cond)}" if cond else "")
                   + f" ORDERBY MetaData.LastUpdatedTime STARTPOSITION {position} "
                   f"MAXRESULTS {CAP}")
            rows, when = self.query(sql)
            if upper is None:
                upper = _parse(when).isoformat() if when else None
            fresh = [r for r in rows if str(r.get("Id")) not in seen]
            seen = {str(r.get("Id")) for r in rows}
            done = len(rows) < CAP
            # a query page's cursors are not safe to keep (offsets shift, and a crash must
            # restart the scan): the watermark moves only at the end
            records = [Record(r.id, r.version, None, r.data)
                       for row in fresh for r in self.records(ep, row)]
            yield Page(records, watermark=utc(upper) if done and upper else None)
            if done:
                return
            position += QUERY_STEP

    def records(self, ep: Endpoint, row: dict[str, Any]) -> list[Record]:
        if ep.item_key == "BillPayment":
            return self._payment_records(row)
        if ep.item_key == "JournalEntry":
            row = {**row, "touches_ap": self._touches_ap(row)}
        if ep.item_key == "Bill" and row.get("DepartmentRef"):
            # a bill's department (location) is on the header only: give it to each line
            row = {**row, "Line": [{"DepartmentRef": row["DepartmentRef"], **line}
                                   for line in row.get("Line") or []]}
        return [self.record(ep, row)]

    def record(self, ep: Endpoint, row: dict[str, Any]) -> Record:
        stamp = (row.get("MetaData") or {}).get("LastUpdatedTime") or ""
        token = row.get("SyncToken")
        # SyncToken counts the versions; a deleted stub has none (and one version only)
        version = f"{token}@{utc(stamp)}" if token is not None else "deleted"
        return Record(id=str(row["Id"]), version=version,
                      cursor=utc(stamp) if stamp else None, data=row)

    def _payment_records(self, row: dict[str, Any]) -> list[Record]:
        """A bill payment pays one or more bills: one record per bill it pays, so each
        payment detail in the target is linked to its invoice."""
        ep = self.endpoints["bill_payments"]
        base = self.record(ep, row)
        if row.get("status") == "Deleted":
            return [base]
        out = []
        for line in row.get("Line") or []:
            for linked in line.get("LinkedTxn") or []:
                if linked.get("TxnType") != "Bill":
                    continue
                data = {k: v for k, v in row.items() if k != "Line"}
                data.update(parent_Id=row["Id"], BillId=str(linked["TxnId"]),
                            Amount=line.get("Amount"))
                out.append(Record(id=f"{row['Id']}:{linked['TxnId']}", version=base.version,
                                  cursor=base.cursor, data=data))
        return out

    def _touches_ap(self, row: dict[str, Any]) -> bool:
        if self._ap_accounts is None:
            # every account, filtered here: not every property is queryable
            found: set[str] = set()
            position = 1
            while True:
                rows, _ = self.query("SELECT * FROM Account WHERE Active IN (true,false) "
                                     f"STARTPOSITION {position} MAXRESULTS {CAP}")
                found.update(str(r.get("Id")) for r in rows
                             if r.get("AccountType") == "Accounts Payable"
                             or r.get("AccountSubType") == "AccountsPayable")
                if len(rows) < CAP:
                    break
                position += CAP
            self._ap_accounts = found
        for line in row.get("Line") or []:
            ref = (line.get("JournalEntryLineDetail") or {}).get("AccountRef") or {}
            if str(ref.get("value")) in self._ap_accounts:
                return True
        return False

    def refetch(self, entity: str, record_id: str, data: Mapping[str, Any]) -> Record | None:
        ep = self.endpoints[entity]
        obj_id = str(data.get("parent_Id") or record_id.split(":")[0])
        try:
            row = self.get(entity, obj_id)
        except NotFound:
            return None
        return next((r for r in self.records(ep, row) if r.id == record_id), None)

    # -- webhooks: hints, read back from the API ------------------------------------------
    def webhook_entity(self, event: str) -> str | None:
        name = event.split(".", 1)[0]
        return next((k for k, ep in self.endpoints.items() if ep.item_key == name), None)

    def from_webhooks(self, entity: str, events: list[dict[str, Any]]) -> list[Record]:
        """Creates and updates are in this run's CDC window already (Intuit: run one CDC,
        not a read per event; reads are metered). Deletions and merges are what a capped
        CDC or the query endpoint can miss: each named object is read, and one that is
        gone becomes a deleted stub (CDC has been seen to flag live objects as deleted:
        the read decides). A merge also names the object merged away."""
        ep = self.endpoints[entity]
        gone = [e for e in events if e.get("operation") in ("Delete", "Merge")]
        ids = dict.fromkeys(str(i) for e in gone
                            for i in (e.get("id"), e.get("deleted_id")) if i)
        out: list[Record] = []
        for obj_id in ids:
            try:
                row = self.get(entity, obj_id)
            except NotFound:
                row = self._stub(ep, obj_id)
            out.extend(self.records(ep, row))
        return out

    def _stub(self, ep: Endpoint, obj_id: str) -> dict[str, Any]:
        stub: dict[str, Any] = {"Id": obj_id, "status": "Deleted", "domain": "QBO"}
        if ep.item_key in NAME_LISTS:
            stub["Active"] = False  # name lists are deactivated, never deleted
        return stub

    # -- deletions the query endpoint cannot show ------------------------------------------
    def needs_reconcile(self, entity: str) -> bool:
        return (self.endpoints[entity].item_key or entity) in self._reconcile

    def reconcile(self, entity: str, ids: list[str]) -> list[Record]:
        ep = self.endpoints[entity]
        name = ep.item_key or entity
        parents = sorted({i.split(":")[0] for i in ids})
        alive: set[str] = set()
        for i in range(0, len(parents), RECONCILE_CHUNK):
            chunk = parents[i:i + RECONCILE_CHUNK]
            listed = ",".join(f"'{p}'" for p in chunk)
            extra = " AND Active IN (true,false)" if name in NAME_LISTS else ""
            rows, _ = self.query(f"SELECT * FROM {name} WHERE Id IN ({listed}){extra} "
                                    f"MAXRESULTS {CAP}")
            alive.update(str(r.get("Id")) for r in rows)
        return [Record(id=i, version="deleted", cursor=None,
                       data={**self._stub(ep, i.split(":")[0]), "reconciled": True})
                for i in ids if i.split(":")[0] not in alive]

    # -- read-only ------------------------------------------------------------------------
    def create(self, entity: str, payload: dict[str, Any]) -> dict[str, Any]:
        raise RejectedError("QuickBooks is read-only for mlconnector", system="quickbooks")

    def update(self, entity: str, obj_id: str, payload: dict[str, Any]) -> dict[str, Any]:
        raise RejectedError("QuickBooks is read-only for mlconnector", system="quickbooks")

    def company_name(self) -> str:
        info = self._get(f"companyinfo/{self.realm_id}").get("CompanyInfo") or {}
        return str(info.get("CompanyName") or "?")
