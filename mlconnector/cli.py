"""Thin Typer commands: parse, call, render. Heavy imports stay inside the commands so
that `mlconnector --help` starts fast."""

from __future__ import annotations

import json
import os
import sys
from typing import Any

import typer

app = typer.Typer(add_completion=False, no_args_is_help=True, rich_markup_mode=None,
                  help="Keeps accounting and operations systems in step: once, on the right "
                       "GL account, with an audit trail.")
config_app = typer.Typer(no_args_is_help=True, help="Check the configuration.")
app.add_typer(config_app, name="config")
auth_app = typer.Typer(no_args_is_help=True, help="Credentials and consent.")
app.add_typer(auth_app, name="auth")
webhook_app = typer.Typer(no_args_is_help=True, help="Receive webhooks into the inbox.")
app.add_typer(webhook_app, name="webhook")

_state: dict[str, Any] = {"config": None}


@app.callback()
def _global(config: str = typer.Option(None, "--config", help="Path of connectors.toml "
                                        "(else $MLCONNECTOR_CONFIG, ./connectors.toml, the "
                                        "user config dir).")) -> None:
    _state["config"] = config


def _load():
    from .config import find_config_path, load_config

    return load_config(find_config_path(_state["config"]))


def _ui():
    from . import render

    return render


@app.command()
def sync(
    pairs: list[str] = typer.Argument(None, help="Pair names from [pairs.NAME]."),
    all_pairs: bool = typer.Option(False, "--all", help="Every configured pair."),
    flow: str = typer.Option(None, "--flow", help="Only this flow."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Read and map; write nothing."),
    full: bool = typer.Option(False, "--full", help="Ignore watermarks; read everything."),
    since: str = typer.Option(None, "--since", help="Read changes since this date."),
    as_json: bool = typer.Option(False, "--json", help="Machine-readable output."),
) -> None:
    """Pull what changed, map it, write it once; print a summary."""

    def body() -> int:
        from .runner import run_pairs, worst_exit

        cfg = _load()
        names = list(cfg.pairs) if all_pairs else list(pairs or [])
        if not names:
            from .errors import ConfigError

            raise ConfigError("name a pair to sync, or --all")
        ui = _ui()
        with ui.Progress(enabled=not as_json) as progress:
            results = run_pairs(cfg, names, flow=flow, dry_run=dry_run, full=full, since=since,
                                on_progress=progress.update)
        ui.show_results(results, as_json=as_json)
        return worst_exit(results)

    _exit(body)


@app.command()
def replay(
    ids: list[int] = typer.Argument(None, help="Replay ids from `mlconnector failures`."),
    pair: str = typer.Option(None, "--pair", help="With --all: every parked record of a pair."),
    all_parked: bool = typer.Option(False, "--all", help="Every parked record (of --pair)."),
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """Retry held or failed records with the current config and the latest source data."""

    def body() -> int:
        from .errors import ConfigError
        from .runner import replay as do_replay
        from .runner import worst_exit

        if not ids and not all_parked:
            raise ConfigError("name replay ids, or --pair P --all")
        cfg = _load()
        results = do_replay(cfg, ids or None, pair=pair)
        _ui().show_results(results, as_json=as_json)
        return worst_exit(results)

    _exit(body)


@app.command()
def failures(pair: str = typer.Argument(None), as_json: bool = typer.Option(False, "--json")
             ) -> None:
    """List held and failed records with their replay ids and reasons."""

    def body() -> int:
        from .runner import open_state

        state, _ = open_state(_cfg_or_none())
        try:
            _ui().show_failures(state.parked(pair), as_json=as_json)
        finally:
            state.close()
        return 0

    _exit(body)


@app.command()
def status(as_json: bool = typer.Option(False, "--json")) -> None:
    """Pairs, last run, watermarks, held and failed counts."""

    def body() -> int:
        from .runner import open_state

        cfg = _load()
        state, directory = open_state(cfg)
        try:
            rows = [{"pair": name, "last_run": state.last_run(name),
                     "watermarks": state.watermarks(name),
                     "synced": state.count_mapped(name), "parked": state.parked_counts(name)}
                    for name in cfg.pairs]
        finally:
            state.close()
        _ui().show_status(rows, directory, as_json=as_json)
        return 0

    _exit(body)


@app.command()
def audit(
    run: str = typer.Option(None, "--run", help="Only this run id."),
    record: str = typer.Option(None, "--record", help="Only lines about this source or "
                                                     "target id."),
    since: str = typer.Option(None, "--since", help="From this UTC date (YYYY-MM-DD)."),
    event: str = typer.Option(None, "--event", help="Only this event, e.g. record.held."),
) -> None:
    """Read the audit trail (JSON Lines, one per event)."""

    def body() -> int:
        from .audit import read_lines
        from .runner import open_state

        state, directory = open_state(_cfg_or_none())
        state.close()
        for line in read_lines(directory / "audit", since_day=since[:10] if since else None):
            if run and line.get("run_id") != run:
                continue
            if record and record not in (line.get("source_id"), line.get("target_id")):
                continue
            if event and line.get("event") != event:
                continue
            sys.stdout.write(json.dumps(line, ensure_ascii=False) + "\n")
        return 0

    _exit(body)


@config_app.command("check")
def config_check(path: str = typer.Argument(None, help="Defaults to the config in use."),
                 as_json: bool = typer.Option(False, "--json")) -> None:
    """Validate the config and print the resolved flows and mappings."""

    def body() -> int:
        from .config import find_config_path, load_config
        from .runner import resolve_pair

        cfg = load_config(find_config_path(path or _state["config"]))
        pairs = [resolve_pair(cfg, name) for name in cfg.pairs]
        _ui().show_config(cfg, pairs, as_json=as_json)
        return 0

    _exit(body)


@app.command()
def demo(keep: str = typer.Option(None, "--keep", help="Keep the demo's config, state and "
                                  "audit in this directory."),
         latency: float = typer.Option(0.0, "--latency", help="Seconds added to each sandbox "
                                       "request.")) -> None:
    """Run every pair against the offline sandbox and show what happens."""

    def body() -> int:
        from .demo import run_demo

        return run_demo(keep=keep, latency=latency)

    _exit(body)


def _system(cfg, name: str):
    from .errors import ConfigError

    system = cfg.systems.get(name)
    if system is None:
        raise ConfigError(f"no system named {name!r}; configured: "
                          f"{', '.join(cfg.systems) or 'none'}", key="systems")
    return system


def _auth_context(cfg, name: str):
    from .audit import Audit
    from .runner import open_state

    state, directory = open_state(cfg)
    audit = Audit(directory / "audit", run_id=None, pair=None)
    return _system(cfg, name), state, audit, directory


@auth_app.command("login")
def auth_login(system: str = typer.Argument(..., help="A [systems.NAME] of an OAuth type."),
               no_browser: bool = typer.Option(False, "--no-browser",
                                               help="Print the address; paste the redirect."),
               account_id: str = typer.Option(None, "--account-id",
                                              help="The business to use, if several.")) -> None:
    """OAuth consent in the browser; stores the tokens and learns the account id."""

    def body() -> int:
        from .consent import login

        cfg = _load()
        sys_cfg, state, audit, directory = _auth_context(cfg, system)
        headless = no_browser or not (os.environ.get("DISPLAY") or sys.platform == "darwin"
                                      or os.name == "nt")

        def choose(pool):
            for i, b in enumerate(pool, 1):
                sys.stderr.write(f"  {i}. {b['name']} ({b['account_id']}, {b['role']})\n")
            pick = typer.prompt("Which business", type=int)
            return pool[pick - 1]["account_id"]

        try:
            done = login(sys_cfg, state_db=state, audit=audit, data_dir=directory,
                         no_browser=headless, account_id=account_id,
                         choose=choose if sys.stdin.isatty() else None)
        finally:
            state.close()
            audit.close()
        sys.stdout.write(f"{system}: logged in; account {done['account_id']}; access token "
                         f"valid until {done['expires']} UTC\n")
        return 0

    _exit(body)


@auth_app.command("set")
def auth_set(system: str = typer.Argument(...), field: str = typer.Argument(
        ..., help="e.g. client_secret, refresh_token, dev_key, password")) -> None:
    """Store a secret in the keyring: typed at a hidden prompt, or one line on stdin."""

    def body() -> int:
        import getpass

        from .errors import ConfigError
        from .secrets import SecretStore

        cfg = _load()
        sys_cfg = _system(cfg, system)
        if field not in sys_cfg.secret_fields:
            raise ConfigError(f"{sys_cfg.type} secrets are {', '.join(sys_cfg.secret_fields)}; "
                              f"not {field!r}")
        if sys.stdin.isatty():
            value = getpass.getpass(f"{system}.{field} (hidden): ")
        else:
            value = sys.stdin.readline().rstrip("\r\n")
        if not value:
            raise ConfigError("nothing was given; nothing was stored")
        store = SecretStore(system)
        if field == "refresh_token":
            store.save_refresh_token(value)
        else:
            store.set(field, value)
        sys.stdout.write(f"stored {system}.{field} in the keyring\n")
        if store.source(field) == "environment":
            sys.stdout.write(f"note: {sys_cfg.env_var(field)} is set and wins over the "
                             "keyring\n")
        return 0

    _exit(body)


@auth_app.command("status")
def auth_status(system: str = typer.Argument(None), as_json: bool = typer.Option(False, "--json")
                ) -> None:
    """Which secrets are present and where from, token expiry, last refresh (no values)."""

    def body() -> int:
        from .consent import status as get_status
        from .runner import open_state

        cfg = _load()
        state, _ = open_state(cfg)
        try:
            names = [system] if system else list(cfg.systems)
            rows = [get_status(_system(cfg, n), state) for n in names]
        finally:
            state.close()
        if as_json:
            sys.stdout.write(json.dumps(rows) + "\n")
            return 0
        for row in rows:
            sys.stdout.write(f"{row['system']} ({row['type']})\n")
            for field, where in row["secrets"].items():
                sys.stdout.write(f"  {field}: {where}\n")
            for key in ("account_id", "realm_id", "access_token_expires", "last_refresh",
                        "refresh_token_expires", "consent_expires", "session_last_used"):
                if row.get(key):
                    sys.stdout.write(f"  {key.replace('_', ' ')}: {row[key]}\n")
            if not row["keyring_usable"]:
                sys.stdout.write("  keyring: none usable — rotated tokens cannot be kept; "
                                 "see the README (keyrings.cryptfile)\n")
        return 0

    _exit(body)


@auth_app.command("logout")
def auth_logout(system: str = typer.Argument(...)) -> None:
    """Revoke where the provider allows, and forget tokens and sessions."""

    def body() -> int:
        from .consent import logout

        cfg = _load()
        sys_cfg, state, audit, _ = _auth_context(cfg, system)
        try:
            for line in logout(sys_cfg, state, audit) or ["nothing to forget"]:
                sys.stdout.write(f"{system}: {line}\n")
        finally:
            state.close()
            audit.close()
        return 0

    _exit(body)


@auth_app.command("test")
def auth_test(system: str = typer.Argument(...)) -> None:
    """One cheap authenticated call: who are we connected as? Exit 3 if refused."""

    def body() -> int:
        from .consent import ping
        from .runner import resolve_pair

        cfg = _load()
        sys_cfg, state, audit, directory = _auth_context(cfg, system)
        writes = []
        for name, pair in cfg.pairs.items():  # what the pairs write into this system
            rp = resolve_pair(cfg, name)
            for flow in rp.flows:
                side = pair.target if flow.definition.write_side == "target" else pair.source
                if side == system:
                    writes.append((flow.definition.write_entity, flow.mapping, rp.options))
        try:
            sys.stdout.write(ping(sys_cfg, state_db=state, audit=audit, data_dir=directory,
                                  writes=writes) + "\n")
        finally:
            state.close()
            audit.close()
        return 0

    _exit(body)


@webhook_app.command("serve")
def webhook_serve(host: str = typer.Option("127.0.0.1", "--host", help="Listen address "
                                           "(put a TLS proxy in front: senders want https)."),
                  port: int = typer.Option(8770, "--port")) -> None:
    """Verify webhooks and store them in the inbox; the next sync reads them."""

    def body() -> int:
        from .runner import open_state
        from .serve import build_receiver

        cfg = _load()
        state, directory = open_state(cfg)
        receiver = build_receiver(cfg, state, directory, host=host, port=port)
        sys.stderr.write(f"mlconnector: receiving webhooks on {receiver.url}/webhooks/"
                         "<type>/<system> (Ctrl-C stops)\n")
        try:
            receiver.serve_forever(0.5)
        except KeyboardInterrupt:
            pass
        finally:
            receiver.server_close()
            state.close()
        return 0

    _exit(body)


@webhook_app.command("register")
def webhook_register(system: str = typer.Argument(...),
                     url: str = typer.Option(..., "--url", help="The public https address "
                                             "that reaches `webhook serve`.")) -> None:
    """Register the callback address with the system, or say where a person does it."""

    def body() -> int:
        from .serve import register

        cfg = _load()
        sys_cfg, state, audit, directory = _auth_context(cfg, system)
        try:
            for line in register(cfg, sys_cfg.name, url, state=state, data_dir=directory):
                sys.stdout.write(line + "\n")
        finally:
            state.close()
            audit.close()
        return 0

    _exit(body)


def _cfg_or_none():
    from .config import find_config_path

    try:
        path = find_config_path(_state["config"])
    except Exception:
        return None
    return _load() if path.exists() else None


def _exit(body) -> None:
    from .errors import MlcError

    try:
        code = body()
    except MlcError as exc:
        _ui().error(exc)
        code = exc.exit_code
    except KeyboardInterrupt:
        code = 130
    except Exception as exc:  # a bug: say so plainly, keep the traceback out of the way
        if os.environ.get("MLCONNECTOR_DEBUG"):
            raise
        sys.stderr.write(f"mlconnector: unexpected error (a bug, please report it): "
                         f"{type(exc).__name__}: {exc}\n"
                         "  set MLCONNECTOR_DEBUG=1 to see the traceback\n")
        code = 1
    raise typer.Exit(code)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
