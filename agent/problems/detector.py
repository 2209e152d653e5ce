"""The problem detector: sources -> matchers -> conditions, Events and counters -> the API.

Built and owned by agent.collectors.problems. ``start()`` first adopts the node's current values
of our conditions (agent.problems.conditions, bounded wait) so a restarted agent resumes without
a flap, then starts every source and one consumer per source, plus a publisher loop that every
second expires clear-after conditions, patches the node status when something changed or the
heartbeat is due (agent.kube.conditions), and flushes the coalesced Events (agent.kube.events:
one write per (object, reason) per flush, however many lines matched).

Lines logged before the agent started (the lookback window; for /dev/kmsg the records already
in the buffer at open) rebuild conditions but make no Events and count in no metric: a restart
must not report old OOM kills again. OOM kills and hung
tasks whose victim is in a pod's cgroup are reported against the pod (Event on the Pod, the
``nodemedic_problem_workload_total`` counter) and never become a node condition.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import structlog

from agent.kube.conditions import patch_conditions, read_conditions
from agent.kube.events import InvolvedObject, record_event
from agent.kube.owners import controller_of, top_owner
from agent.kube.pods import list_node_pods
from agent.problems.checks import OK, PROBLEM, CheckResult, CheckRunner
from agent.problems.conditions import ConditionBook, Status
from agent.problems.kmsg import boot_wall_time
from agent.problems.linequeue import SourceStats
from agent.problems.matcher import Hit, Matcher
from agent.problems.model import ProblemSet
from agent.problems.sources import SourceRuntime, build_sources
from agent.problems.workload import pod_uid, proc_cgroup
from agent.structs.times import rfc3339

log = structlog.get_logger("nodemedic.problems")

MAX_PENDING_EVENTS = 512
MAX_WORKLOAD_SERIES = 500
KMSG_REOPEN_SECONDS = 30.0  # retry a /dev/kmsg that could not be opened or failed


@dataclass
class DetectorOptions:
    """Tunables (settings, or tests/benchmarks shortening them)."""

    node: str
    procfs: Path = Path("/proc")
    max_lines_per_second: float = 20_000.0
    queue_lines: int = 20_000
    heartbeat: float = 60.0
    event_flush: float = 5.0
    restore_timeout: float = 10.0
    journalctl: str = "journalctl"
    tick: float = 1.0


@dataclass
class _Pending:
    obj: InvolvedObject
    reason: str
    type_: str
    message: str
    count: int = 0


@dataclass
class DetectorCounters:
    problems: Counter[str] = field(default_factory=Counter)
    workload: Counter[tuple[str, str, str, str]] = field(default_factory=Counter)
    events_dropped: int = 0
    events_written: int = 0
    publish_errors: int = 0
    publishes: int = 0


class ProblemDetector:
    """Runs the loaded definitions against this node's logs (see the module docstring)."""

    def __init__(self, problems: ProblemSet, opts: DetectorOptions, api: Any | None) -> None:
        self.problems = problems
        self.opts = opts
        self.api = api
        self.started_at = time.time()
        self.book = ConditionBook(problems.conditions(), self.started_at)
        self.counters = DetectorCounters()
        self.stats: dict[str, SourceStats] = {}
        self._kernel_reasons = frozenset(
            r.reason for m in problems.log_monitors if m.source.plugin == "kmsg" for r in m.rules)
        self._clear_after = {r.reason: r.clear_after for m in problems.log_monitors
                             for r in m.rules if r.clear_after is not None}
        procfs = opts.procfs
        pairs = [(m.source, Matcher(m, lambda pid: proc_cgroup(procfs, pid)))
                 for m in problems.log_monitors]
        self.sources: dict[str, SourceRuntime] = build_sources(
            pairs, opts.max_lines_per_second, opts.queue_lines, self.started_at,
            lambda key: self.stats.setdefault(key, SourceStats()))
        self._tasks: list[asyncio.Task[None]] = []
        for rt in self.sources.values():
            rt.started = self.started_at
        self._pending: dict[tuple[str, str, str, str, str], _Pending] = {}
        self._restored = api is None
        self._last_publish = 0.0
        self._last_flush = time.monotonic()
        self._pods: dict[str, dict[str, Any]] = {}
        self._owners: dict[str, str] = {}
        self._pods_listed = 0.0
        self.checks = [CheckRunner(m, self.apply_check) for m in problems.check_monitors]

    # ---- lifecycle ---------------------------------------------------------------------
    async def start(self) -> None:
        if not self._restored:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._restore(), self.opts.restore_timeout)
        for rt in self.sources.values():
            rt.start(self._tasks, self.opts.journalctl)
            self._tasks.append(asyncio.create_task(self._consume(rt),
                                                   name=f"problems-consume:{rt.spec.key}"))
        for runner in self.checks:
            if runner.enabled:
                self._tasks.append(asyncio.create_task(runner.loop(),
                                                       name=f"problems-check:{runner.monitor.name}"))
        self._tasks.append(asyncio.create_task(self._publish_loop(), name="problems-publish"))

    async def close(self) -> None:
        for t in self._tasks:
            t.cancel()
        for t in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await t
        self._tasks = []
        for runner in self.checks:
            await runner.close()
        for rt in self.sources.values():
            rt.close()

    # ---- state from the API ------------------------------------------------------------
    async def _restore(self) -> bool:
        try:
            conds = await read_conditions(self.api, self.opts.node)
        except Exception as exc:  # API down or node missing: keep trying, publish nothing yet
            log.warning("problem_conditions_restore_failed", error=str(exc))
            return False
        adopted = self.book.restore(conds, boot_wall_time(), self._kernel_reasons,
                                    self._clear_after, time.time())
        self._restored = True
        log.info("problem_conditions_restored", adopted=adopted)
        return True

    # ---- lines -------------------------------------------------------------------------
    async def _consume(self, rt: SourceRuntime) -> None:
        while True:
            batch = await rt.queue.get_batch()
            try:
                hits = await asyncio.to_thread(rt.process, batch)
                for hit in hits:
                    await self.apply(hit)
            except Exception as exc:  # a bug must not stop the source: log, count, go on
                rt.stats.last_error = f"{type(exc).__name__}: {exc}"[:300]
                log.exception("problem_batch_failed", source=rt.spec.key)

    async def apply(self, hit: Hit) -> None:
        """Turn one hit into a condition change, an Event and counters."""
        rule, now = hit.rule, time.time()
        live = hit.live
        uid = pod_uid(hit.cgroup) if hit.cgroup else ""
        if uid:  # a pod's OOM kill / hung task: the pod's problem, never the node's
            if live:
                await self._workload(hit, uid)
            return
        if live:
            self.counters.problems[rule.reason] += 1
        if rule.kind == "temporary":
            if live:
                self._event(self._node_obj(), rule.reason, "Warning", hit.message)
            return
        if rule.kind == "recovery":
            if self.book.set_default(rule.condition, now):
                self._event(self._node_obj(), rule.reason, "Normal", hit.message)
            return
        message = rule.message or hit.message
        # A live line happened just now (the kernel's log clock may have drifted from the wall
        # clock); a lookback line's own timestamp is the best estimate of when it happened.
        when = now if live else min(hit.ts, now)
        if self.book.set_problem(rule.condition, rule.reason, message, when,
                                 clear_after=rule.clear_after) and live:
            self._event(self._node_obj(), rule.reason, "Warning", message)

    async def apply_check(self, res: CheckResult) -> None:
        """NPD's custom-plugin semantics: 1 -> problem, 0 -> healthy, else Unknown."""
        rule, now = res.rule, time.time()
        if rule.kind == "temporary":
            if res.status >= PROBLEM:  # NPD: "problem" and "unknown" both make the Event
                self.counters.problems[rule.reason] += 1
                self._event(self._node_obj(), rule.reason, "Warning", res.message)
            return
        if res.status == OK:
            if self.book.set_default(rule.condition, now):
                self._event(self._node_obj(), self.book.states[rule.condition].reason, "Normal",
                            res.message or f"{rule.condition} is healthy again")
            return
        status: Status = "True" if res.status == PROBLEM else "Unknown"
        default = self.book.defs[rule.condition].reason
        if self.book.set_problem(rule.condition, rule.reason if status == "True" else default,
                                 res.message, now, status=status) and status == "True":
            self.counters.problems[rule.reason] += 1
            self._event(self._node_obj(), rule.reason, "Warning", res.message)

    async def _workload(self, hit: Hit, uid: str) -> None:
        ns, name, owner = await self._resolve_pod(uid)
        key = (hit.rule.reason, ns, name or uid, owner)
        if key in self.counters.workload or len(self.counters.workload) < MAX_WORKLOAD_SERIES:
            self.counters.workload[key] += 1
        if name:
            message = f"{hit.message} (workload {owner})" if owner else hit.message
            self._event(InvolvedObject("Pod", name, ns, uid), hit.rule.reason, "Warning",
                        message)

    async def _resolve_pod(self, uid: str) -> tuple[str, str, str]:
        """(namespace, name, "Kind/name" of its top controller) of a pod on this node by UID;
        empty strings when it cannot be found (no API, pod gone)."""
        if uid not in self._pods and self.api is not None and \
                time.monotonic() - self._pods_listed > 30:
            self._pods_listed = time.monotonic()
            try:
                pods = await list_node_pods(self.api, self.opts.node)
            except Exception as exc:
                log.warning("problem_pod_lookup_failed", error=str(exc))
                pods = []
            self._pods = {str((p.get("metadata") or {}).get("uid")): p for p in pods
                          if (p.get("metadata") or {}).get("uid")}
        pod = self._pods.get(uid)
        if pod is None:
            return "", "", ""
        meta = pod.get("metadata") or {}
        if uid not in self._owners:
            try:
                found = await top_owner(self.api, pod)
            except Exception:  # owner unreadable: fall back to the pod's direct controller
                found = controller_of(pod)
            self._owners[uid] = f"{found[0]}/{found[1]}" if found else ""
        return str(meta.get("namespace", "")), str(meta.get("name", "")), self._owners[uid]

    def _node_obj(self) -> InvolvedObject:
        return InvolvedObject("Node", self.opts.node)

    def _event(self, obj: InvolvedObject, reason: str, type_: str, message: str) -> None:
        key = (obj.kind, obj.namespace, obj.name, reason, type_)
        p = self._pending.get(key)
        if p is None:
            if len(self._pending) >= MAX_PENDING_EVENTS:
                self.counters.events_dropped += 1
                return
            p = self._pending[key] = _Pending(obj, reason, type_, message)
        p.count += 1
        p.message = message

    # ---- publishing --------------------------------------------------------------------
    async def _publish_loop(self) -> None:
        last_reopen = time.monotonic()
        while True:
            try:
                await self.publish_once()
                if time.monotonic() - last_reopen >= KMSG_REOPEN_SECONDS:
                    last_reopen = time.monotonic()
                    for rt in self.sources.values():
                        rt.reopen_kmsg()
            except Exception:  # keep publishing whatever one pass hit
                log.exception("problem_publish_loop_failed")
            await asyncio.sleep(self.opts.tick)

    async def publish_once(self) -> None:
        """Expire, patch the conditions when due, flush Events when due."""
        now = time.time()
        for t in self.book.expire(now):
            self._event(self._node_obj(), self.book.states[t].reason, "Normal",
                        f"{t} cleared: no new occurrence within its clear-after time")
        if self.api is None:
            self._pending.clear()
            return
        if not self._restored and not await self._restore():
            return
        due = now - self._last_publish >= self.opts.heartbeat
        if self.book.states and (self.book.dirty or due):
            self.book.dirty = False
            try:
                await patch_conditions(self.api, self.opts.node, self.book.api_conditions(now))
                self._last_publish = now
                self.counters.publishes += 1
            except Exception as exc:
                self.book.dirty = True
                self.counters.publish_errors += 1
                log.warning("problem_conditions_patch_failed", error=str(exc))
        if time.monotonic() - self._last_flush >= self.opts.event_flush:
            await self.flush_events()

    async def flush_events(self) -> None:
        self._last_flush = time.monotonic()
        pending, self._pending = self._pending, {}
        for p in pending.values():
            try:
                await record_event(self.api, p.obj, p.reason, p.message, type_=p.type_,
                                   host=self.opts.node, count=p.count)
                self.counters.events_written += 1
            except Exception as exc:
                self.counters.events_dropped += 1
                log.warning("problem_event_failed", reason=p.reason, error=str(exc))

    # ---- views -------------------------------------------------------------------------
    def status(self) -> dict[str, Any]:
        return {
            "monitors": [m.name for m in self.problems.log_monitors]
            + [m.name for m in self.problems.check_monitors],
            "active": [{"condition": st.type, "reason": st.reason, "message": st.message[:200],
                        "since": rfc3339(st.transition)} for st in self.book.active()],
            "sources": {k: {"up": s.up, "read": s.read, "matched": s.matched,
                            "dropped": dict(s.dropped), "restarts": s.restarts,
                            "last_error": s.last_error} for k, s in self.stats.items()},
            "restored": self._restored,
            "publish_errors": self.counters.publish_errors,
            "checks": {r.monitor.name: r.status() for r in self.checks},
        }
