"""The problems collector: off without definitions, refuses invalid ones with their location."""

from __future__ import annotations

from pathlib import Path

import pytest

from agent.collectors.base import CollectorContext
from agent.collectors.problems import ProblemsCollector, ProblemsConfigError
from agent.settings import settings_for_tests


async def test_missing_directory_means_detection_off(tmp_path: Path) -> None:
    """No --problems.dir: the collector succeeds and says no monitor is loaded."""
    c = ProblemsCollector(CollectorContext(settings_for_tests(problems_dir=tmp_path / "none")))
    await c.start()
    (fam,) = await c.collect()
    assert fam.name == "nodemedic_problem_monitors" and fam.get() == 0
    await c.close()


async def test_invalid_definitions_refuse_to_start_with_their_location(
        tmp_path: Path) -> None:
    """A bad file makes start() raise with every file:line problem (the agent refuses to start;
    a reload keeps the running collector); nothing is started."""
    (tmp_path / "bad.yaml").write_text("monitors:\n  - name: x\n    surprise: 1\n")
    c = ProblemsCollector(CollectorContext(settings_for_tests(problems_dir=tmp_path)))
    with pytest.raises(ProblemsConfigError, match=r"bad\.yaml:3:5: monitors\[0\]\.surprise"):
        await c.start()
    assert c.detector is None
    await c.close()


async def test_reload_is_all_or_nothing_for_problem_definitions(tmp_path: Path) -> None:
    """SIGHUP with a --problems.dir holding a bad file keeps the running definitions and reports
    the error; a valid directory replaces them."""
    from agent.runtime.daemon import Agent
    from agent.settings import Settings

    def defs(name: str, body: str) -> Path:
        d = tmp_path / name
        d.mkdir()
        (d / "m.yaml").write_text(body)
        return d

    good = ("monitors:\n  - name: {n}\n    source: {{plugin: filelog, path: /nonexistent}}\n"
            "    rules: [{{type: temporary, reason: R, pattern: x}}]\n")
    first, second = defs("one", good.format(n="first")), defs("two", good.format(n="second"))
    bad = defs("bad", "monitors:\n  - name: x\n    surprise: 1\n")
    rules = tmp_path / "rules"
    rules.mkdir()
    off = {"cgroup": False, "kubelet": False, "host": False, "lbskew": False, "node": False}
    base = {"web_listen_address": "127.0.0.1:0", "rules_dir": rules, "collectors": off,
            "collect_interval": 3600}
    holder = {"s": Settings(**base, problems_dir=first)}
    agent = Agent(holder["s"], reload_settings=lambda: holder["s"])
    await agent.start()

    def monitors() -> list[str]:
        assert agent._collection is not None
        (c,) = [c for c in agent._collection.collectors if c.name == "problems"]
        return list(c.status()["monitors"])

    try:
        assert monitors() == ["first"]
        holder["s"] = Settings(**base, problems_dir=bad)
        await agent.reload()
        assert "bad" in str(agent.status()["last_reload_error"])
        assert monitors() == ["first"]
        holder["s"] = Settings(**base, problems_dir=second)
        await agent.reload()
        assert agent.status()["last_reload_error"] is None
        assert monitors() == ["second"]
        # Same settings, edited file: a SIGHUP loads it (and refuses it while it is invalid).
        (second / "m.yaml").write_text("monitors:\n  - name: x\n    surprise: 1\n")
        await agent.reload()
        assert "surprise" in str(agent.status()["last_reload_error"])
        assert monitors() == ["second"]
        (second / "m.yaml").write_text(good.format(n="edited"))
        await agent.reload()
        assert agent.status()["last_reload_error"] is None
        assert monitors() == ["edited"]
    finally:
        await agent.stop()
