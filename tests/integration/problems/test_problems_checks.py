"""Custom plugin checks through the detector: NPD's custom-plugin-monitor semantics on the API."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

from nodemedic_sim.apiserver import ApiServer
from tests.integration.problems.conftest import Factory, conditions, events
from tests.polling import eventually


async def test_check_sets_and_clears_its_condition(
        apiserver: ApiServer, detector: Factory, node: str, tmp_path: Path) -> None:
    """Exit 1 sets the condition True with the plugin's output as message; the next exit 0
    clears it back to the healthy reason; exit 2 makes it Unknown. A plugin outside the
    allowlisted directory never runs."""
    plugins = tmp_path / "plugins"
    plugins.mkdir()
    flag = tmp_path / "state"
    ran_outside = tmp_path / "outside-ran"
    check = plugins / "check_ntp.sh"
    check.write_text(f'#!/bin/sh\ns=$(cat {flag} 2>/dev/null || echo 0)\n'
                     f'echo "ntp state $s"\nexit $s\n')
    check.chmod(0o755)
    outside = tmp_path / "outside.sh"
    outside.write_text(f"#!/bin/sh\ntouch {ran_outside}\nexit 1\n")
    outside.chmod(0o755)
    defs = tmp_path / "defs"
    defs.mkdir()
    (defs / "ntp.json").write_text(
        '{"plugin": "custom", "pluginConfig": {"invoke_interval": "1s", "timeout": "5s", '
        '"max_output_length": 80, "concurrency": 3}, "source": "ntp-custom-plugin-monitor", '
        '"conditions": [{"type": "NTPProblem", "reason": "NTPIsUp", '
        '"message": "ntp service is up"}], "rules": ['
        '{"type": "permanent", "condition": "NTPProblem", "reason": "NTPIsDown", '
        '"path": "./check_ntp.sh", "timeout": "3s"},'
        f'{{"type": "temporary", "reason": "Outside", "path": "{outside}"}}]}}')
    flag.write_text("1")
    await detector(defs, plugins)
    down = await eventually(lambda: (c := conditions(apiserver, node).get("NTPProblem"))
                       and c["status"] == "True" and c)
    assert (down["reason"], down["message"]) == ("NTPIsDown", "ntp state 1")
    assert (await eventually(lambda: events(apiserver, "Node", node).get("NTPIsDown")))
    flag.write_text("0")
    up = await eventually(lambda: (c := conditions(apiserver, node)["NTPProblem"])
                     ["status"] == "False" and c)
    assert (up["reason"], up["message"]) == ("NTPIsUp", "ntp service is up")
    flag.write_text("2")
    unknown = await eventually(lambda: (c := conditions(apiserver, node)["NTPProblem"])
                          ["status"] == "Unknown" and c)
    assert unknown["message"] == "ntp state 2"
    assert not ran_outside.exists()


async def test_heartbeat_refreshes_without_touching_transition(
        apiserver: ApiServer, detector: Factory, node: str, tmp_path: Path) -> None:
    """Unchanged conditions are re-published at the heartbeat interval, not every tick:
    lastHeartbeatTime moves, lastTransitionTime stays."""
    defs = tmp_path / "defs"
    defs.mkdir()
    (defs / "f.yaml").write_text(
        f"monitors:\n  - name: f\n    source: {{plugin: filelog, path: {tmp_path / 'x.log'}}}\n"
        "    conditions: [{type: SomeProblem, reason: NoProblem}]\n"
        "    rules: [{type: permanent, condition: SomeProblem, reason: Bad, pattern: bad}]\n")
    start = time.monotonic()
    d = await detector(defs, heartbeat=1.0)
    first = await eventually(lambda: conditions(apiserver, node).get("SomeProblem"))
    await eventually(lambda: conditions(apiserver, node)["SomeProblem"]["lastHeartbeatTime"]
                != first["lastHeartbeatTime"])
    later = conditions(apiserver, node)["SomeProblem"]
    assert later["lastTransitionTime"] == first["lastTransitionTime"]
    assert later["status"] == "False"
    await asyncio.sleep(1.0)
    elapsed = time.monotonic() - start  # ~10 ticks per second; at most one publish per second
    assert 2 <= d.counters.publishes <= elapsed + 1
