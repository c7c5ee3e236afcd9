"""Credentials for QuickBooks, ServiceNow, ServiceTitan and Salesforce as a person sets them up:
consent through the sandbox's authorize redirect, `auth status`, `auth test`, `auth logout`,
and each lifecycle (rotation, expiry, re-authentication)."""

from __future__ import annotations

import json
import threading

import pytest
import requests
import tomli_w
from typer.testing import CliRunner

from mlconnector.audit import Audit
from mlconnector.cli import app
from mlconnector.consent import login
from mlconnector.errors import AuthError
from mlconnector.secrets import SecretStore

runner = CliRunner()


def browser_follows(url: str) -> str:
    resp = requests.get(url, allow_redirects=False, timeout=5)
    assert resp.status_code in (302, 303), resp.text
    return resp.headers["Location"]


def qbo_consent(ledger, *, tamper=None):
    cfg = ledger.config()
    shown: list[str] = []
    with ledger.state() as state:
        return login(cfg.systems["qbo"], state_db=state,
                     audit=Audit(ledger.data_dir / "audit"), data_dir=ledger.data_dir,
                     no_browser=True, out=shown.append, clock=ledger.clock,
                     read_line=lambda: (tamper or (lambda u: u))(browser_follows(shown[-1])))


def cli(ledger, *args, **kw):
    return runner.invoke(app, ["--config", str(ledger.write_config()), *args], **kw)


# -- QuickBooks -----------------------------------------------------------------------------
def test_quickbooks_login_learns_the_realm_from_the_redirect(ledger, monkeypatch):
    monkeypatch.delenv("MLCONNECTOR_QBO_REFRESH_TOKEN")
    realm = ledger.qbo.realm_id
    ledger.realm_in_config = False
    assert ledger.sync().exit_code == 3  # no company yet: `auth login` first
    done = qbo_consent(ledger)
    assert done["realm_id"] == realm
    assert done["company"] == ledger.qbo.company_name
    with ledger.state() as state:
        assert state.get_value("quickbooks:qbo:realm_id") == realm
    status = cli(ledger, "auth", "status", "qbo", "--json")
    (row,) = json.loads(status.output)
    assert row["realm_id"] == realm and row["consent_expires"]  # the 5-year end
    assert row["secrets"]["refresh_token"] == "keyring"
    seed_and_sync = ledger.sync()
    assert seed_and_sync.exit_code == 0, seed_and_sync.aborted
    test = cli(ledger, "auth", "test", "qbo")
    assert test.exit_code == 0 and ledger.qbo.company_name in test.output


def test_quickbooks_login_through_the_browser_and_a_loopback_redirect(ledger, monkeypatch):
    import socket

    monkeypatch.delenv("MLCONNECTOR_QBO_REFRESH_TOKEN")
    with socket.socket() as probe:  # a free port for the redirect URI
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    ledger.realm_in_config = False
    cfg = ledger.config()
    system = cfg.systems["qbo"].model_copy(
        update={"redirect_uri": f"http://127.0.0.1:{port}/callback"})
    browser: list[threading.Thread] = []

    def open_browser(url: str) -> bool:
        # a browser: the consent page redirects, and it follows to the local catcher
        def go() -> None:
            requests.get(url, allow_redirects=True, timeout=10)

        browser.append(threading.Thread(target=go))
        browser[0].start()
        return True

    with ledger.state() as state:
        done = login(system, state_db=state, audit=Audit(ledger.data_dir / "audit"),
                     data_dir=ledger.data_dir, open_browser=open_browser, out=lambda s: None,
                     clock=ledger.clock)
    browser[0].join()
    assert done["realm_id"] == ledger.qbo.realm_id
    assert SecretStore("qbo").get_refresh_token()


def test_quickbooks_login_refuses_a_forged_state(ledger):
    with pytest.raises(AuthError, match="state does not match"):
        qbo_consent(ledger, tamper=lambda u: u.replace("state=", "state=forged"))


def test_quickbooks_rotated_refresh_token_is_kept_and_the_old_one_never_reused(ledger):
    ledger.qbo.refresh_rotate_after = 0  # a new value on every refresh
    assert ledger.sync().exit_code == 0
    first = SecretStore("qbo").get_refresh_token()
    ledger.qbo.expire_access_tokens()
    assert ledger.sync().exit_code == 0
    second = SecretStore("qbo").get_refresh_token()
    assert first != second  # rotated and persisted; the environment's value is spent
    assert ledger.qbo.token_calls == 2


def test_hundred_overlapping_quickbooks_runs_refresh_once(ledger):
    from mlconnector.connectors import open_system

    ledger.qbo.refresh_rotate_after = 0
    cfg = ledger.config()
    errors: list[Exception] = []

    def one_run():
        try:
            with ledger.state() as state:
                conn = open_system(cfg.systems["qbo"], state=state,
                                   audit=Audit(ledger.data_dir / "audit"),
                                   data_dir=ledger.data_dir, clock=ledger.clock)
                conn.company_name()
        except Exception as exc:  # noqa: BLE001 - collected for the assertion
            errors.append(exc)

    threads = [threading.Thread(target=one_run) for _ in range(100)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert ledger.qbo.token_calls == 1


def test_revoked_quickbooks_consent_exits_3_with_the_command(ledger):
    ledger.qbo.revoke_all()
    result = ledger.sync()
    assert result.exit_code == 3
    assert "mlconnector auth login qbo" in result.aborted


def test_quickbooks_logout_revokes_at_intuit(ledger):
    assert ledger.sync().exit_code == 0
    SecretStore("qbo").set("refresh_token", SecretStore("qbo").get_refresh_token())
    out = cli(ledger, "auth", "logout", "qbo")
    assert out.exit_code == 0 and "revoked" in out.output
    assert any(p.endswith("/tokens/revoke") for _, p, _ in ledger.qbo.request_log)


# -- ServiceNow -----------------------------------------------------------------------------
def test_servicenow_auth_test_checks_the_tables_and_columns_the_pair_writes(ledger):
    ok = cli(ledger, "auth", "test", "sn")
    assert ok.exit_code == 0, ok.output
    assert "columns in" in ok.output and "Accounts Payable Operations: yes" in ok.output

    ledger.sn_extra = {"columns": {"invoice_import": {"u_sync_token": "u_qbo_sync_token"}}}
    bad = cli(ledger, "auth", "test", "sn")
    assert bad.exit_code == 2
    assert "no column u_qbo_sync_token" in bad.output
    assert "[systems.sn.columns.invoice_import]" in bad.output


def test_servicenow_refused_client_exits_3_without_the_secret(ledger, monkeypatch):
    monkeypatch.setenv("MLCONNECTOR_SN_CLIENT_SECRET", "not-the-sandbox-secret")
    out = cli(ledger, "auth", "test", "sn")
    assert out.exit_code == 3
    assert "not-the-sandbox-secret" not in out.output


def test_servicenow_basic_auth(ledger, monkeypatch):
    ledger.sn_extra = {"auth": "basic", "username": ledger.sn.username}
    monkeypatch.setenv("MLCONNECTOR_SN_PASSWORD", ledger.sn.password)
    ok = cli(ledger, "auth", "test", "sn")
    assert ok.exit_code == 0, ok.output and ledger.sn.username in ok.output
    monkeypatch.setenv("MLCONNECTOR_SN_PASSWORD", "wrong-password")
    assert cli(ledger, "auth", "test", "sn").exit_code == 3


def test_servicenow_token_is_reused_across_runs_until_it_expires(ledger):
    ledger.qbo.add_vendor("One")
    assert ledger.sync().exit_code == 0
    ledger.qbo.add_vendor("Two")
    ledger.clock.advance(600)
    assert ledger.sync().exit_code == 0
    assert ledger.sn.token_calls == 1
    ledger.clock.advance(1800)
    ledger.qbo.add_vendor("Three")
    assert ledger.sync().exit_code == 0
    assert ledger.sn.token_calls == 2


# -- ServiceTitan and Salesforce ------------------------------------------------------------
@pytest.fixture
def field_and_crm(tmp_path, monkeypatch, clock):
    from mlconnector.sandbox import SalesforceSandbox, ServiceTitanSandbox

    with ServiceTitanSandbox(clock=clock) as st, SalesforceSandbox(clock=clock) as sf:
        monkeypatch.setenv("MLCONNECTOR_FIELD_CLIENT_SECRET", st.client_secret)
        monkeypatch.setenv("MLCONNECTOR_FIELD_APP_KEY", st.app_key)
        monkeypatch.setenv("MLCONNECTOR_CRM_CLIENT_SECRET", sf.client_secret)
        path = tmp_path / "connectors.toml"
        path.write_text(tomli_w.dumps({"systems": {
            "field": {"type": "servicetitan", "client_id": st.client_id,
                      "tenant_id": st.tenant_id, "base_url": st.base_url,
                      "auth_url": st.auth_url},
            "crm": {"type": "salesforce", "client_id": sf.client_id, "base_url": sf.base_url},
        }}))
        yield st, sf, path


def test_servicetitan_auth_test_names_the_tenant(field_and_crm, monkeypatch):
    st, _, path = field_and_crm
    ok = runner.invoke(app, ["--config", str(path), "auth", "test", "field"])
    assert ok.exit_code == 0, ok.output
    assert st.tenant_id in ok.output
    again = runner.invoke(app, ["--config", str(path), "auth", "test", "field"])
    assert again.exit_code == 0 and st.token_calls == 1  # cached across runs
    monkeypatch.setenv("MLCONNECTOR_FIELD_APP_KEY", "wrong-app-key")
    refused = runner.invoke(app, ["--config", str(path), "auth", "test", "field"])
    assert refused.exit_code == 3 and "wrong-app-key" not in refused.output


def test_salesforce_auth_test_and_reauth_on_invalid_session(field_and_crm):
    _, sf, path = field_and_crm
    ok = runner.invoke(app, ["--config", str(path), "auth", "test", "crm"])
    assert ok.exit_code == 0, ok.output
    assert sf.org_name in ok.output
    sf.expire_access_tokens()  # INVALID_SESSION_ID: a new token, the same call again
    again = runner.invoke(app, ["--config", str(path), "auth", "test", "crm"])
    assert again.exit_code == 0, again.output
    assert sf.token_calls == 2


def test_no_quickbooks_or_servicenow_secret_reaches_the_data_dir(ledger):
    ledger.qbo.refresh_rotate_after = 0
    office = ledger.account("Office Supplies", "600100")
    vendor = ledger.qbo.add_vendor("Leak Check Ltd")
    ledger.qbo.add_bill(vendor["Id"], [{"amount": "1.00", "account_id": office}])
    assert ledger.sync().exit_code == 0
    ledger.qbo.expire_access_tokens()
    ledger.clock.advance(3600)
    assert ledger.sync().exit_code == 0
    values = [ledger.qbo.client_secret, ledger.sn.client_secret,
              SecretStore("qbo").get_refresh_token(), SecretStore("qbo").env[
                  "MLCONNECTOR_QBO_REFRESH_TOKEN"], *ledger.qbo._access, *ledger.qbo._refresh,
              *ledger.sn._access]
    assert len(values) > 5
    for path in ledger.data_dir.rglob("*"):
        if path.is_file():
            data = path.read_bytes()
            for value in values:
                assert value.encode() not in data, (path, "leaks a secret")
