"""What a SIGHUP reload does, derived from each setting's :class:`agent.settings.OnReload`.

Called by agent.runtime.daemon's reload: :func:`plan_reload` compares every Settings field of the
running and the newly read settings (so a field added later is covered without touching this) and
says which changes apply now, whether the collectors must be rebuilt, and which settings need a
restart (they keep their running value and are reported).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from pydantic import ValidationError

from agent.settings import Settings, SettingsError, flag_name, reload_mode


@dataclass(frozen=True)
class ReloadPlan:
    """What a reload from ``running`` to newly read settings does, derived from the per-field
    :class:`OnReload` declarations.

    ``effective``: the settings the agent runs on afterwards (the new values, except that
    restart-only settings keep their running value); ``applied``: the changed fields that take
    effect now; ``rebuild_collectors``: whether one of them is read by collectors;
    ``restart_required``: field -> (running value, configured value) of changed restart-only
    settings."""

    effective: Settings
    applied: tuple[str, ...]
    rebuild_collectors: bool
    restart_required: Mapping[str, tuple[Any, Any]]


def plan_reload(running: Settings, configured: Settings) -> ReloadPlan:
    """Compare every field (so a field added later is covered without touching this)."""
    model = type(configured)
    changed = [f for f in model.model_fields if getattr(running, f) != getattr(configured, f)]
    restart = {f: (getattr(running, f), getattr(configured, f))
               for f in changed if reload_mode(f, model) == "restart"}
    applied = tuple(f for f in changed if f not in restart)
    effective = configured
    if restart:
        keep = {f: old for f, (old, _new) in restart.items()}
        try:
            effective = model.model_validate({**dict(configured), **keep})
        except ValidationError as exc:
            names = ", ".join(f"--{flag_name(f)}" for f in restart)
            msg = str(exc.errors()[0]["msg"]).removeprefix("Value error, ")
            raise SettingsError(
                f"the new settings only work with the new value of {names}, which needs a "
                f"restart: {msg}"
            ) from exc
    return ReloadPlan(effective, applied,
                      any(reload_mode(f, model) == "collectors" for f in applied), restart)
