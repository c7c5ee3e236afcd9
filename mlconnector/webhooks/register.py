"""Registering callbacks where the API allows it (FreshBooks)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..errors import ApiError


# ------------------------------------------------------------------------- registration
@dataclass(frozen=True)
class Callback:
    callback_id: str
    event: str | None
    uri: str | None
    verified: bool


def _callbacks_path(account_id: str, callback_id: str | None = None) -> str:
    path = f"/events/account/{account_id}/events/callbacks"
    return f"{path}/{callback_id}" if callback_id is not None else path


def _callback(body: Any) -> Callback:
    result = body.get("response", {}).get("result", {}) if isinstance(body, dict) else {}
    cb = result.get("callback") if isinstance(result, dict) else None
    if not isinstance(cb, dict):
        raise ApiError("FreshBooks answered without a callback", system="freshbooks")
    callback_id = cb.get("callbackid", cb.get("id"))
    if callback_id is None or str(callback_id) == "":
        raise ApiError("FreshBooks answered without a callback id", system="freshbooks")
    return Callback(callback_id=str(callback_id), event=cb.get("event"), uri=cb.get("uri"),
                    verified=bool(cb.get("verified")))


def register_freshbooks_callback(http: Any, account_id: str, event: str, uri: str) -> Callback:
    """Register `uri` for `event` ("bill.create", or a bare noun such as "bill"). FreshBooks
    then POSTs the handshake (object_id = callback id, verifier) to `uri`; nothing is
    delivered until `confirm_freshbooks_callback` sends the verifier back."""
    resp = http.post(_callbacks_path(account_id),
                     json={"callback": {"event": event, "uri": uri}})
    return _callback(resp.body)


def confirm_freshbooks_callback(http: Any, account_id: str, callback_id: str,
                                verifier: str) -> Callback:
    resp = http.put(_callbacks_path(account_id, str(callback_id)),
                    json={"callback": {"verifier": verifier}})
    return _callback(resp.body)


def resend_freshbooks_verification(http: Any, account_id: str, callback_id: str) -> Callback:
    resp = http.put(_callbacks_path(account_id, str(callback_id)),
                    json={"callback": {"resend": True}})
    return _callback(resp.body)

