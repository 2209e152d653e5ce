"""`nodemedic demo` tells the story: failure, detection, cordon, eviction, fencing, recovery."""

from __future__ import annotations

import argparse
import io
import re

from nodemedic_sim.demo.command import add_parser, demo


async def test_demo_prints_every_phase_and_succeeds() -> None:
    """The demo exits 0 and its timeline shows each step in order, with a summary."""
    parser = argparse.ArgumentParser()
    add_parser(parser.add_subparsers())
    args = parser.parse_args(
        ["demo", "--node-grace", "1.5", "--fencing-time", "2", "--healthy-delay", "1.5"]
    )
    out = io.StringIO()
    assert await demo(args, out) == 0
    text = out.getvalue()
    first: dict[str, float] = {}
    for line in text.splitlines():
        m = re.match(r"\s+t\+\s*(-?[0-9.]+)s\s+(\S+(?: \S+)?)\s{2,}", line)
        if m:
            first.setdefault(m.group(2).strip(), float(m.group(1)))
    order = ["FAILURE", "DETECTED", "CORDON", "EVICTION", "RESCHEDULED", "FENCED",
             "NODE BACK"]
    # Recovery is one step: the uncordon and the RECOVERED record land in the same pass, in
    # either order a few milliseconds apart, so both only have to follow NODE BACK.
    recovery = ["RECOVERED", "UNCORDON"]
    assert all(step in first for step in order + recovery), text
    times = [first[step] for step in order]
    assert times == sorted(times), text
    assert all(first[step] >= first["NODE BACK"] for step in recovery), text
    assert "Summary" in text
    assert "/metrics" in text
    assert "failure -> cordon" in text and "never" not in text
