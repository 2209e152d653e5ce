"""Cordon budget arithmetic and the action ledger (cooldowns, hourly caps, bounded state)."""

from __future__ import annotations

import json

import pytest
from helpers_safety import request
from hypothesis import given, settings
from hypothesis import strategies as st

from agent.safety.budget import cordon_allowed, cordon_limit
from agent.safety.ledger import HOUR, MAX_STATE_BYTES, Held, Ledger, Pending, ledger_key


@pytest.mark.parametrize(
    ("spec", "nodes", "limit"),
    [("3", 100, 3), ("10%", 100, 10), ("10%", 15, 1), ("10%", 3, 1), ("0", 10, 0), ("0%", 10, 0),
     ("50%", 7, 3)],
)
def test_cordon_limit(spec: str, nodes: int, limit: int) -> None:
    """N is absolute; N% rounds down but allows at least one node; 0 forbids cordons."""
    assert cordon_limit(spec, nodes) == limit


def test_cordon_allowed_counts_the_node_about_to_be_cordoned() -> None:
    """With a cap of 3 and 3 nodes already cordoned, a fourth cordon is refused."""
    assert cordon_allowed("3", 10, 2) == (True, 3)
    assert cordon_allowed("3", 10, 3) == (False, 3)


def test_ledger_counts_the_last_hour_only() -> None:
    """Hourly caps see executions of the last 3600 s, per rule and disruptive overall."""
    led = Ledger()
    led.record(request("cordon"), 1000.0, disruptive=True)
    led.record(request("event", rule="oom"), 1500.0, disruptive=False)
    led.record(request("restart-service", {"unit": "kubelet.service"}), 2000.0, disruptive=True)
    assert led.count_rule("kubelet-down", 2100.0) == 2
    assert led.count_disruptive(2100.0) == 2
    assert led.count_disruptive(4700.0) == 1
    assert led.count_rule("oom", 5200.0) == 0
    assert led.last_run(request("cordon")) == (1000.0, 1)


def test_state_round_trips_through_json() -> None:
    """History, cooldowns, in-progress actions and the engine's state survive a restart."""
    led = Ledger()
    cordon = request("cordon", observed={"nodemedic_kubelet_up": 0.0}, step=1)
    led.record(cordon, 1000.0, disruptive=True)
    drain = request("drain", {"timeout": 900.0, "grace_period_cap": 30.0}, step=2)
    led.pending[ledger_key(drain)] = Pending(drain, 1010.0, 3)
    text = led.to_json(1020.0, engine_state={"kubelet-down": {"step": 2}})
    back, engine, problems = Ledger.from_json(text)
    assert problems == []
    assert engine == {"kubelet-down": {"step": 2}}
    assert back.last_run(cordon) == (1000.0, 1)
    assert back.count_disruptive(1020.0) == 1
    restored = back.pending[ledger_key(drain)]
    assert restored.request == drain
    assert (restored.started, restored.attempts) == (1010.0, 3)


def test_held_steps_keep_their_metrics_and_typed_params_across_a_restart() -> None:
    """A held step's metrics (what the stage checks for fresh data) and its validated
    parameters survive the JSON; one written before requests recorded their metrics comes back
    with them unknown (None: the stage then waits for every collector), and one whose
    parameters the action's model refuses is skipped as a problem, never resumed."""
    led = Ledger()
    drain = request("drain", {"timeout": "10m", "grace_period_cap": "30s"},
                    metrics=("nodemedic_kubelet_up", "nodemedic_node_lease_age_seconds"))
    led.held[ledger_key(drain)] = Held(drain, "paused", "paused by node annotation", 1000.0)
    doc = json.loads(led.to_json(1020.0))
    back, _, problems = Ledger.from_json(json.dumps(doc))
    assert problems == []
    restored = back.held[ledger_key(drain)].request
    assert restored == drain
    assert restored.action.params.timeout == 600.0  # typed, not a mapping of strings

    del doc["q"][0]["req"]["metrics"]
    old, _, problems = Ledger.from_json(json.dumps(doc))
    assert problems == [] and old.held[ledger_key(drain)].request.metrics is None

    doc["q"][0]["req"]["params"] = {"timeout": 600.0}  # no grace_period_cap: no such drain
    bad, _, problems = Ledger.from_json(json.dumps(doc))
    assert bad.held == {}
    assert len(problems) == 1 and "grace_period_cap" in problems[0]


def test_state_is_bounded() -> None:
    """However much happened, the annotation stays under MAX_STATE_BYTES."""
    led = Ledger()
    for i in range(3000):
        led.record(request("event", rule=f"rule-{i % 400}", name=f"p{i}"), 1000.0 + i, False)
    text = led.to_json(4000.0, engine_state={"blob": "x" * 20000})
    assert len(text.encode()) <= MAX_STATE_BYTES
    assert json.loads(text)["v"] == 1


_ANY = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=10),
    lambda c: st.lists(c, max_size=4)
    | st.dictionaries(
        st.sampled_from(["kind", "node", "req", "started", "target", "rule", "type", "n"]),
        c,
        max_size=5,
    ),
    max_leaves=20,
)
_STATE = st.fixed_dictionaries(
    {"v": st.just(1)},
    optional={"h": _ANY, "l": _ANY, "p": _ANY, "e": _ANY},
)


@settings(max_examples=300, deadline=None)
@given(st.one_of(st.text(max_size=200), _ANY.map(json.dumps), _STATE.map(json.dumps)))
def test_garbage_state_never_crashes(text: str) -> None:
    """A hand-edited or corrupted state annotation is skipped with problems, never raised."""
    ledger, _, problems = Ledger.from_json(text)
    assert isinstance(problems, list)
    ledger.to_json(0.0)


def test_rule_cap_counts_ladder_steps_not_single_actions() -> None:
    """A step that sends an Event and restarts a unit uses one unit of the rule's hourly cap;
    undo steps use none."""
    led = Ledger()
    led.record(request("event", step=0), 1000.0, disruptive=False)
    led.record(request("restart-service", step=0), 1000.0, disruptive=True)
    led.record(request("cordon", step=1), 1180.0, disruptive=True)
    led.record(request("event", step=1), 1180.0, disruptive=False)
    led.record(request("uncordon", step=1, undo=True), 1900.0, disruptive=False)
    assert led.count_rule("kubelet-down", 2000.0) == 2
    assert led.count_disruptive(2000.0) == 2


def test_state_moves_between_monotonic_clocks_as_wall_time() -> None:
    """A cooldown recorded at monotonic 100 (wall 1e9+100) is written as wall time and, read by a
    process whose monotonic clock is 5,000 behind wall-minus-1e9, lands at the same wall instant."""
    led = Ledger()
    req = request("restart-service", {"unit": "kubelet.service"})
    led.record(req, 100.0, disruptive=True)
    led.pending[ledger_key(req)] = Pending(req, 100.0)
    text = led.to_json(160.0, offset=1e9)
    doc = json.loads(text)
    assert doc["at"] == 1e9 + 160 and doc["l"][ledger_key(req)][0] == 1e9 + 100
    back, _, problems = Ledger.from_json(text, offset=1e9 - 5000)
    assert problems == []
    assert back.last_run(req) == (5100.0, 1)
    assert back.pending[ledger_key(req)].started == 5100.0
    assert back.count_disruptive(5160.0) == 1


def test_cooldown_bound_evicts_expired_keys_first_and_counts_live_ones(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Past the key bound, keys whose cooldown is over go first; evicting a key still in its
    cooldown is counted under kind=cooldown."""
    monkeypatch.setattr("agent.safety.ledger.MAX_LAST", 3)
    led = Ledger()
    old = request("event", name="old", kind="pod", cooldown_seconds=600)
    led.record(old, 0.0, False)
    for i in range(3):  # 2 h later: old's cooldown is long over
        led.record(request("event", name=f"p{i}", kind="pod", cooldown_seconds=600), 7200.0, False)
    assert led.last_run(old) is None
    assert led.dropped_by_kind()["cooldown"] == 0
    led.record(request("event", name="p3", kind="pod", cooldown_seconds=600), 7201.0, False)
    assert len(led.last) == 3
    assert led.dropped_by_kind()["cooldown"] == 1


def test_history_past_its_bound_is_counted_and_marks_the_hour_incomplete(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Dropping an execution of the last hour is counted and flags the hourly counts as short
    until that execution is an hour old; expired executions are dropped silently."""
    monkeypatch.setattr("agent.safety.ledger.MAX_HISTORY", 2)
    led = Ledger()
    led.record(request("event", rule="a"), 0.0, False)
    led.record(request("event", rule="b"), 4000.0, False)
    led.record(request("event", rule="c"), 4001.0, False)  # drops a: expired, not counted
    assert (led.history_dropped, led.history_incomplete(4001.0)) == (0, False)
    led.record(request("event", rule="d"), 4002.0, False)  # drops b: still inside the hour
    assert led.history_dropped == 1
    assert led.history_incomplete(4002.0) and not led.history_incomplete(4000.0 + HOUR)


def test_history_cut_from_the_annotation_is_known_after_a_restart() -> None:
    """When the state annotation had to drop executions of the last hour to fit, the restored
    ledger knows its hourly counts are short."""
    led = Ledger()
    for i in range(2000):
        led.record(request("event", rule=f"rule-{i}"), 1000.0 + i, False)
    text = led.to_json(3000.0)
    assert len(text.encode()) <= MAX_STATE_BYTES
    back, _, _ = Ledger.from_json(text)
    assert len(back.history) < 2000
    assert back.history_incomplete(3000.0)
    assert not Ledger.from_json(Ledger().to_json(3000.0))[0].history_incomplete(3000.0)


def test_held_steps_round_trip_with_their_caps() -> None:
    """A held step is persisted with its reason and the request's cooldown and hourly cap: a
    restarted agent re-gates it with the same limits, never without them."""
    from dataclasses import replace

    from agent.safety.ledger import Held

    req = replace(request("cordon"), cooldown_seconds=600.0, max_per_hour=3,
                  workload_reasons=("OOMKilling",))
    ledger = Ledger()
    ledger.held[ledger_key(req)] = Held(req, "paused", "paused by node annotation", 100.0, 4)
    back, _, problems = Ledger.from_json(ledger.to_json(200.0, offset=1000.0), offset=5000.0)
    assert problems == []
    held = back.held[ledger_key(req)]
    assert (held.reason, held.detail, held.attempts) == ("paused", "paused by node annotation", 4)
    assert held.since == 100.0 + 1000.0 - 5000.0
    assert (held.request.cooldown_seconds, held.request.max_per_hour) == (600.0, 3)
    assert held.request == req
