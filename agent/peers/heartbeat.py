"""Each agent's own Lease ``nodemedic-<node>``: its liveness, URL and its probe observations.

Called by agent.peers.stage on every agent. Agents may not expose writable HTTP endpoints, so the
only way a follower tells the leader what it saw is the API: the Lease (labelled
``nodemedic.io/heartbeat=true`` so the leader can watch them all with one selector) carries
- ``spec.renewTime`` / ``holderIdentity``: the agent is alive and talking to the API server;
- annotation ``nodemedic.io/agent-url``: where peers probe its /healthz;
- annotation ``nodemedic.io/probes``: ``{"<target>": [ok 0/1, seq]}`` for the targets the leader
  asked it to probe. ``seq`` grows with every probe so the leader can time each result on its own
  clock when the change reaches it (no cross-node clock comparison).
Writes are PUTs with the resourceVersion read (409 -> re-read, retry once next beat).
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable, Mapping
from typing import Any

import structlog

from agent.kube import leases
from agent.kube.errors import KubeConflict, KubeError, KubeNotFound
from agent.peers.prober import ProbeResult

log = structlog.get_logger("nodemedic.heartbeat")

URL_ANNOTATION = "nodemedic.io/agent-url"
PROBES_ANNOTATION = "nodemedic.io/probes"
HEARTBEAT_LABEL = "nodemedic.io/heartbeat"
LEASE_PREFIX = "nodemedic-"


def lease_name(node: str) -> str:
    """``nodemedic-<node>``; names too long for an object name are shortened with a hash (the
    leader reads the node from ``holderIdentity``, never from the name)."""
    name = LEASE_PREFIX + node
    if len(name) <= 253:
        return name
    return f"{name[:230]}-{hashlib.sha256(node.encode()).hexdigest()[:16]}"


def encode_probes(results: Mapping[str, ProbeResult]) -> str:
    return json.dumps(
        {t: [int(r.ok), r.seq] for t, r in sorted(results.items())}, separators=(",", ":")
    )


def decode_probes(text: str | None) -> dict[str, tuple[bool, int]]:
    """Garbage reads as no observations (counted by the caller), never as 'unreachable'."""
    if not text:
        return {}
    try:
        data = json.loads(text)
    except ValueError:
        return {}
    out: dict[str, tuple[bool, int]] = {}
    if isinstance(data, dict):
        for target, item in data.items():
            if isinstance(item, list) and len(item) == 2 and all(isinstance(x, int) for x in item):
                out[str(target)] = (bool(item[0]), int(item[1]))
    return out


class Heartbeat:
    """Owns this agent's heartbeat Lease; ``beat()`` writes it when something changed or is due."""

    def __init__(
        self, api: Any, namespace: str, node: str, url: str, *, interval: float = 10.0,
        lease_seconds: int = 60, wall: Callable[[], float] = time.time,
    ) -> None:
        self.api = api
        self.namespace = namespace
        self.node = node
        self.url = url
        self.interval = interval
        self.lease_seconds = lease_seconds
        self.wall = wall
        self.writes = 0
        self.errors = 0
        self._current: dict[str, Any] | None = None
        self._written: tuple[str, str] | None = None
        self._last_write = 0.0

    async def beat(self, probes: Mapping[str, ProbeResult], *, force: bool = False) -> bool:
        """Write the Lease if the probes or URL changed or the interval elapsed; True if written."""
        encoded = encode_probes(probes)
        now = self.wall()
        content = (self.url, encoded)
        if not force and content == self._written and now - self._last_write < self.interval:
            return False
        try:
            if self._current is None:
                try:
                    self._current = await leases.get_lease(
                        self.api, self.namespace, lease_name(self.node)
                    )
                except KubeNotFound:
                    self._current = None
            body = self._body(encoded, now)
            if self._current is None:
                stored = await leases.create_lease(self.api, self.namespace, body)
            else:
                stored = await leases.replace_lease(self.api, self.namespace, body)
        except KubeConflict:
            self._current = None  # re-read next time
            self.errors += 1
            return False
        except KubeError as exc:
            self.errors += 1
            log.warning("heartbeat_write_failed", node=self.node, error=str(exc))
            return False
        self._current = stored
        self._written = content
        self._last_write = now
        self.writes += 1
        return True

    def _body(self, encoded: str, now: float) -> dict[str, Any]:
        cur = self._current or {}
        meta = dict(cur.get("metadata") or {"name": lease_name(self.node),
                                              "namespace": self.namespace})
        meta["labels"] = {**(meta.get("labels") or {}), HEARTBEAT_LABEL: "true",
                          "app.kubernetes.io/name": "nodemedic"}
        meta["annotations"] = {**(meta.get("annotations") or {}), URL_ANNOTATION: self.url,
                               PROBES_ANNOTATION: encoded}
        spec = {**(cur.get("spec") or {}), "holderIdentity": self.node,
                "leaseDurationSeconds": self.lease_seconds, "renewTime": leases.micro_time(now)}
        return {"apiVersion": "coordination.k8s.io/v1", "kind": "Lease", "metadata": meta,
                "spec": spec}
