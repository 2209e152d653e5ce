"""The shipped rules fire on what the real collectors really export (label values included).

A rule's condition and the collector's labels are written by different people; a mismatch such
as status "True" vs "true" makes a rule that can never fire, and no unit test of either side
sees it. These tests run the real collector against the in-memory API server, feed its output
through the real pipeline and engine with the shipped rules/, and expect the Event request.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path

import pytest_asyncio
import yaml

from agent.collectors.base import CollectorContext
from agent.collectors.node import NodeCollector
from agent.kube.client import create_api_client
from agent.rules.engine import RuleEngine
from agent.rules.loader import load_rules_dir
from agent.runtime.pipeline import Collection
from agent.settings import settings_for_tests
from nodemedic_sim.apiserver import ApiServer

REPO = Path(__file__).resolve().parents[2]
FIXTURES = REPO / "tests" / "fixtures" / "k8s"
NODE = "datagen-1-35"


def seed(apiserver: ApiServer, pressure: str) -> None:
    node = yaml.safe_load((FIXTURES / "node_list_minikube_v1.35.yaml").read_text())["items"][0]
    node.update(apiVersion="v1", kind="Node")
    for cond in node["status"]["conditions"]:
        if cond["type"] == pressure:
            cond["status"] = "True"  # as the kubelet writes it
    apiserver.create(node)
    apiserver.create({
        "apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
        "metadata": {"name": NODE, "namespace": "kube-node-lease"},
        "spec": {"holderIdentity": NODE, "leaseDurationSeconds": 40,
                 "renewTime": time.strftime("%Y-%m-%dT%H:%M:%S.000000Z", time.gmtime())},
    })


@pytest_asyncio.fixture
async def collection(apiserver: ApiServer, tmp_path: Path) -> AsyncIterator[Collection]:
    settings = settings_for_tests(node_name=NODE,
                                  kubeconfig=apiserver.write_kubeconfig(tmp_path / "kc"))
    api = await create_api_client(settings)
    c = NodeCollector(CollectorContext(settings, api=api))
    await c.start()
    coll = Collection([c])
    try:
        yield coll
    finally:
        await coll.close()
        if api is not None:
            await api.close()


async def fired(apiserver: ApiServer, coll: Collection, pressure: str) -> set[str]:
    seed(apiserver, pressure)
    for _ in range(200):
        snap = await coll.collect()
        if snap.collectors["node"].ok:
            break
        await asyncio.sleep(0.05)
    assert snap.collectors["node"].ok, snap.collectors["node"].error
    engine = RuleEngine(load_rules_dir(REPO / "rules"), NODE)
    t0 = snap.monotonic
    engine.evaluate(snap, t0)
    later = replace(snap, taken_at=snap.taken_at + 400, monotonic=t0 + 400)
    return {r.rule for r in engine.evaluate(later, t0 + 400)}


async def test_disk_pressure_rule_fires_on_node_collector_output(
    apiserver: ApiServer, collection: Collection
) -> None:
    """DiskPressure=True on the Node makes the shipped node-disk-pressure rule fire after 5m."""
    assert "node-disk-pressure" in await fired(apiserver, collection, "DiskPressure")


async def test_pid_pressure_rule_fires_on_node_collector_output(
    apiserver: ApiServer, collection: Collection
) -> None:
    """PIDPressure=True on the Node makes the shipped node-pid-pressure rule fire after 5m."""
    rules = await fired(apiserver, collection, "PIDPressure")
    assert "node-pid-pressure" in rules
    assert "node-disk-pressure" not in rules
