"""`nodemedic run` as a real process: serves metrics promtool accepts, obeys signals, reloads.

The agent runs against fixture roots with no cluster and a kubelet URL nobody listens on: the
situation of `make run` on a laptop.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
FIXTURES = REPO / "tests" / "fixtures"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Running:
    proc: subprocess.Popen[str]
    port: int
    config: Path

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def get(self, path: str) -> tuple[int, str]:
        try:
            with urllib.request.urlopen(self.url(path), timeout=5) as r:
                return r.status, r.read().decode()
        except urllib.error.HTTPError as e:
            return e.code, e.read().decode()


def wait_ready(run: Running, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if run.proc.poll() is not None:
            out = run.proc.stderr.read() if run.proc.stderr else ""
            raise AssertionError(f"agent exited early ({run.proc.returncode}): {out}")
        try:
            if run.get("/readyz")[0] == 200:
                return
        except OSError:
            pass
        time.sleep(0.1)
    raise AssertionError("agent not ready in time")


def cgroup_root() -> Path:
    """The richest fixture cgroup tree available (the cgroup collector's tests ship them)."""
    for cand in sorted((FIXTURES / "cgroup").glob("*")) if (FIXTURES / "cgroup").exists() else []:
        if cand.is_dir() and (any(cand.rglob("memory.max")) or any(cand.rglob("memory.stat"))):
            return cand
    return FIXTURES


@pytest.fixture
def agent(tmp_path: Path) -> Iterator[Running]:
    port = free_port()
    rules = tmp_path / "rules"
    rules.mkdir()
    config = tmp_path / "config.yaml"
    config.write_text("collect.interval: 1s\n")
    env = dict(os.environ)
    env.pop("NOTIFY_SOCKET", None)
    env.update(NODEMEDIC_LOG_FORMAT="json", NODEMEDIC_NODE_NAME="test-node")
    notify = tmp_path / "notify.sock"
    env["NOTIFY_SOCKET"] = str(notify)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(notify))
    sock.settimeout(0.2)
    proc = subprocess.Popen(
        [sys.executable, "-m", "agent", "run",
         "--config", str(config),
         "--web.listen-address", f"127.0.0.1:{port}",
         "--path.cgroupfs", str(cgroup_root()),
         "--kubelet.url", f"http://127.0.0.1:{free_port()}",
         "--rules.dir", str(rules),
         # below the 1 s interval: a timeout at or above it is refused at start
         "--collector.timeout", "0.9s"],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=tmp_path,
    )
    run = Running(proc, port, config)
    run.notify = sock  # type: ignore[attr-defined]
    try:
        wait_ready(run)
        yield run
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(5)
        sock.close()


def notifications(run: Running) -> list[str]:
    out = []
    sock: socket.socket = run.notify  # type: ignore[attr-defined]
    while True:
        try:
            out.append(sock.recv(4096).decode())
        except (TimeoutError, BlockingIOError):
            return out


def test_serves_metrics_that_promtool_accepts(agent: Running, tmp_path: Path) -> None:
    """/metrics has the self-metrics and passes `promtool check metrics` with no output."""
    code, text = agent.get("/metrics")
    assert code == 200
    assert "nodemedic_build_info{" in text
    assert 'nodemedic_collector_success{collector="' in text
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("promtool not installed (Debian package prometheus; `make test` installs it)")
    res = subprocess.run([promtool, "check", "metrics"], input=text, capture_output=True,
                         text=True, timeout=30)
    assert res.returncode == 0, res.stdout + res.stderr
    assert res.stdout.strip() == "" and res.stderr.strip() == ""


def test_no_cluster_reports_gaps_and_keeps_serving(agent: Running) -> None:
    """Without kubelet or API the agent stays healthy, and /status says what is down."""
    time.sleep(1.2)
    assert agent.get("/healthz")[0] == 200
    status = json.loads(agent.get("/status")[1])
    assert status["node"] == "test-node"
    assert status["ready"] is True
    colls = status["collectors"]
    # The kubelet is observed down (each endpoint's error named); with no endpoint answering the
    # collector is not called ok, though kubelet_up 0 is exported for the rules ...
    assert colls["kubelet"]["ok"] is False and colls["kubelet"]["degraded"] is True
    assert colls["kubelet"]["error"].startswith("every kubelet endpoint failed")
    assert "cannot reach" in colls["kubelet"]["detail"]["endpoint_errors"]["healthz"]
    # ... and the node collector fails, saying why, rather than exporting nothing as "fine".
    assert colls["node"]["ok"] is False
    assert "kubeconfig" in colls["node"]["error"]


def test_sigterm_stops_cleanly_within_5s(agent: Running) -> None:
    """SIGTERM: exit code 0 within 5 s, STOPPING=1 sent, a 'stopped' log line."""
    notes = notifications(agent)
    assert any(n.startswith("READY=1") for n in notes)
    start = time.monotonic()
    agent.proc.send_signal(signal.SIGTERM)
    code = agent.proc.wait(10)
    assert time.monotonic() - start < 5.0
    assert code == 0
    assert "STOPPING=1" in notifications(agent)
    assert '"stopped"' in (agent.proc.stderr.read() if agent.proc.stderr else "")


def test_watchdog_pings_every_healthy_tick(agent: Running) -> None:
    """WATCHDOG=1 arrives once per tick (1 s interval here)."""
    notifications(agent)
    time.sleep(2.5)
    assert notifications(agent).count("WATCHDOG=1") >= 2


def test_sighup_with_invalid_config_keeps_last_good(agent: Running) -> None:
    """A broken config on SIGHUP is rejected, counted, and the agent keeps serving."""
    agent.config.write_text("collect.interval: banana\n")
    agent.proc.send_signal(signal.SIGHUP)
    deadline = time.monotonic() + 10
    text = ""
    while time.monotonic() < deadline:
        text = agent.get("/metrics")[1]
        if 'nodemedic_config_reloads_total{result="failure"} 1.0' in text:
            break
        time.sleep(0.2)
    assert 'nodemedic_config_reloads_total{result="failure"} 1.0' in text
    assert "nodemedic_config_last_reload_success 0.0" in text
    assert agent.proc.poll() is None
    assert agent.get("/healthz")[0] == 200
    # A valid config is then applied: dry-run switches on without a restart.
    agent.config.write_text("collect.interval: 1s\ndry-run: true\n")
    agent.proc.send_signal(signal.SIGHUP)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        text = agent.get("/metrics")[1]
        if "nodemedic_dry_run 1.0" in text:
            break
        time.sleep(0.2)
    assert "nodemedic_dry_run 1.0" in text
    assert "nodemedic_config_last_reload_success 1.0" in text


def test_invalid_flag_exits_2_with_one_line() -> None:
    """A bad flag value exits 2 with one line naming the flag and what is allowed."""
    res = subprocess.run([sys.executable, "-m", "agent", "run", "--collect.interval", "0s"],
                         capture_output=True, text=True, timeout=60)
    assert res.returncode == 2
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1
    assert "--collect.interval" in lines[0]
