"""``nodemedic apiserver`` standalone: seed file, kubeconfig output, loopback-only listening."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import sys
from pathlib import Path

import pytest

from nodemedic_sim.apiserver.command import _listen, load_seed

SEED = """\
apiVersion: v1
kind: Node
metadata: {name: n1, resourceVersion: "77", uid: old}
status: {conditions: [{type: Ready, status: "True"}]}
---
apiVersion: v1
kind: Widget
metadata: {name: w}
---
apiVersion: v1
kind: List
items:
- {apiVersion: v1, kind: Pod, metadata: {name: p, namespace: team},
   spec: {containers: [{name: c, image: i}]}}
"""


@pytest.mark.skipif(not shutil.which("kubectl"), reason="kubectl is not installed")
async def test_serves_seeded_objects_to_kubectl(tmp_path: Path) -> None:
    """It seeds objects (skipping unknown kinds with a message) and kubectl can read them."""
    seed, kc = tmp_path / "seed.yaml", tmp_path / "kubeconfig"
    seed.write_text(SEED)
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "nodemedic_sim.apiserver.command",
        "--listen",
        "127.0.0.1:0",
        "--kubeconfig-out",
        str(kc),
        "--seed",
        str(seed),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        assert proc.stdout is not None and proc.stderr is not None
        info = json.loads(await asyncio.wait_for(proc.stdout.readline(), timeout=30))
        assert info["seeded"] == 2 and info["skipped"] == 1
        assert "Widget" in (await asyncio.wait_for(proc.stderr.readline(), timeout=5)).decode()
        get = await asyncio.create_subprocess_exec(
            "kubectl",
            "--kubeconfig",
            str(kc),
            "get",
            "pods",
            "-n",
            "team",
            "-o",
            "name",
            env={**os.environ, "HOME": str(tmp_path)},
            stdout=asyncio.subprocess.PIPE,
        )
        out, _ = await asyncio.wait_for(get.communicate(), timeout=30)
        assert out.decode().strip() == "pod/p"
    finally:
        proc.terminate()
        assert await asyncio.wait_for(proc.wait(), timeout=10) == 0


def test_refuses_non_loopback() -> None:
    """The unauthenticated server will not listen on a non-loopback address."""
    with pytest.raises(ValueError, match="no authentication"):
        _listen("0.0.0.0:6443")
    assert _listen("127.0.0.1:6443") == ("127.0.0.1", 6443)


def test_unreadable_seed_is_a_clear_error(tmp_path: Path) -> None:
    """Broken YAML in the seed file is reported with the file name."""
    bad = tmp_path / "bad.yaml"
    bad.write_text("a: [\n")
    with pytest.raises(ValueError, match=r"bad\.yaml: invalid YAML"):
        load_seed(bad)
