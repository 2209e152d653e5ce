"""``drain``: cordon this node, then evict its pods through the Eviction API, one pass per call.

Run through the safety gate by the remediation stage, which re-runs an unfinished drain (outcome
``retry``) on later ticks — re-gated each time, so a pause or an unreachable API stops it — and
persists that it is in progress, so a restarted agent resumes it. Each pass re-lists the node's
pods, so it converges from any crash point. Policy, as ``kubectl drain`` without ``--force``:
- PodDisruptionBudgets are the API server's call: a 429 means "not now", the pod is retried with
  exponential backoff; nodemedic never deletes a pod directly;
- DaemonSet pods (they would come straight back) and mirror pods (owned by the kubelet) are
  skipped, as are finished pods and, unless ``evict_unmanaged: true``, pods with no controller
  (an eviction would lose them for good);
- each eviction asks for the pod's terminationGracePeriodSeconds capped at
  ``--safety.drain-grace-cap`` (or the rule's lower ``grace_period_cap``).
The drain succeeds when no evictable pod is left, and fails after ``timeout`` (every request sets
it, 1m to 4h: the model requires it; the failover path asks for 1h).
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any, Literal

from agent.actions.base import (
    Action,
    ActionContext,
    Plan,
    outcome,
    params_of,
    require_local,
)
from agent.actions.cordon import ensure_cordoned
from agent.actions.registry import action
from agent.backoff import delay_for
from agent.kube.errors import KubeError, KubeNotFound, KubeTooManyRequests, KubeUnavailable
from agent.kube.pods import evict_pod, list_node_pods
from agent.settings import Settings
from agent.structs import actionparams as ap
from agent.structs.durations import format_duration
from agent.structs.remediation import ActionRequest, Decision, Outcome

DEFAULT_GRACE = 30  # what the API server assumes when a pod does not say
BACKOFF_BASE = 5.0
BACKOFF_MAX = 120.0
EVICTION_CONCURRENCY = 5

PodClass = Literal["evict", "terminating", "daemonset", "mirror", "finished", "unmanaged"]


def classify(pod: dict[str, Any], evict_unmanaged: bool) -> PodClass:
    """What a drain does with one pod (pure; unit-tested on real pod JSON)."""
    meta = pod.get("metadata") or {}
    ann = meta.get("annotations") or {}
    owners = meta.get("ownerReferences") or []
    # Static pods: the API's mirror copy carries config.mirror (and a Node owner); the kubelet's
    # own view says config.source file/http. Evicting them does nothing but confuse.
    if (
        "kubernetes.io/config.mirror" in ann
        or ann.get("kubernetes.io/config.source") in ("file", "http")
        or any(o.get("kind") == "Node" for o in owners if isinstance(o, dict))
    ):
        return "mirror"
    if any(o.get("kind") == "DaemonSet" for o in owners if isinstance(o, dict)):
        return "daemonset"
    if (pod.get("status") or {}).get("phase") in ("Succeeded", "Failed"):
        return "finished"
    if meta.get("deletionTimestamp"):
        return "terminating"
    if not evict_unmanaged and not any(o.get("controller") for o in owners if isinstance(o, dict)):
        return "unmanaged"
    return "evict"


def grace_seconds(pod: dict[str, Any], cap: float) -> int:
    """The pod's own terminationGracePeriodSeconds, never above ``cap``."""
    raw = (pod.get("spec") or {}).get("terminationGracePeriodSeconds")
    own = DEFAULT_GRACE
    if isinstance(raw, int) and not isinstance(raw, bool) and raw >= 0:
        own = raw
    return int(min(own, cap))


def pod_key(pod: dict[str, Any]) -> str:
    meta = pod.get("metadata") or {}
    return f"{meta.get('namespace', '')}/{meta.get('name', '')}"


@dataclass
class DrainMemory:
    """Per-drain retry state kept by the stage between passes (lost on restart: harmless)."""

    next_try: dict[str, float] = field(default_factory=dict)
    failures: dict[str, int] = field(default_factory=dict)
    evicted: set[str] = field(default_factory=set)

    def backoff(self, key: str, now: float) -> float:
        n = self.failures.get(key, 0) + 1
        self.failures[key] = n
        delay = delay_for(n, BACKOFF_BASE, BACKOFF_MAX)
        self.next_try[key] = now + delay
        return delay


@action(ap.Drain)
class Drain(Action):
    disruptive = True
    resumable = True
    cordons = True

    def options(self, req: ActionRequest, settings: Settings) -> tuple[float, float, bool]:
        """(timeout, grace cap, evict unmanaged pods): the rule's, the cap never above
        ``--safety.drain-grace-cap``."""
        p = params_of(req, ap.Drain)
        require_local(req, settings)
        return p.timeout, min(p.grace_period_cap, settings.safety_drain_grace_cap), \
            p.evict_unmanaged

    def explain(self, req: ActionRequest, settings: Settings) -> Plan:
        timeout, cap, unmanaged = self.options(req, settings)
        return Plan(
            self.name,
            req.target.key,
            f"cordon and drain node {req.target.node} (timeout {format_duration(timeout)}, "
            f"grace cap {format_duration(cap)})",
            (
                "spec.unschedulable=true",
                "evict every pod except DaemonSet, mirror and finished pods"
                + ("" if unmanaged else " and pods without a controller"),
            ),
        )

    async def execute(self, decision: Decision, ctx: ActionContext) -> Outcome:
        req = decision.request
        node = req.target.node
        timeout, cap, unmanaged = self.options(req, ctx.settings)
        now = ctx.now()
        started = ctx.started_at if ctx.started_at is not None else now
        memory = ctx.extra.setdefault("drain", DrainMemory())
        assert isinstance(memory, DrainMemory)

        cordon = await ensure_cordoned(ctx.api, node, req.rule, now)
        if cordon == "admin_override":
            self._report(ctx, node, 0, None)
            return outcome(
                decision,
                "skipped",
                f"an admin uncordoned node {node}; drain for rule {req.rule} stopped",
                reason="admin_override",
            )
        pods = await list_node_pods(ctx.api, node)
        classes: dict[str, list[dict[str, Any]]] = {}
        for pod in pods:
            classes.setdefault(classify(pod, unmanaged), []).append(pod)

        due = [p for p in classes.get("evict", []) if memory.next_try.get(pod_key(p), 0) <= now]
        blocked: dict[str, str] = {}
        sem = asyncio.Semaphore(EVICTION_CONCURRENCY)

        async def one(pod: dict[str, Any]) -> None:
            key = pod_key(pod)
            meta = pod.get("metadata") or {}
            async with sem:
                try:
                    await evict_pod(
                        ctx.api,
                        str(meta.get("namespace", "")),
                        str(meta.get("name", "")),
                        grace_seconds(pod, cap),
                        str(meta.get("uid", "")),
                    )
                except KubeTooManyRequests as exc:
                    delay = memory.backoff(key, now)
                    blocked[key] = (f"disruption budget: {exc.reason} "
                                    f"(retry in {format_duration(delay)})")
                    return
                except KubeNotFound:
                    return  # already gone
                except KubeUnavailable:
                    raise
                except KubeError as exc:
                    delay = memory.backoff(key, now)
                    blocked[key] = f"{exc} (retry in {format_duration(delay)})"
                    return
                memory.evicted.add(key)
                memory.failures.pop(key, None)

        await asyncio.gather(*(one(p) for p in due))
        # Pods still listed keep the drain open (evicted ones linger while terminating); success
        # needs a pass that finds none, so "drained" means gone, not just asked to leave.
        remaining = len(classes.get("evict", [])) + len(classes.get("terminating", []))
        evicted_now = [pod_key(p) for p in due if pod_key(p) not in blocked]
        details: dict[str, Any] = {
            "remaining": remaining,
            "evicted": sorted(memory.evicted),
            "blocked": blocked,
            "skipped": {
                k: sorted(pod_key(p) for p in classes.get(k, []))
                for k in ("daemonset", "mirror", "unmanaged")
                if classes.get(k)
            },
            "cordon": cordon,
        }
        if remaining == 0:
            self._report(ctx, node, 0, None)
            return outcome(decision, "success", f"drained node {node}", **details)
        if now - started >= timeout:
            self._report(ctx, node, remaining, None)
            return outcome(
                decision,
                "failure",
                f"drain of node {node} timed out after {format_duration(timeout)} with "
                f"{remaining} pods left",
                **details,
            )
        self._report(ctx, node, remaining, started)
        msg = f"draining node {node}: {remaining} pods left"
        if evicted_now:
            msg += f", evicted {len(evicted_now)} this pass"
        if blocked:
            msg += f", {len(blocked)} blocked"
        return outcome(decision, "retry", msg, **details)

    @staticmethod
    def _report(ctx: ActionContext, node: str, remaining: int, started: float | None) -> None:
        if ctx.progress is not None:
            ctx.progress(node, remaining, started if started is not None else 0.0)
