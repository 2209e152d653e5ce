"""The conntrack table is walked only as often as --lbskew.conntrack-cpu allows, while its size
and the kernel's counters are exported every tick."""

from __future__ import annotations

import shutil
from pathlib import Path

from helpers_lbskew import fixture

from agent.collectors.base import CollectorContext
from agent.collectors.lbskew import LbSkewCollector
from agent.netstate.ctstats import WalkSchedule, parse_stat, read_counts
from agent.settings import settings_for_tests
from agent.structs.metrics import Family

LAB_RULES = fixture("lab_kubeproxy_like_iptables_save_nat.txt")
LAB_PROC = fixture("lab_kubeproxy_like_proc_net_nf_conntrack.txt")
EP = {"namespace": "shop", "service": "web", "port": "http", "endpoint": "10.244.1.7:8080"}
STAT = (
    "entries  clashres found new invalid ignore delete chainlength insert insert_failed drop "
    "early_drop icmp_error  expect_new expect_create expect_delete search_restart\n"
    "0000002a  00000000 00000000 00000000 00000003 00000000 00000000 00000000 00000000 00000001 "
    "00000010 00000002 00000000  00000000 00000000 00000000 00000000\n"
    "0000002a  00000000 00000000 00000000 00000001 00000000 00000000 00000000 00000000 00000000 "
    "000000f0 00000000 00000000  00000000 00000000 00000000 00000005\n"
)


def _procfs(tmp_path: Path) -> Path:
    proc = tmp_path / "proc"
    (proc / "net" / "stat").mkdir(parents=True)
    shutil.copy(LAB_PROC, proc / "net" / "nf_conntrack")
    (proc / "net" / "stat" / "nf_conntrack").write_text(STAT)
    sysctl = proc / "sys" / "net" / "netfilter"
    sysctl.mkdir(parents=True)
    (sysctl / "nf_conntrack_count").write_text("42\n")
    (sysctl / "nf_conntrack_max").write_text("262144\n")
    return proc


def _value(fams: list[Family], name: str, **labels: str) -> float | None:
    for fam in fams:
        if fam.name == name:
            for lbls, v in fam.series():
                if all(lbls.get(k) == val for k, val in labels.items()):
                    return v
    return None


def test_per_cpu_counters_are_summed_by_name() -> None:
    assert parse_stat(STAT) == {"invalid": 4, "insert_failed": 1, "drop": 0x100,
                                "early_drop": 2, "search_restart": 5}


def test_counts_are_absent_not_zero_when_unreadable(tmp_path: Path) -> None:
    counts = read_counts(tmp_path)
    assert counts.entries is None and counts.limit is None and counts.stats == {}


def test_schedule_spaces_walks_by_their_cost() -> None:
    w = WalkSchedule(0.001)
    assert w.due(0.0)
    w.record(0.0, 0.95)  # a full 262,144-entry table with byte accounting
    assert abs(w.interval() - 950.0) < 1e-6
    assert not w.due(949.0) and w.due(950.1)
    every = WalkSchedule(1.0)
    every.record(0.0, 5.0)
    assert every.due(0.0)


async def test_ticks_between_walks_reuse_the_counts_and_say_how_old(tmp_path: Path) -> None:
    now = [1000.0]
    procfs = _procfs(tmp_path)
    ctx = CollectorContext(settings_for_tests(
        path_procfs=procfs, lbskew_iptables_save_file=LAB_RULES,
        lbskew_conntrack_command="/nonexistent/conntrack",
        lbskew_conntrack_cpu="0.0001%"))  # any walk is then due >= 100 s later
    c = LbSkewCollector(ctx, clock=lambda: now[0])
    first = await c.collect()
    conns = _value(first, "nodemedic_service_endpoint_connections", **EP)
    assert conns is not None and conns > 0
    assert _value(first, "nodemedic_lbskew_conntrack_walk_age_seconds") == 0.0
    walk_cpu = _value(first, "nodemedic_lbskew_conntrack_walk_cpu_seconds")
    assert walk_cpu is not None and walk_cpu > 0
    interval = walk_cpu / 1e-6

    (procfs / "net" / "nf_conntrack").write_text("")  # every connection closed
    (procfs / "sys" / "net" / "netfilter" / "nf_conntrack_count").write_text("0\n")
    now[0] += 10.0
    second = await c.collect()
    # The table's size is read every tick; the per-endpoint counts come from the last walk.
    assert _value(second, "nodemedic_conntrack_entries") == 0
    assert _value(second, "nodemedic_conntrack_entries_limit") == 262144
    assert _value(second, "nodemedic_conntrack_kernel_events_total", event="drop") == 0x100
    assert _value(second, "nodemedic_service_endpoint_connections", **EP) == conns
    assert _value(second, "nodemedic_lbskew_conntrack_walk_age_seconds") == 10.0

    now[0] += interval
    third = await c.collect()
    assert _value(third, "nodemedic_service_endpoint_connections", **EP) == 0
    assert _value(third, "nodemedic_lbskew_conntrack_walk_age_seconds") == 0.0


async def test_a_service_whose_endpoints_changed_since_the_walk_gets_no_old_counts(
        tmp_path: Path) -> None:
    """Between walks, a rollout replaced an endpoint: the last walk's counts would show the new
    endpoint idle and the Service skewed. Until the next walk that Service has no counts (its
    skew series are absent: missing data, the rule waits), not the old ones."""
    now = [1000.0]
    rules = tmp_path / "nat.txt"
    rules.write_text(LAB_RULES.read_text())
    ctx = CollectorContext(settings_for_tests(
        path_procfs=_procfs(tmp_path), lbskew_iptables_save_file=rules,
        lbskew_conntrack_command="/nonexistent/conntrack", lbskew_conntrack_cpu="0.0001%"))
    c = LbSkewCollector(ctx, clock=lambda: now[0])
    first = await c.collect()
    assert _value(first, "nodemedic_service_endpoint_connections", **EP) is not None
    rules.write_text(LAB_RULES.read_text().replace("10.244.1.7:8080", "10.244.1.99:8080"))
    now[0] += 10.0
    second = await c.collect()
    moved = {**EP, "endpoint": "10.244.1.99:8080"}
    assert _value(second, "nodemedic_service_endpoint_connections", **moved) is None
    assert _value(second, "nodemedic_service_skewed", namespace="shop", service="web") is None
