"""Which pods a drain evicts, skips or waits for, on a real kubelet pod list."""

from __future__ import annotations

import json
from pathlib import Path

from agent.actions.drain import DrainMemory, classify, grace_seconds

FIXTURES = Path(__file__).parents[2] / "fixtures" / "actions"


def pods() -> dict[str, dict]:
    data = json.loads((FIXTURES / "pods_minikube_v1.35.json").read_text())
    return {p["metadata"]["name"]: p for p in data["items"]}


def test_drain_classification_of_a_real_node() -> None:
    """DaemonSet, static, finished and bare pods are left alone; controller-owned ones evicted."""
    got = {name: classify(p, evict_unmanaged=False) for name, p in pods().items()}
    assert got["kindnet-zkpn8"] == "daemonset"
    assert got["kube-proxy-8k9zt"] == "daemonset"
    assert got["kube-apiserver-datagen-1-35"] == "mirror"
    assert got["etcd-datagen-1-35"] == "mirror"
    assert got["e2e-failjob-64h4g"] == "finished"
    assert got["e2e-cronjob-29707813-dhlr2"] == "finished"
    assert got["storage-provisioner"] == "unmanaged"
    assert got["e2e-statefulset-0"] == "evict"
    assert got["coredns-7d764666f9-qdcxt"] == "evict"
    assert sum(1 for v in got.values() if v == "evict") == 9


def test_bare_pods_are_evicted_only_when_asked() -> None:
    """evict_unmanaged: true makes a drain evict pods that no controller will re-create."""
    assert classify(pods()["storage-provisioner"], evict_unmanaged=True) == "evict"


def test_terminating_pods_are_waited_for() -> None:
    """A pod with a deletionTimestamp is not evicted again but keeps the drain open."""
    pod = pods()["coredns-7d764666f9-qdcxt"]
    pod["metadata"]["deletionTimestamp"] = "2026-06-26T10:20:00Z"
    assert classify(pod, evict_unmanaged=False) == "terminating"


def test_grace_period_is_capped() -> None:
    """The pod's terminationGracePeriodSeconds is used, never above the cap."""
    pod = pods()["coredns-7d764666f9-qdcxt"]
    assert grace_seconds(pod, 120) == 30
    assert grace_seconds(pod, 10) == 10
    pod["spec"]["terminationGracePeriodSeconds"] = 3600
    assert grace_seconds(pod, 120) == 120
    del pod["spec"]["terminationGracePeriodSeconds"]
    assert grace_seconds(pod, 120) == 30


def test_blocked_evictions_back_off_exponentially() -> None:
    """Each 429 doubles the wait before the pod is tried again, up to two minutes."""
    mem = DrainMemory()
    delays = [mem.backoff("shop/web-1", 1000.0) for _ in range(8)]
    assert delays[:4] == [5.0, 10.0, 20.0, 40.0]
    assert delays[-1] == 120.0
    assert mem.next_try["shop/web-1"] == 1120.0
