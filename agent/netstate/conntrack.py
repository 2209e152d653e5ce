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

import functools
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

# How conntrack -L (no address-family columns) starts a line.
_PLAIN_PREFIXES = ("tcp ", "udp ", "udplite ", "sctp ", "dccp ", "icmp ", "icmpv6 ", "gre ",
                   "unknown ")

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
    """Where the tokens sit in one line layout (0-based, after a whitespace split)."""

    l3: bool  # leading "ipv4 2" columns (proc file, conntrack -o extended)
    stateful: bool  # a state column (TCP, SCTP, DCCP; not UDP)
    acct: bool  # packets=/bytes= after each tuple
    unreplied: bool  # "[UNREPLIED]" between the tuples

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

    def getter(self) -> Callable[[list[str]], _RawKey]:
        """C-level extraction of the raw key (state "" is filled in at fold time)."""
        proto, state, odst, odport, rsrc, rsport, _, _ = self.positions()
        idx = (proto, state, odst, odport, rsrc, rsport) if state >= 0 else (
            proto, odst, odport, rsrc, rsport
        )
        return itemgetter(*idx)

    def splitter(self) -> Callable[[str], list[str]]:
        """Split only as far as the last token needed (fewer string objects)."""
        pos = self.positions()
        return methodcaller("split", None, max(pos[5], pos[7]) + 1)


# Raw key as counted: (proto, state, "dst=...", "dport=...", "src=...", "sport=...") for
# stateful layouts, the same without the state for stateless ones.
_RawKey = tuple[str, ...]


class ConntrackAggregator:
    """Feed text in any chunking with :meth:`feed`, then call :meth:`finish`.

    Between feeds only the partial last line and one count per distinct raw key (per layout)
    are kept, so a table of 262,144 entries is processed in memory bounded by the block size
    and ``max_keys``. Raw keys are validated and folded into ``summary.flows`` at the end (or
    early when there are too many of them).
    """

    def __init__(self, max_keys: int = DEFAULT_MAX_KEYS) -> None:
        self._max_keys = max_keys
        self._rest = ""
        self._keys: dict[_RawKey, FlowKey | None] = {}
        self._raw: dict[_Layout, Counter[_RawKey]] = {}
        self._bytes: dict[_Layout, dict[_RawKey, int]] = {}
        self._pending = 0
        self._l3: bool | None = None  # format of this stream, from its first lines
        self.summary = ConntrackSummary()

    def feed(self, text: str) -> None:
        """Consume ``text``; a trailing partial line is kept for the next call.

        The chunk is split once; it is not copied into a block of whole lines. The line that
        straddles the previous chunk's end is joined from the kept remainder.
        """
        lines = text.split("\n")
        if len(lines) == 1:
            self._rest += text
            return
        head = self._rest + lines[0]
        lines[0] = head
        self._rest = lines.pop()
        self._scan(lines, text, head, self._rest)

    def finish(self) -> ConntrackSummary:
        """Process a final unterminated line, fold the counts and return the summary."""
        if self._rest:
            self._scan([self._rest], self._rest, self._rest, "")
            self._rest = ""
        self._fold()
        return self.summary

    # -- per block ---------------------------------------------------------------------------

    def _scan(self, lines: list[str], text: str, head: str, tail: str) -> None:
        """Count one block of whole lines (``text`` is the chunk they came from, ``head`` the
        first line, ``tail`` the chunk's unfinished last line, not in ``lines``).

        Each layout feature is first looked for in the whole chunk with one C-level substring
        search (plus the first line, which may straddle two chunks), so lines are filtered one
        by one only for features the block has. A count that comes out wrong at a chunk
        boundary only sends the block down the slower, exact path.
        """
        s = self.summary
        if "" in lines or any(map(str.isspace, lines)):
            lines = [ln for ln in lines if ln and not ln.isspace()]  # rare: blank lines
        n = len(lines)
        if not n:
            return
        s.lines += n
        # One table never mixes the proc format (leading "ipv4 2") with conntrack -L's; look at
        # a few lines so that one garbage line cannot decide the format of a whole block.
        if self._l3 is None:
            for ln in lines[:16]:
                if ln.startswith(("ipv4 ", "ipv6 ")):
                    self._l3 = True
                    break
                if ln.startswith(_PLAIN_PREFIXES):
                    self._l3 = False
                    break
        l3 = bool(self._l3)
        has_udp = "udp" in text or "udp" in head
        has_unrep = "[UNREPLIED]" in text or "[UNREPLIED]" in head
        acct_hits = text.count(" packets=") - tail.count(" packets=")
        if acct_hits == 0 and " packets=" not in head:
            self._count_fast(lines, l3, has_udp, has_unrep)
        elif acct_hits == 2 * n and head.count(" packets=") == 2:
            self._count_lines(lines, l3, has_udp, has_unrep)
        else:
            self._count_lines(list(filter(_has_acct, lines)), l3, has_udp, has_unrep)
            self._count_fast(list(filterfalse(_has_acct, lines)), l3, has_udp, has_unrep)
        if self._pending > 4 * self._max_keys:
            self._fold()

    def _count_fast(self, part: list[str], l3: bool, has_udp: bool, has_unrep: bool) -> None:
        """Count lines without byte counters entirely in C.

        The minority layouts (UDP without a state column, [UNREPLIED]) are picked out with
        C-level predicates; the dominant layout (stateful, replied) is counted through lazily
        chained ``filterfalse`` so no intermediate list is built. Each layout is counted into a
        per-block Counter first: a line too short for its layout (IndexError) then costs a
        line-by-line recount of that block only, never a double count.
        """
        if not part:
            return
        groups: list[tuple[_Layout, Iterable[str]]] = []
        main: Iterable[str] = part
        if has_udp:
            udp = list(filter(_is_stateless, part))
            if udp:
                unrep = list(filter(_is_unreplied, udp)) if has_unrep else []
                replied = list(filterfalse(_is_unreplied, udp)) if unrep else udp
                groups += [(_Layout(l3, False, False, True), unrep),
                           (_Layout(l3, False, False, False), replied)]
                main = filterfalse(_is_stateless, main)
        if has_unrep:
            unrep = list(filter(_is_unreplied, part))
            if has_udp:
                unrep = list(filterfalse(_is_stateless, unrep))
            groups.append((_Layout(l3, True, False, True), unrep))
            main = filterfalse(_is_unreplied, main)
        groups.append((_Layout(l3, True, False, False), main))
        counted: list[tuple[_Layout, Counter[_RawKey]]] = []
        try:
            for layout, lines in groups:
                counted.append(
                    (layout, Counter(map(layout.getter(), map(layout.splitter(), lines))))
                )
        except IndexError:
            self._count_lines(part, l3, has_udp, has_unrep, acct=False)
            return
        for layout, counts in counted:
            if counts:
                self._merge(layout, counts, None)

    def _count_lines(
        self, part: list[str], l3: bool, has_udp: bool, has_unrep: bool, *, acct: bool = True
    ) -> None:
        """Count line by line: lines with byte counters (a sum per key needs a Python loop),
        and blocks holding a line too short for its layout (counted malformed here).

        The lines are first split into disjoint layouts with C-level predicates, so the loop
        itself only splits, looks up fixed positions and adds.
        """
        groups: list[tuple[bool, list[str]]] = [(True, part)]
        if has_udp:
            groups = [(False, list(filter(_is_stateless, part))),
                      (True, list(filterfalse(_is_stateless, part)))]
        bad = 0
        for stateful, lines in groups:
            split_unrep = [(True, list(filter(_is_unreplied, lines))),
                           (False, list(filterfalse(_is_unreplied, lines)))] if has_unrep else [
                (False, lines)]
            for unreplied, chunk in split_unrep:
                if not chunk:
                    continue
                layout = _Layout(l3, stateful, acct, unreplied)
                pos = layout.positions()
                ob, rb = pos[6], pos[7]
                get, split = layout.getter(), layout.splitter()
                counts: dict[_RawKey, int] = {}
                sums: dict[_RawKey, int] = {}
                for t in map(split, chunk):
                    try:
                        key = get(t)
                        nbytes = int(t[ob][6:]) + int(t[rb][6:]) if acct else 0
                    except (IndexError, ValueError):
                        bad += 1
                        continue
                    counts[key] = counts.get(key, 0) + 1
                    sums[key] = sums.get(key, 0) + nbytes
                self._merge(layout, Counter(counts), sums if acct else None)
        self.summary.malformed_lines += bad

    def _merge(
        self, layout: _Layout, counts: Counter[_RawKey], sums: dict[_RawKey, int] | None
    ) -> None:
        raw = self._raw.setdefault(layout, Counter())
        raw.update(counts)
        self._pending = sum(map(len, self._raw.values()))
        if sums:
            acc = self._bytes.setdefault(layout, {})
            for k, v in sums.items():
                acc[k] = acc.get(k, 0) + v

    # -- validation and folding ----------------------------------------------------------------

    def _fold(self) -> None:
        """Validate each distinct raw key once and add its counts to ``summary.flows``."""
        s = self.summary
        flows = s.flows
        for layout, raw in self._raw.items():
            sums = self._bytes.get(layout, {})
            for rkey, n in raw.items():
                if n <= 0:
                    continue  # minority lines subtracted from the dominant layout
                vkey = rkey if layout.stateful else (rkey[0], "", *rkey[1:])
                if vkey in self._keys:
                    key = self._keys[vkey]
                else:
                    key = _validate(vkey)
                    if len(self._keys) < 2 * self._max_keys:  # bounded: garbage keys are unique
                        self._keys[vkey] = key
                if key is None:
                    if vkey[0] in NO_PORT_PROTOCOLS:
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
                state = vkey[1]
                if not state or state in ACTIVE_STATES:
                    tally.active += n
                nbytes = sums.get(rkey)
                if nbytes is not None:
                    s.accounting = True
                    tally.bytes += nbytes
        self._raw.clear()
        self._bytes.clear()
        self._pending = 0


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
    vip, ep = _norm_ip(odst[4:]), _norm_ip(rsrc[4:])
    if vip is None or ep is None:
        return None
    return proto, vip, int(dport), ep, int(sport)


@functools.lru_cache(maxsize=16384)
def _norm_ip(text: str) -> str | None:
    """Canonical spelling of an address (the proc file writes IPv6 in full); None if invalid.
    Cached: the same VIPs and endpoints come back in every state and every tick."""
    try:
        return str(ipaddress.ip_address(text))
    except ValueError:
        return None


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
