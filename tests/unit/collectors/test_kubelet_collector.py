"""The kubelet collector against a fake kubelet serving real captures (minikube 1.35, EKS 1.21)."""

from __future__ import annotations

import asyncio
import json
import socket
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from agent.collectors.base import CollectorContext
from agent.collectors.kubelet import KubeletCollector, parse_pleg, summary_families
from agent.settings import settings_for_tests
from agent.structs.metrics import Family
from nodemedic_sim.fake_kubelet import FakeKubelet, Override

FIXTURES = Path(__file__).resolve().parents[2] / "fixtures" / "kubelet"
PLEG_TEXT = (FIXTURES / "metrics_kubelet_eks_v1.21_subset.txt").read_text()


@pytest.fixture
async def fake() -> AsyncIterator[FakeKubelet]:
    fk = FakeKubelet(FIXTURES)
    await fk.start()
    try:
        yield fk
    finally:
        await fk.stop()


def _collector(url: str, timeout: float = 2.0) -> KubeletCollector:
    settings = settings_for_tests(kubelet_url=url, collector_timeout=timeout)
    return KubeletCollector(CollectorContext(settings))


async def _collect(url: str, timeout: float = 2.0) -> tuple[KubeletCollector, dict[str, Family]]:
    c = _collector(url, timeout)
    try:
        fams = await c.collect()
    finally:
        await c.close()
    return c, {f.name: f for f in fams}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def test_healthy_kubelet_is_up(fake: FakeKubelet) -> None:
    """A healthy kubelet gives kubelet_up 1 and every endpoint scraped successfully."""
    _, fams = await _collect(fake.url)
    assert fams["nodemedic_kubelet_up"].get() == 1
    assert fams["nodemedic_kubelet_healthz_duration_seconds"].get() > 0  # type: ignore[operator]
    scrape = fams["nodemedic_kubelet_scrape_success"]
    success = {lbl["endpoint"]: v for lbl, v in scrape.series()}
    assert success == {"healthz": 1, "pods": 1, "stats_summary": 1, "metrics": 1}


async def test_pods_by_phase_match_capture(fake: FakeKubelet) -> None:
    """Pod phases are counted as in the captured /pods (18 Running, 4 Failed, 2 Succeeded)."""
    _, fams = await _collect(fake.url)
    phases = {lbl["phase"]: v for lbl, v in fams["nodemedic_kubelet_pods"].series()}
    assert phases == {"Running": 18, "Failed": 4, "Succeeded": 2, "Pending": 0, "Unknown": 0}


async def test_restarts_match_capture(fake: FakeKubelet) -> None:
    """Every container's restartCount in /pods appears as a restart series."""
    doc = json.loads((FIXTURES / "pods_minikube_v1.35.json").read_text())
    expected = {
        (p["metadata"]["namespace"], p["metadata"]["name"], cs["name"]): cs["restartCount"]
        for p in doc["items"]
        for key in ("initContainerStatuses", "containerStatuses")
        for cs in p["status"].get(key, [])
    }
    _, fams = await _collect(fake.url)
    got = {
        (lbl["namespace"], lbl["pod"], lbl["container"]): v
        for lbl, v in fams["nodemedic_kubelet_container_restarts_total"].series()
    }
    assert got == expected
    assert len(got) > 20


def test_summary_numbers_equal_capture() -> None:
    """Node and pod figures from /stats/summary equal the capture's values, in base units."""
    doc = json.loads((FIXTURES / "stats_summary_minikube_v1.35.json").read_text())
    fams_list, skipped = summary_families(doc)
    fams = {f.name: f for f in fams_list}
    assert skipped == 0
    assert fams["nodemedic_kubelet_node_cpu_usage_cores"].get() == pytest.approx(0.573081903)
    assert fams["nodemedic_kubelet_node_cpu_usage_seconds_total"].get() == pytest.approx(62.148052)
    assert fams["nodemedic_kubelet_node_memory_working_set_bytes"].get() == 917110784
    assert fams["nodemedic_kubelet_node_memory_available_bytes"].get() == 7299776512
    assert fams["nodemedic_kubelet_node_fs_available_bytes"].get(fs="nodefs") == 821203210240
    assert fams["nodemedic_kubelet_node_fs_inodes_free"].get(fs="nodefs") == 59206606
    assert fams["nodemedic_kubelet_node_fs_used_bytes"].get(fs="imagefs") == 1715707904
    assert fams["nodemedic_kubelet_node_fs_capacity_bytes"].get(fs="containerfs") == 977896124416
    assert fams["nodemedic_kubelet_node_processes"].get() == 814
    assert fams["nodemedic_kubelet_node_max_pids"].get() == 62639
    kcm = {"namespace": "kube-system", "pod": "kube-controller-manager-datagen-1-35"}
    assert fams["nodemedic_kubelet_pod_cpu_usage_cores"].get(**kcm) == pytest.approx(0.006989967)
    assert fams["nodemedic_kubelet_pod_memory_working_set_bytes"].get(**kcm) == 66478080
    assert fams["nodemedic_kubelet_pod_ephemeral_storage_used_bytes"].get(**kcm) == 122880
    assert len(list(fams["nodemedic_kubelet_pod_memory_working_set_bytes"].series())) == 17


def test_summary_psi_matches_cadvisor_seconds() -> None:
    """Summary PSI totals are microseconds: node cpu 'some' equals cAdvisor's 34.335662 s."""
    doc = json.loads((FIXTURES / "stats_summary_minikube_v1.35.json").read_text())
    fams = {f.name: f for f in summary_families(doc)[0]}
    total = fams["nodemedic_kubelet_node_pressure_seconds_total"]
    assert total.get(resource="cpu", kind="some") == pytest.approx(34.335662)
    cadvisor = (FIXTURES / "metrics_cadvisor_minikube_v1.35_trimmed.txt").read_text()
    assert 'container_pressure_cpu_waiting_seconds_total{container="",id="/",' in cadvisor
    assert " 34.335662 " in cadvisor
    avg = fams["nodemedic_kubelet_node_pressure_avg10_ratio"]
    assert avg.get(resource="cpu", kind="some") == pytest.approx(0.7583)
    pod_avg = fams["nodemedic_kubelet_pod_pressure_avg10_ratio"]
    assert pod_avg.get(pod="e2e-daemonset-kb65b", resource="cpu", kind="full") == pytest.approx(
        0.751
    )


async def test_pod_psi_comes_from_the_kubelet_only_without_the_cgroup_collector(
    fake: FakeKubelet,
) -> None:
    """Per-pod PSI is exported once: by the cgroup collector when it runs (the default), by the
    kubelet collector when --no-collector.cgroup turns it off; node PSI comes from the kubelet."""
    pod_psi, node_psi = (
        "nodemedic_kubelet_pod_pressure_avg10_ratio", "nodemedic_kubelet_node_pressure_avg10_ratio"
    )
    _, default = await _collect(fake.url)
    assert pod_psi not in default
    assert node_psi in default
    settings = settings_for_tests(kubelet_url=fake.url, collectors={"cgroup": False})
    c = KubeletCollector(CollectorContext(settings))
    try:
        alone = {f.name: f for f in await c.collect()}
    finally:
        await c.close()
    assert alone[pod_psi].get(pod="e2e-daemonset-kb65b", resource="cpu", kind="full") == (
        pytest.approx(0.751)
    )


def test_summary_without_psi_leaves_psi_out() -> None:
    """A kubelet without PSI (cgroup v1 or older) yields no PSI families, not zeros."""
    doc = {"node": {"cpu": {"usageNanoCores": 5}}, "pods": []}
    names = {f.name for f in summary_families(doc)[0]}
    assert "nodemedic_kubelet_node_pressure_avg10_ratio" not in names
    assert "nodemedic_kubelet_node_cpu_usage_cores" in names


def test_summary_psi_of_all_zeros_is_missing_not_zero() -> None:
    """A real kubelet 1.35 on a cgroup v1 host with a v2 unified mount (captured) fills every PSI
    field of node and pods with 0 while /proc/pressure showed cpu some avg10=81: no PSI
    families, not zeros."""
    doc = json.loads((FIXTURES / "stats_summary_hybrid_v1.35_nodemedic.json").read_text())
    assert doc["node"]["cpu"]["psi"]["some"] == {"total": 0, "avg10": 0, "avg60": 0, "avg300": 0}
    names = {f.name for f in summary_families(doc, pod_psi=True)[0]}
    assert not {n for n in names if "pressure" in n}, names
    assert "nodemedic_kubelet_node_cpu_usage_cores" in names
    # One non-zero total anywhere and PSI is read (the minikube capture's memory some is 15 us).
    doc["node"]["memory"]["psi"]["some"]["total"] = 15
    fams = {f.name: f for f in summary_families(doc, pod_psi=True)[0]}
    assert fams["nodemedic_kubelet_node_pressure_avg10_ratio"].get(resource="cpu",
                                                                   kind="some") == 0


def test_summary_malformed_pods_skipped() -> None:
    """Pod entries without a usable podRef are skipped and counted; numbers stay right."""
    doc = {
        "node": {},
        "pods": [
            {"podRef": {"namespace": "a", "name": "p", "uid": "u"},
             "memory": {"workingSetBytes": 7}},
            {"memory": {"workingSetBytes": 9}},
            {"podRef": {"namespace": "a", "name": 3, "uid": "u"}},
            None,
            {"podRef": {"namespace": "a", "name": "q", "uid": "v"},
             "memory": {"workingSetBytes": "x"}},
        ],
    }
    fams, skipped = summary_families(doc)
    ws = {f.name: f for f in fams}["nodemedic_kubelet_pod_memory_working_set_bytes"]
    assert skipped == 3
    assert list(ws.series()) == [({"namespace": "a", "pod": "p", "uid": "u"}, 7.0)]


def test_pleg_from_real_capture() -> None:
    """PLEG sums/counts and last-seen are read from the EKS kubelet's own /metrics."""
    pleg = parse_pleg(PLEG_TEXT)
    assert pleg["kubelet_pleg_relist_interval_seconds"] == (1.7086866835435373e06, 1.671949e06)
    assert pleg["kubelet_pleg_relist_duration_seconds"] == (35470.97548711002, 1.67195e06)
    assert pleg["kubelet_pleg_last_seen_seconds"] == (1.648119277e09, 1.0)


async def test_pleg_metrics_first_and_second_tick(fake: FakeKubelet) -> None:
    """First tick reports the lifetime mean; the next one the mean of relists since then."""
    c = _collector(fake.url)
    try:
        fams = {f.name: f for f in await c.collect()}
        assert fams["nodemedic_kubelet_pleg_relist_interval_seconds"].get() == pytest.approx(
            1.7086866835435373e06 / 1.671949e06
        )
        assert fams["nodemedic_kubelet_pleg_relist_duration_seconds"].get() == pytest.approx(
            35470.97548711002 / 1.67195e06
        )
        age = fams["nodemedic_kubelet_pleg_last_seen_age_seconds"].get()
        assert age == pytest.approx(time.time() - 1.648119277e09, abs=600)
        # 10 more relists taking 2 s each in total 20 s -> interval 2 s since the last tick.
        later = PLEG_TEXT.replace(
            "kubelet_pleg_relist_interval_seconds_sum 1.7086866835435373e+06",
            "kubelet_pleg_relist_interval_seconds_sum 1708706.6835435373",
        ).replace(
            "kubelet_pleg_relist_interval_seconds_count 1.671949e+06",
            "kubelet_pleg_relist_interval_seconds_count 1671959",
        )
        fake.overrides["/metrics"] = Override(200, later.encode())
        fams = {f.name: f for f in await c.collect()}
        assert fams["nodemedic_kubelet_pleg_relist_interval_seconds"].get() == pytest.approx(2.0)
    finally:
        await c.close()


async def test_unhealthy_kubelet_still_reports_data(fake: FakeKubelet) -> None:
    """/healthz failing gives kubelet_up 0 while the other endpoints still report."""
    fake.healthz_mode = "fail"
    c, fams = await _collect(fake.url)
    assert fams["nodemedic_kubelet_up"].get() == 0
    assert fams["nodemedic_kubelet_scrape_success"].get(endpoint="healthz") == 0
    assert fams["nodemedic_kubelet_pods"].get(phase="Running") == 18
    assert "syncloop failed" in (c.last_errors["healthz"] or "")
    assert c.degraded() is None  # the other endpoints answered: the collector is fine


async def test_unreachable_kubelet_collector_succeeds_with_up_zero() -> None:
    """Nothing listening: the collector returns kubelet_up 0, all endpoints 0, no usage data."""
    c, fams = await _collect(f"http://127.0.0.1:{_free_port()}")
    assert fams["nodemedic_kubelet_up"].get() == 0
    assert all(v == 0 for _, v in fams["nodemedic_kubelet_scrape_success"].series())
    assert "nodemedic_kubelet_pods" not in fams
    assert "nodemedic_kubelet_node_memory_working_set_bytes" not in fams
    assert "cannot reach" in (c.last_errors["stats_summary"] or "")
    assert "cannot reach" in c.status()["endpoint_errors"]["healthz"]
    reqs = fams["nodemedic_kubelet_client_requests_total"]
    assert reqs.get(endpoint="healthz", outcome="connection_error") == 1
    # Every endpoint failed: observed as down (up 0 above), and not reported as an ok collector.
    degraded = c.degraded() or ""
    assert degraded.startswith("every kubelet endpoint failed: healthz: ")
    assert "stats_summary: " in degraded and "metrics: " in degraded


async def test_hanging_kubelet_reported_before_collector_timeout(fake: FakeKubelet) -> None:
    """A hanging /healthz is answered as 'down' within the collector's own timeout."""
    fake.healthz_mode = "hang"
    c, fams = await _collect(fake.url, timeout=0.5)
    assert fams["nodemedic_kubelet_up"].get() == 0
    assert "no answer within 400ms" in (c.last_errors["healthz"] or "")
    assert fams["nodemedic_kubelet_pods"].get(phase="Running") == 18


async def test_garbage_summary_drops_only_summary(fake: FakeKubelet) -> None:
    """Garbage /stats/summary marks that endpoint failed; health and pods still report."""
    fake.overrides["/stats/summary"] = Override(200, b"<html>proxy error</html>")
    fake.overrides["/metrics"] = Override(200, b"\x00\x01 not prometheus {{{")
    c, fams = await _collect(fake.url)
    assert fams["nodemedic_kubelet_up"].get() == 1
    assert fams["nodemedic_kubelet_scrape_success"].get(endpoint="stats_summary") == 0
    assert "nodemedic_kubelet_node_cpu_usage_cores" not in fams
    assert fams["nodemedic_kubelet_pods"].get(phase="Running") == 18
    # A /metrics body without PLEG lines is not an error: PLEG simply is not reported.
    assert "nodemedic_kubelet_pleg_relist_interval_seconds" not in fams
    assert "invalid JSON" in (c.last_errors["stats_summary"] or "")


async def test_wrong_shape_summary_is_reported(fake: FakeKubelet) -> None:
    """A JSON answer that is not a Summary (e.g. a list) fails that endpoint clearly."""
    fake.overrides["/stats/summary"] = Override(200, b"[1, 2, 3]", "application/json")
    c, fams = await _collect(fake.url)
    assert fams["nodemedic_kubelet_scrape_success"].get(endpoint="stats_summary") == 0
    assert "expected an object with a node section" in (c.last_errors["stats_summary"] or "")


async def test_every_emitted_metric_is_declared(fake: FakeKubelet) -> None:
    """All families the collector returns are declared in its metrics list."""
    _, fams = await _collect(fake.url)
    declared = {s.name for s in KubeletCollector.metrics}
    assert set(fams) <= declared
    assert len(declared) == len(KubeletCollector.metrics)


async def test_pods_shared_with_another_collector_in_one_tick(fake: FakeKubelet) -> None:
    """The kubelet collector and a cgroup-style pods() caller in one tick cost one /pods."""
    fake.delays["/pods"] = 0.1
    c = _collector(fake.url)
    try:
        fams, refs = await asyncio.gather(c.collect(), c.ctx.kubelet.pods())
    finally:
        await c.close()
    assert fake.hits["/pods"] == 1
    assert len(refs) == 24
    assert {f.name: f for f in fams}["nodemedic_kubelet_pods"].get(phase="Running") == 18


def test_summary_value_beyond_float_range_drops_only_that_value() -> None:
    """A pod's 400-digit workingSetBytes is dropped; its neighbours' values are still exported."""
    doc = {
        "node": {"memory": {"workingSetBytes": 1024}},
        "pods": [
            {"podRef": {"namespace": "a", "name": "p", "uid": "u"},
             "memory": {"workingSetBytes": 7}},
            {"podRef": {"namespace": "a", "name": "q", "uid": "v"},
             "memory": {"workingSetBytes": 10**400}},
        ],
    }
    fams, _ = summary_families(doc)
    ws = {f.name: f for f in fams}["nodemedic_kubelet_pod_memory_working_set_bytes"]
    assert list(ws.series()) == [({"namespace": "a", "pod": "p", "uid": "u"}, 7.0)]


async def test_unchanged_pod_list_serves_the_same_families(fake: FakeKubelet) -> None:
    """While /pods answers the same bytes, the pod families are the very objects of the last
    tick (the rules carry their results over and the render re-uses their compressed text);
    a changed restartCount gives new families with the new value."""
    settings = settings_for_tests(kubelet_url=fake.url, collector_timeout=2.0)
    c = KubeletCollector(CollectorContext(settings))
    c.client.pods_max_age = 0.0  # every tick fetches /pods again
    name = "nodemedic_kubelet_container_restarts_total"
    try:
        first = {f.name: f for f in await c.collect()}
        again = {f.name: f for f in await c.collect()}
        assert fake.hits["/pods"] == 2
        assert again[name] is first[name]
        doc = json.loads((FIXTURES / "pods_minikube_v1.35.json").read_text())
        pod = doc["items"][0]
        cs = pod["status"]["containerStatuses"][0]
        cs["restartCount"] += 7
        fake.overrides["/pods"] = Override(body=json.dumps(doc).encode(),
                                           content_type="application/json")
        changed = {f.name: f for f in await c.collect()}
    finally:
        await c.close()
    assert changed[name] is not first[name]
    labels = {"namespace": pod["metadata"]["namespace"], "pod": pod["metadata"]["name"],
              "container": cs["name"]}
    assert changed[name].get(**labels) == cs["restartCount"]
    assert first[name].get(**labels) == cs["restartCount"] - 7


async def test_summary_read_at_most_once_per_min_interval(fake: FakeKubelet) -> None:
    """--kubelet.summary-min-interval (30s): a second tick re-serves the last read's families
    without asking the kubelet again; 0 reads every tick; a failed read is retried at once."""
    name = "nodemedic_kubelet_node_fs_available_bytes"
    c = _collector(fake.url)
    try:
        first = {f.name: f for f in await c.collect()}
        again = {f.name: f for f in await c.collect()}
        assert fake.hits["/stats/summary"] == 1
        assert again[name] is first[name]
    finally:
        await c.close()
    every = KubeletCollector(CollectorContext(settings_for_tests(
        kubelet_url=fake.url, collector_timeout=2.0, kubelet_summary_min_interval=0.0)))
    try:
        fake.overrides["/stats/summary"] = Override(status=500, body=b"boom")
        failed = {f.name: f for f in await every.collect()}
        assert name not in failed
        del fake.overrides["/stats/summary"]
        read = {f.name: f for f in await every.collect()}
        reread = {f.name: f for f in await every.collect()}
    finally:
        await every.close()
    assert fake.hits["/stats/summary"] == 4
    assert read[name] is not reread[name] and read[name].samples == reread[name].samples


async def test_summary_is_not_re_served_while_the_kubelet_is_down(fake: FakeKubelet) -> None:
    """Between two reads the summary is re-served, but not on a tick whose /healthz fails: the
    dead kubelet's pod usage would be exported beside kubelet_up 0 as if current. It is missing
    data then (scrape_success 0), and read again on the first tick the kubelet answers."""
    name = "nodemedic_kubelet_pod_memory_working_set_bytes"
    c = _collector(fake.url)
    try:
        first = {f.name: f for f in await c.collect()}
        assert name in first
        fake.healthz_mode = "fail"
        down = {f.name: f for f in await c.collect()}
        assert down["nodemedic_kubelet_up"].get() == 0
        assert name not in down
        assert down["nodemedic_kubelet_scrape_success"].get(endpoint="stats_summary") == 0
        assert "healthz" in (c.status()["endpoint_errors"]["stats_summary"] or "")
        assert fake.hits["/stats/summary"] == 1  # the kubelet was not asked again meanwhile
        fake.healthz_mode = "ok"
        back = {f.name: f for f in await c.collect()}
    finally:
        await c.close()
    assert fake.hits["/stats/summary"] == 2  # read at once, not 30 s after the last read
    assert back[name].samples == first[name].samples
