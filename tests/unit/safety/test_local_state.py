"""The safety ledger on local disk (agent.safety.localstate) and its merge with the API's state.

A restarted agent with no API keeps its cooldowns; a corrupt file never means "no cooldown";
when the API answers it is the source of truth for what it has seen (merge_unsynced).
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from types import MappingProxyType
from typing import Any

from helpers_safety import NODE, request, settings

from agent.runtime.remediation import STATE_ANNOTATION, RemediationStage
from agent.safety.ledger import Ledger, Pending, ledger_key, merge_unsynced
from agent.safety.localstate import MAX_FILE_BYTES, STATE_FILE, LocalState
from agent.structs.snapshot import Snapshot
from nodemedic_sim.apiserver import ApiServer
from tests.k8s_helpers import ScriptedEngine, node, recording_systemctl

RESTART = request(
    "restart-service", {"unit": "kubelet.service"}, rule="kubelet-down", cooldown_seconds=60.0
)


class Clock:
    def __init__(self) -> None:
        self.t = time.time()

    def __call__(self) -> float:
        return self.t


def snapshot() -> Snapshot:
    return Snapshot(
        taken_at=time.time(), monotonic=1.0, families=MappingProxyType({}),
        collectors=MappingProxyType({}), owners=MappingProxyType({}),
    )


def stage(
    state_dir: Path, systemctl: str, clock: Clock, base: float, api: Any = None
) -> tuple[RemediationStage, ScriptedEngine]:
    """One agent process: its own monotonic base, the shared wall clock and state dir."""
    engine = ScriptedEngine(state={})
    s = RemediationStage(
        settings(state_dir=state_dir), api, engine, clock=clock,
        monotonic=lambda: clock.t - base, systemctl=systemctl, local=LocalState(state_dir),
    )
    return s, engine


async def one_tick(s: RemediationStage, engine: ScriptedEngine) -> str:
    engine.queue = [RESTART]
    await s.on_snapshot(snapshot())
    return str(s.status()["remediation"]["recent_decisions"][-1]["reason"])


def restarts(log: Path) -> int:
    return len(log.read_text().splitlines()) if log.exists() else 0


async def test_restarted_agents_without_api_restart_once_per_cooldown(tmp_path: Path) -> None:
    """Three agents started one after another within the cooldown, no API: one restart; a fourth
    after the cooldown restarts again."""
    systemctl, log = recording_systemctl(tmp_path)
    clock = Clock()
    reasons = []
    for i in range(3):
        s, engine = stage(tmp_path / "state", systemctl, clock, base=1000.0 * i)
        await s.start()
        reasons.append(await one_tick(s, engine))
        del s  # killed: no close(), only what was written during the tick survives
        clock.t += 10
    assert reasons == ["ok", "cooldown", "cooldown"]
    assert restarts(log) == 1
    clock.t += 60
    s, engine = stage(tmp_path / "state", systemctl, clock, base=9000.0)
    await s.start()
    assert await one_tick(s, engine) == "ok"
    assert restarts(log) == 2


async def test_corrupt_state_without_api_assumes_cooldowns_started_at_its_last_write(
    tmp_path: Path,
) -> None:
    """A garbage state file is reported and kept aside; every cooldown is taken to have started
    at its mtime (the last write, right after our last action), so it holds until then + 60s."""
    systemctl, log = recording_systemctl(tmp_path)
    clock = Clock()
    state = tmp_path / "state"
    state.mkdir()
    (state / STATE_FILE).write_text('{"v":1,"synced":null,"ledger":{"v":1,"h":[')
    os.utime(state / STATE_FILE, (clock.t - 30, clock.t - 30))
    s, engine = stage(state, systemctl, clock, base=0.0)
    await s.start()
    assert await one_tick(s, engine) == "cooldown"
    assert restarts(log) == 0
    problems = s.status()["remediation"]["state_problems"]
    assert any("not JSON" in p for p in problems)
    assert (state / (STATE_FILE + ".corrupt")).exists()
    fams = {f.name: f for f in s.families()}
    assert fams["nodemedic_state_local_unknown"].samples == [((), 1.0)]
    clock.t += 31  # past mtime + cooldown: one action, recorded in a fresh file
    assert await one_tick(s, engine) == "ok"
    assert restarts(log) == 1
    again, engine = stage(state, systemctl, clock, base=500.0)
    await again.start()
    assert again.status()["remediation"]["state_problems"] == []
    assert await one_tick(again, engine) == "cooldown"


async def test_oversized_or_unreadable_state_is_not_read(tmp_path: Path) -> None:
    """A file past the size bound is corrupt; a path that cannot even be stat'ed is blind from
    now (so the agent does nothing inside the cooldown rather than guess)."""
    big = tmp_path / "big"
    big.mkdir()
    (big / STATE_FILE).write_bytes(b" " * (MAX_FILE_BYTES + 1))
    loaded = LocalState(big).load(now=5.0)
    assert loaded.ledger_json is None and loaded.problem and "bytes" in loaded.problem
    assert loaded.blind_since is not None and loaded.blind_since > 5.0  # the file's mtime
    blocked = tmp_path / "file"
    blocked.write_text("")
    loaded = LocalState(blocked / "sub").load(now=5.0)  # ENOTDIR
    assert loaded.problem and loaded.blind_since == 5.0


async def test_save_is_atomic_and_a_stale_temp_file_is_ignored(tmp_path: Path) -> None:
    """save() leaves exactly state.json (mode 0600) holding the ledger; a half-written temp
    file from a crash is never read and is replaced by the next save."""
    local = LocalState(tmp_path / "d")
    ledger = Ledger()
    ledger.record(RESTART, 100.0, True)
    local.save(ledger.to_json(100.0), synced_at=None)
    (tmp_path / "d" / (STATE_FILE + ".tmp")).write_text("{half")
    loaded = local.load(now=0.0)
    assert loaded.problem is None and loaded.ledger_json is not None
    back, _, problems = Ledger.from_json(loaded.ledger_json)
    assert problems == [] and back.last_run(RESTART) == (100.0, 1)
    local.save(ledger.to_json(100.0), synced_at=123.0)
    assert sorted(p.name for p in (tmp_path / "d").iterdir()) == [STATE_FILE]
    assert (tmp_path / "d" / STATE_FILE).stat().st_mode & 0o777 == 0o600
    assert local.load(now=0.0).synced_at == 123.0


def entries(ledger: Ledger) -> list[tuple[float, str]]:
    return [(t, r) for t, r, *_ in ledger.history]


def test_merge_adds_what_the_api_never_saw_and_the_newest_time_wins() -> None:
    """Local executions after the last synced write are added (deduplicated); per cooldown key
    the newest time wins, so a cooldown holds if either side says so."""
    api, local = Ledger(), Ledger()
    api.record(RESTART, 100.0, True)
    local.record(RESTART, 100.04, True)  # the same execution, rounded differently
    local.record(RESTART, 200.0, True)  # after the API's last write at 150
    merged = merge_unsynced(api, local, synced_at=150.0)
    assert entries(merged) == [(100.0, "kubelet-down"), (200.0, "kubelet-down")]
    assert merged.last_run(RESTART) == (200.0, 2)


def test_merge_lets_the_api_drop_what_it_has_seen() -> None:
    """An admin removed the state annotation: records the API had already accepted (at or
    before synced_at) are not brought back from local disk."""
    local = Ledger()
    local.record(RESTART, 100.0, True)
    merged = merge_unsynced(Ledger(), local, synced_at=150.0)
    assert merged.last_run(RESTART) is None and not merged.history
    # never synced: everything local is new to the API
    assert merge_unsynced(Ledger(), local, synced_at=None).last_run(RESTART) == (100.0, 1)


def test_merge_resumes_local_in_progress_actions_and_keeps_unknown_only_if_newer() -> None:
    """A drain only the local state knows is resumed; the API's own entry wins for a key both
    know; 'unknown since' survives only if the API's state is older than it."""
    drain = request("drain", rule="r")
    api, local = Ledger(), Ledger()
    local.pending[ledger_key(drain)] = Pending(drain, 300.0, 2)
    local.unknown_since = 250.0
    api.written_at = 200.0
    merged = merge_unsynced(api, local, synced_at=200.0)
    assert merged.pending[ledger_key(drain)].attempts == 2
    assert merged.unknown_since == 250.0
    fresh = Ledger(written_at=260.0)
    fresh.pending[ledger_key(drain)] = Pending(drain, 290.0, 5)
    merged = merge_unsynced(fresh, local, synced_at=200.0)
    assert merged.unknown_since is None
    assert merged.pending[ledger_key(drain)].attempts == 5


async def test_api_restore_merges_the_local_state_and_writes_it_back(
    apiserver: ApiServer, kube_api: Any, tmp_path: Path
) -> None:
    """A restart done while the API was absent is still in cooldown once the API answers (its
    annotation has no state yet), and the merged ledger is written to the annotation."""
    apiserver.create(node(NODE))
    systemctl, log = recording_systemctl(tmp_path)
    clock = Clock()
    first, engine = stage(tmp_path / "state", systemctl, clock, base=0.0)
    await first.start()
    assert await one_tick(first, engine) == "ok"
    clock.t += 10
    second, engine = stage(tmp_path / "state", systemctl, clock, base=700.0, api=kube_api)
    await second.start()
    assert await one_tick(second, engine) == "cooldown"
    assert restarts(log) == 1
    ann = apiserver.get("Node", "", NODE)["metadata"]["annotations"]  # type: ignore[index]
    doc = json.loads(ann[STATE_ANNOTATION])
    assert ledger_key(RESTART) in doc["l"]
    on_disk = json.loads((tmp_path / "state" / STATE_FILE).read_text())
    assert on_disk["synced"] is not None  # the next local write knows the API has it


def test_merge_resumes_held_steps_only_the_local_copy_knows() -> None:
    """A cordon held (API down) when the agent restarted: the local copy remembers it, so it is
    retried once the API answers; one the API already saw (and dropped) is not brought back."""
    from agent.safety.ledger import Held

    local = Ledger()
    new = request("cordon", {}, rule="kubelet-down")
    old = request("taint", {"key": "nodemedic.io/x", "effect": "NoSchedule"}, rule="other")
    local.held[ledger_key(new)] = Held(new, "missing_data", "API down", since=200.0)
    local.held[ledger_key(old)] = Held(old, "paused", "", since=100.0)
    merged = merge_unsynced(Ledger(), local, synced_at=150.0)
    assert list(merged.held) == [ledger_key(new)]
    assert merged.held[ledger_key(new)].reason == "missing_data"
