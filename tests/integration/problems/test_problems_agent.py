"""The problems collector inside the real agent: a kernel line becomes a condition on the node,
a metric on /metrics, an entry in /status' active problems, and fires the shipped rule."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
from aiohttp import ClientSession

from agent.rules.engine import RuleEngine
from agent.rules.loader import load_rules_dir
from agent.runtime.daemon import Agent
from agent.settings import Settings
from nodemedic_sim.apiserver import ApiServer
from tests.integration.problems.conftest import conditions, kmsg_write
from tests.polling import eventually

pytestmark = [pytest.mark.root, pytest.mark.usefixtures("need_kmsg")]

REPO = Path(__file__).resolve().parents[3]
OFF = {"cgroup": False, "kubelet": False, "host": False, "lbskew": False, "node": False}


async def test_agent_exports_and_acts_on_a_kernel_problem(
        apiserver: ApiServer, node: str, marker: str, tmp_path: Path) -> None:
    """ReadonlyFilesystem from /dev/kmsg: condition on the Node, nodemedic_problem_active 1,
    listed in /status, and the shipped readonly-filesystem rule fires after its 5m."""
    defs = tmp_path / "problems"
    defs.mkdir()
    (defs / "k.yaml").write_text(f"""
monitors:
  - name: kernel
    source: {{plugin: kmsg, lookback: 1m}}
    conditions: [{{type: ReadonlyFilesystem, reason: FilesystemIsNotReadOnly}}]
    rules:
      - {{type: permanent, condition: ReadonlyFilesystem, reason: FilesystemIsReadOnly,
         pattern: 'EXT4-fs \\({marker}\\): Remounting filesystem read-only'}}
""")
    settings = Settings(web_listen_address="127.0.0.1:0", rules_dir=REPO / "rules",
                        collectors=OFF, collect_interval=3600, node_name=node,
                        problems_dir=defs, kubeconfig=apiserver.write_kubeconfig(tmp_path / "kc"))
    agent = Agent(settings)
    await agent.start()
    try:
        kmsg_write(f"EXT4-fs ({marker}): Remounting filesystem read-only")
        await eventually(lambda: conditions(apiserver, node).get("ReadonlyFilesystem", {})
                    .get("status") == "True")
        snap = await agent.tick_once()
        async with ClientSession() as s:
            base = f"http://127.0.0.1:{agent.port}"
            async with s.get(base + "/status") as r:
                status = await r.json()
            async with s.get(base + "/metrics") as r:
                metrics = await r.text()
        (active,) = status["collectors"]["problems"]["detail"]["active"]
        assert (active["condition"], active["reason"]) == \
            ("ReadonlyFilesystem", "FilesystemIsReadOnly")
        assert ('nodemedic_problem_active{condition="ReadonlyFilesystem",'
                'reason="FilesystemIsReadOnly"} 1.0') in metrics
        engine = RuleEngine(load_rules_dir(REPO / "rules"), node)
        engine.evaluate(snap, snap.monotonic)
        later = replace(snap, taken_at=snap.taken_at + 400, monotonic=snap.monotonic + 400)
        assert "readonly-filesystem" in {d.rule for d in engine.evaluate(later,
                                                                         later.monotonic)}
    finally:
        await agent.stop()
