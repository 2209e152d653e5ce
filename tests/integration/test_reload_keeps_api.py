"""A SIGHUP reload that rebuilds collectors keeps the API client the stages depend on."""

from __future__ import annotations

from pathlib import Path

from kubernetes_asyncio.client import CoreV1Api

from agent.runtime.daemon import Agent
from agent.settings import Settings
from nodemedic_sim.apiserver import ApiServer

OFF = {"cgroup": False, "kubelet": False, "host": False, "lbskew": False}


async def test_reload_rebuilding_collectors_keeps_a_working_api_client(
    apiserver: ApiServer, tmp_path: Path
) -> None:
    """After a reload that changes collector settings, the shared API client still works."""
    apiserver.create({"apiVersion": "v1", "kind": "Node", "metadata": {"name": "n1"}})
    kc = apiserver.write_kubeconfig(tmp_path / "kc")
    base = dict(web_listen_address="127.0.0.1:0", kubeconfig=kc, node_name="n1",
                rules_dir=tmp_path, collectors=OFF, collect_interval=3600)
    new = Settings(**base, collector_timeout=3.0)  # type: ignore[arg-type]
    agent = Agent(Settings(**base), reload_settings=lambda: new)  # type: ignore[arg-type]
    await agent.start()
    try:
        assert agent._ctx is not None
        api = agent._ctx.api
        assert api is not None
        await agent.reload()
        assert agent.settings.collector_timeout == 3.0
        assert agent._ctx.api is api
        nodes = await CoreV1Api(api).list_node()
        assert [n.metadata.name for n in nodes.items] == ["n1"]
    finally:
        await agent.stop()
