"""Output: rich tables and progress on a terminal; plain lines under cron (no TTY);
JSON with --json. NO_COLOR is honoured (rich reads it)."""

from __future__ import annotations

import json
import sys
from dataclasses import asdict
from typing import Any

COLUMNS = ("read", "created", "updated", "matched", "voided", "unchanged", "skipped", "held",
           "failed", "api_calls", "seconds")


def _tty() -> bool:
    return sys.stdout.isatty()


def _console(stderr: bool = False):
    from rich.console import Console

    return Console(stderr=stderr)


def error(exc: Exception) -> None:
    fix = getattr(exc, "fix", None)
    text = f"mlconnector: {exc}" + (f"\n  fix: {fix}" if fix else "")
    if sys.stderr.isatty():
        _console(stderr=True).print(f"[bold red]error[/] {text}", highlight=False, markup=False)
    else:
        sys.stderr.write(text + "\n")


class Progress:
    """A live line per flow on a terminal; silent otherwise."""

    def __init__(self, enabled: bool = True):
        self.enabled = enabled and _tty()
        self._status = None

    def __enter__(self) -> Progress:
        if self.enabled:
            self._status = _console().status("starting…")
            self._status.__enter__()
        return self

    def update(self, pair: str, flow: str, stats: Any) -> None:
        if self._status is not None:
            self._status.update(f"{pair} · {flow}: read {stats.read}, created {stats.created}, "
                                f"updated {stats.updated}, held {stats.held}, "
                                f"failed {stats.failed}")

    def __exit__(self, *exc: Any) -> None:
        if self._status is not None:
            self._status.__exit__(*exc)


def show_results(results: list[Any], *, as_json: bool = False) -> None:
    if as_json:
        sys.stdout.write(json.dumps([_result_dict(r) for r in results], default=str) + "\n")
        return
    for r in results:
        if _tty():
            _rich_result(r)
        else:
            _plain_result(r)


def _result_dict(r: Any) -> dict[str, Any]:
    d = asdict(r)
    d["audit_path"] = getattr(r, "audit_path", None)
    if not r.dry_run:
        d.pop("would_write", None)
    return d


def _plain_result(r: Any) -> None:
    out = sys.stdout
    mode = " (dry run: nothing written)" if r.dry_run else ""
    out.write(f"pair {r.pair} run {r.run_id} exit {r.exit_code}{mode}\n")
    for name, s in r.flows.items():
        out.write(f"  {name}: " + " ".join(f"{c}={getattr(s, c)}" for c in COLUMNS) + "\n")
    for a in r.alarms:
        out.write(f"  {a.kind} replay={a.parked_id} {a.flow} {a.source_id}: {a.reason}\n")
    if r.dry_run:
        for w in r.would_write:
            out.write(f"  would {w['action']} {w['flow']} {w['source_id']}"
                      + (f" -> {w['target_id']}" if w.get("target_id") else "")
                      + (f": {w['reason']}" if w.get("reason") else "") + "\n")
    parked = r.parked_total
    if parked:
        out.write(f"  parked in total: {parked.get('held', 0)} held, "
                  f"{parked.get('failed', 0)} failed (mlconnector failures)\n")
    if r.aborted:
        out.write(f"  stopped: {r.aborted}\n")


def _rich_result(r: Any) -> None:
    from rich.table import Table

    con = _console()
    title = f"{r.pair} — run {r.run_id}" + (" (dry run: nothing written)" if r.dry_run else "")
    table = Table(title=title, title_justify="left")
    table.add_column("flow", no_wrap=True)
    # rarely-used columns only when they have something to say, to fit 80 columns
    shown = [c for c in COLUMNS if c not in ("voided", "skipped", "matched")
             or any(getattr(s, c) for s in r.flows.values())]
    for c in shown:
        table.add_column({"api_calls": "calls", "seconds": "secs"}.get(c, c), justify="right",
                         no_wrap=True)
    for name, s in r.flows.items():
        table.add_row(name, *[str(getattr(s, c)) for c in shown])
    con.print(table)
    if r.alarms:
        alarms = Table(title="needs your hands", title_justify="left")
        for col in ("replay id", "flow", "source id", "state"):
            alarms.add_column(col, no_wrap=True)
        alarms.add_column("reason", ratio=1)
        for a in r.alarms:
            alarms.add_row(str(a.parked_id), a.flow, a.source_id, a.kind, a.reason)
        con.print(alarms)
    if r.dry_run and r.would_write:
        counts: dict[str, int] = {}
        for w in r.would_write:
            counts[f"{w['flow']} {w['action']}"] = counts.get(f"{w['flow']} {w['action']}", 0) + 1
        con.print("would write: " + ", ".join(f"{k}: {v}" for k, v in counts.items()))
    parked = r.parked_total
    if parked:
        con.print(f"parked in total: {parked.get('held', 0)} held, {parked.get('failed', 0)} "
                  "failed — see `mlconnector failures`")
    if r.aborted:
        con.print(f"[bold red]stopped:[/] {r.aborted}", highlight=False)


def show_failures(parked: list[Any], *, as_json: bool = False) -> None:
    if as_json:
        sys.stdout.write(json.dumps([{k: v for k, v in asdict(p).items() if k != "payload"}
                                     for p in parked], default=str) + "\n")
        return
    if not parked:
        sys.stdout.write("nothing held or failed\n")
        return
    if not _tty():
        for p in parked:
            sys.stdout.write(f"{p.id}\t{p.pair}\t{p.flow}\t{p.source_id}\t{p.kind}\t"
                             f"attempts={p.attempts}\t{p.reason}\n")
        return
    from rich.table import Table

    table = Table(title="held and failed records (replay with: mlconnector replay ID)",
                  title_justify="left")
    for col in ("id", "pair", "flow", "source id", "state", "tries"):
        table.add_column(col, no_wrap=True)
    table.add_column("reason", ratio=1)
    for p in parked:
        table.add_row(str(p.id), p.pair, p.flow, p.source_id,
                      p.kind + (" (auto-retry)" if p.transient else ""), str(p.attempts),
                      p.reason)
    _console().print(table)


def show_status(rows: list[dict[str, Any]], data_dir: Any, *, as_json: bool = False) -> None:
    if as_json:
        sys.stdout.write(json.dumps({"data_dir": str(data_dir), "pairs": rows}, default=str)
                         + "\n")
        return
    out = sys.stdout
    out.write(f"data dir: {data_dir}\n")
    for row in rows:
        last = row["last_run"]
        last_text = (f"{last['started_at']} exit {last['exit_code']}" if last else "never run")
        parked = row["parked"]
        out.write(f"{row['pair']}: last run {last_text}; held {parked.get('held', 0)}, "
                  f"failed {parked.get('failed', 0)}\n")
        for flow, mark in sorted(row["watermarks"].items()):
            out.write(f"  {flow}: {_position(mark)}, synced {row['synced'].get(flow, 0)}\n")


def show_config(cfg: Any, pairs: list[Any], *, as_json: bool = False) -> None:
    doc = {
        "config": str(cfg.path),
        "systems": {name: {"type": s.type, "base_url": s.resolved_base_url()}
                    for name, s in cfg.systems.items()},
        "pairs": {
            rp.name: {
                "source": rp.source.name, "target": rp.target.name,
                "options": rp.options,
                "lookups": {k: len(v) for k, v in rp.lookups.items()},
                "fallbacks": rp.fallbacks,
                "flows": [{"name": f.name,
                           "reads": f"{f.definition.read_side}.{f.definition.read_entity}",
                           "writes": f"{f.definition.write_side}.{f.definition.write_entity}",
                           "fields": f.mapping.fields} for f in rp.flows],
                "documented_options": rp.pdef.options,
                "documented_lookups": rp.pdef.lookups,
                "documented_fallbacks": rp.pdef.fallbacks,
            } for rp in pairs
        },
    }
    if as_json:
        sys.stdout.write(json.dumps(doc, default=str, indent=2) + "\n")
        return
    out = sys.stdout
    out.write(f"config OK: {cfg.path}\n")
    for name, s in doc["systems"].items():
        out.write(f"system {name}: {s['type']} at {s['base_url']}\n")
    for name, p in doc["pairs"].items():
        out.write(f"pair {name}: {p['source']} -> {p['target']}\n")
        for opt, value in p["options"].items():
            spec = p["documented_options"].get(opt, {})
            out.write(f"  option {opt} = {value!r}  ({spec.get('help', '')})\n")
        for lk, spec in p["documented_lookups"].items():
            out.write(f"  lookup {lk}: {p['lookups'].get(lk, 0)} entries  ({spec.get('help')})\n")
        for fb in p["documented_fallbacks"]:
            out.write(f"  fallback {fb} = {p['fallbacks'].get(fb, '(none: hold)')}\n")
        for f in p["flows"]:
            out.write(f"  flow {f['name']}: {f['reads']} -> {f['writes']}\n")
            for field, rule in f["fields"].items():
                out.write(f"    {field} <- {_rule_text(rule)}\n")


def _rule_text(rule: dict[str, Any]) -> str:
    if "each" in rule:
        inner = "; ".join(f"{k} <- {_rule_text(v)}" for k, v in rule["fields"].items())
        return f"each {rule['each']}: {inner}"
    bits = []
    for key in ("const", "template", "from", "lookup", "keys", "ref", "type", "default",
                "fallback", "values"):
        if key in rule:
            bits.append(f"{key}={rule[key]!r}" if key != "from" else " | ".join(rule["from"]))
    return ", ".join(bits)


def _position(mark: str) -> str:
    """A watermark as a person reads it: a time, or (an export feed's opaque token) just
    where the feed stands."""
    if len(mark) >= 10 and mark[:4].isdigit() and mark[4] == "-":
        return f"watermark {mark}"
    return f"feed position {mark[:12]}…"
