"""Pure classification of every node from heartbeats, Ready conditions and peer probes.

Called by agent.peers.stage (on the leader, after each change its watches deliver) and by the unit
tests on a fake clock; no I/O, time is passed in. Per node the verdict is one of:

- ``healthy``: its kube-node-lease was renewed within ``node_grace`` and it is not NotReady;
- ``kubelet_down``: the kubelet stopped heartbeating or reports NotReady, but the node's own
  nodemedic agent answers every prober: the node is alive, its agent self-remediates (restarts
  the kubelet); the leader never cordons it;
- ``failed``: heartbeat stale and *no* prober reaches the node's agent;
- ``partitioned``: heartbeat stale and *some* probers reach it, others do not: the node may still
  run its pods, so nothing drastic is done, only an alert;
- ``unknown``: not enough data (no heartbeat and no Ready condition, or fewer than
  ``min_probers`` fresh probe results): never acted upon.

Mass-failure protection: when more than ``max_unhealthy`` (``N`` or ``N%``) of all nodes, or of one
``topology.kubernetes.io/zone`` with at least ``min_zone_size`` nodes, look unhealthy at once, the
cause is far more likely the network or the control plane than the nodes, so no node is acted on.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Literal

State = Literal["healthy", "kubelet_down", "partitioned", "failed", "unknown"]
STATES: tuple[State, ...] = ("healthy", "kubelet_down", "partitioned", "failed", "unknown")


@dataclass(frozen=True, slots=True)
class Probe:
    """The latest result of one prober's GET /healthz on the node's agent.

    ``at`` is when it was taken, ``last_ok`` when this prober last reached the agent (None: never
    since it started probing); both on the leader's clock (see stage: observation times).
    """

    prober: str
    ok: bool
    at: float
    last_ok: float | None = None


@dataclass(frozen=True, slots=True)
class NodeView:
    """What the leader knows about one node. ``lease_renewed`` is when the leader last saw the
    node's kube-node-lease change (None: no lease seen); ``ready`` is the Ready condition
    (None: Unknown or absent)."""

    name: str
    zone: str = ""
    lease_renewed: float | None = None
    ready: bool | None = None
    probes: tuple[Probe, ...] = ()


@dataclass(frozen=True, slots=True)
class DetectorConfig:
    """Thresholds; the defaults and their rationale are in docs/failover.md."""

    node_grace: float = 40.0
    probe_max_age: float = 15.0
    min_probers: int = 2
    max_unhealthy: str = "40%"
    max_unhealthy_zone: str = "50%"
    min_zone_size: int = 3


@dataclass(frozen=True, slots=True)
class Verdict:
    """One node's classification with a human-readable reason."""

    node: str
    state: State
    reason: str
    suspect: bool = False  # heartbeat stale or NotReady: counts towards mass failure
    reachable_by: tuple[str, ...] = ()
    unreachable_by: tuple[str, ...] = ()
    last_seen: float | None = None  # latest lease renewal or successful probe


@dataclass(frozen=True, slots=True)
class Assessment:
    """Verdicts for all nodes plus the mass-failure decision."""

    verdicts: Mapping[str, Verdict] = field(default_factory=lambda: MappingProxyType({}))
    mass_failure: bool = False
    mass_reason: str = ""
    total: int = 0
    unhealthy: int = 0

    def count(self, state: State) -> int:
        return sum(1 for v in self.verdicts.values() if v.state == state)

    def actionable(self, node: str) -> bool:
        """May the leader take node-level action against ``node`` now?"""
        v = self.verdicts.get(node)
        return v is not None and v.state == "failed" and not self.mass_failure


def parse_limit(spec: str) -> tuple[float, bool]:
    """``"3"`` -> (3, False); ``"40%"`` -> (40, True). Raises ValueError on anything else."""
    text = spec.strip()
    pct = text.endswith("%")
    number = float(text[:-1] if pct else text)
    if number < 0 or (pct and number > 100):
        raise ValueError(f"limit {spec!r} must be N or N% with 0 <= N% <= 100")
    return number, pct


def exceeds(spec: str, unhealthy: int, total: int) -> bool:
    """True when ``unhealthy`` of ``total`` is *more than* the limit ``spec``."""
    number, pct = parse_limit(spec)
    if pct:
        return total > 0 and unhealthy * 100.0 > number * total
    return unhealthy > number


def latest_probes(probes: Iterable[Probe]) -> dict[str, Probe]:
    """The newest result per prober (a prober may appear twice while results propagate)."""
    out: dict[str, Probe] = {}
    for p in probes:
        cur = out.get(p.prober)
        if cur is None or p.at > cur.at:
            out[p.prober] = p
    return out


def last_seen(view: NodeView) -> float | None:
    """The last moment anything showed the node alive: a lease renewal or a successful probe."""
    times = [t for t in (view.lease_renewed, *(p.last_ok for p in view.probes)) if t is not None]
    times += [p.at for p in view.probes if p.ok]
    return max(times) if times else None


def classify(view: NodeView, now: float, cfg: DetectorConfig) -> Verdict:
    """Classify one node (see the module docstring for the states)."""
    seen = last_seen(view)
    if view.lease_renewed is None and view.ready is None:
        return Verdict(view.name, "unknown", "no node lease and no Ready condition seen",
                       last_seen=seen)
    age = None if view.lease_renewed is None else now - view.lease_renewed
    stale = age is not None and age > cfg.node_grace
    if not stale and view.ready is not False:
        if age is None:
            return Verdict(view.name, "healthy", "Ready (no node lease seen)", last_seen=seen)
        return Verdict(view.name, "healthy", f"lease renewed {age:.1f}s ago", last_seen=seen)
    if not stale:
        # The kubelet heartbeats but reports NotReady: the node is alive, its own agent acts.
        return Verdict(view.name, "kubelet_down", "kubelet heartbeats but reports NotReady",
                       suspect=True, last_seen=seen)
    why = f"lease not renewed for {age:.1f}s (grace {cfg.node_grace:g}s)"
    fresh = [p for p in latest_probes(view.probes).values() if now - p.at <= cfg.probe_max_age]
    ok = tuple(sorted(p.prober for p in fresh if p.ok))
    bad = tuple(sorted(p.prober for p in fresh if not p.ok))
    if len(fresh) < cfg.min_probers:
        return Verdict(
            view.name, "unknown",
            f"{why}; only {len(fresh)} fresh probe results, {cfg.min_probers} needed",
            suspect=True, reachable_by=ok, unreachable_by=bad, last_seen=seen,
        )
    if not ok:
        state: State = "failed"
        why += f"; agent unreachable from all {len(bad)} probers"
    elif not bad:
        state = "kubelet_down"
        why += f"; agent answers all {len(ok)} probers (node alive, kubelet down)"
    else:
        state = "partitioned"
        why += f"; agent reachable from {', '.join(ok)} but not from {', '.join(bad)}"
    return Verdict(view.name, state, why, suspect=True, reachable_by=ok, unreachable_by=bad,
                   last_seen=seen)


def assess(views: Iterable[NodeView], now: float, cfg: DetectorConfig) -> Assessment:
    """Classify every node and decide whether mass-failure protection holds all action."""
    verdicts: dict[str, Verdict] = {}
    zones: dict[str, list[bool]] = {}
    for view in views:
        v = classify(view, now, cfg)
        verdicts[view.name] = v
        if view.zone:
            zones.setdefault(view.zone, []).append(v.suspect)
    total = len(verdicts)
    unhealthy = sum(1 for v in verdicts.values() if v.suspect)
    reasons: list[str] = []
    if exceeds(cfg.max_unhealthy, unhealthy, total):
        reasons.append(
            f"{unhealthy} of {total} nodes unhealthy (more than max-unhealthy {cfg.max_unhealthy})"
        )
    for zone in sorted(zones):
        flags = zones[zone]
        bad = sum(flags)
        if len(flags) >= cfg.min_zone_size and exceeds(cfg.max_unhealthy_zone, bad, len(flags)):
            reasons.append(
                f"{bad} of {len(flags)} nodes unhealthy in zone {zone} "
                f"(more than max-unhealthy-zone {cfg.max_unhealthy_zone})"
            )
    return Assessment(
        verdicts=MappingProxyType(verdicts),
        mass_failure=bool(reasons),
        mass_reason="; ".join(reasons),
        total=total,
        unhealthy=unhealthy,
    )
