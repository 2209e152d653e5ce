"""The remediation stage: rules engine -> safety gate -> actions -> record, once per snapshot.

Called by the daemon through agent.runtime.components (``build_stage``): ``start()``
once, ``on_snapshot()`` after every collection, ``families()`` / ``status()`` for /metrics and
/status, ``close()`` on shutdown. For every request the engine makes it
1. refuses it as ``missing_data`` when a collector behind a metric its rule reads (the request's
   ``metrics``) failed this tick (never act on stale or absent data);
2. asks the gate (the only path to execution);
3. runs allowed actions concurrently (bounded) through agent.actions.executor, the one executor
   and error policy (shared with the failover path), each failure contained to its own request;
4. records each decision: ``nodemedic_actions_total`` and one structured log line with every
   field (agent.actions.executor.record/fields), a Kubernetes Event on the target for real
   actions (agent.runtime.action_events, which retries refused ones), and the ledger plus the
   engine's state in the node annotation ``nodemedic.io/state`` and on local disk
   (agent.runtime.state_store) so a restarted agent resumes (cooldowns, caps, the escalation
   ladder, a drain in progress), even with the API down or absent.
Actions that need more passes (outcome ``retry``: drain, a PDB-blocked eviction) stay pending and
are re-gated and re-run on later ticks until they finish, fail or time out. A request the gate
denies for a reason that clears by itself (agent.safety.gate.HOLD_REASONS: missing data, pause,
cooldown, caps, the cordon lock, a freeze, a closed window, a firing alert) is *held* and
re-gated with backoff while the rules engine still asks for that step (agent.runtime.held).

Durations (cooldowns, caps, in-progress timeouts, persist/refresh intervals) use ``monotonic``;
``clock`` (wall time) is only for what leaves the process: the annotation, Events, /status.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any, Protocol

import structlog

from agent.actions import executor
from agent.actions.base import ActionContext
from agent.collectors.base import CollectorContext
from agent.runtime.action_events import METRICS as EVENT_METRICS
from agent.runtime.action_events import EventQueue
from agent.runtime.held import HELD_RETRY_MAX_TICKS, HeldSteps
from agent.runtime.held import METRICS as HELD_METRICS
from agent.runtime.state_store import METRICS as STATE_METRICS
from agent.runtime.state_store import STATE_ANNOTATION, StateStore
from agent.safety.gate import HOLD_REASONS, SafetyGate
from agent.safety.ledger import Ledger, Pending, ledger_key
from agent.safety.localstate import LocalState
from agent.settings import Settings, check_paths
from agent.structs.metrics import Family, MetricSpec
from agent.structs.remediation import ActionRequest, Decision, Outcome
from agent.structs.snapshot import Snapshot

if TYPE_CHECKING:  # agent.rules loads on first use (build_stage), not with this module
    from agent.rules.loader import RuleSet
    from agent.rules.schema import Rule

log = structlog.get_logger("nodemedic.remediation")

__all__ = ["HELD_RETRY_MAX_TICKS", "STATE_ANNOTATION", "Engine", "RemediationStage", "build_stage",
           "metric_specs"]

REFRESH_INTERVAL = 60.0  # idle re-read of pause switches and cordon budget for the gauges
RECENT_DECISIONS = 50  # kept for /status
DEFAULT_CONCURRENCY = 4
# Denials that only pause an in-progress action (it resumes when they clear); any other denial
# of a continuing action ends it.
WAIT_REASONS = frozenset({"paused", "missing_data", "dry_run", "freeze", "window", "alert_gate"})

PENDING = MetricSpec(
    "nodemedic_actions_in_progress",
    "Actions that need more passes (drains, blocked evictions), by action.",
    "gauge",
    ("action",),
)


class Engine(Protocol):
    """What the stage needs from agent.rules' engine (agent.rules.engine.RuleEngine)."""

    def evaluate(self, snapshot: Snapshot, now: float) -> list[ActionRequest]: ...
    def export_state(self) -> Any: ...
    def restore_state(self, state: Any) -> Any: ...
    def families(self) -> list[Family]: ...
    def status(self) -> Any: ...
    def rule(self, name: str) -> Rule | None: ...
    def set_rules(self, ruleset: RuleSet) -> None: ...
    def wants(self, req: ActionRequest) -> bool: ...


class RemediationStage:
    """One per agent; all durable state lives in the gate's ledger and the node annotation."""

    def __init__(
        self,
        settings: Settings,
        api: Any,
        engine: Engine,
        *,
        clock: Any = time.time,
        monotonic: Any = time.monotonic,
        systemctl: str = "/bin/systemctl",
        http: Any = None,
        concurrency: int = DEFAULT_CONCURRENCY,
        reloader: Any = None,
        local: LocalState | None = None,
    ) -> None:
        self.settings = settings
        self.api = api
        self.engine = engine
        self.clock = clock
        self.monotonic = monotonic
        self.systemctl = systemctl
        self.http = http
        self.gate = SafetyGate(settings, api, clock=clock, monotonic=monotonic,
                               rules=self._rule)
        self.reloader = reloader  # agent.rules.loader.RulesReloader, when built by build_stage
        self._sem = asyncio.Semaphore(max(1, concurrency))
        self._extra: dict[str, dict[str, Any]] = {}
        self._recent: deque[dict[str, Any]] = deque(maxlen=RECENT_DECISIONS)
        self._last_refresh: float | None = None
        self.held = HeldSteps(lambda: self.gate.ledger, self._changed, monotonic)
        self._tick = 0
        self.local = local
        self.events = EventQueue(api, settings.node_name)
        self.store = StateStore(
            settings.node_name, api, local, gate=lambda: self.gate,
            export=self._export_engine, restore=self._restore_engine,
            clock=clock, monotonic=monotonic,
        )

    @property
    def ledger(self) -> Ledger:
        return self.gate.ledger

    def _rule(self, name: str) -> Rule | None:
        """The engine's loaded rule ``name`` (for the gate's per-rule gates), or None."""
        return self.engine.rule(name)

    # --- lifecycle ---------------------------------------------------------------------------

    async def start(self) -> None:
        """Restore ledger and engine state from local disk, then from the node annotation
        (retried each tick if the API is down now; until then the gate denies every action
        that needs it as missing_data anyway); start the alert gate's poller."""
        self.gate.alerts.start()
        await self.store.start()

    def _restore_engine(self, engine_state: Any) -> bool:
        try:
            self.engine.restore_state(engine_state)
        except Exception as exc:  # a bad state must never stop the agent
            log.warning("engine_state_restore_failed", error=str(exc))
            return False
        return True

    def _export_engine(self) -> Any:
        try:
            return self.engine.export_state()
        except Exception as exc:
            log.warning("engine_state_export_failed", error=str(exc))
            return None

    def _offset(self) -> float:
        """Wall minus monotonic time now (maps the ledger's times to and from the annotation)."""
        return self.store.offset()

    async def close(self) -> None:
        """Write the final state (best effort); the API client belongs to the caller."""
        await self.gate.alerts.close()
        await self.store.close()

    def _changed(self) -> None:
        """Something the ledger must remember happened: write both copies this tick."""
        self.store.changed()

    async def reload(self, settings: Settings) -> None:
        """Prepare and commit at once (tests, embedders); see :meth:`prepare_reload`."""
        (await self.prepare_reload(settings))()

    async def prepare_reload(self, settings: Settings) -> Callable[[], None]:
        """SIGHUP, phase one: validate everything new (the rules directory and every rule in it,
        the gate's new configuration) without changing anything that runs; raise (SettingsError,
        RulesError) on any problem. The returned commit applies settings, gate and rules together
        and cannot fail, so a failed reload leaves dry-run, budgets and rules exactly as they
        were (issue 12: a broken rule file must not turn dry-run off). The ledger and the engine
        state of rules that keep their name are kept."""
        check_paths(settings)
        ruleset = None
        if self.reloader is not None:
            ruleset = await asyncio.to_thread(self.reloader.load, settings.rules_dir)
            from agent.rules.engine import RuleEngine  # deferred as in build_stage

            if isinstance(self.engine, RuleEngine):
                # Compile every rule on a scratch engine: a rule that validates but does not
                # compile fails the reload here instead of half-installing the set on commit.
                RuleEngine(ruleset, settings.node_name)
        commit_gate = self.gate.prepare_reload(settings)

        def commit() -> None:
            if ruleset is not None and self.reloader is not None:
                self.engine.set_rules(ruleset)
                self.reloader.commit(ruleset, settings.rules_dir)
            commit_gate()
            self.settings = settings

        return commit

    # --- one tick ----------------------------------------------------------------------------

    async def on_snapshot(self, snapshot: Snapshot) -> None:
        await self.store.restore()
        self._tick += 1
        self.events.tick = self._tick
        now = self.monotonic()
        try:
            requests = list(self.engine.evaluate(snapshot, self.clock()))
        except Exception:
            log.exception("rules_evaluation_failed")
            requests = []
        work: list[tuple[ActionRequest, bool]] = [
            (p.request, True) for p in self.ledger.pending.values()
        ]
        seen = set(self.ledger.pending)
        for req in requests:
            key = ledger_key(req)
            if key in seen:
                continue  # already running (the pending pass continues it) or a duplicate
            seen.add(key)
            work.append((req, False))
        work.extend((req, False) for req in self.held.due(seen, self._tick, self.engine.wants))

        decisions: list[tuple[Decision, bool]] = []
        for req, continuing in work:
            stale = None if continuing else self._stale(req, snapshot)
            decision = stale or await self.gate.decide(req, continuing=continuing)
            decisions.append((decision, continuing))

        async def run(decision: Decision, continuing: bool) -> Outcome | None:
            if decision.kind != "allowed":
                return None
            async with self._sem:
                return await self._execute(decision, continuing)

        outcomes = await asyncio.gather(*(run(d, c) for d, c in decisions))
        events: list[tuple[Decision, Outcome]] = []
        if self.api is not None:
            await self.gate.settle()  # our cordon is on the API now: free the cordon lock
        for (decision, continuing), result in zip(decisions, outcomes, strict=True):
            self._record(decision, result, continuing)
            if not continuing:
                self.held.hold(decision, self._tick)
            if result is not None and (not continuing or result.kind != "retry"):
                events.append((decision, result))
        if self.api is not None:
            await self.events.retry()
        if events and self.api is not None:
            await asyncio.gather(*(self.events.send(d, o) for d, o in events))
        await self.store.persist(force=self.store.dirty)
        refresh_due = self._last_refresh is None or now - self._last_refresh >= REFRESH_INTERVAL
        if self.api is not None and self.store.restored and refresh_due:
            self._last_refresh = now
            await self.gate.refresh()

    def _stale(self, req: ActionRequest, snapshot: Snapshot) -> Decision | None:
        """missing_data when a collector behind a metric the request's rule reads failed this
        tick; for a request whose metrics are unknown (``None``: restored from a state written
        before requests recorded them), behind any metric (fail safe)."""
        metrics = req.metrics if req.metrics is not None else sorted(snapshot.owners)
        for metric in metrics:
            owner = snapshot.owners.get(metric)
            if owner is not None and not snapshot.has_data_for(metric):
                detail = f"collector {owner} failed this tick; {metric} has no fresh data"
                return self.gate.deny(req, "missing_data", detail)
        return None

    async def _execute(self, decision: Decision, continuing: bool) -> Outcome:
        key = ledger_key(decision.request)
        pending = self.ledger.pending.get(key)
        ctx = ActionContext(
            api=self.api,
            node_name=self.settings.node_name,
            settings=self.settings,
            systemctl=self.systemctl,
            http=self.http,
            progress=self.gate.drain_progress,
            now=self.clock,
            # The action compares this with ctx.now() (wall): hand it the monotonic start
            # expressed in today's wall time, so a clock step does not end its timeout.
            started_at=pending.started + self._offset() if pending is not None else None,
            extra=self._extra.setdefault(key, {}),
        )
        return await executor.run(decision, ctx, continuing=continuing)

    def _record(self, decision: Decision, result: Outcome | None, continuing: bool) -> None:
        req = decision.request
        key = ledger_key(req)
        executor.record(self.gate, decision, result, continuing)
        if continuing and decision.kind == "denied" and decision.reason not in WAIT_REASONS:
            # e.g. an admin uncordoned the node mid-drain: stop for good, do not retry forever.
            self.ledger.pending.pop(key, None)
            self._extra.pop(key, None)
            self.gate.drain_progress(req.target.node, 0, 0.0)
            self._changed()
        if result is not None:
            if not continuing:
                self._changed()
            if result.kind == "retry":
                if key not in self.ledger.pending:
                    self.ledger.pending[key] = Pending(req, self.monotonic())
                    self._changed()
                else:
                    self.ledger.pending[key].attempts += 1
            elif key in self.ledger.pending:
                del self.ledger.pending[key]
                self._extra.pop(key, None)
                self._changed()
        fields = executor.fields(decision, result, continuing)
        # Repeated passes of a pending drain, and a held step denied again for the same
        # reason and detail, are debug noise; a failed action is a warning (its message says
        # why); allowed, denied (with its reason) and dry-run decisions are info.
        held = self.ledger.held.get(key)
        quiet = (continuing and result is not None and result.kind == "retry") or (
            held is not None and decision.kind == "denied"
            and (held.reason, held.detail) == (decision.reason, decision.detail))
        if not continuing and decision.kind == "denied" and decision.reason in HOLD_REASONS:
            fields["held"] = True  # it will be retried (see _hold)
        failed = result is not None and result.kind == "failure"
        emit = log.debug if quiet else log.warning if failed else log.info
        emit("remediation_decision", **fields)
        if not quiet or held is None:
            self._recent.append({"time": self.clock(), **fields})

    # --- exposing ----------------------------------------------------------------------------

    def families(self) -> list[Family]:
        writes, local_writes, blind = self.store.families()
        pending = PENDING.family()
        counts: dict[str, int] = {}
        for p in self.ledger.pending.values():
            counts[p.request.action.type] = counts.get(p.request.action.type, 0) + 1
        for action, n in sorted(counts.items()):
            pending.add((action,), n)
        out = [*self.gate.families(), writes, *self.events.families(), pending,
               *self.held.families(), local_writes, blind]
        for source in (self.engine, self.reloader):
            if source is None:
                continue
            try:
                out.extend(source.families())
            except Exception:
                log.exception("rules_families_failed")
        return out

    def status(self) -> dict[str, Any]:
        try:
            rules = self.engine.status()
        except Exception as exc:
            rules = {"error": str(exc)}
        if isinstance(rules, list):
            self.held.mark_rules(rules)
        return {
            "remediation": {
                "dry_run": self.settings.dry_run,
                "rules_dir": str(self.settings.rules_dir),
                "rules_loaded": (
                    sum(1 for r in self.reloader.current.rules if r.rule.enabled)
                    if self.reloader is not None else None
                ),
                "gate": self.gate.status(),
                "state_restored": self.store.restored,
                "state_problems": self.store.problems,
                "local_state": str(self.local.path) if self.local is not None else None,
                "in_progress": [
                    {
                        "rule": p.request.rule,
                        "action": p.request.action.type,
                        "target": p.request.target.key,
                        "started": p.started + self._offset(),
                        "attempts": p.attempts,
                    }
                    for p in self.ledger.pending.values()
                ],
                "held": self.held.status(self._offset(), self._tick),
                "recent_decisions": list(self._recent)[-20:],
            },
            "rules": rules,
        }


async def build_stage(settings: Settings, ctx: CollectorContext) -> RemediationStage:
    """Called by agent.runtime.components at start: load ``--rules.dir`` (RulesError on an
    invalid rule, so the daemon refuses to start), build the engine and the stage.

    A missing rules directory is an error too (SettingsError): an agent that runs "healthy" with
    no rules protects nothing. An empty directory is allowed and shows as
    ``nodemedic_rules_loaded 0`` (alerted on by NodemedicNoRulesLoaded).
    """
    from agent.rules.engine import RuleEngine  # deferred: heavy, and rules import collectors
    from agent.rules.loader import RulesReloader

    check_paths(settings)
    reloader = RulesReloader(settings.rules_dir)
    ruleset = await asyncio.to_thread(reloader.reload)
    engine = RuleEngine(ruleset, settings.node_name)
    return RemediationStage(
        settings, ctx.api, engine, reloader=reloader,
        local=LocalState(settings.state_dir),
    )


def metric_specs() -> Iterable[MetricSpec]:
    """Every metric the stage and gate can export (README table, promtool tests)."""
    from agent.safety.gate import METRICS

    writes, local_writes, blind = STATE_METRICS
    return (*METRICS, writes, *EVENT_METRICS, PENDING, *HELD_METRICS, local_writes, blind)
