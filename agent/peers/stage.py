"""The failover component: leader election, peer probes, failed-node detection and remediation.

Built by agent.runtime.components (``await build_failover_stage(settings, ctx)``) on every agent;
the daemon calls ``start()``, ``on_snapshot()`` each tick (a no-op: nothing here runs on the tick),
``families()``/``status()`` for /metrics and /status, ``reload()`` and ``close()``. All work runs
in its own supervised tasks, so a slow API never stalls collection:
- every agent: the election loop (agent.peers.leader) and the probe loop, which probes the targets
  the leader assigned it and publishes the results in its heartbeat Lease (agent.peers.heartbeat);
- the leader only: three watches (agent.peers.cluster), the evaluation loop (pure
  agent.peers.detector on each change), the probe assignments it publishes on its Lease, and one
  task per failed node walking the ladder of agent.peers.remedy under the Lease cap
  (agent.peers.slots): cordon + taint -> evictions -> out-of-service once fenced -> (on recovery)
  undo. Mass failure, partitions and unknown nodes get a metric and an Event, never an action.
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
from agent.peers.detector import STATES, Assessment, DetectorConfig, Verdict, assess, parse_limit
from agent.peers.fencing import FENCED_ANNOTATION, OUT_OF_SERVICE, fencing_state, run_hook
from agent.peers.heartbeat import Heartbeat
from agent.peers.leader import LEADER, ElectionConfig, LeaderElector
from agent.peers.prober import Prober, transport_for
from agent.peers.remedy import (
    STATE_ANNOTATION,
    Remedy,
    admin_reversal,
    fenced_message,
    isolated,
    read_state,
)
from agent.peers.slots import Slots
from agent.settings import Settings
from agent.structs.metrics import Family, MetricSpec
from agent.structs.snapshot import Snapshot

log = structlog.get_logger("nodemedic.failover")

ASSIGNMENTS_ANNOTATION = "nodemedic.io/probe-assignments"
TIMELINE_SIZE = 200
EVAL_MIN_GAP = 0.2  # seconds between two evaluations of the whole cluster
BACKOFF_PERIODS = 10  # retry periods before work that stopped short is tried again
MAX_EVENTS_IN_FLIGHT = 8
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


def evicted_message(node: str) -> str:
    return (f"evicted every evictable pod of {node} through the Eviction API; controllers "
            "recreate them elsewhere")


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


class FailoverStage:
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
        self._work: dict[str, asyncio.Task[None]] = {}
        self._failed_since: dict[str, float] = {}
        self._healthy_since: dict[str, float] = {}
        self._announced: dict[str, str] = {}  # node -> state we last recorded an Event for
        self._suspects: dict[str, str] = {}  # target -> agent URL the leader probes
        self._mass_announced = False
        self._probe_counts = {"reachable": 0, "unreachable": 0}
        self._abandoned = False
        self._cordon_noted: set[str] = set()
        self._capped_noted: set[str] = set()
        self._settled: set[str] = set()  # fenced nodes whose Event and slot release we saw done
        self._not_before: dict[str, float] = {}
        self._event_tasks: set[asyncio.Task[None]] = set()
        self._stopped: dict[str, str] = {}  # node -> why an admin's action stopped its failover

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
        for t in [*self._work.values(), *self._tasks, *self._event_tasks]:
            t.cancel()
        for t in [*self._work.values(), *self._tasks, *self._event_tasks]:
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

    async def _sleep(self, seconds: float, event: asyncio.Event | None = None) -> None:
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(seconds):
                await (event or self._stop).wait()

    def _leadership_changed(self, leading: bool) -> None:
        self._note("", "leader" if leading else "follower", f"{self.me} "
                   + ("became the leader" if leading else "stopped leading"))
        self._changed.set()

    def _note(self, node: str, what: str, detail: str) -> None:
        self.timeline.append({"at": round(self.wall(), 3), "node": node, "what": what,
                              "detail": detail})

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
        for task in self._work.values():
            task.cancel()
        self._work.clear()
        self._suspects.clear()
        self._settled.clear()
        self._stopped.clear()  # the next leader reads it back from the annotations
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
        """Forget per-node memory of deleted nodes (autoscaled clusters churn through names):
        every per-node map and set, once any of them holds more names than there are nodes."""
        maps: tuple[dict[str, Any], ...] = (
            self._announced, self._healthy_since, self._failed_since, self._not_before,
            self._stopped)
        sets = (self._cordon_noted, self._capped_noted, self._settled)
        biggest = max(len(c) for c in (*maps, *sets, self._work, self.remedy.targets))
        if biggest <= len(nodes) + 16:
            return
        for memory in maps:
            for gone in [n for n in memory if n not in nodes]:
                del memory[gone]
        for names in sets:
            names.intersection_update(nodes)
        for gone in [n for n, task in self._work.items() if n not in nodes and task.done()]:
            del self._work[gone]  # a failover still running for a deleted node finishes first
        for gone in [n for n in self.remedy.targets if n not in nodes]:
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

    async def _decide(self, name: str, verdict: Verdict, now: float) -> None:
        assert self.view is not None
        info = self.view.nodes.items.get(name)
        if info is None:
            return
        raw_state = info.annotation(STATE_ANNOTATION)
        if verdict.state == "healthy" and raw_state is None and (
            self._announced.get(name, "healthy") == "healthy"
        ):
            # The common case, kept cheap: nothing was done to this node, nothing to do.
            self._failed_since.pop(name, None)
            self._announced.setdefault(name, "healthy")
            return
        state = read_state(raw_state)
        busy = name in self._work and not self._work[name].done()
        oos = (OUT_OF_SERVICE["key"], OUT_OF_SERVICE["effect"])
        if state.get("oos") and not busy and oos not in info.taints:
            # An admin removed the out-of-service taint we added: it is not ours any more, so an
            # out-of-service taint found at recovery (theirs) is left in place.
            try:
                await self.remedy.set_state(name, oos=False)
            except KubeError as exc:
                log.warning("failover_state_write_failed", node=name, error=str(exc))
                return
            state = {**state, "oos": False}
            self._note(name, "oos_released", "an admin removed nodemedic's out-of-service taint")
            self._event_soon(name, "NodemedicClaimReleased",
                             "an admin removed the out-of-service taint nodemedic added; "
                             "nodemedic will not remove an out-of-service taint from this node")
        if verdict.state == "healthy":
            self._healthy_since.setdefault(name, now)
            if not state:
                self._not_before.pop(name, None)
        else:
            self._healthy_since.pop(name, None)
        if verdict.state == "failed":
            if name not in self._failed_since:
                since = state.get("since")
                self._failed_since[name] = (
                    min(now, self.view.mono_from_wall(float(since)))
                    if isinstance(since, (int, float)) else now
                )
        else:
            self._failed_since.pop(name, None)
        if self._announced.get(name) != verdict.state:
            await self._announce(name, verdict)
        if busy or now < self._not_before.get(name, 0.0):
            return
        if state.get("stopped"):
            self._stopped[name] = str(state["stopped"])  # an admin ended it: never resumed
        if self.assessment.actionable(name) and state.get("phase") != "fenced" and (
            not state.get("stopped")
        ):
            self._start_work(name, self._remediate(name))
        elif state.get("phase") == "fenced" and name not in self._settled:
            self._start_work(name, self._settle(name, state))
        elif state and verdict.state == "healthy" and not self.assessment.mass_failure:
            healthy_for = now - self._healthy_since[name]
            if healthy_for >= self.settings.failover_healthy_delay:
                self._start_work(name, self._recover(name, state, healthy_for))

    async def _announce(self, name: str, verdict: Verdict) -> None:
        previous = self._announced.get(name)
        self._announced[name] = verdict.state
        if previous is None and verdict.state == "healthy":
            return
        self._note(name, verdict.state, verdict.reason)
        log.info("peer_state", node=name, state=verdict.state, previous=previous,
                 reason=verdict.reason)
        if self.assessment.mass_failure:
            return  # one cluster Event says it all; thousands of node Events would flood etcd
        if verdict.state == "partitioned":
            self._event_soon(name, "NodemedicNodePartitioned",
                             f"{verdict.reason}: possible network partition; no action taken "
                             "(its pods may still be running)")
        elif verdict.state == "kubelet_down":
            self._event_soon(name, "NodemedicKubeletDown",
                             f"{verdict.reason}; the node's own agent remediates")

    def _event_soon(self, node: str, reason: str, message: str) -> None:
        """A Warning Event written in the background, so a slow API never stalls evaluation;
        beyond MAX_EVENTS_IN_FLIGHT they are dropped and counted."""
        self._event_tasks = {t for t in self._event_tasks if not t.done()}
        if len(self._event_tasks) >= MAX_EVENTS_IN_FLIGHT:
            self.remedy.event_failures += 1
            return
        self._event_tasks.add(asyncio.create_task(
            self.remedy.event(node, reason, message, "Warning"), name="nodemedic:event"))

    def _start_work(self, name: str, coro: Coroutine[Any, Any, None]) -> None:
        self._work[name] = asyncio.create_task(self._guard_work(name, coro),
                                               name=f"nodemedic:failover:{name}")

    async def _guard_work(self, name: str, coro: Coroutine[Any, Any, None]) -> None:
        try:
            await coro
        except asyncio.CancelledError:
            raise
        except KubeError as exc:
            log.warning("failover_step_failed", node=name, error=str(exc))
        except Exception:
            log.exception("failover_work_crashed", node=name)
        finally:
            self._changed.set()

    def _actionable(self, name: str) -> bool:
        assert self.elector is not None
        return self.elector.is_leader and self.assessment.actionable(name)

    def _back_off(self, name: str) -> None:
        """Do not start work on ``name`` again for a while (denied, capped, dry-run, failed)."""
        wait = BACKOFF_PERIODS * self.settings.failover_retry_period
        self._not_before[name] = self.clock() + wait

    async def _remediate(self, name: str) -> None:
        if not await self.slots.acquire(name):
            if name not in self._capped_noted:
                self._capped_noted.add(name)
                self._note(name, "capped", "max-concurrent remediations reached; waiting")
            self._back_off(name)
            return
        self._capped_noted.discard(name)
        done = False
        try:
            done = await self._ladder(name)
        finally:
            if not done:
                self._back_off(name)
            if self._stop.is_set() or not (self.elector and self.elector.is_leader):
                pass  # leadership moved: the slot stays with the node for the next leader
            else:
                await self.slots.release(name)
                if done:
                    self._settled.add(name)

    async def _settle(self, name: str, state: dict[str, Any]) -> None:
        """Finish a node an earlier leader fenced but may have died on before its Event or its
        slot release (otherwise the slot stays taken until it expires, blocking other nodes)."""
        if not (self.elector and self.elector.is_leader):
            return
        await self.remedy.event_once(
            name, "NodemedicNodeFenced", fenced_message(name, "by an earlier leader"), "Warning",
            since=state.get("since"))
        await self.slots.release(name)
        self._settled.add(name)

    async def _ladder(self, name: str) -> bool:
        """Walk the ladder; True once the node is fenced (nothing left to do until recovery)."""
        assert self.view is not None
        s = self.settings
        if not self._actionable(name):
            return False
        verdict = self.assessment.verdicts[name]
        if await self._stopped_by_admin(name):
            return True
        if not await self.remedy.isolate(name, verdict.reason):
            self._note(name, "isolate_blocked", "cordon/taint denied or failed; see the log")
            return False
        if name not in self._cordon_noted:  # once per episode, even across leaders
            self._cordon_noted.add(name)
            self._note(name, "cordoned", f"cordoned and tainted {name}: {verdict.reason}")
            await self.remedy.event_once(name, "NodemedicNodeFailed",
                                         f"{verdict.reason}; cordoned, tainted "
                                         "nodemedic.io/node-failed:NoSchedule, evicting its pods",
                                         "Warning")
        # Evictions and the fencing check run side by side: on a dead node a PodDisruptionBudget
        # can block the eviction of pods that only out-of-service will ever free.
        info = self.view.nodes.items.get(name) if self.view else None
        state = self.remedy.states.get(name) or read_state(
            info.annotation(STATE_ANNOTATION) if info else None)
        evicted = state.get("phase") in ("evicted", "fenced")
        if evicted:  # an earlier leader's: it may have died before its Event
            await self.remedy.event_once(name, "NodemedicPodsEvicted", evicted_message(name))
        hook_checked = -1e9
        while True:
            if not self._actionable(name):
                return False
            verdict = self.assessment.verdicts[name]
            if await self._stopped_by_admin(name):
                return True
            if not evicted:
                evicted, _left = await self.remedy.evict_pass(name, verdict.reason)
                if evicted and not s.dry_run:
                    self._note(name, "evicted", f"every evictable pod of {name} was evicted")
                    await self.remedy.set_state(name, phase="evicted")
                    await self.remedy.event(name, "NodemedicPodsEvicted", evicted_message(name))
            info = self.view.nodes.items.get(name) if self.view else None
            operator = bool(info and (info.annotation(FENCED_ANNOTATION) or "").lower() == "true")
            if not operator and s.failover_fence_command and (
                self.clock() - hook_checked >= 10 * s.failover_retry_period
            ):
                hook_checked = self.clock()
                operator = await run_hook(s.failover_fence_command, name)
            fenced, why = fencing_state(verdict, self._failed_since.get(name, self.clock()),
                                        self.clock(), s.failover_fencing_time, operator)
            if fenced and s.dry_run:
                self._note(name, "would_fence", f"--dry-run: would add out-of-service ({why})")
                await self.remedy.fence(name, why)  # counted as a dry_run decision
                return False
            if fenced and await self.remedy.fence(name, why):
                self._note(name, "fenced", why)
                return True
            await self._sleep(s.failover_retry_period)

    async def _stopped_by_admin(self, name: str) -> bool:
        """Whether an admin undid this episode's isolation (seen by a step, or on the Node as the
        watch shows it now); if so, record the stop once. True: nothing more to do."""
        info = self.view.nodes.items.get(name) if self.view else None
        state = self.remedy.states.get(name) or read_state(
            info.annotation(STATE_ANNOTATION) if info else None)
        if state.get("stopped"):
            return True
        why = self.remedy.reversed.get(name)
        if why is None and info is not None and isolated(state):
            why = admin_reversal(info.unschedulable, info.taints)
        if why is None or not state.get("phase"):
            return False
        self._stopped[name] = why
        self._note(name, "stopped", f"{why}: failover stopped")
        await self.remedy.stop(name, why, self.settings.failover_healthy_delay)
        return True

    async def _recover(self, name: str, state: dict[str, Any], healthy_for: float) -> None:
        if not (self.elector and self.elector.is_leader):
            return
        if not await self.remedy.recover(name, state, healthy_for):
            self._back_off(name)
        else:
            self._note(name, "recovered", f"healthy for {healthy_for:.0f}s; taints and cordon "
                       "removed")
            self._cordon_noted.discard(name)
            self._settled.discard(name)
            self._stopped.pop(name, None)
            self._announced[name] = "healthy"

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
        work.add((), sum(1 for t in self._work.values() if not t.done()))
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
            "remediating": sorted(n for n, t in self._work.items() if not t.done()),
            "stopped_by_admin": dict(sorted(self._stopped.items())),
            "timeline": list(self.timeline)[-20:],
        }}


async def build_failover_stage(settings: Settings, ctx: Any) -> FailoverStage:
    """Component factory for agent.runtime.components: ``ctx.shared["api"]`` may be None."""
    return FailoverStage(settings, ctx.shared.get("api"))
