"""Replay recorded series through the real rules engine and safety gate; build the timeline.

Used by nodemedic_sim.replay.command. For every step (``--step``, default the collect interval) and
every node, in that order, a Snapshot is built from the recorded values exactly as the live
pipeline would have built it (the rule metrics' families, the collectors owning them, each
collector ok only when its recorded ``nodemedic_collector_success`` is 1 at that step; a metric
recorded for the node at other steps but not at this one is unreadable) and
handed to that node's :class:`nodemedic_sim.replay.sim.ReplayStage`, which runs the node's
RuleEngine and SafetyGate as the live agent does. A metric without a fresh sample, or whose
collector was not recorded as successful, is missing data: the engine freezes the rules reading it
(never "healthy") and the timeline gets a ``gap`` record for the run of steps without it.

Records: ``fired`` (step 0 allowed or dry-run), ``escalated`` (a later ladder step), ``undone``
(undo actions after healthy_for), ``blocked`` (the gate's denial; ``reason`` is the gate's word,
passed through), ``resolved`` (the target stopped being tracked after its healthy_for) and
``gap``. A held step the gate denies again for the same reason is not repeated; when it is
finally let through it appears as fired/escalated at that step's time.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from types import MappingProxyType
from typing import Any

from agent.rules.engine import RuleEngine
from agent.rules.loader import RuleSet
from agent.settings import Settings
from agent.structs.metrics import Family, MetricSpec
from agent.structs.remediation import Decision, Outcome
from agent.structs.snapshot import CollectorStatus, Snapshot
from nodemedic_sim.replay.promql import Recorded
from nodemedic_sim.replay.sim import FakeCluster, ReplayStage, SimClock

SUCCESS_METRIC = "nodemedic_collector_success"
UNSCHEDULABLE_METRIC = "nodemedic_node_unschedulable"
WHATS = ("fired", "escalated", "undone", "resolved", "blocked", "gap")


def rfc3339(t: float) -> str:
    """Unix seconds as RFC 3339 UTC (``2026-12-03T10:00:00Z``, milliseconds when not whole)."""
    d = datetime.fromtimestamp(t, UTC)
    text = d.isoformat(timespec="milliseconds" if t % 1 else "seconds")
    return text.replace("+00:00", "Z")


@dataclass(slots=True)
class Record:
    """One event of the timeline (see module docstring)."""

    time: float
    node: str
    what: str
    rule: str = ""
    target: str = ""
    step: int = 0
    actions: list[str] = field(default_factory=list)
    decision: str = ""  # allowed | dry_run | denied
    reason: str = ""
    detail: str = ""
    outcome: str = ""  # an allowed action that changed nothing or failed: why (noop: ...)
    end: float | None = None  # gap: the last step without data
    metrics: list[str] = field(default_factory=list)  # gap: what was missing
    rules: list[str] = field(default_factory=list)  # gap: the rules frozen by it

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"time": rfc3339(self.time), "node": self.node, "what": self.what}
        if self.what == "gap":
            out.update(start=rfc3339(self.time),
                       end=rfc3339(self.end if self.end is not None else self.time),
                       metrics=self.metrics, rules=self.rules)
            return out
        out.update(rule=self.rule, target=self.target)
        if self.what != "resolved":
            out.update(step=self.step, actions=self.actions, decision=self.decision,
                       dry_run=self.decision == "dry_run")
        if self.what == "blocked":
            out.update(reason=self.reason, detail=self.detail)
        if self.outcome:
            out.update(outcome=self.outcome)
        return out


def what_of(decision: Decision) -> str:
    req = decision.request
    if decision.kind == "denied":
        return "blocked"
    return "undone" if req.undo else "fired" if req.step == 0 else "escalated"


@dataclass(slots=True)
class _Gap:
    start: float
    end: float
    metrics: set[str]


class Replay:
    """One replay over ``times`` of the ``recorded`` metrics (see module docstring).

    ``catalogue`` maps each rule metric to (owning collector, spec); metrics without an owner
    can never have data (the live agent would not have had any either)."""

    def __init__(self, settings: Settings, ruleset: RuleSet, recorded: Mapping[str, Recorded],
                 *, times: Sequence[float], nodes: Sequence[str],
                 catalogue: Mapping[str, tuple[str, MetricSpec]]) -> None:
        self.settings = settings
        self.ruleset = ruleset
        self.recorded = recorded
        self.times = list(times)
        self.nodes = list(nodes)
        self.catalogue = catalogue
        compiled = RuleEngine(ruleset, "")  # what each enabled rule reads, as the engine sees it
        self.metrics_of = {r: list(compiled.rule_metrics(r)) for r in compiled.rule_names}
        self.metrics = sorted({m for ms in self.metrics_of.values() for m in ms})
        self.records: list[Record] = []
        self._tick: list[Record] = []

    def initially_cordoned(self) -> list[str]:
        """Nodes the recording shows unschedulable at the first step (an admin's cordons)."""
        rec = self.recorded.get(UNSCHEDULABLE_METRIC)
        if rec is None:
            return []
        return sorted(n for n, per in rec.by_node.items()
                      if any(v == 1 for _, v in per.get(0, [])))

    def snapshot(self, node: str, i: int, t: float) -> Snapshot:
        """The snapshot the live agent on ``node`` would have taken at step ``i``."""
        success = self.recorded.get(SUCCESS_METRIC)
        ok = {lv[0]: v == 1 for lv, v in (success.by_node.get(node, {}).get(i, [])
                                          if success is not None else [])}
        families: dict[str, Family] = {}
        owners: dict[str, str] = {}
        vanished: dict[str, dict[str, str]] = {}
        for metric in self.metrics:
            entry = self.catalogue.get(metric)
            if entry is None:
                continue
            owner, spec = entry
            owners[metric] = owner
            rec = self.recorded.get(metric)
            per_step = rec.by_node.get(node, {}) if rec is not None else {}
            samples = list(per_step.get(i, []))
            if not samples and per_step:
                # Recorded for this node at other steps but not at this one while its collector
                # says it succeeded: the recording lost it (relabelling, a partial scrape).
                # Unknown, never "no series, so healthy".
                vanished.setdefault(owner, {})[metric] = "not_recorded"
            families[metric] = Family(spec, samples)
        statuses = {
            owner: CollectorStatus(owner, ok.get(owner, False), 0.0,
                                   None if ok.get(owner) else "no successful collection recorded",
                                   reason="" if ok.get(owner) else "error",
                                   unreadable=MappingProxyType(vanished.get(owner, {})))
            for owner in set(owners.values())
        }
        # A collector that failed has no families, as in agent.runtime.pipeline.
        kept = {m: f for m, f in families.items() if statuses[owners[m]].ok}
        return Snapshot(taken_at=t, monotonic=t, families=kept, collectors=statuses,
                        owners=owners)

    def _sink(self, node: str, clock: SimClock) -> Any:
        def sink(decision: Decision, result: Outcome | None, repeated: bool) -> None:
            if repeated:
                return
            req = decision.request
            what = what_of(decision)
            # Simulated actions report success; real ones on the fake may report a no-op.
            note = (f"{req.action.type} {result.kind}: {result.message}"
                    if result is not None and result.kind not in ("success", "retry") else "")
            for rec in self._tick:  # one record per rule/step/outcome, listing its actions
                if (rec.node, rec.rule, rec.target, rec.step, rec.what, rec.decision,
                        rec.reason) == (node, req.rule, req.target.key, req.step, what,
                                        decision.kind, decision.reason if what == "blocked"
                                        else ""):
                    rec.actions.append(req.action.type)
                    rec.outcome = "; ".join(x for x in (rec.outcome, note) if x)
                    return
            self._tick.append(Record(
                time=clock(), node=node, what=what, rule=req.rule, target=req.target.key,
                step=req.step, actions=[req.action.type], decision=decision.kind,
                reason=decision.reason if what == "blocked" else "",
                detail=decision.detail if what == "blocked" else "", outcome=note))
        return sink

    async def run(self) -> list[Record]:
        clock = SimClock(self.times[0] if self.times else 0.0)
        cluster = FakeCluster(self.nodes, clock, self.initially_cordoned())
        await cluster.start()
        try:
            stages: dict[str, ReplayStage] = {}
            for node in self.nodes:
                engine = RuleEngine(self.ruleset, node)
                settings = self.settings.model_copy(update={"node_name": node})
                stage = ReplayStage(settings, cluster.api, engine, clock=clock,
                                    sink=self._sink(node, clock))
                await stage.start()
                stages[node] = stage
            tracked: dict[str, set[tuple[str, str]]] = {n: set() for n in self.nodes}
            gaps: dict[str, _Gap] = {}
            for i, t in enumerate(self.times):
                clock.now = t
                for node in self.nodes:
                    snap = self.snapshot(node, i, t)
                    self._gap(node, snap, t, gaps)
                    self._tick = []
                    stage = stages[node]
                    await stage.on_snapshot(snap)
                    # Firing targets leave the engine only once healthy for healthy_for.
                    now_tracked = {(str(e["rule"]), str(e["target"]))
                                   for e in stage.engine.status()
                                   if e.get("state") in ("firing", "resolving")}
                    for rule, target in sorted(tracked[node] - now_tracked):
                        self.records.append(Record(t, node, "resolved", rule, target))
                    tracked[node] = now_tracked
                    self.records.extend(self._tick)
            for node, gap in gaps.items():
                self._close(node, gap)
            for stage in stages.values():
                await stage.close()
        finally:
            await cluster.stop()
        self.records.sort(key=lambda r: r.time)  # stable: per-tick order is kept
        return self.records

    def _gap(self, node: str, snap: Snapshot, t: float, gaps: dict[str, _Gap]) -> None:
        missing = {m for m in self.metrics if not snap.has_data_for(m)}
        gap = gaps.get(node)
        if missing:
            if gap is None:
                gaps[node] = _Gap(t, t, missing)
            else:
                gap.end = t
                gap.metrics |= missing
        elif gap is not None:
            self._close(node, gaps.pop(node))

    def _close(self, node: str, gap: _Gap) -> None:
        rules = sorted(r for r, ms in self.metrics_of.items() if gap.metrics & set(ms))
        self.records.append(Record(gap.start, node, "gap", end=gap.end,
                                   metrics=sorted(gap.metrics), rules=rules))
