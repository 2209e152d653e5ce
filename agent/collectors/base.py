"""Collector interface and the context every collector is built with.

A collector is one module under agent/collectors/ with one class decorated by
``@register(name, default_enabled=...)`` (agent.collectors.registry). The runtime
(agent.runtime.pipeline) builds enabled collectors once, calls :meth:`Collector.collect` every tick
under the collector's own timeout, and calls :meth:`Collector.close` on shutdown.

Rules for implementers:
- declare every metric you emit in ``metrics`` (check-rules and the README are built from it);
- never block the event loop: file trees and big parses go through ``asyncio.to_thread``;
- raise on failure (the runtime marks the collector failed, keeps its last error, and drops its
  families for that tick) instead of returning partial nonsense; per-object oddities (one
  vanished pod, one garbage file) are skipped and counted, not raised;
- "I cannot see it" is never "it is broken": when the agent's own access fails (HTTP 401/403,
  TLS verification, EACCES/EPERM) raise :class:`CannotSee` for the whole collector, or name the
  metrics that part of it could not read in :meth:`Collector.unreadable`; either way those
  metrics are missing data this tick (rules reading them freeze, the gate acts on none of them),
  and ``nodemedic_collector_cannot_read{collector,reason}`` says why;
- take all file roots and URLs from ``ctx.settings`` so tests point collectors at fixture trees.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import KW_ONLY, dataclass
from typing import TYPE_CHECKING, Any, ClassVar, Final, Protocol

from agent.structs.metrics import Family, MetricSpec
from agent.structs.pods import PodRef

if TYPE_CHECKING:
    from agent.settings import Settings


# Why a collector could not look, as label values: our credentials (unauthorized), our
# authorisation (forbidden), our TLS trust (tls: certificate verify failed, hostname mismatch),
# our file/syscall rights (permission: EACCES, EPERM). The agent's configuration is wrong, the
# node is not: never evidence for a rule.
CANNOT_SEE_REASONS: Final = ("unauthorized", "forbidden", "tls", "permission")


class CannotSee(Exception):
    """The collector cannot read its source because of the agent's own access (see
    CANNOT_SEE_REASONS): the collector fails this tick with ``reason``, its metrics are missing
    data, and the message names the cause and what to fix."""

    def __init__(self, reason: str, message: str) -> None:
        if reason not in CANNOT_SEE_REASONS:
            raise ValueError(f"unknown CannotSee reason {reason!r}")
        super().__init__(message)
        self.reason = reason


def http_cannot_see(status: int) -> str | None:
    """The CannotSee reason of an HTTP status (401 unauthorized, 403 forbidden), else None."""
    return {401: "unauthorized", 403: "forbidden"}.get(status)


class SharedKubelet(Protocol):
    """What collectors use of the shared kubelet client (agent.kubelet_client.KubeletClient;
    declared here so that agent.collectors.base imports no HTTP library)."""

    async def pods(self) -> list[PodRef]: ...
    async def close(self) -> None: ...


@dataclass
class CollectorContext:
    """What a collector gets at construction: settings plus the clients several collectors
    share, set by agent.runtime.components.build_shared (tests pass their own or fakes).

    ``kubelet``: the kubelet client the ``kubelet`` and ``cgroup`` collectors both query, so
    /pods is fetched once per tick (agent.kubelet_client.get_or_create makes one if absent).
    ``api``: the Kubernetes API client (agent.kube.client; kubernetes_asyncio's ApiClient, typed
    Any because only agent.kube may import that library), None without a cluster.
    """

    settings: Settings
    _: KW_ONLY
    kubelet: SharedKubelet | None = None
    api: Any | None = None


class Collector(ABC):
    """Base class of all collectors."""

    name: ClassVar[str] = ""
    default_enabled: ClassVar[bool] = True
    metrics: ClassVar[Sequence[MetricSpec]] = ()
    help: ClassVar[str] = ""

    def __init__(self, ctx: CollectorContext) -> None:
        self.ctx = ctx

    @property
    def timeout(self) -> float:
        """Seconds this collector may take per tick before it is marked failed."""
        return self.ctx.settings.collector_timeout

    async def start(self) -> None:  # noqa: B027 - optional hook, empty by default
        """Start background work (e.g. a watch). Called once before the first tick."""

    @abstractmethod
    async def collect(self) -> list[Family]:
        """Collect one tick's families. Raise to mark the collector failed for this tick."""

    def status(self) -> dict[str, Any]:
        """Extra detail for /status (e.g. which kubelet endpoint failed and why)."""
        return {}

    def degraded(self) -> str | None:
        """Why the last successful ``collect()`` read nothing from its sources although it ran
        (every kubelet endpoint failed, say): its families are observations such as
        ``nodemedic_kubelet_up 0``, so they are kept, but the collector is not reported ok.
        None (the default) when at least one source answered."""
        return None

    def unreadable(self) -> Mapping[str, str]:
        """Metric name -> CannotSee reason for the metrics the last successful ``collect()``
        could not read because of the agent's own access (their series are left out). The
        runtime treats them as missing data for that tick. Empty by default."""
        return {}

    async def files_changed(self) -> bool:
        """On SIGHUP: did the files this collector loaded at start (definitions, not settings)
        change? True makes the reload rebuild the collectors, which loads and validates them
        again (an invalid file fails the whole reload). False by default."""
        return False

    async def close(self) -> None:  # noqa: B027 - optional hook, empty by default
        """Release clients and stop background work. Called once on shutdown."""
