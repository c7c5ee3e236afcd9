"""secrets.py and the sandbox keyring: environment first, the keyring second, rotation
chains, and keyring trouble turned into AuthErrors that name the fixes."""

from __future__ import annotations

import json
import os
import stat
import threading

import keyring
import keyring.backend
import keyring.core
import pytest
from keyring.backends import chainer, fail, null

import mlconnector.sandbox.keyring_backend as sandbox_keyring_module
from mlconnector.errors import AuthError
from mlconnector.sandbox.keyring_backend import SandboxKeyring
from mlconnector.secrets import CHAIN_FIELD, SecretStore, digest, env_var


def test_the_environment_wins_over_the_keyring():
    store = SecretStore("ap", env={"MLCONNECTOR_AP_DEV_KEY": "from-env"})
    store.set("dev_key", "from-keyring")
    assert store.get("dev_key") == "from-env" and store.source("dev_key") == "environment"
    bare = SecretStore("ap", env={})
    assert bare.get("dev_key") == "from-keyring" and bare.source("dev_key") == "keyring"
    assert bare.get("password") is None and bare.source("password") is None


def test_names_in_the_environment_and_the_keyring():
    assert env_var("my-books", "client-secret") == "MLCONNECTOR_MY_BOOKS_CLIENT_SECRET"
    store = SecretStore("my-books", env={"MLCONNECTOR_MY_BOOKS_CLIENT_SECRET": "s"})
    assert store.get("client-secret") == "s"
    store.set("dev_key", "k")
    assert keyring.get_password("mlconnector/my-books", "dev_key") == "k"


def test_an_empty_environment_value_counts_as_unset():
    store = SecretStore("ap", env={"MLCONNECTOR_AP_PASSWORD": ""})
    store.set("password", "kept")
    assert store.get("password") == "kept"


def test_delete_forgets_and_tolerates_nothing_stored():
    store = SecretStore("ap", env={})
    store.set("password", "x")
    store.delete("password")
    store.delete("password")
    assert store.get("password") is None


# -- rotation chains ----------------------------------------------------------------------------
def test_a_rotated_token_wins_until_the_environment_value_changes():
    env = {"MLCONNECTOR_BOOKS_REFRESH_TOKEN": "boot-1"}
    store = SecretStore("books", env=env)
    assert store.get_refresh_token() == "boot-1"
    assert store.refresh_token_source() == "environment"
    store.save_refresh_token("rot-1")
    assert store.get_refresh_token() == "rot-1"  # boot-1 was spent by the provider
    assert store.refresh_token_source() == "keyring"
    store.save_refresh_token("rot-2")
    assert store.get_refresh_token() == "rot-2"
    env["MLCONNECTOR_BOOKS_REFRESH_TOKEN"] = "boot-2"  # a new consent: a new chain
    assert store.get_refresh_token() == "boot-2"
    store.save_refresh_token("rot-3")
    assert store.get_refresh_token() == "rot-3"
    assert store.get_stored(CHAIN_FIELD) == digest("boot-2")


def test_the_chain_keeps_a_hash_never_the_environment_value(tmp_path):
    store = SecretStore("books", env={"MLCONNECTOR_BOOKS_REFRESH_TOKEN": "boot-SECRET"})
    store.save_refresh_token("rot-1")
    text = (tmp_path / "keyring.json").read_text()  # conftest's sandbox keyring file
    assert "boot-SECRET" not in text and digest("boot-SECRET") in text


def test_without_an_environment_value_the_keyring_token_is_used():
    store = SecretStore("books", env={})
    assert store.get_refresh_token() is None
    store.save_refresh_token("rot-1")
    assert store.get_refresh_token() == "rot-1"
    assert store.get_stored(CHAIN_FIELD) is None
    # an environment value set later starts a new chain
    store.env = {"MLCONNECTOR_BOOKS_REFRESH_TOKEN": "boot-9"}
    assert store.get_refresh_token() == "boot-9"


# -- keyring trouble ------------------------------------------------------------------------------
def test_no_keyring_means_environment_only_and_set_names_the_fixes():
    keyring.set_keyring(fail.Keyring())
    store = SecretStore("ap", env={"MLCONNECTOR_AP_DEV_KEY": "k"})
    assert store.get("dev_key") == "k" and store.get("password") is None
    assert not store.writable()
    with pytest.raises(AuthError) as exc:
        store.set("password", "hunter2-SECRET")
    assert "keyrings.cryptfile" in exc.value.fix
    assert "KEYRING_CRYPTFILE_PASSWORD" in exc.value.fix
    assert "MLCONNECTOR_AP_PASSWORD" in exc.value.fix
    assert "hunter2" not in str(exc.value) + exc.value.fix
    store.delete("password")  # nothing to forget: not an error


@pytest.mark.parametrize("backend,usable", [
    (fail.Keyring(), False), (null.Keyring(), False), (SandboxKeyring(), True)])
def test_writable(backend, usable):
    keyring.set_keyring(backend)
    assert SecretStore("x", env={}).writable() is usable


def test_a_chainer_with_nothing_to_chain_is_not_writable(monkeypatch):
    monkeypatch.setattr(chainer.ChainerBackend, "backends", [])
    keyring.set_keyring(chainer.ChainerBackend())
    assert not SecretStore("x", env={}).writable()


class Broken(keyring.backend.KeyringBackend):
    priority = -5

    def get_password(self, service, username):
        raise keyring.errors.KeyringLocked("Failed to unlock the collection")

    def set_password(self, service, username, password):
        raise keyring.errors.PasswordSetError(f"could not store {password}")

    def delete_password(self, service, username):
        raise keyring.errors.PasswordDeleteError("locked")


def test_a_failing_keyring_is_an_auth_error_naming_the_fixes_and_no_value():
    keyring.set_keyring(Broken())
    store = SecretStore("ap", env={})
    with pytest.raises(AuthError) as exc:
        store.get("password")
    assert "KeyringLocked" in str(exc.value) and "keyrings.cryptfile" in exc.value.fix
    with pytest.raises(AuthError) as exc:
        store.set("password", "pw-SECRET")
    assert "pw-SECRET" not in str(exc.value) and exc.value.__cause__ is None


def test_a_keyring_waiting_for_a_prompt_does_not_hang_the_job():
    release = threading.Event()

    class Prompting(SandboxKeyring):
        def get_password(self, service, username):
            release.wait(5)  # a password prompt nobody will answer under cron
            return None

    keyring.set_keyring(Prompting())
    store = SecretStore("ap", env={}, keyring_timeout=0.05)
    try:
        with pytest.raises(AuthError, match="no answer within") as exc:
            store.get("password")
        assert "KEYRING_CRYPTFILE_PASSWORD" in exc.value.fix
    finally:
        release.set()


# -- the sandbox keyring ------------------------------------------------------------------------
def test_sandbox_keyring_is_never_chosen_on_its_own():
    assert SandboxKeyring.priority < 0
    assert SandboxKeyring not in [type(k) for k in keyring.backend.get_all_keyring()
                                  if k.priority > 0]
    chosen = keyring.core.load_keyring("mlconnector.sandbox.keyring_backend.SandboxKeyring")
    assert isinstance(chosen, SandboxKeyring)
    assert "PLAIN TEXT" in sandbox_keyring_module.__doc__
    assert "sandbox" in sandbox_keyring_module.__doc__


def test_sandbox_keyring_file_is_private_and_created_on_first_write(tmp_path, monkeypatch):
    path = tmp_path / "ring" / "k.json"
    monkeypatch.setenv("MLCONNECTOR_SANDBOX_KEYRING", str(path))
    ring = SandboxKeyring()
    assert ring.get_password("s", "u") is None and not path.exists()
    ring.set_password("s", "u", "v")
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert json.loads(path.read_text()) == {"s": {"u": "v"}}
    assert SandboxKeyring().get_password("s", "u") == "v"  # another instance, same file
    ring.delete_password("s", "u")
    with pytest.raises(keyring.errors.PasswordDeleteError):
        ring.delete_password("s", "u")


def test_sandbox_keyring_in_memory_without_the_variable(monkeypatch):
    monkeypatch.delenv("MLCONNECTOR_SANDBOX_KEYRING")
    ring = SandboxKeyring()
    ring.set_password("mem", "u", "v")
    try:
        assert SandboxKeyring().get_password("mem", "u") == "v"
    finally:
        ring.delete_password("mem", "u")


def test_sandbox_keyring_survives_concurrent_writers(tmp_path, monkeypatch):
    monkeypatch.setenv("MLCONNECTOR_SANDBOX_KEYRING", str(tmp_path / "k.json"))
    threads = [threading.Thread(target=SandboxKeyring().set_password,
                                args=("s", f"u{i}", str(i))) for i in range(20)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(json.loads((tmp_path / "k.json").read_text())["s"]) == 20
