"""Registry of action types by name: ``@action(actionparams.Cordon)`` on an Action subclass.

Read by agent.safety.gate, which looks up the action of a request once and hands it on with
the decision (the executor and the record use that). An action
is its parameter model in agent.structs.actionparams (name, parameters, rule schema fragment,
docs, where rules may use it) plus one module here with the class that plans and executes it,
listed in ``_BUILTIN_MODULES``; the decorator takes the name from the model, so it is written
once.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable

from agent.actions.base import Action
from agent.structs.actionparams import ACTION_MODELS, ActionParams

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


def action(model: type[ActionParams]) -> Callable[[type[Action]], type[Action]]:
    """Class decorator: register one instance of the class as the executor of ``model``."""
    name = model.action_name()
    if ACTION_MODELS.get(name) is not model:
        raise ValueError(f"action {name!r} is not declared in agent.structs.actionparams")

    def deco(cls: type[Action]) -> type[Action]:
        cls.name = name
        cls.params_model = model
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
