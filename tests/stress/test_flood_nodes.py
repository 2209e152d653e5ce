"""Bounded everything, cluster side: thousands of Nodes flapping Ready and being replaced (as
in an autoscaled cluster) while the failover leader's ClusterView watches them. The loop stays
responsive (/healthz answers), the view follows the cluster, and its per-node maps hold only
nodes that still exist."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from stress_agent import healthz, running_agent, short_budget

from agent.peers.cluster import ClusterView
from agent.peers.heartbeat import HEARTBEAT_LABEL, LEASE_PREFIX, PROBES_ANNOTATION, URL_ANNOTATION
from nodemedic_sim.apiserver import ApiServer

NS = "kube-system"


def node(name: str, ready: bool) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Node", "metadata": {"name": name}, "spec": {},
            "status": {"conditions": [{"type": "Ready", "status": str(ready)}]}}


def heartbeat(prober: str, targets: list[str], seq: int) -> dict[str, Any]:
    return {
        "apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
        "metadata": {"name": LEASE_PREFIX + prober, "namespace": NS,
                     "labels": {HEARTBEAT_LABEL: "true"},
                     "annotations": {URL_ANNOTATION: f"http://{prober}:9678",
                                     PROBES_ANNOTATION: json.dumps(
                                         {t: [1, seq] for t in targets})}},
        "spec": {"holderIdentity": prober},
    }


async def settle(cond: Callable[..., bool], within: float = 60.0) -> None:
    end = time.monotonic() + within
    while not cond():
        assert time.monotonic() < end, "the view did not catch up"
        await asyncio.sleep(0.05)


async def churn_cluster(apiserver: ApiServer, view: ClusterView, port: int,
                        nodes: int, rounds: int) -> list[int]:
    """Create ``nodes`` Nodes with heartbeats; each round flap every Node's Ready condition and
    replace a fifth of them (and their heartbeats) by new names. Returns /healthz results."""
    names = [f"n-{i}" for i in range(nodes)]
    for n in names:
        apiserver.create(node(n, True))
    for i, n in enumerate(names[: nodes // 10]):
        apiserver.create(heartbeat(n, names[i + 1 : i + 4], 1))
    await settle(lambda: len(view.nodes.items) == nodes)
    probes = [await healthz(port)]
    serial = nodes
    for r in range(rounds):
        for n in names:
            apiserver.patch("Node", "", n, {"status": {"conditions": [
                {"type": "Ready", "status": str(r % 2 == 1)}]}}, subresource="status")
        probes.append(await healthz(port))
        gone, names = names[: nodes // 5], names[nodes // 5 :]
        for n in gone:
            apiserver.delete("Node", "", n)
            if apiserver.get("Lease", NS, LEASE_PREFIX + n) is not None:
                apiserver.delete("Lease", NS, LEASE_PREFIX + n)
        fresh = [f"n-{serial + i}" for i in range(len(gone))]
        serial += len(gone)
        for i, n in enumerate(fresh):
            apiserver.create(node(n, True))
            if i < len(fresh) // 2:
                apiserver.create(heartbeat(n, names[i : i + 3], r + 2))
        names += fresh
        probes.append(await healthz(port))
        await settle(lambda current=set(names): set(view.nodes.items) == current)
    await settle(lambda: len(view.heartbeats.items) == sum(
        1 for n in names if apiserver.get("Lease", NS, LEASE_PREFIX + n) is not None))
    return probes


@pytest.mark.slow
async def test_thousands_of_nodes_flapping_and_replaced(
    tmp_path: Path, apiserver: ApiServer, kube_api: Any
) -> None:
    """1,000 Nodes (5,000 in the long budget) flap Ready every round and a fifth are replaced by
    new names: /healthz answers 200 throughout and the view holds exactly the current Nodes."""
    nodes = 1000 if short_budget() else 5000
    view = ClusterView(kube_api, NS)
    view.start()
    try:
        async with running_agent(tmp_path) as agent:
            assert agent.port is not None
            probes = await churn_cluster(apiserver, view, agent.port, nodes,
                                         rounds=3 if short_budget() else 10)
        assert set(probes) == {200}, probes
        assert len(view.nodes.items) == nodes
        assert set(view.probes) <= set(view.nodes.items)
        assert set(view.renewed) <= set(view.nodes.items)
    finally:
        await view.stop()


@pytest.mark.slow
async def test_node_churn_leaves_no_per_node_state_behind(
    tmp_path: Path, apiserver: ApiServer, kube_api: Any
) -> None:
    """After rounds of node replacement, the view remembers agent URLs and probe sequence
    numbers only for heartbeats and nodes that still exist."""
    view = ClusterView(kube_api, NS)
    view.start()
    try:
        async with running_agent(tmp_path) as agent:
            assert agent.port is not None
            await churn_cluster(apiserver, view, agent.port, 200, rounds=3)
        probers = {hb[0] for hb in view.heartbeats.items.values()}
        assert set(view.urls) <= probers
        assert {p for p, _t in view._seqs} <= probers
    finally:
        await view.stop()
