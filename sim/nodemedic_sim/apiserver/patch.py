"""The three PATCH types kube-apiserver accepts: strategic merge, JSON merge (RFC 7386) and
JSON patch (RFC 6902, via the ``jsonpatch`` library).

Called by nodemedic_sim.apiserver.server for PATCH requests. Strategic merge uses the patch merge
keys and strategies of the Kubernetes Go types (``patchMergeKey``/``patchStrategy`` struct tags)
for the fields nodemedic and kubectl touch: node and pod ``status.conditions`` merge by ``type``,
containers by ``name``, ``metadata.finalizers`` is a merged set, ``spec.taints`` and
``spec.tolerations`` have no strategy and are replaced as whole lists, and ``null`` deletes a map
key (e.g. an annotation). The original object is never mutated.
"""

from __future__ import annotations

import copy
from typing import Any

import jsonpatch

from nodemedic_sim.apiserver.status import ApiError, bad_request

_PRIMITIVE_MERGE = "<primitive-merge>"

# Field path (dot-joined, list items transparent) -> merge key, per kind. Absent = replace.
_COMMON = {
    "metadata.ownerReferences": "uid",
    "metadata.finalizers": _PRIMITIVE_MERGE,
}
_POD_SPEC = {
    "containers": "name",
    "initContainers": "name",
    "ephemeralContainers": "name",
    "containers.env": "name",
    "initContainers.env": "name",
    "containers.ports": "containerPort",
    "initContainers.ports": "containerPort",
    "containers.volumeMounts": "mountPath",
    "initContainers.volumeMounts": "mountPath",
    "volumes": "name",
    "imagePullSecrets": "name",
    "hostAliases": "ip",
}
MERGE_KEYS: dict[str, dict[str, str]] = {
    "Node": {
        "status.conditions": "type",
        "status.addresses": "type",
        "spec.podCIDRs": _PRIMITIVE_MERGE,
    },
    "Pod": {
        **{f"spec.{k}": v for k, v in _POD_SPEC.items()},
        "status.conditions": "type",
        "status.podIPs": "ip",
    },
    "DaemonSet": {
        **{f"spec.template.spec.{k}": v for k, v in _POD_SPEC.items()},
        "status.conditions": "type",
    },
    "Namespace": {"status.conditions": "type"},
    "PodDisruptionBudget": {"status.conditions": "type"},
}

STRATEGIC = "application/strategic-merge-patch+json"
MERGE = "application/merge-patch+json"
JSON_PATCH = "application/json-patch+json"


def apply_patch(
    original: dict[str, Any], content_type: str, patch: Any, kind: str
) -> dict[str, Any]:
    """Return a new object: ``original`` with ``patch`` applied per ``content_type``."""
    ctype = content_type.split(";", maxsplit=1)[0].strip().lower()
    if ctype == JSON_PATCH:
        if not isinstance(patch, list):
            raise bad_request("json: cannot unmarshal object into Go value of type jsonpatch.Patch")
        try:
            result = jsonpatch.apply_patch(original, patch, in_place=False)
        except (jsonpatch.JsonPatchException, jsonpatch.JsonPointerException) as exc:
            raise ApiError(
                422,
                "Invalid",
                f"the server rejected our request due to an error in our request: {exc}",
            ) from exc
        if not isinstance(result, dict):
            raise ApiError(
                422, "Invalid", "the server rejected our request due to an error in our request"
            )
        return result
    if not isinstance(patch, dict):
        raise bad_request(
            "json: cannot unmarshal array into Go value of type map[string]interface {}"
        )
    if ctype == MERGE:
        merged: dict[str, Any] = json_merge(original, patch)
        return merged
    if ctype == STRATEGIC:
        keys = {**_COMMON, **MERGE_KEYS.get(kind, {})}
        return strategic_merge(copy.deepcopy(original), patch, "", keys)
    raise ApiError(
        415,
        "UnsupportedMediaType",
        f"the body of the request was in an unknown format - accepted media types include: "
        f"{JSON_PATCH}, {MERGE}, {STRATEGIC}",
    )


def json_merge(target: Any, patch: Any) -> Any:
    """RFC 7386 JSON merge patch: maps merge recursively, null deletes, anything else replaces."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    out = dict(target) if isinstance(target, dict) else {}
    for k, v in patch.items():
        if v is None:
            out.pop(k, None)
        else:
            out[k] = json_merge(out.get(k), v)
    return out


def strategic_merge(
    orig: dict[str, Any], patch: dict[str, Any], path: str, keys: dict[str, str]
) -> dict[str, Any]:
    """Merge ``patch`` into ``orig`` (which the caller owns) following Kubernetes' directives."""
    directive = patch.get("$patch")
    if directive == "replace":
        return {k: copy.deepcopy(v) for k, v in patch.items() if k != "$patch"}
    if directive == "delete":
        return {}
    retain = patch.get("$retainKeys")
    if isinstance(retain, list):
        orig = {k: v for k, v in orig.items() if k in retain or k in patch}
    for k, v in patch.items():
        if k in ("$patch", "$retainKeys") or k.startswith("$setElementOrder/"):
            continue
        if k.startswith("$deleteFromPrimitiveList/"):
            field = k.split("/", 1)[1]
            if isinstance(orig.get(field), list) and isinstance(v, list):
                orig[field] = [x for x in orig[field] if x not in v]
            continue
        sub = f"{path}.{k}" if path else k
        if v is None:
            orig.pop(k, None)
        elif isinstance(v, dict) and isinstance(orig.get(k), dict):
            orig[k] = strategic_merge(orig[k], v, sub, keys)
        elif isinstance(v, dict):
            orig[k] = strategic_merge({}, v, sub, keys)
        elif isinstance(v, list) and sub in keys:
            cur = orig.get(k)
            orig[k] = _merge_list(cur if isinstance(cur, list) else [], v, sub, keys)
        else:
            orig[k] = copy.deepcopy(v)
    return orig


def _merge_list(orig: list[Any], patch: list[Any], path: str, keys: dict[str, str]) -> list[Any]:
    key = keys[path]
    if key == _PRIMITIVE_MERGE:
        out = list(orig)
        for x in patch:
            if x not in out:
                out.append(copy.deepcopy(x))
        return out
    if any(isinstance(x, dict) and x.get("$patch") == "replace" for x in patch):
        return [copy.deepcopy(x) for x in patch if not (isinstance(x, dict) and "$patch" in x)]
    out = list(orig)
    for item in patch:
        if not isinstance(item, dict) or key not in item:
            raise bad_request(f"map: {item} does not contain declared merge key: {key}")
        idx = next(
            (i for i, o in enumerate(out) if isinstance(o, dict) and o.get(key) == item[key]), None
        )
        if item.get("$patch") == "delete":
            if idx is not None:
                out.pop(idx)
            continue
        if idx is None:
            out.append(strategic_merge({}, item, path, keys))
        else:
            out[idx] = strategic_merge(out[idx], item, path, keys)
    return out
