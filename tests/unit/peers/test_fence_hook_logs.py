"""The operator's fencing command, as on-call reads its logs: a command that cannot run or
hangs is a warning naming why; its answer (exit status) is info."""

from __future__ import annotations

from pathlib import Path

import pytest
from structlog.testing import capture_logs

import agent.peers.fencing as fencing
from agent.peers.fencing import run_hook


async def test_a_fence_command_that_cannot_run_is_a_warning(tmp_path: Path) -> None:
    with capture_logs() as logs:
        assert await run_hook([str(tmp_path / "missing")], "n1") is False
    assert [(e["log_level"], e["event"]) for e in logs] == [("warning", "fence_command_failed")]
    assert "cannot run" in logs[0]["error"] and logs[0]["node"] == "n1"


async def test_a_hung_fence_command_is_killed_and_a_warning(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(fencing, "HOOK_TIMEOUT", 0.2)
    with capture_logs() as logs:
        assert await run_hook(["sh", "-c", "exec sleep 30"], "n1") is False
    assert logs[0]["log_level"] == "warning" and "timed out" in logs[0]["error"]


async def test_the_fence_command_answer_is_info() -> None:
    with capture_logs() as logs:
        assert await run_hook(["false"], "n1") is False
        assert await run_hook(["true"], "n1") is True
    assert [(e["log_level"], e["fenced"]) for e in logs] == [("info", False), ("info", True)]
