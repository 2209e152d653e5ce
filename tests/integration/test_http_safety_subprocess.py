"""`nodemedic run` and `make run` as real processes, seen as an operator and a hostile client
see them: every log line is one JSON object even when aiohttp reports a malformed request, and
`make run` starts in dry-run on loopback."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from test_run_subprocess import free_port

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
