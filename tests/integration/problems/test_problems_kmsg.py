"""Node problems from the real kernel ring buffer, published on the in-memory API server.

Lines are written to /dev/kmsg in the kernel's own wording with a unique marker (the device or
task name), so lines of earlier runs still in the ring buffer never match. An OOM kill is real:
a process over its v1 memory limit in a kubepods/burstable/pod<uid> cgroup is killed by the
kernel, whose oom-kill line names that cgroup.
"""

from __future__ import annotations

import asyncio
import os
import shutil
from pathlib import Path
from typing import Any

import pytest

from nodemedic_sim.apiserver import ApiServer
from tests.integration.problems.conftest import (
    Factory,
    conditions,
    conditions_of,
    events,
    events_of,
    kmsg_write,
)
from tests.kernel.test_cgroup_kernel import KernelPod, need
from tests.polling import eventually
from tests.real_cluster import Backend

pytestmark = [pytest.mark.root, pytest.mark.backends, pytest.mark.usefixtures("need_kmsg")]

FIXTURES = Path(__file__).resolve().parents[2] / "fixtures" / "npd"


def definitions(tmp: Path, marker: str) -> Path:
    d = tmp / "problems"
    d.mkdir()
    (d / "kernel.yaml").write_text(f"""
monitors:
  - name: test-kernel
    source: {{plugin: kmsg, lookback: 5m}}
    conditions:
      - {{type: ReadonlyFilesystem, reason: FilesystemIsNotReadOnly, message: not read-only}}
      - {{type: ConntrackTableFull, reason: ConntrackTableHasRoom, message: room}}
      - {{type: GPUFatalError, reason: NoFatalXid, message: no fatal Xid}}
      - {{type: KernelDeadlock, reason: KernelHasNoDeadlock, message: no deadlock}}
    rules:
      - {{type: permanent, condition: ReadonlyFilesystem, reason: FilesystemIsReadOnly,
         pattern: 'EXT4-fs \\({marker}\\): Remounting filesystem read-only'}}
      - {{type: permanent, condition: ConntrackTableFull, reason: ConntrackTableFull,
         pattern: '{marker}: nf_conntrack: table full, dropping packet', clear_after: 2s}}
      - {{type: permanent, condition: GPUFatalError, reason: NvidiaFatalXid,
         pattern: 'NVRM: Xid \\(PCI:{marker}\\): (48|63|64|74|79|94|95),.*'}}
      - {{type: temporary, reason: NvidiaXid, pattern: 'NVRM: Xid \\(PCI:{marker}\\): 13,.*'}}
      - {{type: temporary, reason: TaskHung, attribute: hung,
         pattern: 'task {marker}:\\w+ blocked for more than \\w+ seconds\\.'}}
      - {{type: permanent, condition: KernelDeadlock, reason: DockerHung, attribute: hung,
         pattern: 'task {marker}d:\\w+ blocked for more than \\w+ seconds\\.'}}
      - {{type: temporary, reason: OOMKilling, attribute: oom,
         pattern: 'Killed process \\d+ (.+) total-vm:\\d+kB, anon-rss:\\d+kB, file-rss:\\d+kB.*'}}
""")
    return d


def condition(kube: Backend, node: str, type_: str, status: str | None = None) -> Any:
    """A check for ``until``: the node's condition ``type_`` (with ``status``), else None."""
    async def check() -> dict[str, Any] | None:
        c = (await conditions_of(kube, node)).get(type_)
        return c if c is not None and (status is None or c["status"] == status) else None
    return check


def event(kube: Backend, node: str, reason: str) -> Any:
    async def check() -> dict[str, Any] | None:
        return (await events_of(kube, "Node", node)).get(reason)
    return check


async def test_condition_appears_and_survives_restart(
        kube: Backend, detector: Factory, node: str, marker: str, tmp_path: Path) -> None:
    """The healthy set is published at start; a read-only remount line makes the condition True
    with an Event; a restarted agent keeps it True with the same lastTransitionTime (no flap);
    the kubelet's and another agent's conditions are never touched. On both backends."""
    defs = definitions(tmp_path, marker)
    before = await conditions_of(kube, node)
    a = await detector(defs)
    await eventually(condition(kube, node, "ReadonlyFilesystem"))
    conds = await conditions_of(kube, node)
    assert conds["ReadonlyFilesystem"]["status"] == "False"
    assert conds["ReadonlyFilesystem"]["reason"] == "FilesystemIsNotReadOnly"
    assert {"ConntrackTableFull", "GPUFatalError", "KernelDeadlock"} <= set(conds)

    kmsg_write(f"EXT4-fs ({marker}): Remounting filesystem read-only")
    ro = await eventually(condition(kube, node, "ReadonlyFilesystem", "True"))
    assert ro["reason"] == "FilesystemIsReadOnly"
    assert marker in ro["message"]
    ev = await eventually(event(kube, node, "FilesystemIsReadOnly"))
    assert ev["type"] == "Warning" and ev["source"]["component"] == "nodemedic"
    await a.close()

    await asyncio.sleep(1.1)  # a new transition would now carry a later second
    b = await detector(defs)
    await eventually(lambda: b.counters.publishes >= 1)
    again = await conditions_of(kube, node)
    assert again["ReadonlyFilesystem"]["status"] == "True"
    assert again["ReadonlyFilesystem"]["lastTransitionTime"] == ro["lastTransitionTime"]
    assert b.book.transitions == 0  # no flap to healthy and back
    # Ready: on a real cluster the node lifecycle controller owns it (no kubelet here).
    for theirs in ("OtherAgentProblem",) if kube.real else ("Ready", "OtherAgentProblem"):
        assert again[theirs] == before[theirs]
    # The lookback re-read of the same line made no second Event.
    await asyncio.sleep(0.5)
    assert (await events_of(kube, "Node", node))["FilesystemIsReadOnly"]["count"] == 1


async def test_clear_after_and_fatal_xid(
        kube: Backend, detector: Factory, node: str, marker: str, tmp_path: Path) -> None:
    """conntrack full sets a condition that clears on its own after clear_after; a fatal Xid
    sets GPUFatalError, a non-fatal one only makes an Event. On both backends."""
    d = await detector(definitions(tmp_path, marker))
    await eventually(lambda: d.counters.publishes >= 1)
    kmsg_write(f"{marker}: nf_conntrack: table full, dropping packet",
               f"NVRM: Xid (PCI:{marker}): 13, pid=1234, Graphics Exception",
               f"NVRM: Xid (PCI:{marker}): 79, pid=1234, GPU has fallen off the bus.")
    full = await eventually(condition(kube, node, "ConntrackTableFull", "True"))
    gpu = await eventually(condition(kube, node, "GPUFatalError", "True"))
    assert "79" in gpu["message"]
    assert (await eventually(event(kube, node, "NvidiaXid")))["count"] == 1
    cleared = await eventually(condition(kube, node, "ConntrackTableFull", "False"), timeout=8)
    assert cleared["reason"] == "ConntrackTableHasRoom"
    assert cleared["lastTransitionTime"] >= full["lastTransitionTime"]
    assert (await conditions_of(kube, node))["GPUFatalError"]["status"] == "True"


async def test_hung_task_of_a_host_process_is_a_node_problem(
        apiserver: ApiServer, detector: Factory, node: str, marker: str, tmp_path: Path) -> None:
    """A hung task outside any pod cgroup is the node's: a TaskHung Event on the node and, for
    the runtime's own task, the KernelDeadlock condition."""
    d = await detector(definitions(tmp_path, marker))
    await eventually(lambda: d.counters.publishes >= 1)
    pid = os.getpid()  # a live host process: its /proc/PID/cgroup is not a pod's
    kmsg_write(f"INFO: task {marker}:{pid} blocked for more than 120 seconds.",
               f"INFO: task {marker}d:{pid} blocked for more than 120 seconds.")
    ev = await eventually(lambda: events(apiserver, "Node", node).get("TaskHung"))
    assert marker in ev["message"]
    dl = await eventually(lambda: (c := conditions(apiserver, node)["KernelDeadlock"])
                     ["status"] == "True" and c)
    assert dl["reason"] == "DockerHung"


async def test_pod_oom_kill_is_reported_against_the_pod(
        apiserver: ApiServer, detector: Factory, node: str, marker: str, tmp_path: Path) -> None:
    """A real kernel OOM kill in a pod's memory cgroup: Event on that Pod naming its owner, and
    the workload counter with namespace, pod and owner; no node Event, no node condition."""
    (memory,) = need("memory")
    ds = apiserver.create({
        "apiVersion": "apps/v1", "kind": "DaemonSet",
        "metadata": {"name": f"ds-{marker}", "namespace": "default"},
        "spec": {"selector": {"matchLabels": {"app": marker}},
                 "template": {"metadata": {"labels": {"app": marker}},
                              "spec": {"containers": [{"name": "c", "image": "busybox"}]}}},
    })
    pod = apiserver.create({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": f"hog-{marker}", "namespace": "default",
                     "ownerReferences": [{"apiVersion": "apps/v1", "kind": "DaemonSet",
                                          "name": ds["metadata"]["name"],
                                          "uid": ds["metadata"]["uid"], "controller": True}]},
        "spec": {"nodeName": node, "containers": [{"name": "c", "image": "busybox"}]},
    })
    d = await detector(definitions(tmp_path, marker))
    await eventually(lambda: d.counters.publishes >= 1)
    kp = KernelPod([memory])
    kp.uid = pod["metadata"]["uid"]
    try:
        kp.create()
        (kp.container(memory) / "memory.limit_in_bytes").write_text(str(64 << 20))
        proc = kp.start("x = b'x' * (512 << 20)")
        await asyncio.to_thread(proc.wait, 30)
        ev = await eventually(lambda: events(apiserver, "Pod", pod["metadata"]["name"])
                         .get("OOMKilling"), timeout=15)
    finally:
        kp.close()
    assert ev["involvedObject"]["uid"] == kp.uid
    assert ev["involvedObject"]["namespace"] == "default"
    owner = f"DaemonSet/ds-{marker}"
    assert ev["message"].endswith(f"(workload {owner})")
    assert d.counters.workload[("OOMKilling", "default", pod["metadata"]["name"], owner)] >= 1
    await asyncio.sleep(0.5)
    assert "OOMKilling" not in events(apiserver, "Node", node)
    assert all(c["status"] == "False" for t, c in conditions(apiserver, node).items()
               if t in ("ReadonlyFilesystem", "KernelDeadlock"))


async def test_npd_shipped_configs_run_unchanged(
        apiserver: ApiServer, detector: Factory, node: str, marker: str, tmp_path: Path) -> None:
    """NPD's own kernel-monitor.json, readonly-monitor.json, docker/systemd/custom-plugin
    monitors, copied unchanged, load and run: the read-only line sets NPD's condition and an
    I/O error line makes NPD's IOError Event."""
    npd = tmp_path / "npd"
    shutil.copytree(FIXTURES, npd)
    d = await detector(npd)
    conds = await eventually(lambda: (c := conditions(apiserver, node)).get("XfsShutdown") and c)
    assert conds["KernelDeadlock"]["reason"] == "KernelHasNoDeadlock"
    kmsg_write(f"EXT4-fs ({marker}): Remounting filesystem read-only",
               f"Buffer I/O error on dev {marker}, logical block 0, async page read")
    ro = await eventually(lambda: (c := conditions(apiserver, node)["ReadonlyFilesystem"])
                     ["status"] == "True" and c)
    assert ro["reason"] == "FilesystemIsReadOnly"
    ev: dict[str, Any] = await eventually(lambda: events(apiserver, "Node", node).get("IOError"))
    assert marker in ev["message"]
    assert d.status()["checks"]["ntp-custom-plugin-monitor"]["rules"]["NTPIsDown"].startswith(
        "disabled")
