"""Maintenance windows and the cluster-wide freeze, as the safety gate checks them.

Called by agent.safety.gate for every first pass and continuing pass of a gated action (not for
undo requests). Two checks, each a denial that holds the step until it clears:

* ``freeze``: the key ``freeze`` of the pause ConfigMap (``--safety.pause-configmap``, read by
  agent.safety.pause with the pause switch, so every agent sees it within one tick). Its value
  is ``true`` (frozen until removed), a mapping ``{until: 2026-12-27T08:00:00Z, reason: ...}``,
  or an RFC 3339 time followed by the reason (``2026-12-27T08:00:00Z year-end freeze``); any
  other text freezes until removed, with that text as the reason. ``false``, ``no``, ``off``,
  ``0`` and empty mean no freeze. A freeze whose ``until`` has passed ends by itself, but not
  silently: while the key is still set /status shows ``expired_at`` with a detail and the agent
  logs ``freeze_expired`` once per value (a freeze written with last year's date by mistake is
  visible, not a quiet "not frozen"); an ``until`` that cannot be read freezes until removed
  (fail safe). Times without a zone are UTC.
  A freeze holds every disruptive action and every action of ``--safety.gated-actions``; a
  rule cannot opt out of it.
* ``window``: ``--safety.allow-windows`` / ``--safety.deny-windows`` and a rule's
  ``gates.allow_windows`` / ``gates.deny_windows`` (agent.structs.gatespec). An action runs only
  inside a window of every non-empty allow list (global and rule) and inside no deny window; the
  detail says when the windows open next.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import structlog
import yaml

from agent.structs.gatespec import Window, next_opening, parse_window, windows_allow
from agent.structs.metrics import Family, MetricSpec
from agent.structs.times import rfc3339

log = structlog.get_logger("nodemedic.safety.windows")

FREEZE_KEY = "freeze"
_OFF = ("", "false", "no", "off", "0")
_ON = ("true", "yes", "on", "1")

FREEZE_ACTIVE = MetricSpec(
    "nodemedic_freeze_active",
    "1 while a cluster-wide freeze (key freeze of --safety.pause-configmap) holds disruptive "
    "actions.",
    "gauge",
)
WINDOW_OPEN = MetricSpec(
    "nodemedic_maintenance_window_open",
    "1 when --safety.allow-windows / --safety.deny-windows let gated actions run now (1 without "
    "windows); rules' own windows are not included.",
    "gauge",
)
METRICS = (FREEZE_ACTIVE, WINDOW_OPEN)


@dataclass(frozen=True, slots=True)
class Freeze:
    """A freeze in force: why, and until when (Unix time; None = until removed)."""

    reason: str
    until: float | None
    note: str = ""  # e.g. that the until could not be read

    def describe(self, configmap: str) -> str:
        until = f" until {rfc3339(self.until)}" if self.until is not None else " until removed"
        why = f": {self.reason}" if self.reason else ""
        note = f" ({self.note})" if self.note else ""
        return f"frozen cluster-wide by {configmap} key {FREEZE_KEY}{until}{why}{note}"


def _time(value: Any) -> float | None:
    """An RFC 3339 time (string, or the datetime YAML made of it) as Unix time; None if not."""
    if isinstance(value, datetime):
        dt = value
    elif isinstance(value, str):
        try:
            dt = datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
        except ValueError:
            return None
    else:
        return None
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    return dt.timestamp()


def _read_freeze(raw: str | None) -> Freeze | None:
    """The freeze a ConfigMap value asks for, whenever it ends (None: the value means no freeze)."""
    text = (raw or "").strip()
    if text.lower() in _OFF:
        return None
    if text.lower() in _ON:
        return Freeze("", None)
    return _parse_value(text)


def parse_freeze(raw: str | None, now: float) -> Freeze | None:
    """The freeze a ConfigMap value means at Unix time ``now`` (None: not frozen)."""
    freeze = _read_freeze(raw)
    if freeze is not None and freeze.until is not None and freeze.until <= now:
        return None  # it ended by itself
    return freeze


def expired_freeze(raw: str | None, now: float) -> Freeze | None:
    """The freeze a value still set in the ConfigMap asked for if it has ended, else None."""
    freeze = _read_freeze(raw)
    if freeze is not None and freeze.until is not None and freeze.until <= now:
        return freeze
    return None


def _parse_value(text: str) -> Freeze:
    if text.startswith("{"):
        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError:
            data = None
        if isinstance(data, dict):
            reason = str(data.get("reason") or "")
            if data.get("until") in (None, ""):
                return Freeze(reason, None)
            until = _time(data["until"])
            if until is None:
                return Freeze(reason, None, f"unreadable until {data['until']!r}: until removed")
            return Freeze(reason, until)
        return Freeze(text, None, "unreadable value: until removed")
    first, _, rest = text.partition(" ")
    until = _time(first) if first[:1].isdigit() else None
    if until is not None:
        return Freeze(rest.strip(), until)
    return Freeze(text, None)


def windows_of(texts: Sequence[str]) -> tuple[Window, ...]:
    """Parsed windows (validated where they were configured; parsing is cached)."""
    return tuple(parse_window(t) for t in texts)


def window_denial(allow: Sequence[Sequence[Window]], deny: Sequence[Window],
                  now: float) -> str | None:
    """None when the windows let an action run at ``now``, else the detail of the denial."""
    return _denial(allow, deny, now)[0]


def _denial(allow: Sequence[Sequence[Window]], deny: Sequence[Window],
            now: float) -> tuple[str | None, float | None]:
    """(detail of the denial or None, the next opening when denied), the opening searched once."""
    if windows_allow(allow, deny, now):
        return None, None
    inside = [w.text for w in deny if w.contains(now)]
    why = (f"inside deny window {', '.join(repr(t) for t in inside)}" if inside else
           "outside the allow windows " + "; ".join(
               ", ".join(repr(w.text) for w in group) for group in allow if group))
    opens = next_opening(allow, deny, now)
    when = (f"next opening {rfc3339(opens)}" if opens is not None
            else "no opening in the next 8 days")
    return f"{why}; {when}", opens


class WindowState:
    """What the gate last knew about the global windows and the freeze, for metrics and
    /status (the checks themselves are the functions above)."""

    def __init__(self) -> None:
        self.freeze_raw: str | None = None
        self.freeze_known = False  # False until the ConfigMap was read once

    def saw_freeze(self, raw: str | None, now: float) -> None:
        if raw != self.freeze_raw or not self.freeze_known:
            ended = expired_freeze(raw, now)
            if ended is not None and ended.until is not None:
                log.warning("freeze_expired", value=raw, ended=rfc3339(ended.until),
                            detail="the freeze key is still set but its time has passed: "
                                   "not frozen")
        self.freeze_raw, self.freeze_known = raw, True

    def families(self, allow: Sequence[Window], deny: Sequence[Window],
                 now: float) -> list[Family]:
        frozen, open_ = FREEZE_ACTIVE.family(), WINDOW_OPEN.family()
        if self.freeze_known:
            frozen.add((), float(parse_freeze(self.freeze_raw, now) is not None))
        open_.add((), float(windows_allow([allow], deny, now)))
        return [frozen, open_]

    def status(self, allow: Sequence[Window], deny: Sequence[Window], now: float,
               configmap: str) -> dict[str, Any]:
        denial, opens = _denial([allow], deny, now)
        f = parse_freeze(self.freeze_raw, now)
        ended = expired_freeze(self.freeze_raw, now) if f is None else None
        ended_at = rfc3339(ended.until) if ended is not None and ended.until is not None else None
        return {
            "windows": {
                "allow": [w.text for w in allow],
                "deny": [w.text for w in deny],
                "open": denial is None,
                "detail": denial or "",
                "next_opening": rfc3339(opens) if opens is not None else None,
            },
            "freeze": {
                "active": f is not None,
                "known": self.freeze_known,
                "reason": f.reason if f else "",
                "until": rfc3339(f.until) if f is not None and f.until is not None else None,
                "expired_at": ended_at,
                "detail": (f.describe(configmap) if f is not None else
                           f"{configmap} key {FREEZE_KEY} asked for a freeze until {ended_at}, "
                           "which has passed: not frozen (remove the key)" if ended_at else ""),
            },
        }
