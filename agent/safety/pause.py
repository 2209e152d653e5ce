"""The pause switch on-call can flip without restarting anything, read from the API.

Called by agent.safety.gate before every decision. One node is paused by the annotation
``nodemedic.io/paused=true`` on its Node; every node by ``data.paused: "true"`` in the ConfigMap
named by ``--safety.pause-configmap`` (default kube-system/nodemedic). Reads are cached for a few
seconds (one tick's decisions share them). When the API cannot be read the view is not ``ok`` and
the gate denies node actions as ``missing_data``: not knowing whether we are paused means paused.
The same ConfigMap read carries the cluster-wide freeze (key ``freeze``, raw value in
``ClusterView.freeze``; agent.safety.windows says what it means), so a freeze reaches every
agent as fast as a pause does.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from agent.kube.configmaps import get_configmap_data
from agent.kube.errors import KubeError
from agent.kube.nodes import get_node, read_annotations
from agent.safety.windows import FREEZE_KEY

PAUSE_ANNOTATION = "nodemedic.io/paused"
CACHE_SECONDS = 5.0


def truthy(value: str | None) -> bool:
    return (value or "").strip().lower() in ("true", "1", "yes", "on")


@dataclass(frozen=True)
class ClusterView:
    """What the gate knows about this node and the cluster switch at one moment."""

    ok: bool
    node: dict[str, Any] = field(default_factory=dict)
    node_paused: bool = False
    cluster_paused: bool = False
    freeze: str | None = None  # the ConfigMap's raw ``freeze`` value
    error: str = ""
    read_at: float = 0.0


class PauseSwitch:
    """Cached reader of the node annotation and the cluster ConfigMap."""

    def __init__(
        self,
        api: Any,
        node_name: str,
        configmap: str,
        clock: Callable[[], float] = time.monotonic,
        ttl: float = CACHE_SECONDS,
    ) -> None:
        self.api = api
        self.node_name = node_name
        self.namespace, _, self.name = configmap.partition("/")
        self.clock = clock
        self.ttl = ttl
        self._view: ClusterView | None = None
        self._stale = False

    def invalidate(self) -> None:
        """Re-read on the next view() (after we changed the node ourselves); ``last`` stays."""
        self._stale = True

    @property
    def last(self) -> ClusterView | None:
        return self._view

    async def view(self) -> ClusterView:
        now = self.clock()
        if self._view is not None and not self._stale and now - self._view.read_at < self.ttl:
            return self._view
        self._stale = False
        try:
            node = await get_node(self.api, self.node_name)
            data = await get_configmap_data(self.api, self.namespace, self.name)
        except KubeError as exc:
            view = ClusterView(ok=False, error=str(exc), read_at=now)
        else:
            view = ClusterView(
                ok=True,
                node=node,
                node_paused=truthy(read_annotations(node).get(PAUSE_ANNOTATION)),
                cluster_paused=truthy((data or {}).get("paused")),
                freeze=(data or {}).get(FREEZE_KEY),
                read_at=now,
            )
        self._view = view
        return view
