"""Action plans: what each action would change, and every parameter it refuses (pure, no API).

Parameters the action's model refuses fail where the request is built (``ActionSpec.of``, as a
rule's fail at load); what depends on the node and its settings, ``plan()`` refuses."""

from __future__ import annotations

from dataclasses import replace

import pytest
from helpers_actions import NODE, request, settings
from hypothesis import given
from hypothesis import settings as hsettings
from hypothesis import strategies as st

from agent.actions import registry
from agent.actions.base import InvalidParams, Plan
from agent.structs.remediation import ACTION_TYPES, ActionRequest, ActionSpec

# Parameters each action's model accepts.
VALID: dict[str, dict[str, object]] = {
    "taint": {"key": "nodemedic.io/x", "value": "v", "effect": "NoSchedule"},
    "untaint": {"key": "nodemedic.io/x"},
    "drain": {"timeout": "10m", "grace_period_cap": "30s"},
    "evict-pod": {"grace_period_cap": "30s"},
    "restart-service": {"unit": "kubelet.service"},
    "annotate": {"key": "nodemedic.io/x", "value": "v"},
}


def plan(action: str, params: dict | None = None, **kw):  # type: ignore[no-untyped-def]
    act = registry.get(action)
    assert act is not None
    return act.plan(request(action, params, **kw), settings(**kw.pop("settings", {})))


def plan_of(req: ActionRequest) -> Plan:
    act = registry.get(req.action.type)
    assert act is not None
    return act.plan(req, settings())


def test_every_action_type_is_registered() -> None:
    """Each action name the rule schema accepts has an implementation."""
    assert registry.names() == sorted(ACTION_TYPES)


def test_cordon_plan_says_what_changes() -> None:
    """A cordon plan names the node, spec.unschedulable and the ownership annotation."""
    p = plan("cordon")
    assert p.summary == f"cordon node {NODE}"
    assert "spec.unschedulable=true" in p.changes
    assert any("nodemedic.io/cordoned-by" in c for c in p.changes)


@pytest.mark.parametrize(
    "action", ["cordon", "uncordon", "drain", "taint", "untaint", "restart-service", "annotate",
               "evict-pod"],
)
def test_node_actions_refuse_other_nodes(action: str) -> None:
    """An agent never cordons, drains, taints, annotates, evicts or restarts anything on another
    node, and says which node it is limited to."""
    kind = {"evict-pod": "pod"}.get(action, "node")
    with pytest.raises(InvalidParams, match=f"{action} only acts on .*this node.* \\({NODE}\\)"):
        plan(action, VALID.get(action), node="node-b", kind=kind, namespace="ns", name="p")


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"key": "node.kubernetes.io/unreachable", "effect": "NoSchedule"}, "nodemedic.io/"),
        ({"key": "nodemedic.io/x", "effect": "NoExecute"}, "PodDisruptionBudgets"),
        ({"key": "nodemedic.io/x", "effect": "Sometimes"}, "effect"),
        ({"effect": "NoSchedule"}, "key"),
        ({"key": "nodemedic.io/x", "value": "v" * 64}, "63"),
    ],
)
def test_taint_refuses_unsafe_params(params: dict, message: str) -> None:
    """Taints outside nodemedic.io/, NoExecute (bypasses PDBs) and bad values are refused where
    the request is built, in code as in a rule."""
    with pytest.raises(ValueError, match=message):
        request("taint", params)


def test_taint_and_untaint_refuse_unsafe_params_that_skipped_the_model() -> None:
    """The action keeps its safety boundaries for a model changed without validation
    (``model_copy``): no NoExecute taint, no key outside nodemedic.io/."""
    taint = request("taint", VALID["taint"])
    unsafe = taint.action.params.model_copy(update={"effect": "NoExecute"})
    with pytest.raises(InvalidParams, match="PodDisruptionBudgets"):
        plan_of(replace(taint, action=ActionSpec(unsafe)))
    untaint = request("untaint", VALID["untaint"])
    admins = untaint.action.params.model_copy(update={"key": "dedicated"})
    with pytest.raises(InvalidParams, match=r"nodemedic\.io/"):
        plan_of(replace(untaint, action=ActionSpec(admins)))


def test_untaint_only_touches_nodemedic_keys() -> None:
    """untaint of an admin's taint key is refused before any API call."""
    with pytest.raises(ValueError, match=r"nodemedic\.io/"):
        request("untaint", {"key": "dedicated"})
    assert plan("untaint", {"key": "nodemedic.io/disk"}).changes == (
        "spec.taints -= nodemedic.io/disk",
    )


def test_restart_service_needs_the_allow_list() -> None:
    """Only units listed in --actions.restart-allowlist can be restarted."""
    assert plan("restart-service", {"unit": "kubelet.service"}).summary == (
        "systemctl restart kubelet.service"
    )
    with pytest.raises(InvalidParams, match="restart-allowlist"):
        plan("restart-service", {"unit": "sshd.service"})


@pytest.mark.parametrize(
    "unit", ["kubelet.service; rm -rf /", "$(reboot).service", "-H host.service", "kubelet"]
)
def test_restart_service_refuses_shell_like_units(unit: str) -> None:
    """Anything that is not a plain unit name is refused, even if someone allow-listed it."""
    with pytest.raises(ValueError, match=r"systemd \.service unit name"):
        request("restart-service", {"unit": unit})


def test_webhook_url_must_be_allow_listed() -> None:
    """Webhooks go only to listed URLs; an entry ending in / allows the URLs below it."""
    act = registry.get("webhook")
    assert act is not None
    s = settings(actions_webhook_allowlist=("https://hooks.example/nodemedic/",))
    ok = act.plan(request("webhook", {"url": "https://hooks.example/nodemedic/page"}), s)
    assert "https://hooks.example/nodemedic/page" in ok.summary
    with pytest.raises(InvalidParams, match="allowlist"):
        act.plan(request("webhook", {"url": "https://evil.example/nodemedic/"}), s)
    with pytest.raises(ValueError, match="timeout"):
        request("webhook", {"url": "https://hooks.example/nodemedic/x", "timeout": 60})


def test_annotate_owner_needs_a_pod_rule() -> None:
    """Annotating a pod's owner only makes sense for a pod target."""
    with pytest.raises(InvalidParams, match="pod rule"):
        plan("annotate", {"key": "nodemedic.io/oom", "value": "3", "target": "owner"})
    p = plan(
        "annotate",
        {"key": "nodemedic.io/oom", "value": "3", "target": "owner"},
        kind="pod",
        namespace="shop",
        name="web-1",
    )
    assert p.summary == "annotate owner of pod/shop/web-1"


def test_event_reason_must_be_camel_case() -> None:
    """Event reasons follow the Kubernetes convention (UpperCamelCase)."""
    with pytest.raises(ValueError, match="CamelCase"):
        request("event", {"reason": "oom storm", "message": "m"})
    p = plan("event", {"reason": "OOMStorm", "message": "3 kills"}, severity="warning")
    assert p.summary == f"Warning Event OOMStorm on node/{NODE}"


def test_evict_pod_needs_a_pod_target() -> None:
    """evict-pod on a node target is refused."""
    with pytest.raises(InvalidParams, match="pod targets"):
        plan("evict-pod", VALID["evict-pod"])


def test_drain_grace_cap_never_exceeds_the_setting() -> None:
    """A rule may lower the drain grace cap but never raise it above --safety.drain-grace-cap."""
    assert "grace cap 2m" in plan("drain", {"grace_period_cap": 600, "timeout": "1h"}).summary
    assert "grace cap 10s" in plan("drain", {"grace_period_cap": "10s", "timeout": "1h"}).summary


_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda c: st.lists(c, max_size=3) | st.dictionaries(st.text(max_size=5), c, max_size=3),
    max_leaves=8,
)
_KEYS = st.sampled_from(
    ["key", "value", "effect", "unit", "url", "timeout", "grace_period_cap", "reason",
     "message", "event_type", "target", "evict_unmanaged", "x"]
)


@hsettings(max_examples=300, deadline=None)
@given(
    st.sampled_from(ACTION_TYPES),
    st.dictionaries(_KEYS, _VALUES, max_size=6),
    st.sampled_from(["node", "pod", "service"]),
)
def test_plans_never_crash_on_garbage_params(action: str, params: dict, kind: str) -> None:
    """Whatever a request is built with, building it raises ValueError (the model) or plan()
    returns a Plan or raises InvalidParams, nothing else."""
    act = registry.get(action)
    assert act is not None
    try:
        req = request(action, params, kind=kind, namespace="ns" if kind != "node" else "",
                      name="p" if kind != "node" else "")
    except ValueError as exc:
        assert str(exc)
        return
    try:
        out = act.plan(req, settings(actions_webhook_allowlist=("http://h/",)))
    except InvalidParams as exc:
        assert str(exc)  # always a message the rule author can act on
    else:
        assert out.action == action
