"""One pair: flows in dependency order, page by page, each record written once.

For every record read: skip it if this version was synced; map it (a missing reference
holds it); write it (id map -> natural-key lookup -> create); record the outcome. After
each page the watermark moves up to the newest record fully handled, so a crash loses
at most one page of progress and a re-run writes nothing twice.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor, wait
from dataclasses import asdict, dataclass, field
from datetime import timedelta
from typing import Any

from .audit import Audit
from .clock import SYSTEM_CLOCK, Clock
from .connectors.base import Connector, Record
from .errors import (
    AuthError,
    HeldError,
    NotFound,
    RejectedError,
    TransientError,
    UnavailableError,
)
from .mapping import Context, payload_hash
from .pairs import Flow, PairDef
from .state import Parked, State

AUTO_RETRIES = 5               # transient failures retried by later runs before `replay`
RETRY_BASE = timedelta(minutes=5)
CONSECUTIVE_TRANSIENT_ABORT = 5  # that many in a row: the target is down, stop the run


@dataclass
class FlowStats:
    read: int = 0
    created: int = 0
    updated: int = 0
    matched: int = 0
    voided: int = 0
    unchanged: int = 0
    skipped: int = 0
    held: int = 0
    failed: int = 0
    api_calls: int = 0
    seconds: float = 0.0


@dataclass
class Alarm:
    """A record this run held or failed: it needs a person (or a later run)."""

    parked_id: int
    flow: str
    source_id: str
    kind: str
    reason: str


@dataclass
class RunResult:
    run_id: str
    pair: str
    flows: dict[str, FlowStats] = field(default_factory=dict)
    alarms: list[Alarm] = field(default_factory=list)
    parked_total: dict[str, int] = field(default_factory=dict)
    aborted: str | None = None
    exit_code: int = 0
    dry_run: bool = False
    would_write: list[dict[str, Any]] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class _Job:
    flow: Flow
    record: Record
    payload: dict[str, Any]
    decisions: list[dict[str, Any]]
    target_id: str | None
    replay: bool = False
    void: bool = False


class _KeyLocks:
    """Two records with the same natural key never race to create: a fixed set of locks
    striped by key (memory stays flat however many keys a run sees)."""

    STRIPES = 64

    def __init__(self) -> None:
        self._locks = [threading.Lock() for _ in range(self.STRIPES)]

    def get(self, key: str | None) -> threading.Lock:
        if key is None:
            return threading.Lock()  # nothing to share
        return self._locks[hash(key) % self.STRIPES]


class PairRun:
    def __init__(self, name: str, pdef: PairDef, flows: list[Flow], options: dict[str, Any], *,
                 source: Connector, target: Connector, state: State, audit: Audit,
                 lookups: dict[str, dict[str, str]], fallbacks: dict[str, str],
                 clock: Clock = SYSTEM_CLOCK, dry_run: bool = False,
                 on_progress: Callable[[str, FlowStats], None] | None = None):
        self.name, self.pdef, self.flows, self.options = name, pdef, flows, options
        self.sides = {"source": source, "target": target}
        source.dry_run = target.dry_run = dry_run
        self.state, self.audit, self.clock, self.dry_run = state, audit, clock, dry_run
        self.on_progress = on_progress or (lambda flow, stats: None)
        self.context = Context(
            lookups=lookups, fallbacks=fallbacks, resolve_ref=self._resolve_ref,
            lookup_labels={k: v.get("label", k) for k, v in pdef.lookups.items()},
            options=options)
        self._key_locks = _KeyLocks()
        self._lock = threading.Lock()
        self._result: RunResult | None = None
        self._consecutive_transient = 0
        self._dry_created: set[tuple[str, str]] = set()  # what a dry run would have created

    # -- entry points ---------------------------------------------------------------------
    def run(self, *, full: bool = False, since: str | None = None,
            only_flow: str | None = None) -> RunResult:
        return self._execute(lambda res: self._run_flows(res, full, since, only_flow))

    def replay(self, parked: list[Parked]) -> RunResult:
        return self._execute(lambda res: self._replay(res, parked))

    def _execute(self, body: Callable[[RunResult], None]) -> RunResult:
        run_id = self.audit.run_id or ""
        res = RunResult(run_id=run_id, pair=self.name, dry_run=self.dry_run)
        self._result = res
        for side in self.sides.values():
            side.reset_run_caches()
        try:
            body(res)
        except AuthError as exc:
            res.aborted, res.exit_code = _explain(exc), exc.exit_code
        except UnavailableError as exc:
            res.aborted, res.exit_code = str(exc), exc.exit_code
        res.parked_total = self.state.parked_counts(self.name)
        if not res.exit_code:
            res.exit_code = 4 if res.alarms else 0
        return res

    # -- a normal run ---------------------------------------------------------------------
    def _run_flows(self, res: RunResult, full: bool, since: str | None,
                   only_flow: str | None) -> None:
        flows = [f for f in self.flows if not only_flow or f.name == only_flow]
        for side_name, side in self.sides.items():
            side.plan_reads({f.definition.read_entity: self._start(f, full, since)
                             for f in flows if f.definition.read_side == side_name})
        for flow in flows:
            stats = res.flows.setdefault(flow.name, FlowStats())
            started, calls0 = time.monotonic(), self._calls()
            try:
                self._retry_parked(flow, stats)
                self._read_flow(flow, stats, full, since)
                self._read_inbox(flow, stats)
            finally:
                stats.seconds = round(time.monotonic() - started, 2)
                stats.api_calls = self._calls() - calls0
                self.on_progress(flow.name, stats)

    def _read_flow(self, flow: Flow, stats: FlowStats, full: bool, since: str | None) -> None:
        """Pages are read while the previous page's writes are still in flight (so the
        target's concurrency is used to the full), but the watermark moves only over pages
        whose every record is handled, in order."""
        fdef = flow.definition
        reader, writer = self.sides[fdef.read_side], self.sides[fdef.write_side]
        start = self._start(flow, full, since)
        mark = [self.state.watermark(self.name, flow.name)]
        pages = reader.read(fdef.read_entity, since=start)
        # each page: its writes, and (the watermark it reaches, whether the API said so)
        pending: deque[tuple[list[Future], tuple[str | None, bool]]] = deque()
        pool = ThreadPoolExecutor(max_workers=max(1, writer.write_concurrency))
        try:
            while True:
                try:
                    page = next(pages)
                except StopIteration:
                    break
                except TransientError as exc:
                    raise UnavailableError(
                        f"could not read {fdef.label}s from {reader.system_type}: {exc}",
                        system=exc.system, status=exc.status, code=exc.code) from exc
                stats.read += len(page)
                records = [part for rec in page for part in self._parts_if_deleted(flow, rec)]
                jobs = [j for j in (self._prepare(flow, rec, stats) for rec in records) if j]
                # an API's own position (a CDC time, an export token) is taken as it is;
                # else the newest record's cursor, never moving back
                told = getattr(page, "watermark", None)
                newest = told or max((r.cursor for r in page if r.cursor), default=None)
                pending.append(([pool.submit(self._write, j, stats) for j in jobs],
                                (newest, bool(told))))
                # at most two pages in flight: memory stays flat in the number of records
                self._settle(flow, pending, mark, keep=1)
                self.on_progress(flow.name, stats)
            self._settle(flow, pending, mark, keep=0)
        finally:
            pool.shutdown(wait=True, cancel_futures=True)
        if reader.needs_reconcile(fdef.read_entity):
            self._reconcile(flow, stats)

    def _read_inbox(self, flow: Flow, stats: FlowStats) -> None:
        """Webhook events waiting for this flow's entity: the records they name, read
        again from the source, go through the same steps; then the events are done."""
        fdef = flow.definition
        reader = self.sides[fdef.read_side]
        if self.dry_run or not reader.system_name:
            return
        from .webhooks import Inbox

        with Inbox(self.state.path) as inbox:
            items = [i for i in inbox.pending(system=reader.system_name)
                     if reader.webhook_entity(i.event) == fdef.read_entity]
            if not items:
                return
            try:
                records = reader.from_webhooks(fdef.read_entity, [i.payload for i in items])
            except TransientError as exc:
                raise UnavailableError(f"could not read {fdef.label}s named by webhooks: "
                                       f"{exc}", system=exc.system) from exc
            stats.read += len(records)
            self._write_all([j for j in (self._prepare(flow, r, stats) for r in records)
                             if j], stats)
            inbox.mark_processed(items, self.clock.now())

    def _parts_if_deleted(self, flow: Flow, rec: Record) -> list[Record]:
        """A deleted object that was written in parts (a payment of several bills, one
        record each) stands for each of its parts."""
        void = flow.definition.void_when
        if not void or not all(str(rec.data.get(f)) in ok for f, ok in void.items()) or \
                ":" in rec.id or self.state.mapped(self.name, flow.name, rec.id):
            return [rec]
        parts = self.state.mapped_parts(self.name, flow.name, rec.id)
        return [Record(p, rec.version, rec.cursor, rec.data) for p in parts] or [rec]

    def _start(self, flow: Flow, full: bool, since: str | None) -> str | None:
        return None if full else (since or self.state.watermark(self.name, flow.name))

    def _reconcile(self, flow: Flow, stats: FlowStats) -> None:
        """The read could not see deletions (QuickBooks' query endpoint never shows a
        deleted transaction): ask the source which of the ids we wrote are gone."""
        reader = self.sides[flow.definition.read_side]
        for ids in self.state.mapped_source_ids(self.name, flow.name):
            try:
                gone = reader.reconcile(flow.definition.read_entity, ids)
            except TransientError as exc:
                raise UnavailableError(f"could not check {flow.definition.label}s for "
                                       f"deletions: {exc}", system=exc.system) from exc
            stats.read += len(gone)
            jobs = [j for j in (self._prepare(flow, rec, stats) for rec in gone) if j]
            self._write_all(jobs, stats)

    def _settle(self, flow: Flow, pending: deque, mark: list[str | None], *, keep: int) -> None:
        """Finish the oldest pages until `keep` remain; move the watermark over them."""
        while len(pending) > keep or (pending and all(f.done() for f in pending[0][0])):
            futures, (newest, told) = pending.popleft()
            wait(futures)
            errors = [f.exception() for f in futures if f.exception()]
            if errors:
                raise errors[0]
            if newest and (told or mark[0] is None or newest > mark[0]):
                mark[0] = newest
                if not self.dry_run:
                    self.state.set_watermark(self.name, flow.name, newest, self.clock.now())

    def _retry_parked(self, flow: Flow, stats: FlowStats) -> None:
        """Transient failures whose time has come, and records held only because a record
        of an earlier flow was not synced yet (dependency order heals on its own)."""
        if self.dry_run:
            return
        due = self.state.due_retries(self.name, flow.name, self.clock.now())
        waiting = [p for p in self.state.parked(self.name, flow.name)
                   if p.kind == "held" and p.payload.get("refs_only")]
        for parked in due + waiting:
            rec = _record_from(parked)
            job = self._prepare(flow, rec, stats, replay=True, quiet_hold=True)
            if job:
                self._write_all([job], stats)

    # -- replay -----------------------------------------------------------------------------
    def _replay(self, res: RunResult, parked: list[Parked]) -> None:
        by_flow = {f.name: f for f in self.flows}
        for p in parked:
            flow = by_flow.get(p.flow)
            if flow is None:
                continue
            stats = res.flows.setdefault(flow.name, FlowStats())
            calls0 = self._calls()
            reader = self.sides[flow.definition.read_side]
            stored = _record_from(p)
            try:
                rec = reader.refetch(flow.definition.read_entity, p.source_id, stored.data)
            except NotFound:
                rec = None
            except TransientError as exc:
                raise UnavailableError(str(exc), system=exc.system) from exc
            if rec is None:
                self._audit("record.replayed", flow, p.source_id, outcome="source gone",
                            parked_id=p.id)
                self._alarm(p.id, flow, p.source_id, p.kind,
                            f"the source {flow.definition.label} no longer exists; "
                            "it stays parked", new=True)
                continue
            stats.read += 1
            self._audit("record.replayed", flow, p.source_id, parked_id=p.id)
            job = self._prepare(flow, rec, stats, replay=True)
            if job:
                self._write_all([job], stats)
            stats.api_calls += self._calls() - calls0

    # -- one record -------------------------------------------------------------------------
    def _prepare(self, flow: Flow, rec: Record, stats: FlowStats, *, replay: bool = False,
                 quiet_hold: bool = False) -> _Job | None:
        known = self.state.mapped(self.name, flow.name, rec.id)
        parked = self.state.parked_for(self.name, flow.name, rec.id)
        if not replay:
            if known and known.version == rec.version and not parked:
                stats.unchanged += 1
                return None
            if parked and parked.payload.get("version") == rec.version:
                return None  # still parked from an earlier run: counted in the totals
        void = flow.definition.void_when
        if void and all(str(rec.data.get(f)) in allowed for f, allowed in void.items()):
            if known and self.options.get("deletes") == "void":
                if known.version == rec.version:
                    stats.unchanged += 1
                    return None
                return _Job(flow, rec, {}, [], known.target_id, replay, void=True)
            stats.skipped += 1
            why = ("deleted or voided in the source; deletes = \"ignore\" leaves the target "
                   "as it is" if known else "deleted or voided in the source before it was "
                   "ever written")
            self._audit("record.skipped", flow, rec.id, known.target_id if known else None,
                        reason=why, deleted=True)
            if known and not self.dry_run:  # remember we saw it: no repeat every run
                self.state.record_synced(self.name, flow.name, rec.id, known.target_id,
                                         rec.version, known.payload_hash, self.clock.now())
            return None
        for fld, allowed in flow.definition.only.items():
            if str(rec.data.get(fld)) not in allowed:
                stats.skipped += 1
                self._audit("record.skipped", flow, rec.id, reason=f"{fld} is "
                            f"{rec.data.get(fld)!r}, not one of {allowed}")
                return None
        try:
            result = flow.mapping.apply(rec.data, self.context)
        except HeldError as exc:
            self._hold(flow, rec, exc, stats, quiet=quiet_hold)
            return None
        digest = payload_hash(result.payload)
        if known and known.payload_hash == digest:
            if not self.dry_run:
                self.state.record_synced(self.name, flow.name, rec.id, known.target_id,
                                         rec.version, digest, self.clock.now())
            stats.unchanged += 1
            self._audit("record.skipped", flow, rec.id, known.target_id,
                        reason="no change in what would be written")
            return None
        return _Job(flow, rec, result.payload, result.decisions,
                    known.target_id if known else None, replay)

    def _write_all(self, jobs: list[_Job], stats: FlowStats) -> None:
        if not jobs:
            return
        writer = self.sides[jobs[0].flow.definition.write_side]
        if len(jobs) == 1 or writer.write_concurrency <= 1:
            for job in jobs:
                self._write(job, stats)
            return
        with ThreadPoolExecutor(max_workers=writer.write_concurrency) as pool:
            futures = [pool.submit(self._write, job, stats) for job in jobs]
        errors = [f.exception() for f in futures if f.exception()]
        if errors:
            raise errors[0]

    def _write(self, job: _Job, stats: FlowStats) -> None:
        flow, rec = job.flow, job.record
        fdef = flow.definition
        writer = self.sides[fdef.write_side]
        entity = fdef.write_entity
        try:
            if job.void:
                action, target_id = "voided", job.target_id or ""
                if not self.dry_run:
                    writer.delete(entity, target_id)
            elif job.target_id:
                action, target_id = "updated", job.target_id
                if not self.dry_run:
                    writer.update(entity, target_id, job.payload)
            else:
                with self._key_locks.get(_natural_key(writer, entity, job.payload)):
                    found = writer.find(entity, job.payload)
                    if found is not None:
                        action, target_id = "matched", writer.id_of(entity, found)
                        other = self.state.mapped_by_target(self.name, flow.name, target_id)
                        if other and other.source_id != rec.id:
                            raise HeldError(
                                f"{fdef.label} {target_id} in {writer.system_type} already "
                                f"belongs to {fdef.label} {other.source_id}: two source "
                                "records share its natural key")
                        if entity in writer.update_on_match and not self.dry_run:
                            # complete what a crashed run (or a person) left half done
                            writer.update(entity, target_id, job.payload)
                    elif fdef.create_when and not all(
                            self.options.get(k) in allowed
                            for k, allowed in fdef.create_when.items()):
                        wanted = ", ".join(f"{k} = {v[0]!r}" for k, v in
                                           fdef.create_when.items())
                        raise HeldError(f"{fdef.label} not found in {writer.system_type}; "
                                        f"add it there, or set {wanted} to create it")
                    elif self.dry_run:
                        action, target_id = "created", ""
                        with self._lock:
                            self._dry_created.add((flow.name, rec.id))
                    else:
                        action = "created"
                        target_id = writer.id_of(entity, writer.create(entity, job.payload))
        except HeldError as exc:
            self._hold(flow, rec, exc, stats)
            return
        except TransientError as exc:
            self._fail(flow, rec, exc, stats, transient=True)
            return
        except RejectedError as exc:
            self._fail(flow, rec, exc, stats, transient=False)
            return
        with self._lock:
            self._consecutive_transient = 0
            setattr(stats, action, getattr(stats, action) + 1)
        if self.dry_run:
            self._result_add_would(flow, rec, action, target_id, job)
            return
        self.state.record_synced(self.name, flow.name, rec.id, target_id, rec.version,
                                 payload_hash(job.payload), self.clock.now())
        self._audit("record.written", flow, rec.id, target_id, action=action,
                    decisions=job.decisions or None, replay=job.replay or None)

    def _hold(self, flow: Flow, rec: Record, exc: HeldError, stats: FlowStats, *,
              quiet: bool = False) -> None:
        missing = exc.missing.get("missing", [])
        refs_only = bool(missing) and all("ref" in m for m in missing)
        if self.dry_run:
            with self._lock:
                stats.held += 1
            self._result_add_would(flow, rec, "held", None, None, reason=exc.reason)
            return
        pid, new = self.state.park(
            self.name, flow.name, rec.id, kind="held", reason=exc.reason,
            payload={"version": rec.version, "cursor": rec.cursor, "record": rec.data,
                     "refs_only": refs_only, "missing": missing},
            transient=False, run_id=self.audit.run_id or "", now=self.clock.now())
        if quiet and not new:
            return  # re-checked on its own and still waiting: no new alarm
        with self._lock:
            stats.held += 1
        self._audit("record.held", flow, rec.id, reason=exc.reason, missing=missing,
                    parked_id=pid)
        self._alarm(pid, flow, rec.id, "held", exc.reason, new=True)

    def _fail(self, flow: Flow, rec: Record, exc: Exception, stats: FlowStats, *,
              transient: bool) -> None:
        with self._lock:
            stats.failed += 1
            if transient:
                self._consecutive_transient += 1
                down = self._consecutive_transient >= CONSECUTIVE_TRANSIENT_ABORT
            else:
                down = False
        if self.dry_run:
            self._result_add_would(flow, rec, "failed", None, None, reason=str(exc))
            return
        before = self.state.parked_for(self.name, flow.name, rec.id)
        attempts = (before.attempts + 1) if before else 1
        retry = transient and attempts <= AUTO_RETRIES
        nxt = self.clock.now() + RETRY_BASE * (2 ** (attempts - 1)) if retry else None
        reason = str(exc) + ("" if retry or not transient else
                             f" (gave up after {attempts} attempts; replay it)")
        pid, new = self.state.park(
            self.name, flow.name, rec.id, kind="failed", reason=reason,
            payload={"version": rec.version, "cursor": rec.cursor, "record": rec.data},
            transient=retry, run_id=self.audit.run_id or "", now=self.clock.now(),
            next_attempt_at=nxt)
        self._audit("record.failed", flow, rec.id, error=str(exc), transient=transient,
                    next_attempt_at=nxt.isoformat() if nxt else None, parked_id=pid)
        self._alarm(pid, flow, rec.id, "failed", reason, new=True)
        if down:
            raise UnavailableError(
                f"{CONSECUTIVE_TRANSIENT_ABORT} writes in a row failed for a transient "
                f"reason; the target looks unreachable (last: {exc})")

    # -- helpers ----------------------------------------------------------------------------
    def _resolve_ref(self, flow: str, value: str, reverse: bool) -> str | None:
        if self.dry_run and not reverse and (flow, value) in self._dry_created:
            return f"(new {flow} {value})"
        if reverse:
            hit = self.state.mapped_by_target(self.name, flow, value)
            return hit.source_id if hit else None
        hit = self.state.mapped(self.name, flow, value)
        return hit.target_id if hit else None

    def _alarm(self, pid: int, flow: Flow, source_id: str, kind: str, reason: str, *,
               new: bool) -> None:
        if new and self._result is not None:
            with self._lock:
                self._result.alarms.append(Alarm(pid, flow.name, source_id, kind, reason))

    def _result_add_would(self, flow: Flow, rec: Record, action: str, target_id: str | None,
                          job: _Job | None, reason: str | None = None) -> None:
        if self._result is not None:
            with self._lock:
                self._result.would_write.append({
                    "flow": flow.name, "source_id": rec.id, "action": action,
                    "target_id": target_id or None, "reason": reason,
                    "payload": job.payload if job else None})

    def _audit(self, event: str, flow: Flow, source_id: str | None = None,
               target_id: str | None = None, **fields: Any) -> None:
        self.audit.write(event, flow=flow.name, source_id=source_id, target_id=target_id,
                         dry_run=self.dry_run or None, **fields)

    def _calls(self) -> int:
        return sum(getattr(s.http, "calls", 0) for s in {id(s): s for s in
                                                         self.sides.values()}.values())


def _natural_key(writer: Connector, entity: str, payload: dict[str, Any]) -> str | None:
    fn = getattr(writer, "natural_key", None)
    return fn(entity, payload) if fn else None


def _record_from(parked: Parked) -> Record:
    p = parked.payload
    return Record(id=parked.source_id, version=str(p.get("version")), cursor=p.get("cursor"),
                  data=p.get("record") or {})


def _explain(exc: AuthError) -> str:
    return f"{exc}" + (f"\n  fix: {exc.fix}" if exc.fix else "")
