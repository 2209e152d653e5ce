"""A throw-away agent process for the SIGKILL tests: a RemediationStage whose rule wants the node
drained, ticking as fast as it can against the in-memory API server at argv[1].

Run by tests/stress/test_faults_remediation.py as ``python stress_drain_child.py URL CLOCK``;
the test kills it with SIGKILL at chosen points. The clock starts at CLOCK (Unix seconds) and
advances 60 s per tick so drain back-offs expire; one ``TICK {json}`` line per finished tick
goes to stdout.
"""

from __future__ import annotations

import asyncio
import json
import sys
from typing import Any

from kubernetes_asyncio import client
from stress_k8s import Clock, ScriptedEngine, request, settings, snapshot

from agent.runtime.remediation import RemediationStage
from agent.structs.remediation import ActionRequest
from agent.structs.snapshot import Snapshot

RULE = "node-broken"


class WantsDrain(ScriptedEngine):
    """The rule fires on every tick: it keeps asking for the drain (the ledger and the gate
    decide whether that starts one, continues one, or is a cooldown repeat)."""

    def evaluate(self, snapshot: Snapshot, now: float) -> list[ActionRequest]:
        # The longest drain a rule may ask for (the model's bound): far beyond this test's clock.
        return [request("drain", {"timeout": "4h", "grace_period_cap": "1h"}, rule=RULE,
                        cooldown_seconds=86400)]


async def main(url: str, start: float) -> None:
    cfg = client.Configuration(host=url)
    cfg.api_key = {"authorization": "nodemedic-test"}
    cfg.api_key_prefix = {"authorization": "Bearer"}
    api = client.ApiClient(cfg)
    api.user_agent = "stress-drain-child"
    clock = Clock(start)
    stage = RemediationStage(settings(), api, WantsDrain(), clock=clock)
    await stage.start()
    tick = 0
    while True:
        await stage.on_snapshot(snapshot())
        tick += 1
        recent: list[dict[str, Any]] = stage.status()["remediation"]["recent_decisions"]
        line = {"tick": tick, "clock": clock.t, "pending": len(stage.ledger.pending),
                "last": {k: recent[-1][k] for k in ("decision", "reason", "outcome")}
                if recent else None}
        print("TICK " + json.dumps(line), flush=True)  # the stage's logs share stdout
        clock.t += 60
        await asyncio.sleep(0.02)


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], float(sys.argv[2])))
