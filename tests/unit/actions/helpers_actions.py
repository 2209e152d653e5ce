"""Builders shared by the action and safety unit tests."""

from __future__ import annotations

from typing import Any

from agent.settings import Settings, settings_for_tests
from agent.structs.remediation import ActionRequest, ActionSpec, Target
from tests.action_params import params_for

NODE = "node-a"


def settings(**overrides: Any) -> Settings:
    base: dict[str, Any] = {"node_name": NODE}
    base.update(overrides)
    return settings_for_tests(**base)


def request(
    action: str,
    params: dict[str, Any] | None = None,
    *,
    rule: str = "kubelet-down",
    kind: str = "node",
    node: str = NODE,
    namespace: str = "",
    name: str = "",
    **kw: Any,
) -> ActionRequest:
    return ActionRequest(
        rule=rule,
        action=ActionSpec.of(action, params_for(action, params)),
        target=Target(kind, node, namespace, name),  # type: ignore[arg-type]
        **kw,
    )
