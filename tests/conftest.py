"""Shared fixtures: the sandbox emulators on loopback, a throwaway keyring, a data dir and
a config written the way a user would write it."""

from __future__ import annotations

import os
from pathlib import Path

import keyring
import pytest
import tomli_w

from mlconnector.clock import FakeClock


@pytest.fixture(autouse=True)
def _isolated(tmp_path, monkeypatch):
    """No test touches the real keyring, the user's config or data dir."""
    from mlconnector.sandbox.keyring_backend import SandboxKeyring

    ring_file = tmp_path / "keyring.json"
    monkeypatch.setenv("MLCONNECTOR_SANDBOX_KEYRING", str(ring_file))
    monkeypatch.setenv("PYTHON_KEYRING_BACKEND",
                       "mlconnector.sandbox.keyring_backend.SandboxKeyring")
    monkeypatch.setenv("MLCONNECTOR_DATA_DIR", str(tmp_path / "data"))
    for key in list(os.environ):
        if key.startswith("MLCONNECTOR_") and key not in (
                "MLCONNECTOR_SANDBOX_KEYRING", "MLCONNECTOR_DATA_DIR"):
            monkeypatch.delenv(key)
    previous = keyring.get_keyring()
    keyring.set_keyring(SandboxKeyring())
    yield
    keyring.set_keyring(previous)


@pytest.fixture
def clock():
    return FakeClock()


class Business:
    """A FreshBooks and a BILL sandbox, a config naming them, and helpers to sync."""

    def __init__(self, fb, bill, tmp_path: Path, monkeypatch):
        self.fb, self.bill, self.tmp_path = fb, bill, tmp_path
        self.data_dir = tmp_path / "data"
        self.config_path = tmp_path / "connectors.toml"
        monkeypatch.setenv("MLCONNECTOR_BOOKS_CLIENT_SECRET", fb.client_secret)
        monkeypatch.setenv("MLCONNECTOR_BOOKS_REFRESH_TOKEN", fb.issue_refresh_token())
        monkeypatch.setenv("MLCONNECTOR_AP_DEV_KEY", bill.dev_key)
        monkeypatch.setenv("MLCONNECTOR_AP_PASSWORD", bill.password)
        self.gl: dict[str, str] = {}
        self.fallbacks: dict[str, str] = {}
        self.options: dict[str, str] = {}

    def write_config(self) -> Path:
        doc = {
            "systems": {
                "books": {"type": "freshbooks", "client_id": self.fb.client_id,
                          "base_url": self.fb.base_url, "auth_url": self.fb.base_url},
                "ap": {"type": "bill", "base_url": self.bill.base_url,
                       "organization_id": self.bill.organization_id,
                       "username": self.bill.username},
            },
            "pairs": {"freshbooks-bill": {"source": "books", "target": "ap",
                                          "lookups": {"gl_accounts": self.gl},
                                          "fallbacks": self.fallbacks,
                                          "options": self.options}},
        }
        self.config_path.write_text(tomli_w.dumps(doc))
        return self.config_path

    def config(self):
        from mlconnector.config import load_config

        return load_config(self.write_config())

    def sync(self, **kw):
        from mlconnector.runner import run_pairs

        (result,) = run_pairs(self.config(), ["freshbooks-bill"], **kw)
        return result

    def replay(self, ids=None):
        from mlconnector.runner import replay

        return replay(self.config(), ids, pair=None if ids else "freshbooks-bill")

    def state(self):
        from mlconnector.state import State

        return State(self.data_dir / "state.db")

    def category(self, name: str, mapped: bool = True) -> int:
        cat = self.fb.add_category(name)
        if mapped:
            account = self.bill.add_chart_of_account(name)
            self.gl[name] = account["id"]
        return cat["categoryid"]


@pytest.fixture
def business(tmp_path, monkeypatch):
    from mlconnector.sandbox import BillSandbox, FreshBooksSandbox

    with FreshBooksSandbox() as fb, BillSandbox() as bill:
        yield Business(fb, bill, tmp_path, monkeypatch)


class PairHarness:
    """One pair's config, written the way a user writes it, and the commands' calls on it
    (`sync`, `replay`, the state). A subclass names the pair and its two systems."""

    PAIR = ""
    SOURCE, TARGET = "", ""

    def __init__(self, tmp_path: Path, clock=None):
        from mlconnector.clock import SYSTEM_CLOCK

        self.tmp_path, self.clock = tmp_path, clock or SYSTEM_CLOCK
        self.data_dir = tmp_path / "data"
        self.config_path = tmp_path / "connectors.toml"
        self.lookups: dict[str, dict[str, str]] = {}
        self.fallbacks: dict[str, str] = {}
        self.options: dict[str, str] = {}

    def systems(self) -> dict:
        raise NotImplementedError

    def write_config(self) -> Path:
        self.config_path.write_text(tomli_w.dumps({
            "systems": self.systems(),
            "pairs": {self.PAIR: {"source": self.SOURCE, "target": self.TARGET,
                                  "lookups": self.lookups, "fallbacks": self.fallbacks,
                                  "options": self.options}}}))
        return self.config_path

    def config(self):
        from mlconnector.config import load_config

        return load_config(self.write_config())

    def sync(self, **kw):
        from mlconnector.runner import run_pairs

        (result,) = run_pairs(self.config(), [self.PAIR], clock=self.clock, **kw)
        return result

    def replay(self, ids=None):
        from mlconnector.runner import replay

        return replay(self.config(), ids, pair=None if ids else self.PAIR, clock=self.clock)

    def state(self):
        from mlconnector.state import State

        return State(self.data_dir / "state.db")


class Ledger(PairHarness):
    """A QuickBooks and a ServiceNow sandbox on one fake clock."""

    PAIR, SOURCE, TARGET = "quickbooks-servicenow", "qbo", "sn"

    def __init__(self, qbo, sn, clock, tmp_path: Path, monkeypatch):
        super().__init__(tmp_path, clock)
        self.qbo, self.sn = qbo, sn
        monkeypatch.setenv("MLCONNECTOR_QBO_CLIENT_SECRET", qbo.client_secret)
        monkeypatch.setenv("MLCONNECTOR_QBO_REFRESH_TOKEN", qbo.issue_refresh_token())
        monkeypatch.setenv("MLCONNECTOR_SN_CLIENT_SECRET", sn.client_secret)
        self.gl = self.lookups.setdefault("gl_accounts", {})
        self.cost_centers = self.lookups.setdefault("cost_centers", {})
        self.sn_extra: dict = {}
        self.realm_in_config = True

    def systems(self) -> dict:
        return {
            "qbo": {"type": "quickbooks", "client_id": self.qbo.client_id,
                    "base_url": self.qbo.base_url, "auth_url": self.qbo.auth_url,
                    **({"realm_id": self.qbo.realm_id} if self.realm_in_config else {})},
            "sn": {"type": "servicenow", "base_url": self.sn.base_url,
                   "client_id": self.sn.client_id, **self.sn_extra},
        }

    def account(self, name: str, number: str, mapped: bool = True) -> str:
        """A QuickBooks expense account and (mapped) its ServiceNow GL account by number."""
        acct = self.qbo.add_account(name)
        if mapped:
            self.sn.add_gl_account(number, name)
            self.gl[name] = number
        return acct["Id"]


@pytest.fixture
def ledger(tmp_path, monkeypatch, clock):
    from mlconnector.sandbox import QuickBooksSandbox, ServiceNowSandbox

    with QuickBooksSandbox(clock=clock) as qbo, ServiceNowSandbox(clock=clock) as sn:
        yield Ledger(qbo, sn, clock, tmp_path, monkeypatch)
