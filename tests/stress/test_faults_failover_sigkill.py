"""The failover leader SIGKILLed at every step of a failed node's remediation, as a real process.

A cluster of four nodes: node-a is dead (node Lease an hour old, Ready Unknown, its agent's port
refuses connections, its kubelet never confirms a pod deletion) and runs four controller-owned
pods (three ReplicaSet pods and a StatefulSet pod under a PodDisruptionBudget that allows one
disruption), a DaemonSet pod and a bare pod; node-b..d are healthy. A leader agent
(stress_failover_child.py, the real FailoverStage in its own process) cordons and taints node-a,
evicts its four pods, fences it with the out-of-service taint once the fencing time is over and
releases its remediation slot. That unkilled run is the reference: its API writes are the steps.

For every step k the same cluster is built afresh, a leader is SIGKILLed the instant the API
server applies its k-th step write (it never sees the answer: the worst moment), and a leader
under another node name waits out the dead one's Lease and finishes. Each run must end exactly
as the reference did, with the same writes: no step done twice (an eviction, a taint, a state
write, an Event count bump), none lost, the state annotation only moving forward, and the slot
Lease free at the end. The steps are seen on the server, synchronously, by a store watcher.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import socket
import sys
import time
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from stress_k8s import pdb, pod

from agent.actions.base import CORDONED_BY
from agent.kube.leases import micro_time
from agent.peers.fencing import FAILED_TAINT, OUT_OF_SERVICE
from agent.peers.remedy import STATE_ANNOTATION, read_state
from agent.peers.slots import SLOT_PREFIX
from nodemedic_sim.apiserver import ApiServer
from nodemedic_sim.apiserver.store import Watcher, WatchEvent

CHILD = Path(__file__).resolve().parent / "stress_failover_child.py"
VICTIM = "node-a"
PEERS = ("node-b", "node-c", "node-d")
LEASE_NS = "kube-system"
FENCING_TIME = 1.0
EVICTABLE = ("web-0", "web-1", "web-2", "db-0")
RUN_LIMIT = 40.0  # seconds one child may take to reach its kill point or finish
PARALLEL = 4  # kill points run side by side, each with its own API server and children
FAILED = f"{FAILED_TAINT['key']}:{FAILED_TAINT['effect']}"
OOS = f"{OUT_OF_SERVICE['key']}:{OUT_OF_SERVICE['effect']}"

# The writes of the reference run, in order ("evict" four times, in any pod order). The
# out-of-service taint and the fenced state are one write: no kill can come between them.
STEPS = (
    "leader", "slot taken", "cordon", f"taint {FAILED}", "state cordoned",
    "event NodemedicNodeFailed", "evict", "evict", "evict", "evict", "state evicted",
    "event NodemedicPodsEvicted", f"taint {OOS} + state fenced", "event NodemedicNodeFenced",
    "slot released",
)
# Kill points whose resumption is known to be wrong: step number -> what goes wrong.
KNOWN_BAD: dict[int, str] = {}


# ---- the cluster -------------------------------------------------------------------------------
def _node(name: str, ready: str) -> dict[str, Any]:
    return {
        "apiVersion": "v1", "kind": "Node", "metadata": {"name": name},
        "spec": {},
        "status": {"conditions": [{"type": "Ready", "status": ready}],
                   "addresses": [{"type": "InternalIP", "address": "127.0.0.1"}]},
    }


def _lease(name: str, namespace: str, holder: str, renewed: float,
           **annotations: str) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": name, "namespace": namespace, "annotations": annotations}
    if annotations:
        meta["labels"] = {"nodemedic.io/heartbeat": "true"}
    return {"apiVersion": "coordination.k8s.io/v1", "kind": "Lease", "metadata": meta,
            "spec": {"holderIdentity": holder, "leaseDurationSeconds": 40,
                     "renewTime": micro_time(renewed)}}


def _pod(name: str, on: str, owner: str | None, **labels: str) -> dict[str, Any]:
    p = pod(name, on=on, owner=owner, labels=labels)
    p["spec"]["terminationGracePeriodSeconds"] = 30  # stays Terminating: the kubelet is dead
    return p


def build_cluster(server: ApiServer, dead_port: int) -> None:
    now = time.time()
    server.create(_node(VICTIM, "Unknown"))
    server.create(_lease(VICTIM, "kube-node-lease", VICTIM, now - 3600))
    # Its agent advertised a URL once; nothing answers there now.
    server.create(_lease(f"nodemedic-{VICTIM}", LEASE_NS, VICTIM, now - 3600, **{
        "nodemedic.io/agent-url": f"http://127.0.0.1:{dead_port}"}))
    server.set_kubelet_alive(VICTIM, False)
    for peer in PEERS:
        server.create(_node(peer, "True"))
        server.create(_lease(peer, "kube-node-lease", peer, now))
    for name in ("web-0", "web-1", "web-2"):
        server.create(_pod(name, VICTIM, "ReplicaSet", app="web"))
    server.create(_pod("db-0", VICTIM, "StatefulSet", app="db"))
    server.create(_pod("db-1", "node-b", "StatefulSet", app="db"))
    server.create(pdb("db", "shop", 1, app="db"))  # db-1 Ready: one disruption allowed
    server.create(_pod("agent-ds", VICTIM, "DaemonSet"))
    server.create(_pod("bare", VICTIM, None))
    server.create(_pod("web-9", "node-c", "ReplicaSet", app="web"))
    server.sweep()  # PDB status, as the disruption controller would have it


@contextlib.contextmanager
def refused_port() -> Iterator[int]:
    """A loopback port held bound but not listening: connections to it are refused."""
    s = socket.socket()
    try:
        s.bind(("127.0.0.1", 0))
        yield int(s.getsockname()[1])
    finally:
        s.close()


# ---- the kill switch: every write, seen as the store applies it ---------------------------------
def _taints(obj: dict[str, Any] | None) -> list[str]:
    return [f"{t.get('key')}:{t.get('effect')}"
            for t in ((obj or {}).get("spec") or {}).get("taints") or []]


def _annotations(obj: dict[str, Any] | None) -> dict[str, str]:
    return ((obj or {}).get("metadata") or {}).get("annotations") or {}


def _holder(obj: dict[str, Any] | None) -> str:
    return str(((obj or {}).get("spec") or {}).get("holderIdentity") or "")


def classify(ev: WatchEvent) -> str:
    """The failover step one write makes, "" for none (renewals and heartbeats are not steps)."""
    obj, prev, meta = ev.obj, ev.prev, ev.obj["metadata"]
    name = meta["name"]
    out: list[str] = []
    if ev.key == ApiServer.resource("Lease").key:
        if name == "nodemedic-leader" and _holder(obj) and _holder(obj) != _holder(prev):
            out.append("leader")
        elif name.startswith(SLOT_PREFIX) and _holder(obj) != _holder(prev):
            out.append("slot taken" if _holder(obj) else "slot released")
    elif ev.key == ApiServer.resource("Node").key and name == VICTIM:
        if (obj.get("spec") or {}).get("unschedulable") and not (
                (prev or {}).get("spec") or {}).get("unschedulable"):
            out.append("cordon")
        out += [f"taint {t}" for t in _taints(obj) if t not in _taints(prev)]
        old, new = _annotations(prev).get(STATE_ANNOTATION), _annotations(obj).get(STATE_ANNOTATION)
        if new != old:
            before, after = read_state(old), read_state(new)
            changed = sorted(k for k in {*before, *after} if before.get(k) != after.get(k))
            out.append(f"state {after.get('phase', 'cleared')}" if "phase" in changed
                       else f"state {','.join(changed)}")
    elif ev.key == ApiServer.resource("Pod").key and (obj["spec"].get("nodeName") == VICTIM):
        if meta.get("deletionTimestamp") and not ((prev or {}).get("metadata") or {}).get(
                "deletionTimestamp"):
            out.append("evict")
    elif ev.key == ApiServer.resource("Event").key and (
            obj.get("involvedObject") or {}).get("name") == VICTIM:
        out.append(f"event {obj.get('reason')}")
    return " + ".join(out)


@dataclass
class Steps:
    """The step writes so far; SIGKILLs ``pid`` the moment write number ``kill_at`` lands."""

    kill_at: int | None = None
    pid: int = 0
    names: list[str] = field(default_factory=list)
    evicted: list[str] = field(default_factory=list)
    states: list[dict[str, Any]] = field(default_factory=list)

    def saw(self, ev: WatchEvent) -> None:
        step = classify(ev)
        if not step:
            return
        self.names.append(step)
        if step == "evict":
            self.evicted.append(ev.obj["metadata"]["name"])
        if "state " in step:
            self.states.append(read_state(_annotations(ev.obj).get(STATE_ANNOTATION)))
        if len(self.names) == self.kill_at and self.pid:
            os.kill(self.pid, signal.SIGKILL)  # before the server answers this write


class Tap(Watcher):
    """A store watcher that hands each write to ``steps`` synchronously, buffering nothing: the
    store offers every write to its watchers while still serving the request that made it."""

    def __init__(self, key: str, steps: Steps) -> None:
        super().__init__(key, None, None, 1)
        self.steps = steps

    def offer(self, ev: WatchEvent) -> bool:
        self.steps.saw(ev)
        return True


# ---- one run -----------------------------------------------------------------------------------
@dataclass
class Run:
    steps: Steps
    end: dict[str, Any]
    evictions_requested: int
    children: list[list[str]]  # each child's STEP lines (its own timeline), for messages


@contextlib.asynccontextmanager
async def child(url: str, node: str) -> AsyncIterator[asyncio.subprocess.Process]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, str(CHILD), url, node, str(FENCING_TIME),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL)
    try:
        yield proc
    finally:
        if proc.returncode is None:
            proc.send_signal(signal.SIGKILL)
        await proc.wait()


def phase(server: ApiServer) -> str:
    n = server.get("Node", "", VICTIM) or {}
    return str(read_state(_annotations(n).get(STATE_ANNOTATION)).get("phase", ""))


async def until_idle(proc: asyncio.subprocess.Process, server: ApiServer,
                     notes: list[str]) -> None:
    """Read the child until it leads, has judged the victim failed, the victim is fenced and it
    has no remediation running (its slot release is part of that remediation)."""
    assert proc.stdout is not None
    judged = False
    async with asyncio.timeout(RUN_LIMIT):
        while raw := await proc.stdout.readline():
            kind, _, body = raw.decode().partition(" ")
            if kind == "STEP":
                note = json.loads(body)
                notes.append(f"{note['what']} {note['node']}".strip())
                judged = judged or (note["what"] == "failed" and note["node"] == VICTIM)
            elif kind == "TICK":
                tick = json.loads(body)
                if judged and tick["leader"] and not tick["remediating"] and (
                        phase(server) == "fenced"):
                    return
    raise AssertionError(f"the child exited early: {notes}")


def end_state(server: ApiServer) -> dict[str, Any]:
    """What a user would look at, with the values that differ run to run (times, the leader's
    name) reduced to their presence."""
    n = server.get("Node", "", VICTIM) or {}
    ann = _annotations(n)
    pods = {p["metadata"]["name"]: "terminating" if p["metadata"].get("deletionTimestamp")
            else "running" for p in server.list("Pod")}
    events = {e["reason"]: e.get("count", 1) for e in server.list("Event")
              if (e.get("involvedObject") or {}).get("name") == VICTIM}
    slots = {lease["metadata"]["name"]: _holder(lease) for lease in server.list("Lease")
             if lease["metadata"]["name"].startswith(SLOT_PREFIX)}
    return {
        "unschedulable": bool((n.get("spec") or {}).get("unschedulable")),
        "taints": sorted(_taints(n)),
        "state": {k: v if k in ("phase", "oos") else "set"
                  for k, v in read_state(ann.get(STATE_ANNOTATION)).items()},
        "cordoned_by": json.loads(ann.get(CORDONED_BY, "{}")).get("rules"),
        "pods": pods,
        "events": events,
        "slots": slots,
    }


async def run(kill_at: int | None) -> Run:
    """The reference run (``kill_at`` None) or one with node-b SIGKILLed at step ``kill_at``
    and node-c finishing."""
    steps = Steps(kill_at=kill_at)
    notes: list[list[str]] = []
    with refused_port() as dead_port:
        async with ApiServer() as server:
            build_cluster(server, dead_port)
            for kind in ("Lease", "Node", "Pod", "Event"):
                server.store.add_watcher(Tap(ApiServer.resource(kind).key, steps))
            async with child(server.url, "node-b") as first:
                notes.append([])
                steps.pid = first.pid
                if kill_at is None:
                    await until_idle(first, server, notes[-1])
                else:
                    async with asyncio.timeout(RUN_LIMIT):
                        await first.wait()
                    assert first.returncode == -signal.SIGKILL, "never reached the kill point"
            if kill_at is not None:
                async with child(server.url, "node-c") as second:
                    notes.append([])
                    await until_idle(second, server, notes[-1])
            return Run(steps, end_state(server),
                       server.requests.count(verb="create", resource="pods/eviction"), notes)


async def all_runs() -> dict[int, Run]:
    runs = {0: await run(None)}
    gate = asyncio.Semaphore(PARALLEL)

    async def one(k: int) -> None:
        async with gate:
            runs[k] = await run(k)

    await asyncio.gather(*(one(k) for k in range(1, len(STEPS) + 1)))
    return runs


@pytest.fixture(scope="module")
def runs() -> dict[int, Run]:
    """Every run, made once for the module (side by side: each waits mostly on Lease expiry)."""
    return asyncio.run(all_runs())


# ---- the assertions ----------------------------------------------------------------------------
@pytest.mark.slow
def test_unkilled_failover_is_the_reference(runs: dict[int, Run]) -> None:
    """Without a kill the leader cordons and taints the dead node, evicts each controller-owned
    pod once, fences it only after that, records all of it and frees its slot."""
    ref = runs[0]
    assert ref.steps.names == list(STEPS), ref.children
    end = ref.end
    assert end["unschedulable"] and end["taints"] == sorted([FAILED, OOS])
    assert end["state"] == {"phase": "fenced", "oos": True, "since": "set", "fenced_at": "set",
                            "leader": "set"}
    assert sorted(ref.steps.evicted) == sorted(EVICTABLE) and ref.evictions_requested == 4
    assert {p for p, s in end["pods"].items() if s == "terminating"} == set(EVICTABLE)
    assert end["events"] == {"NodemedicNodeFailed": 1, "NodemedicPodsEvicted": 1,
                             "NodemedicNodeFenced": 1}
    assert end["slots"] == {f"{SLOT_PREFIX}0": ""}


def _kill_points() -> list[Any]:
    return [pytest.param(k, id=f"{k:02d}-{name.replace(' ', '-')}",
                         marks=[pytest.mark.xfail(strict=True, reason=KNOWN_BAD[k])]
                         if k in KNOWN_BAD else [])
            for k, name in enumerate(STEPS, 1)]


@pytest.mark.slow
@pytest.mark.parametrize("k", _kill_points())
def test_sigkill_after_step(runs: dict[int, Run], k: int) -> None:
    """SIGKILLed as step k lands, a new leader resumes: same end state as the unkilled run, and
    every step written exactly once (the state only moving forward, the slot released)."""
    ref, got = runs[0], runs[k]
    why = f"steps {got.steps.names}; timelines {got.children}"
    assert got.steps.names[k - 1] == STEPS[k - 1] or STEPS[k - 1] == "evict", why
    assert got.end == ref.end, why
    # Nothing twice, nothing lost: the same writes as the reference, the new leader's Lease aside.
    assert Counter(n for n in got.steps.names if n != "leader") == Counter(
        n for n in ref.steps.names if n != "leader"), why
    assert sorted(got.steps.evicted) == sorted(EVICTABLE)
    assert got.evictions_requested == len(EVICTABLE), "a pod was asked to leave twice"
    # The state annotation only moves forward and keeps when the episode started.
    order = ["cordoned", "evicted", "fenced"]
    phases = [order.index(s["phase"]) for s in got.steps.states]
    assert phases == sorted(phases) and len(set(phases)) == len(phases), why
    assert len({s.get("since") for s in got.steps.states}) == 1, got.steps.states
    # Out-of-service (pods force-deleted) never before every eviction was asked for.
    names = got.steps.names
    assert names.index(STEPS[12]) > max(i for i, n in enumerate(names) if n == "evict")
