"""The in-process fake cluster and the remediation stage that replays decisions against it.

Used by nodemedic_sim.replay.timeline. The fake is the in-memory API server
(nodemedic_sim.apiserver) on loopback, holding one Node per replayed node and nothing the real
cluster has: the real safety gate reads its pause switches, takes its cordon Lease and counts its
unschedulable nodes there, so the cluster cordon cap (``--safety.max-cordoned``) counts the cordons
*replayed* so far, across every replayed node. Nothing leaves the process.

:class:`ReplayStage` is the live agent's RemediationStage (agent.runtime.remediation: gate,
held steps and their backoff, cooldown/cap ledger, state) with execution replaced: actions that
only change the Node object (cordon, uncordon, taint, untaint, annotate) run against the fake, so
the next cap check and an uncordon's "is this cordon ours" see what the live agent would have
left; every other action (restart-service, event, webhook, evict-pod, drain) is only recorded as
done, a drain also cordons the fake Node. Every first-pass decision is handed to ``sink``.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from agent.actions.base import outcome
from agent.actions.cordon import ensure_cordoned
from agent.kube.client import ApiClient, load_configuration
from agent.runtime.remediation import Engine, RemediationStage
from agent.safety.gate import SafetyGate
from agent.safety.ledger import ledger_key
from agent.settings import Settings
from agent.structs.remediation import Decision, Outcome
from nodemedic_sim.apiserver import ApiServer

# Actions whose whole effect is on this node's Node object: run for real against the fake.
NODE_ACTIONS = frozenset({"cordon", "uncordon", "taint", "untaint", "annotate"})

# (decision, its outcome when it ran, whether it repeats the denial of a held step)
DecisionSink = Callable[[Decision, Outcome | None, bool], None]


class SimClock:
    """The replayed time; wall and monotonic time are the same in a replay."""

    def __init__(self, start: float) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now


class FakeCluster:
    """The in-memory API server with one schedulable (or cordoned) Node per replayed node."""

    def __init__(self, nodes: Sequence[str], clock: SimClock,
                 cordoned: Sequence[str] = ()) -> None:
        self.server = ApiServer(clock=clock)
        self.nodes = list(nodes)
        self.cordoned = set(cordoned)
        self.api: Any = None

    async def start(self) -> None:
        await self.server.start()
        for name in self.nodes:
            node: dict[str, Any] = {"apiVersion": "v1", "kind": "Node",
                                    "metadata": {"name": name}, "spec": {}}
            if name in self.cordoned:
                node["spec"]["unschedulable"] = True  # an admin's cordon, seen at the start
            self.server.create(node)
        with tempfile.TemporaryDirectory(prefix="nodemedic-replay-") as tmp:
            cfg = await load_configuration(self.server.write_kubeconfig(Path(tmp) / "kubeconfig"))
        self.api = ApiClient(cfg)

    async def stop(self) -> None:
        if self.api is not None:
            await self.api.close()
            self.api = None
        await self.server.stop()

    def unschedulable(self) -> list[str]:
        """Nodes unschedulable in the fake now (replayed cordons and the initial ones)."""
        return sorted(n["metadata"]["name"] for n in self.server.list("Node")
                      if (n.get("spec") or {}).get("unschedulable"))


class ReplayGate(SafetyGate):
    """The safety gate, deciding exactly as live; only its idle re-read for the dashboard
    gauges is skipped (a replay exports no gauges, and decide() reads what it needs itself):
    it was two thirds of the fake API's requests."""

    async def refresh(self) -> None:
        return None


class ReplayStage(RemediationStage):
    """RemediationStage whose actions change only the fake (see module docstring)."""

    def __init__(self, settings: Settings, api: Any, engine: Engine, *, clock: SimClock,
                 sink: DecisionSink) -> None:
        super().__init__(settings, api, engine, clock=clock, monotonic=clock,
                         systemctl="/nonexistent/systemctl", concurrency=1)
        self.gate = ReplayGate(settings, api, clock=clock, monotonic=clock)
        self.sink = sink

    async def _execute(self, decision: Decision, continuing: bool) -> Outcome:
        kind = decision.request.action.type
        if kind in NODE_ACTIONS:
            return await super()._execute(decision, continuing)
        if kind == "drain":
            req = decision.request
            await ensure_cordoned(self.api, req.target.node, req.rule, self.clock())
            return outcome(decision, "success", f"replayed: cordoned {req.target.node}; the "
                           "evictions were not simulated")
        return outcome(decision, "success", f"replayed: {kind} not executed")

    def _record(self, decision: Decision, result: Outcome | None, continuing: bool) -> None:
        if not continuing:
            held = self.ledger.held.get(ledger_key(decision.request))
            repeated = (held is not None and decision.kind == "denied"
                        and held.reason == decision.reason)
            self.sink(decision, result, repeated)
        super()._record(decision, result, continuing)

