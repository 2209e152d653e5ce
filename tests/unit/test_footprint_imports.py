"""What a running agent loads: only the parts of its libraries it uses (issue 17, footprint).

Each check runs in a fresh interpreter, because this test session may already have imported
everything. The RSS these imports cost is measured by bench/footprint.py, not here.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def run_python(code: str) -> dict[str, object]:
    """Run ``code`` in a fresh interpreter at the repository root; it prints one JSON object."""
    res = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        cwd=REPO, capture_output=True, text=True, timeout=120,
    )
    assert res.returncode == 0, res.stderr[-3000:]
    out: dict[str, object] = json.loads(res.stdout.splitlines()[-1])
    return out


def test_the_daemon_does_not_load_the_kubernetes_models() -> None:
    """Importing the daemon (which builds the API client) loads no kubernetes_asyncio model."""
    out = run_python("""
        import json, sys
        import agent.runtime.daemon
        import agent.kube.client, agent.kube.informer, agent.kube.leases, agent.kube.nodes
        mods = [m for m in sys.modules if m.startswith("kubernetes_asyncio")]
        print(json.dumps({
            "models": [m for m in mods if m.startswith("kubernetes_asyncio.client.models.")],
            "apis": sorted(m for m in mods if m.startswith("kubernetes_asyncio.client.api.")),
        }))
    """)
    assert out["models"] == []
    apis = out["apis"]
    assert isinstance(apis, list) and len(apis) < 10, apis


def test_a_typed_call_still_builds_its_model_on_demand() -> None:
    """A call without _preload_content=False gets its model, loaded by name when needed."""
    out = run_python("""
        import asyncio, json, sys
        from agent.kube.client import ApiClient
        from nodemedic_sim.apiserver import ApiServer
        from kubernetes_asyncio import client

        async def main():
            server = ApiServer()
            await server.start()
            try:
                server.create({"apiVersion": "v1", "kind": "Node",
                               "metadata": {"name": "n1", "labels": {"a": "b"}}})
                before = "kubernetes_asyncio.client.models.v1_node" in sys.modules
                async with ApiClient(client.Configuration(host=server.url)) as api:
                    node = await client.CoreV1Api(api).read_node("n1")
                return {"before": before, "type": type(node).__name__,
                        "labels": node.metadata.labels,
                        "meta": type(client.V1ObjectMeta()).__name__}
            finally:
                await server.stop()

        print(json.dumps(asyncio.run(main())))
    """)
    assert out == {"before": False, "type": "V1Node", "labels": {"a": "b"},
                   "meta": "V1ObjectMeta"}


def test_nodemedic_run_does_not_import_the_other_subcommands() -> None:
    """`nodemedic run` leaves the in-memory API server, jsonpatch and the demo unloaded."""
    out = run_python("""
        import json, sys
        from unittest import mock
        import agent.cli
        with mock.patch.object(agent.cli, "_cmd_run", lambda args: 0) as run:
            agent.cli.main(["run", "--node-name", "n1"])
        loaded = [m for m in sys.modules if m.split(".")[0] in ("nodemedic_sim", "jsonpatch")]
        print(json.dumps({"loaded": loaded}))
    """)
    assert out == {"loaded": []}


def test_the_daemon_loads_nothing_of_the_simulation() -> None:
    """Importing the daemon loads nothing of nodemedic_sim (the API server, demo, replay, fakes):
    issue 16's check, seen by `python -X importtime` (every module the import loads, cached or
    not); .importlinter's sim-not-in-agent contract forbids the direct imports."""
    res = subprocess.run([sys.executable, "-X", "importtime", "-c", "import agent.runtime.daemon"],
                         cwd=REPO, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr[-3000:]
    loaded = [line.rsplit("|", 1)[-1].strip() for line in res.stderr.splitlines()
              if line.startswith("import time:")]
    assert "agent.runtime.daemon" in loaded  # the check sees what was imported
    assert [m for m in loaded if m.lstrip().split(".")[0] in ("nodemedic_sim", "jsonpatch")] == []


def test_the_other_subcommands_are_still_offered() -> None:
    """`nodemedic --help` still lists every subcommand."""
    res = subprocess.run([sys.executable, "-m", "agent", "--help"], cwd=REPO,
                         capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stderr
    for command in ("run", "version", "check-rules", "apiserver", "demo", "replay"):
        assert command in res.stdout


def test_no_cluster_loads_no_kubeconfig_machinery() -> None:
    """Without --kubeconfig or the in-cluster environment there is no API client, and the
    kubeconfig loader (kubernetes_asyncio.config, urllib3 through it) is never imported."""
    out = run_python("""
        import asyncio, json, os, sys
        for k in ("KUBERNETES_SERVICE_HOST", "KUBERNETES_SERVICE_PORT"):
            os.environ.pop(k, None)
        from agent.kube.client import create_api_client
        from agent.settings import Settings
        api = asyncio.run(create_api_client(Settings()))
        print(json.dumps({"api": api is None,
                          "config": "kubernetes_asyncio.config.kube_config" in sys.modules}))
    """)
    assert out == {"api": True, "config": False}


def test_core_v1_api_compiles_only_the_methods_called() -> None:
    """CoreV1Api (2.8 MB of generated source, ~400 methods) is served with its methods compiled
    on first use: its module is never imported, and every method of the real class exists with
    the same signature and documentation (the watch reads the documentation)."""
    out = run_python("""
        import inspect, json, sys
        import agent.kube
        from kubernetes_asyncio import client
        lazy = client.CoreV1Api(object())
        lazy.list_node
        loaded = "kubernetes_asyncio.client.api.core_v1_api" in sys.modules
        compiled = sorted(k for k in vars(type(lazy)) if not k.startswith("__"))
        import importlib
        real_cls = importlib.import_module("kubernetes_asyncio.client.api.core_v1_api").CoreV1Api
        names = [n for n, _ in inspect.getmembers(real_cls, inspect.isfunction)]
        real = real_cls(object())
        differ = [n for n in names
                  if inspect.signature(getattr(real, n)) != inspect.signature(getattr(lazy, n))
                  or inspect.getdoc(getattr(real, n)) != inspect.getdoc(getattr(lazy, n))]
        print(json.dumps({"loaded": loaded, "compiled": compiled, "methods": len(names),
                          "differ": differ}))
    """)
    assert out["loaded"] is False
    assert out["compiled"] == ["list_node"]
    assert isinstance(out["methods"], int) and out["methods"] > 300
    assert out["differ"] == []
