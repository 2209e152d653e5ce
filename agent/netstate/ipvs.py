"""Parse /proc/net/ip_vs (virtual services and real servers) and /proc/net/ip_vs_stats.

``ipvsadm -Ln`` output (decimal addresses) is read by the same parser.

Called by agent.collectors.lbskew in a worker thread when kube-proxy runs in IPVS mode. The
kernel prints addresses and ports in hex (``C0A80016:0CEA``; IPv6 as ``[2001:0db8:...]:0050``),
weights and connection counts in decimal. Unreadable lines are counted and skipped.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass, field


@dataclass(slots=True)
class RealServer:
    """One ``->`` line: a backend of a virtual service."""

    address: str  # normalised ip:port ([ip]:port for IPv6)
    forward: str
    weight: int
    active_conns: int
    inactive_conns: int


@dataclass(slots=True)
class VirtualService:
    """A ``TCP/UDP/SCTP VIP:port scheduler`` line (``FWM`` services have ``vip`` = mark)."""

    protocol: str  # "tcp", "udp", "sctp" or "fwm"
    vip: str
    port: int
    scheduler: str
    servers: list[RealServer] = field(default_factory=list)

    def expected_shares(self) -> list[float]:
        """Share of connections each server should get: weight / sum of weights."""
        total = sum(max(s.weight, 0) for s in self.servers)
        if total <= 0:
            return [0.0 for _ in self.servers]
        return [max(s.weight, 0) / total for s in self.servers]


@dataclass(slots=True)
class IpvsTable:
    services: list[VirtualService] = field(default_factory=list)
    skipped_lines: int = 0


@dataclass(frozen=True, slots=True)
class IpvsStats:
    """Totals from /proc/net/ip_vs_stats (since boot)."""

    connections: int
    incoming_packets: int
    outgoing_packets: int
    incoming_bytes: int
    outgoing_bytes: int


def _hex_hostport(text: str) -> tuple[str, int] | None:
    """Kernel hex ``C0A80016:0CEA``; also ``ipvsadm -Ln``'s decimal ``10.3.0.1:443``."""
    host, sep, port = text.rpartition(":")
    if not sep:
        return None
    try:
        if "." in host:  # ipvsadm -Ln prints dotted decimal and a decimal port
            return str(ipaddress.IPv4Address(host)), int(port)
        port_num = int(port, 16)
        if host.startswith("["):
            ip: ipaddress.IPv4Address | ipaddress.IPv6Address = ipaddress.ip_address(
                host.strip("[]")
            )
        else:
            ip = ipaddress.IPv4Address(int(host, 16))
    except ValueError:
        return None
    return str(ip), port_num


def _fmt(ip: str, port: int) -> str:
    return f"[{ip}]:{port}" if ":" in ip else f"{ip}:{port}"


def parse_ip_vs(lines: Iterable[str]) -> IpvsTable:
    """Parse /proc/net/ip_vs."""
    table = IpvsTable()
    current: VirtualService | None = None
    for raw in lines:
        parts = raw.split()
        if not parts or parts[0] in ("IP", "Prot", "IPVS"):
            continue
        if parts[0] == "->":
            if parts[1:2] == ["RemoteAddress:Port"]:
                continue  # header
            rs = _real_server(parts)
            if rs is None or current is None:
                table.skipped_lines += 1
                continue
            current.servers.append(rs)
            continue
        vs = _virtual_service(parts)
        if vs is None:
            table.skipped_lines += 1
            current = None
        else:
            table.services.append(vs)
            current = vs
    return table


def _virtual_service(parts: list[str]) -> VirtualService | None:
    if len(parts) < 3:
        return None
    proto = parts[0].lower()
    if proto == "fwm":
        try:
            mark = int(parts[1], 16)
        except ValueError:
            return None
        return VirtualService("fwm", str(mark), 0, parts[2])
    if proto not in ("tcp", "udp", "sctp"):
        return None
    hp = _hex_hostport(parts[1])
    if hp is None:
        return None
    return VirtualService(proto, hp[0], hp[1], parts[2])


def _real_server(parts: list[str]) -> RealServer | None:
    if len(parts) < 6:
        return None
    hp = _hex_hostport(parts[1])
    if hp is None:
        return None
    try:
        weight, active, inactive = int(parts[3]), int(parts[4]), int(parts[5])
    except ValueError:
        return None
    return RealServer(_fmt(*hp), parts[2], weight, active, inactive)


def parse_ip_vs_stats(text: str) -> IpvsStats | None:
    """Parse the first data row of /proc/net/ip_vs_stats (hex); None if unreadable."""
    for line in text.splitlines():
        parts = line.split()
        if len(parts) == 5:
            try:
                values = [int(p, 16) for p in parts]
            except ValueError:
                continue
            return IpvsStats(*values)
    return None
