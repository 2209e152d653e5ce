"""The per-Service series of the ``lbskew`` collector: endpoints, shares, problems and skew.

Called by agent.collectors.lbskew in its worker thread, once per Service port found in
kube-proxy's nat chains (``chain``) or in IPVS (``ipvs``), between ``begin`` and ``end`` of a
tick. Names come from the EndpointSlice view when there is one, else from the rule comments.
Byte counters are kept between ticks so that nodemedic_service_endpoint_bytes_total never
decreases; at most MAX_BYTE_SERIES of them (the rest are left out and counted).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from agent.collectors.lbskew_metrics import (
    CHAIN_PROBLEMS,
    CHI2_P,
    CV,
    ENDPOINT_BYTES,
    ENDPOINT_CONNECTIONS,
    ENDPOINT_ENTRIES,
    EXPECTED_SHARE,
    FAIR_P,
    MAX_MEAN,
    SERVICE_CONNECTIONS,
    SERVICE_INFO,
    SKEWED,
    SUFFICIENT,
)
from agent.netstate import conntrack, skew
from agent.netstate.iptables import NatRules, ServiceChain
from agent.netstate.ipvs import VirtualService
from agent.structs.metrics import Family

if TYPE_CHECKING:
    from agent.kube.endpointslices import EndpointName

# Bound on the byte-counter state kept between ticks (one entry per Service endpoint).
MAX_BYTE_SERIES = 65536


class NameView(Protocol):
    """Immutable name lookups (agent.kube.endpointslices.NameView)."""

    def endpoint(self, address: str) -> EndpointName | None: ...
    def service_endpoints(self, namespace: str, service: str, port: str) -> set[str] | None: ...


@dataclass
class Endpoint:
    """One endpoint of a Service port: its expected share and what conntrack or IPVS counted."""

    address: str
    expected: float
    active: int = 0
    entries: int = 0
    bytes: int = 0
    in_rules: bool = True


class ServiceSeries:
    """Emits the per-Service families of one tick; keeps the byte counters between ticks."""

    def __init__(self) -> None:
        # label tuple -> (live bytes last tick, counter value): makes bytes_total monotonic.
        self.bytes: dict[tuple[str, ...], tuple[int, int]] = {}
        self.bytes_dropped = 0  # byte series not exported this tick (table full)
        self.view: NameView | None = None  # this tick's names
        self.used: set[tuple[str, str, str]] = set()  # Service labels emitted this tick
        self.seen: set[tuple[str, ...]] = set()  # endpoint labels with a byte counter this tick
        self.min_samples = 0

    def begin(self, view: NameView | None, min_samples: int) -> None:
        self.view, self.min_samples = view, min_samples
        self.used, self.seen, self.bytes_dropped = set(), set(), 0

    def end(self) -> None:
        """Forget byte counters of endpoints that are gone (bounded state)."""
        for key in [k for k in self.bytes if k not in self.seen]:
            del self.bytes[key]

    def chain(
        self,
        fams: dict[str, Family],
        labels: tuple[str, str, str],
        chains: list[ServiceChain],
        flows: FlowIndex | None
    ) -> None:
        first = chains[0]
        endpoints = [Endpoint(e.address, e.share) for e in first.endpoints]
        by_addr = {e.address: e for e in endpoints if e.address}
        if flows is not None:
            for ch in chains:
                for addr, tally in flows.get((ch.protocol, ch.vip, ch.port), ()):
                    ep = by_addr.get(addr)
                    if ep is None:  # connections to an endpoint the rules no longer name
                        ep = by_addr[addr] = Endpoint(addr, 0.0, in_rules=False)
                        endpoints.append(ep)
                    ep.active += tally.active
                    ep.entries += tally.entries
                    ep.bytes += tally.bytes
        names = self.view
        svc = first.service
        slice_eps = (
            names.service_endpoints(svc.namespace, svc.name, svc.port)
            if names is not None and svc is not None
            else None
        )
        name_source = "iptables-comment" if svc is not None else "unknown"
        if slice_eps is not None:
            name_source = "endpointslice"
        for ch in chains:
            fams[SERVICE_INFO.name].add(
                (*labels, ch.vip, ch.protocol, "iptables", ch.chain, name_source), 1
            )
        for problem, n in sorted(first.problems(slice_eps).items()):
            fams[CHAIN_PROBLEMS.name].add((*labels, problem), n)
        self._endpoints(fams, labels, endpoints, observed=flows is not None)
        in_rules = [e for e in endpoints if e.in_rules]
        if flows is not None and in_rules:
            fair = [1.0 / len(in_rules)] * len(in_rules)
            self._skew(
                fams, labels, [e.active for e in in_rules], [e.expected for e in in_rules], fair
            )

    def ipvs(
        self, fams: dict[str, Family], vs: VirtualService) -> None:
        names = self.view
        owners = [names.endpoint(rs.address) for rs in vs.servers] if names else []
        owner = next((o for o in owners if o is not None), None)
        if owner is not None:
            labels = (owner.namespace, owner.service, owner.port or str(vs.port))
            name_source = "endpointslice"
        else:  # IPVS keeps no Service names: identify the port by its VIP
            labels = ("", f"{vs.vip}:{vs.port}" if vs.port else f"fwm:{vs.vip}", str(vs.port))
            name_source = "unknown"
        if labels in self.used:
            # The ClusterIP, NodePort and external-IP virtual services of one Service share
            # real servers, hence names: keep their series apart by VIP.
            labels = (labels[0], labels[1], f"{labels[2]}@{vs.vip}:{vs.port}")
            if labels in self.used:
                return
        self.used.add(labels)
        fams[SERVICE_INFO.name].add(
            (*labels, vs.vip, vs.protocol, "ipvs", vs.scheduler, name_source), 1
        )
        shares = vs.expected_shares()
        endpoints = [
            Endpoint(rs.address, share, active=rs.active_conns)
            for rs, share in zip(vs.servers, shares, strict=True)
        ]
        if not endpoints:
            fams[CHAIN_PROBLEMS.name].add((*labels, "no_endpoints"), 1)
        self._endpoints(fams, labels, endpoints, observed=True, entries=False)
        if endpoints:
            self._skew(fams, labels, [e.active for e in endpoints], shares, shares)

    def _endpoints(
        self,
        fams: dict[str, Family],
        labels: tuple[str, str, str],
        endpoints: list[Endpoint],
        *,
        observed: bool,
        entries: bool = True,
    ) -> None:
        """Per-endpoint series; connection counts only when a connection source was read
        (``observed``), so that "no conntrack" never looks like "no connections"."""
        names = self.view
        total = 0
        for ep in endpoints:
            if ep.in_rules:
                fams[EXPECTED_SHARE.name].add((*labels, ep.address), ep.expected)
            if not observed:
                continue
            owner = names.endpoint(ep.address) if names is not None and ep.address else None
            pod = owner.pod if owner is not None else ""
            ep_labels = (*labels, ep.address, pod)
            total += ep.active
            fams[ENDPOINT_CONNECTIONS.name].add(ep_labels, ep.active)
            if entries:
                fams[ENDPOINT_ENTRIES.name].add(ep_labels, ep.entries)
                counter = self.bytes_counter(ep_labels, ep.bytes)
                if counter is not None:
                    fams[ENDPOINT_BYTES.name].add(ep_labels, counter)
                self.seen.add(ep_labels)
        if observed:
            fams[SERVICE_CONNECTIONS.name].add(labels, total)

    def bytes_counter(self, key: tuple[str, ...], live: int) -> int | None:
        """Counter value for ``key``: grows by the growth of the live byte sum, never shrinks
        (bytes of connections that closed between ticks are missed: a lower bound). None when
        the table is full: the series is left out (counted) rather than exported as a counter
        that could go down."""
        last, total = self.bytes.get(key, (0, 0))
        if key not in self.bytes and len(self.bytes) >= MAX_BYTE_SERIES:
            self.bytes_dropped += 1
            return None
        total += max(live - last, 0)
        self.bytes[key] = (live, total)
        return total

    def _skew(
        self,
        fams: dict[str, Family],
        labels: tuple[str, str, str],
        counts: list[int],
        expected: list[float],
        fair: list[float],
    ) -> None:
        r = skew.assess(
            counts, expected, fair, min_samples=self.min_samples
        )
        fams[MAX_MEAN.name].add(labels, r.max_mean_ratio)
        fams[CV.name].add(labels, r.cv)
        fams[CHI2_P.name].add(labels, r.p_value)
        fams[FAIR_P.name].add(labels, r.fair_p_value)
        fams[SUFFICIENT.name].add(labels, 1 if r.sufficient else 0)
        fams[SKEWED.name].add(labels, 1 if r.skewed else 0)


FlowIndex = dict[tuple[str, str, int], list[tuple[str, conntrack.EndpointTally]]]


def flows_by_vip(summary: conntrack.ConntrackSummary) -> FlowIndex:
    """(protocol, VIP, port) -> [(endpoint "ip:port", tally)], built once per tick."""
    out: FlowIndex = {}
    for (proto, vip, vport, ep_ip, ep_port), tally in summary.flows.items():
        addr = f"[{ep_ip}]:{ep_port}" if ":" in ep_ip else f"{ep_ip}:{ep_port}"
        out.setdefault((proto, vip, vport), []).append((addr, tally))
    return out


def group_chains(rules: NatRules) -> dict[tuple[str, str, str], list[ServiceChain]]:
    """Service labels -> the chains reached for it (one per VIP; several VIPs can share one
    KUBE-SVC chain, e.g. a ClusterIP plus externalIPs). Unnamed chains use the chain name."""
    out: dict[tuple[str, str, str], list[ServiceChain]] = {}
    by_chain: dict[str, tuple[str, str, str]] = {}
    for ch in rules.services:
        if ch.chain in by_chain:
            out[by_chain[ch.chain]].append(ch)
            continue
        if ch.service is not None:
            labels = (ch.service.namespace, ch.service.name, ch.service.port or str(ch.port))
        else:
            labels = ("", ch.chain, str(ch.port))
        if labels in out:  # a second chain under the same name: keep the labels unique
            labels = (labels[0], labels[1], f"{labels[2]}/{ch.protocol}")
            if labels in out:
                continue
        by_chain[ch.chain] = labels
        out[labels] = [ch]
    return out
