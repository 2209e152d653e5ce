"""Apply one monitor's rules to its lines with NPD's semantics (pure; runs in a worker thread).

Each line is pushed into a ring of ``bufferSize`` messages; a rule matches when its pattern
(anchored at the end, see agent.problems.pattern) matches the ring joined by newlines. Rules that
cannot span lines are tried on the newest line alone, first through one combined alternation
(one regex pass per line instead of one per rule: the common case is "no rule matches"). A
rule with ``min_count`` fires once it matched that often within its ``window``. OOM and hung-task
rules get their victim's cgroup attached (agent.problems.workload) so the detector can report a
pod's problem against the pod.
"""

from __future__ import annotations

import re
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass

from agent.problems.model import LogMonitor, LogRule
from agent.problems.workload import OOM_KILL, victim_pid

_RECENT_OOM = 64  # pid -> memcg of the latest oom-kill lines, for the "Killed process" line


@dataclass(frozen=True, slots=True)
class Hit:
    """A rule matched: what, when, the matched lines, and the victim's cgroup if attributed."""

    monitor: str
    rule: LogRule
    ts: float
    message: str
    cgroup: str = ""
    pid: int | None = None
    live: bool = True  # logged after the agent started (False: lookback backlog)


class Matcher:
    """One monitor's match state: the line ring, count windows and recent OOM cgroups."""

    def __init__(self, monitor: LogMonitor,
                 cgroup_of: Callable[[int], str] = lambda _pid: "") -> None:
        self.monitor = monitor
        self._ring: deque[str] = deque(maxlen=monitor.buffer_size)
        self._single = [r for r in monitor.rules if not r.multiline]
        self._multi = [r for r in monitor.rules if r.multiline]
        self._prefilter = _combine(self._single)
        self._counts: dict[int, deque[float]] = {
            i: deque(maxlen=r.min_count) for i, r in enumerate(monitor.rules) if r.min_count > 1
        }
        self._index = {id(r): i for i, r in enumerate(monitor.rules)}
        self._oom: OrderedDict[int, str] = OrderedDict()
        self._cgroup_of = cgroup_of
        self.watch_oom = any(r.attribute == "oom" for r in monitor.rules)

    def feed(self, ts: float, message: str) -> list[Hit]:
        """Push one line; return the hits it completes."""
        self._ring.append(message)
        if self.watch_oom and "oom-kill:" in message:
            m = OOM_KILL.search(message)
            if m:
                self._oom[int(m.group(2))] = m.group(1)
                while len(self._oom) > _RECENT_OOM:
                    self._oom.popitem(last=False)
        hits: list[Hit] = []
        if self._single and (self._prefilter is None or self._prefilter.search(message)):
            for r in self._single:
                if r.regex.search(message):
                    self._hit(hits, r, ts, message)
        if self._multi:
            text = "\n".join(self._ring)
            for r in self._multi:
                m = r.regex.search(text)
                if m:
                    lines = text[m.start():].count("\n") + 1
                    self._hit(hits, r, ts, "\n".join(list(self._ring)[-lines:]))
        return hits

    def _hit(self, hits: list[Hit], rule: LogRule, ts: float, message: str) -> None:
        idx = self._index[id(rule)]
        window = self._counts.get(idx)
        if window is not None:
            window.append(ts)
            if len(window) < rule.min_count or ts - window[0] > rule.window:
                return
            window.clear()  # fire once per min_count matches within the window
        cgroup, pid = "", None
        if rule.attribute != "none":
            pid = victim_pid(rule.attribute, message)
            if pid is not None:
                cgroup = self._oom.get(pid, "") if rule.attribute == "oom" else ""
                cgroup = cgroup or self._cgroup_of(pid)
        hits.append(Hit(self.monitor.name, rule, ts, message, cgroup, pid))


def _combine(rules: list[LogRule]) -> re.Pattern[str] | None:
    """One alternation of all single-line patterns, or None when they cannot be combined
    (inline flags, clashing group names): then every rule is tried on every line."""
    if not rules or any(r.regex.pattern.startswith("(?") and not
                        r.regex.pattern.startswith("(?:") for r in rules):
        return None
    try:
        return re.compile("|".join(r.regex.pattern for r in rules), re.ASCII)
    except re.error:
        return None
