"""Pod references as the kubelet reports them: UID -> namespace/name/QoS and container names.

Produced by agent.kubelet_client (from the kubelet's /pods); consumed by the cgroup collector to
attribute cgroups (which only know pod UIDs and container IDs) to namespace/pod/container.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field


@dataclass(frozen=True, slots=True)
class PodRef:
    """One pod on this node. ``containers`` maps runtime container ID (no scheme) -> name."""

    uid: str
    namespace: str
    name: str
    qos_class: str = ""  # Guaranteed, Burstable or BestEffort as the kubelet reports it
    phase: str = ""
    containers: Mapping[str, str] = field(default_factory=dict)
