"""One nodemedic Agent per simulated node, in this process, each on its own loopback address.

Used by nodemedic_sim.demo.command, tests/integration/failover and bench/failover.py. Every agent is
a real agent.runtime.daemon.Agent (its /metrics, /healthz and /status are served on
127.0.0.<n>:<port>) talking to the in-memory API server over HTTP with kubernetes_asyncio. Host
collectors are switched off (they would all read this one machine). ``Network`` stands in for the
wires between nodes so a scenario can cut some of them (a partition) without root.
"""

from __future__ import annotations

import socket
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from agent.collectors import registry as collector_registry
from agent.peers.prober import HttpTransport, set_transport
from agent.peers.stage import FailoverStage
from agent.runtime.daemon import Agent
from agent.settings import LEASE_RENEW_CONTEXT, Settings
from nodemedic_sim.demo.cluster import SimCluster


@dataclass
class Network:
    """Which node can reach which: ``cut(a, b)`` blocks probes from a to b (one direction)."""

    blocked: set[tuple[str, str]] = field(default_factory=set)

    def cut(self, src: str, dst: str) -> None:
        self.blocked.add((src, dst))

    def heal(self) -> None:
        self.blocked.clear()


class NetTransport:
    """HTTP probes from ``node`` unless the Network blocks that direction."""

    def __init__(self, node: str, network: Network, addresses: dict[str, str]) -> None:
        self.node = node
        self.network = network
        self.by_address = {addr: name for name, addr in addresses.items()}
        self.http = HttpTransport()

    async def healthz(self, url: str, time_limit: float) -> bool:
        host = url.split("//", 1)[-1].rsplit(":", 1)[0]
        target = self.by_address.get(host, "")
        if (self.node, target) in self.network.blocked:
            return False
        return await self.http.healthz(url, time_limit)

    async def close(self) -> None:
        await self.http.close()


def free_port(host: str) -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


@dataclass
class Timings:
    """Failover settings for a fast demo/test (production defaults are in agent.settings)."""

    node_grace: float = 2.0
    fencing_time: float = 3.0
    healthy_delay: float = 2.0
    lease_duration: float = 1.5
    retry_period: float = 0.25
    probe_timeout: float = 0.5
    probers: int = 2
    max_unhealthy: str = "40%"
    max_unhealthy_zone: str = "50%"
    max_concurrent: int = 1
    max_cordoned: str = "2"
    dry_run: bool = False

    @classmethod
    def production(cls, max_cordoned: str = "1") -> Timings:
        """The agent's own failover defaults (agent.settings), for benches that measure them;
        ``max_cordoned`` fits a small cluster (the default is a share of a big one)."""
        s = Settings()
        return cls(node_grace=s.failover_node_grace, fencing_time=s.failover_fencing_time,
                   healthy_delay=s.failover_healthy_delay,
                   lease_duration=s.failover_lease_duration,
                   retry_period=s.failover_retry_period, probe_timeout=s.failover_probe_timeout,
                   probers=s.failover_probers, max_cordoned=max_cordoned)


class Fleet:
    """Start/stop/kill the agents of a SimCluster."""

    def __init__(self, cluster: SimCluster, timings: Timings | None = None,
                 network: Network | None = None, workdir: Path | None = None) -> None:
        self.cluster = cluster
        self.timings = timings or Timings()
        self.network = network or Network()
        self._tmp = tempfile.TemporaryDirectory(prefix="nodemedic-demo-") if workdir is None \
            else None
        self.workdir = workdir or Path(self._tmp.name if self._tmp else ".")
        self.agents: dict[str, Agent] = {}
        self.ports: dict[str, int] = {}
        self.stages: dict[str, FailoverStage] = {}

    def settings(self, node: str) -> Settings:
        t = self.timings
        addr = self.cluster.address(node)
        port = self.ports.setdefault(node, free_port(addr))
        collector_registry.load_builtin()
        (self.workdir / "rules").mkdir(exist_ok=True)  # no rules: the demo is about failover
        # Fake kubelets (SimCluster, tests/real_fleet.Kubelets) renew their Leases faster than a
        # real kubelet's 10 s and say how often (``lease_renew_interval``), which lets the node
        # grace be that much shorter; real kubelets (tests/real_node) say nothing: 10 s holds.
        renew = getattr(self.cluster, "lease_renew_interval", None)
        context = None if renew is None else {LEASE_RENEW_CONTEXT: float(renew)}
        return Settings.model_validate(dict(
            node_name=node,
            web_listen_address=f"{addr}:{port}",
            kubeconfig=self.cluster.server.write_kubeconfig(self.workdir / "kubeconfig"),
            rules_dir=self.workdir / "rules",
            # Each agent its own local state: they share one process, not one node.
            state_dir=self.workdir / "state" / node,
            collect_interval=1.0,
            log_level="warning",
            collectors=dict.fromkeys(collector_registry.collectors(), False),
            safety_max_cordoned=t.max_cordoned,
            dry_run=t.dry_run,
            failover_enabled=True,
            failover_node_grace=t.node_grace,
            failover_fencing_time=t.fencing_time,
            failover_healthy_delay=t.healthy_delay,
            failover_lease_duration=t.lease_duration,
            failover_retry_period=t.retry_period,
            failover_probe_timeout=t.probe_timeout,
            failover_probers=t.probers,
            failover_max_unhealthy=t.max_unhealthy,
            failover_max_unhealthy_zone=t.max_unhealthy_zone,
            failover_max_concurrent=t.max_concurrent,
        ), context=context)

    async def start(self, nodes: list[str] | None = None) -> None:
        for node in nodes or self.cluster.names:
            await self.start_agent(node)

    async def start_agent(self, node: str) -> Agent:
        addresses = {n: self.cluster.address(n) for n in self.cluster.names}
        set_transport(node, NetTransport(node, self.network, addresses))
        agent = Agent(self.settings(node))
        await agent.start()
        api = agent._ctx.api if agent._ctx is not None else None
        if api is not None:  # per-agent request accounting on the API server
            api.user_agent = f"nodemedic-{node}"
        stage = self._failover_of(agent)
        if stage is None:  # agent.runtime.components builds it when failover_enabled is set
            raise RuntimeError(f"agent for {node} has no failover stage")
        self.agents[node] = agent
        self.stages[node] = stage
        return agent

    @staticmethod
    def _failover_of(agent: Agent) -> FailoverStage | None:
        for comp in agent._components:
            if isinstance(comp, FailoverStage):
                return comp
        return None

    def url(self, node: str) -> str:
        return f"http://{self.cluster.address(node)}:{self.ports[node]}"

    def leader(self) -> str | None:
        for node, stage in self.stages.items():
            if stage.elector is not None and stage.elector.is_leader:
                return node
        return None

    async def kill(self, node: str) -> None:
        """Power cut: kubelet and agent stop at once; nothing is handed over."""
        self.cluster.stop_kubelet(node)
        self.cluster.record("node_killed", node)
        agent = self.agents.pop(node, None)
        stage = self.stages.pop(node, None)
        if stage is not None:
            await stage.abandon()
        if agent is not None:
            await agent.stop()
        set_transport(node, None)

    async def revive(self, node: str) -> None:
        self.cluster.start_kubelet(node)
        self.cluster.record("node_revived", node)
        await self.start_agent(node)

    async def stop(self) -> None:
        for node in list(self.agents):
            agent = self.agents.pop(node)
            await agent.stop()
            set_transport(node, None)
        self.stages.clear()
        if self._tmp is not None:
            self._tmp.cleanup()

