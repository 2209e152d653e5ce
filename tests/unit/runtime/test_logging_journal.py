"""Under journald each JSON log line carries its syslog priority prefix; elsewhere it does not."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

CHILD = (
    "import structlog\n"
    "from agent.runtime.logging import configure_logging\n"
    "configure_logging('info', 'json')\n"
    "log = structlog.get_logger('t')\n"
    "log.info('hello'); log.warning('careful'); log.error('broken')\n"
)


def run(tmp_path: Path, journal: bool) -> list[str]:
    err = tmp_path / "stderr"
    with err.open("w") as f:
        env = dict(os.environ)
        env.pop("JOURNAL_STREAM", None)
        if journal:  # what systemd sets: the device and inode of the stream it connected
            st = os.fstat(f.fileno())
            env["JOURNAL_STREAM"] = f"{st.st_dev}:{st.st_ino}"
        subprocess.run([sys.executable, "-c", CHILD], stderr=f, env=env, check=True, timeout=60)
    return err.read_text().splitlines()


def test_journal_stream_gets_priority_prefixes(tmp_path: Path) -> None:
    """info -> <6>, warning -> <4>, error -> <3>, so journald stores PRIORITY by level."""
    lines = run(tmp_path, journal=True)
    assert [line[:4] for line in lines] == ["<6>{", "<4>{", "<3>{"]


def test_other_stderr_stays_plain_json(tmp_path: Path) -> None:
    """A pipe or file that is not the journal gets plain JSON lines."""
    assert all(line.startswith("{") for line in run(tmp_path, journal=False))
