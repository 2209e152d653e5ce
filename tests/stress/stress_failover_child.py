"""A throw-away leader agent for the failover SIGKILL test: the real FailoverStage of one healthy
node, with short timings, against the in-memory API server at argv[1].

Run by tests/stress/test_faults_failover_sigkill.py as
``python stress_failover_child.py URL NODE FENCING_TIME``; the test SIGKILLs it at chosen points
(from the API server's side, the moment a chosen write lands) and starts another one under a
different node name, which must wait out the dead leader's Lease and resume its work.

The stage runs its own tasks (election, probes, watches, one remediation task per failed node),
so there is no tick to drive: every RETRY seconds the child prints one ``TICK {json}`` line with
what the stage says about itself (leading, nodes it is remediating) and one ``STEP {json}`` line
per new entry of the stage's timeline (became leader, node failed, cordoned, evicted, fenced).
The exact API writes, which the kill points are made of, are observed by the test on the server.
"""

from __future__ import annotations

import asyncio
import json
import sys

import stress_k8s  # noqa: F401 - puts the repository root on sys.path (no pytest here)
from kubernetes_asyncio import client

from agent.peers.stage import FailoverStage
from agent.runtime.logging import configure_logging
from agent.settings import Settings

RETRY = 0.1  # election retry and probe period
LEASE = 0.6  # leader Lease duration: what a new leader waits out after a SIGKILL


def failover_settings(node: str, fencing_time: float) -> Settings:
    """The Fleet's failover settings (nodemedic_sim.demo.fleet), shortened. ``probers=0``: the
    leader's own probe decides; peers would be other (dead) children that never publish their
    results."""
    return Settings(
        node_name=node,
        web_listen_address="127.0.0.1:0",  # port 0: this agent advertises no probe URL
        log_level="warning",
        safety_max_cordoned="2",
        failover_enabled=True,
        failover_node_grace=30.0,  # the victim's node Lease is an hour old; the peers' are fresh
        failover_fencing_time=fencing_time,
        failover_healthy_delay=60.0,
        failover_lease_duration=LEASE,
        failover_retry_period=RETRY,
        failover_probe_timeout=0.3,
        failover_probers=0,
        failover_max_concurrent=1,
    )


async def main(url: str, node: str, fencing_time: float) -> None:
    configure_logging("warning", "json")  # to stderr: stdout carries only TICK/STEP lines
    cfg = client.Configuration(host=url)
    cfg.api_key = {"authorization": "nodemedic-test"}
    cfg.api_key_prefix = {"authorization": "Bearer"}
    api = client.ApiClient(cfg)
    api.user_agent = f"failover-child-{node}"
    stage = FailoverStage(failover_settings(node, fencing_time), api)
    await stage.start()
    printed = 0
    while True:
        status = stage.status()["failover"]
        timeline = list(stage.timeline)
        for note in timeline[printed:]:
            print("STEP " + json.dumps(note), flush=True)
        printed = len(timeline)
        print("TICK " + json.dumps({"leader": status["leader"],
                                    "remediating": status["remediating"]}), flush=True)
        await asyncio.sleep(RETRY)


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2], float(sys.argv[3])))
