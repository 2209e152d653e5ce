"""A Service behind real kube-proxy iptables rules: nodemedic's lbskew collector reads the real
KUBE-SERVICES / KUBE-SVC-* / KUBE-SEP-* chains (iptables-save) and the host's conntrack table.

kube-proxy (the pinned release, iptables mode) runs on the node (tests/real_node.py,
NODE_KUBE_PROXY=1). The Service has 3 endpoint pods; each answers a connection with its own pod
name (busybox ``nc -ll -e``) and then holds it open. The test opens connections to the ClusterIP
from the host and counts, per pod, the names it was answered with: that is the per-endpoint count
nodemedic must report (established connections per endpoint from conntrack), with each
endpoint's expected share (1/3) from the rules' probabilities and the max/mean ratio of those
counts. Then it closes every connection but those to one pod: the connections still open are
skewed onto it, and nodemedic says so. After node-down no KUBE-* chain is left on the host.

Off unless NODEMEDIC_K8S_NODES=1 (see tests/real_node.py).
"""

from __future__ import annotations

import asyncio
import socket
import subprocess
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Iterator

import pytest
import pytest_asyncio

from agent.collectors.base import CollectorContext
from agent.collectors.lbskew import LbSkewCollector
from agent.settings import Settings
from agent.structs.metrics import Family
from tests.real_cluster import Backend, RealCluster
from tests.real_node import RealNode, real_node, require_nodes, running, until

pytestmark = [pytest.mark.backends, pytest.mark.real_only]

NS = "default"
PODS = 3
CONNECTIONS = 90
# Answer each connection with this pod's name, then hold it open.
SERVE = ["sh", "-c", "printf '#!/bin/sh\\necho %s\\nexec sleep 600\\n' \"$HOSTNAME\" > /tmp/id"
         " && chmod +x /tmp/id && exec nc -ll -p 8080 -e /tmp/id"]


def kube_chains() -> set[str]:
    out = subprocess.run(["iptables-save"], capture_output=True, text=True, timeout=60,
                         check=True).stdout
    return {line.split()[0][1:] for line in out.splitlines() if line.startswith(":KUBE-")}


@pytest.fixture(scope="module")
def node(real_cluster: RealCluster) -> Iterator[RealNode]:
    require_nodes()
    before = kube_chains()
    yield from real_node(real_cluster, kube_proxy=True)
    left = kube_chains() - before
    assert not left, f"node-down left kube-proxy/kubelet chains on the host: {sorted(left)}"


@pytest_asyncio.fixture
async def service(kube: Backend, node: RealNode) -> AsyncIterator[tuple[str, dict[str, str]]]:
    """(ClusterIP, pod IP -> pod name) of a Service whose 3 endpoint pods are running."""
    app = f"echo-{uuid.uuid4().hex[:6]}"
    names = [f"{app}-{i}" for i in range(PODS)]
    try:
        code, body = await kube.request("POST", f"/api/v1/namespaces/{NS}/services", {
            "apiVersion": "v1", "kind": "Service", "metadata": {"name": app, "namespace": NS},
            "spec": {"selector": {"app": app},
                     "ports": [{"name": "tcp", "port": 80, "targetPort": 8080}]}})
        assert code == 201, body
        vip = body["spec"]["clusterIP"]
        for name in names:
            code, body = await kube.request("POST", f"/api/v1/namespaces/{NS}/pods", {
                "apiVersion": "v1", "kind": "Pod",
                "metadata": {"name": name, "namespace": NS, "labels": {"app": app}},
                "spec": {"nodeName": node.name, "automountServiceAccountToken": False,
                         "terminationGracePeriodSeconds": 0,
                         "containers": [{"name": "c", "image": node.image, "command": SERVE}]}})
            assert code == 201, body
        ips = {}
        for name in names:
            got = await until(kube, NS, name, running)
            ips[got["status"]["podIP"]] = name
        # kube-proxy has programmed the 3 endpoints when its KUBE-SVC chain jumps to 3 SEPs.
        for _ in range(120):
            rules = subprocess.run(["iptables-save", "-t", "nat"], capture_output=True,
                                   text=True, timeout=60, check=True).stdout
            seps = [r for r in rules.splitlines() if r.startswith("-A KUBE-SVC-")
                    and f'"{NS}/{app}:tcp -> ' in r]
            if len(seps) == PODS:
                break
            await asyncio.sleep(0.5)
        else:
            raise AssertionError(f"kube-proxy did not program {PODS} endpoints:\n{rules}")
        yield vip, ips
    finally:
        for name in names:
            await kube.request("DELETE", f"/api/v1/namespaces/{NS}/pods/{name}"
                                         "?gracePeriodSeconds=0")
        await kube.request("DELETE", f"/api/v1/namespaces/{NS}/services/{app}")


def connect(vip: str, n: int) -> list[tuple[str, socket.socket]]:
    """``n`` connections to the ClusterIP, each with the name of the pod that answered it."""
    out = []
    for _ in range(n):
        s = socket.create_connection((vip, 80), timeout=10)
        name = s.makefile("r").readline().strip()
        assert name, "an endpoint answered nothing"
        out.append((name, s))
    return out


async def collect() -> dict[str, Family]:
    """One tick of a fresh lbskew collector (its first tick walks conntrack)."""
    ctx = CollectorContext(Settings())
    return {f.name: f for f in await LbSkewCollector(ctx).collect()}


def per_pod(fams: dict[str, Family], name: str, app: str, ips: dict[str, str]) -> dict[str, float]:
    got: dict[str, float] = {}
    for labels, value in fams[name].series():
        if labels["namespace"] == NS and labels["service"] == app:
            ip = labels["endpoint"].rsplit(":", 1)[0]
            got[ips[ip]] = value
    return got


async def test_lbskew_reads_the_real_chains_and_conntrack(
        node: RealNode, service: tuple[str, dict[str, str]]) -> None:
    vip, ips = service
    app = next(iter(ips.values())).rsplit("-", 1)[0]
    conns = await asyncio.to_thread(connect, vip, CONNECTIONS)
    try:
        served = Counter(name for name, _ in conns)
        assert set(served) <= set(ips.values()), served
        fams = await collect()
        info = [lbl for lbl, _ in fams["nodemedic_service_lb_info"].series()
                if lbl["service"] == app]
        assert info and info[0]["vip"] == vip and info[0]["mode"] == "iptables", info
        assert info[0]["chain"].startswith("KUBE-SVC-"), info
        expected = per_pod(fams, "nodemedic_service_endpoint_expected_share", app, ips)
        assert expected == pytest.approx(dict.fromkeys(ips.values(), 1 / PODS)), expected
        active = per_pod(fams, "nodemedic_service_endpoint_connections", app, ips)
        assert active == {n: served.get(n, 0) for n in ips.values()}, (active, served)
        counts = [served.get(n, 0) for n in ips.values()]
        ratio = fams["nodemedic_service_skew_max_mean_ratio"].get(service=app)
        assert ratio == pytest.approx(max(counts) / (sum(counts) / PODS)), (ratio, counts)
        assert fams["nodemedic_service_connections"].get(service=app) == CONNECTIONS

        # Close all but one pod's connections: what stays open is all on that pod.
        keep = served.most_common(1)[0][0]
        for name, s in conns:
            if name != keep:
                s.close()
        await asyncio.sleep(1)
        fams = await collect()
        active = per_pod(fams, "nodemedic_service_endpoint_connections", app, ips)
        assert active == {n: (served[keep] if n == keep else 0) for n in ips.values()}, active
        # Closed connections stay in conntrack (TIME_WAIT): all entries still add up to the
        # connections the test made to each pod.
        entries = per_pod(fams, "nodemedic_service_endpoint_conntrack_entries", app, ips)
        assert entries == {n: served.get(n, 0) for n in ips.values()}, (entries, served)
        assert fams["nodemedic_service_skew_max_mean_ratio"].get(service=app) == \
            pytest.approx(PODS)
        # 90 connections over 3 pods: the busiest has at least 30, the default
        # --lbskew.min-samples, so the skew test has enough connections.
        assert served[keep] >= Settings().lbskew_min_samples
        assert fams["nodemedic_service_skew_samples_sufficient"].get(service=app) == 1
        assert fams["nodemedic_service_skewed"].get(service=app) == 1
    finally:
        for _, s in conns:
            s.close()

