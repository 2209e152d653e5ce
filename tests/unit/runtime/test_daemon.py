"""The in-process Agent (as the demo embeds it): bound port, ticks, health, status."""

from __future__ import annotations

from pathlib import Path

from aiohttp import ClientSession

from agent.runtime.daemon import Agent
from agent.settings import Settings

OFF = {"cgroup": False, "kubelet": False, "host": False, "lbskew": False, "node": False}


def settings(tmp_path: Path, **kw: object) -> Settings:
    return Settings(web_listen_address="127.0.0.1:0", rules_dir=tmp_path, collectors=OFF,
                    collect_interval=3600, **kw)  # type: ignore[arg-type]


async def test_port_zero_is_resolved_for_components(tmp_path: Path) -> None:
    """With :0 the agent binds a free port and hands components the real address."""
    agent = Agent(settings(tmp_path))
    await agent.start()
    try:
        assert agent.port and agent.port > 0
        assert agent.settings.web_listen_address == f"127.0.0.1:{agent.port}"
    finally:
        await agent.stop()


async def test_ready_after_first_tick_and_status_lists_components(tmp_path: Path) -> None:
    """/readyz flips to 200 after the first tick; /status names the node and tick."""
    rules = Path(__file__).resolve().parents[3] / "rules"
    agent = Agent(settings(tmp_path, node_name="n-1").model_copy(update={"rules_dir": rules}))
    await agent.start()
    try:
        async with ClientSession() as s:
            base = f"http://127.0.0.1:{agent.port}"
            await agent.tick_once()
            async with s.get(base + "/readyz") as r:
                assert r.status == 200
            async with s.get(base + "/status") as r:
                body = await r.json()
        assert body["node"] == "n-1"
        assert "last_tick" in body
        # The remediation stage reports its gate, and the rules engine each shipped rule —
        # frozen as "no data" here because every collector is off.
        assert body["remediation"]["gate"]["api"] == "none"
        states = {r["rule"]: r["state"] for r in body["rules"]}
        assert states and set(states.values()) == {"no data"}
    finally:
        await agent.stop()


async def test_two_agents_in_one_process_do_not_share_metrics(tmp_path: Path) -> None:
    """Each agent has its own registry: the demo runs several in one process."""
    a, b = Agent(settings(tmp_path)), Agent(settings(tmp_path, dry_run=True))
    await a.start()
    await b.start()
    try:
        await a.tick_once()
        await b.tick_once()
        ea, eb = await a.exposition(), await b.exposition()
        assert ea is not None and eb is not None
        assert b"nodemedic_dry_run 0.0" in ea.text
        assert b"nodemedic_dry_run 1.0" in eb.text
    finally:
        await a.stop()
        await b.stop()
