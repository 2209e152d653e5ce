"""``nodemedic replay`` against a real Prometheus holding a recorded incident (recording.py).

The incident (replayed with --replay.match job="nodemedic"), 4 nodes at a 10s step, rule
kubelet-down (for 1m, restart; after 2m cordon, undone after healthy_for 2m; cooldown 10m),
--safety.max-cordoned=1:
- node-a down 60-300s and 480-1200s: restart at 120, cordon at 240, resolved and uncordoned at
  420; the second restart is blocked by the cooldown at 540 and let through once it ends;
- node-b down 600-1500s: restart at 660, cordon at 780;
- node-c down 700-1500s, its kubelet collector failed 300-400s: a gap; its cordon at 880 is
  blocked by the cluster cap (node-b holds the one cordon allowed);
- node-d down 240-600s with a scrape outage 300-400s while the rule was pending: a gap, during
  which nothing fires or resolves; it fires once it saw the kubelet down for 1m of *observed*
  time (at 410s, not at 300s).
"""

from __future__ import annotations

import functools
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.integration.replay.conftest import Recorded
from tests.integration.replay.recording import STEP, STEPS

REPO = Path(__file__).resolve().parents[3]


def replay(rec: Recorded, *extra: str, rules_dir: Path | None = None, url: str | None = None,
           match: str = 'job="nodemedic"') -> subprocess.CompletedProcess[str]:
    end = rec.t0 + (STEPS - 1) * STEP
    return subprocess.run(
        [sys.executable, "-m", "agent", "replay", "--prometheus.url", url or rec.url,
         "--rules.dir", str(rules_dir or rec.rules_dir), "--start", f"{rec.t0:.0f}",
         "--end", f"{end:.0f}", "--step", "10s", "--replay.max-sample-age", "10s",
         "--safety.max-cordoned", "1", "--replay.match", match, *extra],
        cwd=REPO, capture_output=True, text=True, timeout=120, check=False)


@functools.cache
def timeline(rec: Recorded) -> list[dict[str, Any]]:
    """The JSON timeline of the incident (replayed once per session: every test reads it)."""
    done = replay(rec, "--output", "json")
    assert done.returncode == 0, done.stderr
    doc = json.loads(done.stdout)
    assert doc["nodes"] == ["node-a", "node-b", "node-c", "node-d"]
    items: list[dict[str, Any]] = doc["timeline"]
    return items


def at(rec: Recorded, seconds: float) -> str:
    from nodemedic_sim.replay.timeline import rfc3339

    return rfc3339(rec.t0 + seconds)


def events(items: list[dict[str, Any]], node: str) -> list[tuple[str, str, list[str], str]]:
    return [(i["time"], i["what"], i.get("actions", []), i.get("reason", ""))
            for i in items if i["node"] == node and i["what"] != "gap"]


def test_first_incident_fires_escalates_resolves_and_undoes_at_its_steps(
        recorded: Recorded) -> None:
    a = events(timeline(recorded), "node-a")
    assert a[:4] == [
        (at(recorded, 120), "fired", ["restart-service"], ""),
        (at(recorded, 240), "escalated", ["cordon"], ""),
        (at(recorded, 420), "resolved", [], ""),
        (at(recorded, 420), "undone", ["uncordon"], ""),
    ]


def test_cooldown_blocks_the_second_restart_until_it_ends(recorded: Recorded) -> None:
    a = events(timeline(recorded), "node-a")
    assert (at(recorded, 540), "blocked", ["restart-service"], "cooldown") in a
    later = [t for t, what, acts, _ in a if what == "fired" and t > at(recorded, 540)]
    # Let through on a re-check after the 10m cooldown of the restart at 120s ended (720s).
    assert later and at(recorded, 720) <= later[0] < at(recorded, 1200)


def test_cluster_cap_counts_replayed_cordons(recorded: Recorded) -> None:
    items = timeline(recorded)
    assert (at(recorded, 780), "escalated", ["cordon"], "") in events(items, "node-b")
    blocked = [i for i in items if i["node"] == "node-c" and i["what"] == "blocked"]
    assert blocked[0]["time"] == at(recorded, 880)
    assert blocked[0]["actions"] == ["cordon"] and blocked[0]["reason"] == "cluster_cap"
    assert "1 of 4 nodes are already unschedulable" in blocked[0]["detail"]


def test_missing_series_are_gaps_never_healthy(recorded: Recorded) -> None:
    items = timeline(recorded)
    gaps = [(i["node"], i["start"], i["end"], i["metrics"], i["rules"])
            for i in items if i["what"] == "gap"]
    assert gaps == [
        ("node-c", at(recorded, 300), at(recorded, 400), ["nodemedic_kubelet_up"],
         ["kubelet-down"]),
        ("node-d", at(recorded, 300), at(recorded, 400), ["nodemedic_kubelet_up"],
         ["kubelet-down"]),
    ]
    d = events(items, "node-d")
    # Pending since 240s, frozen 300-400s: 1m of observed down time is complete at 410s.
    assert d[0] == (at(recorded, 410), "fired", ["restart-service"], "")
    assert all(t >= at(recorded, 600) for t, what, _, _ in d if what == "resolved")


def test_text_is_a_readable_post_mortem(recorded: Recorded) -> None:
    done = replay(recorded)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0].startswith(f"nodemedic replay: {at(recorded, 0)} .. ")
    assert "4 node(s), 1 rule(s)" in lines[0]
    assert any(line.startswith(at(recorded, 540)) and "node-a" in line and "BLOCKED" in line
               and "restart-service: cooldown" in line for line in lines)
    assert any(line.startswith(at(recorded, 300)) and "node-d" in line and "GAP" in line
               and f"no data through {at(recorded, 400)}" in line for line in lines)
    assert lines[-1].startswith("summary: fired ")
    assert "blocked 4 (cluster_cap 2, cooldown 2)" in lines[-1]
    assert "remediation_decision" not in done.stdout + done.stderr  # no log noise


def test_dry_run_rules_still_go_through_the_gate(recorded: Recorded) -> None:
    done = replay(recorded, "--dry-run", "--output", "json")
    assert done.returncode == 0, done.stderr
    items = json.loads(done.stdout)["timeline"]
    first = next(i for i in items if i["node"] == "node-a" and i["what"] == "fired")
    assert first["time"] == at(recorded, 120) and first["decision"] == "dry_run"
    # Nothing ran, so no cooldown started and nothing was cordoned: no block at all.
    assert not [i for i in items if i["what"] == "blocked"]


def test_invalid_rules_fail_with_their_location(recorded: Recorded, tmp_path: Path) -> None:
    (tmp_path / "bad.yaml").write_text("rules:\n  - name: x\n    when: {metric: nope}\n")
    done = replay(recorded, rules_dir=tmp_path)
    assert done.returncode == 1
    assert f"{tmp_path / 'bad.yaml'}:3:" in done.stderr
    assert done.stdout == ""


def test_unreachable_prometheus_is_an_error(recorded: Recorded) -> None:
    from tests.loopthread import free_port

    done = replay(recorded, url=f"http://127.0.0.1:{free_port()}")
    assert done.returncode == 1
    assert "cannot query" in done.stderr



def test_a_label_that_does_not_name_nodes_is_refused(recorded: Recorded) -> None:
    done = replay(recorded, "--replay.node-label", "address")  # host:port, as unrelabelled
    assert done.returncode == 2
    assert "does not name Kubernetes nodes (e.g. '10.0.0.1:9678')" in done.stderr
    assert "--replay.node-label" in done.stderr


def test_a_second_job_scraping_the_same_node_is_reported_not_merged(recorded: Recorded) -> None:
    # node-b is also recorded by job="federate" (kubelet up throughout): without a matcher the
    # replay uses one of the two and says so; with job="nodemedic" it replays the agent's own.
    done = replay(recorded, "--output", "json", match="")
    assert done.returncode == 0, done.stderr
    assert "1 series of nodemedic_kubelet_up repeat another of the same node" in done.stderr
    assert "--replay.match" in done.stderr
    assert (at(recorded, 660), "fired", ["restart-service"], "") in events(
        timeline(recorded), "node-b")


async def test_long_windows_are_fetched_in_chunks_with_the_same_result(
        recorded: Recorded, monkeypatch: pytest.MonkeyPatch) -> None:
    from nodemedic_sim.replay import promql

    times = promql.steps(recorded.t0, recorded.t0 + (STEPS - 1) * STEP, STEP)

    async def fetch() -> promql.Recorded:
        async with promql.PrometheusSource(recorded.url) as prom:
            return await prom.fetch("nodemedic_kubelet_up", (), times, STEP, max_age=STEP,
                                    node_label="instance", match='job="nodemedic"')

    whole = await fetch()
    monkeypatch.setattr(promql, "MAX_POINTS", 7)  # 180 steps: 26 requests
    chunked = await fetch()
    assert chunked.by_node == whole.by_node
    assert len(whole.by_node["node-a"]) == STEPS
    assert 30 not in whole.by_node["node-d"] and 29 in whole.by_node["node-d"]  # the outage
