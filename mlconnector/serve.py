"""`mlconnector webhook serve` and `webhook register`: the receiver wired to the config.

The receiver (webhooks.py) stores verified events in the inbox; the next sync of a pair
that reads the system picks them up. What each system verifies with comes from its
secrets: QuickBooks' app-wide verifier token (`webhook_verifier`), BILL's subscription
security key (`webhook_security_key`), FreshBooks' per-callback verifiers (learned in the
registration handshake and kept in the keyring as `webhook_verifiers`).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from .audit import Audit
from .clock import SYSTEM_CLOCK, Clock
from .errors import ConfigError
from .secrets import SecretStore
from .state import State
from .webhooks import (
    DEFAULT_HOST,
    DEFAULT_PORT,
    Inbox,
    WebhookReceiver,
    confirm_freshbooks_callback,
    register_freshbooks_callback,
)

FRESHBOOKS_VERIFIERS = "webhook_verifiers"  # keyring: JSON {callback id: verifier}
FRESHBOOKS_EVENTS = ("bill", "bill_vendor")  # nouns: every create/update/delete of them


def secrets_for(cfg: Any, state: State) -> Callable[[str], Mapping[str, Any] | None]:
    def lookup(name: str) -> Mapping[str, Any] | None:
        system = cfg.systems.get(name)
        if system is None:
            return None
        store = SecretStore(name)
        if system.type == "quickbooks":
            realm = system.realm_id or state.get_value(f"quickbooks:{name}:realm_id")
            return {"type": "quickbooks", "verifier": store.get("webhook_verifier"),
                    "realm_id": realm}
        if system.type == "bill":
            return {"type": "bill", "security_key": store.get("webhook_security_key")}
        if system.type == "freshbooks":
            raw = store.get_stored(FRESHBOOKS_VERIFIERS)
            return {"type": "freshbooks", "verifiers": json.loads(raw) if raw else {}}
        return None

    return lookup


def build_receiver(cfg: Any, state: State, data_dir: Path, *, host: str = DEFAULT_HOST,
                   port: int = DEFAULT_PORT, clock: Clock = SYSTEM_CLOCK) -> WebhookReceiver:
    audit = Audit(data_dir / "audit", clock=clock)
    inbox = Inbox(state.path)

    def on_handshake(system: str, callback_id: str, verifier: str) -> None:
        """FreshBooks sent a callback's verifier: confirm it with FreshBooks, and only
        then trust it (a handshake cannot be signed)."""
        from .connectors import open_system

        conn: Any = open_system(cfg.systems[system], state=state, audit=audit,
                                data_dir=data_dir, clock=clock)
        confirm_freshbooks_callback(conn.http, conn.account_id, callback_id, verifier)
        store = SecretStore(system)
        known = json.loads(store.get_stored(FRESHBOOKS_VERIFIERS) or "{}")
        known[str(callback_id)] = verifier
        store.set(FRESHBOOKS_VERIFIERS, json.dumps(known))
        audit.write("webhook.confirmed", system=system, callback_id=callback_id)

    return WebhookReceiver(secrets_for=secrets_for(cfg, state), inbox=inbox, audit=audit,
                           clock=clock, on_handshake=on_handshake, host=host, port=port)


def register(cfg: Any, name: str, url: str, *, state: State, data_dir: Path,
             clock: Clock = SYSTEM_CLOCK) -> list[str]:
    """Register `url` (the public https address that reaches `webhook serve`) with the
    system where its API allows; else say where a person does it."""
    system = cfg.systems.get(name)
    if system is None:
        raise ConfigError(f"no system named {name!r}; configured: {', '.join(cfg.systems)}")
    target = f"{url.rstrip('/')}/webhooks/{system.type}/{name}"
    if system.type == "freshbooks":
        from .connectors import open_system

        audit = Audit(data_dir / "audit", clock=clock)
        conn: Any = open_system(system, state=state, audit=audit, data_dir=data_dir,
                                clock=clock)
        done = []
        for event in FRESHBOOKS_EVENTS:
            cb = register_freshbooks_callback(conn.http, conn.account_id, event, target)
            done.append(f"registered callback {cb.callback_id} for {event} events at {target}"
                        "; FreshBooks now sends its verifier there: keep `mlconnector "
                        "webhook serve` running to confirm it")
        audit.close()
        return done
    if system.type == "quickbooks":
        return [f"QuickBooks webhooks are set in the Intuit developer portal, not by API: "
                f"app > Webhooks > endpoint URL {target}; choose Bill, BillPayment, Vendor "
                f"and JournalEntry; then store the portal's verifier token with: "
                f"mlconnector auth set {name} webhook_verifier"]
    if system.type == "bill":
        return [f"Create a BILL subscription (POST /v3/subscriptions on the connect-events "
                f"host) with notificationUrl {target} and the payment.updated event; store "
                f"the one-time securityKey it returns with: "
                f"mlconnector auth set {name} webhook_security_key"]
    raise ConfigError(f"{name} is {system.type}: mlconnector takes no webhooks from it "
                      "(it is polled)")
