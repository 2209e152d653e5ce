"""The resourceVersion-guarded read-modify-replace loop shared by every write in agent.kube.

Called by agent.kube.nodes.update_node, agent.kube.pods.update_pod and
agent.kube.owners.update_owner. The object is re-read before each attempt and replaced (PUT) with
the resourceVersion that read returned, so a concurrent change by an admin or another controller
yields 409 and we re-read and re-apply instead of overwriting it.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from agent.kube.errors import KubeConflict, call_json

# A mutation edits the object dict in place and returns False when nothing needed to change.
Mutation = Callable[[dict[str, Any]], bool]

CONFLICT_RETRIES = 5


async def read_modify_replace(
    read: Callable[[], Awaitable[dict[str, Any]]],
    replace: Callable[[dict[str, Any]], Awaitable[Any]],
    mutate: Mutation,
) -> tuple[dict[str, Any], bool]:
    """Apply ``mutate`` to a fresh ``read()`` and ``replace`` it, retrying on 409.

    ``replace`` starts the raw (``_preload_content=False``) replace call for the mutated object.
    Returns (object as stored, changed); after CONFLICT_RETRIES conflicts the last KubeConflict is
    raised, and any other KubeError from the read or the replace propagates at once.
    """
    last: KubeConflict | None = None
    for _ in range(CONFLICT_RETRIES):
        obj = await read()
        if not mutate(obj):
            return obj, False
        try:
            stored = await call_json(replace(obj))
        except KubeConflict as exc:
            last = exc
            continue
        return stored, True
    assert last is not None
    raise last
