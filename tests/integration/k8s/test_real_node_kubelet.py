"""The shipped kubelet rule (rules/kubelet.yaml) against a real kubelet run by real systemd.

The node is a booted Debian 12 systemd-nspawn container (hack/k8s/nspawn.sh, NODE_NSPAWN=1) whose
systemd 252 runs containerd.service and kubelet.service (Restart=no: a dead kubelet stays dead
until someone restarts the unit). A nodemedic agent runs inside that container too, as a transient
systemd unit, acting (not dry-run), with the shipped kubelet rule, its durations shortened
(for 2m -> 6s, escalate after 3m -> 30s (the schema's least), healthy_for 10m -> 15s;
everything else as shipped), so its restart-service runs the container's real /bin/systemctl
against the real kubelet.service.

1. The kubelet is killed: nodemedic_kubelet_up turns 0, the rule's KubeletUnhealthy Event is
   posted and restart-service restarts kubelet.service (a new systemd invocation, started by
   nodemedic's systemctl: nothing else restarts it); the node is healthy again, never cordoned.
2. The kubelet is killed with its config gone, so the restart does not help: the escalation
   cordons the node (KubeletStillUnhealthy); the operator puts the config back and starts the
   unit; healthy_for later nodemedic uncordons it (KubeletRecovered), and not before.

Off unless NODEMEDIC_K8S_NODES=1 (see tests/real_node.py).
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from agent.runtime.remediation import STATE_ANNOTATION
from tests.real_cluster import ROOT, Backend, RealCluster
from tests.real_node import RealNode, real_node

pytestmark = [pytest.mark.backends, pytest.mark.real_only]

FOR, AFTER, HEALTHY_FOR = 6.0, 30.0, 15.0  # 30 s: the schema's least 'after'
UNIT = "kubelet.service"


def agent_binds() -> tuple[Path, ...]:
    """What the agent needs from the host, read-only: this checkout, its venv and the Python the
    venv was made from."""
    base = Path(os.path.realpath(sys.executable)).parents[1]
    return tuple(dict.fromkeys((ROOT, Path(sys.prefix), base)))


@pytest.fixture(scope="module")
def node(real_cluster: RealCluster) -> Iterator[RealNode]:
    yield from real_node(real_cluster, nspawn=True, binds_ro=agent_binds())


def fast_rules(directory: Path) -> Path:
    """rules/kubelet.yaml as shipped, only its durations shortened."""
    doc = yaml.safe_load((ROOT / "rules" / "kubelet.yaml").read_text())
    (rule,) = doc["rules"]
    assert rule["name"] == "kubelet-unhealthy" and rule["when"]["metric"] == "nodemedic_kubelet_up"
    assert [a["type"] for a in rule["actions"]] == ["event", "restart-service"]
    assert rule["actions"][1]["unit"] == UNIT
    rule["for"], rule["healthy_for"] = f"{FOR:g}s", f"{HEALTHY_FOR:g}s"
    (step,) = rule["escalate"]
    assert [a["type"] for a in step["actions"]] == ["cordon", "event"]
    assert [a["type"] for a in step["undo"]] == ["uncordon", "event"]
    step["after"] = f"{AFTER:g}s"
    directory.mkdir(parents=True)
    (directory / "kubelet.yaml").write_text(yaml.safe_dump(doc))
    return directory


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def get(url: str) -> str | None:
    try:
        with urllib.request.urlopen(url, timeout=3) as r:
            return str(r.read().decode())
    except OSError:
        return None


def metric(url: str, name: str) -> float | None:
    text = get(f"{url}/metrics") or ""
    for line in text.splitlines():
        if line.startswith(name + " ") or line.startswith(name + "{"):
            return float(line.rsplit(" ", 1)[1])
    return None


class Agent:
    """nodemedic inside the node container, as the transient unit nodemedic-<n>.service."""

    def __init__(self, node: RealNode, real_cluster: RealCluster, n: int) -> None:
        assert real_cluster.creds is not None
        self.node, self.unit = node, f"nodemedic-{n}.service"
        work = node.directory / f"agent-{n}"
        rules = fast_rules(work / "rules")
        self.log = node.directory / "logs" / f"agent-{n}.log"
        port = free_port()
        self.url = f"http://127.0.0.1:{port}"
        out = node.inside(
            "systemd-run", f"--unit={self.unit}", f"--working-directory={ROOT}",
            f"--property=StandardOutput=append:{self.log}", "--property=StandardError=inherit",
            f"--setenv=PYTHONPATH={ROOT}",
            sys.executable, "-m", "agent", "run",
            "--kubeconfig", str(real_cluster.creds.kubeconfig),
            "--kubelet.url", node.kubelet_url, "--node-name", node.name,
            "--web.listen-address", f"127.0.0.1:{port}", "--state.dir", str(work / "state"),
            "--rules.dir", str(rules), "--problems.dir", str(ROOT / "problems"),
            "--collect.interval", "2s")
        assert out.returncode == 0, out.stderr
        end = time.monotonic() + 90
        while get(f"{self.url}/readyz") is None or metric(self.url, "nodemedic_kubelet_up") != 1:
            assert time.monotonic() < end, f"agent not ready with kubelet_up 1: {self.tail()}"
            state = node.inside("systemctl", "is-active", self.unit).stdout.strip()
            assert state in ("active", "activating"), f"{self.unit} {state}: {self.tail()}"
            time.sleep(0.5)

    def tail(self) -> str:
        return self.log.read_text()[-3000:] if self.log.exists() else "(no log)"

    def status(self) -> dict[str, Any]:
        doc: dict[str, Any] = json.loads(get(f"{self.url}/status") or "{}")
        return doc

    def decisions(self, action: str) -> list[dict[str, Any]]:
        recent = self.status().get("remediation", {}).get("recent_decisions", [])
        return [d for d in recent if d.get("action") == action]

    def stop(self) -> None:
        self.node.inside("systemctl", "stop", self.unit)


def unit(node: RealNode, *props: str) -> dict[str, str]:
    out = node.inside("systemctl", "show", UNIT, "-p", ",".join(props)).stdout
    return dict(line.split("=", 1) for line in out.splitlines() if "=" in line)


def kill_kubelet(node: RealNode) -> None:
    """A crash: SIGKILL to the kubelet; with Restart=no systemd leaves the unit failed."""
    out = node.inside("systemctl", "kill", "--signal=SIGKILL", UNIT)
    assert out.returncode == 0, out.stderr
    end = time.monotonic() + 20
    while unit(node, "ActiveState")["ActiveState"] == "active":
        assert time.monotonic() < end, unit(node, "ActiveState", "SubState")
        time.sleep(0.2)


async def events(kube: Backend, reason: str, node: RealNode) -> list[dict[str, Any]]:
    code, body = await kube.request("GET", f"/api/v1/events?fieldSelector=reason%3D{reason}")
    assert code == 200, body
    return [e for e in body.get("items", []) if e["involvedObject"].get("name") == node.name
            and e["involvedObject"].get("kind") == "Node"]


async def wait(what: str, cond: Any, timeout: float, agent: Agent) -> float:
    """Poll ``cond()`` (sync or async) until truthy; returns when (monotonic)."""
    end = time.monotonic() + timeout
    while True:
        got = cond()
        if asyncio.iscoroutine(got):
            got = await got
        if got:
            return time.monotonic()
        assert time.monotonic() < end, f"{what} not within {timeout} s; agent log:\n{agent.tail()}"
        await asyncio.sleep(0.5)


async def unschedulable(kube: Backend, node: RealNode) -> bool:
    got = await kube.get("Node", "", node.name)
    return bool((got or {}).get("spec", {}).get("unschedulable"))


async def test_a_killed_kubelet_is_restarted_by_restart_service_through_real_systemd(
        kube: Backend, node: RealNode, real_cluster: RealCluster) -> None:
    agent = Agent(node, real_cluster, 1)
    try:
        before = unit(node, "InvocationID", "ExecMainPID")
        t0 = time.monotonic()
        kill_kubelet(node)
        down = await wait("kubelet_up 0", lambda: metric(agent.url, "nodemedic_kubelet_up") == 0,
                          30, agent)
        fired = await wait("a KubeletUnhealthy Event",
                           lambda: events(kube, "KubeletUnhealthy", node), FOR + 60, agent)
        back = await wait("kubelet.service active again",
                          lambda: unit(node, "ActiveState")["ActiveState"] == "active", 60, agent)
        up = await wait("kubelet_up 1", lambda: metric(agent.url, "nodemedic_kubelet_up") == 1,
                        60, agent)
        after = unit(node, "InvocationID", "ExecMainPID")
        # A new run of the unit, by a systemctl restart: with Restart=no nothing but nodemedic's
        # restart-service starts it, and its decision says it ran that systemctl.
        assert after["InvocationID"] != before["InvocationID"], (before, after)
        assert after["ExecMainPID"] != before["ExecMainPID"], (before, after)
        (restart,) = [d for d in agent.decisions("restart-service") if d["decision"] == "allowed"]
        assert restart["outcome"] == "success", restart
        assert restart["params"] == {"unit": UNIT}, restart
        journal = node.inside("journalctl", "-u", UNIT, "-o", "cat", "--no-pager").stdout
        assert journal.count("Started kubelet.service") == 2, journal
        assert not await unschedulable(kube, node)  # fixed by the restart: no cordon
        print(f"\nkill -> kubelet_up 0 {down - t0:.1f} s, -> Event {fired - t0:.1f} s, "
              f"-> unit active {back - t0:.1f} s, -> kubelet_up 1 {up - t0:.1f} s")
    finally:
        agent.stop()


async def test_a_kubelet_the_restart_does_not_fix_is_cordoned_then_uncordoned_after_healthy_for(
        kube: Backend, node: RealNode, real_cluster: RealCluster) -> None:
    config = node.directory / "kubelet.yaml"
    aside = config.with_suffix(".aside")
    # A node nodemedic has not acted on: the first test's restart is in the ledger nodemedic
    # keeps on the Node (it survives agents), and its 10m cooldown would hold this restart back.
    code, body = await kube.request(
        "PATCH", f"/api/v1/nodes/{node.name}",
        {"metadata": {"annotations": {STATE_ANNOTATION: None}}},
        content_type="application/merge-patch+json")
    assert code == 200, body
    agent = Agent(node, real_cluster, 2)
    try:
        t0 = time.monotonic()
        config.rename(aside)  # the restarted kubelet exits at once: "failed to load config"
        kill_kubelet(node)
        await wait("restart-service ran", lambda: any(
            d["decision"] == "allowed" for d in agent.decisions("restart-service")), FOR + 60,
            agent)
        cordoned = await wait("the escalation's cordon", lambda: unschedulable(kube, node),
                              AFTER + 60, agent)
        assert await events(kube, "KubeletStillUnhealthy", node)
        assert metric(agent.url, "nodemedic_kubelet_up") == 0
        assert unit(node, "ActiveState")["ActiveState"] != "active"
        # The operator's fix: the config back, the unit started.
        aside.rename(config)
        out = node.inside("systemctl", "start", UNIT)
        assert out.returncode == 0, out.stderr
        healthy = await wait("kubelet_up 1", lambda: metric(agent.url, "nodemedic_kubelet_up")
                             == 1, 60, agent)
        uncordoned = await wait("the undo's uncordon",
                                lambda: _not(unschedulable(kube, node)), HEALTHY_FOR + 60, agent)
        # healthy_for: not before the kubelet was healthy that long (one 2 s tick of slack for
        # when the agent first saw it healthy).
        assert uncordoned - healthy >= HEALTHY_FOR - 2.5, (uncordoned - healthy)
        assert await events(kube, "KubeletRecovered", node)
        print(f"\nkill -> cordon {cordoned - t0:.1f} s, fixed -> kubelet_up 1 "
              f"{healthy - t0:.1f} s, -> uncordon {uncordoned - t0:.1f} s "
              f"({uncordoned - healthy:.1f} s after healthy)")
    finally:
        if aside.exists():
            aside.rename(config)
        agent.stop()
        node.inside("systemctl", "start", UNIT)


async def _not(coro: Any) -> bool:
    return not await coro
