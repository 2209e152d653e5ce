"""Held steps: requests the gate denied for a reason that clears by itself, re-gated later.

Used by agent.runtime.remediation (one :class:`HeldSteps` per stage). A first-pass request denied
for one of agent.safety.gate.HOLD_REASONS (missing data, pause, cooldown, caps, the cordon lock,
a freeze, a closed window, a firing alert) is *held* in the ledger (so it survives a restart) and
re-gated with backoff (1, 2, 4, then every HELD_RETRY_MAX_TICKS ticks; at most
HELD_RETRIES_PER_TICK a tick) while the rules engine still asks for that step (``wants``); it is
dropped when the rule resolves or the denial is final, and past MAX_HELD the oldest is dropped.
/status shows held steps with their reason, ``nodemedic_actions_held`` counts them.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import structlog

from agent.backoff import delay_for
from agent.safety.gate import HOLD_REASONS
from agent.safety.ledger import Held, Ledger, ledger_key
from agent.structs.metrics import Family, MetricSpec
from agent.structs.remediation import ActionRequest, Decision

log = structlog.get_logger("nodemedic.remediation")

MAX_HELD = 256  # held steps kept; past it the oldest is dropped (counted)
HELD_RETRY_MAX_TICKS = 6  # backoff between re-gatings of a held step: 1, 2, 4, 6, 6 ... ticks
HELD_RETRIES_PER_TICK = 32  # bounds the gate work (API reads) one tick spends on held steps

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
METRICS = (HELD, HELD_DROPPED)


class HeldSteps:
    """The held steps of the stage's ledger (``ledger`` returns it: it is replaced on restore);
    ``changed`` marks the state for writing."""

    def __init__(self, ledger: Callable[[], Ledger], changed: Callable[[], None],
                 monotonic: Callable[[], float]) -> None:
        self._ledger = ledger
        self._changed = changed
        self.monotonic = monotonic
        self.dropped = {"resolved": 0, "full": 0}

    def due(self, seen: set[str], tick: int,
            wants: Callable[[ActionRequest], bool]) -> list[ActionRequest]:
        """Held steps to re-gate this tick (oldest first, bounded); forget those the rules no
        longer ask for, and those a new request or a running action replaced."""
        ledger = self._ledger()
        due: list[ActionRequest] = []
        for key, held in list(ledger.held.items()):
            if key in seen:  # asked again this tick (fresher request) or already running
                if key in ledger.pending:
                    del ledger.held[key]
                    self._changed()
                continue
            if not wants(held.request):
                del ledger.held[key]
                self.dropped["resolved"] += 1
                self._changed()
                log.info("held_step_dropped", rule=held.request.rule,
                         action=held.request.action.type, target=held.request.target.key,
                         step=held.request.step, reason=held.reason,
                         why="the rule no longer asks for this step")
                continue
            if held.due <= tick and len(due) < HELD_RETRIES_PER_TICK:
                seen.add(key)
                due.append(held.request)
        return due

    def hold(self, decision: Decision, tick: int) -> None:
        """Hold a first-pass request denied for a reason that clears by itself; release it
        once it got any other decision (allowed, dry-run, a final denial)."""
        ledger = self._ledger()
        req = decision.request
        key = ledger_key(req)
        held = ledger.held.get(key)
        if decision.kind != "denied" or decision.reason not in HOLD_REASONS:
            if held is not None:
                del ledger.held[key]
                self._changed()
            return
        if held is None:
            if len(ledger.held) >= MAX_HELD:
                oldest = next(iter(ledger.held))
                del ledger.held[oldest]
                self.dropped["full"] += 1
                log.warning("held_step_dropped", key=oldest, why="too many held steps")
            held = ledger.held[key] = Held(req, decision.reason, decision.detail,
                                           self.monotonic(), 0)
            self._changed()
        elif held.reason != decision.reason:
            self._changed()
        held.request, held.reason, held.detail = req, decision.reason, decision.detail
        held.attempts += 1
        held.due = tick + int(delay_for(held.attempts, 1, HELD_RETRY_MAX_TICKS))

    def families(self) -> list[Family]:
        held = HELD.family()
        by_reason: dict[tuple[str, str], int] = {}
        for h in self._ledger().held.values():
            k = (h.request.action.type, h.reason)
            by_reason[k] = by_reason.get(k, 0) + 1
        for labels, n in sorted(by_reason.items()):
            held.add(labels, n)
        held_dropped = HELD_DROPPED.family()
        for reason, n in sorted(self.dropped.items()):
            held_dropped.add((reason,), n)
        return [held, held_dropped]

    def mark_rules(self, rules: list[Any]) -> None:
        """Say on each rule's own /status line that its step is held."""
        held: dict[tuple[str, str], list[str]] = {}
        for h in self._ledger().held.values():
            held.setdefault((h.request.rule, h.request.target.key), []).append(
                f"{h.request.action.type} (step {h.request.step}"
                f"{', undo' if h.request.undo else ''}): {h.reason}")
        for entry in rules:
            if isinstance(entry, dict) and (entry.get("rule"), entry.get("target")) in held:
                entry["held"] = held[(entry["rule"], entry["target"])]

    def status(self, offset: float, tick: int) -> list[dict[str, Any]]:
        """The held steps for /status (``since`` in wall time)."""
        return [
            {
                "rule": h.request.rule,
                "action": h.request.action.type,
                "target": h.request.target.key,
                "step": h.request.step,
                "undo": h.request.undo,
                "reason": h.reason,
                "detail": h.detail,
                "since": h.since + offset,
                "attempts": h.attempts,
                "next_retry_in_ticks": max(0, h.due - tick),
            }
            for h in self._ledger().held.values()
        ]
