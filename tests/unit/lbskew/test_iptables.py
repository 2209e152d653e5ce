"""kube-proxy nat chains: the real AKS capture, the lab and docs captures, and audited faults."""

from __future__ import annotations

from helpers_lbskew import fixture
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agent.netstate.iptables import ServicePort, parse_iptables_save


def _chain(probs: list[str | None], dnat: bool = True) -> list[str]:
    lines = [
        "*nat",
        ":KUBE-SERVICES - [0:0]",
        '-A KUBE-SERVICES -d 10.96.0.5/32 -p tcp -m comment --comment "ns/app:http cluster IP" '
        "-m tcp --dport 80 -j KUBE-SVC-APP",
    ]
    for i, p in enumerate(probs, start=1):
        stat = f" -m statistic --mode random --probability {p}" if p else ""
        lines.append(f'-A KUBE-SVC-APP -m comment --comment "ns/app:http"{stat} -j KUBE-SEP-{i}')
        if dnat:
            lines.append(f"-A KUBE-SEP-{i} -p tcp -m tcp -j DNAT --to-destination 10.1.0.{i}:8080")
    return [*lines, "COMMIT"]


def test_every_service_of_the_aks_capture_is_parsed_with_equal_shares() -> None:
    """All 40 ClusterIP jumps of the real AKS node resolve to chains with DNATed endpoints and
    the 1/3, 1/2 probabilities give every endpoint exactly its fair share."""
    rules = parse_iptables_save(fixture("iptables_save_t_nat_aks_node_2022_extracted.txt").open())
    assert rules.has_kube_services and rules.skipped_lines == 0
    assert len(rules.services) == 40
    for svc in rules.services:
        assert svc.service is not None and svc.endpoints, svc.chain
        assert all(e.address for e in svc.endpoints), svc.chain
        assert svc.problems() == {}, svc.chain
        assert abs(sum(e.share for e in svc.endpoints) - 1.0) < 1e-9
    npm = rules.by_vip()[("tcp", "10.0.82.246", 9000)]
    assert npm.service == ServicePort("kube-system", "npm-metrics-cluster-service", "")
    assert [e.address for e in npm.endpoints] == [
        "10.224.0.35:10091", "10.224.0.4:10091", "10.224.0.66:10091"
    ]
    assert [round(e.share, 9) for e in npm.endpoints] == [0.333333333] * 3
    dns = rules.by_vip()[("udp", "10.0.0.10", 53)]
    assert dns.service == ServicePort("kube-system", "kube-dns", "dns")
    assert [e.share for e in dns.endpoints] == [0.5, 0.5]


def test_full_dump_with_other_tables_gives_the_same_services() -> None:
    """The full iptables-save (mangle, filter, security too) yields exactly the nat services."""
    full = parse_iptables_save(fixture("iptables_save_aks_node_full_2022.txt").open())
    nat = parse_iptables_save(fixture("iptables_save_t_nat_aks_node_2022_extracted.txt").open())
    assert full.by_vip().keys() == nat.by_vip().keys()


def test_lab_and_old_docs_captures() -> None:
    """The lab chain and the docs' old-style 0.33332999982 probabilities both count as equal."""
    lab = parse_iptables_save(fixture("lab_kubeproxy_like_iptables_save_nat.txt").open())
    (web,) = lab.services
    assert (web.vip, web.port, web.protocol) == ("10.96.45.10", 80, "tcp")
    assert web.service == ServicePort("shop", "web", "http") and web.problems() == {}
    docs = parse_iptables_save(fixture("iptables_save_grep_service_k8s_docs.txt").open())
    (host,) = docs.services
    assert host.service == ServicePort("default", "hostnames", "")
    assert len(host.endpoints) == 3 and host.problems() == {}


def test_skewed_probabilities_are_reported_as_unequal_shares() -> None:
    """0.8 then 0.5 gives shares .8/.1/.1: every endpoint is off its 1/3 share."""
    (svc,) = parse_iptables_save(_chain(["0.8", "0.5", None])).services
    assert [round(e.share, 9) for e in svc.endpoints] == [0.8, 0.1, 0.1]
    assert svc.problems() == {"unequal_shares": 3}


def test_fallthrough_unreachable_and_missing_dnat_are_reported() -> None:
    """A last rule with p<1 leaks connections; rules after p=1 are dead; SEPs need a DNAT."""
    (leak,) = parse_iptables_save(_chain(["0.5", "0.5"])).services
    assert leak.problems()["fallthrough"] == 1
    (dead,) = parse_iptables_save(_chain([None, None])).services
    assert dead.problems() == {"unequal_shares": 2, "unreachable_endpoint": 1}
    (nodnat,) = parse_iptables_save(_chain(["0.5", None], dnat=False)).services
    assert nodnat.problems() == {"missing_dnat": 2}


def test_endpoints_missing_from_the_slices_are_stale() -> None:
    """Given the EndpointSlice addresses, chain endpoints not among them are stale."""
    (svc,) = parse_iptables_save(_chain(["0.5", None])).services
    assert svc.problems({"10.1.0.1:8080"}) == {"stale_endpoint": 1}
    assert svc.problems({"10.1.0.1:8080", "10.1.0.2:8080"}) == {}


def test_no_kube_services_chain_means_no_kube_proxy() -> None:
    """A plain host's nat table has no KUBE-SERVICES chain and no Services."""
    rules = parse_iptables_save(["*nat", ":PREROUTING ACCEPT [0:0]", "COMMIT"])
    assert not rules.has_kube_services and rules.services == []


def test_unreadable_rules_are_counted() -> None:
    """A bad probability, a bad DNAT target and a jump without a VIP are skipped and counted."""
    lines = _chain(["0.5", None])
    lines.insert(-1, "-A KUBE-SVC-APP -m statistic --mode random --probability 1.5 -j KUBE-SEP-9")
    lines.insert(-1, "-A KUBE-SEP-8 -p tcp -j DNAT --to-destination nonsense")
    lines.insert(-1, "-A KUBE-SERVICES -p tcp --dport 81 -j KUBE-SVC-XYZ")
    rules = parse_iptables_save(lines)
    assert rules.skipped_lines == 3
    assert len(rules.services) == 1


@settings(max_examples=200, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.one_of(
    st.text(max_size=150),
    st.sampled_from(_chain(["0.3", "0.5", None])),
    st.builds(lambda s, n: s[:n], st.sampled_from(_chain(["0.3", "0.5", None])),
              st.integers(0, 160)),
), max_size=25))
def test_fuzzed_rules_never_crash(lines: list[str]) -> None:
    """Random and truncated rule lines: no exception, shares stay within [0, 1]."""
    rules = parse_iptables_save(lines)
    for svc in rules.services:
        assert all(0.0 <= e.share <= 1.0 for e in svc.endpoints)
        svc.problems()
