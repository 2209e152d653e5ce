"""The cgroup collector on fixture kubepods trees built from real captures (v2 systemd, v1
cgroupfs), with and without the kubelet's pod list, and on broken, missing and vanishing files."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.collectors.base import CollectorContext
from agent.collectors.cgroup import CgroupCollector
from agent.collectors.cgroupfs import CgroupRef, scan
from agent.kubelet_client import KubeletError, KubeletUnauthorized
from agent.settings import Settings
from agent.structs.metrics import Family
from agent.structs.pods import PodRef
from tests.unprivileged import as_nobody

FIX = Path(__file__).resolve().parents[2] / "fixtures" / "cgroup"
V2 = FIX / "v2-systemd"
V1 = FIX / "v1-cgroupfs"

DAEMONSET = "45b528af-fb82-4e96-8103-b9da1194dd36"
COREDNS = "36447428-81f8-45eb-b825-414de2e8012b"
KUBE_PROXY = "90565722-42c8-4f10-a59b-c8fc6571e86d"
KINDNET = "ebb73de1-03ec-4c34-bda3-bb8a44f01c2b"
APISERVER = "8ac8c3a9ee4d182b8d934f20e971ada7"
DS_CID = "ff102f3ad315dd9b977f8e654f8dfc8c21daff8744724a835267e0d91374fc54"
SANDBOX = "0badc0ffee0000000000000000000000000000000000000000000000000000aa"


def real_pod_refs() -> list[PodRef]:
    """PodRefs from the real kubelet /pods capture, as agent.kubelet_client would produce."""
    doc = json.loads((FIX / "pods_minikube_v1.35.json").read_text())
    refs = []
    for item in doc["items"]:
        meta, status = item["metadata"], item["status"]
        containers = {
            cs["containerID"].split("://", 1)[1]: cs["name"]
            for cs in status.get("containerStatuses", [])
            if cs.get("containerID")
        }
        refs.append(PodRef(meta["uid"], meta["namespace"], meta["name"],
                           status.get("qosClass", ""), status.get("phase", ""), containers))
    return refs


class FakeKubelet:
    """Stands in for agent.kubelet_client.KubeletClient: only ``pods()`` is used."""

    def __init__(self, refs: list[PodRef] | None = None, error: Exception | None = None) -> None:
        self.refs = refs or []
        self.error = error

    async def pods(self) -> list[PodRef]:
        if self.error is not None:
            raise self.error
        return self.refs


def collector(root: Path, kubelet: object | None = None) -> CgroupCollector:
    """A collector reading every file there is (PSI per container too) on every call."""
    ctx = CollectorContext(Settings(path_cgroupfs=root, cgroup_psi="container",
                                    cgroup_min_interval=0))
    if kubelet is not None:
        ctx.kubelet = kubelet
    return CgroupCollector(ctx)


async def collect(root: Path, kubelet: object | None = None) -> dict[str, Family]:
    return {f.name: f for f in await collector(root, kubelet).collect()}


def v2_container(root: Path, uid: str, cid: str, qos: str = "burstable") -> Path:
    u = uid.replace("-", "_")
    return (root / "kubepods.slice" / f"kubepods-{qos}.slice" / f"kubepods-{qos}-pod{u}.slice"
            / f"cri-containerd-{cid}.scope")


async def test_v2_systemd_tree_attributed_by_kubelet() -> None:
    """With the kubelet's pod list, v2 systemd-driver series carry namespace, pod and container
    names, the QoS class of the cgroup path, and the values of the captured files."""
    fams = await collect(V2, FakeKubelet(real_pod_refs()))
    usage = fams["nodemedic_container_memory_usage_bytes"]
    ctr = {"namespace": "scraper", "pod": "e2e-daemonset-kb65b", "uid": DAEMONSET,
           "container": "compute-pi-digits", "qos": "burstable"}
    assert usage.get(**ctr) == 10498404352
    # Working set = memory.current - inactive_file, as the kubelet computes it.
    assert fams["nodemedic_container_memory_working_set_bytes"].get(**ctr) == (
        10498404352 - 6685749248
    )
    assert fams["nodemedic_container_memory_limit_bytes"].get(**ctr) == 268435456
    assert fams["nodemedic_container_oom_kills_total"].get(**ctr) == 2
    assert fams["nodemedic_container_oom_events_total"].get(**ctr) == 3
    assert fams["nodemedic_container_cpu_usage_seconds_total"].get(**ctr) == pytest.approx(
        3611.347518
    )
    assert fams["nodemedic_container_cpu_quota_cores"].get(**ctr) == pytest.approx(0.08)
    assert fams["nodemedic_container_cpu_cfs_throttled_periods_total"].get(**ctr) == 0
    assert fams["nodemedic_container_pressure_seconds_total"].get(
        **ctr, resource="cpu", kind="some") == pytest.approx(115.056064)
    assert fams["nodemedic_container_pressure_avg10_ratio"].get(
        **ctr, resource="io", kind="full") == 0.0
    # Pod-level cgroup: container="" ; Guaranteed pod directly under kubepods.slice.
    assert usage.get(pod="e2e-daemonset-kb65b", container="") == 10498404352
    assert usage.get(pod="kindnet-zkpn8", container="kindnet-cni", qos="guaranteed") is not None
    assert usage.get(pod="kube-proxy-8k9zt", container="kube-proxy", qos="besteffort") is not None
    assert usage.get(pod="kube-apiserver-datagen-1-35", container="kube-apiserver") is not None
    assert fams["nodemedic_cgroup_pod_attribution"].get() == 1
    assert fams["nodemedic_cgroup_cgroups"].get(level="pod") == 5
    # 5 containers + the daemonset pod's sandbox; cri-o's conmon scope is not a container.
    assert fams["nodemedic_cgroup_cgroups"].get(level="container") == 6
    assert fams["nodemedic_cgroup_read_errors_total"].get(reason="parse") == 0


async def test_unlimited_limits_are_absent_not_huge() -> None:
    """memory.max / cpu.max 'max' produce no limit series rather than a bogus number."""
    fams = await collect(V2)
    assert fams["nodemedic_container_memory_limit_bytes"].get(uid=COREDNS) is None
    assert fams["nodemedic_container_cpu_quota_cores"].get(uid=COREDNS) is None
    assert fams["nodemedic_container_memory_limit_bytes"].get(uid=KINDNET) == 52428800
    assert fams["nodemedic_container_cpu_quota_cores"].get(uid=KINDNET) == 1.0


async def test_no_kubelet_labels_carry_uid_and_container_id() -> None:
    """Without a kubelet client, series carry the pod UID, empty namespace/pod, the container
    ID as container, and the QoS class from the cgroup path."""
    fams = await collect(V2)
    usage = fams["nodemedic_container_memory_usage_bytes"]
    assert usage.get(namespace="", pod="", uid=DAEMONSET, container=DS_CID,
                     qos="burstable") == 10498404352
    assert usage.get(uid=DAEMONSET, container="") == 10498404352
    assert fams["nodemedic_cgroup_pod_attribution"].get() == 0


async def test_sandbox_not_in_pod_list_keeps_its_id() -> None:
    """A cgroup the kubelet does not list, not told for a sandbox (the fixture's has no
    cgroup.procs: test_cgroup_sandbox.py writes one), is named by its ID, never by a guess."""
    fams = await collect(V2, FakeKubelet(real_pod_refs()))
    usage = fams["nodemedic_container_memory_usage_bytes"]
    assert usage.get(pod="e2e-daemonset-kb65b", container=SANDBOX) == 10498404352


async def test_failing_kubelet_falls_back_to_uids() -> None:
    """A kubelet that errors only costs attribution: values are still reported, by UID."""
    fams = await collect(V2, FakeKubelet(error=ConnectionRefusedError("kubelet down")))
    assert fams["nodemedic_cgroup_pod_attribution"].get() == 0
    assert fams["nodemedic_container_memory_usage_bytes"].get(
        uid=DAEMONSET, container=DS_CID, pod="") == 10498404352


async def test_v1_cgroupfs_tree() -> None:
    """v1 cgroupfs driver with joined cpu,cpuacct: throttling, quota, working set and OOM kills
    from the captured files; unlimited memory and a kernel without oom_kill give no series."""
    fams = await collect(V1, FakeKubelet(real_pod_refs()))
    ds = {"pod": "e2e-daemonset-kb65b", "container": "compute-pi-digits", "qos": "burstable"}
    assert fams["nodemedic_container_cpu_cfs_periods_total"].get(**ds) == 769021
    assert fams["nodemedic_container_cpu_cfs_throttled_periods_total"].get(**ds) == 1046
    assert fams["nodemedic_container_cpu_cfs_throttled_seconds_total"].get(**ds) == (
        pytest.approx(352.597023453)
    )
    assert fams["nodemedic_container_cpu_quota_cores"].get(**ds) == pytest.approx(0.08)
    assert fams["nodemedic_container_cpu_usage_seconds_total"].get(**ds) == (
        pytest.approx(95.996653175)
    )
    assert fams["nodemedic_container_memory_working_set_bytes"].get(**ds) == (
        295997440 - 40108032
    )
    # 9223372036854771712 = unlimited; this capture's kernel has no oom_kill line.
    assert fams["nodemedic_container_memory_limit_bytes"].get(**ds) is None
    assert fams["nodemedic_container_oom_kills_total"].get(**ds) is None
    kindnet = {"pod": "kindnet-zkpn8", "container": "kindnet-cni", "qos": "guaranteed"}
    assert fams["nodemedic_container_memory_limit_bytes"].get(**kindnet) == 2147483648
    assert fams["nodemedic_container_oom_kills_total"].get(**kindnet) == 0
    assert fams["nodemedic_container_memory_usage_bytes"].get(
        pod="kube-proxy-8k9zt", container="", qos="besteffort") == 1215860736
    # v1 has no OOM-event counter and these captures no PSI: absent, not zero.
    assert fams["nodemedic_container_oom_events_total"].samples == []
    assert fams["nodemedic_container_pressure_seconds_total"].samples == []
    assert fams["nodemedic_cgroup_cgroups"].get(level="container") == 4


async def test_empty_and_garbage_files_skip_only_that_value(v2_copy: Path) -> None:
    """An empty memory.current and a garbage memory.max drop just those values (and the working
    set that depends on usage), count parse errors, and leave the rest of the pod intact."""
    d = v2_container(v2_copy, DAEMONSET, DS_CID)
    (d / "memory.current").write_bytes(b"")
    (d / "memory.max").write_bytes(b"lots\n")
    (d / "cpu.pressure").write_bytes(b"some avg10=?? avg60=0.00 avg300=0.00 total=1\n")
    c = collector(v2_copy)
    fams = {f.name: f for f in await c.collect()}
    assert fams["nodemedic_container_memory_usage_bytes"].get(container=DS_CID) is None
    assert fams["nodemedic_container_memory_working_set_bytes"].get(container=DS_CID) is None
    assert fams["nodemedic_container_memory_limit_bytes"].get(container=DS_CID) is None
    assert fams["nodemedic_container_pressure_seconds_total"].get(
        container=DS_CID, resource="cpu") is None
    assert fams["nodemedic_container_pressure_seconds_total"].get(
        container=DS_CID, resource="memory", kind="some") == pytest.approx(1.736583)
    assert fams["nodemedic_container_oom_kills_total"].get(container=DS_CID) == 2
    assert fams["nodemedic_container_memory_usage_bytes"].get(uid=COREDNS, container="") == (
        10498404352
    )
    assert fams["nodemedic_cgroup_read_errors_total"].get(reason="parse") == 3
    # The counter is cumulative across ticks.
    fams = {f.name: f for f in await c.collect()}
    assert fams["nodemedic_cgroup_read_errors_total"].get(reason="parse") == 6


async def test_missing_expected_file_is_counted(v1_copy: Path) -> None:
    """A control file that its hierarchy has but one live cgroup lacks is skipped and counted."""
    d = (v1_copy / "memory" / "kubepods" / "burstable" / f"pod{COREDNS}")
    cid = next(p.name for p in d.iterdir() if p.is_dir())
    (d / cid / "memory.usage_in_bytes").unlink()
    (d / cid / "memory.stat").write_text("cache 1\nrss 2\n")  # no total_inactive_file
    fams = await collect(v1_copy)
    assert fams["nodemedic_container_memory_usage_bytes"].get(container=cid) is None
    assert fams["nodemedic_container_memory_working_set_bytes"].get(container=cid) is None
    assert fams["nodemedic_container_memory_limit_bytes"].get(container=cid) == 2147483648
    assert fams["nodemedic_cgroup_read_errors_total"].get(reason="missing") == 1
    assert fams["nodemedic_cgroup_read_errors_total"].get(reason="parse") == 1


def test_pod_vanishing_between_discovery_and_read(v2_copy: Path) -> None:
    """A pod deleted after discovery is dropped whole and counted as vanished; no half-read
    values for it, the other pods are unaffected."""
    pod_dir = v2_container(v2_copy, DAEMONSET, DS_CID).parent

    def delete(refs: list[CgroupRef]) -> None:
        assert any(r.uid == DAEMONSET for r in refs)
        shutil.rmtree(pod_dir)

    result = scan(v2_copy, after_discover=delete)
    assert [s for s in result.stats if s.uid == DAEMONSET] == []
    assert result.errors == {"vanished": 3}  # pod + container + sandbox cgroups
    assert {s.uid for s in result.stats} == {COREDNS, APISERVER, KUBE_PROXY, KINDNET}


def test_container_vanishing_in_v1_hierarchies(v1_copy: Path) -> None:
    """In v1, a container gone from the hierarchy it was listed in (memory) is dropped whole
    and counted; one gone only from another controller loses just that controller's values."""
    pod = Path("kubepods") / "burstable" / f"pod{DAEMONSET}" / DS_CID
    result = scan(v1_copy, after_discover=lambda refs: shutil.rmtree(v1_copy / "memory" / pod))
    assert [s for s in result.stats if s.container_id == DS_CID] == []
    assert result.errors == {"vanished": 1}

    shutil.rmtree(v1_copy / "cpu,cpuacct" / pod)
    (v1_copy / "memory" / pod).mkdir()
    (v1_copy / "memory" / pod / "memory.usage_in_bytes").write_text("12345\n")
    result = scan(v1_copy)
    (ctr,) = [s for s in result.stats if s.container_id == DS_CID]
    assert ctr.memory_usage == 12345
    assert ctr.cpu_usage_seconds is None and ctr.cfs_throttled_periods is None


def _scan_as_nobody(root: Path) -> dict[str, object]:
    """Run scan() as nobody, so file modes really apply."""
    def work() -> dict[str, object]:
        res = scan(root)
        return {"errors": res.errors, "usage": {s.container_id: s.memory_usage for s in res.stats}}

    return as_nobody(work)  # type: ignore[no-any-return]


@pytest.fixture
def world_readable_copy() -> Iterator[Path]:
    base = Path(tempfile.mkdtemp(prefix="nodemedic-cgroup-"))
    try:
        os.chmod(base, 0o755)
        shutil.copytree(V2, base / "v2", symlinks=True)
        yield base / "v2"
    finally:
        shutil.rmtree(base)


def test_permission_denied_is_counted_not_fatal(world_readable_copy: Path) -> None:
    """An unreadable memory.current (EACCES) skips that value, counts 'permission', and the
    rest of the node is still read."""
    d = v2_container(world_readable_copy, DAEMONSET, DS_CID)
    os.chmod(d / "memory.current", 0)
    if os.geteuid() == 0:
        out = _scan_as_nobody(world_readable_copy)
    else:
        res = scan(world_readable_copy)
        out = {"errors": res.errors,
               "usage": {s.container_id: s.memory_usage for s in res.stats}}
    assert out["errors"] == {"permission": 1}
    usage = out["usage"]
    assert isinstance(usage, dict)
    assert usage[DS_CID] is None
    assert usage[SANDBOX] == 10498404352


async def test_missing_root_fails_the_collector_with_a_clear_message(tmp_path: Path) -> None:
    """A --path.cgroupfs with no hierarchy marks the collector failed, naming the flag."""
    with pytest.raises(RuntimeError, match=r"--path\.cgroupfs"):
        await collector(tmp_path / "nope").collect()


async def test_node_without_kubepods_reports_zero_cgroups(tmp_path: Path) -> None:
    """A cgroup root without kubepods (not a Kubernetes node yet) is fine: zero cgroups."""
    (tmp_path / "cgroup.controllers").write_text("cpu memory\n")
    (tmp_path / "system.slice").mkdir()
    fams = await collect(tmp_path)
    assert fams["nodemedic_cgroup_cgroups"].get(level="pod") == 0
    assert fams["nodemedic_container_memory_usage_bytes"].samples == []


async def test_declared_metrics_cover_every_family() -> None:
    """Every family the collector returns is declared in its ``metrics`` catalogue."""
    declared = {s.name for s in CgroupCollector.metrics}
    fams = await collect(V2)
    assert set(fams) <= declared
    assert CgroupCollector.name == "cgroup"


async def test_min_interval_reserves_the_last_read(v2_copy: Path) -> None:
    """With --cgroup.min-interval, ticks inside the interval re-serve the last read; with the
    default (0) every tick reads the tree again."""
    d = v2_container(v2_copy, DAEMONSET, DS_CID)
    ctx = CollectorContext(Settings(path_cgroupfs=v2_copy, cgroup_min_interval=600))
    slow = CgroupCollector(ctx)
    every = collector(v2_copy)
    first = {f.name: f for f in await slow.collect()}
    await every.collect()
    (d / "memory.current").write_text("4096\n")
    again = {f.name: f for f in await slow.collect()}
    fresh = {f.name: f for f in await every.collect()}
    name = "nodemedic_container_memory_usage_bytes"
    assert again[name].get(container=DS_CID) == first[name].get(container=DS_CID) == 10498404352
    assert fresh[name].get(container=DS_CID) == 4096


async def test_hung_read_is_not_restarted_every_tick(
    v2_copy: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """When a read hangs past the collector timeout, the next tick fails fast with a clear
    error instead of piling up another thread; once the read returns, collection resumes."""
    import asyncio
    import threading

    import agent.collectors.cgroup as mod

    release = threading.Event()

    def hanging_scan(root: Path, **kwargs: object) -> object:
        release.wait(10)
        return scan(root, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(mod, "scan", hanging_scan)
    c = collector(v2_copy)
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(c.collect(), timeout=0.2)
    with pytest.raises(RuntimeError, match="still running"):
        await c.collect()
    release.set()
    monkeypatch.setattr(mod, "scan", scan)
    fams: dict[str, Family] = {}
    for _ in range(200):  # the released thread finishes on its own, soon
        try:
            fams = {f.name: f for f in await c.collect()}
            break
        except RuntimeError:
            await asyncio.sleep(0.01)
    assert fams["nodemedic_cgroup_cgroups"].get(level="pod") == 5


def _place(src: Path, dst: Path) -> None:
    dst.mkdir(parents=True, exist_ok=True)
    for f in src.iterdir():
        shutil.copyfile(f, dst / f.name)


async def test_v2_cgroupfs_driver_and_v1_systemd_driver(tmp_path: Path) -> None:
    """The other two driver x version combinations: v2 with the cgroupfs driver (minikube's
    /kubepods/burstable/pod<uid>/<id>) and v1 with the systemd driver (the EKS capture's own
    path kubepods.slice/.../cri-containerd-<id>.scope in memory/ and a joined cpu,cpuacct/)."""
    cap = FIX / "captures"
    v2 = tmp_path / "v2"
    v2.mkdir()
    (v2 / "cgroup.controllers").write_text("cpu memory io pids\n")
    _place(cap / "v2_user_session_scope", v2 / "kubepods")
    _place(cap / "v2_user_session_scope", v2 / "kubepods" / f"pod{KINDNET}" / "abc123")
    fams = await collect(v2)
    assert fams["nodemedic_container_memory_usage_bytes"].get(
        uid=KINDNET, container="abc123", qos="guaranteed") == 10498404352

    v1 = tmp_path / "v1"
    uid = "7a96c459-d529-44ae-9f99-90d3798d6426"
    cid = "1d3d308a7d48a27814a68bf33a44acf4441c9c02463ca0bc1cdfdc8c0b4a8496"
    rel = Path("kubepods.slice") / "kubepods-burstable.slice" / (
        f"kubepods-burstable-pod{uid.replace('-', '_')}.slice") / f"cri-containerd-{cid}.scope"
    for hierarchy in ("memory", "cpu,cpuacct"):
        _place(cap / "v1_eks_amzn2_kubepods_burstable_container", v1 / hierarchy / "kubepods.slice")
        _place(cap / "v1_eks_amzn2_kubepods_burstable_container", v1 / hierarchy / rel)
    fams = await collect(v1)
    labels = {"uid": uid, "container": cid, "qos": "burstable"}
    assert fams["nodemedic_container_memory_limit_bytes"].get(**labels) == 2147483648
    assert fams["nodemedic_container_cpu_usage_seconds_total"].get(**labels) == pytest.approx(
        124659.500367)


def test_endless_and_blocking_files_are_bounded_and_counted(v2_copy: Path) -> None:
    """A control file that never ends (a link to /dev/zero) or never answers (a FIFO) in a bad
    tree is cut off at 1 MiB or read as empty, and counted, instead of eating memory or
    hanging the read."""
    d = v2_container(v2_copy, DAEMONSET, DS_CID)
    (d / "memory.stat").unlink()
    (d / "memory.stat").symlink_to("/dev/zero")
    (d / "cpu.stat").unlink()
    os.mkfifo(d / "cpu.stat")
    result = scan(v2_copy)
    (ctr,) = [s for s in result.stats if s.container_id == DS_CID]
    assert ctr.memory_usage == 10498404352
    assert ctr.working_set is None
    assert ctr.cpu_usage_seconds is None
    assert result.errors == {"parse": 2}


async def test_psi_scope_pod_reads_pod_cgroups_only_and_off_reads_none() -> None:
    """--cgroup.psi=pod (the default) keeps every pod's PSI and drops the containers'; off drops
    all PSI and nothing else; container reads both."""
    name = "nodemedic_container_pressure_seconds_total"
    results = {}
    for scope in ("container", "pod", "off", "default"):
        settings = (Settings(path_cgroupfs=V2) if scope == "default" else
                    Settings(path_cgroupfs=V2, cgroup_psi=scope))
        ctx = CollectorContext(settings)
        ctx.kubelet = FakeKubelet(real_pod_refs())
        results[scope] = {f.name: f for f in await CgroupCollector(ctx).collect()}
    levels = {
        scope: {lbl["container"] == "" for lbl, _ in fams[name].series()} if name in fams else set()
        for scope, fams in results.items()
    }
    assert levels == {"container": {True, False}, "pod": {True}, "off": set(), "default": {True}}
    pod = {"pod": "e2e-daemonset-kb65b", "container": "", "resource": "cpu", "kind": "some"}
    assert results["pod"][name].get(**pod) == results["container"][name].get(**pod) is not None
    usage = "nodemedic_container_memory_usage_bytes"
    def rows(fams: dict[str, Family]) -> list[tuple[tuple[str, str], ...]]:
        return sorted(tuple(sorted(lbl.items())) for lbl, _ in fams[usage].series())

    assert rows(results["off"]) == rows(results["container"])


def _collect_as_nobody(root: Path) -> dict[str, object]:
    """Run the collector's collect() as nobody (file modes apply)."""
    def work() -> dict[str, object]:
        c = collector(root)
        fams = {f.name: f for f in asyncio.run(c.collect())}
        ws = fams.get("nodemedic_container_memory_working_set_bytes")
        return {"unreadable": dict(c.unreadable()),
                "series": len(ws.samples) if ws is not None else 0}

    return as_nobody(work)  # type: ignore[no-any-return]


def test_permission_denied_makes_the_cgroup_series_missing_data(
    world_readable_copy: Path,
) -> None:
    """An unreadable memory.current (EACCES) makes this tick's per-cgroup metrics unreadable
    (reason permission): the container's memory is unknown, not gone, so rules freeze."""
    d = v2_container(world_readable_copy, DAEMONSET, DS_CID)
    os.chmod(d / "memory.current", 0)
    if os.geteuid() != 0:
        pytest.fail("needs root to drop to nobody (run the unit tests as root, as CI does)")
    out = _collect_as_nobody(world_readable_copy)
    unreadable = out["unreadable"]
    assert isinstance(unreadable, dict)
    assert unreadable.get("nodemedic_container_memory_working_set_bytes") == "permission"
    assert unreadable.get("nodemedic_container_oom_kills_total") == "permission"
    assert "nodemedic_cgroup_read_errors_total" not in unreadable  # the collector's own count
    assert out["series"]  # the rest is still collected and exported


async def test_kubelet_refusing_the_pod_list_makes_the_cgroup_series_missing_data() -> None:
    """The kubelet answers the pod list with 401: the pod targets are unknown, so the
    per-cgroup metrics are unreadable (unauthorized), not re-keyed under empty names."""
    err = KubeletUnauthorized("/pods: HTTP 401 from the kubelet (token rejected)", 401)
    c = collector(V2, FakeKubelet(error=err))
    await c.collect()
    assert set(c.unreadable().values()) == {"unauthorized"}
    down = collector(V2, FakeKubelet(error=KubeletError("/pods: cannot reach the kubelet")))
    await down.collect()
    assert down.unreadable() == {}  # a kubelet that is down only costs attribution
