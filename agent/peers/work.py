"""The failover leader's work on one node: decide what a verdict means, walk the ladder, recover.

Mixed into agent.peers.stage.FailoverStage (which owns the loops, the watches and the state this
reads). ``_decide`` runs for every node on each evaluation and keeps the node's
agent.peers.episodes record; it starts at most one task per node: ``_remediate`` (take a Lease
slot, then the ladder of agent.peers.remedy: cordon + taint -> evictions -> out-of-service once
fenced), ``_settle`` (finish a node an earlier leader fenced) or ``_recover`` (undo, once
healthy for --failover.healthy-delay). Work that stops short backs off for BACKOFF_PERIODS retry
periods. An admin's reversal of the isolation stops the episode for good.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from collections.abc import Callable, Coroutine
from typing import Any

import structlog

from agent.kube.errors import KubeError
from agent.peers.cluster import ClusterView
from agent.peers.detector import Assessment, Verdict
from agent.peers.episodes import Episodes, NodeEpisode
from agent.peers.fencing import FENCED_ANNOTATION, OUT_OF_SERVICE, fencing_state, run_hook
from agent.peers.leader import LeaderElector
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

log = structlog.get_logger("nodemedic.failover")

BACKOFF_PERIODS = 10  # retry periods before work that stopped short is tried again
MAX_EVENTS_IN_FLIGHT = 8


def evicted_message(node: str) -> str:
    return (f"evicted every evictable pod of {node} through the Eviction API; controllers "
            "recreate them elsewhere")


class FailoverWork:
    """Per-node decisions and ladder steps; the attributes are FailoverStage's."""

    settings: Settings
    clock: Callable[[], float]
    wall: Callable[[], float]
    remedy: Remedy
    slots: Slots
    elector: LeaderElector | None
    view: ClusterView | None
    assessment: Assessment
    episodes: Episodes
    timeline: deque[dict[str, Any]]
    _stop: asyncio.Event
    _changed: asyncio.Event
    _event_tasks: set[asyncio.Task[None]]

    async def _sleep(self, seconds: float, event: asyncio.Event | None = None) -> None:
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(seconds):
                await (event or self._stop).wait()

    def _note(self, node: str, what: str, detail: str) -> None:
        self.timeline.append({"at": round(self.wall(), 3), "node": node, "what": what,
                              "detail": detail})

    def _leading(self) -> bool:
        return bool(self.elector and self.elector.is_leader)

    async def _decide(self, name: str, verdict: Verdict, now: float) -> None:
        assert self.view is not None
        info = self.view.nodes.items.get(name)
        if info is None:
            return
        ep = self.episodes.get(name)
        raw_state = info.annotation(STATE_ANNOTATION)
        if verdict.state == "healthy" and raw_state is None and (
            ep.announced in (None, "healthy")
        ):
            # The common case, kept cheap: nothing was done to this node, nothing to do.
            ep.failed_since = None
            if ep.announced is None:
                ep.announced = "healthy"
            return
        state = read_state(raw_state)
        busy = ep.busy
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
            ep = self.episodes.get(name)
        if verdict.state == "healthy":
            if ep.healthy_since is None:
                ep.healthy_since = now
            if not state:
                ep.not_before = 0.0
        else:
            ep.healthy_since = None
        if verdict.state == "failed":
            if ep.failed_since is None:
                since = state.get("since")
                ep.failed_since = (
                    min(now, self.view.mono_from_wall(float(since)))
                    if isinstance(since, (int, float)) else now
                )
        else:
            ep.failed_since = None
        if ep.announced != verdict.state:
            await self._announce(name, verdict, ep)
        if busy or now < ep.not_before:
            return
        if state.get("stopped"):
            ep.stopped = str(state["stopped"])  # an admin ended it: never resumed
        if self.assessment.actionable(name) and state.get("phase") != "fenced" and (
            not state.get("stopped")
        ):
            self._start_work(name, self._remediate(name))
        elif state.get("phase") == "fenced" and not ep.settled:
            self._start_work(name, self._settle(name, state))
        elif state and verdict.state == "healthy" and not self.assessment.mass_failure:
            healthy_for = now - (ep.healthy_since if ep.healthy_since is not None else now)
            if healthy_for >= self.settings.failover_healthy_delay:
                self._start_work(name, self._recover(name, state, healthy_for))

    async def _announce(self, name: str, verdict: Verdict, ep: NodeEpisode) -> None:
        previous = ep.announced
        ep.announced = verdict.state
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
        self.episodes.get(name).work = asyncio.create_task(
            self._guard_work(name, coro), name=f"nodemedic:failover:{name}")

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
        return self._leading() and self.assessment.actionable(name)

    def _back_off(self, name: str) -> None:
        """Do not start work on ``name`` again for a while (denied, capped, dry-run, failed)."""
        wait = BACKOFF_PERIODS * self.settings.failover_retry_period
        self.episodes.get(name).not_before = self.clock() + wait

    async def _remediate(self, name: str) -> None:
        if not await self.slots.acquire(name):
            ep = self.episodes.get(name)
            if not ep.capped_noted:
                ep.capped_noted = True
                self._note(name, "capped", "max-concurrent remediations reached; waiting")
            self._back_off(name)
            return
        self.episodes.get(name).capped_noted = False
        done = False
        try:
            done = await self._ladder(name)
        finally:
            if not done:
                self._back_off(name)
            if self._stop.is_set() or not self._leading():
                pass  # leadership moved: the slot stays with the node for the next leader
            else:
                await self.slots.release(name)
                if done:
                    self.episodes.get(name).settled = True

    async def _settle(self, name: str, state: dict[str, Any]) -> None:
        """Finish a node an earlier leader fenced but may have died on before its Event or its
        slot release (otherwise the slot stays taken until it expires, blocking other nodes)."""
        if not self._leading():
            return
        await self.remedy.event_once(
            name, "NodemedicNodeFenced", fenced_message(name, "by an earlier leader"), "Warning",
            since=state.get("since"))
        await self.slots.release(name)
        self.episodes.get(name).settled = True

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
        ep = self.episodes.get(name)
        if not ep.cordon_noted:  # once per episode, even across leaders
            ep.cordon_noted = True
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
            failed_since = self.episodes.get(name).failed_since
            fenced, why = fencing_state(
                verdict, failed_since if failed_since is not None else self.clock(),
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
        self.episodes.get(name).stopped = why
        self._note(name, "stopped", f"{why}: failover stopped")
        await self.remedy.stop(name, why, self.settings.failover_healthy_delay)
        return True

    async def _recover(self, name: str, state: dict[str, Any], healthy_for: float) -> None:
        if not self._leading():
            return
        if not await self.remedy.recover(name, state, healthy_for):
            self._back_off(name)
        else:
            self._note(name, "recovered", f"healthy for {healthy_for:.0f}s; taints and cordon "
                       "removed")
            ep = self.episodes.get(name)
            ep.cordon_noted = ep.settled = False
            ep.stopped = None
            ep.announced = "healthy"
