"""Opening a configured system: its HTTP client, its credentials and its connector."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..audit import Audit
from ..clock import SYSTEM_CLOCK, Clock
from ..errors import AuthError, ConfigError
from ..state import State
from .base import Connector

SUPPORTED = ("freshbooks", "bill", "quickbooks", "servicenow", "servicetitan", "salesforce")


class _Opening:
    """What opening any system needs."""

    def __init__(self, system: Any, state: State, audit: Audit, data_dir: Path, clock: Clock,
                 env: dict[str, str] | None):
        from ..secrets import SecretStore

        self.system, self.state, self.audit, self.clock = system, state, audit, clock
        self.locks = data_dir / "locks"
        self.locks.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.secrets = SecretStore(system.name, env=env)
        self.base = system.resolved_base_url().rstrip("/")

    def http(self, auth: Any, classify: Any = None, *, max_in_flight: int,
             per_second: float | None = None) -> Any:
        from ..http import HttpClient

        return HttpClient(self.system.name, self.base, classify=classify, authenticator=auth,
                          max_in_flight=max_in_flight, per_second=per_second,
                          audit=self.audit, clock=self.clock, timeout=self.system.timeout)

    def learned(self, what: str) -> str | None:
        return self.state.get_value(f"{self.system.type}:{self.system.name}:{what}")

    def learn(self, what: str, value: str) -> None:
        self.state.set_value(f"{self.system.type}:{self.system.name}:{what}", value)
        self.audit.write("system.learned", system=self.system.name, **{what: value})


def _freshbooks(o: _Opening) -> Connector:
    from ..auth import OAuthRefreshAuth
    from .freshbooks import FreshBooks, classify, discover_account_id

    s = o.system
    auth = OAuthRefreshAuth(s.name, token_url=s.token_url(), client_id=s.client_id,
                            redirect_uri=s.redirect_uri, secrets=o.secrets, locks_dir=o.locks,
                            clock=o.clock)
    http = o.http(auth, classify, max_in_flight=s.max_in_flight or 2)
    account_id = s.account_id or o.learned("account_id")
    if not account_id:
        businesses = discover_account_id(http)
        if len(businesses) != 1:
            names = ", ".join(f"{b['account_id']} ({b['name']}, {b['role']})"
                              for b in businesses) or "none"
            raise AuthError(
                f"FreshBooks: cannot tell which business to use; the token reaches: {names}",
                system=s.name, fix=f"mlconnector auth login {s.name} --account-id ID")
        account_id = businesses[0]["account_id"]
        o.learn("account_id", account_id)
    return FreshBooks(http, account_id=account_id)


def _bill(o: _Opening) -> Connector:
    from ..auth import BillSessionAuth
    from .bill import Bill, classify

    s = o.system
    auth = BillSessionAuth(s.name, username=s.username, organization_id=s.organization_id,
                           secrets=o.secrets, locks_dir=o.locks, clock=o.clock)
    # BILL answers BDC_1322 above 3 requests in flight per organization.
    return Bill(o.http(auth, classify, max_in_flight=min(s.max_in_flight or 3, 3)))


def _quickbooks(o: _Opening) -> Connector:
    from ..auth import OAuthRefreshAuth
    from .quickbooks import QuickBooks, classify

    s = o.system
    realm = s.realm_id or o.learned("realm_id")
    if not realm:
        raise AuthError(f"{s.name}: no QuickBooks company (realm id) yet", system=s.name,
                        fix=f"run: mlconnector auth login {s.name}")
    auth = OAuthRefreshAuth(s.name, token_url=s.token_url(), client_id=s.client_id,
                            redirect_uri=s.redirect_uri, secrets=o.secrets, locks_dir=o.locks,
                            clock=o.clock, basic=True,
                            token_headers={"x-include-refresh-token-hard-expires-in": "true"})
    # 500 requests a minute and 10 in flight per realm; Intuit advises <= 4 and < 8/s
    http = o.http(auth, classify, max_in_flight=min(s.max_in_flight or 4, 10), per_second=8)
    return QuickBooks(http, realm_id=realm, minor_version=s.minor_version, clock=o.clock)


def _servicenow(o: _Opening) -> Connector:
    from ..auth import BasicAuth, ClientCredentialsAuth
    from .servicenow import ServiceNow, classify

    s = o.system
    if s.auth == "basic":
        auth: Any = BasicAuth(s.name, username=s.username, secrets=o.secrets)
    else:
        auth = ClientCredentialsAuth(s.name, token_url=s.token_url(), client_id=s.client_id,
                                     secrets=o.secrets, locks_dir=o.locks, clock=o.clock,
                                     default_lifetime=1800)
    return ServiceNow(o.http(auth, classify, max_in_flight=s.max_in_flight or 4), system=s)


def _servicetitan(o: _Opening) -> Connector:
    from ..auth import ClientCredentialsAuth

    s = o.system
    auth = ClientCredentialsAuth(s.name, token_url=s.token_url(), client_id=s.client_id,
                                 secrets=o.secrets, locks_dir=o.locks, clock=o.clock,
                                 header_secrets={"ST-App-Key": "app_key"},
                                 default_lifetime=900)
    from .servicetitan import ServiceTitan

    # 60 calls a second per app and tenant: stay under it
    return ServiceTitan(o.http(auth, max_in_flight=s.max_in_flight or 4, per_second=50),
                        tenant_id=s.tenant_id)


def _salesforce(o: _Opening) -> Connector:
    from ..auth import ClientCredentialsAuth

    s = o.system
    # no expires_in: the session lives while used; INVALID_SESSION_ID (401) re-authenticates
    auth = ClientCredentialsAuth(s.name, token_url=s.token_url(), client_id=s.client_id,
                                 secrets=o.secrets, locks_dir=o.locks, clock=o.clock,
                                 default_lifetime=3600)
    from .salesforce import Salesforce, classify

    return Salesforce(o.http(auth, classify, max_in_flight=s.max_in_flight or 4),
                      api_version=s.api_version)


OPENERS: dict[str, Callable[[_Opening], Connector]] = {
    "freshbooks": _freshbooks, "bill": _bill, "quickbooks": _quickbooks,
    "servicenow": _servicenow, "servicetitan": _servicetitan, "salesforce": _salesforce,
}


def open_system(system: Any, *, state: State, audit: Audit, data_dir: Path,
                clock: Clock = SYSTEM_CLOCK, env: dict[str, str] | None = None) -> Connector:
    """A connector for `[systems.NAME]`, ready to call (credentials are fetched lazily)."""
    opener = OPENERS.get(system.type)
    if opener is None:
        raise ConfigError(f"the {system.type} connector is not built yet (supported now: "
                          f"{', '.join(SUPPORTED)})", key=f"systems.{system.name}.type")
    conn = opener(_Opening(system, state, audit, data_dir, clock, env))
    conn.system_name = system.name
    return conn
