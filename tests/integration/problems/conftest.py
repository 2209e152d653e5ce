"""Helpers for the problem detector's real-kernel tests: /dev/kmsg writes, a node to publish
on, a detector factory with short publish/flush periods, and polling."""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio

from agent.problems.detector import DetectorOptions, ProblemDetector
from agent.problems.loader import load_problems
from nodemedic_sim.apiserver import ApiServer
from tests.real_cluster import Backend

KMSG = Path("/dev/kmsg")


def kmsg_write(*lines: str, level: int = 3) -> None:
    """Write each line as a kernel log record (``<level>text``). One open per line: the kernel
    rate-limits writers per open file (10 lines per 5 s)."""
    for line in lines:
        with KMSG.open("w") as fh:
            fh.write(f"<{level}>{line}\n")


@pytest.fixture
def need_kmsg() -> None:
    """Fail (not skip) when /dev/kmsg cannot be written: these tests exist to use it."""
    assert os.geteuid() == 0, "the /dev/kmsg tests need root"
    assert os.access(KMSG, os.R_OK | os.W_OK), "/dev/kmsg is not readable and writable"


@pytest.fixture
def marker() -> str:
    return "nm" + uuid.uuid4().hex[:10]


@pytest_asyncio.fixture
async def node(kube: Backend, marker: str) -> str:
    """A Node with the kubelet's Ready condition and another agent's condition (on either
    backend: tests/real_cluster.py)."""
    name = f"node-{marker}"
    await kube.seed({
        "apiVersion": "v1", "kind": "Node", "metadata": {"name": name},
        "status": {"conditions": [
            {"type": "Ready", "status": "True", "reason": "KubeletReady",
             "message": "kubelet is posting ready status",
             "lastHeartbeatTime": "2026-01-01T00:00:00Z",
             "lastTransitionTime": "2026-01-01T00:00:00Z"},
            {"type": "OtherAgentProblem", "status": "True", "reason": "TheirReason",
             "message": "not ours", "lastHeartbeatTime": "2026-01-01T00:00:00Z",
             "lastTransitionTime": "2026-01-01T00:00:00Z"},
        ]},
    })
    return name


Factory = Callable[..., Awaitable[ProblemDetector]]


@pytest_asyncio.fixture
async def detector(kube_api: Any, node: str) -> AsyncIterator[Factory]:
    """Start detectors over a definitions directory; all are closed after the test."""
    started: list[ProblemDetector] = []

    async def make(problems_dir: Path, plugin_dir: Path | None = None, **kw: Any
                   ) -> ProblemDetector:
        opts = DetectorOptions(node=node, tick=0.1, event_flush=0.2, **kw)
        d = ProblemDetector(load_problems(problems_dir, plugin_dir), opts, kube_api)
        started.append(d)
        await d.start()
        return d

    yield make
    for d in started:
        await d.close()


async def conditions_of(kube: Backend, node: str) -> dict[str, dict[str, Any]]:
    """The node's conditions by type, read through the API (either backend)."""
    obj = await kube.get("Node", "", node) or {}
    return {c["type"]: c for c in (obj.get("status") or {}).get("conditions") or []}


async def events_of(kube: Backend, kind: str, name: str) -> dict[str, dict[str, Any]]:
    """nodemedic's Events about one object, by reason, read through the API (either backend)."""
    _, body = await kube.request(
        "GET", f"/api/v1/events?fieldSelector=involvedObject.kind={kind},"
        f"involvedObject.name={name}")
    return {e["reason"]: e for e in body.get("items", [])
            if (e.get("source") or {}).get("component") == "nodemedic"}


def conditions(apiserver: ApiServer, node: str) -> dict[str, dict[str, Any]]:
    obj = apiserver.get("Node", "", node) or {}
    return {c["type"]: c for c in (obj.get("status") or {}).get("conditions") or []}


def events(apiserver: ApiServer, kind: str, name: str) -> dict[str, dict[str, Any]]:
    """Our Events about one object, by reason."""
    return {e["reason"]: e for e in apiserver.list("Event")
            if e["involvedObject"]["kind"] == kind and e["involvedObject"]["name"] == name}


