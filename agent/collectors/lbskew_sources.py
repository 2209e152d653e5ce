"""Reading kube-proxy's state for the ``lbskew`` collector: the nat rules and the conntrack CLI.

Called by agent.collectors.lbskew in its worker thread. The nat rules come from a file (parsed
again only when its stat changes) or from ``iptables-save -t nat`` (output capped at
MAX_RULES_BYTES); ``conntrack -L -o extended`` is streamed into the aggregator of
agent.netstate.conntrack. Both commands run through agent.subproc (no shell, killed as a group at
the collector's deadline). A tool that is missing means a node without kube-proxy (no data, no
error); a tool refused to us raises CannotSee (reason permission).
"""

from __future__ import annotations

import codecs
import os
import time
from collections.abc import Callable
from dataclasses import dataclass

from agent import subproc
from agent.collectors.base import CannotSee
from agent.netstate import conntrack
from agent.netstate.iptables import NatRules, parse_iptables_save

# iptables-save of a large cluster is tens of MB; refuse runaway output instead of holding it.
MAX_RULES_BYTES = 256 << 20


@dataclass(slots=True)
class RulesRead:
    """One successful read of the nat rules, kept for the following ticks."""

    origin: str  # which source it came from: a cached read of another source is never served
    rules: NatRules | None  # None: no kube-proxy rules (tool missing or not permitted, no chain)
    source: str  # nodemedic_lbskew_source_info's rules label: iptables-save, file or none
    skipped: int  # malformed lines of that parse
    at: float  # clock() when read, or when the file's stat last showed it unchanged
    file_key: tuple[int, int, int] | None = None  # (inode, mtime ns, size) of the file read


def read_rules_file(
    path: os.PathLike[str],
    origin: str,
    cached: RulesRead | None,
    now: float,
    *,
    every_tick: bool,
) -> RulesRead:
    """Parse the rules file, or confirm the cached parse with a stat when it is unchanged."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return RulesRead(origin, None, "none", 0, now)
    key = (st.st_ino, st.st_mtime_ns, st.st_size)
    if cached is not None and cached.file_key == key and not every_tick:
        cached.at = now
        return cached
    try:
        with open(path, encoding="utf-8", errors="replace") as fh:
            rules = parse_iptables_save(fh)
    except FileNotFoundError:  # removed between the stat and the open
        return RulesRead(origin, None, "none", 0, now)
    # The key is from before the read: a write during it changes the stat, so the next
    # tick reads again rather than keeping a torn read forever.
    kube = rules if rules.has_kube_services else None
    return RulesRead(origin, kube, "file", rules.skipped_lines, now, key)


def run_iptables_save(command: str, origin: str, now: float, deadline: float) -> RulesRead:
    """Run ``<command> -t nat`` and parse it (no rules when the tool is missing)."""
    argv = [command, "-t", "nat"]
    text = run_bounded(argv, deadline, MAX_RULES_BYTES)
    if text is None:  # missing or not permitted: no rules, as on a node without kube-proxy
        return RulesRead(origin, None, "none", 0, now)
    rules = parse_iptables_save(text.splitlines())
    kube = rules if rules.has_kube_services else None
    return RulesRead(origin, kube, "iptables-save", rules.skipped_lines, now)


def run_bounded(argv: list[str], deadline: float, max_bytes: int) -> str | None:
    """Run ``argv`` and return its stdout; None when the tool is missing (a machine without
    kube-proxy); CannotSee when it says we are not permitted; raise on timeout, oversized
    output or another failure."""
    res = _run(argv, deadline, max_stdout=max_bytes)
    if res is None:
        return None
    if res.truncated:
        raise RuntimeError(f"{argv[0]}: output exceeds {max_bytes} bytes")
    if res.returncode != 0:
        err = res.stderr_text()
        if _not_permitted(err):
            raise CannotSee(
                "permission",
                f"{argv[0]} refused us ({err}): the nat rules cannot be read; run the "
                "agent as root with CAP_NET_ADMIN or disable --no-collector.lbskew",
            )
        raise RuntimeError(f"{argv[0]} exited {res.returncode}: {err}")
    return res.stdout.decode("utf-8", "replace")


def _run(argv: list[str], deadline: float, max_stdout: int = 0,
         on_stdout: Callable[[bytes], None] | None = None) -> subproc.ProcResult | None:
    """One run of ``argv`` (agent.subproc) killed at ``deadline``; None when the tool is
    missing; CannotSee when we may not run it; TimeoutError at the deadline."""
    try:
        res = subproc.run_sync(argv, limit=deadline - time.monotonic(), max_stdout=max_stdout,
                               overflow="kill", on_stdout=on_stdout)
    except FileNotFoundError:
        return None
    except PermissionError as exc:
        raise CannotSee("permission", f"{argv[0]}: not executable for us: {exc}") from exc
    if res.timed_out:
        raise TimeoutError(f"{argv[0]}: no result before the collector's deadline")
    return res


def _not_permitted(stderr: str) -> bool:
    low = stderr.lower()
    return "permission denied" in low or "must be root" in low or "not permitted" in low


def stream_command(argv: list[str], deadline: float) -> conntrack.ConntrackSummary | None:
    """Stream ``conntrack -L`` stdout into the aggregator (memory bounded by the block size).
    None when the tool is missing or fails (no conntrack support); CannotSee when it says we
    are not permitted."""
    agg = conntrack.ConntrackAggregator()
    decoder = codecs.getincrementaldecoder("ascii")("replace")
    res = _run(argv, deadline, on_stdout=lambda block: agg.feed(decoder.decode(block)))
    if res is None:
        return None
    if res.returncode != 0:
        err = res.stderr_text()
        if _not_permitted(err):
            raise CannotSee("permission", f"{argv[0]} refused us: {err}")
        return None
    return agg.finish()
