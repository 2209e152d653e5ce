"""In-memory Kubernetes API server for tests, the demo and scale benchmarks.

``ApiServer`` (nodemedic_sim.apiserver.server) is the entry point; the other modules are its
parts: resources (what is served), store (objects, resourceVersion, watch history), registry
(create/update/delete semantics), selectors, patch, eviction (PDBs), table (kubectl output),
convert (events.k8s.io), faults (fault injection, request accounting) and status (error bodies).
See docs/apiserver.md.
"""

from nodemedic_sim.apiserver.server import ApiServer
from nodemedic_sim.apiserver.status import ApiError

__all__ = ["ApiError", "ApiServer"]
