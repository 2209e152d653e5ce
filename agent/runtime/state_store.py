"""Where the remediation stage's state lives: restored at start, written when it changes.

Used by agent.runtime.remediation (one :class:`StateStore` per stage). The state is the safety
gate's ledger (cooldowns, caps, in-progress and held steps) plus the rules engine's state, as one
JSON text (agent.safety.ledger) kept in two places:
- the node annotation ``nodemedic.io/state``, so a restarted agent resumes;
- the local file under ``--state.dir`` (agent.safety.localstate), so that a restart with the API
  down or absent keeps them too.
At start the local copy is loaded first; once the API answers (retried each tick while it does
not), its state is merged with it (agent.safety.ledger.merge_unsynced: the API wins for what it
has seen). A write is due when something the ledger must remember happened (``changed``), or
when only the engine's state changed and PERSIST_INTERVAL passed; a refused API write backs off
(STATE_RETRY_BASE_SECONDS doubling up to STATE_RETRY_MAX_SECONDS) instead of a forbidden PUT
every tick. The engine is reached only through the two callables the stage hands in.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from typing import Any

import structlog

from agent.backoff import delay_for
from agent.kube.errors import KubeError
from agent.kube.nodes import ensure_annotations, get_node, read_annotations, update_node
from agent.safety.gate import SafetyGate
from agent.safety.ledger import Ledger, ledger_key, merge_unsynced
from agent.safety.localstate import LocalState
from agent.structs.durations import format_duration
from agent.structs.metrics import Family, MetricSpec

log = structlog.get_logger("nodemedic.remediation")

STATE_ANNOTATION = "nodemedic.io/state"
PERSIST_INTERVAL = 60.0  # engine-only state changes are written at most this often
STATE_RETRY_BASE_SECONDS = 10.0
STATE_RETRY_MAX_SECONDS = 300.0

STATE_WRITES = MetricSpec(
    "nodemedic_state_writes_total",
    "Writes of the remediation state annotation, by result.",
    "counter",
    ("result",),
)
LOCAL_WRITES = MetricSpec(
    "nodemedic_state_local_writes_total",
    "Writes of the local state file under --state.dir, by result.",
    "counter",
    ("result",),
)
LOCAL_BLIND = MetricSpec(
    "nodemedic_state_local_unknown",
    "1 while the local state file was unreadable and no API state replaced it: every cooldown "
    "is taken to have started when the file was last written.",
    "gauge",
)
METRICS = (STATE_WRITES, LOCAL_WRITES, LOCAL_BLIND)


class StateStore:
    """The stage's persisted state; ``gate`` returns the stage's current gate (its ledger is
    replaced on restore), ``export``/``restore`` reach the engine (restore: True if taken)."""

    def __init__(
        self,
        node_name: str,
        api: Any,
        local: LocalState | None,
        *,
        gate: Callable[[], SafetyGate],
        export: Callable[[], Any],
        restore: Callable[[Any], bool],
        clock: Callable[[], float],
        monotonic: Callable[[], float],
    ) -> None:
        self.node_name = node_name
        self.api = api
        self.local = local
        self._gate = gate
        self._export = export
        self._restore_engine = restore
        self.clock = clock
        self.monotonic = monotonic
        self.restored = api is None
        self.problems: list[str] = []
        self.dirty = False
        self._persisted_engine: str | None = None
        self._last_persist = float("-inf")  # the first engine-only change is written at once
        self._writes = {"ok": 0, "error": 0}
        self._state_failures = 0  # consecutive refused API state writes
        self._state_retry_at = 0.0  # monotonic time before which no API state write is tried
        self._local_dirty = False
        self._local_engine: str | None = None
        self._last_local = float("-inf")
        self._local_writes = {"ok": 0, "error": 0}
        self._local_at: float | None = None  # monotonic "at" of the local state loaded
        self._synced_at: float | None = None  # wall "at" of the last state the API accepted

    @property
    def ledger(self) -> Ledger:
        return self._gate().ledger

    def changed(self) -> None:
        """Something the ledger must remember happened: write both copies this tick."""
        self.dirty = True
        self._local_dirty = True

    def offset(self) -> float:
        """Wall minus monotonic time now (maps the ledger's times to and from the annotation)."""
        return float(self.clock()) - float(self.monotonic())

    # --- restoring ---------------------------------------------------------------------------

    async def start(self) -> None:
        """The local copy first, then the API's (deferred to later ticks while it is down)."""
        if self.local is not None:
            await self._restore_local(self.local)
        await self.restore()

    def _take_engine(self, engine_state: Any) -> None:
        if self._restore_engine(engine_state):
            self._persisted_engine = json.dumps(engine_state, sort_keys=True, default=str)

    async def _restore_local(self, local: LocalState) -> None:
        loaded = await asyncio.to_thread(local.load, float(self.clock()))
        self._synced_at = loaded.synced_at
        offset = self.offset()
        blind = loaded.blind_since
        if loaded.ledger_json is not None:
            ledger, engine_state, problems = Ledger.from_json(loaded.ledger_json, offset)
            if problems:  # parts were unreadable: what they said is unknown since the write
                blind = ledger.written_at + offset if ledger.written_at is not None else None
                blind = blind if blind is not None else float(self.clock())
            self._gate().ledger = ledger
            self._local_at = ledger.written_at
            self.problems.extend(problems)
            if engine_state is not None:
                self._take_engine(engine_state)
        if loaded.problem is not None:
            self.problems.append(loaded.problem)
        if blind is not None:
            self.ledger.unknown_since = blind - offset
        for problem in self.problems:
            log.warning("local_state_problem", path=str(local.path), problem=problem,
                        cooldowns_from=blind)
        log.info("local_state_loaded", path=str(local.path),
                 history=len(self.ledger.history), found=loaded.ledger_json is not None)

    async def restore(self) -> None:
        """Merge the node annotation's state in, once the API answers (no-op after that)."""
        if self.restored:
            return
        try:
            node = await get_node(self.api, self.node_name)
        except KubeError as exc:
            log.warning("state_restore_deferred", node=self.node_name, error=str(exc))
            return
        self.restored = True
        raw = read_annotations(node).get(STATE_ANNOTATION)
        offset = self.offset()
        ledger, engine_state, problems = (
            Ledger.from_json(raw, offset) if raw else (Ledger(), None, [])
        )
        synced = self._synced_at - offset if self._synced_at is not None else None
        mine = self.ledger
        had_local = bool(mine.history or mine.last or mine.pending or mine.unknown_since)
        local_newer = self._local_at is not None and (
            ledger.written_at is None or self._local_at > ledger.written_at
        )
        self._gate().ledger = merge_unsynced(ledger, mine, synced)
        if had_local:
            self.changed()  # the API learns what only the local state held
        self.problems.extend(problems)
        for problem in problems:
            log.warning("state_restore_problem", problem=problem)
        if engine_state is not None and not local_newer:
            self._take_engine(engine_state)
        if not raw:
            return
        log.info(
            "state_restored",
            history=len(ledger.history),
            in_progress=[ledger_key(p.request) for p in ledger.pending.values()],
        )

    # --- writing -----------------------------------------------------------------------------

    async def close(self) -> None:
        """The final write (best effort): both copies, a backing-off API write tried once more."""
        self._local_dirty = True
        self._state_retry_at = 0.0
        await self.persist(force=self.api is not None)

    async def persist(self, *, force: bool) -> None:
        """Write ledger + engine state when something we did changed, or the engine's state
        changed and PERSIST_INTERVAL passed: first to local disk, then to the node annotation
        (once the API's state was restored); failures are retried next tick."""
        engine_state = self._export()
        engine_json = json.dumps(engine_state, sort_keys=True, default=str)
        now = self.monotonic()

        def due(dirty: bool, written: str | None, last: float) -> bool:
            return dirty or (engine_json != written and now - last >= PERSIST_INTERVAL)

        api_due = self.api is not None and self.restored and now >= self._state_retry_at and due(
            force, self._persisted_engine, self._last_persist
        )
        local_due = self.local is not None and due(
            self._local_dirty, self._local_engine, self._last_local
        )
        if not (api_due or local_due):
            return
        offset = self.offset()
        text = self.ledger.to_json(now, engine_state, offset)
        if local_due:
            await self._persist_local(text, engine_json, now)
        if api_due:
            await self._persist_api(text, engine_json, now, now + offset)
            if self.local is not None and not self.dirty:
                # Record that the API has all of it, so that what an admin later removes from
                # the annotation is not brought back from here (merge_unsynced).
                await self._persist_local(text, engine_json, now)

    async def _persist_local(self, text: str, engine_json: str, now: float) -> None:
        assert self.local is not None
        try:
            await asyncio.to_thread(self.local.save, text, self._synced_at)
        except OSError as exc:
            self._local_writes["error"] += 1
            log.warning("local_state_write_failed", path=str(self.local.path), error=str(exc))
            return
        self._local_writes["ok"] += 1
        self._local_engine = engine_json
        self._last_local = now
        self._local_dirty = False
        if self.api is None:
            self._persisted_engine = engine_json

    async def _persist_api(self, text: str, engine_json: str, now: float, at: float) -> None:

        def mutate(node: dict[str, Any]) -> bool:
            ann = ensure_annotations(node)
            if ann.get(STATE_ANNOTATION) == text:
                return False
            ann[STATE_ANNOTATION] = text
            return True

        try:
            await update_node(self.api, self.node_name, mutate)
        except KubeError as exc:
            self._writes["error"] += 1
            self._state_failures += 1
            delay = delay_for(self._state_failures, STATE_RETRY_BASE_SECONDS,
                              STATE_RETRY_MAX_SECONDS)
            self._state_retry_at = now + delay
            log.warning("state_write_failed", error=str(exc), retry_in=format_duration(delay))
            return
        self._state_failures = 0
        self._state_retry_at = 0.0
        self._writes["ok"] += 1
        self._persisted_engine = engine_json
        self._last_persist = now
        self.dirty = False
        self._synced_at = at
        pause = self._gate().pause
        if pause is not None:
            pause.invalidate()

    def families(self) -> list[Family]:
        writes = STATE_WRITES.family()
        for result, n in sorted(self._writes.items()):
            writes.add((result,), n)
        local_writes = LOCAL_WRITES.family()
        blind = LOCAL_BLIND.family()
        if self.local is not None:
            for result, n in sorted(self._local_writes.items()):
                local_writes.add((result,), n)
            blind.add((), float(self.ledger.unknown_since is not None))
        return [writes, local_writes, blind]
