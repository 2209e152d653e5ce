"""The conntrack table's size and kernel counters, and when to walk the whole table.

Used by agent.collectors.lbskew every tick. Walking the table (agent.netstate.conntrack) costs
CPU in proportion to its entries: about 0.95 s (user + system) for 262,144 entries with byte
accounting on a real kernel, mostly the kernel formatting /proc/net/nf_conntrack. What is cheap
at any size is read here every tick instead: ``nf_conntrack_count`` and ``nf_conntrack_max``
(two small sysctl files) and the per-CPU statistics of /proc/net/stat/nf_conntrack (one line
per CPU: drops, early drops, failed inserts, invalid packets), summed over CPUs.

:class:`WalkSchedule` spaces the walks so that on average they take at most a given share of one
core (``--lbskew.conntrack-cpu``): after a walk that cost ``c`` CPU seconds the next one is due
``c / share`` seconds later (and never more often than every tick). A small table is walked every
tick as before; a full 262,144-entry table every few minutes, at a bounded cost. Between walks the
collector serves the last walk's per-endpoint counts and says how old they are.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from pathlib import Path

# Columns of /proc/net/stat/nf_conntrack summed over CPUs and exported (the first column,
# "entries", repeats the global count on recent kernels and is not a per-CPU figure).
STAT_COLUMNS = ("invalid", "insert_failed", "drop", "early_drop", "search_restart")


@dataclass(frozen=True, slots=True)
class TableCounts:
    """What the kernel says about the conntrack table without listing it."""

    entries: int | None  # nf_conntrack_count
    limit: int | None  # nf_conntrack_max
    stats: dict[str, int] = field(default_factory=dict)  # STAT_COLUMNS summed over CPUs


def _read_int(path: Path) -> int | None:
    try:
        return int(path.read_bytes().strip())
    except (OSError, ValueError):
        return None


def parse_stat(text: str) -> dict[str, int]:
    """Sum the hexadecimal per-CPU columns of /proc/net/stat/nf_conntrack by name."""
    lines = text.split("\n")
    names = lines[0].split()
    want = {i: n for i, n in enumerate(names) if n in STAT_COLUMNS}
    out = dict.fromkeys(want.values(), 0)
    for line in lines[1:]:
        cols = line.split()
        if len(cols) != len(names):
            continue
        try:
            for i, name in want.items():
                out[name] += int(cols[i], 16)
        except ValueError:
            continue
    return out


def read_counts(procfs: Path) -> TableCounts:
    """The table's size, limit and summed per-CPU counters (each absent when unreadable)."""
    sysctl = procfs / "sys" / "net" / "netfilter"
    stats: dict[str, int] = {}
    with contextlib.suppress(OSError, UnicodeDecodeError, IndexError):
        stats = parse_stat((procfs / "net" / "stat" / "nf_conntrack").read_text())
    return TableCounts(_read_int(sysctl / "nf_conntrack_count"),
                       _read_int(sysctl / "nf_conntrack_max"), stats)


def parse_share(text: str) -> float:
    """``"0.2%"`` -> 0.002 (share of one core)."""
    return float(text.rstrip("%")) / 100.0


class WalkSchedule:
    """Decides whether this tick walks the whole table; thread-confined to the collector."""

    def __init__(self, share: float) -> None:
        if not share > 0.0:
            raise ValueError(f"the walk's share of a core must be positive, got {share!r}")
        self.share = share  # of one core; 1.0 or more: every tick
        self.last_at: float | None = None  # clock time of the last walk
        self.last_cpu = 0.0  # CPU seconds it took

    def due(self, now: float) -> bool:
        if self.last_at is None or self.share >= 1.0:
            return True
        return now - self.last_at >= self.interval()

    def interval(self) -> float:
        """Seconds between walks at the last walk's cost (0: every tick)."""
        return 0.0 if self.share >= 1.0 else self.last_cpu / self.share

    def record(self, now: float, cpu_seconds: float) -> None:
        self.last_at, self.last_cpu = now, cpu_seconds

    def forget(self) -> None:
        """Walk on the next tick (the source changed or failed)."""
        self.last_at = None

