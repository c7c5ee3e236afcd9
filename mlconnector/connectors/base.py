"""What every connector is made of: endpoints declared as data, a paginator per API
style, and a small class that turns them into read / get / find / create / update.

A connector knows nothing of pairs. Where an API is odd, its module says so in code;
everything else is the `Endpoint` table.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from ..errors import NotFound
from ..http import HttpClient


@dataclass(frozen=True)
class Record:
    id: str
    version: str            # same id + same version = already synced
    cursor: str | None      # ISO 8601 UTC; the flow's watermark advances over it
    data: dict[str, Any]


@dataclass(frozen=True)
class Endpoint:
    path: str                          # under the connector's API root
    id_field: str = "id"
    list_key: str | None = None        # where a list response keeps its rows
    item_key: str | None = None        # where a single response keeps its row / request key
    version_field: str | None = None   # an updated-at field; None: a content hash
    cursor_field: str | None = None    # a filterable updated-at field; None: full scan
    params: Mapping[str, Any] = field(default_factory=dict)   # fixed list params
    explode: str | None = None         # a list field whose elements are the records
    label: str = "record"              # in the users' words: "bill", "vendor"


class Page(list):
    """A page of records. `watermark` is set where the API says how far a complete read
    reached (QuickBooks CDC's server `time`); else the newest record's cursor counts."""

    watermark: str | None = None

    def __init__(self, records: Iterable[Record] = (), watermark: str | None = None):
        super().__init__(records)
        self.watermark = watermark


class Paginator(Protocol):
    def pages(self, http: HttpClient, path: str, params: dict[str, Any],
              list_key: str | None) -> Iterator[list[dict[str, Any]]]: ...


def content_version(data: Mapping[str, Any]) -> str:
    text = json.dumps(data, sort_keys=True, default=str, separators=(",", ":"))
    return "h:" + hashlib.sha256(text.encode()).hexdigest()[:24]


def without_hints(value: Any) -> Any:
    """A payload without its `_` keys: those steer the engine and the connectors (a
    reference that must resolve, an external-id field's name) and are never sent."""
    if isinstance(value, dict):
        return {k: without_hints(v) for k, v in value.items() if not str(k).startswith("_")}
    if isinstance(value, list):
        return [without_hints(v) for v in value]
    return value


def dig(body: Any, key: str | None) -> Any:
    """`a.b.c` into a parsed JSON body."""
    if key is None:
        return body
    for part in key.split("."):
        body = body.get(part) if isinstance(body, Mapping) else None
    return body


class Connector:
    """Shared behaviour; a system's module sets `endpoints`, `paginator` and overrides
    only what its API does differently."""

    system_type = ""
    system_name = ""   # the [systems.NAME] it was opened for (webhook inbox rows carry it)
    webhook_nouns: Mapping[str, str] = {}  # a webhook event's noun -> the entity it names
    # entities whose record found by its natural key is then written (not only linked):
    # where a create is several calls, a crash can leave one half done
    update_on_match: frozenset[str] = frozenset()
    dry_run = False    # set by the engine for `sync --dry-run`: find() must not write either
    endpoints: Mapping[str, Endpoint] = {}
    paginator: Paginator
    write_concurrency = 2

    def __init__(self, http: HttpClient, *, to_utc: Callable[[str], str] | None = None):
        self.http = http
        self._to_utc = to_utc or (lambda s: s)

    # -- paths ------------------------------------------------------------------------
    def root(self) -> str:
        return ""

    def url(self, entity: str, obj_id: str | None = None) -> str:
        path = f"{self.root()}/{self.endpoints[entity].path}"
        return f"{path}/{obj_id}" if obj_id is not None else path

    # -- reading ----------------------------------------------------------------------
    def read(self, entity: str, *, since: str | None = None) -> Iterator[list[Record]]:
        """Pages of records changed since `since` (a full scan where the API cannot
        filter by update time; the engine skips what it has already synced)."""
        ep = self.endpoints[entity]
        params = dict(ep.params)
        params.update(self.since_params(ep, since))
        for rows in self.paginator.pages(self.http, self.url(entity), params, ep.list_key):
            yield [rec for row in rows for rec in self.records(ep, row)]

    def plan_reads(self, reads: Mapping[str, str | None]) -> None:
        """Told before a run which entities its flows will read, and since when (an API
        that answers for several entities in one call, like QuickBooks CDC, uses it)."""

    def needs_reconcile(self, entity: str) -> bool:
        """True when this run's read may have missed deletions of `entity` (the engine
        then calls `reconcile` with the ids it has written)."""
        return False

    def reconcile(self, entity: str, ids: list[str]) -> list[Record]:
        """Deleted-record stubs for those of `ids` that no longer exist."""
        return []

    def webhook_entity(self, event: str) -> str | None:
        """Which of this connector's entities a webhook event (as the inbox stores its
        name: "bill.update", "payment.updated") is about, by its noun."""
        return self.webhook_nouns.get(event.split(".", 1)[0].lower())

    def from_webhooks(self, entity: str, events: list[dict[str, Any]]) -> list[Record]:
        """The records the inbox's events name, as they are now (a webhook is a hint,
        never the truth); one that is gone is left to the next full read."""
        ep = self.endpoints[entity]
        out: list[Record] = []
        for obj_id in dict.fromkeys(str(e["id"]) for e in events if e.get("id")):
            try:
                out.extend(self.records(ep, self.get(entity, obj_id)))
            except NotFound:
                continue
        return out

    def since_params(self, ep: Endpoint, since: str | None) -> dict[str, Any]:
        return {}

    def records(self, ep: Endpoint, row: dict[str, Any]) -> list[Record]:
        if ep.explode:
            rows = []
            for child in row.get(ep.explode) or []:
                merged = {k: v for k, v in row.items() if k != ep.explode}
                merged.update({f"parent_{ep.id_field}": row.get(ep.id_field)})
                merged.update(child)
                rows.append(merged)
        else:
            rows = [row]
        return [self.record(ep, r) for r in rows]

    def record(self, ep: Endpoint, row: dict[str, Any]) -> Record:
        version = row.get(ep.version_field) if ep.version_field else None
        cursor_raw = row.get(ep.cursor_field or ep.version_field or "")
        return Record(
            id=str(row[ep.id_field]),
            version=str(version) if version else content_version(row),
            cursor=self._to_utc(str(cursor_raw)) if cursor_raw else None,
            data=row,
        )

    def get(self, entity: str, obj_id: str) -> dict[str, Any]:
        ep = self.endpoints[entity]
        return dig(self.http.get(self.url(entity, obj_id)).body, ep.item_key)

    def refetch(self, entity: str, record_id: str, data: Mapping[str, Any]) -> Record | None:
        """The record as it is now in the API (for replay and retries); None if gone."""
        ep = self.endpoints[entity]
        if not ep.explode:
            return self.record(ep, self.get(entity, record_id))
        parent = self.get(entity, str(data[f"parent_{ep.id_field}"]))
        return next((r for r in self.records(ep, parent) if r.id == record_id), None)

    # -- writing ----------------------------------------------------------------------
    def wrap(self, ep: Endpoint, payload: dict[str, Any]) -> dict[str, Any]:
        payload = without_hints(payload)
        return {ep.item_key.split(".")[-1]: payload} if ep.item_key else payload

    def create(self, entity: str, payload: dict[str, Any]) -> dict[str, Any]:
        ep = self.endpoints[entity]
        resp = self.http.post(self.url(entity), json=self.wrap(ep, payload))
        return dig(resp.body, ep.item_key)

    def update(self, entity: str, obj_id: str, payload: dict[str, Any]) -> dict[str, Any]:
        ep = self.endpoints[entity]
        resp = self.http.put(self.url(entity, obj_id), json=self.wrap(ep, payload),
                             idempotent=True)
        return dig(resp.body, ep.item_key)

    def delete(self, entity: str, obj_id: str) -> None:
        raise NotImplementedError(f"{self.system_type} cannot delete {entity}")

    def find(self, entity: str, payload: dict[str, Any]) -> dict[str, Any] | None:
        """The target record with the same natural key, or None. Every create is
        preceded by this, so a crash between a write and its local commit heals."""
        return None

    def id_of(self, entity: str, obj: Mapping[str, Any]) -> str:
        return str(obj[self.endpoints[entity].id_field])

    def reset_run_caches(self) -> None:
        """Forget anything cached for one run (natural-key indexes)."""
