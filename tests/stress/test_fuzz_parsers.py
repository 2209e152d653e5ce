"""Hostile input: no parser that reads kubelet, procfs, netfilter, cgroup names or the config
file crashes on any input; each either parses or raises the error its caller reports."""

from __future__ import annotations

import contextlib
import json
from collections import Counter
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from stress_fuzz_strategies import budget_factor, for_target
from stress_fuzz_targets import TARGETS, Target

from agent.collectors.kubelet import summary_families
from agent.kubelet_client import KubeletError, _decode_pods
from agent.settings import SettingsError, load_settings

TRIED: Counter[str] = Counter()
EXAMPLES = 150 * budget_factor()


def _check(t: Target, data: bytes) -> None:
    TRIED[t.name] += 1
    with contextlib.suppress(*t.allowed):
        t.run(data)


@pytest.mark.parametrize("target", TARGETS, ids=[t.name for t in TARGETS])
def test_parser_survives_hostile_input(target: Target) -> None:
    """Near-valid and garbage input gives a result or the caller's reported error, never a
    crash; real captures always parse. (Kubelet JSON numbers stay in int64/float range and
    config values are strings here: the known crashes outside that are the xfail tests below.)"""
    for seed in target.seed_bytes():
        target.run(seed)

    @settings(max_examples=EXAMPLES, deadline=None, database=None,
              suppress_health_check=list(HealthCheck))
    @given(for_target(target))
    def fuzz(data: bytes) -> None:
        _check(target, data)

    fuzz()
    assert TRIED[target.name] >= min(EXAMPLES, 50)


def test_pod_list_with_an_infinite_restart_count_skips_the_pod() -> None:
    """A /pods item with restartCount 1e999 is skipped and counted, not fatal."""
    body = {"items": [{"metadata": {"uid": "u", "namespace": "n", "name": "p"},
                       "status": {"containerStatuses": [{"name": "c", "restartCount": 1e999}]}}]}
    try:
        pods = _decode_pods(json.dumps(body).encode())
    except KubeletError:
        pytest.fail("the body is valid JSON; only the one item is bad")
    assert pods.skipped == 1


def test_stats_summary_with_a_huge_integer_drops_only_that_value() -> None:
    """A 400-digit number in /stats/summary drops that one value; the rest is exported."""
    doc = {"node": {"cpu": {"usageNanoCores": 10**400},
                    "memory": {"workingSetBytes": 1024}}}
    fams, _ = summary_families(json.loads(json.dumps(doc)))
    assert any(f.name.endswith("memory_working_set_bytes") for f in fams)


def test_config_file_that_is_not_utf8_is_a_settings_error(tmp_path: Path) -> None:
    """A Latin-1 config file is refused with a SettingsError naming the file."""
    cfg = tmp_path / "nodemedic.yaml"
    cfg.write_bytes("node-name: n\xf6de\n".encode("latin-1"))
    with pytest.raises(SettingsError, match=r"nodemedic\.yaml"):
        load_settings(None, environ={"NODEMEDIC_CONFIG": str(cfg)})


def test_config_value_of_the_wrong_yaml_type_is_a_settings_error(tmp_path: Path) -> None:
    """A null or list where a number belongs is refused with a SettingsError naming the key."""
    cfg = tmp_path / "nodemedic.yaml"
    cfg.write_text("safety.max-actions-per-hour: null\n")
    with pytest.raises(SettingsError, match="max-actions-per-hour"):
        load_settings(None, environ={"NODEMEDIC_CONFIG": str(cfg)})


def test_config_key_that_is_not_a_string_is_a_settings_error(tmp_path: Path) -> None:
    """A config file with a numeric key is refused with a SettingsError naming the file."""
    cfg = tmp_path / "nodemedic.yaml"
    cfg.write_text("9678: true\n")
    with pytest.raises(SettingsError, match=r"nodemedic\.yaml"):
        load_settings(None, environ={"NODEMEDIC_CONFIG": str(cfg)})
