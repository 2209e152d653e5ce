"""Parse Prometheus/Go-style durations ("500ms", "10s", "2m", "1h30m", "1d") into seconds.

Used by agent.settings (flags) and agent.rules (``for:``, windows, cooldowns) so both accept the
same spelling. Plain numbers are seconds.
"""

from __future__ import annotations

import re

_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, "w": 604800.0}
_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d|w)")


def parse_duration(text: str | float | int) -> float:
    """Return seconds; raise ValueError with the accepted spelling on anything else."""
    if isinstance(text, bool):
        raise ValueError("expected a duration like 10s, 2m or 1h30m, got a boolean")
    if isinstance(text, (int, float)):
        if text < 0:
            raise ValueError("duration must not be negative")
        return float(text)
    s = str(text).strip()
    try:
        value = float(s)
    except ValueError:
        pass
    else:
        if value < 0:
            raise ValueError("duration must not be negative")
        return value
    pos, total = 0, 0.0
    for m in _PART.finditer(s):
        if m.start() != pos:
            break
        total += float(m.group(1)) * _UNITS[m.group(2)]
        pos = m.end()
    if pos != len(s) or not s:
        raise ValueError(f"expected a duration like 10s, 2m or 1h30m, got {text!r}")
    return total


def format_duration(seconds: float) -> str:
    """Inverse of parse_duration for display, in the units a user would write: 90 -> '1m30s',
    0.5 -> '500ms', 1.5 -> '1.5s', 7200 -> '2h'. Below 10s milliseconds are kept; from 10s
    on the value is rounded to whole seconds (an elapsed 2m3.456s reads as 2m3s)."""
    if seconds <= 0:
        return "0s"
    if seconds < 1:
        return f"{round(seconds * 1000, 3):g}ms"
    if seconds < 10:
        return f"{round(seconds, 3):g}s"
    out, rest = [], round(seconds)
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60), ("s", 1)):
        if rest >= size:
            out.append(f"{rest // size}{unit}")
            rest %= size
    return "".join(out)
