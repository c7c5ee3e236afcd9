"""FreshBooks accounting API (api/freshbooks.md).

Odd things handled here: errors can arrive in a 200 body; every path needs an account_id
learned from users/me; bills and bill vendors cannot be filtered by update time, so they
are read by a full paged scan and the engine skips what it already synced; bill payments
have no timestamp and no natural key of their own, so we write the BILL payment id into
the note and look for it before creating.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

from ..errors import (
    ApiError,
    AuthError,
    NotFound,
    ReauthRequired,
    RejectedError,
    Throttled,
)
from ..http import HttpClient, Response
from .base import Connector, Endpoint, Record, dig

try:
    from zoneinfo import ZoneInfo

    EASTERN: Any = ZoneInfo("America/New_York")
except Exception:  # no tz database: a fixed EST offset, a day of overlap covers the error
    from datetime import timezone

    EASTERN = timezone(timedelta(hours=-5))

PER_PAGE = 100  # the API silently caps per_page at 100


class FreshBooksPages:
    """`page`/`per_page` with `pages` in the envelope; a page past the end is empty."""

    def pages(self, http: HttpClient, path: str, params: dict[str, Any],
              list_key: str | None) -> Iterator[list[dict[str, Any]]]:
        result_key, _, rows_key = (list_key or "").rpartition(".")
        page = 1
        while True:
            body = http.get(path, params={**params, "page": page, "per_page": PER_PAGE}).body
            result = dig(body, result_key) or {}
            rows = result.get(rows_key) or []
            yield rows
            if not rows or page >= int(result.get("pages") or 1):
                return
            page += 1


def _error(resp: Response) -> tuple[int | None, str]:
    body = resp.body if isinstance(resp.body, dict) else {}
    errors = dig(body, "response.errors")
    if isinstance(errors, list) and errors:
        first = errors[0] if isinstance(errors[0], dict) else {}
        return first.get("errno"), str(first.get("message", "")) + (
            f" (field {first['field']})" if first.get("field") else "")
    if "errno" in body:
        return body.get("errno"), str(body.get("message", ""))
    if "error" in body:
        return None, f"{body.get('error')}: {body.get('error_description', '')}"
    if "code" in body and "message" in body:  # the google-rpc style body of 2024
        return body.get("code"), str(body.get("message"))
    return None, resp.text[:200] if resp.status >= 400 else ""


def classify(resp: Response) -> ApiError | None:
    """FreshBooks' own answers; 429 and 5xx fall through to http.py's defaults."""
    body = resp.body if isinstance(resp.body, dict) else {}
    in_200 = resp.status < 400 and dig(body, "response.errors")
    if resp.status < 400 and not in_200:
        return None
    errno, message = _error(resp)
    kw = {"system": "freshbooks", "status": resp.status,
          "code": str(errno) if errno is not None else None}
    if resp.status == 401 or errno == 1003:
        return ReauthRequired(message or "access token refused", **kw)
    if resp.status == 403:
        return AuthError(f"FreshBooks refused access: {message} (the token lacks a scope)",
                         system="freshbooks", fix="run: mlconnector auth login <system>")
    if resp.status == 409 or errno == 409:
        return Throttled(message or "resource being modified by another request", **kw)
    if resp.status == 404 or errno in (1011, 1012):
        return NotFound(message or "not found", **kw)
    if in_200 or 400 <= resp.status < 500 and resp.status != 429:
        return RejectedError(message or "refused", **kw)
    return None


class FreshBooks(Connector):
    system_type = "freshbooks"
    paginator = FreshBooksPages()
    webhook_nouns = {"bill": "bills", "bill_vendor": "bill_vendors"}
    write_concurrency = 2  # no published limit; the SDKs and the API page advise 1-2
    endpoints = {
        "bill_vendors": Endpoint("bill_vendors/bill_vendors", id_field="vendorid",
                                 list_key="response.result.bill_vendors",
                                 item_key="response.result.bill_vendor",
                                 version_field="updated_at", label="bill vendor"),
        "bills": Endpoint("bills/bills", list_key="response.result.bills",
                          item_key="response.result.bill", version_field="updated_at",
                          label="bill"),
        "bill_payments": Endpoint("bill_payments/bill_payments",
                                  list_key="response.result.bill_payments",
                                  item_key="response.result.bill_payment",
                                  label="bill payment"),
        "categories": Endpoint("expenses/categories", list_key="response.result.categories",
                               item_key="response.result.category", version_field="updated_at",
                               label="expense category"),
        # receivables: filterable by `updated` (US/Eastern, day granularity)
        "clients": Endpoint("users/clients", list_key="response.result.clients",
                            item_key="response.result.client", version_field="updated",
                            cursor_field="updated", label="client"),
        "invoices": Endpoint("invoices/invoices", list_key="response.result.invoices",
                             item_key="response.result.invoice", version_field="updated",
                             cursor_field="updated", params={"include[]": "lines"},
                             label="invoice"),
        "payments": Endpoint("payments/payments", list_key="response.result.payments",
                             item_key="response.result.payment", version_field="updated",
                             cursor_field="updated", params={"include[]": "invoice"},
                             label="payment"),
        "items": Endpoint("items/items", list_key="response.result.items",
                          item_key="response.result.item", version_field="updated",
                          cursor_field="updated", label="item"),
    }

    def __init__(self, http: HttpClient, *, account_id: str):
        super().__init__(http, to_utc=zoneless_utc)
        self.account_id = account_id
        self._bills: dict[str, dict[str, Any]] = {}  # read by find, for create's currency
        self._invoices: dict[str, dict[str, Any]] = {}  # payments' invoices, for this run
        self._names: dict[str, dict[str, dict[str, Any]]] = {}  # see _named
        self._names_lock = threading.Lock()

    def root(self) -> str:
        return f"/accounting/account/{self.account_id}"

    def read(self, entity: str, *, since: str | None = None) -> Iterator[list[Record]]:
        yield from super().read(entity, since=since)
        if entity == "bills":
            # deleted bills leave the default list: ask for them, so that a pair can
            # carry the deletion on (one call per hundred deleted bills)
            ep = self.endpoints[entity]
            params = {**ep.params, "search[vis_state]": 1}
            for rows in self.paginator.pages(self.http, self.url(entity), params, ep.list_key):
                yield [rec for row in rows for rec in self.records(ep, row)]

    def since_params(self, ep: Endpoint, since: str | None) -> dict[str, Any]:
        """`search[updated_min]` takes a US/Eastern day: the day before the mark's, so the
        overlap covers the zone and the day granularity (the engine skips what it has)."""
        if not since or ep.cursor_field != "updated":
            return {}
        mark = datetime.fromisoformat(since.replace("Z", "+00:00")).astimezone(EASTERN)
        return {"search[updated_min]": (mark.date() - timedelta(days=1)).isoformat()}

    def records(self, ep: Endpoint, row: dict[str, Any]) -> list[Record]:
        if ep is self.endpoints["payments"] and not isinstance(row.get("invoice"), dict) \
                and row.get("invoiceid"):
            # whether the payment settles its invoice: the invoice says (include[]=invoice
            # is not honoured everywhere)
            row = {**row, "invoice": self._invoice(str(row["invoiceid"]))}
        return super().records(ep, row)

    def _invoice(self, invoice_id: str) -> dict[str, Any]:
        cached = self._invoices.get(invoice_id)
        if cached is None:
            full = self.get("invoices", invoice_id) or {}
            cached = {k: full.get(k) for k in ("id", "invoice_number", "payment_status",
                                               "outstanding", "status")}
            if len(self._invoices) < 10_000:  # a run's working set, not the ledger
                self._invoices[invoice_id] = cached
        return cached

    def record(self, ep: Endpoint, row: dict[str, Any]) -> Record:
        rec = super().record(ep, row)
        if ep.cursor_field == "updated" and row.get("updated"):
            return Record(rec.id, rec.version, eastern_utc(str(row["updated"])), rec.data)
        return rec

    def delete(self, entity: str, obj_id: str) -> None:
        # vis_state alone: a PUT carrying vis_state discards every other field anyway
        ep = self.endpoints[entity]
        self.http.put(self.url(entity, obj_id), json=self.wrap(ep, {"vis_state": 1}),
                      idempotent=True)

    def create(self, entity: str, payload: dict[str, Any]) -> dict[str, Any]:
        if entity in self._names:  # a name index read this run learns what we create
            made = self._create(entity, payload)
            field = "name" if entity == "items" else "vendor_name"
            with self._names_lock:
                self._names[entity][str(made.get(field) or "").casefold()] = made
            return made
        return self._create(entity, payload)

    def _create(self, entity: str, payload: dict[str, Any]) -> dict[str, Any]:
        if entity == "bill_payments" and "code" not in payload.get("amount", {}):
            # a bill payment is in its bill's currency, which the BILL payment does not say
            bill = self._bills.get(str(payload["billid"])) or self.get(
                "bills", str(payload["billid"]))
            payload = {**payload, "amount": {**payload["amount"],
                                             "code": bill.get("currency_code") or "USD"}}
        return super().create(entity, payload)

    def find(self, entity: str, payload: dict[str, Any]) -> dict[str, Any] | None:
        if entity == "bill_payments":
            # The BILL bill-payment id is in our note: the bill's own payments tell.
            bill = self.get("bills", str(payload["billid"]))
            self._bills[str(payload["billid"])] = bill
            marker = payload.get("note") or ""
            for paid in bill.get("bill_payments") or []:
                if marker and marker in (paid.get("note") or "") and paid.get("vis_state") in (
                        0, None):
                    return paid
            return None
        return self._find_by_key(entity, payload)

    def _search(self, entity: str, **search: Any) -> list[dict[str, Any]]:
        """Live rows matching `search[...]` filters, every page."""
        ep = self.endpoints[entity]
        params = {f"search[{k}]": v for k, v in search.items()}
        return [row for rows in self.paginator.pages(self.http, self.url(entity), params,
                                                     ep.list_key)
                for row in rows if row.get("vis_state") in (0, None)]

    def _find_by_key(self, entity: str, payload: dict[str, Any]) -> dict[str, Any] | None:
        """The natural key of each receivables object (and of bill vendors and bills when
        FreshBooks is the target): client email; item SKU, then name; invoice number;
        our note on an invoice's payment; vendor name; vendor + bill number."""
        if entity == "clients" and payload.get("email"):
            hits = self._search("clients", email=payload["email"])
            return hits[0] if hits else None
        if entity == "items":
            if payload.get("sku"):
                hits = self._search("items", sku=payload["sku"])
                if hits:
                    return hits[0]
            return self._named("items", "name").get(str(payload.get("name") or "").casefold())
        if entity == "invoices" and payload.get("invoice_number"):
            hits = self._search("invoices", invoice_number=payload["invoice_number"])
            return hits[0] if hits else None
        if entity == "payments" and payload.get("note"):
            hits = self._search("payments", invoiceid=payload["invoiceid"])
            return next((r for r in hits if payload["note"] in (r.get("note") or "")), None)
        if entity == "bill_vendors":
            return self._named("bill_vendors", "vendor_name").get(
                str(payload.get("vendor_name") or "").casefold())
        if entity == "bills" and payload.get("bill_number"):
            hits = self._search("bills", vendorid=payload["vendorid"])
            return next((r for r in hits if r.get("bill_number") == payload["bill_number"]),
                        None)
        return None

    def _named(self, entity: str, field: str) -> dict[str, dict[str, Any]]:
        """Name -> row for lists FreshBooks cannot search by name, read once per run (and
        kept up to date by our own creates)."""
        with self._names_lock:
            if entity not in self._names:
                self._names[entity] = {str(r.get(field) or "").casefold(): r
                                       for r in self._search(entity) if r.get(field)}
            return self._names[entity]

    def id_of(self, entity: str, obj: Any) -> str:
        return str(obj.get("id") if obj.get("id") is not None else
                   obj[self.endpoints[entity].id_field])


    def reset_run_caches(self) -> None:
        self._bills.clear()
        self._invoices.clear()
        self._names.clear()


def zoneless_utc(stamp: str) -> str:
    """Bill and bill-vendor `updated_at` ("YYYY-MM-DD HH:MM:SS", no zone) as ISO UTC.
    Bills' are UTC in both SDKs; bill vendors' are UTC per the Python SDK (the Node SDK
    says Eastern). They only order the watermark shown by `status`, since these lists
    cannot be filtered by time anyway. Other accounting timestamps are US/Eastern."""
    if len(stamp) == 19 and stamp[10] == " ":
        return stamp.replace(" ", "T") + "Z"
    return stamp


def eastern_utc(stamp: str) -> str:
    """A receivables `updated` ("YYYY-MM-DD HH:MM:SS", US/Eastern, no zone) as ISO UTC."""
    try:
        local = datetime.strptime(stamp, "%Y-%m-%d %H:%M:%S").replace(tzinfo=EASTERN)
    except ValueError:
        return stamp
    return local.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def discover_account_id(http: HttpClient, chosen: str | None = None) -> list[dict[str, str]]:
    """The businesses the token can reach, owners and partners first."""
    me = http.get("/auth/api/v1/users/me").body.get("response", {})
    found = []
    for membership in me.get("business_memberships") or []:
        business = membership.get("business") or {}
        if business.get("account_id"):
            found.append({"account_id": str(business["account_id"]),
                          "name": str(business.get("name") or ""),
                          "role": str(membership.get("role") or "")})
    order = {"owner": 0, "business_partner": 1}
    found.sort(key=lambda b: order.get(b["role"], 2))
    return found
