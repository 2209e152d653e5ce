"""Lease-based leader election among agents (the client-go leaderelection algorithm).

Called by agent.peers.stage: ``run()`` is a supervised task; ``is_leader`` is checked right before
every cluster-scoped action; ``release()`` hands the Lease over on shutdown. Followers read the
leader's published annotations (probe assignments) from ``lease``.

Why no two agents ever lead at once, even under API latency and 409s:
- every write is a PUT carrying the resourceVersion we read, so of two contenders exactly one
  succeeds and the other gets 409;
- a follower only takes a Lease over after it has seen the *same* record unchanged for
  ``lease_duration`` on its own monotonic clock (never comparing renewTime with its wall clock,
  so clock skew between nodes does not matter);
- the leader counts its leadership from the moment it *sent* its last successful renewal and
  gives it up ``renew_deadline`` (< ``lease_duration``) later unless renewed again. The record a
  follower observes was written after that send, so the follower's takeover comes at least
  ``lease_duration - renew_deadline`` after the leader stopped acting.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import structlog

from agent.kube import leases
from agent.kube.errors import KubeConflict, KubeError, KubeNotFound
from agent.structs.metrics import Family, MetricSpec

log = structlog.get_logger("nodemedic.leader")

LEADER = MetricSpec("nodemedic_leader", "1 while this agent is the failover leader.", "gauge")
TRANSITIONS = MetricSpec(
    "nodemedic_leader_transitions_total",
    "Times this agent started or stopped leading, by direction (acquired, lost, released).",
    "counter", ("direction",),
)
ELECTION_ERRORS = MetricSpec(
    "nodemedic_leader_election_errors_total",
    "Failed leader-election requests by kind (conflict, unavailable, error).",
    "counter", ("kind",),
)
METRICS = (LEADER, TRANSITIONS, ELECTION_ERRORS)


@dataclass(frozen=True)
class ElectionConfig:
    namespace: str
    identity: str
    name: str = "nodemedic-leader"
    lease_duration: float = 15.0
    renew_deadline: float = 10.0
    retry_period: float = 2.0

    def __post_init__(self) -> None:
        if not 0 < self.retry_period < self.renew_deadline < self.lease_duration:
            raise ValueError("need 0 < retry_period < renew_deadline < lease_duration")


def _record(lease: Mapping[str, Any]) -> tuple[Any, ...]:
    spec = lease.get("spec") or {}
    return (
        spec.get("holderIdentity"), spec.get("renewTime"), spec.get("leaseTransitions"),
        (lease.get("metadata") or {}).get("resourceVersion"),
    )


class LeaderElector:
    """One contender. ``publish()`` sets annotations the leader writes with its next renewal."""

    def __init__(
        self,
        api: Any,
        cfg: ElectionConfig,
        *,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
        on_change: Callable[[bool], None] | None = None,
    ) -> None:
        self.api = api
        self.cfg = cfg
        self.clock = clock
        self.wall = wall
        self.on_change = on_change
        self.lease: dict[str, Any] | None = None  # the latest record seen (any holder)
        self._observed: tuple[Any, ...] | None = None
        self._observed_at = 0.0
        self._valid_until = 0.0
        self._leading = False
        self._annotations: dict[str, str] = {}
        self._transitions = {"acquired": 0, "lost": 0, "released": 0}
        self._errors = {"conflict": 0, "unavailable": 0, "error": 0}
        self.wake = asyncio.Event()

    # ---- state -----------------------------------------------------------------------------
    @property
    def is_leader(self) -> bool:
        """True only while the last successful renewal is younger than renew_deadline."""
        if self._leading and self.clock() >= self._valid_until:
            self._set_leading(False, "lost")
        return self._leading

    @property
    def holder(self) -> str:
        spec = (self.lease or {}).get("spec") or {}
        return str(spec.get("holderIdentity") or "")

    def publish(self, annotations: Mapping[str, str]) -> None:
        """Annotations to carry on the leader Lease (written with the next renewal)."""
        if dict(annotations) != self._annotations:
            self._annotations = dict(annotations)
            self.wake.set()

    def _set_leading(self, leading: bool, direction: str) -> None:
        if leading == self._leading:
            return
        self._leading = leading
        self._transitions[direction] += 1
        log.info("leadership_" + direction, identity=self.cfg.identity, lease=self.cfg.name)
        if self.on_change is not None:
            self.on_change(leading)

    # ---- one round ---------------------------------------------------------------------------
    async def try_once(self) -> bool:
        """One acquire-or-renew attempt; returns whether we lead afterwards."""
        cfg = self.cfg
        sent = self.clock()
        now = self.wall()
        try:
            try:
                current: dict[str, Any] | None = await leases.get_lease(
                    self.api, cfg.namespace, cfg.name
                )
            except KubeNotFound:
                current = None
            if current is None:
                body = self._body(None, now)
                stored = await leases.create_lease(self.api, cfg.namespace, body)
                self._won(stored, sent)
                return True
            self._observe(current)
            spec = current.get("spec") or {}
            holder = str(spec.get("holderIdentity") or "")
            # Honour the longer of our duration and the holder's: agents may differ in config.
            duration = max(cfg.lease_duration, float(spec.get("leaseDurationSeconds") or 0))
            if holder and holder != cfg.identity and self.clock() < (
                self._observed_at + duration
            ):
                if self._leading:
                    self._set_leading(False, "lost")
                return False
            stored = await leases.replace_lease(self.api, cfg.namespace, self._body(current, now))
            self._won(stored, sent)
            return True
        except KubeConflict:
            self._errors["conflict"] += 1
        except KubeError as exc:
            self._errors["unavailable" if exc.status == 0 else "error"] += 1
            log.warning("leader_election_request_failed", error=str(exc))
        return self.is_leader

    def _observe(self, lease: dict[str, Any]) -> None:
        self.lease = lease
        rec = _record(lease)
        if rec != self._observed:
            self._observed = rec
            self._observed_at = self.clock()

    def _won(self, stored: dict[str, Any], sent: float) -> None:
        self._observe(stored)
        self._valid_until = sent + self.cfg.renew_deadline
        if self.clock() < self._valid_until:
            self._set_leading(True, "acquired")

    def _body(self, current: dict[str, Any] | None, now: float) -> dict[str, Any]:
        cfg = self.cfg
        if current is None:
            meta: dict[str, Any] = {"name": cfg.name, "namespace": cfg.namespace}
            spec: dict[str, Any] = {"leaseTransitions": 0, "acquireTime": leases.micro_time(now)}
        else:
            meta = dict(current.get("metadata") or {})
            spec = dict(current.get("spec") or {})
            if spec.get("holderIdentity") != cfg.identity:
                spec["acquireTime"] = leases.micro_time(now)
                spec["leaseTransitions"] = int(spec.get("leaseTransitions") or 0) + 1
        ann = {k: v for k, v in (meta.get("annotations") or {}).items()
               if not k.startswith("nodemedic.io/")}
        ann.update(self._annotations)
        meta["annotations"] = ann
        spec["holderIdentity"] = cfg.identity
        spec["leaseDurationSeconds"] = max(1, round(cfg.lease_duration))
        spec["renewTime"] = leases.micro_time(now)
        return {
            "apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
            "metadata": meta, "spec": spec,
        }

    # ---- loop and hand-over ------------------------------------------------------------------
    async def run(self, stop: asyncio.Event) -> None:
        """Acquire/renew every retry_period (sooner when ``publish`` changed something)."""
        while not stop.is_set():
            await self.try_once()
            self.wake.clear()
            try:
                async with asyncio.timeout(self.cfg.retry_period):
                    await self._wait(stop)
            except TimeoutError:
                pass

    async def _wait(self, stop: asyncio.Event) -> None:
        waiters = [asyncio.ensure_future(stop.wait())]
        if self._leading:
            waiters.append(asyncio.ensure_future(self.wake.wait()))
        try:
            await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for w in waiters:
                w.cancel()

    async def release(self) -> None:
        """Stop leading now and free the Lease so a follower takes over without waiting."""
        if not self._leading:
            return
        self._set_leading(False, "released")
        try:
            current = await leases.get_lease(self.api, self.cfg.namespace, self.cfg.name)
            spec = dict(current.get("spec") or {})
            if spec.get("holderIdentity") != self.cfg.identity:
                return
            spec["holderIdentity"] = ""
            spec["leaseDurationSeconds"] = 1
            spec["renewTime"] = leases.micro_time(self.wall())
            await leases.replace_lease(self.api, self.cfg.namespace, {**current, "spec": spec})
        except KubeError as exc:  # the Lease expires on its own; hand-over is just slower
            log.warning("leader_release_failed", error=str(exc))

    # ---- metrics -------------------------------------------------------------------------------
    def families(self) -> list[Family]:
        leader, trans, errs = LEADER.family(), TRANSITIONS.family(), ELECTION_ERRORS.family()
        leader.add((), 1.0 if self.is_leader else 0.0)
        for direction, n in self._transitions.items():
            trans.add((direction,), n)
        for kind, n in self._errors.items():
            errs.add((kind,), n)
        return [leader, trans, errs]
