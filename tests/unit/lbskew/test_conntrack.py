"""Conntrack aggregation: both real formats, odd layouts, bad lines, bounds, chunking."""

from __future__ import annotations

from helpers_lbskew import ct_line, fixture
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agent.netstate.conntrack import ConntrackSummary, aggregate_text, read_chunks

WEB = ("tcp", "10.96.45.10", 80)


def _by_endpoint(summary: ConntrackSummary) -> dict[str, tuple[int, int, int]]:
    return {
        k[3]: (t.entries, t.active, t.bytes) for k, t in summary.flows.items() if k[:3] == WEB
    }


def test_lab_proc_file_counts_entries_active_and_bytes_per_endpoint() -> None:
    """The lab's /proc/net/nf_conntrack: 60 DNAT entries over 3 endpoints, bytes from acct."""
    s = aggregate_text(read_chunks(str(fixture("lab_kubeproxy_like_proc_net_nf_conntrack.txt"))))
    assert (s.lines, s.entries, s.dnat_entries, s.skipped_lines) == (60, 60, 60, 0)
    assert s.accounting
    assert _by_endpoint(s) == {
        "10.244.1.7": (23, 19, 29764),
        "10.244.2.7": (17, 8, 22628),
        "10.244.3.7": (20, 13, 26248),
    }


def test_conntrack_cli_extended_output_gives_the_same_result() -> None:
    """`conntrack -L -o extended` of the same table aggregates identically to the proc file."""
    proc = aggregate_text(read_chunks(str(fixture("lab_kubeproxy_like_proc_net_nf_conntrack.txt"))))
    cli = aggregate_text(read_chunks(str(fixture("lab_kubeproxy_like_conntrack_L_extended.txt"))))
    assert proc.flows == cli.flows
    assert cli.malformed_lines == 0


def test_plain_conntrack_l_without_nat_keeps_no_flows() -> None:
    """The Fedora Magazine capture (plain -L, TCP/UDP, UNREPLIED) parses, but nothing is DNATed."""
    s = aggregate_text(read_chunks(str(fixture("conntrack_L_fedora_magazine.txt"))))
    assert (s.entries, s.dnat_entries, s.skipped_lines) == (3, 0, 0)
    assert s.flows == {}


def test_mixed_layouts_in_one_block() -> None:
    """TCP with/without acct, UDP without state, UNREPLIED and both formats mix in one table."""
    text = (
        ct_line(sport=1)
        + ct_line(sport=2, acct=True)
        + ct_line(sport=3, proto="udp", state=None)
        + ct_line(sport=4, unreplied=True, state="SYN_SENT")
        + ct_line(sport=5, state="TIME_WAIT")
    )
    s = aggregate_text([text])
    assert s.entries == 5 and s.skipped_lines == 0
    tcp = s.flows[("tcp", "10.96.0.10", 80, "10.244.1.5", 8080)]
    assert (tcp.entries, tcp.active, tcp.bytes) == (4, 3, 1180)
    assert s.flows[("udp", "10.96.0.10", 80, "10.244.1.5", 8080)].active == 1


def test_malformed_truncated_and_icmp_lines_are_counted_and_skipped() -> None:
    """Garbage and a truncated last line are malformed; ICMP (no ports) is counted apart."""
    good = ct_line(sport=1) + ct_line(sport=2)
    icmp = (
        "ipv4     2 icmp     1 29 src=10.0.0.1 dst=10.0.0.2 type=8 code=0 id=7 src=10.0.0.2 "
        "dst=10.0.0.1 type=0 code=0 id=7 mark=0 use=1\n"
    )
    truncated = ct_line(sport=3)[:70]
    s = aggregate_text([good, "complete garbage\n", "\n", icmp, good.replace("dport=80", "dport=x"),
                        truncated])
    assert s.entries == 2
    assert s.unsupported_lines == 1
    assert s.malformed_lines == 4  # garbage, two bad dports, the truncated line
    assert s.lines == 7  # the blank line is neither an entry nor an error


def test_ipv6_addresses_are_normalised() -> None:
    """The proc file's long IPv6 form and the short form land on the same key."""
    long = ct_line(vip="fd00:0000:0000:0000:0000:0000:0000:000a", ep="fd00:0:0:0:0:0:1:5")
    s = aggregate_text([long.replace("ipv4     2", "ipv6     10")])
    assert list(s.flows) == [("tcp", "fd00::a", 80, "fd00::1:5", 8080)]


def test_key_bound_counts_dropped_entries() -> None:
    """Beyond max_keys distinct (VIP, endpoint) pairs, entries are dropped and counted."""
    text = "".join(ct_line(ep=f"10.244.0.{i}") for i in range(1, 11))
    s = aggregate_text([text], max_keys=4)
    assert len(s.flows) == 4
    assert s.dropped_entries == 6


@settings(max_examples=50, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.integers(min_value=1, max_value=400), min_size=1, max_size=30))
def test_chunking_does_not_change_the_result(cuts: list[int]) -> None:
    """However the text is split into chunks, the aggregate and every count are the same."""
    text = (
        "garbage line\n"
        + fixture("lab_kubeproxy_like_proc_net_nf_conntrack.txt").read_text()
        + ct_line(sport=1, proto="udp", state=None)
        + ct_line(sport=2, unreplied=True, state="SYN_SENT")
        + ct_line(sport=3, acct=True, unreplied=True)
    )
    chunks, pos = [], 0
    for c in cuts:
        chunks.append(text[pos : pos + c])
        pos += c
    chunks.append(text[pos:])
    whole = aggregate_text([text])
    parts = aggregate_text(chunks)
    assert parts.flows == whole.flows
    assert (parts.lines, parts.entries, parts.malformed_lines) == (whole.lines, 63, 1) == (
        64, whole.entries, whole.malformed_lines)


@settings(max_examples=200, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.one_of(
    st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=120),
    st.builds(ct_line, sport=st.integers(1, 65535), acct=st.booleans(), proc=st.booleans(),
              unreplied=st.booleans(), state=st.sampled_from([None, "ESTABLISHED", "X_Y"])),
    st.builds(lambda line, n: line[:n], st.builds(ct_line), st.integers(0, 200)),
), max_size=20))
def test_fuzzed_input_never_crashes_and_every_line_is_accounted_for(lines: list[str]) -> None:
    """Random text and mangled entries: no exception; entries + skipped == non-blank lines."""
    s = aggregate_text(lines)
    assert s.entries + s.skipped_lines == s.lines
    assert all(t.active <= t.entries for t in s.flows.values())


def test_short_line_inside_a_block_does_not_lose_its_neighbours() -> None:
    """A truncated line among good ones (one block): the good ones still count, once."""
    block = ct_line(sport=1) + "ipv4     2 tcp      6 117 ESTABLISHED src=10.1.0.9\n" + ct_line(
        sport=2, proto="udp", state=None) + ct_line(sport=3, unreplied=True)
    s = aggregate_text([block])
    assert (s.lines, s.entries, s.malformed_lines) == (4, 3, 1)
    assert sum(t.entries for t in s.flows.values()) == 3


def test_garbage_first_line_does_not_decide_the_format() -> None:
    """A table starting with a garbage line still reads its proc-format entries."""
    s = aggregate_text(["garbage\n" + "".join(ct_line(sport=i) for i in range(3))])
    assert (s.entries, s.malformed_lines) == (3, 1)
