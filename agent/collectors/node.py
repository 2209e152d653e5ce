"""The ``node`` collector: this node's conditions, taints, cordon flag and Lease heartbeat age.

Built by agent.runtime.pipeline like every collector; needs the shared API client
(``ctx.api``, from agent.kube.client). ``start()`` launches two watches
(agent.kube.reflector): the Node named ``--node-name`` and its Lease in ``kube-node-lease``.
``collect()`` only reads their state, so a tick costs no API request. It raises (the runtime then
marks the collector failed and drops its series) while there is no API client, while the Node
watch is not synced (API unreachable, re-listing after 410 Gone) or when the Node does not exist:
stale data is never reported as fresh. The Lease age is omitted while the Lease watch is unsynced.
When the watch fails because of our own access (HTTP 401/403, a certificate that does not verify)
the failure is CannotSee with that reason, and a refused Lease watch makes the Lease age
``unreadable()``: the agent's credentials are wrong, not the node.

Every change the Node watch delivers is also checked for an admin undoing nodemedic's cordon or
taint (agent.actions.ownership); if so, our claim is released at once, in the background (one
write in flight at most, none in dry-run), with the Event ``NodemedicClaimReleased``.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import time
from datetime import datetime
from typing import Any

import structlog

from agent.actions.ownership import release_reversed, reversed_claims
from agent.collectors.base import CannotSee, Collector, CollectorContext, http_cannot_see
from agent.collectors.registry import register
from agent.kube.errors import KubeError
from agent.kube.events import InvolvedObject, record_event
from agent.kube.reflector import ObjectReflector, renew_age_seconds
from agent.structs.metrics import Family, MetricSpec

API_UP = MetricSpec(
    "nodemedic_api_up",
    "1 while the watch on this node's Node object is connected and synced with the API server "
    '(absent, with nodemedic_collector_success{collector="node"} 0, when it is not).',
    "gauge",
)
NODE_CONDITION = MetricSpec(
    "nodemedic_node_condition",
    "This node's status conditions: one series per condition and status (true, false, unknown), "
    "1 for the current status, as kube-state-metrics' kube_node_status_condition.",
    "gauge",
    ("condition", "status"),
)
NODE_UNSCHEDULABLE = MetricSpec(
    "nodemedic_node_unschedulable",
    "1 when this node is cordoned (spec.unschedulable).",
    "gauge",
)
NODE_TAINT = MetricSpec(
    "nodemedic_node_taint",
    "1 for each taint on this node.",
    "gauge",
    ("key", "effect"),
)
LEASE_AGE = MetricSpec(
    "nodemedic_node_lease_age_seconds",
    "Seconds since this node's kube-node-lease Lease was last renewed by the kubelet.",
    "gauge",
)
CONDITION_TRANSITION = MetricSpec(
    "nodemedic_node_condition_last_transition_timestamp_seconds",
    "When each of this node's conditions last changed status (Unix seconds).",
    "gauge",
    ("condition",),
)
log = structlog.get_logger("nodemedic.node")

WATCH_ERRORS = MetricSpec(
    "nodemedic_node_watch_errors_total",
    "Failed lists/watches of this node's Node or Lease (each is followed by a backoff and retry).",
    "counter",
    ("object",),
)
WATCH_RELISTS = MetricSpec(
    "nodemedic_node_watch_relists_total",
    "Full re-lists of this node's Node or Lease (start, reconnect, or 410 Gone).",
    "counter",
    ("object",),
)

_STATUSES = ("true", "false", "unknown")
# agent.kube.informer records "HTTP <status>: ..." for API answers and the exception text (the
# ssl module's "certificate verify failed") for a TLS failure.
_HTTP_STATUS = re.compile(r"HTTP (\d{3})\b")


def cannot_see(error: str) -> str | None:
    """The CannotSee reason behind a watch's last error, or None when it is not our access."""
    m = _HTTP_STATUS.match(error)
    if m is not None:
        return http_cannot_see(int(m.group(1)))
    low = error.lower()
    if "certificate verify failed" in low or "certificateerror" in low:
        return "tls"
    return None
LEASE_NAMESPACE = "kube-node-lease"


def _ts(text: str) -> float | None:
    try:
        return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None


@register("node", default_enabled=True)
class NodeCollector(Collector):
    """Exports this node's API-side state from watches started in :meth:`start`."""

    help = "this node's conditions, taints, cordon flag and Lease heartbeat age, from a watch"
    metrics = (
        API_UP,
        NODE_CONDITION,
        NODE_UNSCHEDULABLE,
        NODE_TAINT,
        LEASE_AGE,
        CONDITION_TRANSITION,
        WATCH_ERRORS,
        WATCH_RELISTS,
    )

    # Reconnect backoff (seconds); tests shorten it.
    backoff_initial = 0.5
    backoff_max = 30.0
    watch_timeout = 60

    def __init__(self, ctx: CollectorContext) -> None:
        super().__init__(ctx)
        self.node: ObjectReflector | None = None
        self.lease: ObjectReflector | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._unreadable: dict[str, str] = {}
        self._release: asyncio.Task[None] | None = None

    async def start(self) -> None:
        api = self.ctx.api
        if api is None:
            return
        name = self.ctx.settings.node_name
        opts: dict[str, Any] = {
            "watch_timeout": self.watch_timeout,
            "backoff_initial": self.backoff_initial,
            "backoff_max": self.backoff_max,
        }
        self.node = ObjectReflector(api, "node", name, **opts)
        self.lease = ObjectReflector(api, "lease", name, LEASE_NAMESPACE, **opts)
        self.node.informer.on_change = self._observe
        self._tasks = [
            asyncio.create_task(r.run(), name=f"node-watch-{r.kind}")
            for r in (self.node, self.lease)
        ]

    async def collect(self) -> list[Family]:
        if self.node is None or self.lease is None:
            raise RuntimeError(
                "no Kubernetes API client: set --kubeconfig or run in-cluster to watch this node"
            )
        st = self.node.state
        self._unreadable = {}
        if not st.synced:
            reason = cannot_see(st.last_error)
            if reason is not None:
                raise CannotSee(
                    reason,
                    f"cannot see node {self.node.name} in the API ({st.last_error}); check "
                    "--kubeconfig (token, CA) and the agent's RBAC for nodes",
                )
            raise RuntimeError(
                f"watch on node {self.node.name} not synced: {st.last_error or 'starting'}"
            )
        node = st.obj
        if node is None:
            raise RuntimeError(f"node {self.node.name} not found in the API (check --node-name)")
        up = API_UP.family()
        up.add((), 1)
        cond, trans = NODE_CONDITION.family(), CONDITION_TRANSITION.family()
        for c in (node.get("status") or {}).get("conditions") or []:
            if not isinstance(c, dict) or not c.get("type"):
                continue
            current = str(c.get("status", "Unknown")).lower()
            for s in _STATUSES:
                cond.add((str(c["type"]), s), 1 if s == current else 0)
            when = _ts(str(c.get("lastTransitionTime") or ""))
            if when is not None:
                trans.add((str(c["type"]),), when)
        spec = node.get("spec") or {}
        unsched = NODE_UNSCHEDULABLE.family()
        unsched.add((), 1 if spec.get("unschedulable") else 0)
        taints = NODE_TAINT.family()
        for t in spec.get("taints") or []:
            if isinstance(t, dict) and t.get("key"):
                taints.add((str(t["key"]), str(t.get("effect", ""))), 1)
        out = [up, cond, trans, unsched, taints]
        lease = self.lease.state
        lease_reason = None if lease.synced else cannot_see(lease.last_error)
        if lease_reason is not None:
            self._unreadable[LEASE_AGE.name] = lease_reason
        if lease.synced and lease.obj is not None:
            age = renew_age_seconds(lease.obj)
            if age is not None:
                fam = LEASE_AGE.family()
                fam.add((), age)
                out.append(fam)
        errors, relists = WATCH_ERRORS.family(), WATCH_RELISTS.family()
        for r in (self.node, self.lease):
            errors.add((r.kind,), r.state.errors)
            relists.add((r.kind,), r.state.lists)
        out += [errors, relists]
        return out

    def unreadable(self) -> dict[str, str]:
        """The Lease age while its watch is refused to us (401/403/TLS)."""
        return dict(self._unreadable)

    def _observe(self, _key: str, _old: Any, new: dict[str, Any] | None) -> None:
        """On every change of our Node: did an admin just undo our cordon or taint?"""
        busy = self._release is not None and not self._release.done()
        if new is None or busy or self.ctx.settings.dry_run or not reversed_claims(new):
            return
        self._release = asyncio.create_task(self._release_claims(), name="node-claims")

    async def _release_claims(self) -> None:
        api, name = self.ctx.api, self.ctx.settings.node_name
        try:
            released = await release_reversed(api, name, time.time())
            if released:
                message = "; ".join(released) + (
                    ": released nodemedic's claim; the node stays as the admin set it, and those"
                    " rules will not redo it until they resolve")
                log.info("claim_released", node=name, message=message)
                await record_event(api, InvolvedObject("Node", name), "NodemedicClaimReleased",
                                   message, host=name, action="release-claim")
        except KubeError as exc:  # the undo actions check again when they run
            log.warning("claim_release_failed", node=name, error=str(exc))

    def status(self) -> dict[str, Any]:
        if self.node is None or self.lease is None:
            return {"api": "no client"}
        return {
            r.kind: {
                "synced": r.state.synced,
                "exists": r.state.exists,
                "last_error": r.state.last_error,
                "resource_version": r.state.resource_version,
            }
            for r in (self.node, self.lease)
        }

    async def close(self) -> None:
        if self._release is not None:
            self._tasks.append(self._release)
            self._release = None
        for t in self._tasks:
            t.cancel()
        for t in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await t
        self._tasks = []
