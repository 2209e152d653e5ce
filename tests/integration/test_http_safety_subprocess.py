"""`nodemedic run` and `make run` as real processes, seen as an operator and a hostile client
see them: every log line is one JSON object even when aiohttp reports a malformed request, and
`make run` starts in dry-run on loopback."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import psutil
import pytest
from test_run_subprocess import REPO, free_port

CRLF = b"\r\n"
HOSTILE = [
    b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 100_000 + b"\r\n\r\n",
    b"GET /healthz HTTP/1.1\r\nHost: x\r\n" + b"".join(b"X-%d: y\r\n" % i for i in range(300))
    + CRLF,
    b"GET /" + b"a" * 20_000 + b" HTTP/1.1\r\nHost: x\r\n\r\n",
    b"GARBAGE\r\n\r\n",
    b"GET /\x00 HTTP/1.1\r\nHost: x\r\n\r\n",
    b"POST /status HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nZZZ\r\n",
    b"GET / HTTP/9.9\r\nHost: x\r\n\r\n",
]


def send(port: int, data: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        try:
            s.sendall(data)
            return s.recv(4096)
        except OSError:
            return b""


def wait_http(port: int, proc: subprocess.Popen[str], timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, proc.communicate()
        try:
            if send(port, b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n").startswith(b"HTTP/1.1 200"):
                return
        except OSError:
            pass
        time.sleep(0.1)
    raise AssertionError("agent did not answer /healthz in time")


def test_every_log_line_is_json_after_hostile_requests(tmp_path: Path) -> None:
    """An oversize header and other malformed requests make aiohttp log errors with
    tracebacks: each must arrive as one JSON object (with the traceback inside), like every
    other line the agent writes to stdout and stderr."""
    port = free_port()
    (tmp_path / "rules").mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith("NODEMEDIC_")}
    env.pop("NOTIFY_SOCKET", None)
    env.update(NODEMEDIC_LOG_FORMAT="json", NODEMEDIC_LOG_LEVEL="debug",
               PYTHONDEVMODE="1")  # asyncio debug and warnings: more foreign log lines
    proc = subprocess.Popen(
        [sys.executable, "-m", "agent", "run", "--web.listen-address", f"127.0.0.1:{port}",
         "--rules.dir", str(tmp_path / "rules"), "--node-name", "json-node",
         "--kubelet.url", f"http://127.0.0.1:{free_port()}", "--collect.interval", "1s"],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=tmp_path,
    )
    try:
        wait_http(port, proc)
        answers = [send(port, data) for data in HOSTILE]
        assert all(a.startswith((b"HTTP/1.1 4", b"HTTP/1.0 4")) or a == b"" for a in answers), \
            [a[:40] for a in answers]
        time.sleep(0.5)
    finally:
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=10)
    lines = [(name, line) for name, text in (("stdout", out), ("stderr", err))
             for line in text.splitlines() if line.strip()]
    bad = []
    for name, line in lines:
        try:
            assert isinstance(json.loads(line), dict)
        except (ValueError, AssertionError):
            bad.append((name, line[:200]))
    assert not bad, bad
    events = [json.loads(line) for _, line in lines]
    # Not vacuous: aiohttp did report the malformed requests, as structured records.
    assert any(e.get("logger", "").startswith(("aiohttp", "nodemedic.http")) for e in events), \
        [e.get("event") for e in events]


FAST_RULE = """\
rules:
  - name: kubelet-down-fast
    description: restart the kubelet as soon as it is down (test rule)
    severity: critical
    when: {metric: nodemedic_kubelet_up, op: "==", value: 0}
    for: 1s
    cooldown: 1h
    actions:
      - type: restart-service
        unit: kubelet.service
"""
RECORDER = """#!/bin/sh
echo "$@" >> {calls}
echo "Failed to restart $2: Unit $2 not found." >&2
exit 5
"""


def listening(pid: int) -> set[tuple[str, int]]:
    """(address, port) of every TCP socket ``pid`` listens on, read from its own netns."""
    inodes = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:  # the starting agent opens and closes files meanwhile: a vanished fd is no socket
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except FileNotFoundError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    out = set()
    for table, width in (("tcp", 8), ("tcp6", 32)):
        for line in Path(f"/proc/{pid}/net/{table}").read_text().splitlines()[1:]:
            f = line.split()
            if f[3] != "0A" or f[9] not in inodes:  # 0A = LISTEN
                continue
            addr_hex, port_hex = f[1].split(":")
            raw = bytes.fromhex(addr_hex)
            words = b"".join(raw[i:i + 4][::-1] for i in range(0, len(raw), 4))
            family = socket.AF_INET if width == 8 else socket.AF_INET6
            out.add((socket.inet_ntop(family, words), int(port_hex, 16)))
    return out


def make_run(tmp_path: Path, *make_vars: str) -> tuple[list[dict[str, Any]], list[str],
                                                        set[tuple[str, int]], dict[str, Any]]:
    """Run the real `make run` (this venv, no reinstall) with a rule that restarts
    kubelet.service 1 s after start, inside new mount and network namespaces: /bin/systemctl
    and systemctl on PATH are a recorder, and the default port 9678 is free. Returns the
    agent's log lines, the systemctl calls, its listening sockets and its /status."""
    if os.geteuid() != 0 or shutil.which("unshare") is None or shutil.which("make") is None:
        pytest.fail("needs root, unshare(1) and make: the test runs `make run` in namespaces")
    rules = tmp_path / "rules"
    rules.mkdir()
    (rules / "fast.yaml").write_text(FAST_RULE)
    calls = tmp_path / "systemctl-calls"
    fake = tmp_path / "bin" / "systemctl"
    fake.parent.mkdir()
    fake.write_text(RECORDER.format(calls=calls))
    fake.chmod(0o755)
    venv = Path(sys.prefix)
    # Its own state dir: `make run` keeps ./.state, which would carry one test's ledger and
    # rule state into the next (a restart already done in dry-run would not be redone).
    args = " ".join(["--rules.dir", str(rules), "--collect.interval", "1s",
                     "--node-name", "make-run-node", "--state.dir", str(tmp_path / "state")])
    script = (f"mount --bind {fake} /bin/systemctl && ip link set lo up && exec make -s -C {REPO}"
              f" -o {venv}/.installed VENV={venv} run 'RUN_ARGS={args}' {' '.join(make_vars)}")
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("NODEMEDIC_") and k not in ("LISTEN", "DRY_RUN", "RUN_ARGS")}
    env["PATH"] = f"{fake.parent}:{env.get('PATH', '')}"
    proc = subprocess.Popen(["unshare", "--mount", "--net", "--propagation", "private",
                             "sh", "-c", script], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    sockets: set[tuple[str, int]] = set()
    status: dict[str, Any] = {}
    try:
        deadline = time.monotonic() + 30
        agent = None
        while time.monotonic() < deadline and proc.poll() is None:
            agent = None
            for k in psutil.Process(proc.pid).children(recursive=True):
                try:  # make's short-lived children come and go while we look
                    argv = k.cmdline()
                except psutil.NoSuchProcess:
                    continue
                if "run" in argv[1:] and any("nodemedic" in a for a in argv[:2]):
                    agent = k
                    break
            if agent is not None and listening(agent.pid):
                break
            time.sleep(0.2)
        assert agent is not None, proc.communicate(timeout=10)
        sockets = listening(agent.pid)
        # Until the rule's decision is recorded (its log line is written just before).
        while time.monotonic() < deadline + 30:
            got = subprocess.run(
                ["nsenter", f"--net=/proc/{agent.pid}/ns/net", sys.executable, "-c",
                 "import urllib.request as u;"
                 "print(u.urlopen('http://127.0.0.1:9678/status', timeout=5).read().decode())"],
                capture_output=True, text=True, timeout=20, check=True)
            status = json.loads(got.stdout)
            if any(d["action"] == "restart-service" and d["outcome"] != "retry" for d in
                   status.get("remediation", {}).get("recent_decisions", [])):
                break
            time.sleep(0.5)
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        _, err = proc.communicate(timeout=15)
    logs = [json.loads(line) for line in err.splitlines() if line.startswith("{")]
    assert logs, err
    return logs, (calls.read_text().splitlines() if calls.exists() else []), sockets, status


def _decisions(logs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [e for e in logs if e.get("event") == "remediation_decision"
            and e.get("action") == "restart-service"]


@pytest.mark.slow
def test_make_run_is_dry_run_on_loopback(tmp_path: Path) -> None:
    """Plain `make run` executes nothing even when a rule restarts kubelet.service at once,
    listens on 127.0.0.1:9678 only, and its first log line and /status say dry-run, and why."""
    logs, calls, sockets, status = make_run(tmp_path)
    assert calls == []  # neither /bin/systemctl nor systemctl on PATH ran
    decisions = _decisions(logs)
    assert decisions and all(d["decision"] == "dry_run" for d in decisions), decisions
    assert sockets == {("127.0.0.1", 9678)}
    first = logs[0]
    assert first["event"] == "starting" and first["mode"] == "dry-run", first
    assert "none is executed" in first["mode_reason"]
    assert status["mode"] == "dry-run" and status["mode_reason"] == first["mode_reason"]


@pytest.mark.slow
def test_make_run_opt_out_is_live_and_a_failed_action_logs_a_warning(tmp_path: Path) -> None:
    """`make run DRY_RUN=0 LISTEN=:9678` is live on every interface, says so, and when the
    restart fails (systemctl exits 5) the decision is logged at warning with systemctl's
    reason, not at info."""
    logs, calls, sockets, status = make_run(tmp_path, "DRY_RUN=0", "LISTEN=:9678")
    assert calls and calls[0] == "restart kubelet.service"
    assert sockets == {("0.0.0.0", 9678)}
    assert logs[0]["mode"] == "live" and status["mode"] == "live"
    failed = [d for d in _decisions(logs) if d["outcome"] == "failure"]
    assert failed, _decisions(logs)
    assert all(d["level"] in ("warning", "error") for d in failed), failed
    assert "exited 5" in failed[0]["message"] and "not found" in failed[0]["message"]
