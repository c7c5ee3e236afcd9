"""What the commands do, between the CLI (parsing, rendering) and the engine."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from .audit import Audit
from .clock import SYSTEM_CLOCK, Clock
from .config import Config, data_dir
from .engine import FlowStats, PairRun, RunResult
from .errors import ConfigError, MlcError
from .pairs import Flow, PairDef, resolve
from .state import State


@dataclass
class ResolvedPair:
    name: str
    pdef: PairDef
    flows: list[Flow]
    options: dict[str, Any]
    source: Any
    target: Any
    lookups: dict[str, dict[str, str]]
    fallbacks: dict[str, str]


def resolve_pair(cfg: Config, name: str) -> ResolvedPair:
    file = str(cfg.path) if cfg.path else None
    pair = cfg.pairs.get(name)
    if pair is None:
        raise ConfigError(f"no pair named {name!r}; configured: "
                          f"{', '.join(cfg.pairs) or 'none'}", file=file, key="pairs")
    source, target = cfg.systems[pair.source], cfg.systems[pair.target]
    pdef, flows, options = resolve(name, pair, source.type, target.type, file=file)
    return ResolvedPair(name, pdef, flows, options, source, target,
                        {k: dict(v) for k, v in pair.lookups.items()}, dict(pair.fallbacks))


def open_state(cfg: Config | None) -> tuple[State, Path]:
    directory = data_dir(cfg)
    return State(directory / "state.db"), directory


def parse_since(value: str | None) -> str | None:
    if not value:
        return None
    try:
        dt = datetime.fromisoformat(value)
    except ValueError:
        raise ConfigError(f"--since {value!r} is not a date (YYYY-MM-DD or ISO 8601)") from None
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    return dt.astimezone(UTC).isoformat().replace("+00:00", "Z")


def run_pairs(cfg: Config, names: list[str], *, flow: str | None = None, dry_run: bool = False,
              full: bool = False, since: str | None = None, clock: Clock = SYSTEM_CLOCK,
              on_progress: Callable[[str, str, FlowStats], None] | None = None,
              env: dict[str, str] | None = None) -> list[RunResult]:
    # Everything is checked before the first lock is taken or the first call made.
    resolved = [resolve_pair(cfg, n) for n in names]
    for rp in resolved:
        if flow and flow not in [f.name for f in rp.flows]:
            raise ConfigError(f"pair {rp.name} has no flow {flow!r}; it has "
                              f"{', '.join(f.name for f in rp.flows)}")
    since_iso = parse_since(since)
    state, directory = open_state(cfg)
    results = []
    try:
        for rp in resolved:
            with state.lock(rp.name):
                results.append(_run_one(rp, state, directory, clock, env, on_progress,
                                        lambda run: run.run(full=full, since=since_iso,
                                                            only_flow=flow),
                                        dry_run=dry_run))
    finally:
        state.close()
    return results


def replay(cfg: Config, ids: list[int] | None = None, *, pair: str | None = None,
           clock: Clock = SYSTEM_CLOCK, env: dict[str, str] | None = None,
           on_progress: Callable[[str, str, FlowStats], None] | None = None) -> list[RunResult]:
    state, directory = open_state(cfg)
    try:
        if ids:
            parked = []
            for i in ids:
                p = state.parked_by_id(i)
                if p is None:
                    raise ConfigError(f"no held or failed record has id {i} "
                                      "(see: mlconnector failures)")
                parked.append(p)
        else:
            parked = state.parked(pair)
        by_pair: dict[str, list] = {}
        for p in parked:
            by_pair.setdefault(p.pair, []).append(p)
        resolved = {name: resolve_pair(cfg, name) for name in by_pair}
        results = []
        for name, items in by_pair.items():
            with state.lock(name):
                results.append(_run_one(resolved[name], state, directory, clock, env,
                                        on_progress, lambda run, items=items: run.replay(items),
                                        replay=True))
        return results
    finally:
        state.close()


def _run_one(rp: ResolvedPair, state: State, directory: Path, clock: Clock,
             env: dict[str, str] | None, on_progress, body, *, dry_run: bool = False,
             replay: bool = False) -> RunResult:
    from .connectors import open_system

    run_id = state.start_run(rp.name, clock.now())
    audit = Audit(directory / "audit", run_id=run_id, pair=rp.name, clock=clock)
    audit.write("run.started", flows=[f.name for f in rp.flows], dry_run=dry_run or None,
                replay=replay or None, source=rp.source.name, target=rp.target.name)
    try:
        try:
            source = open_system(rp.source, state=state, audit=audit, data_dir=directory,
                                 clock=clock, env=env)
            target = open_system(rp.target, state=state, audit=audit, data_dir=directory,
                                 clock=clock, env=env)
            run = PairRun(rp.name, rp.pdef, rp.flows, rp.options, source=source, target=target,
                          state=state, audit=audit, lookups=rp.lookups,
                          fallbacks=rp.fallbacks, clock=clock, dry_run=dry_run,
                          on_progress=(lambda f, s: on_progress(rp.name, f, s))
                          if on_progress else None)
            result = body(run)
        except MlcError as exc:  # credentials or config found wanting before the run began
            result = RunResult(run_id=run_id, pair=rp.name, dry_run=dry_run,
                               aborted=str(exc) + (f"\n  fix: {exc.fix}"
                                                   if getattr(exc, "fix", None) else ""),
                               exit_code=exc.exit_code)
        summary = {"flows": {k: vars(v) for k, v in result.flows.items()},
                   "alarms": len(result.alarms), "aborted": result.aborted}
        audit.write("run.finished", exit_code=result.exit_code, **summary)
        state.finish_run(run_id, clock.now(), result.exit_code, summary)
        result.audit_path = str(audit.current_path)  # type: ignore[attr-defined]
        return result
    finally:
        audit.close()


def worst_exit(results: list[RunResult]) -> int:
    """One exit code for several pairs: the one that most needs a person."""
    order = [3, 5, 4, 0]
    codes = [r.exit_code for r in results] or [0]
    for code in order:
        if code in codes:
            return code
    return max(codes)
