"""A crash-looping `nodemedic run` with no API restarts the kubelet once per cooldown.

Real processes, each killed with SIGKILL after its first action; the only memory between them is
the local state under --state.dir. systemctl is a recording script bind-mounted over
/usr/bin/systemctl in a private mount namespace (root; `unshare` from util-linux), because the
restart-service action runs the real path. The same loop under real systemd is in tests/system.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest

RULE = """\
rules:
  - name: kubelet-restart-loop
    description: Restart the kubelet when its health endpoint fails.
    severity: critical
    when:
      metric: nodemedic_kubelet_up
      op: "=="
      value: 0
    cooldown: 1m
    actions:
      - type: restart-service
        unit: kubelet.service
"""


TICKS = 3  # the rule fires on the first tick of a fresh agent


def parse(line: str) -> dict[str, Any]:
    try:
        doc = json.loads(line)
    except ValueError:
        return {}
    return doc if isinstance(doc, dict) else {}


def decisions(stderr: str) -> list[dict[str, Any]]:
    return [d for d in map(parse, stderr.splitlines()) if d.get("event") == "remediation_decision"]


def last_tick(stderr: str) -> str | None:
    """nodemedic_last_tick_timestamp_seconds from /metrics, once the agent says where it is."""
    listen = next((d["listen"] for d in map(parse, stderr.splitlines())
                   if d.get("event") == "started"), None)
    if listen is None:
        return None
    try:
        with urllib.request.urlopen(f"http://{listen}/metrics", timeout=5) as r:
            text = r.read().decode()
    except OSError:
        return None
    for line in text.splitlines():
        if line.startswith("nodemedic_last_tick_timestamp_seconds "):
            return line.split()[1]
    return None


def run_once(tmp_path: Path, state: Path, systemctl: Path) -> list[dict[str, Any]]:
    """Start an agent in its own mount namespace, let it run TICKS ticks, SIGKILL it."""
    script = (
        f"mount --bind {systemctl} /usr/bin/systemctl && exec {sys.executable} -m agent run "
        f"--web.listen-address 127.0.0.1:0 --kubelet.url http://127.0.0.1:9 "
        f"--rules.dir {tmp_path / 'rules'} --state.dir {state} --collect.interval 1s "
        f"--collector.timeout 0.5s --node-name loop-node --log.format json"
    )
    env = {k: v for k, v in os.environ.items() if k not in ("NOTIFY_SOCKET", "KUBECONFIG")}
    env["KUBERNETES_SERVICE_HOST"] = ""
    err = tmp_path / "agent.err"
    with err.open("w") as errf:
        proc = subprocess.Popen(
            ["unshare", "--mount", "--propagation", "private", "sh", "-c", script],
            stdout=subprocess.DEVNULL, stderr=errf, text=True, env=env,
            cwd=Path(__file__).resolve().parents[2],
        )
    ticks: set[str] = set()
    deadline = time.monotonic() + 90
    try:
        while time.monotonic() < deadline and len(ticks) < TICKS and proc.poll() is None:
            time.sleep(0.2)
            tick = last_tick(err.read_text())
            if tick:
                ticks.add(tick)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
    out = err.read_text()
    assert len(ticks) >= TICKS, f"{len(ticks)} ticks in 90 s ({proc.returncode}): {out}"
    return decisions(err.read_text())


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root for a private mount namespace")
def test_three_restarts_within_the_cooldown_restart_the_kubelet_once(tmp_path: Path) -> None:
    """Three agents killed (SIGKILL) and restarted within a minute, no API: exactly one
    `systemctl restart kubelet.service`. The later agents resume the rule's state and the
    ledger from --state.dir: none of them restarts the kubelet again."""
    assert shutil.which("unshare"), "util-linux unshare is required (apt-get install util-linux)"
    (tmp_path / "rules").mkdir()
    (tmp_path / "rules" / "loop.yaml").write_text(RULE)
    log = tmp_path / "systemctl.argv"
    systemctl = tmp_path / "systemctl"
    systemctl.write_text(
        f"#!/bin/sh\nprintf '%s\\n' \"$*\" >> {log}\n"
    )
    systemctl.chmod(0o755)
    state = tmp_path / "state"
    runs = [[d["reason"] for d in run_once(tmp_path, state, systemctl)] for _ in range(3)]
    assert runs[0] == ["ok"]
    assert "ok" not in runs[1] + runs[2], runs
    assert log.read_text().splitlines() == ["restart kubelet.service"]
    assert json.loads((state / "state.json").read_text())["ledger"]["l"]
