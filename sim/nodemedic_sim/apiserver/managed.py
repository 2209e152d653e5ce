"""``metadata.managedFields`` as kube-apiserver records them for Update operations.

Called by nodemedic_sim.apiserver.registry on every create, replace and patch. As in Kubernetes,
each write is attributed to a field manager: the request's ``fieldManager`` query parameter, else
its User-Agent up to the first ``/`` (``kubectl-cordon/v1.31.0 (linux/amd64) ...`` is manager
``kubectl-cordon``). A write that adds or changes a field makes its manager that field's only
owner; a write that removes a field takes it from every manager; a field left as it was keeps its
owners. So after an admin's ``kubectl uncordon`` + ``kubectl cordon``, ``f:spec/f:unschedulable``
belongs to ``kubectl-cordon`` even though the Node looks as it did when another manager cordoned
it (agent.kube.nodes.field_owners reads this). Simplifications, none of which changes who owns a
scalar field: every list is one atomic leaf (true of a Node's ``spec.taints``; lists that
Kubernetes tracks per item, such as ``status.conditions``, are coarser here), entries carry no
``"."`` self-markers, the operation is always ``Update`` (no server-side apply), and managedFields
sent in a request body are ignored rather than taken as a reset.
"""

from __future__ import annotations

from typing import Any

Path = tuple[str, ...]
# Server-owned metadata is never attributed to a manager.
_SERVER_META = frozenset({
    "resourceVersion", "managedFields", "uid", "creationTimestamp", "generation", "selfLink",
    "deletionTimestamp", "deletionGracePeriodSeconds", "namespace", "name",
})


def manager_of(field_manager: str | None, user_agent: str | None) -> str:
    """The manager a request's write is recorded under (kube-apiserver's rule)."""
    if field_manager:
        return field_manager[:128]
    return ((user_agent or "").split("/")[0] or "unknown")[:128]


def leaves(obj: dict[str, Any]) -> dict[Path, Any]:
    """Every field of ``obj`` that a manager can own, as path -> value."""
    out: dict[Path, Any] = {}

    def walk(value: Any, path: Path) -> None:
        if isinstance(value, dict):
            for k, v in value.items():  # an empty object is no field of its own
                walk(v, (*path, str(k)))
        else:
            out[path] = value

    for top, value in obj.items():
        if top in ("kind", "apiVersion"):
            continue
        if top == "metadata" and isinstance(value, dict):
            for k, v in value.items():
                if k not in _SERVER_META:
                    walk(v, ("metadata", k))
        else:
            walk(value, (top,))
    return out


def _decode(fields: Any, prefix: Path = ()) -> set[Path]:
    out: set[Path] = set()
    if not isinstance(fields, dict):
        return out
    for k, v in fields.items():
        if not k.startswith("f:"):
            continue
        path = (*prefix, k[2:])
        children = _decode(v, path)
        out |= children or {path}
    return out


def _encode(paths: set[Path]) -> dict[str, Any]:
    root: dict[str, Any] = {}
    for path in sorted(paths):
        node = root
        for part in path:
            node = node.setdefault("f:" + part, {})
    return root


def update(
    entries: list[dict[str, Any]] | None,
    old: dict[str, Any],
    new: dict[str, Any],
    *,
    manager: str,
    subresource: str,
    api_version: str,
    now: str,
) -> list[dict[str, Any]]:
    """The managedFields after ``manager`` turned ``old`` into ``new`` (``old`` {} on create)."""
    before, after = leaves(old), leaves(new)
    changed = {p for p, v in after.items() if p not in before or before[p] != v}
    removed = set(before) - set(after)
    owned: list[tuple[dict[str, Any], set[Path]]] = []
    mine: tuple[dict[str, Any], set[Path]] | None = None
    for entry in entries or []:
        if not isinstance(entry, dict):
            continue
        paths = _decode(entry.get("fieldsV1"))
        if entry.get("manager") == manager and (entry.get("subresource") or "") == subresource:
            mine = (dict(entry), paths | changed)
            owned.append(mine)
        else:
            owned.append((dict(entry), paths - changed))
    if mine is None and changed:
        head: dict[str, Any] = {"manager": manager, "operation": "Update",
                                "apiVersion": api_version}
        if subresource:
            head["subresource"] = subresource
        mine = (head, set(changed))
        owned.append(mine)
    out: list[dict[str, Any]] = []
    for entry, paths in owned:
        paths &= set(after)  # a removed field is nobody's
        if not paths:
            continue
        if mine is not None and entry is mine[0] and (changed or removed):
            entry["time"] = now
        entry["fieldsType"] = "FieldsV1"
        entry["fieldsV1"] = _encode(paths)
        out.append(entry)
    return out
