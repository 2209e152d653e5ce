"""The syntax of alert selectors and maintenance windows, parsed and evaluated without I/O.

Declared once here and used by agent.settings (``--safety.alert-gate-alerts``,
``--safety.allow-windows``, ``--safety.deny-windows``), by the rule schema (a rule's ``gates:``)
and by the safety gate's checks (agent.safety.alertgate, agent.safety.windows). Every parser
raises ValueError with a message saying what is allowed, so settings and check-rules can name
the setting or the file:line.

An alert selector is an alert name (``KubeAPIDown``) or Prometheus-style label matchers, braces
optional: ``{alertname="NodeDown", severity=~"critical|page"}``. Regular expressions are
anchored, as in Prometheus; a label an alert does not have matches as the empty string.

A window is ``[DAYS] HH:MM-HH:MM ZONE``: DAYS is ``Mon-Fri``, ``Sat,Sun``, ``Mon,Wed-Fri`` or
``daily`` (the default), ZONE an IANA time zone (``Europe/Berlin``, ``UTC``). The range is
local wall time, start included, end excluded; ``24:00`` ends at midnight and an end before the
start runs overnight into the next day (``Fri 22:00-06:00`` is Friday night to Saturday 06:00).
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

DAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
# How far ahead the next opening of the windows is searched (a weekly schedule repeats by then).
LOOKAHEAD_DAYS = 8

_NAME = re.compile(r"^[A-Za-z_:][A-Za-z0-9_:]*$")
_MATCHER = re.compile(
    r'\s*([A-Za-z_][A-Za-z0-9_]*)\s*(=~|!~|!=|=)\s*("(?:[^"\\]|\\.)*"|[^,\s"}{]*)\s*(?:,|$)'
)
_WINDOW = re.compile(
    r"^\s*(?:(?P<days>[A-Za-z][A-Za-z,\-]*)\s+)?(?P<start>\d{1,2}:\d{2})\s*-\s*"
    r"(?P<end>\d{1,2}:\d{2})\s+(?P<zone>\S+)\s*$"
)


@dataclass(frozen=True, slots=True)
class LabelMatcher:
    """One matcher of an alert selector."""

    name: str
    op: str  # =, !=, =~, !~
    value: str

    def matches(self, labels: Mapping[str, str]) -> bool:
        have = labels.get(self.name, "")
        if self.op == "=":
            return have == self.value
        if self.op == "!=":
            return have != self.value
        hit = _anchored(self.value).fullmatch(have) is not None
        return hit if self.op == "=~" else not hit

    def __str__(self) -> str:
        escaped = self.value.replace("\\", "\\\\").replace('"', '\\"')
        return f'{self.name}{self.op}"{escaped}"'


@dataclass(frozen=True, slots=True)
class AlertSelector:
    """Alerts whose labels satisfy every matcher; ``text`` is how the user wrote it."""

    text: str
    matchers: tuple[LabelMatcher, ...]

    def matches(self, labels: Mapping[str, str]) -> bool:
        return all(m.matches(labels) for m in self.matchers)


@functools.lru_cache(maxsize=256)
def _anchored(pattern: str) -> re.Pattern[str]:
    return re.compile(f"(?:{pattern})")


@functools.lru_cache(maxsize=1024)
def parse_selector(text: str) -> AlertSelector:
    """Parse one alert selector (see the module docstring); ValueError says what is wrong."""
    body = text.strip()
    if _NAME.match(body):
        return AlertSelector(text, (LabelMatcher("alertname", "=", body),))
    if body.startswith("{"):
        if not body.endswith("}"):
            raise ValueError(f"alert selector {text!r}: missing closing brace")
        body = body[1:-1].strip()
    if not body:
        raise ValueError(f"alert selector {text!r} is empty: name an alert or give matchers")
    matchers: list[LabelMatcher] = []
    pos = 0
    while pos < len(body):
        m = _MATCHER.match(body, pos)
        if m is None or m.end() == pos:
            raise ValueError(
                f"alert selector {text!r}: expected an alert name or matchers like "
                f'alertname="X", severity=~"critical|page" (at {body[pos:]!r})'
            )
        name, op, raw = m.group(1), m.group(2), m.group(3)
        value = (raw[1:-1].replace('\\"', '"').replace("\\\\", "\\")
                 if raw.startswith('"') else raw)
        if op in ("=~", "!~"):
            if len(value) > 512:
                raise ValueError(f"alert selector {text!r}: regular expression over 512 chars")
            try:
                _anchored(value)
            except re.error as exc:
                raise ValueError(f"alert selector {text!r}: bad regular expression: {exc}") from exc
        matchers.append(LabelMatcher(name, op, value))
        pos = m.end()
    return AlertSelector(text, tuple(matchers))


def check_selectors(values: Iterable[str]) -> tuple[str, ...]:
    """Validate a list of selectors (for pydantic validators); returns them unchanged."""
    out = tuple(values)
    for v in out:
        parse_selector(v)
    return out


@dataclass(frozen=True, slots=True)
class Window:
    """A weekly time range in one time zone (see the module docstring)."""

    text: str
    days: frozenset[int]  # 0 = Monday
    start: int  # minutes after local midnight
    end: int  # minutes after local midnight of the start day; may exceed 1440 (overnight)
    zone: str

    def contains(self, ts: float) -> bool:
        """Whether Unix time ``ts`` falls inside the window."""
        local = datetime.fromtimestamp(ts, ZoneInfo(self.zone))
        minute = local.hour * 60 + local.minute
        if local.weekday() in self.days and self.start <= minute < self.end:
            return True
        yesterday = (local.weekday() - 1) % 7
        return self.end > 1440 and yesterday in self.days and minute < self.end - 1440

    def edges(self, ts: float, days: int) -> list[float]:
        """Unix times at which this window opens or closes, from the local day of ``ts`` on."""
        zone = ZoneInfo(self.zone)
        first = datetime.fromtimestamp(ts, zone).replace(hour=0, minute=0, second=0,
                                                         microsecond=0, tzinfo=None)
        out: list[float] = []
        for d in range(-1, days + 1):
            day = first + timedelta(days=d)
            if day.weekday() not in self.days:
                continue
            for minute in (self.start, self.end):
                out.append((day + timedelta(minutes=minute)).replace(tzinfo=zone).timestamp())
        return out


def _minutes(hhmm: str, text: str, allow_24: bool) -> int:
    hh, mm = (int(x) for x in hhmm.split(":"))
    if mm > 59 or hh > 24 or (hh == 24 and (mm or not allow_24)):
        raise ValueError(f"window {text!r}: {hhmm} is not a time of day (00:00 to 24:00)")
    return hh * 60 + mm


def _days(spec: str | None, text: str) -> frozenset[int]:
    if spec is None or spec.lower() in ("daily", "everyday"):
        return frozenset(range(7))
    out: set[int] = set()
    for part in spec.lower().split(","):
        lo, _, hi = part.partition("-")
        if lo not in DAYS or (hi and hi not in DAYS):
            raise ValueError(
                f"window {text!r}: {part!r} is not a day or day range like Mon-Fri or Sat,Sun"
            )
        a, b = DAYS.index(lo), DAYS.index(hi or lo)
        out.update(range(a, b + 1) if a <= b else [*range(a, 7), *range(0, b + 1)])
    return frozenset(out)


@functools.lru_cache(maxsize=1024)
def parse_window(text: str) -> Window:
    """Parse one window (see the module docstring); ValueError says what is wrong."""
    m = _WINDOW.match(text)
    if m is None:
        raise ValueError(
            f"window {text!r}: expected [DAYS] HH:MM-HH:MM ZONE, "
            "e.g. 'Mon-Fri 09:00-17:00 Europe/Berlin'"
        )
    try:
        ZoneInfo(m["zone"])
    except (ZoneInfoNotFoundError, ValueError) as exc:
        raise ValueError(f"window {text!r}: unknown time zone {m['zone']!r}") from exc
    start = _minutes(m["start"], text, allow_24=False)
    end = _minutes(m["end"], text, allow_24=True)
    if end == start:
        raise ValueError(f"window {text!r}: starts and ends at the same time")
    if end < start:
        end += 1440  # overnight
    return Window(text, _days(m["days"], text), start, end, m["zone"])


def check_windows(values: Iterable[str]) -> tuple[str, ...]:
    """Validate a list of windows (for pydantic validators); returns them unchanged."""
    out = tuple(values)
    for v in out:
        parse_window(v)
    return out


def windows_allow(allow: Sequence[Sequence[Window]], deny: Sequence[Window], ts: float) -> bool:
    """Whether disruptive actions may run at ``ts``: inside a window of every non-empty ``allow``
    group (global and rule) and inside no ``deny`` window."""
    if any(w.contains(ts) for w in deny):
        return False
    return all(not group or any(w.contains(ts) for w in group) for group in allow)


def next_opening(allow: Sequence[Sequence[Window]], deny: Sequence[Window],
                 ts: float) -> float | None:
    """The first Unix time after ``ts`` at which :func:`windows_allow` holds, or None if there
    is none in the next LOOKAHEAD_DAYS days."""
    edges: set[float] = set()
    for w in [*deny, *(w for group in allow for w in group)]:
        edges.update(e for e in w.edges(ts, LOOKAHEAD_DAYS) if e > ts)
    for edge in sorted(edges):
        if windows_allow(allow, deny, edge):
            return edge
    return None
