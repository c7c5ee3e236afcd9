"""Webhooks: signature checks, the inbox, the receiver, and callback registration.

FreshBooks signs the *form fields*, re-serialized the way Python's default `json.dumps`
writes a dict, with the callback's verifier (one secret per callback, learned in the
registration handshake). BILL signs the raw body with the subscription's security key.
Both headers are base64 of an HMAC-SHA256 and compared in constant time.

A verified event is stored in the `webhook_inbox` table of the state database and answered
200 at once; the sync reads the inbox later (webhooks carry ids, never the truth: the
record is fetched again). Every delivery is audited as `webhook.received` or
`webhook.rejected`; neither line ever holds the body, a signature or a secret.

`secrets_for(system_name)` tells the receiver what a configured system verifies with, as a
dict (None, or a KeyError, means "no such system"):

| route                                | keys of the dict                                        |
|--------------------------------------|---------------------------------------------------------|
| `POST /webhooks/freshbooks/{system}` | `verifiers` {callback id: verifier} and/or `verifier`   |
| `POST /webhooks/bill/{system}`       | `security_keys` {subscription id: key} or `security_key` |
| `POST /webhooks/quickbooks/{system}` | `verifier` (the app's verifier token), `realm_id`        |

An optional `type` ("freshbooks" / "bill") makes a route of the other kind "unknown
system". A FreshBooks delivery does not say which callback it belongs to, so every known
verifier of the system is tried (each callback covers one event; there are few).
"""

from .inbox import Inbox, InboxItem
from .payloads import (
    BILL_HEADER,
    DEFAULT_HOST,
    DEFAULT_PORT,
    FRESHBOOKS_HEADER,
    MAX_BODY,
    QUICKBOOKS_HEADER,
    BillEvent,
    FreshBooksEvent,
    MalformedWebhook,
    QuickBooksEvent,
    bill_dedupe_key,
    freshbooks_dedupe_key,
    parse_bill,
    parse_freshbooks,
    parse_quickbooks,
    verify_bill,
    verify_freshbooks,
    verify_quickbooks,
)
from .receiver import WebhookReceiver
from .register import (
    Callback,
    confirm_freshbooks_callback,
    register_freshbooks_callback,
    resend_freshbooks_verification,
)

__all__ = [
    "BILL_HEADER", "DEFAULT_HOST", "DEFAULT_PORT", "FRESHBOOKS_HEADER", "MAX_BODY",
    "QUICKBOOKS_HEADER", "BillEvent", "Callback", "FreshBooksEvent", "Inbox", "InboxItem",
    "MalformedWebhook", "QuickBooksEvent", "WebhookReceiver", "bill_dedupe_key",
    "confirm_freshbooks_callback", "freshbooks_dedupe_key", "parse_bill", "parse_freshbooks",
    "parse_quickbooks", "register_freshbooks_callback", "resend_freshbooks_verification",
    "verify_bill", "verify_freshbooks", "verify_quickbooks",
]
