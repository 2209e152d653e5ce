"""The lbskew collector end to end on fixture trees, fake commands and the in-memory API server."""

from __future__ import annotations

import asyncio
import shutil
import stat
from pathlib import Path
from typing import Any

import pytest
from helpers_lbskew import fixture

from agent.collectors.base import CannotSee, CollectorContext
from agent.collectors.lbskew import LbSkewCollector
from agent.settings import settings_for_tests
from agent.structs.metrics import Family
from nodemedic_sim.apiserver import ApiServer
from tests.unprivileged import as_nobody

LAB_RULES = fixture("lab_kubeproxy_like_iptables_save_nat.txt")
LAB_PROC = fixture("lab_kubeproxy_like_proc_net_nf_conntrack.txt")
WEB = {"namespace": "shop", "service": "web", "port": "http"}


def _procfs(tmp_path: Path, conntrack: Path | None = LAB_PROC, ipvs: bool = False) -> Path:
    net = tmp_path / "proc" / "net"
    net.mkdir(parents=True)
    if conntrack is not None:
        shutil.copy(conntrack, net / "nf_conntrack")
    if ipvs:
        shutil.copy(fixture("proc_net/ip_vs"), net / "ip_vs")
    return tmp_path / "proc"


def _script(tmp_path: Path, name: str, body: str) -> str:
    path = tmp_path / name
    path.write_text("#!/bin/sh\n" + body + "\n")
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return str(path)


def _collector(**overrides: Any) -> LbSkewCollector:
    overrides.setdefault("lbskew_conntrack_command", "/nonexistent/conntrack")
    overrides.setdefault("lbskew_conntrack_cpu", "100%")  # walk every tick (see test_walks.py)
    return LbSkewCollector(CollectorContext(settings_for_tests(**overrides)))


def _values(fams: list[Family], name: str, **labels: str) -> dict[str, float]:
    """endpoint/problem (or '') -> value over the samples of ``name`` matching ``labels``."""
    out: dict[str, float] = {}
    for fam in fams:
        if fam.name == name:
            for lbls, v in fam.series():
                if all(lbls.get(k) == val for k, val in labels.items()):
                    out[lbls.get("endpoint") or lbls.get("problem") or ""] = v
    return out


def _info(fams: list[Family], name: str) -> list[dict[str, str]]:
    return [dict(lbls) for f in fams if f.name == name for lbls, _ in f.series()]


async def test_lab_capture_gives_per_endpoint_connections_and_skew(tmp_path: Path) -> None:
    """Rules file + proc conntrack: per-endpoint active connections, bytes, shares, indices."""
    c = _collector(path_procfs=_procfs(tmp_path), lbskew_iptables_save_file=LAB_RULES)
    fams = await c.collect()
    assert _values(fams, "nodemedic_service_endpoint_connections", **WEB) == {
        "10.244.1.7:8080": 19, "10.244.2.7:8080": 8, "10.244.3.7:8080": 13,
    }
    got_bytes = _values(fams, "nodemedic_service_endpoint_bytes_total", **WEB)
    assert got_bytes["10.244.1.7:8080"] == 29764
    assert _values(fams, "nodemedic_service_connections", **WEB) == {"": 40}
    assert _values(fams, "nodemedic_service_skew_max_mean_ratio", **WEB) == {"": 1.425}
    p = _values(fams, "nodemedic_service_skew_chi2_p_value", **WEB)[""]
    assert 0.05 < p < 0.2  # 19/8/13 is uneven but not significantly so
    assert _values(fams, "nodemedic_service_skewed", **WEB) == {"": 0}
    assert _info(fams, "nodemedic_lbskew_source_info") == [
        {"rules": "file", "conntrack": "proc", "ipvs": "none", "names": "iptables-comments"}
    ]
    assert _info(fams, "nodemedic_service_lb_info")[0]["name_source"] == "iptables-comment"


async def test_no_kube_proxy_succeeds_without_service_series(tmp_path: Path) -> None:
    """A host whose nat table has no KUBE-SERVICES chain: success, only the source info."""
    save = _script(tmp_path, "iptables-save", 'printf "*nat\\n:OUTPUT ACCEPT [0:0]\\nCOMMIT\\n"')
    c = _collector(path_procfs=_procfs(tmp_path), lbskew_iptables_save_command=save)
    fams = await c.collect()
    assert not any(f.name.startswith("nodemedic_service_") for f in fams)
    assert _info(fams, "nodemedic_lbskew_source_info")[0]["rules"] == "iptables-save"


async def test_missing_iptables_save_is_not_an_error(tmp_path: Path) -> None:
    """Without the iptables-save binary the collector reports no rules source and succeeds."""
    c = _collector(path_procfs=_procfs(tmp_path), lbskew_iptables_save_command="/nonexistent/x")
    fams = await c.collect()
    assert _info(fams, "nodemedic_lbskew_source_info")[0]["rules"] == "none"


async def test_commands_are_run_and_conntrack_cli_is_the_fallback(tmp_path: Path) -> None:
    """No proc file: `conntrack -L -o extended` is streamed; iptables-save gets `-t nat`."""
    save = _script(tmp_path, "iptables-save", f'[ "$1 $2" = "-t nat" ] && cat {LAB_RULES}')
    extended = fixture("lab_kubeproxy_like_conntrack_L_extended.txt")
    ct = _script(tmp_path, "conntrack", f'[ "$*" = "-L -o extended" ] && cat {extended}')
    c = _collector(path_procfs=_procfs(tmp_path, conntrack=None),
                   lbskew_iptables_save_command=save, lbskew_conntrack_command=ct)
    fams = await c.collect()
    assert _info(fams, "nodemedic_lbskew_source_info")[0]["conntrack"] == "conntrack-cli"
    assert _values(fams, "nodemedic_service_connections", **WEB) == {"": 40}


async def test_no_conntrack_source_means_no_connection_series(tmp_path: Path) -> None:
    """The AKS rules without any conntrack source: shares and audit, but no fake zero counts."""
    c = _collector(path_procfs=_procfs(tmp_path, conntrack=None),
                   lbskew_iptables_save_file=fixture("iptables_save_aks_node_full_2022.txt"))
    fams = await c.collect()
    assert _values(fams, "nodemedic_service_endpoint_connections") == {}
    shares = _values(fams, "nodemedic_service_endpoint_expected_share", namespace="kube-system",
                     service="npm-metrics-cluster-service", port="9000")
    assert len(shares) == 3 and all(abs(v - 1 / 3) < 1e-6 for v in shares.values())
    assert len(_info(fams, "nodemedic_service_lb_info")) == 40
    assert _values(fams, "nodemedic_service_chain_problems") == {}


async def test_hung_iptables_save_fails_the_tick(tmp_path: Path) -> None:
    """iptables-save that never answers is killed at the collector's deadline and reported."""
    save = _script(tmp_path, "iptables-save", "exec sleep 30")
    c = _collector(path_procfs=_procfs(tmp_path), lbskew_iptables_save_command=save,
                   collector_timeout=0.5)
    with pytest.raises(TimeoutError, match="iptables-save"):
        await c.collect()


async def test_failing_iptables_save_reports_its_error(tmp_path: Path) -> None:
    """A non-zero exit (other than no permission) fails the tick with the tool's message."""
    save = _script(tmp_path, "iptables-save", 'echo "table nat: kaput" >&2; exit 4')
    c = _collector(path_procfs=_procfs(tmp_path), lbskew_iptables_save_command=save)
    with pytest.raises(RuntimeError, match="exited 4: table nat: kaput"):
        await c.collect()


async def test_ipvs_services_use_active_connections_and_weights(tmp_path: Path) -> None:
    """IPVS mode: ActiveConn per real server, weights as expected shares, VIP:port as name."""
    save = _script(tmp_path, "iptables-save", 'printf "*nat\\nCOMMIT\\n"')
    c = _collector(path_procfs=_procfs(tmp_path, conntrack=None, ipvs=True),
                   lbskew_iptables_save_command=save)
    fams = await c.collect()
    svc = {"namespace": "", "service": "192.168.0.57:3306", "port": "3306"}
    assert _values(fams, "nodemedic_service_endpoint_connections", **svc) == {
        "192.168.84.22:3306": 0, "192.168.82.21:3306": 1499, "192.168.50.21:3306": 1498,
    }
    assert _values(fams, "nodemedic_service_endpoint_expected_share", **svc)[
        "192.168.84.22:3306"] == 0.0
    assert _values(fams, "nodemedic_service_skewed", **svc) == {"": 0}
    assert {i["mode"] for i in _info(fams, "nodemedic_service_lb_info")} == {"ipvs"}


async def test_bytes_counter_never_decreases(tmp_path: Path) -> None:
    """When connections close (live bytes drop) the counter holds; new growth is added."""
    procfs = _procfs(tmp_path)
    c = _collector(path_procfs=procfs, lbskew_iptables_save_file=LAB_RULES)
    ep = {**WEB, "endpoint": "10.244.1.7:8080"}
    first = _values(await c.collect(), "nodemedic_service_endpoint_bytes_total", **ep)[
        "10.244.1.7:8080"]
    lines = LAB_PROC.read_text().splitlines(keepends=True)
    (procfs / "net" / "nf_conntrack").write_text("".join(lines[:5]))  # most entries expired
    second = _values(await c.collect(), "nodemedic_service_endpoint_bytes_total", **ep)[
        "10.244.1.7:8080"]
    assert second == first
    (procfs / "net" / "nf_conntrack").write_text("".join(lines))  # they are back: growth
    third = _values(await c.collect(), "nodemedic_service_endpoint_bytes_total", **ep)[
        "10.244.1.7:8080"]
    assert third > second


def _slice(name: str, ips: list[str], service: str = "web") -> dict[str, Any]:
    return {
        "apiVersion": "discovery.k8s.io/v1",
        "kind": "EndpointSlice",
        "metadata": {"name": name, "namespace": "shop",
                     "labels": {"kubernetes.io/service-name": service}},
        "addressType": "IPv4",
        "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}],
        "endpoints": [
            {"addresses": [ip], "conditions": {"ready": True},
             "targetRef": {"kind": "Pod", "namespace": "shop", "name": f"web-{ip.split('.')[2]}"}}
            for ip in ips
        ],
    }


async def _until(cond: Any, what: str) -> None:
    for _ in range(200):
        if cond():
            return
        await asyncio.sleep(0.02)
    raise AssertionError(f"never happened: {what}")


async def test_endpointslices_name_pods_and_reveal_stale_endpoints(
    tmp_path: Path, apiserver: ApiServer, kube_api: Any
) -> None:
    """With the API: pod labels from the slices, and a chain endpoint the slices dropped is
    reported stale until the watch brings it back."""
    apiserver.create(_slice("web-a", ["10.244.1.7", "10.244.2.7"]))
    c = _collector(path_procfs=_procfs(tmp_path), lbskew_iptables_save_file=LAB_RULES)
    c.ctx.api = kube_api
    await c.start()
    try:
        cache: Any = c._names
        await _until(lambda: cache.synced, "first LIST")
        fams = await c.collect()
        pods = {dict(lbls)["endpoint"]: dict(lbls)["pod"] for f in fams
                if f.name == "nodemedic_service_endpoint_connections" for lbls, _ in f.series()}
        assert pods == {"10.244.1.7:8080": "web-1", "10.244.2.7:8080": "web-2",
                        "10.244.3.7:8080": ""}
        assert _values(fams, "nodemedic_service_chain_problems", **WEB) == {"stale_endpoint": 1}
        assert _info(fams, "nodemedic_service_lb_info")[0]["name_source"] == "endpointslice"

        apiserver.create(_slice("web-b", ["10.244.3.7"]))  # arrives through the watch
        await _until(lambda: cache.size == 2, "watch event")
        fams = await c.collect()
        assert _values(fams, "nodemedic_service_chain_problems", **WEB) == {}
    finally:
        await c.close()


async def test_endpointslice_cache_relists_after_410(
    apiserver: ApiServer, kube_api: Any
) -> None:
    """Compacted history (410 Gone on re-watch) makes the cache re-list and catch up."""
    from agent.kube.endpointslices import EndpointSliceCache

    cache = EndpointSliceCache(kube_api)
    await cache.start()
    try:
        await _until(lambda: cache.synced, "first LIST")
        apiserver.compact()
        apiserver.drop_watches()
        apiserver.create(_slice("web-a", ["10.244.1.7"]))
        await _until(lambda: cache.size == 1, "slice after relist")
        view = cache.view()
        assert view is not None
        name = view.endpoint("10.244.1.7:8080")
        assert name is not None and (name.service, name.pod) == ("web", "web-1")
    finally:
        await cache.close()


async def test_endpointslice_cache_is_bounded(apiserver: ApiServer, kube_api: Any) -> None:
    """Slices beyond the bound are not cached and are counted."""
    from agent.kube.endpointslices import EndpointSliceCache

    for i in range(5):
        apiserver.create(_slice(f"s{i}", [f"10.244.{i}.1"], service=f"svc{i}"))
    cache = EndpointSliceCache(kube_api, max_slices=3)
    await cache.start()
    try:
        await _until(lambda: cache.synced, "first LIST")
        assert (cache.size, cache.dropped) == (3, 2)
    finally:
        await cache.close()


async def test_unreachable_api_falls_back_to_rule_comments(tmp_path: Path) -> None:
    """An API that never answers leaves names to kube-proxy's comments; collection works."""
    from kubernetes_asyncio import client

    cfg = client.Configuration(host="http://127.0.0.1:9")  # discard port: nothing listens
    api = client.ApiClient(cfg)
    c = _collector(path_procfs=_procfs(tmp_path), lbskew_iptables_save_file=LAB_RULES)
    c.ctx.api = api
    await c.start()
    try:
        fams = await c.collect()
        assert _info(fams, "nodemedic_lbskew_source_info")[0]["names"] == "iptables-comments"
        assert _values(fams, "nodemedic_service_connections", **WEB) == {"": 40}
    finally:
        await c.close()
        await api.close()


def test_every_emitted_metric_is_declared_and_named_by_convention() -> None:
    """The declared specs include the agreed names; counters end in _total."""
    names = {m.name for m in LbSkewCollector.metrics}
    agreed = {
        "nodemedic_service_endpoint_connections", "nodemedic_service_endpoint_bytes_total",
        "nodemedic_service_endpoint_expected_share", "nodemedic_service_skew_max_mean_ratio",
        "nodemedic_service_skew_cv", "nodemedic_service_skew_chi2_p_value",
        "nodemedic_service_connections", "nodemedic_service_chain_problems",
    }
    assert agreed <= names


async def test_ipvs_services_named_by_slices_stay_distinct(
    tmp_path: Path, apiserver: ApiServer, kube_api: Any
) -> None:
    """A ClusterIP and a NodePort virtual service with the same real servers both get the
    Service's name from the slices, and distinct port labels (no duplicate series)."""
    dns = _slice("dns", ["10.2.0.2"], service="kube-dns")
    dns["metadata"]["namespace"] = "kube-system"
    dns["ports"] = [{"name": "dns-tcp", "port": 53, "protocol": "TCP"}]
    apiserver.create(dns)
    procfs = _procfs(tmp_path, conntrack=None)
    (procfs / "net" / "ip_vs").write_text(
        "IP Virtual Server version 1.2.1 (size=4096)\n"
        "Prot LocalAddress:Port Scheduler Flags\n"
        "  -> RemoteAddress:Port Forward Weight ActiveConn InActConn\n"
        "TCP  0A03000A:0035 rr\n"
        "  -> 0A020002:0035      Masq    1      7          0\n"
        "TCP  0A000004:7585 rr\n"
        "  -> 0A020002:0035      Masq    1      2          0\n"
    )
    save = _script(tmp_path, "iptables-save", 'printf "*nat\\nCOMMIT\\n"')
    c = _collector(path_procfs=procfs, lbskew_iptables_save_command=save)
    c.ctx.api = kube_api
    await c.start()
    try:
        await _until(lambda: c._names is not None and c._names.size == 1, "first LIST")
        fams = await c.collect()
        got = {(lb["namespace"], lb["service"], lb["port"]): v for f in fams
               if f.name == "nodemedic_service_connections" for lb, v in f.series()}
        assert got == {("kube-system", "kube-dns", "dns-tcp"): 7,
                       ("kube-system", "kube-dns", "dns-tcp@10.0.0.4:30085"): 2}
    finally:
        await c.close()


async def test_overlapping_scan_is_refused_while_the_previous_runs(tmp_path: Path) -> None:
    """A tick that timed out keeps its thread; the next tick fails fast instead of racing it."""
    save = _script(tmp_path, "iptables-save", f"sleep 1; cat {LAB_RULES}")
    c = _collector(path_procfs=_procfs(tmp_path), lbskew_iptables_save_command=save,
                   collector_timeout=10.0)
    first = asyncio.create_task(c.collect())
    await _until(c._busy.locked, "first scan started")
    with pytest.raises(RuntimeError, match="still running"):
        await c.collect()
    fams = await first
    assert _values(fams, "nodemedic_service_connections", **WEB) == {"": 40}


async def test_byte_series_past_the_bound_are_left_out_and_counted(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With room for one byte counter, the other endpoints get none (never a raw value that
    could go down) and the dropped gauge says how many."""
    monkeypatch.setattr("agent.collectors.lbskew_services.MAX_BYTE_SERIES", 1)
    c = _collector(path_procfs=_procfs(tmp_path), lbskew_iptables_save_file=LAB_RULES)
    fams = await c.collect()
    exported = next(f for f in fams if f.name == "nodemedic_service_endpoint_bytes_total")
    entries = next(f for f in fams if f.name == "nodemedic_service_endpoint_conntrack_entries")
    assert len(exported.samples) == 1 < len(entries.samples)
    dropped = next(f for f in fams if f.name == "nodemedic_lbskew_byte_series_dropped")
    assert dropped.samples == [((), len(entries.samples) - 1)]


async def test_iptables_save_refusing_us_is_cannot_see(tmp_path: Path) -> None:
    """iptables-save run without the rights (its real message as non-root) is not a node
    without kube-proxy: the tick fails with CannotSee(permission), naming what to fix."""
    save = _script(tmp_path, "iptables-save",
                   'echo "iptables-save v1.8.7 (nf_tables): Could not fetch rule set generation '
                   'id: Permission denied (you must be root)" >&2; exit 4')
    c = _collector(path_procfs=_procfs(tmp_path), lbskew_iptables_save_command=save)
    with pytest.raises(CannotSee, match="must be root") as exc:
        await c.collect()
    assert exc.value.reason == "permission"


async def test_conntrack_refusing_us_makes_skew_missing_data(tmp_path: Path) -> None:
    """conntrack -L without CAP_NET_ADMIN: the chain audit is still exported, and the
    connection and skew metrics are unreadable (permission) instead of silently absent."""
    ct = _script(tmp_path, "conntrack",
                 'echo "conntrack v1.4.6 (conntrack-tools): Operation failed: operation not '
                 'permitted" >&2; exit 1')
    save = _script(tmp_path, "iptables-save", f"cat {LAB_RULES}")
    c = _collector(path_procfs=_procfs(tmp_path, conntrack=None),
                   lbskew_iptables_save_command=save, lbskew_conntrack_command=ct)
    fams = await c.collect()
    assert _values(fams, "nodemedic_service_endpoint_expected_share", **WEB)
    assert c.unreadable()["nodemedic_service_skewed"] == "permission"
    assert c.unreadable()["nodemedic_service_endpoint_connections"] == "permission"
    assert "nodemedic_service_chain_problems" not in c.unreadable()


def test_unreadable_proc_conntrack_makes_skew_missing_data() -> None:
    """/proc/net/nf_conntrack refused to us (EACCES, read as nobody in a forked child): the
    skew metrics are unreadable (permission)."""
    import os
    import tempfile

    if os.geteuid() != 0:
        pytest.fail("needs root to drop to nobody (run the unit tests as root, as CI does)")
    base = Path(tempfile.mkdtemp(prefix="nodemedic-lbskew-"))
    try:
        base.chmod(0o755)
        procfs = _procfs(base)
        for d in (procfs, procfs / "net"):
            d.chmod(0o755)
        (procfs / "net" / "nf_conntrack").chmod(0)
        rules = base / "rules.txt"
        shutil.copy(LAB_RULES, rules)
        rules.chmod(0o644)
        def work() -> dict[str, str]:
            c = _collector(path_procfs=procfs, lbskew_iptables_save_file=rules)
            asyncio.run(c.collect())
            return dict(c.unreadable())

        unreadable = as_nobody(work)
    finally:
        shutil.rmtree(base)
    assert unreadable.get("nodemedic_service_skewed") == "permission"
