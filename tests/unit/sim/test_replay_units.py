"""nodemedic_sim.replay without Prometheus: time flags, the PromQL asked, and the Snapshot built per
step.

The Snapshot is what makes "missing is never healthy" hold: a step where the collector was not
recorded as successful, or where a metric recorded at other steps is absent, has no data for
the rules (the engine freezes them) instead of an empty, healthy-looking family.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from agent.collectors import registry
from agent.rules.loader import load_rules_dir
from agent.settings import settings_for_tests
from nodemedic_sim.replay.command import parse_time
from nodemedic_sim.replay.promql import Recorded, query_for, steps
from nodemedic_sim.replay.timeline import SUCCESS_METRIC, Replay, rfc3339

RULES = """\
rules:
  - name: kubelet-down
    when: {metric: nodemedic_kubelet_up, op: "==", value: 0}
    actions: [{type: restart-service, unit: kubelet.service}]
"""


def test_times_accept_rfc3339_unix_and_now_relative() -> None:
    now = 1_800_000_000.0
    assert parse_time("2027-01-15T08:00:00Z", now) == 1_800_000_000.0
    assert parse_time("2027-01-15T09:00:00+01:00", now) == 1_800_000_000.0
    assert parse_time("1800000000", now) == 1_800_000_000.0
    assert parse_time("now", now) == now
    assert parse_time("now-1h30m", now) == now - 5400
    with pytest.raises(ValueError, match="needs a zone"):
        parse_time("2027-01-15T08:00:00", now)
    with pytest.raises(ValueError):
        parse_time("yesterday", now)


def test_steps_include_both_ends_and_times_print_as_rfc3339() -> None:
    assert steps(100.0, 130.0, 10.0) == [100.0, 110.0, 120.0, 130.0]
    assert steps(100.0, 125.0, 10.0) == [100.0, 110.0, 120.0]
    assert rfc3339(1_800_000_000.0) == "2027-01-15T08:00:00Z"
    assert rfc3339(1_800_000_000.25) == "2027-01-15T08:00:00.250Z"


def test_only_fresh_samples_count_a_step_old_sample_does_not() -> None:
    # (t - 10s, t]: a sample exactly one step old is the previous step's, not this one's.
    assert query_for("nodemedic_kubelet_up", 10.0) == "last_over_time(nodemedic_kubelet_up[9999ms])"


def _replay(tmp: Path, up: dict[int, float], success: dict[int, float]) -> Replay:
    (tmp / "r.yaml").write_text(RULES)
    ruleset = load_rules_dir(tmp)
    registry.load_builtin()
    rec_up = Recorded("nodemedic_kubelet_up", {"n1": {i: [((), v)] for i, v in up.items()}})
    rec_ok = Recorded(SUCCESS_METRIC, {"n1": {i: [(("kubelet",), v)]
                                               for i, v in success.items()}})
    return Replay(settings_for_tests(), ruleset, {rec_up.metric: rec_up, rec_ok.metric: rec_ok},
                  times=[0.0, 10.0, 20.0], nodes=["n1"], catalogue=registry.metric_catalogue())


def test_a_step_has_data_only_when_its_collector_was_recorded_successful(tmp_path: Path) -> None:
    r = _replay(tmp_path, {0: 1.0, 1: 0.0, 2: 0.0}, {0: 1.0, 1: 0.0})
    assert r.snapshot("n1", 0, 0.0).has_data_for("nodemedic_kubelet_up")
    assert not r.snapshot("n1", 1, 10.0).has_data_for("nodemedic_kubelet_up")  # success 0
    assert not r.snapshot("n1", 2, 20.0).has_data_for("nodemedic_kubelet_up")  # not recorded


def test_a_series_lost_by_the_recording_is_missing_not_empty(tmp_path: Path) -> None:
    r = _replay(tmp_path, {0: 0.0, 2: 0.0}, {0: 1.0, 1: 1.0, 2: 1.0})
    snap = r.snapshot("n1", 1, 10.0)
    assert not snap.has_data_for("nodemedic_kubelet_up")
    assert r.snapshot("n1", 2, 20.0).family("nodemedic_kubelet_up") is not None


def test_a_metric_the_node_never_had_is_an_empty_family_as_live(tmp_path: Path) -> None:
    # The collector ran and saw nothing, all window long (e.g. no pods matched): as live.
    r = _replay(tmp_path, {}, {0: 1.0, 1: 1.0, 2: 1.0})
    snap = r.snapshot("n1", 1, 10.0)
    assert snap.has_data_for("nodemedic_kubelet_up")
    fam = snap.family("nodemedic_kubelet_up")
    assert fam is not None and fam.samples == []
