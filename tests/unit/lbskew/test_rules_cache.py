"""--lbskew.rules-min-interval: iptables-save runs at most once per interval, conntrack every tick,
and a failing refresh serves the last good rules, marked stale, for a bounded time."""

from __future__ import annotations

import asyncio
import os
import shutil
import stat
from pathlib import Path
from typing import Any

import pytest
from helpers_lbskew import fixture

from agent.collectors.base import CollectorContext
from agent.collectors.lbskew import RULES_STALE_GRACE, LbSkewCollector
from agent.settings import settings_for_tests
from agent.structs.metrics import Family

LAB_RULES = fixture("lab_kubeproxy_like_iptables_save_nat.txt")
LAB_PROC = fixture("lab_kubeproxy_like_proc_net_nf_conntrack.txt")
WEB = {"namespace": "shop", "service": "web", "port": "http"}


class FakeClock:
    """A monotonic clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class RecordingSave:
    """A fake iptables-save: counts its runs in a file, fails while ``fail`` is set, hangs
    while ``hang`` is."""

    def __init__(self, tmp_path: Path) -> None:
        self.counter = tmp_path / "runs"
        self.fail_flag = tmp_path / "fail"
        self.hang_flag = tmp_path / "hang"
        self.path = tmp_path / "iptables-save"
        self.path.write_text(
            "#!/bin/sh\n"
            f"echo run >> {self.counter}\n"
            f"if [ -e {self.hang_flag} ]; then exec sleep 30; fi\n"
            f'if [ -e {self.fail_flag} ]; then echo "nat table locked" >&2; exit 4; fi\n'
            f'[ "$1 $2" = "-t nat" ] && cat {LAB_RULES}\n'
        )
        self.path.chmod(self.path.stat().st_mode | stat.S_IXUSR)

    @property
    def runs(self) -> int:
        return len(self.counter.read_text().splitlines()) if self.counter.exists() else 0

    def fail(self, on: bool) -> None:
        if on:
            self.fail_flag.touch()
        else:
            self.fail_flag.unlink()


def _procfs(tmp_path: Path) -> Path:
    net = tmp_path / "proc" / "net"
    net.mkdir(parents=True)
    shutil.copy(LAB_PROC, net / "nf_conntrack")
    return tmp_path / "proc"


def _collector(tmp_path: Path, clock: FakeClock, **overrides: Any) -> LbSkewCollector:
    overrides.setdefault("lbskew_conntrack_command", "/nonexistent/conntrack")
    settings = settings_for_tests(path_procfs=_procfs(tmp_path), **overrides)
    return LbSkewCollector(CollectorContext(settings), clock=clock)


def _gauge(fams: list[Family], name: str) -> float | None:
    for fam in fams:
        if fam.name == name:
            return fam.samples[0][1]
    return None


def _connections(fams: list[Family]) -> float | None:
    for fam in fams:
        if fam.name == "nodemedic_service_connections":
            for labels, value in fam.series():
                if all(labels.get(k) == v for k, v in WEB.items()):
                    return value
    return None


def _set_connections(tmp_path: Path, keep: int) -> None:
    """Rewrite proc conntrack with only the first ``keep`` lines (fewer connections)."""
    lines = LAB_PROC.read_text().splitlines(keepends=True)
    (tmp_path / "proc" / "net" / "nf_conntrack").write_text("".join(lines[:keep]))


async def test_command_runs_once_within_the_interval_and_conntrack_every_tick(
    tmp_path: Path,
) -> None:
    """Six ticks 5 s apart under a 30 s interval: one iptables-save run, fresh conntrack each."""
    save, clock = RecordingSave(tmp_path), FakeClock()
    c = _collector(tmp_path, clock, lbskew_iptables_save_command=str(save.path),
                   lbskew_rules_min_interval=30.0)
    first = await c.collect()
    assert _connections(first) == 40
    ages = []
    for _ in range(5):
        clock.now += 5.0
        fams = await c.collect()
        ages.append(_gauge(fams, "nodemedic_lbskew_rules_age_seconds"))
        assert _connections(fams) == 40  # cached rules still name the Service
    assert save.runs == 1
    assert ages == [5.0, 10.0, 15.0, 20.0, 25.0]
    _set_connections(tmp_path, 0)
    clock.now += 1.0
    fams = await c.collect()
    assert save.runs == 1
    assert _connections(fams) == 0  # conntrack was read again although the rules were not


async def test_command_runs_again_once_the_rules_are_older_than_the_interval(
    tmp_path: Path,
) -> None:
    """Past the interval the next tick runs iptables-save again and the age drops to 0."""
    save, clock = RecordingSave(tmp_path), FakeClock()
    c = _collector(tmp_path, clock, lbskew_iptables_save_command=str(save.path),
                   lbskew_rules_min_interval=30.0)
    await c.collect()
    clock.now += 31.0
    fams = await c.collect()
    assert save.runs == 2
    assert _gauge(fams, "nodemedic_lbskew_rules_age_seconds") == 0.0
    assert _gauge(fams, "nodemedic_lbskew_rules_stale") == 0


async def test_zero_interval_runs_the_command_every_tick(tmp_path: Path) -> None:
    """--lbskew.rules-min-interval=0 keeps the old behaviour: one run per tick."""
    save, clock = RecordingSave(tmp_path), FakeClock()
    c = _collector(tmp_path, clock, lbskew_iptables_save_command=str(save.path),
                   lbskew_rules_min_interval=0.0)
    for _ in range(4):
        await c.collect()
    assert save.runs == 4


async def test_default_interval_skips_runs_on_ten_second_ticks(tmp_path: Path) -> None:
    """With the defaults (30 s, 10 s ticks) iptables-save runs on every third tick."""
    save, clock = RecordingSave(tmp_path), FakeClock()
    c = _collector(tmp_path, clock, lbskew_iptables_save_command=str(save.path))
    for _ in range(9):
        await c.collect()
        clock.now += 10.0
    assert save.runs == 3


async def test_failing_refresh_serves_cached_rules_marked_stale_then_fails(
    tmp_path: Path,
) -> None:
    """After a success, a failing iptables-save keeps the last rules in use with stale=1 and
    their true age, retried every tick, until the bound; past it the tick fails as before."""
    save, clock = RecordingSave(tmp_path), FakeClock()
    c = _collector(tmp_path, clock, lbskew_iptables_save_command=str(save.path),
                   lbskew_rules_min_interval=30.0)
    await c.collect()
    save.fail(True)
    clock.now += 31.0
    fams = await c.collect()
    assert save.runs == 2
    assert _connections(fams) == 40
    assert _gauge(fams, "nodemedic_lbskew_rules_stale") == 1
    assert _gauge(fams, "nodemedic_lbskew_rules_age_seconds") == 31.0
    assert "nat table locked" in (c.status()["rules_refresh_error"] or "")
    clock.now += 10.0
    await c.collect()
    assert save.runs == 3  # a failed refresh is retried on the next tick, not an interval later
    clock.now = 1000.0 + 30.0 + RULES_STALE_GRACE + 1.0
    with pytest.raises(RuntimeError, match="exited 4: nat table locked"):
        await c.collect()
    clock.now += 10.0
    with pytest.raises(RuntimeError, match="exited 4"):
        await c.collect()  # the expired rules are gone for good, not served again
    save.fail(False)
    clock.now += 10.0
    fams = await c.collect()
    assert _gauge(fams, "nodemedic_lbskew_rules_stale") == 0
    assert c.status()["rules_refresh_error"] is None


async def test_hung_refresh_still_finishes_the_tick_with_cached_rules(tmp_path: Path) -> None:
    """A hung iptables-save gets half the collector's budget, so the tick (run under its
    timeout as the pipeline does) still ends with the cached rules, stale, and conntrack."""
    save, clock = RecordingSave(tmp_path), FakeClock()
    c = _collector(tmp_path, clock, lbskew_iptables_save_command=str(save.path),
                   lbskew_rules_min_interval=30.0, collector_timeout=2.0)
    await c.collect()
    save.hang_flag.touch()
    clock.now += 31.0
    fams = await asyncio.wait_for(c.collect(), timeout=c.timeout)
    assert _connections(fams) == 40
    assert _gauge(fams, "nodemedic_lbskew_rules_stale") == 1
    assert "deadline" in (c.status()["rules_refresh_error"] or "")


async def test_failure_without_earlier_rules_fails_the_tick(tmp_path: Path) -> None:
    """Nothing cached yet: a failing iptables-save fails the tick, no stale data invented."""
    save, clock = RecordingSave(tmp_path), FakeClock()
    save.fail(True)
    c = _collector(tmp_path, clock, lbskew_iptables_save_command=str(save.path))
    with pytest.raises(RuntimeError, match="nat table locked"):
        await c.collect()


async def test_rules_file_is_reread_only_when_it_changes(tmp_path: Path) -> None:
    """The file source is stat'ed every tick and parsed again only when its mtime changes."""
    rules = tmp_path / "nat.txt"
    shutil.copy(LAB_RULES, rules)
    clock = FakeClock()
    c = _collector(tmp_path, clock, lbskew_iptables_save_file=rules)
    fams = await c.collect()
    assert _connections(fams) == 40
    # Same size and mtime but other content: proof that the unchanged file was not read.
    st = rules.stat()
    rules.write_text(rules.read_text().replace("KUBE-SERVICES", "KUBE-SERVICEX"))
    os.utime(rules, ns=(st.st_atime_ns, st.st_mtime_ns))
    clock.now += 1.0
    fams = await c.collect()
    assert _connections(fams) == 40
    assert _gauge(fams, "nodemedic_lbskew_rules_age_seconds") == 0.0
    os.utime(rules, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))
    fams = await c.collect()
    assert _connections(fams) is None  # the changed file has no KUBE-SERVICES chain
    assert _gauge(fams, "nodemedic_lbskew_rules_age_seconds") == 0.0


async def test_switching_the_source_never_serves_the_other_sources_rules(tmp_path: Path) -> None:
    """Rules cached from one command are not reused after the setting names another one."""
    save, clock = RecordingSave(tmp_path), FakeClock()
    c = _collector(tmp_path, clock, lbskew_iptables_save_command=str(save.path))
    await c.collect()
    c.ctx.settings = settings_for_tests(
        path_procfs=tmp_path / "proc", lbskew_conntrack_command="/nonexistent/conntrack",
        lbskew_iptables_save_command="/nonexistent/iptables-save",
    )
    fams = await c.collect()
    assert _connections(fams) is None
    assert save.runs == 1
