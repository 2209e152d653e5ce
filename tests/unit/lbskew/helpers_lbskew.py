"""Shared paths and small builders for the lbskew unit tests."""

from __future__ import annotations

from pathlib import Path

FIXTURES = Path(__file__).resolve().parents[2] / "fixtures" / "net"


def fixture(name: str) -> Path:
    return FIXTURES / name


def ct_line(
    vip: str = "10.96.0.10",
    ep: str = "10.244.1.5",
    *,
    state: str | None = "ESTABLISHED",
    proto: str = "tcp",
    sport: int = 40000,
    acct: bool = False,
    proc: bool = True,
    unreplied: bool = False,
) -> str:
    """One conntrack line in the kernel's (proc) or conntrack -L's format."""
    num = {"tcp": 6, "udp": 17}[proto]
    head = f"ipv4     2 {proto:<8} {num} 117 " if proc else f"{proto:<8} {num} 117 "
    st = f"{state} " if state else ""
    oacct = "packets=3 bytes=180 " if acct else ""
    racct = " packets=2 bytes=1000" if acct else ""
    unr = "[UNREPLIED] " if unreplied else ""
    return (
        f"{head}{st}src=10.1.0.9 dst={vip} sport={sport} dport=80 {oacct}{unr}"
        f"src={ep} dst=10.1.0.9 sport=8080 dport={sport}{racct} [ASSURED] mark=0 use=1\n"
    )
