"""The immutable result of one collection tick.

Built by agent.runtime.pipeline after all collectors ran; read by the rules engine (pure
evaluation), the exporter (rendering) and /status. Families of failed collectors are absent, and
``collectors`` says which failed and why, so that consumers never mistake missing data for zero.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

from agent.structs.metrics import Family


@dataclass(frozen=True, slots=True)
class CollectorStatus:
    """Outcome of one collector in one tick."""

    name: str
    ok: bool
    duration_seconds: float
    error: str | None = None
    families: tuple[str, ...] = ()
    # Why it failed: "error", "timeout", or a CannotSee reason (unauthorized, forbidden, tls,
    # permission); "" when it succeeded.
    reason: str = ""
    # Metric -> CannotSee reason for metrics a successful collector could not read this tick.
    unreadable: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))
    # Set when the collector ran but every source it reads failed (its families say so, e.g.
    # kubelet_up 0): the data is real, but /status and nodemedic_collector_degraded do not call
    # the collector ok.
    degraded: str | None = None

    @property
    def cannot_see(self) -> frozenset[str]:
        """The CannotSee reasons behind this tick's missing data of this collector."""
        from_failure = {self.reason} if self.reason not in ("", "error", "timeout") else set()
        return frozenset(from_failure | set(self.unreadable.values()))


@dataclass(frozen=True, slots=True)
class Snapshot:
    """Everything collected in one tick; ``taken_at`` is wall-clock seconds since the epoch."""

    taken_at: float
    monotonic: float
    families: Mapping[str, Family] = field(default_factory=lambda: MappingProxyType({}))
    collectors: Mapping[str, CollectorStatus] = field(
        default_factory=lambda: MappingProxyType({})
    )
    # Metric name -> collector that owns it, for every *enabled* collector, so that a consumer can
    # tell "collector failed" (missing data) from "collector ran and saw nothing".
    owners: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))

    def family(self, name: str) -> Family | None:
        return self.families.get(name)

    def series(self, name: str) -> Iterator[tuple[Mapping[str, str], float]]:
        fam = self.families.get(name)
        if fam is not None:
            yield from fam.series()

    def has_data_for(self, metric: str) -> bool:
        """True when the collector owning ``metric`` is enabled, succeeded this tick and could
        read that metric's source (see CollectorStatus.unreadable)."""
        owner = self.owners.get(metric)
        if owner is None:
            return False
        status = self.collectors.get(owner)
        return status is not None and status.ok and metric not in status.unreadable

    @property
    def failed_collectors(self) -> list[str]:
        return sorted(n for n, s in self.collectors.items() if not s.ok)
