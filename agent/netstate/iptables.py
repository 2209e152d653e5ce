"""Parse kube-proxy's nat chains from ``iptables-save -t nat`` text and audit their shares.

Called by agent.collectors.lbskew in a worker thread. kube-proxy (iptables mode) writes, per
Service port: a jump in KUBE-SERVICES matching ``-d <ClusterIP>/32 -p <proto> --dport <port>``
to a KUBE-SVC-* chain (comment ``"ns/svc:port cluster IP"``); in the KUBE-SVC-* chain one jump per
endpoint to a KUBE-SEP-* chain, all but the last with ``-m statistic --mode random --probability
p``; in each KUBE-SEP-* chain a ``DNAT --to-destination ip:port``. Rule i is reached with the
probability left after rules 1..i-1 declined, so endpoint i's effective share is
``p_i * prod(1 - p_j, j < i)``; kube-proxy picks p_i = 1/(n - i + 1) so every share is 1/n.

Only the lines that matter are looked at, each with a few regexes (not a shell-quote tokenizer:
a large cluster's dump has 100k+ lines). Lines that look like kube-proxy rules but cannot be
read are counted in ``skipped_lines``.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable
from dataclasses import dataclass, field

# Shares within 1% of 1/n count as equal: kube-proxy rounds probabilities (older versions to
# 0.33332999982), while a chain that is really broken is off by far more.
SHARE_TOLERANCE = 0.01

_COMMENT = re.compile(r'--comment (?:"((?:[^"\\]|\\.)*)"|(\S+))')
_DEST = re.compile(r"(?:^|\s)-d (\S+)")
_NOT_DEST = re.compile(r"!\s+-d\s")
_PROTO = re.compile(r"(?:^|\s)-p (\w+)")
_DPORT = re.compile(r"--dport (\d+)")
_JUMP = re.compile(r"(?:^|\s)-j (\S+)")
_PROB = re.compile(r"--probability ([0-9.eE+-]+)")
_TO_DEST = re.compile(r"--to-destination (\S+)")
_SVC_CHAINS = ("KUBE-SVC-", "KUBE-SVL-")


@dataclass(frozen=True, slots=True)
class ServicePort:
    """One Service port as kube-proxy names it: ``namespace/name:port`` (port may be empty)."""

    namespace: str
    name: str
    port: str

    @classmethod
    def from_comment(cls, comment: str) -> ServicePort | None:
        """Parse ``"ns/svc:port cluster IP"`` / ``"ns/svc:port -> 10.0.0.1:80"`` / ``"ns/svc"``."""
        text = comment.split(" ", 1)[0]
        ns, sep, rest = text.partition("/")
        if not sep or not ns or not rest:
            return None
        name, _, port = rest.partition(":")
        return cls(ns, name, port) if name else None


@dataclass(slots=True)
class ChainEndpoint:
    """One jump of a KUBE-SVC chain: the KUBE-SEP chain, its DNAT target and its share."""

    sep_chain: str
    probability: float  # the rule's --probability, 1.0 when it has none
    share: float = 0.0  # effective share of new connections after the rules before it
    address: str = ""  # "ip:port" from the KUBE-SEP chain's DNAT; "" if missing


@dataclass(slots=True)
class ServiceChain:
    """A ClusterIP:port -> KUBE-SVC chain with its endpoints in rule order."""

    service: ServicePort | None
    protocol: str
    vip: str
    port: int
    chain: str
    endpoints: list[ChainEndpoint] = field(default_factory=list)
    fallthrough: float = 0.0  # share of connections no rule DNATs (last rule has p < 1)

    def problems(self, slice_endpoints: Iterable[str] | None = None) -> dict[str, int]:
        """Audit: problem name -> number of endpoints (or 1 for chain-wide problems).

        ``unequal_shares``: endpoints whose share differs from 1/n; ``unreachable_endpoint``:
        share 0 (after a rule without probability); ``fallthrough``: the chain can end without
        a DNAT; ``missing_dnat``: a KUBE-SEP chain without a DNAT target; ``no_endpoints``;
        ``stale_endpoint``: the chain names an endpoint the EndpointSlices no longer list (only
        when ``slice_endpoints`` is given).
        """
        out: dict[str, int] = {}
        n = len(self.endpoints)
        if n == 0:
            return {"no_endpoints": 1}
        fair = 1.0 / n
        unequal = sum(
            1 for e in self.endpoints if abs(e.share - fair) > SHARE_TOLERANCE * fair
        )
        if unequal:
            out["unequal_shares"] = unequal
        unreachable = sum(1 for e in self.endpoints if e.share <= 0.0)
        if unreachable:
            out["unreachable_endpoint"] = unreachable
        if self.fallthrough > SHARE_TOLERANCE * fair:
            out["fallthrough"] = 1
        missing = sum(1 for e in self.endpoints if not e.address)
        if missing:
            out["missing_dnat"] = missing
        if slice_endpoints is not None:
            known = set(slice_endpoints)
            stale = sum(1 for e in self.endpoints if e.address and e.address not in known)
            if stale:
                out["stale_endpoint"] = stale
        return out


@dataclass(slots=True)
class NatRules:
    """What the nat table says about Services."""

    services: list[ServiceChain] = field(default_factory=list)
    has_kube_services: bool = False  # the KUBE-SERVICES chain exists (kube-proxy iptables mode)
    lines: int = 0
    skipped_lines: int = 0  # kube-proxy-looking rules that could not be read

    def by_vip(self) -> dict[tuple[str, str, int], ServiceChain]:
        """(protocol, VIP, port) -> chain, for matching conntrack flows."""
        return {(s.protocol, s.vip, s.port): s for s in self.services}


def _comment(line: str) -> str:
    m = _COMMENT.search(line)
    if m is None:
        return ""
    return m.group(1) if m.group(1) is not None else m.group(2)


def parse_iptables_save(lines: Iterable[str]) -> NatRules:
    """Parse the nat table of ``iptables-save`` output (other tables are ignored)."""
    rules = NatRules()
    in_nat = True  # until a "*table" header says otherwise (grep'd excerpts have none)
    svc_rules: list[tuple[str, str]] = []  # (KUBE-SERVICES target chain, line)
    svc_chain_rules: dict[str, list[tuple[str, float]]] = {}
    sep_dnat: dict[str, str] = {}
    for raw in lines:
        rules.lines += 1
        line = raw.rstrip("\n")
        if line.startswith("*"):
            in_nat = line.strip() == "*nat"
            continue
        if not in_nat:
            continue
        if line.startswith(":KUBE-SERVICES "):
            rules.has_kube_services = True
            continue
        if not line.startswith("-A KUBE-"):
            continue
        chain = line[3:].split(" ", 1)[0]
        jump = _JUMP.search(line)
        target = jump.group(1) if jump else ""
        if chain == "KUBE-SERVICES":
            rules.has_kube_services = True
            if target.startswith(_SVC_CHAINS):
                svc_rules.append((target, line))
        elif chain.startswith(_SVC_CHAINS):
            if not target.startswith("KUBE-SEP-"):
                continue  # KUBE-MARK-MASQ and friends
            pm = _PROB.search(line)
            try:
                prob = float(pm.group(1)) if pm else 1.0
            except ValueError:
                rules.skipped_lines += 1
                continue
            if not 0.0 <= prob <= 1.0:
                rules.skipped_lines += 1
                continue
            svc_chain_rules.setdefault(chain, []).append((target, prob))
        elif chain.startswith("KUBE-SEP-") and target == "DNAT":
            dm = _TO_DEST.search(line)
            addr = _norm_hostport(dm.group(1)) if dm else None
            if addr is None:
                rules.skipped_lines += 1
                continue
            sep_dnat[chain] = addr

    for target, line in svc_rules:
        svc = _service_chain(target, line, svc_chain_rules, sep_dnat)
        if svc is None:
            rules.skipped_lines += 1
        else:
            rules.services.append(svc)
    return rules


def _service_chain(
    target: str,
    line: str,
    svc_chain_rules: dict[str, list[tuple[str, float]]],
    sep_dnat: dict[str, str],
) -> ServiceChain | None:
    dm, pm, portm = _DEST.search(line), _PROTO.search(line), _DPORT.search(line)
    if dm is None or pm is None or portm is None or _NOT_DEST.search(line):
        return None
    try:
        vip = str(ipaddress.ip_interface(dm.group(1)).ip)
    except ValueError:
        return None
    chain = ServiceChain(
        service=ServicePort.from_comment(_comment(line)),
        protocol=pm.group(1),
        vip=vip,
        port=int(portm.group(1)),
        chain=target,
    )
    remaining = 1.0
    for sep, prob in svc_chain_rules.get(target, []):
        share = remaining * prob
        remaining -= share
        chain.endpoints.append(ChainEndpoint(sep, prob, share, sep_dnat.get(sep, "")))
    chain.fallthrough = max(remaining, 0.0) if chain.endpoints else 0.0
    return chain


def _norm_hostport(text: str) -> str | None:
    """``10.0.0.1:80`` / ``[fd00::1]:80`` -> normalised ``ip:port`` (IPv6 in brackets)."""
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit():
        return None
    try:
        ip = ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return None
    return f"[{ip}]:{port}" if ip.version == 6 else f"{ip}:{port}"
