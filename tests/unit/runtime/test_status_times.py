"""/status shows every time in one format, RFC 3339 UTC (issue 16 item 7): before, the last tick
was ``+00:00`` isoformat, rule and remediation times Unix floats and problems ``Z`` strings."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from aiohttp import ClientSession

from agent.runtime.daemon import Agent
from agent.runtime.statusview import TIME_KEYS, with_rfc3339_times
from agent.settings import Settings

RFC3339 = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$")
OFF = {"cgroup": False, "kubelet": False, "host": False, "lbskew": False, "node": False,
       "problems": False}
ROOT = Path(__file__).resolve().parents[3]


def times(doc: Any, key: str = "") -> list[tuple[str, Any]]:
    """Every (key, value) in ``doc`` whose key names a time."""
    if isinstance(doc, dict):
        return [t for k, v in doc.items() for t in times(v, k)]
    if isinstance(doc, list):
        return [t for v in doc for t in times(v, key)]
    return [(key, doc)] if key in TIME_KEYS and doc is not None else []


def test_times_become_rfc3339_and_the_components_data_is_left_alone() -> None:
    timeline = [{"at": 1764757426.25, "what": "suspect"}]
    doc = {"last_tick": {"at": 1764757426.9, "age_seconds": 1.5}, "timeline": timeline,
           "held": [{"since": 1764757000, "attempts": 3}], "problems": {"since": "x"}}
    out = with_rfc3339_times(doc)
    assert out["last_tick"] == {"at": "2025-12-03T10:23:46Z", "age_seconds": 1.5}
    assert out["timeline"][0]["at"] == "2025-12-03T10:23:46Z"
    assert out["held"] == [{"since": "2025-12-03T10:16:40Z", "attempts": 3}]
    assert timeline[0]["at"] == 1764757426.25  # the stage's own timeline keeps its numbers


async def test_status_uses_one_time_format(tmp_path: Path) -> None:
    """A real agent's /status: the tick time and the shipped rules' no-data times are RFC 3339."""
    settings = Settings(web_listen_address="127.0.0.1:0", rules_dir=ROOT / "rules",
                        collectors=OFF, collect_interval=3600, state_dir=tmp_path)
    agent = Agent(settings)
    await agent.start()
    try:
        await agent.tick_once()
        async with ClientSession() as s, s.get(f"http://127.0.0.1:{agent.port}/status") as r:
            body = await r.json()
    finally:
        await agent.stop()
    found = times(body)
    assert ("at", body["last_tick"]["at"]) in found
    assert any(k == "since" for k, _ in found)  # the rules frozen without data
    for key, value in found:
        assert isinstance(value, str) and RFC3339.match(value), (key, value)
