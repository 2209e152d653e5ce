"""Print a replay timeline: ``text`` (a post-mortem table) or ``json`` (one document).

Used by nodemedic_sim.replay.command. Text is one line per record in time order (time, node, rule,
what, then the actions, the gate's reason and detail for a block, the missing metrics and frozen
rules for a gap) between a header naming the window and a summary counting each kind of record and
each block reason. JSON is ``{"window": {...}, "nodes": [...], "timeline": [records]}`` with the
records of nodemedic_sim.replay.timeline.Record.to_json.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TextIO

from agent.structs.durations import format_duration
from nodemedic_sim.replay.timeline import WHATS, Record, rfc3339


@dataclass(frozen=True, slots=True)
class Window:
    """What was replayed: the time range, the step, the nodes and the rules."""

    start: float
    end: float
    step: float
    nodes: tuple[str, ...]
    rules: int
    rules_dir: str
    dry_run: bool


def render_json(window: Window, records: Sequence[Record], out: TextIO) -> None:
    doc = {
        "window": {"start": rfc3339(window.start), "end": rfc3339(window.end),
                   "step_seconds": window.step, "rules": window.rules,
                   "rules_dir": window.rules_dir, "dry_run": window.dry_run},
        "nodes": list(window.nodes),
        "timeline": [r.to_json() for r in records],
    }
    json.dump(doc, out, indent=2)
    out.write("\n")


def _line(r: Record, rule_width: int, node_width: int) -> str:
    head = f"{rfc3339(r.time):<20}  {r.node:<{node_width}} {r.rule or '-':<{rule_width}} "
    if r.what == "gap":
        end = r.end if r.end is not None else r.time
        frozen = f"; rules frozen: {', '.join(r.rules)}" if r.rules else ""
        return (f"{head}{'GAP':<10} no data through {rfc3339(end)}: {', '.join(r.metrics)}"
                f"{frozen}")
    if r.what == "resolved":
        return f"{head}{'RESOLVED':<10} {r.target} healthy; the rule stops tracking it"
    acts = ", ".join(r.actions)
    step = f" (step {r.step})" if r.step else ""
    if r.what == "blocked":
        return f"{head}{'BLOCKED':<10} {acts}{step}: {r.reason} - {r.detail}"
    dry = " [dry-run: would have]" if r.decision == "dry_run" else ""
    note = f" - {r.outcome}" if r.outcome else ""
    return f"{head}{r.what.upper():<10} {acts}{step}{dry}{note}"


def render_text(window: Window, records: Sequence[Record], out: TextIO) -> None:
    mode = "global --dry-run" if window.dry_run else "each rule's own dry_run"
    print(f"nodemedic replay: {rfc3339(window.start)} .. {rfc3339(window.end)}, step "
          f"{format_duration(window.step)}, {len(window.nodes)} node(s), {window.rules} "
          f"rule(s) from {window.rules_dir} ({mode}); nothing was executed", file=out)
    if not records:
        print("  no rule fired, nothing was blocked and no data was missing", file=out)
    rule_width = max([len(r.rule) for r in records] + [4])
    node_width = max([len(r.node) for r in records] + [4])
    for r in records:
        print(_line(r, rule_width, node_width), file=out)
    kinds = Counter(r.what for r in records)
    reasons = Counter(r.reason for r in records if r.what == "blocked")
    parts = []
    for what in WHATS:
        if kinds[what]:
            extra = (" (" + ", ".join(f"{k} {n}" for k, n in sorted(reasons.items())) + ")"
                     if what == "blocked" else "")
            parts.append(f"{what} {kinds[what]}{extra}")
    print(f"summary: {', '.join(parts) if parts else 'nothing happened'}", file=out)
