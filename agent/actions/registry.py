"""Registry of action types by name: ``@action("cordon")`` on an Action subclass.

Read by agent.safety.gate and agent.runtime.remediation (look up the action of a request). Adding
an action means adding one module and listing it in ``_BUILTIN_MODULES``; every name must be one
of agent.structs.remediation.ACTION_TYPES (the names the rules know).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable

from agent.actions.base import Action
from agent.structs.remediation import ACTION_TYPES

_REGISTRY: dict[str, Action] = {}

_BUILTIN_MODULES = (
    "agent.actions.cordon",
    "agent.actions.uncordon",
    "agent.actions.taint",
    "agent.actions.untaint",
    "agent.actions.drain",
    "agent.actions.evict_pod",
    "agent.actions.restart_service",
    "agent.actions.annotate",
    "agent.actions.event",
    "agent.actions.webhook",
)


def action(name: str) -> Callable[[type[Action]], type[Action]]:
    """Class decorator: register one instance of the class under ``name``."""
    if name not in ACTION_TYPES:
        raise ValueError(f"action {name!r} is not in ACTION_TYPES")

    def deco(cls: type[Action]) -> type[Action]:
        cls.name = name
        existing = _REGISTRY.get(name)
        if existing is not None and type(existing) is not cls:
            raise ValueError(f"action {name!r} registered twice")
        _REGISTRY[name] = cls()
        return cls

    return deco


def load_builtin() -> None:
    """Import every built-in action module (each registers itself on import; cached by Python)."""
    for mod in _BUILTIN_MODULES:
        importlib.import_module(mod)


def get(name: str) -> Action | None:
    """The registered action, or None for an unknown name."""
    load_builtin()
    return _REGISTRY.get(name)


def names() -> list[str]:
    load_builtin()
    return sorted(_REGISTRY)
