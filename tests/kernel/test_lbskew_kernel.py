"""Real-kernel test of the lbskew collector: kube-proxy-style nat chains, real TCP, real conntrack.

Three backends run in network namespaces behind veth pairs (10.250.<i>.2, host side 10.250.<i>.1).
Three Service VIPs in 10.250.100.0/24 (reached only from this host through an OUTPUT-chain hook
limited to that range) get kube-proxy-style KUBE-SERVICES / KUBE-SVC-* / KUBE-SEP-* chains:
``balanced`` with kube-proxy's 1/3, 1/2 probabilities, ``broken`` with 0.8, 0.5 (shares .8/.1/.1)
and ``pinned`` whose long-lived connections were opened while it had one endpoint, before the
chain was rebuilt with three equal ones (a rollout that keep-alive clients never notice). Every
backend answers its own name on accept and keeps the connection open, so the test knows where
each connection went and compares with what the collector read from /proc/net/nf_conntrack and
``iptables-save``. Everything created is removed in ``finally``.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import sys
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.collectors.base import CollectorContext
from agent.collectors.lbskew import LbSkewCollector
from agent.settings import settings_for_tests
from agent.structs.metrics import Family

pytestmark = pytest.mark.root

TAG = f"nml{os.getpid() % 10000}"
BACKENDS = 3
VIPS = {"balanced": "10.250.100.1", "broken": "10.250.100.2", "pinned": "10.250.100.3"}
CONNS = {"balanced": 90, "broken": 90, "pinned": 60}
ACCT = Path("/proc/sys/net/netfilter/nf_conntrack_acct")

SERVER = r"""
import socket, sys, threading
name = sys.argv[1].encode() + b"\n"
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("0.0.0.0", 8080))
s.listen(1024)
print("ready", flush=True)
def serve(c):
    try:
        c.sendall(name)
        while c.recv(4096):
            pass
    finally:
        c.close()
while True:
    c, _ = s.accept()
    threading.Thread(target=serve, args=(c,), daemon=True).start()
"""


def _run(*argv: str) -> None:
    subprocess.run(argv, check=True, capture_output=True, timeout=20)


def _quiet(*argv: str) -> None:
    subprocess.run(argv, check=False, capture_output=True, timeout=20)


def _skip_reason() -> str | None:
    if sys.platform != "linux" or os.geteuid() != 0:
        return "needs root on Linux (network namespaces, iptables nat, conntrack)"
    for tool in ("ip", "iptables", "iptables-save"):
        if shutil.which(tool) is None:
            return f"{tool} is not installed"
    nat = subprocess.run(["iptables", "-t", "nat", "-S"], capture_output=True, text=True)
    if nat.returncode != 0:
        return f"iptables nat table unusable: {nat.stderr.strip()[:120]}"
    if "-N KUBE-SERVICES" in nat.stdout:
        return "a KUBE-SERVICES chain already exists (kube-proxy runs here); not touching it"
    probe = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True)
    if probe.returncode != 0:
        return f"ip netns unusable: {probe.stderr.strip()[:120]}"
    return None


def _chain(svc: str, probs: list[float | None], comment_svc: str) -> list[list[str]]:
    """iptables argv lists for a KUBE-SVC chain jumping to the backends with ``probs``."""
    rules = []
    for i, p in enumerate(probs, start=1):
        ep = f"10.250.{i}.2:8080"
        stat = ["-m", "statistic", "--mode", "random", "--probability", f"{p:.11f}"] if p else []
        rules.append([
            "-A", f"KUBE-SVC-{TAG}{svc[:2].upper()}",
            "-m", "comment", "--comment", f"{comment_svc} -> {ep}",
            *stat, "-j", f"KUBE-SEP-{TAG}{i}",
        ])
    return rules


@contextlib.contextmanager
def lab() -> Iterator[None]:
    """Namespaces, veths, backends and nat chains; all removed on exit, whatever happened."""
    procs: list[subprocess.Popen[bytes]] = []
    acct_before = ACCT.read_text().strip() if ACCT.exists() else None
    try:
        if ACCT.exists():
            ACCT.write_text("1\n")  # bytes per entry; restored below
        for i in range(1, BACKENDS + 1):
            ns, host_if = f"{TAG}b{i}", f"{TAG}h{i}"
            _run("ip", "netns", "add", ns)
            _run("ip", "link", "add", host_if, "type", "veth", "peer", "name", "eth0", "netns", ns)
            _run("ip", "addr", "add", f"10.250.{i}.1/24", "dev", host_if)
            _run("ip", "link", "set", host_if, "up")
            _run("ip", "-n", ns, "addr", "add", f"10.250.{i}.2/24", "dev", "eth0")
            _run("ip", "-n", ns, "link", "set", "eth0", "up")
            _run("ip", "-n", ns, "link", "set", "lo", "up")
            _run("ip", "-n", ns, "route", "add", "default", "via", f"10.250.{i}.1")
            proc = subprocess.Popen(
                ["ip", "netns", "exec", ns, sys.executable, "-c", SERVER, f"b{i}"],
                stdout=subprocess.PIPE,
            )
            procs.append(proc)
            assert proc.stdout is not None
            assert proc.stdout.readline().strip() == b"ready"
        # The VIPs exist nowhere; a route makes connect() reach OUTPUT, where DNAT picks a backend.
        _run("ip", "route", "add", "10.250.100.0/24", "dev", f"{TAG}h1", "src", "10.250.1.1")
        _run("iptables", "-t", "nat", "-N", "KUBE-SERVICES")
        _run("iptables", "-t", "nat", "-A", "OUTPUT", "-d", "10.250.100.0/24",
             "-m", "comment", "--comment", "kubernetes service portals", "-j", "KUBE-SERVICES")
        for i in range(1, BACKENDS + 1):
            sep = f"KUBE-SEP-{TAG}{i}"
            _run("iptables", "-t", "nat", "-N", sep)
            _run("iptables", "-t", "nat", "-A", sep, "-p", "tcp", "-m", "comment", "--comment",
                 "nmtest", "-m", "tcp", "-j", "DNAT", "--to-destination", f"10.250.{i}.2:8080")
        for svc, vip in VIPS.items():
            chain = f"KUBE-SVC-{TAG}{svc[:2].upper()}"
            _run("iptables", "-t", "nat", "-N", chain)
            _run("iptables", "-t", "nat", "-A", "KUBE-SERVICES", "-d", f"{vip}/32", "-p", "tcp",
                 "-m", "comment", "--comment", f"nmtest/{svc}:http cluster IP",
                 "-m", "tcp", "--dport", "80", "-j", chain)
        yield
    finally:
        for proc in procs:
            proc.kill()
            proc.wait(timeout=10)
        _quiet("iptables", "-t", "nat", "-D", "OUTPUT", "-d", "10.250.100.0/24",
               "-m", "comment", "--comment", "kubernetes service portals", "-j", "KUBE-SERVICES")
        chains = ["KUBE-SERVICES"] + [f"KUBE-SVC-{TAG}{s[:2].upper()}" for s in VIPS]
        chains += [f"KUBE-SEP-{TAG}{i}" for i in range(1, BACKENDS + 1)]
        for chain in chains:
            _quiet("iptables", "-t", "nat", "-F", chain)
        for chain in chains:
            _quiet("iptables", "-t", "nat", "-X", chain)
        _quiet("ip", "route", "del", "10.250.100.0/24")
        for i in range(1, BACKENDS + 1):
            _quiet("ip", "link", "del", f"{TAG}h{i}")
            _quiet("ip", "netns", "del", f"{TAG}b{i}")
        if acct_before is not None:
            ACCT.write_text(acct_before + "\n")


def _set_chain(svc: str, probs: list[float | None], n_endpoints: int) -> None:
    chain = f"KUBE-SVC-{TAG}{svc[:2].upper()}"
    _run("iptables", "-t", "nat", "-F", chain)
    for rule in _chain(svc, probs[:n_endpoints], f"nmtest/{svc}:http"):
        _run("iptables", "-t", "nat", *rule)


def _connect(vip: str, n: int, socks: list[socket.socket]) -> Counter[str]:
    """Open ``n`` connections to vip:80 and keep them; return how many each backend answered."""
    seen: Counter[str] = Counter()
    for _ in range(n):
        s = socket.create_connection((vip, 80), timeout=5)
        socks.append(s)
        name = s.recv(16).decode().strip()
        seen[name] += 1
    return seen


def _series(fams: list[Family], name: str, **labels: str) -> dict[str, float]:
    """endpoint (or '' for Service-level series) -> value, for one Service."""
    out: dict[str, float] = {}
    for fam in fams:
        if fam.name != name:
            continue
        for lbls, value in fam.series():
            if all(lbls.get(k) == v for k, v in labels.items()):
                out[lbls.get("endpoint", lbls.get("problem", ""))] = value
    return out


@pytest.fixture(scope="module")
def collected() -> Iterator[tuple[list[Family], dict[str, Counter[str]]]]:
    """Build the lab, drive the connections, collect once; tear everything down after."""
    reason = _skip_reason()
    if reason:
        pytest.skip(reason)
    socks: list[socket.socket] = []
    try:
        with lab():
            _set_chain("balanced", [1 / 3, 1 / 2, None], 3)
            _set_chain("broken", [0.8, 0.5, None], 3)
            _set_chain("pinned", [None], 1)  # one endpoint while the clients connect
            made = {svc: _connect(vip, CONNS[svc], socks) for svc, vip in VIPS.items()}
            _set_chain("pinned", [1 / 3, 1 / 2, None], 3)  # rollout: now three, evenly
            settings = settings_for_tests(lbskew_min_samples=30, collector_timeout=20.0)
            import asyncio

            fams = asyncio.run(LbSkewCollector(CollectorContext(settings)).collect())
            yield fams, made
    finally:
        for s in socks:
            s.close()


def _backend(endpoint: str) -> str:
    return "b" + endpoint.split(".")[2]


def test_per_endpoint_connections_match_the_connections_made(
    collected: tuple[list[Family], dict[str, Counter[str]]],
) -> None:
    """Each endpoint's active connections equal the connections its backend accepted."""
    fams, made = collected
    for svc in VIPS:
        got = _series(fams, "nodemedic_service_endpoint_connections", namespace="nmtest",
                      service=svc, port="http")
        assert {_backend(ep): int(v) for ep, v in got.items() if v} == dict(made[svc]), svc
        total = _series(fams, "nodemedic_service_connections", service=svc)[""]
        assert total == CONNS[svc]


def test_balanced_service_is_not_flagged(
    collected: tuple[list[Family], dict[str, Counter[str]]],
) -> None:
    """kube-proxy's 1/3, 1/2 chain: equal expected shares, no chain problem, not skewed."""
    fams, _ = collected
    shares = _series(fams, "nodemedic_service_endpoint_expected_share", service="balanced")
    assert sorted(round(v, 6) for v in shares.values()) == [0.333333] * 3
    assert _series(fams, "nodemedic_service_chain_problems", service="balanced") == {}
    assert _series(fams, "nodemedic_service_skew_samples_sufficient", service="balanced") == {
        "": 1.0
    }
    assert _series(fams, "nodemedic_service_skewed", service="balanced") == {"": 0.0}


def test_broken_chain_is_flagged_and_blamed_on_the_rules(
    collected: tuple[list[Family], dict[str, Counter[str]]],
) -> None:
    """0.8/0.5 probabilities: shares .8/.1/.1 reported as a chain problem and the Service skewed,
    while the traffic matches the (broken) rules."""
    fams, _ = collected
    shares = _series(fams, "nodemedic_service_endpoint_expected_share", service="broken")
    assert sorted(round(v, 6) for v in shares.values()) == [0.1, 0.1, 0.8]
    problems = _series(fams, "nodemedic_service_chain_problems", service="broken")
    assert problems.get("unequal_shares") == 3
    assert _series(fams, "nodemedic_service_skewed", service="broken") == {"": 1.0}
    assert _series(fams, "nodemedic_service_skew_max_mean_ratio", service="broken")[""] >= 1.5
    # Traffic follows the rules: the rules' own test does not reject (fails ~1 run in 10^6).
    assert _series(fams, "nodemedic_service_skew_chi2_p_value", service="broken")[""] > 1e-6


def test_pinned_connections_are_flagged_and_blamed_on_the_traffic(
    collected: tuple[list[Family], dict[str, Counter[str]]],
) -> None:
    """Connections opened before a rollout stay on one backend: an even chain, skewed traffic."""
    fams, made = collected
    assert made["pinned"] == Counter({"b1": CONNS["pinned"]})
    assert _series(fams, "nodemedic_service_chain_problems", service="pinned") == {}
    assert _series(fams, "nodemedic_service_skewed", service="pinned") == {"": 1.0}
    assert _series(fams, "nodemedic_service_skew_max_mean_ratio", service="pinned")[""] == 3.0
    assert _series(fams, "nodemedic_service_skew_chi2_p_value", service="pinned")[""] < 1e-9


def test_kernel_sources_and_bytes_are_reported(
    collected: tuple[list[Family], dict[str, Counter[str]]],
) -> None:
    """The collector says it read iptables-save and /proc/net/nf_conntrack, and counts bytes."""
    fams, _ = collected
    info = next(f for f in fams if f.name == "nodemedic_lbskew_source_info")
    labels = dict(next(iter(info.series()))[0])
    assert labels["rules"] == "iptables-save"
    assert labels["conntrack"] == "proc"
    if ACCT.exists():
        got = _series(fams, "nodemedic_service_endpoint_bytes_total", service="balanced")
        assert all(v > 0 for v in got.values()) and len(got) == 3
