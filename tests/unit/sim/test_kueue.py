"""Reading Kueue topology assignments and its 'all pods terminating' replacement test."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from nodemedic_sim.kueue import assigned_nodes, replacement_ready

FIXTURES = Path(__file__).parents[2] / "fixtures" / "failover"


def load(name: str) -> dict[str, object]:
    data = json.loads((FIXTURES / name).read_text())
    assert isinstance(data, dict)
    return data


def test_required_assignment_from_kind_names_both_workers() -> None:
    """The captured 'required' assignment puts 7 pods on kind-worker and 3 on kind-worker2."""
    nodes = assigned_nodes(load("kueue_topologyAssignment_v1beta2_kind_required.json"))
    assert nodes == {"kind-worker": 7, "kind-worker2": 3}


def test_unconstrained_assignment_from_kind() -> None:
    """The captured 'unconstrained' assignment uses kind-worker2 and kind-worker8."""
    nodes = assigned_nodes(load("kueue_topologyAssignment_v1beta2_kind_unconstrained.json"))
    assert nodes == {"kind-worker2": 4, "kind-worker8": 2}


def test_v1beta1_domains_and_universal_counts() -> None:
    """The older domains format and universal values/counts are read too."""
    old = {"levels": ["rack", "kubernetes.io/hostname"],
           "domains": [{"values": ["r1", "n1"], "count": 2}, {"values": ["r1", "n2"], "count": 1}]}
    assert assigned_nodes(old) == {"n1": 2, "n2": 1}
    new = {"levels": ["kubernetes.io/hostname"], "slices": [{
        "domainCount": 2, "podCounts": {"universal": 1},
        "valuesPerLevel": [
            {"individual": {"prefix": "pool-", "suffix": "-x", "roots": ["1", "2"]}}
        ],
    }]}
    assert assigned_nodes(new) == {"pool-1-x": 1, "pool-2-x": 1}


def test_no_hostname_level_means_no_node_replacement() -> None:
    """Kueue only replaces nodes when the lowest level is the hostname."""
    assert assigned_nodes({"levels": ["rack"], "slices": []}) == {}


def test_inconsistent_assignment_is_rejected() -> None:
    """Roots and domainCount that disagree raise instead of guessing."""
    bad = {"levels": ["kubernetes.io/hostname"], "slices": [{
        "domainCount": 3, "podCounts": {"universal": 1},
        "valuesPerLevel": [{"individual": {"prefix": "n", "roots": ["1"]}}]}]}
    with pytest.raises(ValueError):
        assigned_nodes(bad)


def test_replacement_needs_every_pod_terminating() -> None:
    """One pod still running on the node keeps Kueue from replacing it early."""
    terminating = {"metadata": {"deletionTimestamp": "2026-01-01T00:00:00Z"}}
    failed = {"metadata": {}, "status": {"phase": "Failed"}}
    running = {"metadata": {}, "status": {"phase": "Running"}}
    assert replacement_ready([terminating, failed])
    assert not replacement_ready([terminating, running])
