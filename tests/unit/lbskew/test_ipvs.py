"""IPVS tables: the kernel's hex /proc/net/ip_vs, ipvsadm -Ln text, ip_vs_stats, bad lines."""

from __future__ import annotations

from helpers_lbskew import fixture
from hypothesis import given
from hypothesis import strategies as st

from agent.netstate.ipvs import IpvsStats, parse_ip_vs, parse_ip_vs_stats


def test_proc_ip_vs_capture() -> None:
    """Hex addresses/ports decode; weights and active/inactive connections are read."""
    table = parse_ip_vs(fixture("proc_net/ip_vs").open())
    assert table.skipped_lines == 0
    first, second, third, fwm = table.services
    assert (first.protocol, first.vip, first.port, first.scheduler) == (
        "tcp", "192.168.0.22", 3306, "wlc"
    )
    assert [(s.address, s.weight, s.active_conns, s.inactive_conns) for s in first.servers] == [
        ("192.168.82.22:3306", 100, 248, 2),
        ("192.168.83.24:3306", 100, 248, 2),
        ("192.168.83.21:3306", 100, 248, 1),
    ]
    assert second.expected_shares() == [0.0, 0.5, 0.5]  # weight 0 = drained server
    assert third.expected_shares() == [0.0, 1.0]
    assert fwm.protocol == "fwm" and fwm.vip == str(0x10001000)
    assert [round(x, 4) for x in fwm.expected_shares()] == [0.1667, 0.8333]


def test_ipvsadm_text_from_a_kube_router_node() -> None:
    """`ipvsadm -ln` prints decimal addresses; the same parser reads them."""
    table = parse_ip_vs(fixture("ipvsadm_ln_kube_router_node.txt").open())
    assert table.skipped_lines == 0
    assert [(s.protocol, s.vip, s.port) for s in table.services] == [
        ("tcp", "10.3.0.1", 443), ("tcp", "10.3.0.10", 53), ("tcp", "10.3.0.15", 2379),
        ("tcp", "10.3.0.155", 2379), ("udp", "10.3.0.10", 53),
    ]
    assert table.services[2].servers[0].active_conns == 45


def test_ip_vs_stats_totals() -> None:
    """The hex totals row of ip_vs_stats."""
    stats = parse_ip_vs_stats(fixture("proc_net/ip_vs_stats").read_text())
    assert stats == IpvsStats(0x16AA370, 0xE33656E5, 0, 0x51D8C8883AB3, 0)
    assert parse_ip_vs_stats("garbage") is None


def test_bad_lines_are_skipped_and_counted() -> None:
    """A server line before any service, a bad address and a short line are counted."""
    text = (
        "  -> 0A000001:0050 Masq 1 0 0\n"
        "TCP  0A000001:0050 rr\n"
        "  -> ZZZZ:0050 Masq 1 0 0\n"
        "  -> 0A000002:0050 Masq 1\n"
        "  -> 0A000003:0050 Masq 1 2 3\n"
    )
    table = parse_ip_vs(text.splitlines())
    assert table.skipped_lines == 3
    assert [s.address for s in table.services[0].servers] == ["10.0.0.3:80"]


def test_ipv6_service() -> None:
    """IPv6 virtual services are printed in brackets with a hex port."""
    table = parse_ip_vs(["TCP  [fd00:0000:0000:0000:0000:0000:0000:000a]:0050 rr",
                         "  -> [fd00:0000:0000:0000:0000:0000:0000:0001]:1F90 Masq 1 4 0"])
    (svc,) = table.services
    assert (svc.vip, svc.port, svc.servers[0].address) == ("fd00::a", 80, "[fd00::1]:8080")


@given(st.lists(st.text(max_size=80), max_size=20))
def test_fuzzed_ip_vs_never_crashes(lines: list[str]) -> None:
    """Random text: no exception."""
    parse_ip_vs(lines)
    parse_ip_vs_stats("\n".join(lines))
