"""`mlconnector auth …` as a person runs it, against the sandbox's consent pages."""

from __future__ import annotations

import pytest
import requests
from typer.testing import CliRunner

from mlconnector.audit import Audit
from mlconnector.cli import app
from mlconnector.consent import login
from mlconnector.errors import AuthError
from mlconnector.secrets import SecretStore

runner = CliRunner()


def browser_follows(url: str) -> str:
    """What a browser does with the authorize address: it is sent to the redirect URI."""
    resp = requests.get(url, allow_redirects=False, timeout=5)
    assert resp.status_code in (302, 303)
    return resp.headers["Location"]


def consent(business, *, tamper=None, **kw):
    cfg = business.config()
    shown: list[str] = []
    state = business.state()
    try:
        return login(cfg.systems["books"], state_db=state,
                     audit=Audit(business.data_dir / "audit"), data_dir=business.data_dir,
                     no_browser=True, out=shown.append,
                     read_line=lambda: (tamper or (lambda u: u))(browser_follows(shown[-1])),
                     **kw)
    finally:
        state.close()


def test_login_through_the_paste_path_stores_tokens_and_the_account(business, monkeypatch):
    monkeypatch.delenv("MLCONNECTOR_BOOKS_REFRESH_TOKEN")
    done = consent(business)
    assert done["account_id"] == business.fb.account_id
    assert SecretStore("books").get_refresh_token()
    # the stored login is enough for a sync
    assert business.sync().exit_code == 0


def test_a_redirect_with_another_state_is_refused(business):
    def forged(url):
        return url.replace("state=", "state=forged")

    with pytest.raises(AuthError, match="state does not match"):
        consent(business, tamper=forged)


def test_auth_set_reads_stdin_and_status_never_shows_values(business, monkeypatch):
    path = business.write_config()
    monkeypatch.delenv("MLCONNECTOR_AP_PASSWORD")
    result = runner.invoke(app, ["--config", str(path), "auth", "set", "ap", "password"],
                           input="s3cret-sandbox-value\n")
    assert result.exit_code == 0, result.output
    assert SecretStore("ap").get("password") == "s3cret-sandbox-value"
    status = runner.invoke(app, ["--config", str(path), "auth", "status"])
    assert status.exit_code == 0
    assert "password: keyring" in status.output and "dev_key: environment" in status.output
    assert "s3cret-sandbox-value" not in status.output
    bad = runner.invoke(app, ["--config", str(path), "auth", "set", "ap", "apikey"], input="x\n")
    assert bad.exit_code == 2


def test_auth_test_says_who_we_are_and_refusal_exits_3(business, monkeypatch):
    path = business.write_config()
    ok = runner.invoke(app, ["--config", str(path), "auth", "test", "ap"])
    assert ok.exit_code == 0 and business.bill.organization_id in ok.output
    fb = runner.invoke(app, ["--config", str(path), "auth", "test", "books"])
    assert fb.exit_code == 0 and business.fb.account_id in fb.output
    monkeypatch.setenv("MLCONNECTOR_AP_PASSWORD", "wrong")
    SecretStore("ap").delete("session")
    refused = runner.invoke(app, ["--config", str(path), "auth", "test", "ap"])
    assert refused.exit_code == 3 and "wrong" not in refused.output


def test_logout_forgets_tokens(business):
    path = business.write_config()
    assert runner.invoke(app, ["--config", str(path), "auth", "test", "books"]).exit_code == 0
    assert SecretStore("books").get_stored("access_token")
    out = runner.invoke(app, ["--config", str(path), "auth", "logout", "books"])
    assert out.exit_code == 0 and "forgot access_token" in out.output
    assert SecretStore("books").get_stored("access_token") is None
