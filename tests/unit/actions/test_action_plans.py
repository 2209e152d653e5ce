"""Action plans: what each action would change, and every parameter it refuses (pure, no API)."""

from __future__ import annotations

import pytest
from helpers_actions import NODE, request, settings
from hypothesis import given
from hypothesis import settings as hsettings
from hypothesis import strategies as st

from agent.actions import registry
from agent.actions.base import InvalidParams
from agent.structs.remediation import ACTION_TYPES


def plan(action: str, params: dict | None = None, **kw):  # type: ignore[no-untyped-def]
    act = registry.get(action)
    assert act is not None
    return act.plan(request(action, params, **kw), settings(**kw.pop("settings", {})))


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
    params = {"key": "nodemedic.io/x", "value": "v", "unit": "kubelet.service"}
    kind = {"evict-pod": "pod"}.get(action, "node")
    with pytest.raises(InvalidParams, match=f"{action} only acts on .*this node.* \\({NODE}\\)"):
        plan(action, params, node="node-b", kind=kind, namespace="ns", name="p")


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
    """Taints outside nodemedic.io/, NoExecute (bypasses PDBs) and bad values are refused."""
    with pytest.raises(InvalidParams, match=message):
        plan("taint", params)


def test_untaint_only_touches_nodemedic_keys() -> None:
    """untaint of an admin's taint key is refused before any API call."""
    with pytest.raises(InvalidParams, match=r"nodemedic\.io/"):
        plan("untaint", {"key": "dedicated"})
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
    act = registry.get("restart-service")
    assert act is not None
    with pytest.raises(InvalidParams):
        act.plan(
            request("restart-service", {"unit": unit}),
            settings(actions_restart_allowlist=(unit,)),
        )


def test_webhook_url_must_be_allow_listed() -> None:
    """Webhooks go only to listed URLs; an entry ending in / allows the URLs below it."""
    act = registry.get("webhook")
    assert act is not None
    s = settings(actions_webhook_allowlist=("https://hooks.example/nodemedic/",))
    ok = act.plan(request("webhook", {"url": "https://hooks.example/nodemedic/page"}), s)
    assert "https://hooks.example/nodemedic/page" in ok.summary
    with pytest.raises(InvalidParams, match="allowlist"):
        act.plan(request("webhook", {"url": "https://evil.example/nodemedic/"}), s)
    with pytest.raises(InvalidParams, match="timeout"):
        act.plan(
            request("webhook", {"url": "https://hooks.example/nodemedic/x", "timeout": 60}), s
        )


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
    with pytest.raises(InvalidParams, match="UpperCamelCase"):
        plan("event", {"reason": "oom storm"})
    p = plan("event", {"reason": "OOMStorm", "message": "3 kills"}, severity="warning")
    assert p.summary == f"Warning Event OOMStorm on node/{NODE}"


def test_evict_pod_needs_a_pod_target() -> None:
    """evict-pod on a node target is refused."""
    with pytest.raises(InvalidParams, match="pod targets"):
        plan("evict-pod")


def test_drain_grace_cap_never_exceeds_the_setting() -> None:
    """A rule may lower the drain grace cap but never raise it above --safety.drain-grace-cap."""
    assert "grace cap 2m" in plan("drain", {"grace_period_cap": 600}).summary
    assert "grace cap 10s" in plan("drain", {"grace_period_cap": "10s"}).summary


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
    """Whatever a rule passes, plan() returns a Plan or raises InvalidParams, nothing else."""
    act = registry.get(action)
    assert act is not None
    req = request(action, params, kind=kind, namespace="ns" if kind != "node" else "",
                  name="p" if kind != "node" else "")
    try:
        out = act.plan(req, settings(actions_webhook_allowlist=("http://h/",)))
    except InvalidParams as exc:
        assert str(exc)  # always a message the rule author can act on
    else:
        assert out.action == action
