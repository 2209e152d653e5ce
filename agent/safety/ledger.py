"""What nodemedic did on this node, when and for which rule: cooldowns, hourly caps, resumption.

Owned by agent.safety.gate (reads it to decide, records executions) and persisted by
agent.runtime.remediation into the node annotation ``nodemedic.io/state`` (compact JSON, bounded
to ``MAX_STATE_BYTES``) so that a restarted agent keeps its cooldowns, budgets and in-progress
actions (a drain half done) instead of starting over. Pure: no I/O, time is passed in.

In memory every time is monotonic (durations survive wall-clock steps); the JSON holds wall time
so another process can resume: ``to_json``/``from_json`` take ``offset`` = wall - monotonic.

The same JSON is also kept on local disk (agent.safety.localstate) for when the API is down or
absent. :func:`merge_unsynced` joins the two: the API is the source of truth for everything it has
seen; local records newer than the last state the API accepted are added to it (a cooldown holds
if either source says so, the newest time wins per key). ``unknown_since`` marks a local state that
could not be read: every cooldown is then assumed to have started at that time (fail safe).
"""

from __future__ import annotations

import json
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from agent.structs.remediation import ActionRequest, ActionSpec, Target

HOUR = 3600.0
# Far above any realistic node (250 pods x a few per-pod rules): past these bounds entries still
# inside their window are dropped and counted (``dropped_by_kind``), and the hourly caps fail safe.
MAX_HISTORY = 10_000  # executions kept for the hourly caps (older than an hour are dropped anyway)
MAX_LAST = 10_000  # distinct (rule, action, target, step) keys remembered for cooldowns
MAX_STATE_BYTES = 32 * 1024  # well below the 256 KiB the API allows for all annotations
STATE_VERSION = 1
SAME_EXECUTION = 1.0  # seconds: one execution read back from the API and from local disk


def ledger_key(req: ActionRequest) -> str:
    return f"{req.rule}|{req.action.type}|{req.target.key}|{req.step}|{int(req.undo)}"


def request_to_json(req: ActionRequest) -> dict[str, Any]:
    """Enough of a request to re-run it after a restart (in-progress drains, evictions, held
    steps: those are re-gated with their cooldown and hourly cap, so both are kept)."""
    t = req.target
    return {
        "rule": req.rule,
        "type": req.action.type,
        "params": req.action.params.params(),
        "target": {"kind": t.kind, "node": t.node, "namespace": t.namespace, "name": t.name},
        "step": req.step,
        "severity": req.severity,
        "dry_run": req.dry_run,
        "undo": req.undo,
        "observed": dict(req.observed),
        "reason": req.reason,
        "runbook": req.runbook,
        "cooldown": req.cooldown_seconds,
        "max_per_hour": req.max_per_hour,
        **({"workload_reasons": list(req.workload_reasons)} if req.workload_reasons else {}),
        **({"metrics": list(req.metrics)} if req.metrics is not None else {}),
    }


def request_from_json(data: dict[str, Any]) -> ActionRequest:
    """Inverse of request_to_json; raises KeyError/TypeError/ValueError on garbage, and a
    ValueError when the parameters no longer validate (ActionSpec.of: the action's model). A
    state written before requests recorded their metrics restores them as unknown (None)."""
    t = data["target"]
    kind = t["kind"]
    if kind not in ("node", "pod", "service"):
        raise ValueError(f"bad target kind {kind!r}")
    severity = data.get("severity", "warning")
    if severity not in ("info", "warning", "critical"):
        severity = "warning"
    return ActionRequest(
        rule=str(data["rule"]),
        action=ActionSpec.of(str(data["type"]), dict(data.get("params") or {})),
        target=Target(kind, str(t["node"]), str(t.get("namespace", "")), str(t.get("name", ""))),
        step=int(data.get("step", 0)),
        severity=severity,
        dry_run=bool(data.get("dry_run", False)),
        undo=bool(data.get("undo", False)),
        observed={str(k): float(v) for k, v in (data.get("observed") or {}).items()},
        reason=str(data.get("reason", "")),
        runbook=str(data.get("runbook", "")),
        cooldown_seconds=float(data.get("cooldown", 0.0)),
        max_per_hour=int(data.get("max_per_hour", 0)),
        workload_reasons=tuple(str(r) for r in data.get("workload_reasons") or ()),
        metrics=tuple(str(m) for m in data["metrics"]) if "metrics" in data else None,
    )


@dataclass
class Pending:
    """An action that needs more passes (outcome ``retry``): re-run each tick until done."""

    request: ActionRequest
    started: float
    attempts: int = 1


@dataclass
class Held:
    """A step the gate denied for a reason that clears by itself (agent.safety.gate's
    HOLD_REASONS): kept and re-gated on later ticks until it is allowed, denied for good, or
    the rule no longer asks for it. ``since`` is monotonic; ``due`` is the stage's tick number
    of the next retry (not persisted: a restarted agent retries at once)."""

    request: ActionRequest
    reason: str
    detail: str
    since: float
    attempts: int = 1
    due: int = 0


@dataclass
class Ledger:
    """Executions for the hourly caps, last run per request key for cooldowns, pending work."""

    # (time, rule, action, disruptive, firing); firing = "target|step|undo" groups the actions
    # one ladder step ran together, so a step of [event, restart] counts once against the cap.
    history: deque[tuple[float, str, str, bool, str]] = field(default_factory=deque)
    last: dict[str, tuple[float, int]] = field(default_factory=dict)
    pending: dict[str, Pending] = field(default_factory=dict)
    held: dict[str, Held] = field(default_factory=dict)
    dropped: int = 0  # state entries dropped to stay within MAX_STATE_BYTES or unreadable
    cooldowns_evicted: int = 0  # cooldown keys evicted past MAX_LAST while maybe still live
    history_dropped: int = 0  # executions dropped past MAX_HISTORY while inside the hour
    # Newest execution time dropped from the history (here or from the persisted state): until
    # an hour after it the hourly counts may be low, so the gate denies capped requests.
    history_cut_at: float | None = None
    longest_cooldown: float = 0.0  # seen in this process; keys older than this are expired
    # Set when the local state was unreadable with no API to fall back on: what we did before
    # this time is unknown, so every cooldown is taken to have started then.
    unknown_since: float | None = None
    written_at: float | None = None  # the "at" of the JSON this ledger was read from

    def record(self, req: ActionRequest, now: float, disruptive: bool) -> None:
        firing = f"{req.target.key}|{req.step}|{int(req.undo)}"
        self.history.append((now, req.rule, req.action.type, disruptive, firing))
        if len(self.history) > MAX_HISTORY:
            self._trim_history(now)
        self.longest_cooldown = max(self.longest_cooldown, req.cooldown_seconds)
        key = ledger_key(req)
        _, count = self.last.get(key, (0.0, 0))
        self.last[key] = (now, count + 1)
        if len(self.last) > MAX_LAST:
            self._trim_last(now)

    def _trim_history(self, now: float) -> None:
        """Drop expired executions first; past the bound drop the oldest, counted, and remember
        when so the hourly caps fail safe instead of undercounting."""
        while self.history and now - self.history[0][0] >= HOUR:
            self.history.popleft()
        while len(self.history) > MAX_HISTORY:
            t = self.history.popleft()[0]
            self.history_dropped += 1
            self.history_cut_at = max(t, self.history_cut_at or t)

    def _trim_last(self, now: float) -> None:
        """Drop expired cooldown keys first; past the bound evict the oldest, counted."""
        keep = max(HOUR, self.longest_cooldown)
        for key in [k for k, (t, _) in self.last.items() if now - t >= keep]:
            del self.last[key]
        while len(self.last) > MAX_LAST:
            oldest = min(self.last, key=lambda k: self.last[k][0])
            del self.last[oldest]
            self.cooldowns_evicted += 1

    def history_incomplete(self, now: float) -> bool:
        """True while executions of the last hour were dropped: hourly counts may be low."""
        return self.history_cut_at is not None and now - self.history_cut_at < HOUR

    def dropped_by_kind(self) -> dict[str, int]:
        """For nodemedic_safety_ledger_dropped_total{kind}."""
        return {
            "state": self.dropped,
            "cooldown": self.cooldowns_evicted,
            "history": self.history_dropped,
        }

    def last_run(self, req: ActionRequest) -> tuple[float, int] | None:
        """(time, count) of the request's last run; ``unknown_since`` if that is later."""
        rec = self.last.get(ledger_key(req))
        if self.unknown_since is not None and (rec is None or rec[0] < self.unknown_since):
            return self.unknown_since, rec[1] if rec is not None else 0
        return rec

    def count_rule(self, rule: str, now: float) -> int:
        """Ladder steps (not single actions) the rule ran in the last hour; undos excluded."""
        return len(
            {
                (t, f)
                for t, r, _, _, f in self.history
                if r == rule and now - t < HOUR and not f.endswith("|1")
            }
        )

    def count_disruptive(self, now: float) -> int:
        return sum(1 for t, _, _, d, _ in self.history if d and now - t < HOUR)

    def prune(self, now: float, keep_seconds: float = HOUR) -> None:
        while self.history and now - self.history[0][0] >= HOUR:
            self.history.popleft()
        # Cooldowns are per request; a day covers any sane cooldown and bounds the map.
        for key in [k for k, (t, _) in self.last.items() if now - t >= max(keep_seconds, 86400)]:
            del self.last[key]

    # --- persistence -------------------------------------------------------------------------

    def to_json(self, now: float, engine_state: Any = None, offset: float = 0.0) -> str:
        """Compact JSON for the node annotation, trimmed to MAX_STATE_BYTES (oldest first).
        ``now`` is monotonic; times are written as wall time (+ ``offset``)."""
        self.prune(now)
        hist = [[round(t + offset, 1), r, a, int(d), f] for t, r, a, d, f in self.history]
        by_age = sorted(self.last.items(), key=lambda kv: kv[1][0])
        last = {k: [round(t + offset, 1), n] for k, (t, n) in by_age}
        pending = [
            {
                "req": request_to_json(p.request),
                "started": round(p.started + offset, 1),
                "n": p.attempts,
            }
            for p in self.pending.values()
        ]
        doc: dict[str, Any] = {
            "v": STATE_VERSION,
            "at": round(now + offset, 1),
            "h": hist,
            "l": last,
            "p": pending,
        }
        if self.held:
            doc["q"] = [
                {"req": request_to_json(h.request), "r": h.reason, "d": h.detail[:200],
                 "since": round(h.since + offset, 1), "n": h.attempts}
                for h in self.held.values()
            ]
        if self.history_cut_at is not None:
            doc["hx"] = round(self.history_cut_at + offset, 1)
        if engine_state is not None:
            doc["e"] = engine_state
        text = json.dumps(doc, separators=(",", ":"), sort_keys=False, default=str)
        while len(text.encode()) > MAX_STATE_BYTES:
            if doc["h"]:
                cut = len(doc["h"]) // 2 + 1
                # A restarted agent must know its hourly counts are short (fail safe).
                doc["hx"] = max(doc["h"][cut - 1][0], doc.get("hx", doc["h"][cut - 1][0]))
                doc["h"] = doc["h"][cut:]
            elif doc["l"]:
                keys = list(doc["l"])
                doc["l"] = {k: doc["l"][k] for k in keys[len(keys) // 2 + 1 :]}
            elif doc.get("q"):
                doc["q"] = doc["q"][len(doc["q"]) // 2 + 1 :]
            elif "e" in doc:
                del doc["e"]
            else:
                doc["p"] = doc["p"][: len(doc["p"]) // 2]
            self.dropped += 1
            text = json.dumps(doc, separators=(",", ":"), default=str)
        return text

    @classmethod
    def from_json(cls, text: str, offset: float = 0.0) -> tuple[Ledger, Any, list[str]]:
        """(ledger, engine state or None, problems). Garbage never raises: it is skipped.
        Wall times are mapped to this process's monotonic time (- ``offset``)."""
        problems: list[str] = []
        ledger = cls()
        try:
            doc = json.loads(text)
        except ValueError as exc:
            return ledger, None, [f"state annotation is not JSON: {exc}"]
        if not isinstance(doc, dict) or doc.get("v") != STATE_VERSION:
            return ledger, None, ["state annotation has an unknown format; starting fresh"]
        hist, last, pend = doc.get("h"), doc.get("l"), doc.get("p")
        if not isinstance(hist, list) or not isinstance(last, dict) or not isinstance(pend, list):
            problems.append("state annotation sections have the wrong types; ignoring them")
            hist, last, pend = (
                (hist if isinstance(hist, list) else []),
                (last if isinstance(last, dict) else {}),
                (pend if isinstance(pend, list) else []),
            )
        for item in hist:
            try:
                t, r, a, d, f = item
                ledger.history.append((float(t) - offset, str(r), str(a), bool(d), str(f)))
            except (TypeError, ValueError):
                problems.append(f"skipped history entry {item!r}")
        for key, item in last.items():
            try:
                t, n = item
                ledger.last[str(key)] = (float(t) - offset, int(n))
            except (TypeError, ValueError):
                problems.append(f"skipped cooldown entry {key!r}")
        for item in pend:
            try:
                req = request_from_json(item["req"])
                ledger.pending[ledger_key(req)] = Pending(
                    req, float(item["started"]) - offset, int(item.get("n", 1))
                )
            except (KeyError, TypeError, ValueError, AttributeError) as exc:
                problems.append(f"skipped in-progress action: {exc!r}")
        held = doc.get("q")
        for item in held if isinstance(held, list) else []:
            try:
                req = request_from_json(item["req"])
                ledger.held[ledger_key(req)] = Held(
                    req, str(item["r"]), str(item.get("d", "")), float(item["since"]) - offset,
                    int(item.get("n", 1)),
                )
            except (KeyError, TypeError, ValueError, AttributeError) as exc:
                problems.append(f"skipped held step: {exc!r}")
        cut = doc.get("hx")
        if isinstance(cut, (int, float)) and not isinstance(cut, bool):
            ledger.history_cut_at = float(cut) - offset
        at = doc.get("at")
        if isinstance(at, (int, float)) and not isinstance(at, bool):
            ledger.written_at = float(at) - offset
        ledger.dropped = len(problems)
        return ledger, doc.get("e"), problems


def merge_unsynced(api: Ledger, local: Ledger, synced_at: float | None) -> Ledger:
    """The API's ledger plus what ``local`` recorded after ``synced_at`` (the last state the API
    accepted; None = never, so all of ``local`` is new to it). Times are monotonic.

    - records the API has seen (at or before ``synced_at``) are the API's: an admin who removed
      them from the annotation wins;
    - newer local executions are added to the hourly history (deduplicated);
    - per cooldown key the newest time and the higher count win, so a cooldown holds if either
      source says so;
    - in-progress actions and held steps the API does not know are resumed; for one both know,
      the API's wins;
    - ``unknown_since`` (unreadable local state) stays unless the API's state was written after
      it, and the later ``history_cut_at`` wins (fail safe).
    """
    def unsynced(t: float) -> bool:
        return synced_at is None or t > synced_at

    out = api
    # The same execution written to both places may differ by the rounding of its wall time.
    seen: dict[tuple[str, str, bool, str], list[float]] = {}
    for t, r, a, d, f in out.history:
        seen.setdefault((r, a, d, f), []).append(t)
    for entry in local.history:
        t, r, a, d, f = entry
        times = seen.setdefault((r, a, d, f), [])
        if unsynced(t) and not any(abs(t - u) < SAME_EXECUTION for u in times):
            out.history.append(entry)
            times.append(t)
    out.history = deque(sorted(out.history, key=lambda e: e[0]))
    for key, (t, n) in local.last.items():
        if not unsynced(t):
            continue
        have = out.last.get(key)
        out.last[key] = (max(t, have[0]), max(n, have[1])) if have is not None else (t, n)
    for key, p in local.pending.items():
        if key not in out.pending and unsynced(p.started):
            out.pending[key] = p
    for key, h in local.held.items():  # held steps are retried like the rest (issue 12 item 7)
        if key not in out.held and key not in out.pending and unsynced(h.since):
            out.held[key] = h
    if local.unknown_since is not None and (
        out.written_at is None or out.written_at < local.unknown_since
    ):
        out.unknown_since = max(local.unknown_since, out.unknown_since or local.unknown_since)
    cuts = [c for c in (out.history_cut_at, local.history_cut_at) if c is not None]
    out.history_cut_at = max(cuts) if cuts else None
    out.dropped += local.dropped
    out.longest_cooldown = max(out.longest_cooldown, local.longest_cooldown)
    return out
