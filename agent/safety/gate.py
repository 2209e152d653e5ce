"""The safety gate: the only path from an ActionRequest to execution.

Called by agent.runtime.remediation for every request (and again for every further pass of an
unfinished drain). Checks, in order, each denial carrying a stable reason word:
unknown_action, invalid_params (the action's pure plan() refused it), missing_data (no API
configured for an API action, or the API unreachable: we cannot know whether we are paused),
paused (node annotation or cluster ConfigMap), freeze (the ConfigMap's ``freeze`` key holds
disruptive and gated actions; agent.safety.windows), admin_override (an admin uncordoned what this
rule cordoned), cooldown, ledger_full (executions of the last hour were dropped, so the hourly
caps of a capped or disruptive request cannot be checked: fail safe), rule_hourly_cap,
global_hourly_cap (disruptive actions only), workload_not_node (agent.safety.attribution: pods
of the same owner show the rule's problem on other nodes too; final), cordon_lock (another node
holds the cluster-wide cordon Lease: it is between its own count and its cordon; retried next
tick), cluster_cap
(unschedulable nodes counted on the API right before a cordon or drain); then global or per-rule
dry-run gives ``dry_run`` and anything left is ``allowed``.

The cordon Lease (``--safety.cordon-lock``) closes the race between agents: without it two nodes
counting in the same second both saw room for one more and the cap was overshot. The gate takes
it before counting and the stage calls :meth:`SafetyGate.settle` once the tick's actions ran,
which frees it; an agent that dies in between holds it for CORDON_LOCK_SECONDS at most.

Undo requests and further passes of an action already running skip the cooldown and caps
(finishing or reversing is safe) but never the pause or missing-data checks. A rule's own
``gates:`` (windows, alerts, gated actions) come from the rules now loaded (``rules``, a
lookup the stage passes), so a reload applies them to held steps too.

A denial for a reason in HOLD_REASONS clears by itself (the API comes back, an admin unpauses, a
cooldown or an hour passes, a cordoned node is uncordoned, the lock is freed, a freeze ends, a
window opens, the alerts resolve): the stage keeps
such a step *held* and asks again on later ticks, with backoff, while its rule still asks for it.
The others (unknown_action, invalid_params, admin_override) are final.
Exposes its counters via ``families()``.

Cooldowns and hourly caps are measured with ``monotonic`` (time.monotonic), so a wall-clock step
(NTP) neither ends nor stretches them; the ledger holds monotonic times and the stage converts
them to wall time only for the persisted node annotation.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable
from typing import Any

import structlog

from agent.actions import registry
from agent.actions.base import Action, InvalidParams, Plan
from agent.actions.cordon import admin_override_rules
from agent.kube import leases
from agent.kube.errors import KubeError
from agent.kube.nodes import count_nodes, is_unschedulable
from agent.safety import alertgate, windows
from agent.safety.alertgate import AlertGate
from agent.safety.attribution import Attribution
from agent.safety.budget import cordon_allowed, cordon_limit
from agent.safety.ledger import Ledger
from agent.safety.pause import PauseSwitch
from agent.settings import Settings
from agent.structs.durations import format_duration
from agent.structs.gatespec import Window, parse_selector
from agent.structs.metrics import Family, MetricSpec
from agent.structs.remediation import ActionRequest, Decision, DecisionKind, Outcome

log = structlog.get_logger("nodemedic.safety")

# Long enough for count -> decide -> cordon on a slow API, short enough that an agent dying in
# between stalls other nodes' cordons for seconds, not minutes. A count slower than half of it
# (its LISTs may take up to 30 s each) leaves too little for the cordon, so it is not trusted.
CORDON_LOCK_SECONDS = 15
# Denial reasons that clear by themselves: the step is held and re-gated later (see above).
HOLD_REASONS = frozenset({
    "missing_data", "paused", "cooldown", "ledger_full", "rule_hourly_cap", "global_hourly_cap",
    "cluster_cap", "cordon_lock", "freeze", "window", "alert_gate",
})

ACTIONS_TOTAL = MetricSpec(
    "nodemedic_actions_total",
    "Remediation requests by action, rule, gate decision and execution outcome (none if not run).",
    "counter",
    ("action", "rule", "decision", "outcome"),
)
ACTIONS_DENIED = MetricSpec(
    "nodemedic_actions_denied_total",
    "Requests the safety gate denied, by action, rule and reason.",
    "counter",
    ("action", "rule", "reason"),
)
PAUSED = MetricSpec(
    "nodemedic_paused",
    "1 when remediation is paused at this scope (node or cluster).",
    "gauge",
    ("scope",),
)
CORDONED = MetricSpec(
    "nodemedic_cordoned_nodes",
    "Unschedulable nodes in the cluster at the last cordon budget check.",
    "gauge",
)
CORDON_LIMIT = MetricSpec(
    "nodemedic_cordon_budget_limit",
    "Maximum unschedulable nodes --safety.max-cordoned allows at the last check.",
    "gauge",
)
HOURLY_USED = MetricSpec(
    "nodemedic_disruptive_actions_last_hour",
    "Disruptive actions executed in the last hour (against --safety.max-actions-per-hour).",
    "gauge",
)
DRAIN_REMAINING = MetricSpec(
    "nodemedic_drain_pods_remaining",
    "Pods still to leave the node being drained.",
    "gauge",
    ("node",),
)
DRAIN_STARTED = MetricSpec(
    "nodemedic_drain_started_timestamp_seconds",
    "When the drain in progress started (Unix seconds).",
    "gauge",
    ("node",),
)
LEDGER_DROPPED = MetricSpec(
    "nodemedic_safety_ledger_dropped_total",
    "Safety ledger entries dropped: kind=cooldown (a cooldown forgotten past the key bound), "
    "history (an execution of the last hour dropped past the bound; hourly caps then deny), "
    "state (cut from the state annotation to fit its size, or unreadable at restore).",
    "counter",
    ("kind",),
)
METRICS = (
    ACTIONS_TOTAL,
    ACTIONS_DENIED,
    PAUSED,
    CORDONED,
    CORDON_LIMIT,
    HOURLY_USED,
    DRAIN_REMAINING,
    DRAIN_STARTED,
    LEDGER_DROPPED,
    *alertgate.METRICS,
    *windows.METRICS,
)


class SafetyGate:
    """Decides on requests and records executions; all state is in ``ledger`` (persisted)."""

    def __init__(
        self,
        settings: Settings,
        api: Any,
        *,
        clock: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
        pause: PauseSwitch | None = None,
        rules: Callable[[str], Any] | None = None,
        rule_gates: bool = True,
    ) -> None:
        self.settings = settings
        self.api = api
        self.clock = clock
        self.monotonic = monotonic
        self.ledger = Ledger()
        self.pause = pause or (
            PauseSwitch(api, settings.node_name, settings.safety_pause_configmap, clock=clock)
            if api is not None
            else None
        )
        self._actions: Counter[tuple[str, str, str, str]] = Counter()
        self._denied: Counter[tuple[str, str, str]] = Counter()
        self._cordoned: int | None = None
        self._limit: int | None = None
        self._drain: dict[str, tuple[int, float]] = {}
        self._lock_held = False
        self.attribution = Attribution(lambda: self.settings, api, clock=clock)
        self.rules = rules  # rule name -> the loaded Rule (for its gates), or None
        self.rule_gates = rule_gates  # False: no windows and alert gate (failover), freeze only
        self.alerts = AlertGate(settings, monotonic=monotonic)
        self.windows = windows.WindowState()

    def prepare_reload(self, settings: Settings) -> Callable[[], None]:
        """Build what new ``settings`` need (a pause switch for a new ConfigMap) without
        touching the running gate; the returned commit applies them and cannot fail."""
        pause = self.pause
        if (self.api is not None and pause is not None
                and settings.safety_pause_configmap != self.settings.safety_pause_configmap):
            pause = PauseSwitch(self.api, settings.node_name, settings.safety_pause_configmap,
                                clock=self.clock)

        def commit() -> None:
            self.settings = settings
            self.pause = pause
            self.alerts.reconfigure(settings)

        return commit

    # --- deciding ----------------------------------------------------------------------------

    def plan(self, req: ActionRequest, act: Action | None) -> Plan | Decision:
        """``act``'s plan for ``req``, or a denial when there is no such action (``act`` None)
        or the action refuses the request (its target, or settings such as an allow-list)."""
        if act is None:
            return self.deny(req, "unknown_action", f"no action named {req.action.type!r}")
        try:
            return act.plan(req, self.settings)
        except InvalidParams as exc:
            return self.deny(req, "invalid_params", str(exc))

    async def decide(self, req: ActionRequest, *, continuing: bool = False) -> Decision:
        """Run every check; never raises (API trouble becomes missing_data). The action is
        looked up here, once, and travels on the decision (``Decision.action``) to the
        executor and to :meth:`record_execution`."""
        act = registry.get(req.action.type)
        planned = self.plan(req, act)
        if isinstance(planned, Decision):
            return planned
        assert act is not None
        now = self.monotonic()
        node: dict[str, Any] = {}
        freeze: windows.Freeze | None = None
        if self.api is None:
            if act.needs_api:
                return self.deny(req, "missing_data", "no Kubernetes API is configured")
        else:
            assert self.pause is not None
            view = await self.pause.view()
            if not view.ok:
                return self.deny(req, "missing_data", f"cannot read the pause switch: {view.error}")
            if view.cluster_paused:
                return self.deny(
                    req, "paused", f"paused cluster-wide by {self.settings.safety_pause_configmap}"
                )
            if view.node_paused:
                return self.deny(req, "paused", "paused by node annotation nodemedic.io/paused")
            node = view.node
            freeze = windows.parse_freeze(view.freeze, self.clock())
            self.windows.saw_freeze(view.freeze, self.clock())
        if act.cordons and req.rule in admin_override_rules(node):
            return self.deny(
                req,
                "admin_override",
                f"an admin uncordoned this node after rule {req.rule} cordoned it",
            )
        gates = getattr(self.rules(req.rule), "gates", None) if self.rules else None
        held = None if req.undo else self._held(req, act.disruptive, freeze, gates)
        if held is not None:
            return held
        if not (continuing or req.undo):
            denied = self._budgets(req, act.disruptive, now)
            if denied is not None:
                return denied
            blamed = await self.attribution.check(req, act.disruptive)
            if blamed is not None:
                return self.deny(req, *blamed)
            if act.cordons and self.api is not None and not is_unschedulable(node):
                denied = await self._cluster_cap(req)
                if denied is not None:
                    return denied
        if self.settings.dry_run or req.dry_run:
            scope = "--dry-run" if self.settings.dry_run else f"rule {req.rule} dry_run"
            return self._decision(req, "dry_run", "dry_run", f"{scope}: would {planned.summary}",
                                  act)
        return self._decision(req, "allowed", "ok", planned.summary, act)

    def _held(self, req: ActionRequest, disruptive: bool, freeze: windows.Freeze | None,
              gates: Any) -> Decision | None:
        """freeze, window or alert_gate, for gated actions (see the module docstring)."""
        kind, s = req.action.type, self.settings
        if freeze is not None and (disruptive or kind in s.safety_gated_actions):
            return self.deny(req, "freeze", freeze.describe(s.safety_pause_configmap))
        own = getattr(gates, "actions", None)
        if not self.rule_gates or kind not in (s.safety_gated_actions if own is None else own):
            return None
        allow = [windows.windows_of(s.safety_allow_windows),
                 windows.windows_of(getattr(gates, "allow_windows", ()))]
        deny = [*windows.windows_of(s.safety_deny_windows),
                *windows.windows_of(getattr(gates, "deny_windows", ()))]
        closed = windows.window_denial(allow, deny, self.clock())
        if closed is not None:
            return self.deny(req, "window", closed)
        names = (*s.safety_alert_gate_alerts, *getattr(gates, "alerts", ()))
        alerting = self.alerts.check([parse_selector(n) for n in names])
        if alerting is not None:
            return self.deny(req, "alert_gate", alerting)
        return None

    def _budgets(self, req: ActionRequest, disruptive: bool, now: float) -> Decision | None:
        last = self.ledger.last_run(req)
        if last is not None and req.cooldown_seconds > 0 and now - last[0] < req.cooldown_seconds:
            left = req.cooldown_seconds - (now - last[0])
            return self.deny(
                req, "cooldown", f"ran {last[1]}x; cooldown {format_duration(left)} left"
            )
        capped = req.max_per_hour > 0 or disruptive
        if capped and self.ledger.history_incomplete(now):
            return self.deny(
                req,
                "ledger_full",
                "executions of the last hour were dropped from the ledger; hourly caps "
                "cannot be checked",
            )
        if req.max_per_hour > 0 and self.ledger.count_rule(req.rule, now) >= req.max_per_hour:
            return self.deny(
                req, "rule_hourly_cap", f"rule {req.rule} used its {req.max_per_hour} actions/hour"
            )
        cap = self.settings.safety_max_actions_per_hour
        if disruptive and self.ledger.count_disruptive(now) >= cap:
            return self.deny(
                req, "global_hourly_cap", f"{cap} disruptive actions/hour already used on this node"
            )
        return None

    async def _cluster_cap(self, req: ActionRequest) -> Decision | None:
        """Under the cordon Lease, count unschedulable nodes on the API now (never from a cache)."""
        ns, name = self.settings.safety_cordon_lock.split("/", 1)
        me = self.settings.node_name
        started = self.monotonic()
        try:
            lock = await leases.try_acquire(
                self.api, ns, name, me, duration=CORDON_LOCK_SECONDS, now=self.clock()
            )
        except KubeError as exc:
            return self.deny(req, "missing_data", f"cannot take the cordon lock {ns}/{name}: {exc}")
        if not lock.held:
            who = f"node {lock.holder}" if lock.holder else "another node"
            return self.deny(
                req, "cordon_lock", f"{who} holds {ns}/{name} while it cordons; retrying next tick"
            )
        self._lock_held = True
        try:
            total, cordoned = await count_nodes(self.api)
        except KubeError as exc:
            return self.deny(req, "missing_data", f"cannot count cordoned nodes: {exc}")
        took = self.monotonic() - started
        if took > CORDON_LOCK_SECONDS / 2:
            return self.deny(
                req, "cordon_lock",
                f"counting nodes under {ns}/{name} took {took:.1f}s, too close to the lock's "
                f"{CORDON_LOCK_SECONDS}s to cordon safely; retrying next tick",
            )
        others = sum(1 for node in cordoned if node != me)
        ok, limit = cordon_allowed(self.settings.safety_max_cordoned, total, others)
        self._cordoned, self._limit = others, limit
        if not ok:
            return self.deny(
                req,
                "cluster_cap",
                f"{others} of {total} nodes are already unschedulable; "
                f"--safety.max-cordoned={self.settings.safety_max_cordoned} allows {limit}",
            )
        return None

    async def settle(self) -> None:
        """Free the cordon Lease once this tick's actions ran (our cordon, if any, is on the API
        now, so the next agent's count includes it). A failed release just lets it expire."""
        if not self._lock_held:
            return
        self._lock_held = False
        ns, name = self.settings.safety_cordon_lock.split("/", 1)
        try:
            await leases.release(self.api, ns, name, self.settings.node_name)
        except KubeError as exc:
            log.warning("cordon_lock_release_failed", lock=f"{ns}/{name}", error=str(exc))

    async def refresh(self) -> None:
        """Re-read the pause switches and the cordon budget for the gauges, so dashboards show
        them even while nothing fires (the stage calls this about once a minute)."""
        if self.pause is None:
            return
        self.pause.invalidate()
        view = await self.pause.view()
        if view.ok:
            self.windows.saw_freeze(view.freeze, self.clock())
        try:
            total, cordoned = await count_nodes(self.api)
        except KubeError:
            return  # the view records the outage; the gauges keep their last values
        self._cordoned = len(cordoned)
        self._limit = cordon_limit(self.settings.safety_max_cordoned, total)

    def deny(self, req: ActionRequest, reason: str, detail: str) -> Decision:
        """A denial, counted (also used by the stage for stale-snapshot refusals)."""
        self._denied[(req.action.type, req.rule, reason)] += 1
        return self._decision(req, "denied", reason, detail)

    @staticmethod
    def _decision(req: ActionRequest, kind: DecisionKind, reason: str, detail: str,
                  act: Action | None = None) -> Decision:
        return Decision(request=req, kind=kind, reason=reason, detail=detail, action=act)

    # --- recording ---------------------------------------------------------------------------

    def count(self, decision: Decision, outcome: Outcome | None) -> None:
        """Count one decision (and its outcome when it ran) in nodemedic_actions_total."""
        req = decision.request
        self._actions[
            (req.action.type, req.rule, decision.kind, outcome.kind if outcome else "none")
        ] += 1

    def record_execution(self, decision: Decision, outcome: Outcome) -> None:
        """Remember an executed request for cooldowns and caps (first pass only)."""
        act = decision.action if isinstance(decision.action, Action) else None
        # A decision without its action was not made by a gate: count it against the caps.
        self.ledger.record(decision.request, self.monotonic(), act is None or act.disruptive)
        cordoned_now = outcome.kind in ("success", "retry") and outcome.details.get("cordon") in (
            None,
            "cordoned",
        )
        if act is not None and act.cordons and self._cordoned is not None and cordoned_now:
            self._cordoned += 1  # this node joined; the next budget check recounts anyway
        if self.pause is not None:
            self.pause.invalidate()  # we may have changed our node; re-read before deciding

    def drain_progress(self, node: str, remaining: int, started: float) -> None:
        """Callback for agent.actions.drain: started=0 means the drain ended."""
        if started:
            self._drain[node] = (remaining, started)
        else:
            self._drain.pop(node, None)

    # --- exposing ----------------------------------------------------------------------------

    def families(self) -> list[Family]:
        actions = ACTIONS_TOTAL.family()
        for labels, n in sorted(self._actions.items()):
            actions.add(labels, n)
        denied = ACTIONS_DENIED.family()
        for labels3, n in sorted(self._denied.items()):
            denied.add(labels3, n)
        paused = PAUSED.family()
        view = self.pause.last if self.pause is not None else None
        if view is not None and view.ok:
            paused.add(("node",), float(view.node_paused))
            paused.add(("cluster",), float(view.cluster_paused))
        out = [actions, denied, paused]
        if self._cordoned is not None and self._limit is not None:
            cordoned, limit = CORDONED.family(), CORDON_LIMIT.family()
            cordoned.add((), self._cordoned)
            limit.add((), self._limit)
            out += [cordoned, limit]
        used = HOURLY_USED.family()
        used.add((), self.ledger.count_disruptive(self.monotonic()))
        remaining, started = DRAIN_REMAINING.family(), DRAIN_STARTED.family()
        for node, (left, since) in sorted(self._drain.items()):
            remaining.add((node,), left)
            started.add((node,), since)
        dropped = LEDGER_DROPPED.family()
        for kind, n in sorted(self.ledger.dropped_by_kind().items()):
            dropped.add((kind,), n)
        return [*out, used, remaining, started, dropped, *self.alerts.families(),
                *self.attribution.families(),
                *self.windows.families(*self._global_windows(), self.clock())]

    def _global_windows(self) -> tuple[tuple[Window, ...], tuple[Window, ...]]:
        return (windows.windows_of(self.settings.safety_allow_windows),
                windows.windows_of(self.settings.safety_deny_windows))

    def status(self) -> dict[str, Any]:
        view = self.pause.last if self.pause is not None else None
        now = self.monotonic()
        return {
            "api": "none" if self.pause is None else ("ok" if view and view.ok else "unreachable"),
            "paused": {
                "node": bool(view and view.node_paused),
                "cluster": bool(view and view.cluster_paused),
            },
            "disruptive_actions_last_hour": self.ledger.count_disruptive(now),
            "max_actions_per_hour": self.settings.safety_max_actions_per_hour,
            "cordoned_nodes": self._cordoned,
            "cordon_budget_limit": self._limit,
            "draining": {n: {"remaining": r, "started": s} for n, (r, s) in self._drain.items()},
            "workload_blamed": self.attribution.status(),
            "gated_actions": list(self.settings.safety_gated_actions),
            "alert_gate": self.alerts.status(),
            **self.windows.status(*self._global_windows(), self.clock(),
                                  self.settings.safety_pause_configmap),
        }
