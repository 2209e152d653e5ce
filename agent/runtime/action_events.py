"""Kubernetes Events about executed actions, with a bounded retry queue for the ones refused.

Used by agent.runtime.remediation (one :class:`EventQueue` per stage): after a tick, every real
action's result is written as an Event on its target (the node, or the pod of a pod rule; the
``event`` action is its own Event). An Event the API refused is queued (at most
EVENT_RETRY_QUEUE; past it the oldest is dropped and counted) and retried on later ticks with
backoff (1, 2, 4 ... ticks, at most EVENT_RETRY_MAX_TICKS; EVENT_RETRIES_PER_TICK at most per
tick, oldest first) until EVENT_RETRY_ATTEMPTS failed, so one 500 at the wrong moment does not
hide a drain from ``kubectl describe node``. Reason and text come from agent.actions.executor,
the same as for the failover path's failures.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import Any

import structlog

from agent.actions.executor import event_text
from agent.backoff import delay_for
from agent.kube.errors import KubeError
from agent.kube.events import InvolvedObject, record_event
from agent.structs.metrics import Family, MetricSpec
from agent.structs.remediation import Decision, Outcome

log = structlog.get_logger("nodemedic.remediation")

EVENT_RETRY_QUEUE = 256  # failed Events kept for retry; the oldest is dropped (counted) past it
EVENT_RETRY_ATTEMPTS = 8  # then the Event is given up (counted)
EVENT_RETRY_MAX_TICKS = 32  # backoff between attempts: 1, 2, 4 ... ticks, at most this
EVENT_RETRIES_PER_TICK = 32  # bounds the API calls one tick spends on old Events

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
METRICS = (EVENT_FAILURES, EVENTS_DROPPED, EVENTS_QUEUED)


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


class EventQueue:
    """Writes the Events of one stage (``host``: the node the agent runs on)."""

    def __init__(self, api: Any, host: str) -> None:
        self.api = api
        self.host = host
        self.tick = 0
        self.failures = 0
        self._queue: deque[_QueuedEvent] = deque()
        self._dropped = {"queue_full": 0, "attempts": 0}

    async def send(self, decision: Decision, result: Outcome) -> None:
        """The Event of one executed request (none for the ``event`` action itself)."""
        req = decision.request
        if req.action.type == "event":
            return  # the action itself was the Event
        if req.target.kind == "pod":
            obj = InvolvedObject("Pod", req.target.name, req.target.namespace)
        else:
            obj = InvolvedObject("Node", req.target.node)
        reason, message, type_ = event_text(decision, result)
        await self._send(_QueuedEvent(obj, reason, message, type_, req.action.type, 0, 0))

    async def _send(self, ev: _QueuedEvent) -> None:
        """Write one Event; on failure queue it for a later tick (backoff) or give it up."""
        try:
            await record_event(self.api, ev.obj, ev.reason, ev.message, type_=ev.type_,
                               host=self.host, action=ev.action)
        except KubeError as exc:
            self.failures += 1
            ev.attempts += 1
            if ev.attempts >= EVENT_RETRY_ATTEMPTS:
                self._dropped["attempts"] += 1
                log.warning("action_event_given_up", reason=ev.reason, error=str(exc))
                return
            ev.due = self.tick + int(delay_for(ev.attempts, 1, EVENT_RETRY_MAX_TICKS))
            if len(self._queue) >= EVENT_RETRY_QUEUE:
                dropped = self._queue.popleft()
                self._dropped["queue_full"] += 1
                log.warning("action_event_dropped", reason=dropped.reason, queue="full")
            self._queue.append(ev)
            log.warning("action_event_failed", reason=ev.reason, retry_tick=ev.due,
                        error=str(exc))

    async def retry(self) -> None:
        """Retry queued Events that are due (at most EVENT_RETRIES_PER_TICK, oldest first)."""
        due: list[_QueuedEvent] = []
        keep: deque[_QueuedEvent] = deque()
        for ev in self._queue:
            if ev.due <= self.tick and len(due) < EVENT_RETRIES_PER_TICK:
                due.append(ev)
            else:
                keep.append(ev)
        if not due:
            return
        self._queue = keep
        for ev in due:  # in order: an Event's count/lastTimestamp follow the order of retries
            await self._send(ev)

    def families(self) -> list[Family]:
        failures = EVENT_FAILURES.family()
        failures.add((), self.failures)
        dropped = EVENTS_DROPPED.family()
        for reason, n in sorted(self._dropped.items()):
            dropped.add((reason,), n)
        queued = EVENTS_QUEUED.family()
        queued.add((), len(self._queue))
        return [failures, dropped, queued]
