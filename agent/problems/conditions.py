"""The NodeConditions nodemedic owns: a pure state machine (no I/O, clock passed in).

Rules it enforces (the complaints in NPD's tracker):
- the configured set is published at start with its healthy reason and message;
- ``lastTransitionTime`` changes only when the status changes (a new reason or message while
  the status stays True updates those alone);
- a condition clears when the problem is gone: a recovery line or a check's next OK result
  (:meth:`ConditionBook.set_default`), or ``clear_after`` seconds without a new match
  (:meth:`ConditionBook.expire`);
- state survives an agent restart: :meth:`ConditionBook.restore` adopts what the node already
  says for our types (status, reason, message, lastTransitionTime), so a True condition stays
  True with its original transition time instead of flapping to healthy and back. One
  exception: a condition raised from the kernel log before this boot is reset, since the kernel
  state it described (a read-only remount, a dead GPU) did not survive the reboot.
Only the types in the definitions are ever produced, so other owners' conditions (the
kubelet's Ready, another agent's) are never touched.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

from agent.problems.model import ConditionDef
from agent.structs.times import rfc3339

Status = Literal["True", "False", "Unknown"]


def parse_rfc3339(text: Any) -> float | None:
    try:
        return datetime.fromisoformat(str(text).replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None


@dataclass
class CondState:
    """One owned condition as we believe it is."""

    type: str
    status: Status
    reason: str
    message: str
    transition: float
    expires: float | None = None

    def api(self, heartbeat: float) -> dict[str, Any]:
        return {"type": self.type, "status": self.status, "reason": self.reason,
                "message": self.message, "lastTransitionTime": rfc3339(self.transition),
                "lastHeartbeatTime": rfc3339(heartbeat)}


class ConditionBook:
    """The owned conditions; ``dirty`` says a change awaits publishing."""

    def __init__(self, defs: Mapping[str, ConditionDef], now: float) -> None:
        self.defs = dict(defs)
        self.states = {t: CondState(t, "False", d.reason, d.message, now)
                       for t, d in self.defs.items()}
        self.dirty = True
        self.transitions = 0
        self.touched: set[str] = set()  # changed by us since start: restore must not undo it

    def restore(self, node_conditions: Iterable[Any], boot_time: float,
                kernel_reasons: frozenset[str], clear_after: Mapping[str, float],
                now: float) -> list[str]:
        """Adopt the node's current values for our types; returns the types adopted."""
        adopted: list[str] = []
        for c in node_conditions:
            if (not isinstance(c, dict) or c.get("type") not in self.states
                    or c.get("type") in self.touched):
                continue
            status = c.get("status")
            when = parse_rfc3339(c.get("lastTransitionTime"))
            if status not in ("True", "False", "Unknown") or when is None:
                continue
            reason = str(c.get("reason") or "")
            st = self.states[str(c["type"])]
            if status == "True" and reason in kernel_reasons and when < boot_time:
                st.transition = now  # raised from the kernel log of an earlier boot: reset
                self.transitions += 1
                continue
            st.status, st.transition = status, when
            st.reason, st.message = reason or st.reason, str(c.get("message") or "")
            if status == "True" and reason in clear_after:
                st.expires = now + clear_after[reason]  # restart the timer: never early
            adopted.append(st.type)
        self.dirty = True
        return adopted

    def set_problem(self, ctype: str, reason: str, message: str, now: float, *,
                    clear_after: float | None = None, status: Status = "True") -> bool:
        """The problem is present (or Unknown for a check that could not tell)."""
        st = self.states.get(ctype)
        if st is None:
            return False
        self.touched.add(ctype)
        changed = st.status != status
        if changed:
            st.transition = now
            self.transitions += 1
        if changed or st.reason != reason or st.message != message:
            self.dirty = True
        st.status, st.reason, st.message = status, reason, message
        st.expires = now + clear_after if clear_after is not None and status == "True" else None
        return changed

    def set_default(self, ctype: str, now: float) -> bool:
        """The problem is gone: back to the healthy reason and message."""
        st = self.states.get(ctype)
        d = self.defs.get(ctype)
        if st is None or d is None:
            return False
        self.touched.add(ctype)
        changed = st.status != "False"
        if changed:
            st.transition = now
            self.transitions += 1
        if changed or st.reason != d.reason or st.message != d.message:
            self.dirty = True
        st.status, st.reason, st.message, st.expires = "False", d.reason, d.message, None
        return changed

    def expire(self, now: float) -> list[str]:
        """Clear conditions whose clear-after elapsed; returns the types cleared."""
        gone = [t for t, st in self.states.items()
                if st.status == "True" and st.expires is not None and st.expires <= now]
        for t in gone:
            self.set_default(t, now)
        return gone

    def active(self) -> list[CondState]:
        return [st for st in self.states.values() if st.status == "True"]

    def api_conditions(self, heartbeat: float) -> list[dict[str, Any]]:
        return [st.api(heartbeat) for st in self.states.values()]
