"""BILL v3 API (api/bill.md).

Odd things handled here: errors are a JSON array whose `code` (not the HTTP status)
says what happened; at most 3 requests in flight per organization; lists page with an
opaque `nextPage` token; bills cannot be filtered by invoice number, so the natural-key
index of a vendor's bills is listed once per run and kept; a payment pays several bills,
so each of its `billPayments` is one record.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterator
from datetime import datetime, timedelta
from typing import Any

from ..errors import (
    ApiError,
    AuthError,
    HeldError,
    NotFound,
    ReauthRequired,
    RejectedError,
    Throttled,
    UnavailableError,
)
from ..http import HttpClient, Response
from .base import Connector, Endpoint

PAGE_MAX = 100
OVERLAP = timedelta(minutes=2)  # clock skew and same-millisecond updates


class BillPages:
    """`max` + the opaque `nextPage` token; an empty page with a token is followed."""

    def pages(self, http: HttpClient, path: str, params: dict[str, Any],
              list_key: str | None) -> Iterator[list[dict[str, Any]]]:
        token, seen = None, set()
        while True:
            query = {**params, "max": PAGE_MAX}
            if token:
                query["page"] = token
            body = http.get(path, params=query).body or {}
            yield body.get("results") or []
            token = body.get("nextPage")
            if not token or token in seen:
                return
            seen.add(token)


def _first_error(resp: Response) -> dict[str, Any]:
    body = resp.body
    if isinstance(body, list) and body and isinstance(body[0], dict):
        return body[0]
    return body if isinstance(body, dict) else {}


def classify(resp: Response) -> ApiError | None:
    """BILL's error codes, by what the engine does about them."""
    if resp.status < 400:
        return None
    err = _first_error(resp)
    code, message = err.get("code"), str(err.get("message") or resp.text[:200])
    kw = {"system": "bill", "status": resp.status, "code": code}
    if code == "BDC_1109":
        return ReauthRequired(message, **kw)
    if code == "BDC_1322":  # too many in flight: nothing was processed, try again shortly
        return Throttled(message, retry_after=1.5, **kw)
    if code == "BDC_1144":  # hourly quota spent: everything fails until the next hour
        return UnavailableError(f"{message} — BILL accepts calls again at the top of the hour",
                                **kw)
    if code == "BDC_1101":
        return AuthError(f"BILL refused the login: {message}", system="bill",
                         fix="check username/organization_id, then: "
                             "mlconnector auth set <system> password")
    if code == "BDC_1102":
        return AuthError(f"BILL refused the developer key: {message}", system="bill",
                         fix="mlconnector auth set <system> dev_key (sandbox and production "
                             "keys differ)")
    if resp.status == 404:
        return NotFound(message, **kw)
    if resp.status in (401, 403):
        return AuthError(f"BILL refused access: {message}", system="bill")
    if 400 <= resp.status < 500 and resp.status != 429:
        return RejectedError(message, **kw)
    return None  # 429 without a code, 5xx: http.py's defaults retry


def _quote(value: str) -> str:
    return '"' + value.replace('"', "") + '"'


def bill_time(iso_utc: str) -> str:
    """An ISO UTC time in the form BILL's filters take."""
    dt = datetime.fromisoformat(iso_utc.replace("Z", "+00:00"))
    return dt.strftime("%Y-%m-%dT%H:%M:%S.") + f"{dt.microsecond // 1000:03d}Z"


class NaturalKeyIndex:
    """(vendor id, invoice number) -> BILL bill id for one run, in a temporary SQLite
    table rather than a dict, so memory stays flat however many bills a run writes."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._db = sqlite3.connect("", check_same_thread=False)  # a private temp file
        self._db.execute("CREATE TABLE k (vendor TEXT, number TEXT, id TEXT, "
                         "PRIMARY KEY (vendor, number))")

    def add_many(self, vendor: str, rows: list[tuple[str, str]]) -> None:
        with self._lock:
            self._db.executemany("INSERT OR REPLACE INTO k VALUES (?, ?, ?)",
                                 [(vendor, number, bill_id) for number, bill_id in rows])

    def get(self, vendor: str, number: str) -> str | None:
        with self._lock:
            row = self._db.execute("SELECT id FROM k WHERE vendor=? AND number=?",
                                   (vendor, number)).fetchone()
        return row[0] if row else None

    def clear(self) -> None:
        with self._lock:
            self._db.execute("DELETE FROM k")


class Bill(Connector):
    system_type = "bill"
    paginator = BillPages()
    webhook_nouns = {"payment": "bill_payments"}
    write_concurrency = 3  # BDC_1322 above 3 in flight per organization
    endpoints = {
        "vendors": Endpoint("v3/vendors", version_field="updatedTime", label="vendor"),
        "bills": Endpoint("v3/bills", version_field="updatedTime", label="bill"),
        "bill_payments": Endpoint("v3/payments", version_field="updatedTime",
                                  cursor_field="updatedTime", explode="billPayments",
                                  params={"sort": "updatedTime:asc"}, label="payment"),
        "chart_of_accounts": Endpoint("v3/classifications/chart-of-accounts",
                                      version_field="updatedTime", label="GL account"),
    }

    def __init__(self, http: HttpClient):
        super().__init__(http)
        self._index_lock = threading.Lock()
        self._indexed: set[str] = set()  # vendors whose bills are in the index
        self._index = NaturalKeyIndex()
        self._vendor_locks: dict[str, threading.Lock] = {}

    def since_params(self, ep: Endpoint, since: str | None) -> dict[str, Any]:
        if not since or not ep.cursor_field:
            return {}
        start = datetime.fromisoformat(since.replace("Z", "+00:00")) - OVERLAP
        return {"filters": f"{ep.cursor_field}:gte:{_quote(bill_time(start.isoformat()))}"}

    def record(self, ep, row):
        rec = super().record(ep, row)
        if ep.explode:  # a payment's status changes without its bill payments changing
            rec = type(rec)(rec.id, f"{rec.version}|{row.get('status')}", rec.cursor, rec.data)
        return rec

    def create(self, entity: str, payload: dict[str, Any]) -> dict[str, Any]:
        created = super().create(entity, payload)
        if entity == "bills":
            self._remember_bill(created)
        return created

    def update(self, entity: str, obj_id: str, payload: dict[str, Any]) -> dict[str, Any]:
        ep = self.endpoints[entity]
        if entity == "vendors":  # vendors have PATCH, no PUT
            return self.http.patch(self.url(entity, obj_id), json=payload, idempotent=True).body
        # PUT replaces a bill; lines sent without ids replace the old ones
        return self.http.put(self.url(entity, obj_id), json=self.wrap(ep, payload),
                             idempotent=True).body

    def delete(self, entity: str, obj_id: str) -> None:
        """BILL deletes nothing: a bill or vendor is archived (archiving twice is a no-op)."""
        self.http.post(f"{self.url(entity, obj_id)}/archive", json={}, idempotent=True)

    def find(self, entity: str, payload: dict[str, Any]) -> dict[str, Any] | None:
        if entity == "vendors":
            return self._find_vendor(payload)
        if entity == "bills":
            number = (payload.get("invoice") or {}).get("invoiceNumber")
            found = self._find_bill(str(payload["vendorId"]), str(number))
            return {"id": found} if found else None
        return None

    def natural_key(self, entity: str, payload: dict[str, Any]) -> str | None:
        if entity == "vendors":
            return "v:" + str(payload.get("name", "")).strip().lower()
        if entity == "bills":
            number = (payload.get("invoice") or {}).get("invoiceNumber")
            return f"b:{payload.get('vendorId')}:{number}"
        return None

    def _find_vendor(self, payload: dict[str, Any]) -> dict[str, Any] | None:
        name = str(payload.get("name") or "")
        params = {"filters": f"name:eq:{_quote(name)}"}
        candidates = [
            v for rows in self.paginator.pages(self.http, self.url("vendors"), params, None)
            for v in rows if v.get("name", "").strip().lower() == name.strip().lower()
            and not v.get("archived")
        ]
        if not candidates:
            return None
        email = (payload.get("email") or "").strip().lower()
        tax_id = (payload.get("additionalInfo") or {}).get("taxId")
        same = [v for v in candidates
                if (email and (v.get("email") or "").strip().lower() == email)
                or (tax_id and (v.get("additionalInfo") or {}).get("taxId") == tax_id)]
        if len(same) == 1:
            return same[0]
        if not same and len(candidates) == 1 and not (candidates[0].get("email") and email):
            return candidates[0]  # the name alone, where neither side has a conflicting email
        raise HeldError(
            f"BILL has {len(candidates)} vendor(s) named {name!r} and none matches on email "
            "or tax id; link or rename one in BILL, then replay")

    def _find_bill(self, vendor_id: str, number: str) -> str | None:
        self._index_vendor(vendor_id)
        return self._index.get(vendor_id, number)

    def _index_vendor(self, vendor_id: str) -> None:
        """List a vendor's BILL bills once per run (one lock per vendor, so different
        vendors are listed in parallel)."""
        with self._index_lock:
            if vendor_id in self._indexed:
                return
            lock = self._vendor_locks.setdefault(vendor_id, threading.Lock())
        with lock:
            with self._index_lock:
                if vendor_id in self._indexed:
                    return
            params = {"filters": f"vendorId:eq:{_quote(vendor_id)}"}
            for rows in self.paginator.pages(self.http, self.url("bills"), params, None):
                self._index.add_many(vendor_id, [
                    (str(b["invoice"]["invoiceNumber"]), str(b["id"])) for b in rows
                    if (b.get("invoice") or {}).get("invoiceNumber") is not None
                    and not b.get("archived")])
            with self._index_lock:
                self._indexed.add(vendor_id)

    def _remember_bill(self, bill: dict[str, Any]) -> None:
        number = (bill.get("invoice") or {}).get("invoiceNumber")
        if number is not None:
            self._index.add_many(str(bill.get("vendorId")), [(str(number), str(bill["id"]))])

    def reset_run_caches(self) -> None:
        with self._index_lock:
            self._indexed.clear()
            self._vendor_locks.clear()
            self._index.clear()
