"""Problem sources other than the kernel: a real systemd journal (written by
systemd-journal-remote, read by the real journalctl --follow) and a rotating plain log file."""

from __future__ import annotations

import asyncio
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from nodemedic_sim.apiserver import ApiServer
from tests.integration.problems.conftest import Factory, conditions, events
from tests.polling import eventually

JOURNAL_REMOTE = Path("/lib/systemd/systemd-journal-remote")


class Journal:
    """A journal directory fed entries through systemd-journal-remote's export-format stdin."""

    def __init__(self, directory: Path) -> None:
        self.dir = directory
        self.proc = subprocess.Popen(
            [str(JOURNAL_REMOTE), f"--output={directory / 'remote.journal'}", "-"],
            stdin=subprocess.PIPE, stderr=subprocess.DEVNULL)

    def log(self, message: str, identifier: str = "systemd") -> None:
        usec = int(time.time() * 1e6)
        assert self.proc.stdin is not None
        self.proc.stdin.write(
            f"__REALTIME_TIMESTAMP={usec}\n__MONOTONIC_TIMESTAMP={usec}\n"
            f"_BOOT_ID=0123456789abcdef0123456789abcdef\nSYSLOG_IDENTIFIER={identifier}\n"
            f"MESSAGE={message}\n\n".encode())
        self.proc.stdin.flush()

    def close(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.close()
        try:
            self.proc.wait(5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


@pytest.fixture
def journal(tmp_path: Path) -> Iterator[Journal]:
    assert JOURNAL_REMOTE.exists(), "install systemd-journal-remote (make system-deps)"
    assert shutil.which("journalctl"), "journalctl is missing"
    d = tmp_path / "journal"
    d.mkdir()
    j = Journal(d)
    try:
        yield j
    finally:
        j.close()


async def test_frequent_kubelet_restarts_from_the_journal(
        apiserver: ApiServer, detector: Factory, node: str, journal: Journal,
        tmp_path: Path) -> None:
    """Three kubelet starts logged by systemd within the window set FrequentKubeletRestart; each
    start is also a KubeletStart Event (aggregated: one Event, count 3); other identifiers are
    filtered out by journalctl."""
    defs = tmp_path / "defs"
    defs.mkdir()
    (defs / "s.yaml").write_text(f"""
monitors:
  - name: systemd-monitor
    source: {{plugin: journald, path: {journal.dir}, identifiers: [systemd], lookback: 1m}}
    conditions:
      - {{type: FrequentKubeletRestart, reason: NoFrequentKubeletRestart, message: fine}}
    rules:
      - {{type: temporary, reason: KubeletStart,
         pattern: 'Started (Kubernetes kubelet|kubelet\\.service( - .+)?)\\.'}}
      - {{type: permanent, condition: FrequentKubeletRestart, reason: FrequentKubeletRestart,
         pattern: 'Started (Kubernetes kubelet|kubelet\\.service( - .+)?)\\.',
         min_count: 3, window: 1m, clear_after: 1m}}
""")
    journal.log("Started kubelet.service - kubelet: The Kubernetes Node Agent.", "other")
    d = await detector(defs)
    await eventually(lambda: d.stats and all(s.up for s in d.stats.values()))
    await asyncio.sleep(0.5)
    for _ in range(3):
        journal.log("Started kubelet.service - kubelet: The Kubernetes Node Agent.")
    cond = await eventually(lambda: (c := conditions(apiserver, node)["FrequentKubeletRestart"])
                       ["status"] == "True" and c)
    assert cond["message"].startswith("Started kubelet.service")
    ev = await eventually(lambda: (e := events(apiserver, "Node", node).get("KubeletStart"))
                     and e["count"] == 3 and e)
    assert ev["type"] == "Warning"
    (stats,) = d.stats.values()
    assert stats.read == 3  # the "other" identifier's line never reached us

    # journalctl dies: it is restarted after the last entry read, so nothing is matched twice.
    (child,) = [p for p in psutil.Process().children(recursive=True)
                if p.name() == "journalctl" and str(journal.dir) in " ".join(p.cmdline())]
    child.kill()
    await eventually(lambda: stats.restarts == 1 and stats.up, timeout=15)
    journal.log("Started kubelet.service - kubelet: The Kubernetes Node Agent.")
    await eventually(lambda: events(apiserver, "Node", node)["KubeletStart"]["count"] == 4)
    await asyncio.sleep(1.0)
    assert events(apiserver, "Node", node)["KubeletStart"]["count"] == 4
    assert stats.read == 4


async def test_rotating_file_log(
        apiserver: ApiServer, detector: Factory, node: str, marker: str,
        tmp_path: Path) -> None:
    """NPD's filelog plugin: the message regex extracts the kernel text; lines are followed
    across a rotation."""
    log = tmp_path / "kern.log"
    log.write_text("")
    defs = tmp_path / "defs"
    defs.mkdir()
    (defs / "f.json").write_text(
        '{"plugin": "filelog", "pluginConfig": {"timestamp": "^.{15}", '
        '"message": "kernel: \\\\[.*\\\\] (.*)", "timestampFormat": "Jan _2 15:04:05"}, '
        f'"logPath": "{log}", "lookback": "5m", "bufferSize": 10, "source": "kernel-monitor", '
        '"conditions": [], "rules": [{"type": "temporary", "reason": "IOError", '
        '"pattern": "Buffer I/O error .*"}]}')
    d = await detector(defs)
    await eventually(lambda: d.stats and all(s.up for s in d.stats.values()))
    line = f"Dec  2 10:00:00 host kernel: [ 12.345678] Buffer I/O error on dev {marker}\n"
    with log.open("a") as fh:
        fh.write(line)
    ev = await eventually(lambda: events(apiserver, "Node", node).get("IOError"))
    assert ev["message"] == f"Buffer I/O error on dev {marker}"
    log.rename(tmp_path / "kern.log.1")
    log.write_text(line.replace(marker, marker + "-rotated"))
    await eventually(lambda: events(apiserver, "Node", node)["IOError"]["count"] == 2)
    assert events(apiserver, "Node", node)["IOError"]["message"].endswith("-rotated")
