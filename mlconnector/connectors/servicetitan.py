"""ServiceTitan v2 REST API, read-only (api/servicetitan.md).

Odd things handled here:
- Most entities are read through export feeds: the watermark is the feed's opaque
  `continueFrom` token, not a time, and a feed includes deactivated and deleted rows
  (`active: false` is a void). The pricebook is three feeds; its watermark keeps a token
  per feed.
- Vendors have no feed: a paged list by `modifiedOnOrAfter` (with `active=Any`, else
  deactivated vendors vanish), oldest first.
- A customer's email lives in its contacts, fetched for each page of customers in one
  bulk call.
- Invoice items name their pricebook item by `skuId`; 0 means none.
- A payment may pay several invoices: one record per invoice it is applied to.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

from ..http import HttpClient
from .base import Connector, Endpoint, Page, Record

PAGE = 500          # the page advises <= 500 per page
IDS_PER_CALL = 50   # `ids` and `customerIds` filters take at most 50
PRICEBOOK = ("materials", "services", "equipment")


def utc(stamp: str) -> str:
    """A ServiceTitan time (UTC, up to 7 fractional digits) as ISO UTC to the second."""
    text = stamp.rstrip("Z")
    text = text.split(".")[0]
    try:
        return datetime.fromisoformat(text).replace(tzinfo=UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    except ValueError:
        return stamp


class ServiceTitan(Connector):
    system_type = "servicetitan"
    write_concurrency = 1  # read-only
    endpoints = {
        "customers": Endpoint("crm/v2/tenant/{tenant}/export/customers", label="customer"),
        "invoices": Endpoint("accounting/v2/tenant/{tenant}/export/invoices", label="invoice"),
        "payments": Endpoint("accounting/v2/tenant/{tenant}/export/payments", label="payment"),
        "purchase_orders": Endpoint("inventory/v2/tenant/{tenant}/export/purchase-orders",
                                    label="purchase order"),
        "vendors": Endpoint("inventory/v2/tenant/{tenant}/vendors", label="vendor",
                            version_field="modifiedOn", cursor_field="modifiedOn",
                            params={"active": "Any", "sort": "+ModifiedOn"}),
        "pricebook": Endpoint("pricebook/v2/tenant/{tenant}/export/{kind}", label="item"),
    }
    # by-id reads (replay): the paginated lists filtered by ids
    by_id = {"customers": "crm/v2/tenant/{tenant}/customers",
             "invoices": "accounting/v2/tenant/{tenant}/invoices",
             "payments": "accounting/v2/tenant/{tenant}/payments",
             "purchase_orders": "inventory/v2/tenant/{tenant}/purchase-orders",
             "vendors": "inventory/v2/tenant/{tenant}/vendors"}

    def __init__(self, http: HttpClient, *, tenant_id: str):
        super().__init__(http)
        self.tenant = tenant_id

    def _path(self, template: str, **kw: str) -> str:
        return "/" + template.format(tenant=self.tenant, **kw)

    # -- reading --------------------------------------------------------------------------
    def read(self, entity: str, *, since: str | None = None) -> Iterator[list[Record]]:
        ep = self.endpoints[entity]
        if entity == "vendors":
            yield from self._paged(ep, since)
        elif entity == "pricebook":
            yield from self._pricebook(ep, since)
        else:
            for rows, token in self._feed(self._path(ep.path), since):
                yield Page(self._records(entity, rows), watermark=token)

    def _feed(self, path: str, token: str | None) -> Iterator[tuple[list[dict], str | None]]:
        """An export feed from `token` (or its start) to its current end."""
        while True:
            params = {"from": token} if token else {}
            body = self.http.get(path, params=params).body or {}
            token = body.get("continueFrom") or token
            yield list(body.get("data") or []), token
            if not body.get("hasMore"):
                return

    def _pricebook(self, ep: Endpoint, since: str | None) -> Iterator[Page]:
        tokens: dict[str, str | None] = json.loads(since) if since else {}
        for kind in PRICEBOOK:
            for rows, token in self._feed(self._path(ep.path, kind=kind), tokens.get(kind)):
                tokens[kind] = token
                for row in rows:
                    row["itemType"] = kind
                yield Page(self._records("pricebook", rows), watermark=json.dumps(
                    tokens, sort_keys=True))

    def _pages(self, path: str, params: dict[str, Any]) -> Iterator[list[dict[str, Any]]]:
        """A paginated list (§3.1), page after page until `hasMore` is false."""
        page = 1
        while True:
            body = self.http.get(path, params={**params, "page": page,
                                               "pageSize": PAGE}).body or {}
            yield list(body.get("data") or [])
            if not body.get("hasMore"):
                return
            page += 1

    def _paged(self, ep: Endpoint, since: str | None) -> Iterator[Page]:
        params = {**ep.params, **({"modifiedOnOrAfter": since} if since else {})}
        for rows in self._pages(self._path(ep.path), params):
            yield Page(self._records("vendors", rows))

    def _records(self, entity: str, rows: list[dict[str, Any]]) -> list[Record]:
        if entity == "customers" and rows:
            self._add_emails(rows)
        out: list[Record] = []
        for row in rows:
            stamp = str(row.get("modifiedOn") or "")
            version = f"{utc(stamp)}|{row.get('active')}" if stamp else None
            cursor = utc(stamp) if entity == "vendors" and stamp else None
            if entity == "invoices":
                for item in row.get("items") or []:
                    if not item.get("skuId"):
                        item["skuId"] = None  # 0: no pricebook item
            if entity == "payments":
                for applied in row.get("appliedTo") or []:
                    data = {k: v for k, v in row.items() if k != "appliedTo"}
                    data.update(parent_id=row["id"], invoiceId=applied.get("appliedTo"),
                                appliedAmount=applied.get("appliedAmount"))
                    out.append(Record(f"{row['id']}:{applied.get('appliedTo')}",
                                      version or "", cursor, data))
                continue
            # pricebook ids are SKU ids, unique across the three kinds (invoice items name
            # them by `skuId` alone)
            out.append(Record(str(row["id"]), version or "", cursor, row))
        return out

    def _add_emails(self, customers: list[dict[str, Any]]) -> None:
        """Email lives in contacts: the first active Email contact, preferring the one
        that gets invoice statements."""
        ids = [str(c["id"]) for c in customers]
        found: dict[str, list[dict[str, Any]]] = {}
        path = self._path("crm/v2/tenant/{tenant}/customers/contacts")
        for i in range(0, len(ids), IDS_PER_CALL):
            chunk = ",".join(ids[i:i + IDS_PER_CALL])
            for rows in self._pages(path, {"customerIds": chunk}):
                for contact in rows:
                    found.setdefault(str(contact.get("customerId")), []).append(contact)
        for customer in customers:
            emails = [c for c in found.get(str(customer["id"]), [])
                      if c.get("type") == "Email" and c.get("active", True) and c.get("value")]
            emails.sort(key=lambda c: not (c.get("preferences") or {}).get(
                "invoiceStatementNotification"))
            customer["email"] = emails[0]["value"] if emails else None

    def refetch(self, entity: str, record_id: str, data: dict[str, Any]) -> Record | None:
        if entity == "pricebook":
            kind = str(data.get("itemType") or "materials")
            path = self._path(f"pricebook/v2/tenant/{{tenant}}/{kind}/{record_id}")
            row = self.http.get(path).body or {}
            row["itemType"] = kind
            rows = [row]
        else:
            obj_id = str(data.get("parent_id") or record_id.split(":")[0])
            params: dict[str, Any] = {"ids": obj_id}
            if entity in ("invoices", "payments"):
                params["activeState"] = "All"
            elif entity in ("customers", "vendors"):
                params["active"] = "Any"
            rows = (self.http.get(self._path(self.by_id[entity]), params=params).body
                    or {}).get("data") or []
        return next((r for r in self._records(entity, rows) if r.id == record_id), None)
