"""Streaming aggregation of conntrack entries into counts per (protocol, VIP, port, endpoint).

Called by agent.collectors.lbskew (in a worker thread) on /proc/net/nf_conntrack or on the output
of ``conntrack -L [-o extended]``; both print one entry per line in the same tuple syntax, the
proc file (and ``-o extended``) with a leading ``ipv4 2`` column. Only DNATed entries are kept
(reply-direction source != original destination): that is kube-proxy's choice of endpoint for a
connection to a VIP. Memory is proportional to the number of distinct (VIP, endpoint) pairs,
bounded by ``max_keys``; entries beyond the bound are counted as dropped. Lines that are not a
whole entry (malformed, truncated) are counted and skipped; entries without ports (ICMP, GRE) are
counted as unsupported.

Speed: a node's table can hold nf_conntrack_max = 262,144 entries and the collector runs every
tick, so the hot path avoids a Python-level loop per line. Lines are partitioned by layout with
C-level string predicates (is there a state column, packet counters, ``[UNREPLIED]``), the
tokens of each layout sit at fixed positions, and ``Counter(map(itemgetter(...), ...))`` counts
the distinct (state, VIP, endpoint) keys in C. Each distinct key is validated afterwards, so a
line whose tokens are not where its layout says is caught and counted as malformed. Byte counters
(nf_conntrack_acct=1) need a sum per key and take a Python loop over those lines.
"""

from __future__ import annotations

import ipaddress
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from itertools import filterfalse
from operator import itemgetter, methodcaller

# TCP/SCTP/DCCP states in which a connection still carries traffic; UDP entries have no state
# and count as active while they exist.
ACTIVE_STATES = frozenset(
    {"ESTABLISHED", "SYN_SENT", "SYN_RECV", "SYN_SENT2", "COOKIE_WAIT", "COOKIE_ECHOED", "OPEN"}
)

DEFAULT_MAX_KEYS = 65536
CHUNK_CHARS = 1 << 20

# Both formats pad the protocol names: "ipv4     2 udp      17 30 src=..." / "udp      17 30 ...".
_L3 = ("ipv4     2 ", "ipv6     10 ")
_STATELESS = ("udp ", "udplite ")
_STATELESS_PREFIXES = _STATELESS + tuple(a + b for a in _L3 for b in _STATELESS)
# Entries of these protocols have no ports (type/code/id or GRE keys): not Service traffic.
NO_PORT_PROTOCOLS = frozenset({"icmp", "icmpv6", "gre", "unknown"})

_is_stateless = methodcaller("startswith", _STATELESS_PREFIXES)
_has_acct = methodcaller("__contains__", " packets=")
_is_unreplied = methodcaller("__contains__", "[UNREPLIED]")


@dataclass(slots=True)
class EndpointTally:
    """What conntrack shows for one (protocol, VIP, port) -> endpoint pair."""

    entries: int = 0  # all entries, including TIME_WAIT/CLOSE (recent endpoint choices)
    active: int = 0  # entries in ACTIVE_STATES (or stateless UDP)
    bytes: int = 0  # both directions; 0 unless nf_conntrack_acct=1


# (protocol, VIP ip, VIP port, endpoint ip, endpoint port); IPs normalised by ipaddress.
FlowKey = tuple[str, str, int, str, int]


@dataclass(slots=True)
class ConntrackSummary:
    """Aggregated result of one scan of the conntrack table."""

    flows: dict[FlowKey, EndpointTally] = field(default_factory=dict)
    lines: int = 0  # non-blank lines seen
    entries: int = 0  # lines that parsed as an entry with ports
    dnat_entries: int = 0  # of those, entries whose reply source differs (DNATed)
    malformed_lines: int = 0  # truncated or not in conntrack's syntax (a line, not a key)
    unsupported_lines: int = 0  # whole entries without ports (ICMP, GRE)
    dropped_entries: int = 0  # DNAT entries not aggregated because max_keys was reached
    accounting: bool = False  # True when any entry carried packets/bytes counters

    @property
    def skipped_lines(self) -> int:
        return self.malformed_lines + self.unsupported_lines


@dataclass(frozen=True, slots=True)
class _Layout:
    """Token positions of one line layout (0-based, after whitespace split)."""

    l3: bool
    stateful: bool
    acct: bool
    unreplied: bool

    def positions(self) -> tuple[int, int, int, int, int, int, int, int]:
        """(proto, state, orig dst, orig dport, reply src, reply sport, orig bytes, reply bytes);
        state/bytes are -1 when the layout has none."""
        base = 2 if self.l3 else 0
        state = base + 3 if self.stateful else -1
        orig = base + 4 if self.stateful else base + 3
        reply = orig + 4 + (2 if self.acct else 0) + (1 if self.unreplied else 0)
        obytes = orig + 5 if self.acct else -1
        rbytes = reply + 5 if self.acct else -1
        return base, state, orig + 1, orig + 3, reply, reply + 2, obytes, rbytes


# Raw key as counted: (proto, state or "", "dst=...", "dport=...", "src=...", "sport=...").
_RawKey = tuple[str, str, str, str, str, str]


def _partition(
    pred: Callable[[str], bool], lines: list[str]
) -> tuple[list[str], list[str]]:
    return list(filter(pred, lines)), list(filterfalse(pred, lines))


def _split_if(
    pred: Callable[[str], bool], lines: list[str], some: bool, every: bool
) -> Iterator[tuple[bool, list[str]]]:
    """Yield (True, lines where pred holds) and (False, the others), skipping empty parts.

    ``some``/``every`` come from one substring count over the whole block: when no line or
    every line has the feature, the lines are not filtered one by one. A line put in the wrong
    part anyway fails the token validation and is counted as malformed.
    """
    if not lines:
        return
    if not some:
        yield False, lines
        return
    if every:
        yield True, lines
        return
    yes, no = _partition(pred, lines)
    if yes:
        yield True, yes
    if no:
        yield False, no


class ConntrackAggregator:
    """Feed text in any chunking with :meth:`feed`, then call :meth:`finish`.

    Only the partial last line is kept between feeds plus one tally per key, so a table of
    262,144 entries is processed in memory bounded by the chunk size and ``max_keys``.
    """

    def __init__(self, max_keys: int = DEFAULT_MAX_KEYS) -> None:
        self._max_keys = max_keys
        self._rest = ""
        self._keys: dict[tuple[str, str, str, str, str, str], FlowKey | None] = {}
        self.summary = ConntrackSummary()

    def feed(self, text: str) -> None:
        """Consume ``text``; a trailing partial line is kept for the next call."""
        cut = text.rfind("\n")
        if cut < 0:
            self._rest += text
            return
        block = self._rest + text[:cut]
        self._rest = text[cut + 1 :]
        self._scan(block)

    def finish(self) -> ConntrackSummary:
        """Process a final unterminated line and return the summary."""
        if self._rest:
            self._scan(self._rest)
            self._rest = ""
        return self.summary

    # -- internals -------------------------------------------------------------------------

    def _scan(self, block: str) -> None:
        """Partition one block of whole lines by layout and count each part.

        Each layout feature is first looked for in the whole block with one C-level substring
        search; lines are only filtered one by one when the block mixes layouts. Lines without
        ports (ICMP, GRE) and truncated ones fall through to the token validation in _fold.
        """
        s = self.summary
        lines = block.split("\n")
        if "" in lines or "\n \n" in block or block.isspace():
            lines = [ln for ln in lines if ln and not ln.isspace()]
        n = len(lines)
        s.lines += n
        if not n:
            return
        # One table never mixes the proc format (leading "ipv4 2") with conntrack -L's.
        l3 = lines[0].startswith("ipv")
        acct_hits = block.count(" packets=")
        unrep_hits = block.count("[UNREPLIED]")
        for stateless, b in _split_if(_is_stateless, lines, "udp" in block, False):
            for acct, c in _split_if(_has_acct, b, acct_hits > 0, acct_hits == 2 * n):
                for unrep, d in _split_if(_is_unreplied, c, unrep_hits > 0, unrep_hits == n):
                    self._count(_Layout(l3, not stateless, acct, unrep), d)

    def _count(self, layout: _Layout, lines: list[str]) -> None:
        proto, state, odst, odport, rsrc, rsport, obytes, rbytes = layout.positions()
        idx = (proto, state, odst, odport, rsrc, rsport) if state >= 0 else (
            proto, odst, odport, rsrc, rsport
        )
        get = itemgetter(*idx)
        split = methodcaller("split", None, max(rsport, rbytes) + 1)
        counts: Counter[_RawKey]
        byte_sums: dict[_RawKey, int] = {}
        stateless = state < 0
        if layout.acct:
            counts, byte_sums, bad = _count_with_bytes(lines, split, get, obytes, rbytes)
        else:
            try:
                counts = Counter(map(get, map(split, lines)))
            except IndexError:  # a short line in this layout: redo line by line
                counts, bad = _count_slow(lines, split, get)
            else:
                bad = 0
        self.summary.malformed_lines += bad
        self._fold(counts, byte_sums, stateless)

    def _fold(
        self,
        counts: Counter[_RawKey],
        byte_sums: dict[_RawKey, int],
        stateless: bool,
    ) -> None:
        s = self.summary
        flows = s.flows
        for raw, n in counts.items():
            if stateless:
                proto, odst, odport, rsrc, rsport = raw[:5]
                state = ""
            else:
                proto, state, odst, odport, rsrc, rsport = raw
            vkey = (proto, state, odst, odport, rsrc, rsport)
            if vkey in self._keys:
                key = self._keys[vkey]
            else:
                key = _validate(vkey)
                if len(self._keys) < 2 * self._max_keys:  # bounded: garbage keys are unique
                    self._keys[vkey] = key
            if key is None:
                if proto in NO_PORT_PROTOCOLS:
                    s.unsupported_lines += n
                else:
                    s.malformed_lines += n
                continue
            s.entries += n
            if key[1] == key[3] and key[2] == key[4]:
                continue  # not DNATed: not a Service connection
            s.dnat_entries += n
            tally = flows.get(key)
            if tally is None:
                if len(flows) >= self._max_keys:
                    s.dropped_entries += n
                    continue
                tally = flows[key] = EndpointTally()
            tally.entries += n
            if not state or state in ACTIVE_STATES:
                tally.active += n
            nbytes = byte_sums.get(raw)
            if nbytes is not None:
                s.accounting = True
                tally.bytes += nbytes


def _count_slow(
    lines: list[str], split: Callable[[str], list[str]], get: Callable[[list[str]], _RawKey]
) -> tuple[Counter[_RawKey], int]:
    counts: Counter[_RawKey] = Counter()
    bad = 0
    for line in lines:
        try:
            counts[get(split(line))] += 1
        except IndexError:
            bad += 1
    return counts, bad


def _count_with_bytes(
    lines: list[str],
    split: Callable[[str], list[str]],
    get: Callable[[list[str]], _RawKey],
    obytes: int,
    rbytes: int,
) -> tuple[Counter[_RawKey], dict[_RawKey, int], int]:
    """Count keys and sum both directions' bytes= per key (the one per-line Python loop)."""
    counts: dict[_RawKey, int] = {}
    sums: dict[_RawKey, int] = {}
    bad = 0
    for t in map(split, lines):
        try:
            key = get(t)
            nbytes = int(t[obytes][6:]) + int(t[rbytes][6:])
        except (IndexError, ValueError):
            bad += 1
            continue
        counts[key] = counts.get(key, 0) + 1
        sums[key] = sums.get(key, 0) + nbytes
    return Counter(counts), sums, bad


def _validate(raw: _RawKey) -> FlowKey | None:
    """Check that each token is what its position says and return the normalised key."""
    proto, state, odst, odport, rsrc, rsport = raw
    if not (
        odst.startswith("dst=")
        and odport.startswith("dport=")
        and rsrc.startswith("src=")
        and rsport.startswith("sport=")
        and proto.isalpha()
        and (not state or state.replace("_", "").isalpha())
    ):
        return None
    dport, sport = odport[6:], rsport[6:]
    if not (dport.isdigit() and sport.isdigit()):
        return None
    try:
        vip = str(ipaddress.ip_address(odst[4:]))
        ep = str(ipaddress.ip_address(rsrc[4:]))
    except ValueError:
        return None
    return proto, vip, int(dport), ep, int(sport)


def aggregate_text(chunks: Iterable[str], max_keys: int = DEFAULT_MAX_KEYS) -> ConntrackSummary:
    """Aggregate conntrack text given as an iterable of chunks (lines or blocks of any size)."""
    agg = ConntrackAggregator(max_keys)
    for chunk in chunks:
        agg.feed(chunk)
    return agg.finish()


def read_chunks(path: str, chunk_chars: int = CHUNK_CHARS) -> Iterator[str]:
    """Yield a text file in blocks of ``chunk_chars`` (bounded memory for huge tables)."""
    with open(path, encoding="ascii", errors="replace") as fh:
        while block := fh.read(chunk_chars):
            yield block
