"""Salesforce REST API as a target (api/salesforce.md).

Odd things handled here:
- Records are upserted by an external-id field (`PATCH /sobjects/{Object}/{Field}/{value}`),
  so a create that crashed before its local commit is healed by the next run: the same
  value finds the same record. The field's name comes with the payload (`_external_field`,
  from the pair's options) and its value as `_external_id`; neither goes in the body.
- Errors are a JSON array with `errorCode`; an exhausted API budget is 403
  REQUEST_LIMIT_EXCEEDED (no 429); an expired session is 401 INVALID_SESSION_ID.
- Unknown fields are refused (400 INVALID_FIELD), unlike ServiceNow: `check_fields` (run by
  `auth test`) asks describe whether every field the pairs write exists.
- A payment closes its Opportunity (`_opportunity`) as won only when its invoice is paid
  in full (`_paid_in_full`); the Opportunity is the target record of each payment.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any
from urllib.parse import quote

from ..errors import (
    ApiError,
    AuthError,
    NotFound,
    ReauthRequired,
    RejectedError,
    UnavailableError,
)
from ..http import HttpClient, Response, server_message
from .base import Connector

OBJECTS = {"accounts": "Account", "opportunities": "Opportunity"}


def _paid(status: Any) -> bool:
    """A FreshBooks invoice payment_status that means paid in full."""
    return str(status).lower() in ("paid", "auto-paid")


def classify(resp: Response) -> ApiError | AuthError | None:
    if resp.status < 400 and resp.status != 300:
        return None
    code, message = server_message(resp)
    kw = {"system": "salesforce", "status": resp.status, "code": code}
    if resp.status == 401 or code == "INVALID_SESSION_ID":
        return ReauthRequired(message or "session expired or invalid", **kw)
    if code == "REQUEST_LIMIT_EXCEEDED":
        return UnavailableError(f"Salesforce API request limit reached: {message}; the next "
                                "run carries on", **kw)
    if resp.status == 403:
        return AuthError(f"Salesforce refused the request [{code}]: {message} (the Run As user "
                         "lacks a permission on this object or field)", system="salesforce",
                         fix="give the integration user's profile or permission set access; "
                             "then: mlconnector auth test <system>")
    if resp.status == 300:
        return RejectedError("several Salesforce records share this external id; make the "
                             "field Unique or merge them", **kw)
    if resp.status == 404:
        return NotFound(message or "not found", **kw)
    if resp.status >= 500:
        return None
    return RejectedError(message or f"HTTP {resp.status}", **kw)


class Salesforce(Connector):
    system_type = "salesforce"
    write_concurrency = 4   # concurrent long requests are limited per org; short ones are fine

    def __init__(self, http: HttpClient, *, api_version: str):
        super().__init__(http)
        self.version = api_version

    def path(self, rest: str) -> str:
        return f"/services/data/{self.version}/{rest}"

    @staticmethod
    def fields(payload: dict[str, Any]) -> dict[str, Any]:
        return {k: v for k, v in payload.items() if not k.startswith("_")}

    def _by_external(self, obj: str, payload: dict[str, Any]) -> str:
        field, value = payload.get("_external_field"), payload.get("_external_id")
        if not field or value in (None, ""):
            raise RejectedError(f"no external id for this {obj} (set the pair's "
                                "external-id options)", system="salesforce")
        return self.path(f"sobjects/{obj}/{field}/{quote(str(value), safe='')}")

    # -- the connector interface -----------------------------------------------------------
    def id_of(self, entity: str, obj: dict[str, Any]) -> str:
        return str(obj.get("id") or obj.get("Id"))

    def find(self, entity: str, payload: dict[str, Any]) -> dict[str, Any] | None:
        if entity == "opportunity_payments":
            return None  # written as an update of the opportunity, never created
        obj = OBJECTS[entity]
        try:
            body = self.http.get(self._by_external(obj, payload), params={"fields": "Id"}).body
        except NotFound:
            return None
        return {"id": body.get("Id")} if isinstance(body, dict) else None

    def create(self, entity: str, payload: dict[str, Any]) -> dict[str, Any]:
        if entity == "opportunity_payments":
            return self._close_won(payload)
        obj = OBJECTS[entity]
        resp = self.http.patch(self._by_external(obj, payload),
                               json=self._body(payload, creating=True),
                               idempotent=True)  # an upsert: sending it twice is harmless
        if isinstance(resp.body, dict) and resp.body.get("id"):
            return {"id": resp.body["id"]}
        found = self.find(entity, payload)  # 204 (before API 46): ask for the id
        if not found:
            raise RejectedError(f"Salesforce accepted the {obj} but cannot find it",
                                system="salesforce")
        return found

    def update(self, entity: str, obj_id: str, payload: dict[str, Any]) -> dict[str, Any]:
        if entity == "opportunity_payments":
            return self._close_won(payload)
        obj = OBJECTS[entity]
        self.http.patch(self.path(f"sobjects/{obj}/{obj_id}"),
                        json=self._body(payload, creating=False), idempotent=True)
        return {"id": obj_id}

    def _body(self, payload: dict[str, Any], *, creating: bool) -> dict[str, Any]:
        """The fields; for an Opportunity, its stage: won once the invoice is paid in
        full, the open stage when it is new, else untouched (a stage a salesperson moved
        stays where they put it)."""
        body = self.fields(payload)
        if payload.get("_won_stage") and _paid(payload.get("_paid_in_full")):
            body["StageName"] = payload["_won_stage"]
        elif creating and payload.get("_open_stage"):
            body["StageName"] = payload["_open_stage"]
        return body

    def _close_won(self, payload: dict[str, Any]) -> dict[str, Any]:
        opp = str(payload["_opportunity"])
        if _paid(payload.get("_paid_in_full")):
            self.http.patch(self.path(f"sobjects/Opportunity/{opp}"),
                            json=self.fields(payload), idempotent=True)
        return {"id": opp}

    # -- auth test ------------------------------------------------------------------------
    def check_fields(self, wanted: dict[str, set[str]]) -> list[str]:
        problems = []
        for obj, names in wanted.items():
            try:
                body = self.http.get(self.path(f"sobjects/{obj}/describe")).body or {}
            except NotFound:
                problems.append(f"object {obj} does not exist (or the user cannot see it)")
                continue
            fields = {f.get("name"): f for f in body.get("fields") or []}
            for name in sorted(names):
                if name not in fields:
                    problems.append(f"{obj} has no field {name}")
        return problems

    def schema_for(self, flows: Iterable[tuple[str, Any]], options: dict[str, Any]
                   ) -> dict[str, set[str]]:
        want: dict[str, set[str]] = {}
        for entity, mapping in flows:
            obj = OBJECTS.get(entity, "Opportunity")
            names = {k for k in mapping.fields if not k.startswith("_")}
            ext = next((options.get(r["option"]) for k, r in mapping.fields.items()
                        if k == "_external_field" and "option" in r), None)
            want.setdefault(obj, set()).update(names | ({ext} if ext else set()))
        return want
