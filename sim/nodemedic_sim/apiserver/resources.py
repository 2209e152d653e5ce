"""The resource types the in-memory API server serves, with their Kubernetes metadata.

Read by the store (storage keys), the router in nodemedic_sim.apiserver.server (URL paths and
discovery documents) and nodemedic_sim.apiserver.selectors (which field selectors each resource
supports, as kube-apiserver's per-resource field label conversion does).
"""

from __future__ import annotations

from dataclasses import dataclass, field

_META_FIELDS = ("metadata.name", "metadata.namespace")


@dataclass(frozen=True)
class ResourceType:
    """One served resource: group/version/plural and how Kubernetes treats it."""

    group: str
    version: str
    plural: str
    kind: str
    namespaced: bool
    subresources: tuple[str, ...] = ()
    short_names: tuple[str, ...] = ()
    # Field selectors kube-apiserver accepts for this resource (besides metadata.*).
    fields: tuple[str, ...] = ()
    # Storage shared with another resource (events.k8s.io/v1 events live with core/v1 events).
    storage: str = ""
    singular: str = field(default="")

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}" if self.group else self.version

    @property
    def list_kind(self) -> str:
        return self.kind + "List"

    @property
    def key(self) -> str:
        """Storage key; objects of two resources with the same key are the same objects."""
        return self.storage or (f"{self.plural}.{self.group}" if self.group else self.plural)

    @property
    def field_labels(self) -> tuple[str, ...]:
        return _META_FIELDS + self.fields if self.namespaced else ("metadata.name", *self.fields)

    @property
    def has_status(self) -> bool:
        return "status" in self.subresources


_EVENT_FIELDS = (
    "involvedObject.kind",
    "involvedObject.namespace",
    "involvedObject.name",
    "involvedObject.uid",
    "involvedObject.apiVersion",
    "involvedObject.resourceVersion",
    "involvedObject.fieldPath",
    "reason",
    "reportingComponent",
    "source",
    "type",
)

RESOURCES: tuple[ResourceType, ...] = (
    ResourceType(
        "", "v1", "namespaces", "Namespace", False, ("status",), ("ns",), ("status.phase",)
    ),
    ResourceType("", "v1", "nodes", "Node", False, ("status",), ("no",), ("spec.unschedulable",)),
    ResourceType(
        "",
        "v1",
        "pods",
        "Pod",
        True,
        ("status", "eviction"),
        ("po",),
        (
            "spec.nodeName",
            "spec.restartPolicy",
            "spec.schedulerName",
            "spec.serviceAccountName",
            "spec.hostNetwork",
            "status.phase",
            "status.podIP",
            "status.nominatedNodeName",
        ),
    ),
    ResourceType("", "v1", "configmaps", "ConfigMap", True, (), ("cm",)),
    ResourceType("", "v1", "events", "Event", True, (), ("ev",), _EVENT_FIELDS),
    ResourceType(
        "events.k8s.io", "v1", "events", "Event", True, (), ("ev",), _EVENT_FIELDS, storage="events"
    ),
    ResourceType("coordination.k8s.io", "v1", "leases", "Lease", True),
    ResourceType(
        "policy", "v1", "poddisruptionbudgets", "PodDisruptionBudget", True, ("status",), ("pdb",)
    ),
    ResourceType("discovery.k8s.io", "v1", "endpointslices", "EndpointSlice", True),
    # kubectl drain reads a pod's DaemonSet to decide whether --ignore-daemonsets applies.
    ResourceType("apps", "v1", "daemonsets", "DaemonSet", True, ("status",), ("ds",)),
    # Pods' controllers, for the owner lookups of agent.kube.owners (annotate target: owner,
    # agent.safety.attribution): pod -> ReplicaSet -> Deployment, StatefulSet, Job -> CronJob.
    ResourceType("apps", "v1", "replicasets", "ReplicaSet", True, ("status",), ("rs",)),
    ResourceType("apps", "v1", "deployments", "Deployment", True, ("status",), ("deploy",)),
    ResourceType("apps", "v1", "statefulsets", "StatefulSet", True, ("status",), ("sts",)),
    ResourceType("batch", "v1", "jobs", "Job", True, ("status",)),
    ResourceType("batch", "v1", "cronjobs", "CronJob", True, ("status",), ("cj",)),
)

BY_PATH: dict[tuple[str, str, str], ResourceType] = {
    (r.group, r.version, r.plural): r for r in RESOURCES
}
BY_KIND: dict[str, ResourceType] = {}
for _r in RESOURCES:
    BY_KIND.setdefault(_r.kind, _r)


def lookup(group: str, version: str, plural: str) -> ResourceType | None:
    """The resource served at /api(s)/group/version/plural, or None."""
    return BY_PATH.get((group, version, plural))


def for_object(obj: dict[str, object]) -> ResourceType:
    """The resource an object belongs to, from its apiVersion and kind (KeyError if unknown)."""
    api_version = str(obj.get("apiVersion") or "v1")
    group, _, version = api_version.rpartition("/")
    kind = str(obj.get("kind") or "")
    for r in RESOURCES:
        if r.kind == kind and r.group == group and r.version == version:
            return r
    raise KeyError(f"unsupported object {api_version} {kind}")
