"""Workload, not node: before cordoning a node for a problem its pods show, is it their owner's?

Called by agent.safety.gate for a first pass of a disruptive node action (cordon, drain, taint)
whose rule lists ``workload_reasons``: the reasons of the Events nodemedic writes on a pod that
shows the problem (the problem detector writes OOMKilling/TaskHung on the victim pod, rules write
OOMStorm, CPUThrottled, MemoryNearLimit...; every agent sets ``source.host`` to its node).

Evidence from other nodes comes from those Events through the API, not from peers' exporters:
the API is the one place every agent already writes to and every agent may read (no agent has
to reach another's port, which may be TLS-only or firewalled), the Events carry where the problem
was seen (``source.host``) and when (``lastTimestamp``), and they outlive a pod that was killed
or a node that went away. One LIST per reason (field selector ``involvedObject.kind=Pod,
reason=R``, from the watch cache) and a few GETs, only right before a disruptive action.

The check: this node's pods with such an Event newer than ``--safety.workload-window``; their
top controllers (agent.kube.owners: ReplicaSet -> Deployment, StatefulSet, DaemonSet, Job ->
CronJob); the other nodes where pods of the same owner have such an Event. At least
``--safety.workload-other-nodes`` of them: the workload is blamed and the node action denied
with the final reason ``workload_not_node`` (cordoning every node a broken Deployment lands on
fixes nothing); the owner gets an Event ``WorkloadNotNode``, nodemedic_workload_blamed_total
counts it and /status lists it. None of this node's pods implicated, a bare pod, or the problem
on this node only: no blame, the action goes on. The API failing: ``missing_data`` (held and
retried, as every "cannot see"). Pods that are gone cannot be traced to an owner and are ignored.
"""

from __future__ import annotations

import time
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import structlog

from agent.kube.errors import KubeError, KubeNotFound
from agent.kube.events import COMPONENT, InvolvedObject, list_events, record_event
from agent.kube.owners import controller_of, top_owner
from agent.kube.pods import get_pod
from agent.settings import Settings
from agent.structs.metrics import Family, MetricSpec
from agent.structs.remediation import ActionRequest

log = structlog.get_logger("nodemedic.safety.attribution")

REASON = "workload_not_node"
# The node actions a workload's problem must not lead to (restarting a unit or evicting one pod
# is not a verdict on the node).
NODE_ACTIONS = frozenset({"cordon", "drain", "taint"})
EVENT_REASON = "WorkloadNotNode"
# Pod lookups one check may make (this node's pods first): a storm of Events cannot turn one
# cordon decision into thousands of GETs.
MAX_LOOKUPS = 64
RECENT = 20  # blames /status lists

BLAMED = MetricSpec(
    "nodemedic_workload_blamed_total",
    "Disruptive node actions not taken because pods of the same owner showed the problem on "
    "other nodes too (gate reason workload_not_node), by owner.",
    "counter", ("namespace", "owner_kind", "owner"))

_API_VERSIONS = {"ReplicaSet": "apps/v1", "Deployment": "apps/v1", "StatefulSet": "apps/v1",
                 "DaemonSet": "apps/v1", "Job": "batch/v1", "CronJob": "batch/v1"}


@dataclass(frozen=True, slots=True)
class _Owner(InvolvedObject):
    """An Event's involvedObject for a controller (its apiVersion is not v1)."""

    @property
    def api_version(self) -> str:
        return _API_VERSIONS.get(self.kind, "v1")


@dataclass(frozen=True, slots=True)
class Blame:
    """The workload blamed instead of the node."""

    namespace: str
    kind: str
    name: str
    pods: tuple[str, ...]  # this node's pods showing the problem
    nodes: tuple[str, ...]  # the other nodes where the owner's pods show it
    reasons: tuple[str, ...]

    def detail(self) -> str:
        return (f"{self.kind} {self.namespace}/{self.name} shows {'/'.join(self.reasons)} on "
                f"{len(self.nodes)} other node(s) ({', '.join(self.nodes[:5])}) as well as here "
                f"(pod {', '.join(self.pods[:3])}): the workload, not this node")


def _when(event: dict[str, Any]) -> float | None:
    text = event.get("lastTimestamp") or event.get("eventTime") or \
        (event.get("metadata") or {}).get("creationTimestamp")
    try:
        return datetime.fromisoformat(str(text).replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None


def _host(event: dict[str, Any]) -> str:
    """The node whose agent wrote the Event ('' when not one of ours)."""
    source = event.get("source") or {}
    ours = source.get("component") == COMPONENT or event.get("reportingComponent") == COMPONENT
    return str(source.get("host") or event.get("reportingInstance") or "") if ours else ""


class Attribution:
    """See the module docstring; ``settings`` is read at each check (the gate's, after reload)."""

    def __init__(self, settings: Callable[[], Settings], api: Any, *,
                 clock: Callable[[], float] = time.time) -> None:
        self.settings = settings
        self.api = api
        self.clock = clock
        self._blamed: Counter[tuple[str, str, str]] = Counter()
        self._recent: deque[dict[str, Any]] = deque(maxlen=RECENT)

    async def check(self, req: ActionRequest, disruptive: bool) -> tuple[str, str] | None:
        """None to go on, or (gate reason, detail) to deny the request."""
        s = self.settings()
        if (not disruptive or req.action.type not in NODE_ACTIONS or req.undo
                or req.target.kind != "node" or not req.workload_reasons
                or self.api is None or s.safety_workload_other_nodes == 0):
            return None
        try:
            blame = await self.find(req.workload_reasons, s)
        except KubeError as exc:
            return "missing_data", f"cannot tell whether a workload causes this: {exc}"
        if blame is None:
            return None
        await self._report(req, blame)
        return REASON, blame.detail()

    async def find(self, reasons: tuple[str, ...], s: Settings) -> Blame | None:
        """The owner of this node's implicated pods that other nodes' pods share, if any."""
        me, oldest = s.node_name, self.clock() - s.safety_workload_window
        seen: dict[tuple[str, str], set[str]] = {}  # (namespace, pod) -> nodes that saw it
        why: dict[tuple[str, str], set[str]] = {}
        for reason in reasons:
            for ev in await list_events(self.api, f"involvedObject.kind=Pod,reason={reason}"):
                host, at = _host(ev), _when(ev)
                obj = ev.get("involvedObject") or {}
                if not host or at is None or at < oldest or not obj.get("name"):
                    continue
                key = (str(obj.get("namespace") or ""), str(obj["name"]))
                seen.setdefault(key, set()).add(host)
                why.setdefault(key, set()).add(reason)
        mine = sorted(k for k, hosts in seen.items() if me in hosts)
        if not mine:
            return None
        owners = _Owners(self.api)
        for ns, pod in mine:
            owner = await owners.of(ns, pod)
            if owner is None:
                continue
            nodes: set[str] = set()
            for (ons, opod), hosts in sorted(seen.items()):
                others = hosts - {me}
                if ons != ns or not others or others <= nodes:
                    continue
                if await owners.of(ons, opod) == owner:
                    nodes |= others
            if len(nodes) >= s.safety_workload_other_nodes:
                pods = tuple(p for n, p in mine if n == ns and owners.known(n, p) == owner)
                reasons_seen = sorted({r for k in mine if owners.known(*k) == owner
                                       for r in why[k]})
                return Blame(ns, owner[0], owner[1], pods, tuple(sorted(nodes)),
                             tuple(reasons_seen))
        return None

    async def _report(self, req: ActionRequest, blame: Blame) -> None:
        self._blamed[(blame.namespace, blame.kind, blame.name)] += 1
        self._recent.append({
            "at": round(self.clock(), 3), "rule": req.rule, "action": req.action.type,
            "namespace": blame.namespace, "owner_kind": blame.kind, "owner": blame.name,
            "pods": list(blame.pods), "other_nodes": list(blame.nodes),
            "reasons": list(blame.reasons),
        })
        me = self.settings().node_name
        log.warning("workload_blamed", rule=req.rule, action=req.action.type,
                    namespace=blame.namespace, owner=f"{blame.kind}/{blame.name}",
                    other_nodes=list(blame.nodes), pods=list(blame.pods))
        message = (f"{'/'.join(blame.reasons)} on {me} and {len(blame.nodes)} other node(s) "
                   f"({', '.join(blame.nodes[:5])}): nodemedic did not {req.action.type} {me} "
                   f"(rule {req.rule}); the problem follows this workload")
        try:
            await record_event(self.api, _Owner(blame.kind, blame.name, blame.namespace),
                               EVENT_REASON, message, type_="Warning", host=me,
                               action="blame-workload")
        except KubeError as exc:  # the denial stands; log and metric already tell it
            log.warning("workload_event_failed", owner=f"{blame.kind}/{blame.name}",
                        error=str(exc))

    def families(self) -> list[Family]:
        fam = BLAMED.family()
        for labels, n in sorted(self._blamed.items()):
            fam.add(labels, n)
        return [fam]

    def status(self) -> list[dict[str, Any]]:
        return list(self._recent)


class _Owners:
    """Top controllers of pods for one check, with a lookup budget and a per-controller cache."""

    def __init__(self, api: Any) -> None:
        self.api = api
        self.lookups = 0
        self._pods: dict[tuple[str, str], tuple[str, str] | None] = {}
        self._tops: dict[tuple[str, str, str], tuple[str, str]] = {}

    def known(self, ns: str, pod: str) -> tuple[str, str] | None:
        return self._pods.get((ns, pod))

    async def of(self, ns: str, pod: str) -> tuple[str, str] | None:
        """(kind, name) of the pod's top controller; None for a bare or vanished pod, or when
        the lookup budget is spent."""
        if (ns, pod) in self._pods:
            return self._pods[(ns, pod)]
        if self.lookups >= MAX_LOOKUPS:
            return None
        self.lookups += 1
        try:
            obj = await get_pod(self.api, ns, pod)
        except KubeNotFound:
            obj = None
        owner: tuple[str, str] | None = None
        ref = controller_of(obj) if obj is not None else None
        if obj is not None and ref is not None:
            key = (ns, *ref)
            if key not in self._tops:
                try:
                    self._tops[key] = await top_owner(self.api, obj) or ref
                except KubeNotFound:  # its ReplicaSet is gone: the controller we know
                    self._tops[key] = ref
            owner = self._tops[key]
        self._pods[(ns, pod)] = owner
        return owner
