"""The failover component: leader election, peer probes, failed-node detection and remediation.

Built by agent.runtime.components (``await build_failover_stage(settings, ctx)``) on every agent;
the daemon calls ``start()``, ``on_snapshot()`` each tick (a no-op: nothing here runs on the tick),
``families()``/``status()`` for /metrics and /status, ``reload()`` and ``close()``. All work runs
in its own supervised tasks, so a slow API never stalls collection:
- every agent: the election loop (agent.peers.leader) and the probe loop, which probes the targets
  the leader assigned it and publishes the results in its heartbeat Lease (agent.peers.heartbeat);
- the leader only: three watches (agent.peers.cluster), the evaluation loop (pure
  agent.peers.detector on each change), the probe assignments it publishes on its Lease, and one
  task per failed node (agent.peers.work) walking the ladder of agent.peers.remedy under the
  Lease cap (agent.peers.slots): cordon + taint -> evictions -> out-of-service once fenced -> (on
  recovery) undo. Mass failure, partitions and unknown nodes get a metric and an Event, never an
  action. What the leader remembers per node is one agent.peers.episodes record, pruned whole.
A new leader resumes from the node's state annotation (agent.peers.remedy): an unfinished ladder
is walked again (each step idempotent, each Event written once), and a node found fenced gets its
Event and its slot release finished, in case the leader before died between them.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import time
from collections import deque
from collections.abc import Callable, Coroutine
from typing import Any

import structlog

from agent.kube.errors import KubeError
from agent.kube.events import InvolvedObject, record_event
from agent.kube.nodes import get_node
from agent.peers.cluster import ClusterView
from agent.peers.detector import STATES, Assessment, DetectorConfig, assess, parse_limit
from agent.peers.episodes import PRUNE_SLACK, Episodes
from agent.peers.heartbeat import Heartbeat
from agent.peers.leader import LEADER, ElectionConfig, LeaderElector
from agent.peers.prober import Prober, transport_for
from agent.peers.remedy import Remedy
from agent.peers.slots import Slots
from agent.peers.work import FailoverWork
from agent.settings import Settings
from agent.structs.metrics import Family, MetricSpec
from agent.structs.snapshot import Snapshot

log = structlog.get_logger("nodemedic.failover")

ASSIGNMENTS_ANNOTATION = "nodemedic.io/probe-assignments"
TIMELINE_SIZE = 200
EVAL_MIN_GAP = 0.2  # seconds between two evaluations of the whole cluster
HEARTBEAT_REFRESH = 300.0  # heartbeat Lease rewritten at least this often (else only on change)

PEER_NODES = MetricSpec(
    "nodemedic_peer_nodes", "Nodes by failover state, as the leader classifies them (leader only).",
    "gauge", ("state",),
)
MASS_FAILURE = MetricSpec(
    "nodemedic_mass_failure_protection_active",
    "1 while too many nodes look unhealthy at once and the leader takes no node action.", "gauge",
)
FAILOVER_ACTIONS = MetricSpec(
    "nodemedic_failover_actions_total",
    "Leader actions on failed nodes by action, gate decision and outcome (none if not run).",
    "counter", ("action", "decision", "outcome"),
)
REMEDIATIONS = MetricSpec(
    "nodemedic_failover_remediations_in_progress",
    "Failed nodes this leader is remediating now.", "gauge",
)
CAP_DENIED = MetricSpec(
    "nodemedic_failover_cap_denied_total",
    "Remediations postponed because --failover.max-concurrent slots were all taken.", "counter",
)
PROBES = MetricSpec(
    "nodemedic_peer_probes_total", "Probes of peer agents' /healthz by this agent, by result.",
    "counter", ("result",),
)
HEARTBEATS = MetricSpec(
    "nodemedic_peer_heartbeat_writes_total", "Writes of this agent's heartbeat Lease, by result.",
    "counter", ("result",),
)
EVENTS_FAILED = MetricSpec(
    "nodemedic_failover_events_failed_total",
    "Failover Events that could not be written, or were dropped while the API was slow.",
    "counter",
)
METRICS = (PEER_NODES, MASS_FAILURE, FAILOVER_ACTIONS, REMEDIATIONS, CAP_DENIED, PROBES,
           HEARTBEATS, EVENTS_FAILED)


def choose_probers(
    target: str, zone_of: dict[str, str], candidates: list[str], k: int
) -> list[str]:
    """``k`` probers for ``target``: deterministic, spread over as many zones as possible."""
    ranked = sorted(candidates, key=lambda c: hashlib.sha256(f"{target}/{c}".encode()).digest())
    chosen: list[str] = []
    zones: set[str] = set()
    for c in ranked:  # first one per zone, then fill up
        if len(chosen) < k and zone_of.get(c, "") not in zones:
            chosen.append(c)
            zones.add(zone_of.get(c, ""))
    for c in ranked:
        if len(chosen) < k and c not in chosen:
            chosen.append(c)
    return chosen


class FailoverStage(FailoverWork):
    """See the module docstring. Inert (only ``nodemedic_leader 0``) when disabled or no API."""

    def __init__(
        self, settings: Settings, api: Any, *, clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
    ) -> None:
        self.settings = settings
        self.api = api
        self.clock = clock
        self.wall = wall
        self.me = settings.node_name
        self.enabled = settings.failover_enabled and api is not None
        self.elector: LeaderElector | None = None
        self.prober: Prober | None = None
        self.heartbeat: Heartbeat | None = None
        self.remedy = Remedy(settings, api, self.me, wall=wall)
        self.slots = Slots(api, settings.failover_lease_namespace, settings.failover_max_concurrent,
                           wall=wall)
        self.view: ClusterView | None = None
        self.assessment = Assessment()
        self.timeline: deque[dict[str, Any]] = deque(maxlen=TIMELINE_SIZE)
        self._stop = asyncio.Event()
        self._changed = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self.episodes = Episodes()  # all per-node memory: one record per node, pruned whole
        self._suspects: dict[str, str] = {}  # target -> agent URL the leader probes
        self._mass_announced = False
        self._probe_counts = {"reachable": 0, "unreachable": 0}
        self._abandoned = False
        self._event_tasks: set[asyncio.Task[None]] = set()

    # ---- component protocol ------------------------------------------------------------------
    async def start(self) -> None:
        if not self.enabled:
            return
        s = self.settings
        cfg = ElectionConfig(
            namespace=s.failover_lease_namespace, identity=self.me,
            lease_duration=s.failover_lease_duration,
            renew_deadline=s.failover_lease_duration * 2 / 3,
            retry_period=min(s.failover_retry_period, s.failover_lease_duration / 3),
        )
        self.elector = LeaderElector(self.api, cfg, clock=self.clock, wall=self.wall,
                                     on_change=self._leadership_changed)
        self.prober = Prober(self.me, transport_for(self.me), s.failover_probe_timeout,
                             clock=self.wall)
        url = await self._advertise_url()
        self.heartbeat = Heartbeat(self.api, s.failover_lease_namespace, self.me, url,
                                   interval=HEARTBEAT_REFRESH,
                                   lease_seconds=int(2 * HEARTBEAT_REFRESH),
                                   wall=self.wall)
        self._spawn("election", self.elector.run(self._stop))
        self._spawn("probes", self._probe_loop())
        self._spawn("leader", self._leader_loop())

    async def on_snapshot(self, snapshot: Snapshot) -> None:
        """Nothing to do per tick: detection runs on watch events in its own task."""

    async def reload(self, settings: Settings) -> None:
        """Prepare and commit at once (tests); see :meth:`prepare_reload`."""
        (await self.prepare_reload(settings))()

    async def prepare_reload(self, settings: Settings) -> Callable[[], None]:
        """Validate new settings without touching the running stage; the returned commit (which
        cannot fail) applies them. Options the stage reads only at start (failover.enabled, the
        lease namespace, lease duration and retry period) are declared ``restart`` in
        agent.settings: the daemon keeps their running values and reports them."""
        for spec in (settings.failover_max_unhealthy, settings.failover_max_unhealthy_zone):
            parse_limit(spec)  # raise on garbage: the daemon keeps the old settings

        def commit() -> None:
            self.settings = settings
            self.remedy.settings = settings
            self.remedy.targets.clear()
            self.slots.max_concurrent = settings.failover_max_concurrent
            if self.prober is not None:
                self.prober.timeout = settings.failover_probe_timeout

        return commit

    async def abandon(self) -> None:
        """Stop at once and hand nothing over, as a power cut would (the demo's node kill)."""
        self._abandoned = True
        await self.close()

    async def close(self) -> None:
        self._stop.set()
        work = [rec.work for _, rec in self.episodes if rec.work is not None]
        for t in [*work, *self._tasks, *self._event_tasks]:
            t.cancel()
        for t in [*work, *self._tasks, *self._event_tasks]:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await t
        if self.view is not None:
            await self.view.stop()
        if self.elector is not None and not self._abandoned:
            await self.elector.release()
        if self.prober is not None:
            await self.prober.close()

    # ---- plumbing ------------------------------------------------------------------------------
    def _spawn(self, name: str, coro: Coroutine[Any, Any, None]) -> None:
        self._tasks.append(asyncio.create_task(self._guard(name, coro), name=f"nodemedic:{name}"))

    async def _guard(self, name: str, coro: Coroutine[Any, Any, None]) -> None:
        try:
            await coro
        except asyncio.CancelledError:
            raise
        except Exception:  # a bug here must not take the agent down; the loop is restarted
            log.exception("failover_task_crashed", task=name)
            if not self._stop.is_set():
                await asyncio.sleep(1.0)
                restart = {"probes": self._probe_loop, "leader": self._leader_loop}.get(name)
                if restart is not None:
                    self._spawn(name, restart())

    def _leadership_changed(self, leading: bool) -> None:
        self._note("", "leader" if leading else "follower", f"{self.me} "
                   + ("became the leader" if leading else "stopped leading"))
        self._changed.set()

    async def _advertise_url(self) -> str:
        host, port = self.settings.listen_host_port()
        if self.settings.web_probe_address:  # the main listener may be TLS or authenticated
            phost, _, pport = self.settings.web_probe_address.rpartition(":")
            host, port = phost.strip("[]") or "0.0.0.0", int(pport)
        if host in ("0.0.0.0", "::", ""):
            try:
                node = await get_node(self.api, self.me)
            except KubeError:
                node = {}
            for addr in (node.get("status") or {}).get("addresses") or []:
                if isinstance(addr, dict) and addr.get("type") == "InternalIP":
                    host = str(addr.get("address"))
        if port == 0 or host in ("0.0.0.0", "::", ""):
            log.warning("failover_no_advertisable_url", listen=self.settings.web_listen_address)
            return ""
        return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"

    # ---- probing (every agent) ---------------------------------------------------------------
    def _assigned(self) -> dict[str, str]:
        assert self.elector is not None
        lease = self.elector.lease or {}
        if self.elector.holder in ("", self.me):
            return {}
        raw = ((lease.get("metadata") or {}).get("annotations") or {}).get(ASSIGNMENTS_ANNOTATION)
        try:
            data = json.loads(raw) if raw else {}
        except ValueError:
            return {}
        out: dict[str, str] = {}
        if isinstance(data, dict):
            for target, item in data.items():
                if isinstance(item, dict) and self.me in (item.get("probers") or []):
                    url = item.get("url")
                    if isinstance(url, str) and url and target != self.me:
                        out[str(target)] = url
        return out

    async def _probe_loop(self) -> None:
        assert self.elector is not None and self.prober is not None
        assert self.heartbeat is not None
        while not self._stop.is_set():
            leading = self.elector.is_leader
            targets = dict(self._suspects) if leading else self._assigned()
            if targets:
                results = await self.prober.probe_many(targets)
                for target, res in results.items():
                    self._probe_counts["reachable" if res.ok else "unreachable"] += 1
                    if leading and self.view is not None:
                        self.view.record(self.me, target, res.ok)
                if leading:
                    self._changed.set()
            elif self.prober.results:
                await self.prober.probe_many({})  # forget old targets
            await self.heartbeat.beat({} if leading else self.prober.results)
            await self._sleep(self.settings.failover_retry_period)

    # ---- the leader ----------------------------------------------------------------------------
    async def _leader_loop(self) -> None:
        assert self.elector is not None
        while not self._stop.is_set():
            if not self.elector.is_leader:
                await self._step_down()
                await self._sleep(self.settings.failover_retry_period, self._changed)
                self._changed.clear()
                continue
            if self.view is None:
                self.view = ClusterView(
                    self.api, self.settings.failover_lease_namespace, clock=self.clock,
                    wall=self.wall, on_change=self._changed.set,
                )
                self.view.start()
            if self.view.synced:
                await self._evaluate()
            # At most a few evaluations a second however busy the watches are (5,000 kubelets
            # renewing every 10 s is 500 changes/s); still well inside the 2 s overhead target.
            await self._sleep(EVAL_MIN_GAP)
            self._changed.clear()
            await self._sleep(self.settings.failover_retry_period, self._changed)

    async def _step_down(self) -> None:
        for task in self.episodes.step_down():  # the next leader reads the rest back
            task.cancel()
        self._suspects.clear()
        if self.view is not None:
            view, self.view = self.view, None
            await view.stop()
            self.assessment = Assessment()

    def _detector_config(self, probers: int) -> DetectorConfig:
        s = self.settings
        return DetectorConfig(
            node_grace=s.failover_node_grace,
            probe_max_age=max(3 * s.failover_retry_period + s.failover_probe_timeout, 2.0),
            min_probers=1 + probers,
            max_unhealthy=s.failover_max_unhealthy,
            max_unhealthy_zone=s.failover_max_unhealthy_zone,
        )

    async def _evaluate(self) -> None:
        assert self.view is not None and self.elector is not None
        s = self.settings
        now = self.clock()
        infos = self.view.nodes.items
        zone_of = {n: i.zone for n, i in infos.items()}
        early = s.failover_node_grace / 2
        urls = {n: self.view.agent_url(n) for n in infos}
        healthy_agents = [
            n for n, i in infos.items()
            if n != self.me and urls[n] and i.ready is not False
            and now - self.view.renewed.get(n, now - 2 * s.failover_node_grace) <= early
        ]
        k = min(s.failover_probers, len(healthy_agents))
        self.assessment = assess(self.view.views(), now, self._detector_config(k))
        # Probe nodes as soon as their heartbeat is late (half the grace), so that fresh results
        # are ready the moment the grace period ends: detection adds no probe round-trip.
        suspects: dict[str, str] = {}
        assignments: dict[str, dict[str, Any]] = {}
        for name, info in infos.items():
            renewed = self.view.renewed.get(name)
            late = renewed is None or now - renewed > early or info.ready is not True
            url = urls[name]
            if not late or name == self.me or not url:
                continue
            suspects[name] = url
            assignments[name] = {
                "url": url, "probers": choose_probers(name, zone_of, healthy_agents, k),
            }
        self._suspects = suspects
        self.elector.publish({ASSIGNMENTS_ANNOTATION: json.dumps(
            assignments, separators=(",", ":"), sort_keys=True)})
        for gone in [t for t in self.view.probes if t not in suspects]:
            self.view.forget_probes(gone)  # old evidence must not decide a future episode
        await self._mass_failure_event()
        for name, verdict in self.assessment.verdicts.items():
            await self._decide(name, verdict, now)
        self._prune(set(infos))

    def _prune(self, nodes: set[str]) -> None:
        """Forget deleted nodes (autoscaled clusters churn through names): their episode records
        as a whole, and the remedy's memory of them, once more names are held than there are
        nodes. A failover still running for a deleted node finishes first."""
        if max(len(self.episodes), len(self.remedy.targets)) <= len(nodes) + PRUNE_SLACK:
            return
        self.episodes.prune(nodes)
        for gone in [n for n in self.remedy.targets if n not in nodes]:
            if self.episodes.peek(gone) is None:
                self.remedy.forget(gone)

    async def _mass_failure_event(self) -> None:
        a = self.assessment
        if a.mass_failure and not self._mass_announced:
            self._mass_announced = True
            self._note("", "mass_failure", a.mass_reason)
            log.error("mass_failure_protection", reason=a.mass_reason)
            await self._cluster_event(
                "NodemedicMassFailureProtection",
                f"{a.mass_reason}: assuming a network or control-plane problem, taking no "
                "node-level action until fewer nodes look unhealthy", "Warning",
            )
        elif not a.mass_failure and self._mass_announced:
            self._mass_announced = False
            self._note("", "mass_failure_over", "unhealthy nodes back under the limits")
            await self._cluster_event("NodemedicMassFailureOver",
                                      "unhealthy nodes are back under the limits", "Normal")

    async def _cluster_event(self, reason: str, message: str, type_: str) -> None:
        obj = InvolvedObject("Lease", "nodemedic-leader", self.settings.failover_lease_namespace)
        try:
            await record_event(self.api, obj, reason, message, type_=type_, host=self.me)
        except KubeError as exc:
            self.remedy.event_failures += 1
            log.warning("failover_event_failed", reason=reason, error=str(exc))

    # ---- metrics and status ------------------------------------------------------------------
    def families(self) -> list[Family]:
        if self.elector is None:
            leader = LEADER.family()
            leader.add((), 0.0)
            return [leader]
        out = self.elector.families()
        leading = self.elector.is_leader and self.view is not None
        if leading:
            peers = PEER_NODES.family()
            for st in STATES:
                peers.add((st,), self.assessment.count(st))
            out.append(peers)
        mass = MASS_FAILURE.family()
        mass.add((), 1.0 if leading and self.assessment.mass_failure else 0.0)
        actions = FAILOVER_ACTIONS.family()
        for labels, n in sorted(self.remedy.actions.items()):
            actions.add(labels, n)
        work = REMEDIATIONS.family()
        work.add((), len(self.episodes.busy()))
        capped = CAP_DENIED.family()
        capped.add((), self.slots.denied)
        probes = PROBES.family()
        for result, n in self._probe_counts.items():
            probes.add((result,), n)
        beats = HEARTBEATS.family()
        if self.heartbeat is not None:
            beats.add(("success",), self.heartbeat.writes)
            beats.add(("error",), self.heartbeat.errors)
        events = EVENTS_FAILED.family()
        events.add((), self.remedy.event_failures)
        return [*out, mass, actions, work, capped, probes, beats, events]

    def status(self) -> dict[str, Any]:
        if self.elector is None:
            return {"failover": {"enabled": False}}
        a = self.assessment
        return {"failover": {
            "enabled": True,
            "leader": self.elector.is_leader,
            "holder": self.elector.holder,
            "mass_failure": a.mass_failure,
            "mass_reason": a.mass_reason,
            "nodes": {n: {"state": v.state, "reason": v.reason}
                      for n, v in sorted(a.verdicts.items()) if v.state != "healthy"},
            "remediating": self.episodes.busy(),
            "stopped_by_admin": {n: rec.stopped for n, rec in sorted(self.episodes)
                                 if rec.stopped is not None},
            "timeline": list(self.timeline)[-20:],
        }}


async def build_failover_stage(settings: Settings, ctx: Any) -> FailoverStage:
    """Component factory for agent.runtime.components: ``ctx.api`` may be None."""
    return FailoverStage(settings, ctx.api)
