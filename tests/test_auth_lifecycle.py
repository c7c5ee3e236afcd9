"""Credentials over many runs: reuse, rotation, expiry mid-run, refusal, and no leaks."""

from __future__ import annotations

import threading

from mlconnector.auth import OAuthRefreshAuth
from mlconnector.http import HttpClient
from mlconnector.secrets import SecretStore

from .test_freshbooks_bill import seed


def test_runs_reuse_the_access_token_and_the_bill_session(business):
    seed(business)
    business.sync()
    business.sync()
    business.sync()
    assert business.fb.token_calls == 1
    assert business.bill.login_count == 1


def test_rotated_refresh_token_is_saved_and_wins_over_the_spent_env_value(business):
    seed(business)
    business.sync()
    store = SecretStore("books")
    saved = store.get_stored("refresh_token")
    assert saved and saved != store.env["MLCONNECTOR_BOOKS_REFRESH_TOKEN"]
    assert store.get_refresh_token() == saved
    # the access token dies: the next run refreshes with the saved token, not the env one
    business.fb.expire_access_tokens()
    store.delete("access_token")
    assert business.sync().exit_code == 0
    assert business.fb.token_calls == 2


def test_access_token_expiring_mid_run_is_recovered_without_a_duplicate(business):
    seed(business, bills=3)
    business.sync(flow="vendors")
    business.fb.expire_access_tokens()
    result = business.sync()
    assert result.exit_code == 0
    assert len(business.bill.bills) == 3


def test_a_revoked_refresh_token_exits_3_with_the_command_to_run(business, monkeypatch):
    seed(business)
    monkeypatch.setenv("MLCONNECTOR_BOOKS_REFRESH_TOKEN", "not-a-token-we-issued")
    result = business.sync()
    assert result.exit_code == 3
    assert "mlconnector auth login books" in result.aborted
    assert "not-a-token-we-issued" not in result.aborted
    assert business.bill.bills == {}


def test_many_threads_on_an_expired_token_make_one_token_call(business, tmp_path):
    store = SecretStore("books")
    http = HttpClient("books", business.fb.base_url)
    auth = OAuthRefreshAuth("books", token_url=f"{business.fb.base_url}/auth/oauth/token",
                            client_id=business.fb.client_id, redirect_uri=None, secrets=store,
                            locks_dir=tmp_path / "locks")
    headers: list[dict] = []

    def call():
        h: dict[str, str] = {}
        auth.apply(h, http)
        headers.append(h)

    threads = [threading.Thread(target=call) for _ in range(50)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert business.fb.token_calls == 1
    assert len({h["Authorization"] for h in headers}) == 1


def test_no_secret_value_reaches_the_data_dir_or_the_audit(business):
    seed(business)
    business.sync()
    secrets = [business.fb.client_secret, business.bill.password, business.bill.dev_key]
    store = SecretStore("books")
    secrets.append(store.get_stored("refresh_token"))
    for path in business.data_dir.rglob("*"):
        if path.is_file():
            data = path.read_bytes()
            for value in secrets:
                assert value.encode() not in data, (path, "leaks a secret")


def test_killed_between_receiving_and_saving_a_token_next_run_asks_for_consent(
        business, monkeypatch):
    """The provider rotated the refresh token, but the process died before the new one
    was saved: the old one is dead, so the next run must say plainly what to do."""
    seed(business)

    def killed(self, token):
        raise KeyboardInterrupt("SIGKILL")

    saving = SecretStore.save_refresh_token
    monkeypatch.setattr(SecretStore, "save_refresh_token", killed)
    try:
        business.sync()
    except KeyboardInterrupt:
        pass
    monkeypatch.setattr(SecretStore, "save_refresh_token", saving)

    result = business.sync()  # same config, same (now spent) environment token
    assert result.exit_code == 3
    assert "refused (already used or revoked)" in result.aborted
    assert "mlconnector auth login books" in result.aborted
    assert business.bill.bills == {}
