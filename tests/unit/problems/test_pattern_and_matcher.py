"""NPD's pattern dialect and match rule: RE2 translation, end-anchored buffer matching, counts,
and the shipped defaults matching the kernel's own wording."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from agent.problems.loader import check_problems
from agent.problems.matcher import Matcher
from agent.problems.model import LogMonitor, LogRule, LogSource
from agent.problems.pattern import PatternError, compile_rule, translate

REPO = Path(__file__).resolve().parents[3]


def rule(pattern: str, **kw: object) -> LogRule:
    regex, multi = compile_rule(pattern)
    return LogRule(kw.pop("kind", "temporary"), str(kw.pop("reason", "R")), pattern,  # type: ignore[arg-type]
                   regex, multi, **kw)  # type: ignore[arg-type]


def monitor(*rules: LogRule, buffer: int = 10) -> LogMonitor:
    return LogMonitor("m", "f", LogSource("kmsg", "/dev/kmsg"), buffer, (), rules)


def test_re2_differences_are_translated_or_rejected() -> None:
    """\\z, POSIX classes, \\Q..\\E and (?<name>) translate; lookaround, backreferences and
    Unicode classes, which Python would treat differently or RE2 refuses, are errors."""
    assert translate(r"a\z") == r"a\Z"
    assert re.fullmatch(translate("[[:digit:]]+"), "123")
    assert translate(r"\Q1.5*\E") == re.escape("1.5*")
    assert translate("(?<n>x)") == "(?P<n>x)"
    for bad in ("a(?=b)", "(a)\\1", r"\pL", r"a\Z", "[[:nope:]]"):
        with pytest.raises(PatternError):
            translate(bad)
    # RE2's \d is ASCII only; Python's would match Arabic-Indic digits.
    assert compile_rule(r"\d+")[0].search("١٢٣") is None


def test_end_anchored_like_npd() -> None:
    """A pattern must match up to the end of the newest line (NPD appends \\z)."""
    m = Matcher(monitor(rule("Remounting filesystem read-only")))
    assert m.feed(0, "EXT4-fs (sda1): Remounting filesystem read-only")
    assert not m.feed(0, "Remounting filesystem read-only ... not really")


def test_multiline_pattern_spans_the_buffer() -> None:
    """A pattern with \\n matches the last lines joined, and the Event message is those lines."""
    m = Matcher(monitor(rule(r"first \d+\nsecond")))
    assert not m.feed(0, "first 1")
    hits = m.feed(1, "second")
    assert [h.message for h in hits] == ["first 1\nsecond"]


def test_min_count_within_window() -> None:
    """A rule with min_count fires once per N matches within its window, not on each."""
    m = Matcher(monitor(rule("Started kubelet.service.", kind="permanent", condition="C",
                             min_count=3, window=60.0)))
    times = [0, 10, 100, 110, 120]  # the first two expire before the third match
    fired = [bool(m.feed(t, "Started kubelet.service.")) for t in times]
    assert fired == [False, False, False, False, True]


def test_oom_victim_cgroup_comes_from_the_oom_kill_line() -> None:
    """The Killed process line is attributed to the task_memcg of the oom-kill line naming
    the same pid."""
    m = Matcher(monitor(rule(r"Killed process \d+ (.+) total-vm:\d+kB, anon-rss:\d+kB, "
                             r"file-rss:\d+kB.*", attribute="oom")))
    cg = "/kubepods/burstable/pod0b7d3c44-1f43-4b7a-9d2c-1c2a3b4c5d6e/abc"
    m.feed(0, "oom-kill:constraint=CONSTRAINT_MEMCG,nodemask=(null),cpuset=abc,"
              f"mems_allowed=0,oom_memcg={cg},task_memcg={cg},task=python3,pid=4242,uid=0")
    (hit,) = m.feed(0, "Memory cgroup out of memory: Killed process 4242 (python3) "
                       "total-vm:540000kB, anon-rss:65000kB, file-rss:4kB, shmem-rss:0kB, "
                       "UID:0 pgtables:200kB oom_score_adj:0")
    assert hit.cgroup == cg and hit.pid == 4242


KERNEL_LINES = {
    # reason -> a line in the kernel's own wording
    "FilesystemIsReadOnly": "EXT4-fs (nvme0n1p1): Remounting filesystem read-only",
    "TaskHung": "INFO: task jbd2/sda1-8:312 blocked for more than 120 seconds.",
    "OOMKilling": "Memory cgroup out of memory: Killed process 4242 (python3) total-vm:540000kB,"
                  " anon-rss:65000kB, file-rss:4kB, shmem-rss:0kB, UID:0 pgtables:200kB "
                  "oom_score_adj:0",
    "ConntrackTableFull": "nf_conntrack: nf_conntrack: table full, dropping packet",
    "NvidiaFatalXid": "NVRM: Xid (PCI:0000:3b:00): 79, pid=1234, name=python, GPU has fallen "
                      "off the bus.",
    "NvidiaXid": "NVRM: Xid (PCI:0000:3b:00): 13, pid=1234, name=python, Graphics Exception",
    "CorrectableMemoryError": "EDAC MC0: 1 CE memory scrubbing error on "
                              "CPU_SrcID#0_Ha#0_Chan#0_DIMM#0 (channel:0 slot:0 page:0x0)",
    "UncorrectableMemoryError": "EDAC MC1: 1 UE memory read error on CPU_SrcID#1_MC#0_Chan#2",
    "MachineCheckEvent": "mce: [Hardware Error]: Machine check events logged",
    "XfsHasShutdown": "XFS (dm-0): Corruption of in-memory data detected.  Shutting down "
                      "filesystem",
}


def test_shipped_definitions_match_the_kernels_wording() -> None:
    """Each shipped kernel rule matches its line, and only the expected reasons do."""
    ps, problems = check_problems([REPO / "problems"])
    assert problems == []
    matchers = [Matcher(m) for m in ps.log_monitors if m.source.plugin == "kmsg"]
    for reason, line in KERNEL_LINES.items():
        got = {h.rule.reason for mt in matchers for h in mt.feed(0, line)}
        assert reason in got, (reason, got)
        assert not ({"NvidiaXid", "NvidiaFatalXid"} <= got)
