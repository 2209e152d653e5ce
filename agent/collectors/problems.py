"""The ``problems`` collector: node problem detection (NPD compatible) and its metrics.

``start()`` loads ``--problems.dir`` (agent.problems.loader: NPD monitor JSON unchanged and
nodemedic YAML) and starts an agent.problems.detector.ProblemDetector with the shared API client
(``ctx.api``; without one, problems are still detected and exported, only not
published as conditions and Events). A missing directory means detection is off; invalid
definitions make ``start()`` raise with every file:line problem: the agent refuses to start,
and a reload keeps the running collector (all or nothing). ``collect()`` only reads counters:
a tick costs no I/O.
"""

from __future__ import annotations

import asyncio
from typing import Any

from agent.collectors.base import Collector, CollectorContext
from agent.collectors.registry import register
from agent.problems.detector import DetectorOptions, ProblemDetector
from agent.problems.loader import load_problems
from agent.problems.model import ProblemSet
from agent.rules.loader import RulesError
from agent.structs.metrics import Family, MetricSpec

PROBLEMS = MetricSpec(
    "nodemedic_problems_total",
    "Node problems detected by reason (log rule matches and failed checks), as NPD's "
    "problem_counter; lines from before the agent started (lookback) are not counted.",
    "counter", ("reason",))
ACTIVE = MetricSpec(
    "nodemedic_problem_active",
    "1 while a problem condition nodemedic owns is True (0 when healthy), per condition and "
    "current reason, as NPD's problem_gauge.",
    "gauge", ("condition", "reason"))
WORKLOAD = MetricSpec(
    "nodemedic_problem_workload_total",
    "OOM kills and hung tasks whose victim was in a pod's cgroup: reported against the pod and "
    "its top controller (owner, Kind/name), not the node (pod is the pod UID when the pod could "
    "not be looked up).",
    "counter", ("reason", "namespace", "pod", "owner"))
LINES = MetricSpec(
    "nodemedic_problem_log_lines_total",
    "Log lines read from each problem source, and how many matched a rule.",
    "counter", ("source", "outcome"))
DROPPED = MetricSpec(
    "nodemedic_problem_log_lines_dropped_total",
    "Log lines not matched: over the rate limit, queue full, overwritten in the kernel ring "
    "buffer before being read (EPIPE), too long, or unparsable.",
    "counter", ("source", "reason"))
SOURCE_UP = MetricSpec(
    "nodemedic_problem_source_up",
    "1 while a problem log source is being read (kmsg open, file readable, journalctl running).",
    "gauge", ("source",))
SOURCE_RESTARTS = MetricSpec(
    "nodemedic_problem_source_restarts_total",
    "Restarts of a supervised problem source (journalctl).",
    "counter", ("source",))
CHECK_RUNS = MetricSpec(
    "nodemedic_problem_check_runs_total",
    "Custom plugin check runs by result (ok, problem, unknown, timeout).",
    "counter", ("check", "reason", "result"))
PUBLISH_ERRORS = MetricSpec(
    "nodemedic_problem_publish_errors_total",
    "Failed patches of this node's problem conditions (retried every second).",
    "counter")
EVENTS_DROPPED = MetricSpec(
    "nodemedic_problem_events_dropped_total",
    "Problem Events not written: too many distinct pending Events, or the API failed.",
    "counter")
DEFINITIONS = MetricSpec(
    "nodemedic_problem_monitors",
    "Problem monitors loaded from --problems.dir (log monitors and custom plugin monitors).",
    "gauge")


class ProblemsConfigError(ValueError):
    """--problems.dir holds invalid definitions; the message lists every file:line problem."""


@register("problems", default_enabled=True)
class ProblemsCollector(Collector):
    """Runs the problem detector started in :meth:`start` and exports its counters."""

    help = "node problems from kernel/journal/file logs and custom checks (NPD compatible)"
    metrics = (PROBLEMS, ACTIVE, WORKLOAD, LINES, DROPPED, SOURCE_UP, SOURCE_RESTARTS,
               CHECK_RUNS, PUBLISH_ERRORS, EVENTS_DROPPED, DEFINITIONS)

    def __init__(self, ctx: CollectorContext) -> None:
        super().__init__(ctx)
        self.detector: ProblemDetector | None = None
        self._loaded: ProblemSet | None = None  # the definitions start() read

    def options(self) -> DetectorOptions:
        s = self.ctx.settings
        return DetectorOptions(node=s.node_name, procfs=s.path_procfs,
                               max_lines_per_second=float(s.problems_max_lines_per_second),
                               heartbeat=s.problems_heartbeat_interval)

    async def start(self) -> None:
        s = self.ctx.settings
        try:
            problems = await asyncio.to_thread(load_problems, s.problems_dir,
                                               s.problems_plugin_dir)
        except RulesError as exc:
            # Raised, like invalid rules: at start the agent refuses to run with a message
            # naming every file:line; on reload the new collectors are discarded and the running
            # ones (last good definitions) stay.
            raise ProblemsConfigError("invalid problem definitions: "
                                      + "; ".join(str(p) for p in exc.problems)) from exc
        self._loaded = problems
        if not len(problems):
            return
        self.detector = ProblemDetector(problems, self.options(), self.ctx.api)
        await self.detector.start()

    async def files_changed(self) -> bool:
        """The definitions in --problems.dir differ from those loaded at start (a SIGHUP after
        editing them must not say "reloaded" while the detector runs on the old ones). An
        invalid file counts as changed, so the rebuild reports it and keeps the running set."""
        s = self.ctx.settings
        try:
            now = await asyncio.to_thread(load_problems, s.problems_dir, s.problems_plugin_dir)
        except RulesError:
            return True
        return now != self._loaded

    async def collect(self) -> list[Family]:
        defs = DEFINITIONS.family()
        d = self.detector
        if d is None:
            defs.add((), 0)
            return [defs]
        defs.add((), len(d.problems))
        problems, active, workload = PROBLEMS.family(), ACTIVE.family(), WORKLOAD.family()
        for reason in sorted({r.reason for m in d.problems.log_monitors for r in m.rules} |
                             {r.reason for m in d.problems.check_monitors for r in m.rules}):
            problems.add((reason,), d.counters.problems.get(reason, 0))
        for cond in d.book.states.values():
            active.add((cond.type, cond.reason), 1 if cond.status == "True" else 0)
        for (reason, ns, pod, owner), n in sorted(d.counters.workload.items()):
            workload.add((reason, ns, pod, owner), n)
        lines, dropped = LINES.family(), DROPPED.family()
        up, restarts = SOURCE_UP.family(), SOURCE_RESTARTS.family()
        for key, st in sorted(d.stats.items()):
            lines.add((key, "read"), st.read)
            lines.add((key, "matched"), st.matched)
            for reason, n in sorted(st.dropped.items()):
                dropped.add((key, reason), n)
            up.add((key,), 1 if st.up else 0)
            restarts.add((key,), st.restarts)
        runs = CHECK_RUNS.family()
        for runner in d.checks:
            for (reason, result), n in sorted(runner.runs.items()):
                runs.add((runner.monitor.name, reason, result), n)
        perr, edrop = PUBLISH_ERRORS.family(), EVENTS_DROPPED.family()
        perr.add((), d.counters.publish_errors)
        edrop.add((), d.counters.events_dropped)
        return [defs, problems, active, workload, lines, dropped, up, restarts, runs, perr, edrop]

    def status(self) -> dict[str, Any]:
        if self.detector is None:
            return {"monitors": [], "dir": str(self.ctx.settings.problems_dir)}
        return self.detector.status()

    async def close(self) -> None:
        if self.detector is not None:
            await self.detector.close()
            self.detector = None
