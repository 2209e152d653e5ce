"""Write core/v1 Events with repeat aggregation: the `kubectl describe` record of what we did.

Called by agent.actions.event (rule-requested Events), agent.runtime.action_events (one Event per
real action, with the rule name and observed values) and agent.peers.remedy (the failover's).
Repeats of the same reason on the same object update one Event (count + 1, lastTimestamp, latest
message) instead of creating new ones, like the kubelet's event correlator, so an OOM storm
cannot flood etcd.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from kubernetes_asyncio import client

from agent.kube.errors import (
    REQUEST_TIMEOUT_SECONDS,
    KubeConflict,
    KubeNotFound,
    call_json,
    raw_body,
)

COMPONENT = "nodemedic"
MESSAGE_LIMIT = 1024  # the API server rejects very long messages; keep Events readable anyway


@dataclass(frozen=True, slots=True)
class InvolvedObject:
    """The object an Event is about (a Node or a Pod)."""

    kind: str
    name: str
    namespace: str = ""
    uid: str = ""

    @property
    def api_version(self) -> str:
        return "v1"

    @property
    def event_namespace(self) -> str:
        # Events about cluster-scoped objects (Nodes) live in "default", as kubectl expects.
        return self.namespace or "default"


def event_name(obj: InvolvedObject, reason: str, type_: str) -> str:
    """Deterministic Event name per (object, reason, type): the aggregation key."""
    digest = hashlib.sha256(
        f"{obj.kind}/{obj.namespace}/{obj.name}/{obj.uid}/{reason}/{type_}".encode()
    ).hexdigest()[:12]
    return f"{obj.name[:200]}.nodemedic.{digest}"


async def last_recorded(api: Any, obj: InvolvedObject, reason: str, type_: str) -> float | None:
    """Unix time of the last repeat of our Event (object, reason, type); None when there is none
    (or its timestamp is unreadable). Whole seconds: Event timestamps have no fraction. Called by
    agent.peers.remedy so a resuming failover leader records each Event once per episode."""
    try:
        current = await call_json(
            client.CoreV1Api(api).read_namespaced_event(
                event_name(obj, reason, type_), obj.event_namespace,
                _preload_content=False, _request_timeout=REQUEST_TIMEOUT_SECONDS,
            )
        )
    except KubeNotFound:
        return None
    try:
        return datetime.fromisoformat(str(current.get("lastTimestamp"))).timestamp()
    except ValueError:
        return None


async def list_events(api: Any, field_selector: str) -> list[dict[str, Any]]:
    """Events of every namespace matching ``field_selector`` (e.g. ``involvedObject.kind=Pod,
    reason=OOMKilling``), from the API server's watch cache. Called by
    agent.safety.attribution before a disruptive action: are other nodes seeing the same?"""
    body = await call_json(
        client.CoreV1Api(api).list_event_for_all_namespaces(
            field_selector=field_selector, resource_version="0",
            _preload_content=False, _request_timeout=REQUEST_TIMEOUT_SECONDS,
        )
    )
    return [item for item in body.get("items") or [] if isinstance(item, dict)]


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


async def record_event(
    api: Any,
    obj: InvolvedObject,
    reason: str,
    message: str,
    *,
    type_: str = "Normal",
    host: str = "",
    action: str = "",
    count: int = 1,
) -> dict[str, Any]:
    """Create the Event or bump its count (by ``count`` occurrences aggregated by the caller,
    e.g. agent.problems coalescing a burst of OOM kills); returns the stored Event."""
    core = client.CoreV1Api(api)
    ns = obj.event_namespace
    name = event_name(obj, reason, type_)
    message = message[:MESSAGE_LIMIT]
    for _ in range(5):
        try:
            current = await call_json(
                core.read_namespaced_event(
                    name, ns, _preload_content=False, _request_timeout=REQUEST_TIMEOUT_SECONDS
                )
            )
        except KubeNotFound:
            current = None
        now = _now()
        if current is None:
            body: dict[str, Any] = {
                "apiVersion": "v1",
                "kind": "Event",
                "metadata": {"name": name, "namespace": ns},
                "involvedObject": {
                    "apiVersion": obj.api_version,
                    "kind": obj.kind,
                    "name": obj.name,
                    **({"namespace": obj.namespace} if obj.namespace else {}),
                    **({"uid": obj.uid} if obj.uid else {}),
                },
                "reason": reason,
                "message": message,
                "type": type_,
                "count": count,
                "firstTimestamp": now,
                "lastTimestamp": now,
                "source": {"component": COMPONENT, **({"host": host} if host else {})},
                "reportingComponent": COMPONENT,
                "reportingInstance": host or COMPONENT,
                **({"action": action} if action else {}),
            }
            try:
                return await call_json(
                    core.create_namespaced_event(
                        ns,
                        raw_body(body),
                        _preload_content=False,
                        _request_timeout=REQUEST_TIMEOUT_SECONDS,
                    )
                )
            except KubeConflict:
                continue  # created concurrently: read it and bump instead
        current["count"] = int(current.get("count") or 1) + count
        current["lastTimestamp"] = now
        current["message"] = message
        try:
            return await call_json(
                core.replace_namespaced_event(
                    name,
                    ns,
                    raw_body(current),
                    _preload_content=False,
                    _request_timeout=REQUEST_TIMEOUT_SECONDS,
                )
            )
        except (KubeConflict, KubeNotFound):
            continue
    raise KubeConflict(409, f"event {ns}/{name} kept changing; gave up after 5 attempts")
