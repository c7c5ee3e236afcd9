"""The keyring on a headless server, as cron runs mlconnector: stdin is not a terminal and
nobody answers a prompt. keyrings.cryptfile with its password in the environment keeps
rotated tokens across runs; no usable keyring stops with exit 3 and both fixes."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

pytest.importorskip("keyrings.cryptfile")

CRYPTFILE = "keyrings.cryptfile.cryptfile.CryptFileKeyring"


def cron_env(tmp_path, **extra: str) -> dict[str, str]:
    """The environment of a cron job: no terminal, no desktop session."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("DISPLAY", "DBUS_SESSION_BUS_ADDRESS", "MLCONNECTOR_SANDBOX_KEYRING")}
    env.update(XDG_DATA_HOME=str(tmp_path / "xdg-data"), HOME=str(tmp_path / "home"), **extra)
    return env


def run(business, env, *args: str) -> subprocess.CompletedProcess:
    path = business.write_config()
    return subprocess.run([sys.executable, "-m", "mlconnector", "--config", str(path), *args],
                          env=env, capture_output=True, text=True, stdin=subprocess.DEVNULL,
                          timeout=120)


def test_cryptfile_keyring_keeps_the_rotated_token_under_cron(business, tmp_path):
    env = cron_env(tmp_path, PYTHON_KEYRING_BACKEND=CRYPTFILE,
                   KEYRING_CRYPTFILE_PASSWORD="sandbox-file-password")
    first = run(business, env, "sync", "freshbooks-bill")
    assert first.returncode == 0, first.stdout + first.stderr
    assert business.fb.token_calls == 1
    (ring,) = (tmp_path / "xdg-data").rglob("cryptfile_pass.cfg")
    stored = ring.read_text()
    assert os.environ["MLCONNECTOR_BOOKS_REFRESH_TOKEN"] not in stored  # encrypted

    business.fb.expire_access_tokens()
    second = run(business, env, "sync", "freshbooks-bill")
    # the bootstrap token in the environment was spent by the first run: only the rotated
    # one, read back from the encrypted file, can have worked
    assert second.returncode == 0, second.stdout + second.stderr
    assert business.fb.token_calls == 2
    status = run(business, env, "auth", "status", "books")
    assert "keyring (rotated from the environment value)" in status.stdout


def test_cryptfile_without_its_password_exits_3_instead_of_waiting(business, tmp_path):
    env = cron_env(tmp_path, PYTHON_KEYRING_BACKEND=CRYPTFILE)
    result = run(business, env, "sync", "freshbooks-bill")
    assert result.returncode == 3, result.stdout + result.stderr
    text = result.stdout + result.stderr
    assert "KEYRING_CRYPTFILE_PASSWORD" in text and "MLCONNECTOR_BOOKS_REFRESH_TOKEN" in text
    assert "Traceback" not in text
    assert business.fb.token_calls == 0  # the single-use refresh token was not spent


def test_no_keyring_at_all_names_both_fixes(business, tmp_path):
    env = cron_env(tmp_path, PYTHON_KEYRING_BACKEND="keyring.backends.fail.Keyring")
    result = run(business, env, "sync", "freshbooks-bill")
    assert result.returncode == 3, result.stdout + result.stderr
    text = result.stdout + result.stderr
    assert "keyrings.cryptfile" in text and "MLCONNECTOR_BOOKS_REFRESH_TOKEN" in text
    assert business.fb.token_calls == 0
