"""Pure data shared by every layer (metrics families, snapshots, findings, plans, decisions).

Imports nothing from the rest of ``agent``: collectors produce these, the rules engine reads them,
the exporter renders them.
"""

from agent.structs.metrics import Family, MetricSpec, MetricType
from agent.structs.snapshot import CollectorStatus, Snapshot

__all__ = ["CollectorStatus", "Family", "MetricSpec", "MetricType", "Snapshot"]
