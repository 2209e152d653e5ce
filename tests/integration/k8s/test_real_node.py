"""A real pod on a real node (tests/real_node.py: containerd + runc + the pinned kubelet): a
container over its 32 MiB memory limit is OOM-killed by the kernel, the kubelet reports it
OOMKilled, nodemedic's cgroup collector attributes the kill to that namespace/pod/container (the
same count the kernel wrote in the container's memory.oom_control), and an agent running the
shipped rules on that node names the pod in its OOMStorm Event.

Off unless NODEMEDIC_K8S_NODES=1 (see tests/real_node.py); when on, a node that cannot come up
fails these tests with node-up.sh's error.
"""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio

from tests.real_cluster import ROOT, Backend, RealCluster
from tests.real_node import (
    RealNode,
    cgroup_file,
    collect_cgroups,
    container_status,
    real_node,
    running,
    until,
)

pytestmark = [pytest.mark.backends, pytest.mark.real_only]

NS = "default"
# dd reads 64 MiB from /dev/zero into one buffer: every page is touched, the 32 MiB limit is hit.
HOG = ["dd", "if=/dev/zero", "of=/dev/null", "bs=64M", "count=1"]


@pytest.fixture(scope="module")
def node(real_cluster: RealCluster) -> Iterator[RealNode]:
    yield from real_node(real_cluster)


def pod(name: str, on: RealNode, command: list[str]) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "namespace": NS},
            "spec": {"nodeName": on.name, "restartPolicy": "Never",
                     "automountServiceAccountToken": False, "terminationGracePeriodSeconds": 0,
                     "containers": [{"name": "hog", "image": on.image, "command": command,
                                     "resources": {"limits": {"memory": "32Mi",
                                                              "cpu": "100m"}}}]}}


@pytest_asyncio.fixture
async def oom_pod(kube: Backend, node: RealNode) -> AsyncIterator[str]:
    name = f"oom-{uuid.uuid4().hex[:6]}"
    yield name
    await kube.request("DELETE", f"/api/v1/namespaces/{NS}/pods/{name}?gracePeriodSeconds=0")


async def test_a_container_over_its_memory_limit_is_oom_killed_and_the_kubelet_says_so(
        kube: Backend, node: RealNode, oom_pod: str) -> None:
    code, body = await kube.request("POST", f"/api/v1/namespaces/{NS}/pods",
                                    pod(oom_pod, node, HOG))
    assert code == 201, body
    got = await until(kube, NS, oom_pod, lambda p: p.get("status", {}).get("phase") == "Failed")
    term = container_status(got)["state"]["terminated"]
    assert term["reason"] == "OOMKilled", term
    assert term["exitCode"] == 137, term  # 128 + SIGKILL: the kernel's OOM killer


async def test_nodemedic_attributes_the_oom_kill_to_namespace_pod_and_container(
        kube: Backend, node: RealNode, oom_pod: str) -> None:
    """The shell survives its child's OOM kill, so the container cgroup (and the kernel's count
    in it) stays while nodemedic reads it. On cgroup v1 a container whose only process is killed
    loses its cgroup (and the count) as soon as containerd reaps it."""
    survivor = ["sh", "-c", " ".join(HOG) + "; sleep 3600"]
    code, body = await kube.request("POST", f"/api/v1/namespaces/{NS}/pods",
                                    pod(oom_pod, node, survivor))
    assert code == 201, body
    got = await until(kube, NS, oom_pod, running)
    uid = got["metadata"]["uid"]
    cid = container_status(got)["containerID"].split("://", 1)[1]
    oom_control = cgroup_file("memory", uid, cid, "memory.oom_control")
    labels = {"namespace": NS, "pod": oom_pod, "container": "hog", "uid": uid, "qos": "guaranteed"}
    end = time.monotonic() + 60
    while True:
        fams = await collect_cgroups(node.kubelet_url)
        kills = fams["nodemedic_container_oom_kills_total"].get(**labels)
        if kills or time.monotonic() > end:
            break
        await asyncio.sleep(0.5)
    kernel = dict(line.split() for line in oom_control.read_text().splitlines())
    assert kernel["oom_kill"] == "1", oom_control.read_text()
    assert kills == 1, fams["nodemedic_container_oom_kills_total"].samples
    assert fams["nodemedic_container_memory_limit_bytes"].get(**labels) == 32 << 20
    # containerd put the pod's sandbox (pause) beside "hog" in the pod cgroup: it is counted,
    # and no series names it as a container (it used to appear under its 64-hex ID).
    pod_dir = oom_control.parent.parent
    others = [d.name for d in pod_dir.iterdir() if d.is_dir() and d.name != cid]
    assert len(others) == 1, others
    assert (Path("/proc") / (pod_dir / others[0] / "cgroup.procs").read_text().split()[0]
            / "comm").read_text() == "pause\n"
    usage = fams["nodemedic_container_memory_usage_bytes"]
    assert {lv[3] for lv, _ in usage.samples if lv[2] == uid} == {"", "hog"}, usage.samples
    assert (fams["nodemedic_cgroup_cgroups"].get(level="sandbox") or 0) >= 1


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def ready(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/readyz", timeout=2) as r:
            return int(r.status) == 200
    except OSError:
        return False


@pytest.fixture
def agent(node: RealNode, real_cluster: RealCluster, tmp_path: Path) -> Iterator[str]:
    """A nodemedic agent for the node, acting (not dry-run), with the shipped rules."""
    assert real_cluster.creds is not None
    port = free_port()
    log = (tmp_path / "agent.log").open("wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "agent", "run", "--kubeconfig", str(real_cluster.creds.kubeconfig),
         "--kubelet.url", node.kubelet_url, "--node-name", node.name,
         "--web.listen-address", f"127.0.0.1:{port}", "--state.dir", str(tmp_path / "state"),
         "--rules.dir", str(ROOT / "rules"), "--problems.dir", str(ROOT / "problems"),
         "--collect.interval", "2s", "--cgroup.min-interval", "0s"],
        cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, env={k: v for k, v in os.environ.items()
                                                   if not k.startswith("NODEMEDIC_")})
    url = f"http://127.0.0.1:{port}"
    try:
        # Ready before the pod starts: the rule counts the increase from the first sample it sees.
        end = time.monotonic() + 60
        while not ready(url):
            assert proc.poll() is None and time.monotonic() < end, \
                f"the agent did not become ready: {(tmp_path / 'agent.log').read_text()[-2000:]}"
            time.sleep(0.5)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


async def test_the_oom_storm_rule_names_the_pod_in_an_event(
        kube: Backend, node: RealNode, oom_pod: str, agent: str) -> None:
    """Eight kernel OOM kills in one container, 2 s apart: rules/containers.yaml's
    container-oom-storm (more than 3 in 10 minutes, counted from the agent's first sample of the
    new container, taken every 2 s) fires and its Event names the pod."""
    storm = ["sh", "-c", "for i in 1 2 3 4 5 6 7 8; do " + " ".join(HOG) + "; sleep 2; done; "
             "sleep 3600"]
    code, body = await kube.request("POST", f"/api/v1/namespaces/{NS}/pods",
                                    pod(oom_pod, node, storm))
    assert code == 201, body
    got = await until(kube, NS, oom_pod, running)
    oom_control = cgroup_file("memory", got["metadata"]["uid"],
                              container_status(got)["containerID"].split("://", 1)[1],
                              "memory.oom_control")
    end = time.monotonic() + 120
    events: list[dict[str, Any]] = []
    fourth: float | None = None  # when the kernel's count reached 4 (the rule's "more than 3")
    next_look = 0.0
    while time.monotonic() < end:
        if fourth is None:
            counts = dict(line.split() for line in oom_control.read_text().splitlines())
            if int(counts["oom_kill"]) >= 4:
                fourth = time.monotonic()
        if time.monotonic() >= next_look:
            next_look = time.monotonic() + 0.5
            code, body = await kube.request(
                "GET", f"/api/v1/namespaces/{NS}/events?fieldSelector=reason%3DOOMStorm")
            events = [e for e in body.get("items", [])
                      if e["involvedObject"].get("name") == oom_pod]
            if events:
                break
        await asyncio.sleep(0.1)
    if fourth is not None and events:
        # OOM -> Event latency: 2 s collect interval, rule evaluation, the Event's POST.
        print(f"\n4th kernel OOM kill -> OOMStorm Event seen: {time.monotonic() - fourth:.2f} s")
    assert events, f"no OOMStorm Event for {NS}/{oom_pod} within 120 s"
    ev = events[0]
    assert ev["involvedObject"]["kind"] == "Pod"
    assert ev["source"] == {"component": "nodemedic", "host": node.name}, ev["source"]
    assert f"{NS}/{oom_pod}" in ev["message"], ev["message"]
