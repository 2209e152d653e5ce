"""Registry of collectors by name: ``@register("cgroup", default_enabled=True)``.

Read by agent.cli (which names ``--collector.NAME`` accepts), agent.runtime.daemon (which
collectors to build) and agent.rules (which metric names exist). Adding a collector means adding
one module and listing it in ``_BUILTIN_MODULES``.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable

from agent.collectors.base import Collector
from agent.structs.metrics import MetricSpec

_REGISTRY: dict[str, type[Collector]] = {}

# Modules imported by load_builtin(); each registers its collector on import.
_BUILTIN_MODULES = (
    "agent.collectors.cgroup",
    "agent.collectors.kubelet",
    "agent.collectors.host",
    "agent.collectors.node",
    "agent.collectors.lbskew",
    "agent.collectors.problems",
    "agent.collectors.peerclock",
)


def register(
    name: str, *, default_enabled: bool = True
) -> Callable[[type[Collector]], type[Collector]]:
    """Class decorator that registers a collector under ``name``."""

    def deco(cls: type[Collector]) -> type[Collector]:
        if name in _REGISTRY and _REGISTRY[name] is not cls:
            raise ValueError(f"collector {name!r} registered twice")
        cls.name = name
        cls.default_enabled = default_enabled
        _REGISTRY[name] = cls
        return cls

    return deco


def load_builtin() -> None:
    """Import every built-in collector module (each registers itself)."""
    for mod in _BUILTIN_MODULES:
        importlib.import_module(mod)


def collectors() -> dict[str, type[Collector]]:
    """All registered collectors by name (call :func:`load_builtin` first)."""
    return dict(sorted(_REGISTRY.items()))


def metric_catalogue() -> dict[str, tuple[str, MetricSpec]]:
    """Metric name -> (collector name, spec) over all registered collectors."""
    out: dict[str, tuple[str, MetricSpec]] = {}
    for cname, cls in collectors().items():
        for spec in cls.metrics:
            out[spec.name] = (cname, spec)
    return out
