"""A collector whose every source fails is not reported ok (issue 16 item 7): before, a kubelet
with no endpoint answering showed ``"ok": true`` in /status and collector_success 1."""

from __future__ import annotations

import socket
from pathlib import Path

from aiohttp import ClientSession

from agent.runtime.daemon import Agent
from agent.settings import Settings

ONLY_KUBELET = {"cgroup": False, "kubelet": True, "host": False, "lbskew": False, "node": False,
                "problems": False}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def test_kubelet_with_no_endpoint_answering_is_degraded(tmp_path: Path) -> None:
    settings = Settings(web_listen_address="127.0.0.1:0", rules_dir=tmp_path,
                        collectors=ONLY_KUBELET, collect_interval=3600, state_dir=tmp_path,
                        kubelet_url=f"http://127.0.0.1:{free_port()}")
    agent = Agent(settings)
    await agent.start()
    try:
        await agent.tick_once()
        async with ClientSession() as s:
            base = f"http://127.0.0.1:{agent.port}"
            async with s.get(base + "/status") as r:
                kubelet = (await r.json())["collectors"]["kubelet"]
            async with s.get(base + "/metrics") as r:
                metrics = await r.text()
    finally:
        await agent.stop()
    assert kubelet["ok"] is False and kubelet["degraded"] is True
    assert kubelet["error"].startswith("every kubelet endpoint failed: healthz: ")
    assert 'nodemedic_collector_degraded{collector="kubelet"} 1.0' in metrics
    # The observation itself stays: rules on kubelet_up == 0 must keep firing.
    assert "nodemedic_kubelet_up 0" in metrics
