"""The leader's actions on a failed peer node, each through the safety gate and the action modules.

Called by agent.peers.stage. The actions in agent.actions act on "this node", so the leader gives
each target node its own :class:`SafetyGate` built with the settings of that node
(``node_name=<target>``) and a pause switch reading that node's annotation plus the cluster
ConfigMap: pause, the cluster freeze, dry-run, the cluster cordon budget, hourly caps and admin
overrides apply to the leader's actions exactly as to a node's own. The alert gate and the
maintenance windows do not (``rule_gates=False``): they are policies for rules, and a failed
node's own alerts fire by definition. Steps (all idempotent, resumable by a new leader):
- ``cordon`` + ``taint nodemedic.io/node-failed:NoSchedule`` (rule ``failed-node``);
- ``drain`` passes (Eviction API, PDB-aware) until no evictable pod is left un-evicted;
- ``fence``: ``node.kubernetes.io/out-of-service=nodeshutdown:NoExecute``; the taint action
  refuses NoExecute and foreign keys by design, so this one step is applied here, after the same
  pause/dry-run checks, and only once agent.peers.fencing says the node is fenced;
- ``recover``: untaint, remove out-of-service, uncordon (only nodemedic's own cordon).
An admin who reverses the isolation while the ladder runs (uncordons the node, or removes the
``nodemedic.io/node-failed`` taint) stops it: ``admin_reversal`` says so from the node as it is,
every step re-checks it (fence in the same write as the taint), and ``stop`` records the episode
as stopped (annotation ``stopped``, Event ``NodemedicFailoverStopped``): no more evictions, no
out-of-service taint, no new leader resuming it. Recovery still runs once the node is healthy.
Progress lives in the node annotation ``nodemedic.io/failover`` (JSON) so a new leader resumes:
its ``phase`` only moves forward (cordoned -> evicted -> fenced) and ``since`` (the episode's start)
is written once. The out-of-service taint and ``phase: fenced`` are one write, so a leader killed
in between cannot lose whether the taint is nodemedic's. Each Event is written once per episode: a
resuming leader first looks for the Event of that reason stamped since the episode began.
"""

from __future__ import annotations

import json
import math
import time
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import structlog

from agent.actions import executor
from agent.actions.base import ActionContext
from agent.actions.drain import classify
from agent.kube.errors import KubeError
from agent.kube.events import InvolvedObject, last_recorded, record_event
from agent.kube.nodes import ensure_annotations, update_node
from agent.kube.pods import list_node_pods
from agent.peers.fencing import FAILED_TAINT, OUT_OF_SERVICE, same_taint
from agent.safety.gate import SafetyGate
from agent.safety.pause import PauseSwitch
from agent.safety.windows import parse_freeze
from agent.settings import Settings
from agent.structs.actionparams import MAX_DRAIN_GRACE_SECONDS
from agent.structs.remediation import ActionRequest, ActionSpec, Decision, Outcome, Target

log = structlog.get_logger("nodemedic.failover")

RULE = "failed-node"
STATE_ANNOTATION = "nodemedic.io/failover"
STOPPED_EVENT = "NodemedicFailoverStopped"
RUNBOOK = ""  # no runbook for failed-node actions yet (see the failover README section)
# The failover actions, validated by the same models as a rule's (a bad one fails at import).
CORDON = ActionSpec.of("cordon")
TAINT = ActionSpec.of("taint", {"key": FAILED_TAINT["key"], "effect": FAILED_TAINT["effect"]})
UNTAINT = ActionSpec.of("untaint", {"key": FAILED_TAINT["key"]})
UNCORDON = ActionSpec.of("uncordon")
DRAIN_TIMEOUT = "1h"


def drain_spec(settings: Settings) -> ActionSpec:
    """The failover drain: 1h, each pod's grace period capped by ``--safety.drain-grace-cap``
    (and, as for any drain, by the model's 1h)."""
    return ActionSpec.of("drain", {
        "timeout": DRAIN_TIMEOUT,
        "grace_period_cap": min(settings.safety_drain_grace_cap, MAX_DRAIN_GRACE_SECONDS),
    })


def fenced_message(node: str, why: str) -> str:
    return (f"node {node} is fenced ({why}); added taint "
            "node.kubernetes.io/out-of-service=nodeshutdown:NoExecute so its "
            "stateful pods are force-deleted and their volumes detached")


def admin_reversal(unschedulable: bool, taints: Iterable[tuple[str, str]]) -> str | None:
    """Why a node nodemedic isolated is no longer isolated (an admin undid it), or None."""
    if not unschedulable:
        return "an admin uncordoned the node"
    if (FAILED_TAINT["key"], FAILED_TAINT["effect"]) not in set(taints):
        return f"an admin removed the taint {FAILED_TAINT['key']}:{FAILED_TAINT['effect']}"
    return None


def isolated(state: Mapping[str, Any]) -> bool:
    """The episode cordoned and tainted the node and has not fenced it yet."""
    return state.get("phase") in ("cordoned", "evicted") and not state.get("stopped")


def read_state(raw: str | None) -> dict[str, Any]:
    """The failover annotation; garbage reads as 'nothing done' (the steps are idempotent)."""
    if not raw:
        return {}
    try:
        data = json.loads(raw)
    except ValueError:
        return {}
    return data if isinstance(data, dict) else {}


@dataclass
class TargetState:
    """Per-target gate and drain memory (lost with leadership: harmless, the API has the rest)."""

    gate: SafetyGate
    settings: Settings
    extra: dict[str, Any] = field(default_factory=dict)
    drain_started: float | None = None
    drain_passes: int = 0


class Remedy:
    """Executes the failover steps for target nodes on behalf of the leader ``me``."""

    def __init__(
        self, settings: Settings, api: Any, me: str, *, wall: Callable[[], float] = time.time,
    ) -> None:
        self.settings = settings
        self.api = api
        self.me = me
        self.wall = wall
        self.targets: dict[str, TargetState] = {}
        self.actions: Counter[tuple[str, str, str]] = Counter()  # (action, decision, outcome)
        self.event_failures = 0
        self.states: dict[str, dict[str, Any]] = {}  # node -> its annotation as last read/written
        self.reversed: dict[str, str] = {}  # node -> how an admin undid its isolation, as seen
        self._last_said: dict[tuple[str, str], str] = {}

    def target(self, node: str) -> TargetState:
        ts = self.targets.get(node)
        if ts is None:
            s = self.settings.model_copy(update={"node_name": node})
            pause = PauseSwitch(self.api, node, s.safety_pause_configmap, ttl=0.5)
            gate = SafetyGate(s, self.api, clock=self.wall, pause=pause, rule_gates=False)
            ts = TargetState(gate, s)
            self.targets[node] = ts
        return ts

    def forget(self, node: str) -> None:
        self.targets.pop(node, None)
        self.states.pop(node, None)
        self.reversed.pop(node, None)
        for key in [k for k in self._last_said if k[0] == node]:
            del self._last_said[key]

    # ---- recording -----------------------------------------------------------------------
    async def event(self, node: str, reason: str, message: str, type_: str = "Normal") -> None:
        try:
            await record_event(self.api, InvolvedObject("Node", node), reason, message,
                               type_=type_, host=self.me, action=reason)
        except KubeError as exc:
            self.event_failures += 1
            log.warning("failover_event_failed", node=node, reason=reason, error=str(exc))

    async def event_once(
        self, node: str, reason: str, message: str, type_: str = "Normal", since: Any = None,
    ) -> None:
        """Record the Event unless this episode (from ``since``, default: the annotation's) already
        has it: a leader killed right after writing it must not make its successor repeat it."""
        if since is None:
            since = self.states.get(node, {}).get("since")
        if isinstance(since, (int, float)) and await self._recorded_since(
                node, reason, type_, float(since)):
            return
        await self.event(node, reason, message, type_)

    async def _recorded_since(self, node: str, reason: str, type_: str, since: float) -> bool:
        try:
            last = await last_recorded(self.api, InvolvedObject("Node", node), reason, type_)
        except KubeError as exc:  # unknown: write it (a repeat beats a lost record)
            log.warning("failover_event_read_failed", node=node, reason=reason, error=str(exc))
            return False
        return last is not None and last >= math.floor(since)  # Event times have whole seconds

    async def set_state(
        self, node: str, *, defaults: Mapping[str, Any] | None = None, **changes: Any
    ) -> None:
        """Merge ``changes`` into the failover annotation, and ``defaults`` where a key is absent
        (``clear=True`` deletes the whole annotation). Written only when something other than
        the ``leader`` stamp changes; the result is kept in ``states``."""

        def mutate(obj: dict[str, Any]) -> bool:
            ann = ensure_annotations(obj)
            if changes.get("clear"):
                self.states.pop(node, None)
                if STATE_ANNOTATION not in ann:
                    return False
                del ann[STATE_ANNOTATION]
                return True
            state = read_state(ann.get(STATE_ANNOTATION))
            new = {**(defaults or {}), **state, **changes}
            self.states[node] = new
            if new == state:
                return False
            new["leader"] = self.me
            ann[STATE_ANNOTATION] = json.dumps(new, separators=(",", ":"), sort_keys=True)
            return True

        await update_node(self.api, node, mutate)

    # ---- gated actions ---------------------------------------------------------------------
    def _request(
        self, node: str, spec: ActionSpec, reason: str, undo: bool = False
    ) -> ActionRequest:
        return ActionRequest(
            rule=RULE, action=spec, target=Target("node", node), severity="critical",
            undo=undo, reason=reason, runbook=RUNBOOK,
        )

    async def run(
        self, node: str, spec: ActionSpec, reason: str, *, undo: bool = False,
        continuing: bool = False,
    ) -> tuple[Decision, Outcome | None]:
        """Gate and (if allowed) execute one action on ``node`` through agent.actions.executor
        (the rule actions' executor and error policy); never raises: whatever the action raises
        is a failure, logged and counted, and explained by a Warning Event on the node."""
        ts = self.target(node)
        req = self._request(node, spec, reason, undo)
        decision = await ts.gate.decide(req, continuing=continuing)
        outcome: Outcome | None = None
        if decision.kind == "allowed":
            ctx = ActionContext(
                api=self.api, node_name=node, settings=ts.settings, now=self.wall,
                progress=ts.gate.drain_progress, started_at=ts.drain_started, extra=ts.extra,
            )
            outcome = await executor.run(decision, ctx, continuing=continuing)
        executor.record(ts.gate, decision, outcome, continuing)
        overridden = decision.reason == "admin_override" or (
            outcome is not None and outcome.details.get("reason") == "admin_override"
        )
        if overridden and not undo:  # the gate or the action found our cordon undone by hand
            self.reversed[node] = admin_reversal(False, ()) or ""
        self.actions[(spec.type, decision.kind, outcome.kind if outcome else "none")] += 1
        # Repeated identical passes (a drain waiting on a PDB) log at debug, changes at info, and
        # a failure (its message says why) at warning.
        said = f"{decision.kind}/{decision.reason}/{outcome.message if outcome else ''}"
        failed = outcome is not None and outcome.kind == "failure"
        emit = (log.debug if self._last_said.get((node, spec.type)) == said
                else log.warning if failed else log.info)
        self._last_said[(node, spec.type)] = said
        emit("failover_action", **executor.fields(decision, outcome, continuing))
        if failed and outcome is not None:
            await self.event(node, *executor.event_text(decision, outcome))
        return decision, outcome

    async def isolate(self, node: str, reason: str) -> bool:
        """Cordon + NoSchedule taint. True when both are in place (or dry-run said they would)."""
        d1, o1 = await self.run(node, CORDON, reason)
        d2, o2 = await self.run(node, TAINT, reason)
        ok = all(
            d.kind == "dry_run" or (o is not None and o.kind in ("success", "noop"))
            for d, o in ((d1, o1), (d2, o2))
        )
        if ok and d1.kind == "allowed":  # a resumed episode keeps its phase and start
            await self.set_state(node, defaults={"phase": "cordoned",
                                                 "since": round(self.wall(), 3)})
        return ok

    async def evict_pass(self, node: str, reason: str) -> tuple[bool, int]:
        """One drain pass; (every evictable pod has been asked to leave, pods not yet asked)."""
        ts = self.target(node)
        if ts.drain_started is None:
            ts.drain_started = self.wall()
        decision, outcome = await self.run(
            node, drain_spec(ts.settings), reason, continuing=ts.drain_passes > 0,
        )
        ts.drain_passes += 1
        if decision.kind == "dry_run":
            return True, 0
        if decision.kind != "allowed" or outcome is None:
            return False, -1
        try:
            pods = await list_node_pods(self.api, node)
        except KubeError:
            return False, -1
        left = sum(1 for p in pods if classify(p, False) == "evict")
        return left == 0, left

    async def fence(self, node: str, why: str) -> bool:
        """Apply out-of-service after the gate's pause, freeze and dry-run checks; True when
        applied."""
        ts = self.target(node)
        view = await ts.gate.pause.view() if ts.gate.pause is not None else None
        if (view is None or not view.ok or view.node_paused or view.cluster_paused
                or parse_freeze(view.freeze, self.wall()) is not None):
            self.actions[("out-of-service", "denied", "none")] += 1
            return False
        if self.settings.dry_run:
            self.actions[("out-of-service", "dry_run", "none")] += 1
            return False

        def mutate(obj: dict[str, Any]) -> bool:
            # Taint and state in one write: the taint is recorded as ours only if we added it
            # (an admin's stays on at recovery), and no crash can separate the two.
            spec = obj.setdefault("spec", {})
            taints = [t for t in spec.get("taints") or [] if isinstance(t, dict)]
            ann = ensure_annotations(obj)
            state = read_state(ann.get(STATE_ANNOTATION))
            self.states[node] = state
            if state.get("phase") == "fenced":
                return False
            why = admin_reversal(bool(spec.get("unschedulable")),
                                 [(str(t.get("key")), str(t.get("effect"))) for t in taints])
            if state.get("stopped") or (why is not None and isolated(state)):
                # Checked in the very write that would add the taint: an admin's uncordon a
                # moment ago still stops it.
                self.reversed[node] = str(state.get("stopped") or why)
                return False
            added = not any(same_taint(t, OUT_OF_SERVICE) for t in taints)
            if added:
                spec["taints"] = [*taints, dict(OUT_OF_SERVICE)]
            new = {**state, "phase": "fenced", "fenced_at": round(self.wall(), 3),
                   **({"oos": True} if added else {})}
            self.states[node] = new
            ann[STATE_ANNOTATION] = json.dumps({**new, "leader": self.me},
                                               separators=(",", ":"), sort_keys=True)
            return True

        try:
            _, changed = await update_node(self.api, node, mutate)
        except KubeError as exc:
            self.actions[("out-of-service", "allowed", "failure")] += 1
            log.warning("fence_failed", node=node, error=str(exc))
            return False
        if not changed and self.states.get(node, {}).get("phase") != "fenced":
            self.actions[("out-of-service", "denied", "none")] += 1  # an admin reversed it
            return False
        self.actions[("out-of-service", "allowed", "success")] += 1
        if changed:
            await self.event(node, "NodemedicNodeFenced", fenced_message(node, why), "Warning")
        else:  # an earlier leader fenced it and may have died before its Event
            await self.event_once(node, "NodemedicNodeFenced", fenced_message(node, why),
                                  "Warning")
        return True

    async def stop(self, node: str, why: str, healthy_delay: float) -> None:
        """End the episode for good because an admin undid the isolation (see module docstring)."""
        log.warning("failover_stopped_by_admin", node=node, why=why)
        await self.set_state(node, stopped=why, stopped_at=round(self.wall(), 3))
        await self.event_once(
            node, STOPPED_EVENT,
            f"{why} while nodemedic was failing it over: failover of {node} stopped (no more "
            "evictions, no out-of-service taint). nodemedic's taint "
            f"{FAILED_TAINT['key']}:{FAILED_TAINT['effect']}, if still there, is removed once the "
            f"node has been healthy for {healthy_delay:g}s", "Warning")

    async def recover(self, node: str, state: dict[str, Any], healthy_for: float) -> bool:
        """Undo what nodemedic did; True when done (the annotation is then removed)."""
        reason = f"node healthy for {healthy_for:.0f}s"
        ok = True
        if state.get("oos"):

            def remove_oos(obj: dict[str, Any]) -> bool:
                # One write: the taint goes and the state says so (gone by our hand, not an
                # admin's), so the leader never reads our own removal as an admin's.
                spec = obj.setdefault("spec", {})
                taints = [t for t in spec.get("taints") or [] if isinstance(t, dict)]
                ann = ensure_annotations(obj)
                current = read_state(ann.get(STATE_ANNOTATION))
                if not current.get("oos"):
                    return False
                spec["taints"] = [t for t in taints if not same_taint(t, OUT_OF_SERVICE)]
                ann[STATE_ANNOTATION] = json.dumps({**current, "oos": False, "leader": self.me},
                                                   separators=(",", ":"), sort_keys=True)
                return True

            try:
                await update_node(self.api, node, remove_oos)
            except KubeError as exc:
                ok = False
                log.warning("out_of_service_removal_failed", node=node, error=str(exc))
        for spec in (UNTAINT, UNCORDON):
            d, o = await self.run(node, spec, reason, undo=True)
            # "skipped": the cordon was an admin's by now; our claim is released, nothing to undo.
            ok = ok and d.kind == "allowed" and o is not None and o.kind in (
                "success", "noop", "skipped")
        if ok:
            await self.set_state(node, clear=True)
            await self.event(node, "NodemedicNodeRecovered",
                             f"node {node} recovered ({reason}); removed nodemedic's taints"
                             " and its cordon (an admin's cordon stays)")
            self.forget(node)
        return ok
