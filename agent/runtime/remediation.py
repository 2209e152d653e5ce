"""The remediation stage: rules engine -> safety gate -> actions -> record, once per snapshot.

Called by the daemon through agent.runtime.components (``build_stage``): ``start()``
once, ``on_snapshot()`` after every collection, ``families()`` / ``status()`` for /metrics and
/status, ``close()`` on shutdown. For every request the engine makes it
1. refuses it as ``missing_data`` when a collector behind the rule's observed series failed this
   tick (never act on stale or absent data);
2. asks the gate (the only path to execution);
3. runs allowed actions concurrently (bounded), each failure contained to its own request;
4. records each decision: ``nodemedic_actions_total``, one structured log line with every field,
   a Kubernetes Event on the target for real actions, and the ledger plus the engine's state in
   the node annotation ``nodemedic.io/state`` so a restarted agent resumes (cooldowns, caps, the
   escalation ladder, a drain in progress), and the same state on local disk
   (agent.safety.localstate, ``--state.dir``) so that a restart with the API down or absent
   keeps them too. At start the local copy is loaded first; once the API answers, its state is
   merged with it (agent.safety.ledger.merge_unsynced: the API wins for what it has seen).
Actions that need more passes (outcome ``retry``: drain, a PDB-blocked eviction) stay pending and
are re-gated and re-run on later ticks until they finish, fail or time out. A request the gate
denies for a reason that clears by itself (agent.safety.gate.HOLD_REASONS: missing data, pause,
cooldown, caps, the cordon lock, a freeze, a closed window, a firing alert) is *held* in the
ledger (so it survives a restart) and re-gated with backoff (1, 2, 4, then every
HELD_RETRY_MAX_TICKS ticks) while the rules engine still asks for that step (``wants``); it is
dropped when the rule resolves or the denial is final. /status shows held steps with their
reason, ``nodemedic_actions_held`` counts them. An Event the API
refused is queued (bounded) and retried on later ticks with backoff, so one 500 at the wrong moment
does not hide a drain from ``kubectl describe node``.

Durations (cooldowns, caps, in-progress timeouts, persist/refresh intervals) use ``monotonic``;
``clock`` (wall time) is only for what leaves the process: the annotation, Events, /status.
"""

from __future__ import annotations

import asyncio
import json
import re
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, Protocol

import structlog

from agent.actions import registry
from agent.actions.base import ActionContext, describe
from agent.collectors.base import CollectorContext
from agent.kube.errors import KubeError, KubeUnavailable
from agent.kube.events import InvolvedObject, record_event
from agent.kube.nodes import ensure_annotations, get_node, read_annotations, update_node
from agent.safety.gate import HOLD_REASONS, SafetyGate
from agent.safety.ledger import Held, Ledger, Pending, ledger_key, merge_unsynced
from agent.safety.localstate import LocalState
from agent.settings import Settings, check_paths
from agent.structs.durations import format_duration
from agent.structs.metrics import Family, MetricSpec
from agent.structs.remediation import ActionRequest, Decision, Outcome, OutcomeKind
from agent.structs.snapshot import Snapshot

log = structlog.get_logger("nodemedic.remediation")

STATE_ANNOTATION = "nodemedic.io/state"
PERSIST_INTERVAL = 60.0  # engine-only state changes are written at most this often
REFRESH_INTERVAL = 60.0  # idle re-read of pause switches and cordon budget for the gauges
RECENT_DECISIONS = 50  # kept for /status
DEFAULT_CONCURRENCY = 4
# Denials that only pause an in-progress action (it resumes when they clear); any other denial
# of a continuing action ends it.
WAIT_REASONS = frozenset({"paused", "missing_data", "dry_run", "freeze", "window", "alert_gate"})
_METRIC_RE = re.compile(r"nodemedic_[A-Za-z0-9_]+")
EVENT_RETRY_QUEUE = 256  # failed Events kept for retry; the oldest is dropped (counted) past it
EVENT_RETRY_ATTEMPTS = 8  # then the Event is given up (counted)
EVENT_RETRY_MAX_TICKS = 32  # backoff between attempts: 1, 2, 4 ... ticks, at most this
EVENT_RETRIES_PER_TICK = 32  # bounds the API calls one tick spends on old Events
MAX_HELD = 256  # held steps kept; past it the oldest is dropped (counted)
# A refused state write (a 403 from a role without 'update' on nodes, a 5xx) waits 10, 20, 40 s
# ... at most this long before the next try, instead of one forbidden PUT every tick.
STATE_RETRY_BASE_SECONDS = 10.0
STATE_RETRY_MAX_SECONDS = 300.0
HELD_RETRY_MAX_TICKS = 6  # backoff between re-gatings of a held step: 1, 2, 4, 6, 6 ... ticks
HELD_RETRIES_PER_TICK = 32  # bounds the gate work (API reads) one tick spends on held steps

STATE_WRITES = MetricSpec(
    "nodemedic_state_writes_total",
    "Writes of the remediation state annotation, by result.",
    "counter",
    ("result",),
)
EVENT_FAILURES = MetricSpec(
    "nodemedic_remediation_events_failed_total",
    "Failed writes of Kubernetes Events about actions (each attempt; failed Events are retried).",
    "counter",
)
EVENTS_DROPPED = MetricSpec(
    "nodemedic_remediation_events_dropped_total",
    "Failed Events about actions given up: reason=queue_full (the retry queue was full and this "
    "was its oldest) or attempts (still failing after every retry).",
    "counter",
    ("reason",),
)
EVENTS_QUEUED = MetricSpec(
    "nodemedic_remediation_events_queued",
    "Failed Events about actions waiting to be retried.",
    "gauge",
)
LOCAL_WRITES = MetricSpec(
    "nodemedic_state_local_writes_total",
    "Writes of the local state file under --state.dir, by result.",
    "counter",
    ("result",),
)
LOCAL_BLIND = MetricSpec(
    "nodemedic_state_local_unknown",
    "1 while the local state file was unreadable and no API state replaced it: every cooldown "
    "is taken to have started when the file was last written.",
    "gauge",
)
PENDING = MetricSpec(
    "nodemedic_actions_in_progress",
    "Actions that need more passes (drains, blocked evictions), by action.",
    "gauge",
    ("action",),
)
HELD = MetricSpec(
    "nodemedic_actions_held",
    "Steps the gate denied for a reason that clears by itself (missing_data, paused, cooldown, "
    "caps, cordon_lock, freeze, window, alert_gate), waiting to be retried, by action and "
    "reason.",
    "gauge",
    ("action", "reason"),
)
HELD_DROPPED = MetricSpec(
    "nodemedic_actions_held_dropped_total",
    "Held steps given up: reason=resolved (the rule no longer asks for the step) or full "
    "(MAX_HELD reached, the oldest was dropped).",
    "counter",
    ("reason",),
)


class Engine(Protocol):
    """What the stage needs from agent.rules' engine."""

    def evaluate(self, snapshot: Snapshot, now: float) -> list[ActionRequest]: ...
    def export_state(self) -> Any: ...
    def restore_state(self, state: Any) -> Any: ...
    def families(self) -> list[Family]: ...
    def status(self) -> Any: ...


def _camel(action: str) -> str:
    return "".join(part.capitalize() for part in action.split("-"))


@dataclass
class _QueuedEvent:
    """An Event the API refused, retried from tick ``due`` on."""

    obj: InvolvedObject
    reason: str
    message: str
    type_: str
    action: str
    attempts: int
    due: int


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
        self._restored = api is None
        self._restore_problems: list[str] = []
        self._persisted_engine: str | None = None
        self._last_persist = float("-inf")  # the first engine-only change is written at once
        self._last_refresh: float | None = None
        self._dirty = False
        self._writes = {"ok": 0, "error": 0}
        self._event_failures = 0
        self._state_failures = 0  # consecutive refused API state writes
        self._state_retry_at = 0.0  # monotonic time before which no API state write is tried
        self._event_queue: deque[_QueuedEvent] = deque()
        self._events_dropped = {"queue_full": 0, "attempts": 0}
        self._held_dropped = {"resolved": 0, "full": 0}
        self._tick = 0
        self.local = local
        self._local_dirty = False
        self._local_engine: str | None = None
        self._last_local = float("-inf")
        self._local_writes = {"ok": 0, "error": 0}
        self._local_at: float | None = None  # monotonic "at" of the local state loaded
        self._synced_at: float | None = None  # wall "at" of the last state the API accepted

    @property
    def ledger(self) -> Ledger:
        return self.gate.ledger

    def _rule(self, name: str) -> Any:
        """The engine's loaded rule ``name`` (for the gate's per-rule gates), or None."""
        lookup = getattr(self.engine, "rule", None)
        return lookup(name) if callable(lookup) else None

    # --- lifecycle ---------------------------------------------------------------------------

    async def start(self) -> None:
        """Restore ledger and engine state from local disk, then from the node annotation
        (retried each tick if the API is down now; until then the gate denies every action
        that needs it as missing_data anyway); start the alert gate's poller."""
        self.gate.alerts.start()
        if self.local is not None:
            await self._restore_local(self.local)
        await self._restore()

    async def _restore_local(self, local: LocalState) -> None:
        loaded = await asyncio.to_thread(local.load, float(self.clock()))
        self._synced_at = loaded.synced_at
        offset = self._offset()
        blind = loaded.blind_since
        if loaded.ledger_json is not None:
            ledger, engine_state, problems = Ledger.from_json(loaded.ledger_json, offset)
            if problems:  # parts were unreadable: what they said is unknown since the write
                blind = ledger.written_at + offset if ledger.written_at is not None else None
                blind = blind if blind is not None else float(self.clock())
            self.gate.ledger = ledger
            self._local_at = ledger.written_at
            self._restore_problems.extend(problems)
            if engine_state is not None:
                self._restore_engine(engine_state)
        if loaded.problem is not None:
            self._restore_problems.append(loaded.problem)
        if blind is not None:
            self.gate.ledger.unknown_since = blind - offset
        for problem in self._restore_problems:
            log.warning("local_state_problem", path=str(local.path), problem=problem,
                        cooldowns_from=blind)
        log.info("local_state_loaded", path=str(local.path),
                 history=len(self.gate.ledger.history), found=loaded.ledger_json is not None)

    def _restore_engine(self, engine_state: Any) -> None:
        try:
            self.engine.restore_state(engine_state)
        except Exception as exc:  # a bad state must never stop the agent
            log.warning("engine_state_restore_failed", error=str(exc))
        else:
            self._persisted_engine = json.dumps(engine_state, sort_keys=True, default=str)

    async def _restore(self) -> None:
        if self._restored:
            return
        try:
            node = await get_node(self.api, self.settings.node_name)
        except KubeError as exc:
            log.warning("state_restore_deferred", node=self.settings.node_name, error=str(exc))
            return
        self._restored = True
        raw = read_annotations(node).get(STATE_ANNOTATION)
        offset = self._offset()
        ledger, engine_state, problems = (
            Ledger.from_json(raw, offset) if raw else (Ledger(), None, [])
        )
        synced = self._synced_at - offset if self._synced_at is not None else None
        mine = self.gate.ledger
        had_local = bool(mine.history or mine.last or mine.pending or mine.unknown_since)
        local_newer = self._local_at is not None and (
            ledger.written_at is None or self._local_at > ledger.written_at
        )
        self.gate.ledger = merge_unsynced(ledger, mine, synced)
        if had_local:
            self._changed()  # the API learns what only the local state held
        self._restore_problems.extend(problems)
        for problem in problems:
            log.warning("state_restore_problem", problem=problem)
        if engine_state is not None and not local_newer:
            self._restore_engine(engine_state)
        if not raw:
            return
        log.info(
            "state_restored",
            history=len(ledger.history),
            in_progress=[ledger_key(p.request) for p in ledger.pending.values()],
        )

    def _offset(self) -> float:
        """Wall minus monotonic time now (maps the ledger's times to and from the annotation)."""
        return float(self.clock()) - float(self.monotonic())

    async def close(self) -> None:
        """Write the final state (best effort); the API client belongs to the caller."""
        await self.gate.alerts.close()
        self._local_dirty = True
        self._state_retry_at = 0.0  # the last chance: a write backing off is tried once more
        await self._persist(force=self.api is not None)

    def _changed(self) -> None:
        """Something the ledger must remember happened: write both copies this tick."""
        self._dirty = True
        self._local_dirty = True

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
        set_rules = getattr(self.engine, "set_rules", None)

        def commit() -> None:
            if ruleset is not None and self.reloader is not None:
                if callable(set_rules):
                    set_rules(ruleset)
                self.reloader.commit(ruleset, settings.rules_dir)
            commit_gate()
            self.settings = settings

        return commit

    # --- one tick ----------------------------------------------------------------------------

    async def on_snapshot(self, snapshot: Snapshot) -> None:
        await self._restore()
        self._tick += 1
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
        work.extend((req, False) for req in self._due_held(seen))

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
                self._hold(decision)
            if result is not None and (not continuing or result.kind != "retry"):
                events.append((decision, result))
        if self.api is not None:
            await self._retry_events()
        if events and self.api is not None:
            await asyncio.gather(*(self._event(d, o) for d, o in events))
        await self._persist(force=self._dirty)
        refresh_due = self._last_refresh is None or now - self._last_refresh >= REFRESH_INTERVAL
        if self.api is not None and self._restored and refresh_due:
            self._last_refresh = now
            await self.gate.refresh()

    def _due_held(self, seen: set[str]) -> list[ActionRequest]:
        """Held steps to re-gate this tick (oldest first, bounded); forget those the rules no
        longer ask for, and those a new request or a running action replaced."""
        wants = getattr(self.engine, "wants", None)
        due: list[ActionRequest] = []
        for key, held in list(self.ledger.held.items()):
            if key in seen:  # asked again this tick (fresher request) or already running
                if key in self.ledger.pending:
                    del self.ledger.held[key]
                    self._changed()
                continue
            if callable(wants) and not wants(held.request):
                del self.ledger.held[key]
                self._held_dropped["resolved"] += 1
                self._changed()
                log.info("held_step_dropped", rule=held.request.rule,
                         action=held.request.action.type, target=held.request.target.key,
                         step=held.request.step, reason=held.reason,
                         why="the rule no longer asks for this step")
                continue
            if held.due <= self._tick and len(due) < HELD_RETRIES_PER_TICK:
                seen.add(key)
                due.append(held.request)
        return due

    def _hold(self, decision: Decision) -> None:
        """Hold a first-pass request denied for a reason that clears by itself; release it
        once it got any other decision (allowed, dry-run, a final denial)."""
        req = decision.request
        key = ledger_key(req)
        held = self.ledger.held.get(key)
        if decision.kind != "denied" or decision.reason not in HOLD_REASONS:
            if held is not None:
                del self.ledger.held[key]
                self._changed()
            return
        if held is None:
            if len(self.ledger.held) >= MAX_HELD:
                oldest = next(iter(self.ledger.held))
                del self.ledger.held[oldest]
                self._held_dropped["full"] += 1
                log.warning("held_step_dropped", key=oldest, why="too many held steps")
            held = self.ledger.held[key] = Held(req, decision.reason, decision.detail,
                                                self.monotonic(), 0)
            self._changed()
        elif held.reason != decision.reason:
            self._changed()
        held.request, held.reason, held.detail = req, decision.reason, decision.detail
        held.attempts += 1
        held.due = self._tick + min(2 ** min(held.attempts - 1, 8), HELD_RETRY_MAX_TICKS)

    def _stale(self, req: ActionRequest, snapshot: Snapshot) -> Decision | None:
        """missing_data when a collector behind this request's series failed this tick."""
        metrics: set[str] = set()
        for key in req.observed:
            metrics.update(_METRIC_RE.findall(key))
        rule_metrics = getattr(self.engine, "rule_metrics", None)
        if callable(rule_metrics):
            metrics.update(rule_metrics(req.rule))
        for metric in sorted(metrics):
            owner = snapshot.owners.get(metric)
            if owner is not None and not snapshot.has_data_for(metric):
                detail = f"collector {owner} failed this tick; {metric} has no fresh data"
                return self.gate.deny(req, "missing_data", detail)
        return None

    async def _execute(self, decision: Decision, continuing: bool) -> Outcome:
        req = decision.request
        key = ledger_key(req)
        act = registry.get(req.action.type)
        assert act is not None  # the gate denied unknown actions
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
        try:
            return await act.execute(decision, ctx)
        except KubeUnavailable as exc:
            # Resumable work waits for the API to come back; one-shot actions report failure.
            kind: OutcomeKind = (
                "retry" if continuing or req.action.type in ("drain", "evict-pod") else "failure"
            )
            return Outcome(decision, kind, f"API unreachable: {exc.reason}")
        except KubeError as exc:
            return Outcome(decision, "failure", str(exc))
        except Exception as exc:  # one broken action must never take the tick down
            log.exception("action_crashed", action=req.action.type, rule=req.rule)
            return Outcome(decision, "failure", f"{type(exc).__name__}: {exc}")

    def _record(self, decision: Decision, result: Outcome | None, continuing: bool) -> None:
        req = decision.request
        key = ledger_key(req)
        self.gate.count(decision, result)
        if continuing and decision.kind == "denied" and decision.reason not in WAIT_REASONS:
            # e.g. an admin uncordoned the node mid-drain: stop for good, do not retry forever.
            self.ledger.pending.pop(key, None)
            self._extra.pop(key, None)
            self.gate.drain_progress(req.target.node, 0, 0.0)
            self._changed()
        if result is not None:
            if not continuing:
                self.gate.record_execution(decision, result)
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
        fields: dict[str, Any] = {
            "rule": req.rule,
            "action": req.action.type,
            "params": dict(req.action.params),
            "target": req.target.key,
            "node": req.target.node,
            "step": req.step,
            "undo": req.undo,
            "severity": req.severity,
            "decision": decision.kind,
            "reason": decision.reason,
            "detail": decision.detail,
            "outcome": result.kind if result is not None else "none",
            "message": result.message if result is not None else "",
            "details": dict(result.details) if result is not None else {},
            "observed": dict(req.observed),
            "rule_reason": req.reason,
            "runbook": req.runbook,
            "continuing": continuing,
            "dry_run": decision.kind == "dry_run",
        }
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

    async def _event(self, decision: Decision, result: Outcome) -> None:
        req = decision.request
        if req.action.type == "event":
            return  # the action itself was the Event
        if req.target.kind == "pod":
            obj = InvolvedObject("Pod", req.target.name, req.target.namespace)
        else:
            obj = InvolvedObject("Node", req.target.node)
        type_ = "Warning" if result.kind == "failure" else "Normal"
        message = f"{req.action.type} {result.kind}: {result.message}. {describe(req)}"
        queued = _QueuedEvent(
            obj, f"Nodemedic{_camel(req.action.type)}", message, type_, req.action.type, 0, 0
        )
        await self._send_event(queued)

    async def _send_event(self, ev: _QueuedEvent) -> None:
        """Write one Event; on failure queue it for a later tick (backoff) or give it up."""
        try:
            await record_event(
                self.api,
                ev.obj,
                ev.reason,
                ev.message,
                type_=ev.type_,
                host=self.settings.node_name,
                action=ev.action,
            )
        except KubeError as exc:
            self._event_failures += 1
            ev.attempts += 1
            if ev.attempts >= EVENT_RETRY_ATTEMPTS:
                self._events_dropped["attempts"] += 1
                log.warning("action_event_given_up", reason=ev.reason, error=str(exc))
                return
            ev.due = self._tick + min(2 ** (ev.attempts - 1), EVENT_RETRY_MAX_TICKS)
            if len(self._event_queue) >= EVENT_RETRY_QUEUE:
                dropped = self._event_queue.popleft()
                self._events_dropped["queue_full"] += 1
                log.warning("action_event_dropped", reason=dropped.reason, queue="full")
            self._event_queue.append(ev)
            log.warning("action_event_failed", reason=ev.reason, retry_tick=ev.due,
                        error=str(exc))

    async def _retry_events(self) -> None:
        """Retry queued Events that are due (at most EVENT_RETRIES_PER_TICK, oldest first)."""
        due: list[_QueuedEvent] = []
        keep: deque[_QueuedEvent] = deque()
        for ev in self._event_queue:
            if ev.due <= self._tick and len(due) < EVENT_RETRIES_PER_TICK:
                due.append(ev)
            else:
                keep.append(ev)
        if not due:
            return
        self._event_queue = keep
        for ev in due:  # in order: an Event's count/lastTimestamp follow the order of retries
            await self._send_event(ev)

    async def _persist(self, *, force: bool) -> None:
        """Write ledger + engine state when something we did changed, or the engine's state
        changed and PERSIST_INTERVAL passed: first to local disk, then to the node annotation
        (once the API's state was restored); failures are retried next tick."""
        try:
            engine_state = self.engine.export_state()
        except Exception as exc:
            log.warning("engine_state_export_failed", error=str(exc))
            engine_state = None
        engine_json = json.dumps(engine_state, sort_keys=True, default=str)
        now = self.monotonic()

        def due(dirty: bool, written: str | None, last: float) -> bool:
            return dirty or (engine_json != written and now - last >= PERSIST_INTERVAL)

        api_due = self.api is not None and self._restored and now >= self._state_retry_at and due(
            force, self._persisted_engine, self._last_persist
        )
        local_due = self.local is not None and due(
            self._local_dirty, self._local_engine, self._last_local
        )
        if not (api_due or local_due):
            return
        offset = self._offset()
        text = self.ledger.to_json(now, engine_state, offset)
        if local_due:
            await self._persist_local(text, engine_json, now)
        if api_due:
            await self._persist_api(text, engine_json, now, now + offset)
            if self.local is not None and not self._dirty:
                # Record that the API has all of it, so that what an admin later removes from
                # the annotation is not brought back from here (merge_unsynced).
                await self._persist_local(text, engine_json, now)

    async def _persist_local(self, text: str, engine_json: str, now: float) -> None:
        assert self.local is not None
        try:
            await asyncio.to_thread(self.local.save, text, self._synced_at)
        except OSError as exc:
            self._local_writes["error"] += 1
            log.warning("local_state_write_failed", path=str(self.local.path), error=str(exc))
            return
        self._local_writes["ok"] += 1
        self._local_engine = engine_json
        self._last_local = now
        self._local_dirty = False
        if self.api is None:
            self._persisted_engine = engine_json

    async def _persist_api(self, text: str, engine_json: str, now: float, at: float) -> None:

        def mutate(node: dict[str, Any]) -> bool:
            ann = ensure_annotations(node)
            if ann.get(STATE_ANNOTATION) == text:
                return False
            ann[STATE_ANNOTATION] = text
            return True

        try:
            await update_node(self.api, self.settings.node_name, mutate)
        except KubeError as exc:
            self._writes["error"] += 1
            self._state_failures += 1
            delay = min(STATE_RETRY_MAX_SECONDS,
                        STATE_RETRY_BASE_SECONDS * 2.0 ** (self._state_failures - 1))
            self._state_retry_at = now + delay
            log.warning("state_write_failed", error=str(exc), retry_in=format_duration(delay))
            return
        self._state_failures = 0
        self._state_retry_at = 0.0
        self._writes["ok"] += 1
        self._persisted_engine = engine_json
        self._last_persist = now
        self._dirty = False
        self._synced_at = at
        if self.gate.pause is not None:
            self.gate.pause.invalidate()

    # --- exposing ----------------------------------------------------------------------------

    def families(self) -> list[Family]:
        writes = STATE_WRITES.family()
        for result, n in sorted(self._writes.items()):
            writes.add((result,), n)
        failures = EVENT_FAILURES.family()
        failures.add((), self._event_failures)
        dropped = EVENTS_DROPPED.family()
        for reason, n in sorted(self._events_dropped.items()):
            dropped.add((reason,), n)
        queued = EVENTS_QUEUED.family()
        queued.add((), len(self._event_queue))
        pending = PENDING.family()
        counts: dict[str, int] = {}
        for p in self.ledger.pending.values():
            counts[p.request.action.type] = counts.get(p.request.action.type, 0) + 1
        for action, n in sorted(counts.items()):
            pending.add((action,), n)
        held = HELD.family()
        by_reason: dict[tuple[str, str], int] = {}
        for h in self.ledger.held.values():
            k = (h.request.action.type, h.reason)
            by_reason[k] = by_reason.get(k, 0) + 1
        for labels, n in sorted(by_reason.items()):
            held.add(labels, n)
        held_dropped = HELD_DROPPED.family()
        for reason, n in sorted(self._held_dropped.items()):
            held_dropped.add((reason,), n)
        local_writes = LOCAL_WRITES.family()
        blind = LOCAL_BLIND.family()
        if self.local is not None:
            for result, n in sorted(self._local_writes.items()):
                local_writes.add((result,), n)
            blind.add((), float(self.ledger.unknown_since is not None))
        out = [*self.gate.families(), writes, failures, dropped, queued, pending, held,
               held_dropped, local_writes, blind]
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
        if isinstance(rules, list):  # say on the rule's own line that its step is held
            held: dict[tuple[str, str], list[str]] = {}
            for h in self.ledger.held.values():
                held.setdefault((h.request.rule, h.request.target.key), []).append(
                    f"{h.request.action.type} (step {h.request.step}"
                    f"{', undo' if h.request.undo else ''}): {h.reason}")
            for entry in rules:
                if isinstance(entry, dict) and (entry.get("rule"), entry.get("target")) in held:
                    entry["held"] = held[(entry["rule"], entry["target"])]
        return {
            "remediation": {
                "dry_run": self.settings.dry_run,
                "rules_dir": str(self.settings.rules_dir),
                "rules_loaded": (
                    sum(1 for r in self.reloader.current.rules if r.rule.enabled)
                    if self.reloader is not None else None
                ),
                "gate": self.gate.status(),
                "state_restored": self._restored,
                "state_problems": self._restore_problems,
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
                "held": [
                    {
                        "rule": h.request.rule,
                        "action": h.request.action.type,
                        "target": h.request.target.key,
                        "step": h.request.step,
                        "undo": h.request.undo,
                        "reason": h.reason,
                        "detail": h.detail,
                        "since": h.since + self._offset(),
                        "attempts": h.attempts,
                        "next_retry_in_ticks": max(0, h.due - self._tick),
                    }
                    for h in self.ledger.held.values()
                ],
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

    return (*METRICS, STATE_WRITES, EVENT_FAILURES, EVENTS_DROPPED, EVENTS_QUEUED, PENDING, HELD,
            HELD_DROPPED, LOCAL_WRITES, LOCAL_BLIND)
