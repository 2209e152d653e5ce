"""``evict-pod``: evict one pod of this node through the Eviction API (PDB-aware).

Run through the safety gate by the remediation stage for pod-targeted rules (e.g. a container
stuck at its memory limit). A 429 (a PodDisruptionBudget forbids it now) yields ``retry`` and the
stage tries again on later ticks until ``timeout`` (default 10m). DaemonSet and mirror pods are
refused, pods on other nodes are never touched, and the grace period is capped like drain's.
"""

from __future__ import annotations

from agent.actions.base import (
    Action,
    ActionContext,
    Plan,
    outcome,
    params_of,
    require_local,
)
from agent.actions.drain import classify, grace_seconds
from agent.actions.registry import action
from agent.kube.errors import KubeNotFound, KubeTooManyRequests
from agent.kube.pods import evict_pod, get_pod
from agent.settings import Settings
from agent.structs import actionparams as ap
from agent.structs.durations import format_duration
from agent.structs.remediation import ActionRequest, Decision, Outcome


@action(ap.EvictPod)
class EvictPod(Action):
    targets = ("pod",)
    disruptive = True
    resumable = True

    def explain(self, req: ActionRequest, settings: Settings) -> Plan:
        params_of(req, ap.EvictPod)
        require_local(req, settings, "pods of this node")
        return Plan(
            self.name,
            req.target.key,
            f"evict pod {req.target.namespace}/{req.target.name} (respecting disruption budgets)",
            ("POST pods/eviction",),
        )

    async def execute(self, decision: Decision, ctx: ActionContext) -> Outcome:
        req = decision.request
        ns, name = req.target.namespace, req.target.name
        p = params_of(req, ap.EvictPod)
        timeout = p.timeout
        now = ctx.now()
        started = ctx.started_at if ctx.started_at is not None else now
        try:
            pod = await get_pod(ctx.api, ns, name)
        except KubeNotFound:
            return outcome(decision, "noop", f"pod {ns}/{name} is already gone")
        if (pod.get("spec") or {}).get("nodeName") != req.target.node:
            return outcome(decision, "skipped", f"pod {ns}/{name} is not on node {req.target.node}")
        kind = classify(pod, evict_unmanaged=True)
        if kind in ("daemonset", "mirror"):
            return outcome(decision, "skipped", f"pod {ns}/{name} is a {kind} pod; not evicting")
        if kind in ("terminating", "finished"):
            return outcome(decision, "noop", f"pod {ns}/{name} is already {kind}")
        uid = str((pod.get("metadata") or {}).get("uid", ""))
        cap = min(p.grace_period_cap, ctx.settings.safety_drain_grace_cap)
        try:
            await evict_pod(ctx.api, ns, name, grace_seconds(pod, cap), uid)
        except KubeNotFound:
            return outcome(decision, "noop", f"pod {ns}/{name} is already gone")
        except KubeTooManyRequests as exc:
            if now - started >= timeout:
                return outcome(
                    decision,
                    "failure",
                    f"eviction of {ns}/{name} still blocked after {format_duration(timeout)}: "
                    f"{exc.reason}",
                )
            return outcome(decision, "retry", f"eviction of {ns}/{name} blocked: {exc.reason}")
        return outcome(decision, "success", f"evicted pod {ns}/{name}")
