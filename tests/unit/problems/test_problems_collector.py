"""The problems collector: off without definitions, failed (not crashed) with invalid ones."""

from __future__ import annotations

from pathlib import Path

import pytest

from agent.collectors.base import CollectorContext
from agent.collectors.problems import ProblemsCollector
from agent.settings import settings_for_tests


async def test_missing_directory_means_detection_off(tmp_path: Path) -> None:
    """No --problems.dir: the collector succeeds and says no monitor is loaded."""
    c = ProblemsCollector(CollectorContext(settings_for_tests(problems_dir=tmp_path / "none")))
    await c.start()
    (fam,) = await c.collect()
    assert fam.name == "nodemedic_problem_monitors" and fam.get() == 0
    await c.close()


async def test_invalid_definitions_fail_the_collector_with_their_location(
        tmp_path: Path) -> None:
    """A bad file makes every collect() raise with file:line (the daemon keeps running and
    reports the collector failed); nothing is started."""
    (tmp_path / "bad.yaml").write_text("monitors:\n  - name: x\n    surprise: 1\n")
    c = ProblemsCollector(CollectorContext(settings_for_tests(problems_dir=tmp_path)))
    await c.start()
    with pytest.raises(RuntimeError, match=r"bad\.yaml:3:5: monitors\[0\]\.surprise"):
        await c.collect()
    assert c.detector is None and "bad.yaml" in c.status()["error"]
    await c.close()
