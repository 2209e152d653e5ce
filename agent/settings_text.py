"""How settings are explained to users: the closest real name for a misspelt one ("did you mean
X?"), the NODEMEDIC_* names that are not settings, a range in the setting's own units ("must be
from 1s to 1h") and a value as a user writes it (``2m``, not ``120.0``).

Pure helpers for agent.settings, which passes in what they need (so this module imports nothing
of it): the messages stay one line each.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from agent.structs.durations import format_duration

ENV_PREFIX = "NODEMEDIC_"
# NODEMEDIC_* variables of the project's own tooling, not settings: the systemd unit's argument
# list, and the build, install and test scripts' knobs. Every other NODEMEDIC_* name must be a
# setting, so that a misspelt one is refused instead of silently ignored.
NOT_SETTINGS = frozenset({
    "NODEMEDIC_ARGS", "NODEMEDIC_PIP_ARGS", "NODEMEDIC_STRESS_BUDGET", "NODEMEDIC_TEST_DEB",
    "NODEMEDIC_DEBIAN_MIRROR", "NODEMEDIC_STRICT_SKIPS",
})
# ... and whole families of them: the real-Kubernetes harness (hack/k8s, tests/real_cluster.py).
NOT_SETTINGS_PREFIXES = ("NODEMEDIC_K8S_",)


def did_you_mean(word: str, choices: Sequence[str]) -> str:
    """`` (did you mean X?)`` naming the closest of ``choices`` to a misspelt ``word``, or ""."""
    close = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.6)
    return f" (did you mean {close[0]}?)" if close else ""


def unknown_env_name(env: Iterable[str], known: set[str], check_collectors: bool) -> str | None:
    """The one-line error for the first NODEMEDIC_* name in ``env`` that is no setting, if any.
    ``check_collectors`` False: NODEMEDIC_COLLECTOR_* names cannot be told from typos here."""
    for key in sorted(env):
        if not key.startswith(ENV_PREFIX) or key in known or key in NOT_SETTINGS:
            continue
        if key.startswith(NOT_SETTINGS_PREFIXES):
            continue
        if not check_collectors and key.startswith(f"{ENV_PREFIX}COLLECTOR_"):
            continue
        return (f"${key}: unknown setting{did_you_mean(key, sorted(known))}; see "
                "`nodemedic run --help` for the NODEMEDIC_* variables")
    return None


_BOUND_WORDS = {"ge": "at least", "gt": "more than", "le": "at most", "lt": "less than"}


def bounds_message(metadata: Iterable[Any], duration: bool) -> str:
    """"must be from 1s to 1h" from a field's pydantic bounds (pydantic itself would say "greater
    than or equal to 1"), durations in their units; "" for a field without bounds."""
    bounds: dict[str, float] = {}
    for meta in metadata:
        for attr in _BOUND_WORDS:
            value = getattr(meta, attr, None)
            if isinstance(value, (int, float)):
                bounds[attr] = float(value)

    def show(v: float) -> str:
        return format_duration(v) if duration else f"{v:g}"

    if "ge" in bounds and "le" in bounds:
        return f"must be from {show(bounds['ge'])} to {show(bounds['le'])}"
    parts = [f"{_BOUND_WORDS[k]} {show(v)}" for k, v in bounds.items()]
    return "must be " + " and ".join(parts) if parts else ""


def as_written(value: Any, duration: bool) -> str:
    """A value as a user writes it: a duration in its units, a list comma-separated."""
    if duration and isinstance(value, (int, float)) and not isinstance(value, bool):
        return format_duration(value)
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, (tuple, list)):
        return ",".join(str(v) for v in value)
    if isinstance(value, Mapping):
        return ",".join(f"{k}={as_written(v, False)}" for k, v in value.items())
    return str(value)
