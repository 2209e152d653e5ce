"""``annotate``: set one ``nodemedic.io/`` annotation on this node, the rule's pod, or that
pod's top-level owner (Deployment, StatefulSet, ...).

Run through the safety gate by the remediation stage. Parameters follow the rule schema
(agent.rules.schema.Annotate): ``key``, ``value`` (already rendered by the engine) and
``target`` (node, pod or owner). Idempotent: an unchanged value is not written.
"""

from __future__ import annotations

from typing import Any

from agent.actions.base import (
    Action,
    ActionContext,
    InvalidParams,
    Plan,
    check_key,
    ensure_annotations,
    outcome,
    params_of,
    require_local,
)
from agent.actions.registry import action
from agent.kube.errors import KubeNotFound
from agent.kube.nodes import update_node
from agent.kube.owners import top_owner, update_owner
from agent.kube.pods import get_pod, update_pod
from agent.settings import Settings
from agent.structs import actionparams as ap
from agent.structs.remediation import ActionRequest, Decision, Outcome

VALUE_LIMIT = 4096


def wanted(req: ActionRequest, settings: Settings) -> tuple[str, str, str]:
    """(key, value, where) with where in node/pod/owner."""
    p = params_of(req, ap.Annotate)
    key, value, where = check_key(p.key), p.value, p.target
    if len(value) > VALUE_LIMIT:  # the rendered value: the model checked the template
        raise InvalidParams(f"annotation {key}: value longer than {VALUE_LIMIT} characters")
    if where != "node" and req.target.kind != "pod":
        raise InvalidParams(f"target {where} needs a pod rule")
    require_local(req, settings, "this node and its pods")
    return key, value, where


@action(ap.Annotate)
class Annotate(Action):
    targets = ("node", "pod")

    def explain(self, req: ActionRequest, settings: Settings) -> Plan:
        key, value, where = wanted(req, settings)
        subject = (
            f"node/{req.target.node}"
            if where == "node"
            else (req.target.key if where == "pod" else f"owner of {req.target.key}")
        )
        return Plan(self.name, req.target.key, f"annotate {subject}", (f"{key}={value}",))

    async def execute(self, decision: Decision, ctx: ActionContext) -> Outcome:
        req = decision.request
        key, value, where = wanted(req, ctx.settings)

        def mutate(obj: dict[str, Any]) -> bool:
            ann = ensure_annotations(obj)
            if ann.get(key) == value:
                return False
            ann[key] = value
            return True

        subject = f"node/{req.target.node}"
        try:
            if where == "node":
                _, changed = await update_node(ctx.api, req.target.node, mutate)
            elif where == "pod":
                subject = req.target.key
                _, changed = await update_pod(
                    ctx.api, req.target.namespace, req.target.name, mutate
                )
            else:
                pod = await get_pod(ctx.api, req.target.namespace, req.target.name)
                owner = await top_owner(ctx.api, pod)
                if owner is None:
                    return outcome(decision, "skipped", f"{req.target.key} has no known controller")
                subject = f"{owner[0].lower()}/{req.target.namespace}/{owner[1]}"
                _, changed = await update_owner(
                    ctx.api, owner[0], req.target.namespace, owner[1], mutate
                )
        except KubeNotFound:
            return outcome(decision, "noop", f"{subject} is gone")
        if not changed:
            return outcome(decision, "noop", f"{subject} already has {key}")
        return outcome(decision, "success", f"annotated {subject} with {key}", subject=subject)
