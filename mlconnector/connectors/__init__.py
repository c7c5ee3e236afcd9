"""Opening a configured system: its HTTP client, its credentials and its connector."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..audit import Audit
from ..clock import SYSTEM_CLOCK, Clock
from ..errors import AuthError, ConfigError
from ..state import State
from .base import Connector

SUPPORTED = ("freshbooks", "bill")


def open_system(system: Any, *, state: State, audit: Audit, data_dir: Path,
                clock: Clock = SYSTEM_CLOCK, env: dict[str, str] | None = None) -> Connector:
    """A connector for `[systems.NAME]`, ready to call (credentials are fetched lazily)."""
    from ..auth import BillSessionAuth, OAuthRefreshAuth
    from ..http import HttpClient
    from ..secrets import SecretStore

    locks = data_dir / "locks"
    locks.mkdir(parents=True, exist_ok=True, mode=0o700)
    secrets = SecretStore(system.name, env=env)
    base = system.resolved_base_url().rstrip("/")
    common: dict[str, Any] = {"audit": audit, "clock": clock, "timeout": system.timeout}

    if system.type == "freshbooks":
        from .freshbooks import FreshBooks, classify, discover_account_id

        auth = OAuthRefreshAuth(system.name, token_url=f"{base}/auth/oauth/token",
                                client_id=system.client_id, redirect_uri=system.redirect_uri,
                                secrets=secrets, locks_dir=locks, clock=clock)
        http = HttpClient(system.name, base, classify=classify, authenticator=auth,
                          max_in_flight=system.max_in_flight or 2, **common)
        key = f"freshbooks:{system.name}:account_id"
        account_id = system.account_id or state.get_value(key)
        if not account_id:
            businesses = discover_account_id(http)
            if len(businesses) != 1:
                names = ", ".join(f"{b['account_id']} ({b['name']}, {b['role']})"
                                  for b in businesses) or "none"
                raise AuthError(
                    f"FreshBooks: cannot tell which business to use; the token reaches: {names}",
                    system=system.name,
                    fix=f"mlconnector auth login {system.name} --account-id ID")
            account_id = businesses[0]["account_id"]
            state.set_value(key, account_id)
            audit.write("system.learned", system=system.name, account_id=account_id)
        return FreshBooks(http, account_id=account_id)

    if system.type == "bill":
        from .bill import Bill, classify

        auth = BillSessionAuth(system.name, username=system.username,
                               organization_id=system.organization_id, secrets=secrets,
                               locks_dir=locks, clock=clock)
        # BILL answers BDC_1322 above 3 requests in flight per organization.
        http = HttpClient(system.name, base, classify=classify, authenticator=auth,
                          max_in_flight=min(system.max_in_flight or 3, 3), **common)
        return Bill(http)

    raise ConfigError(f"the {system.type} connector is not built yet (supported now: "
                      f"{', '.join(SUPPORTED)})", key=f"systems.{system.name}.type")
