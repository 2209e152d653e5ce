"""Keep one named Node or Lease current: agent.kube.informer narrowed to ``metadata.name=X``.

Used by agent.collectors.node (its own Node and its kube-node-lease Lease). The informer does the
LIST+WATCH, the relist on 410 Gone, the unsynced-at-once on a broken connection and the capped,
jittered backoff; this wrapper keeps the whole object and presents it as ``state``.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

from agent.kube.informer import Informer

Kind = Literal["node", "lease"]


@dataclass
class ReflectorState:
    """What the reflector knows; ``obj`` is meaningful only while ``synced``."""

    obj: dict[str, Any] | None = None
    synced: bool = False
    exists: bool = False
    last_error: str = ""
    resource_version: str = ""
    lists: int = 0
    watch_restarts: int = 0
    errors: int = 0
    gone: int = 0


def _whole(obj: dict[str, Any]) -> dict[str, Any]:
    return obj


class ObjectReflector:
    """LIST+WATCH one object by name; run :meth:`run` and read ``state`` on the same loop."""

    def __init__(
        self,
        api: Any,
        kind: Kind,
        name: str,
        namespace: str = "",
        *,
        watch_timeout: int = 60,
        backoff_initial: float = 0.5,
        backoff_max: float = 30.0,
    ) -> None:
        self.kind = kind
        self.name = name
        self.namespace = namespace
        self.informer: Informer[dict[str, Any]] = Informer(
            api, "nodes" if kind == "node" else "leases", _whole,
            namespace=namespace, field_selector=f"metadata.name={name}",
            watch_timeout=watch_timeout, backoff_initial=backoff_initial, backoff_max=backoff_max,
        )

    @property
    def state(self) -> ReflectorState:
        inf = self.informer
        obj = inf.items.get(self.name)
        return ReflectorState(
            obj=obj,
            synced=inf.synced.is_set(),
            exists=obj is not None,
            last_error=inf.last_error,
            resource_version=inf.resource_version,
            lists=inf.relists,
            watch_restarts=inf.watch_restarts,
            errors=inf.errors,
            gone=inf.gone,
        )

    async def run(self) -> None:
        """Run until cancelled; never raises (errors are recorded in ``state``)."""
        await self.informer.run()


def renew_age_seconds(lease: dict[str, Any], now: float | None = None) -> float | None:
    """Seconds since the Lease's ``spec.renewTime`` (None when it has never been renewed)."""
    renew = (lease.get("spec") or {}).get("renewTime")
    if not renew:
        return None
    try:
        ts = datetime.fromisoformat(str(renew).replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None
    return max(0.0, (time.time() if now is None else now) - ts)
