"""Server-side field validation (``?fieldValidation=``) of written objects, as kube-apiserver does.

kube-apiserver decodes a written object into its Go type; a field the type lacks is an "unknown
field". The ``fieldValidation`` query parameter says what happens then: ``Strict`` rejects the
request (400 ``<Kind> in version "v1" cannot be handled as a <Kind>: strict decoding error:
unknown field "spec.bogus"``; 422 for a patch), ``Warn`` (the default) and ``Ignore`` drop the
field, ``Warn`` adding a ``Warning: 299 - "unknown field ..."`` header per field. kubectl >= 1.27
relies on it: when the OpenAPI v3 document advertises the parameter it sends
``fieldValidation=Strict`` instead of validating on the client. Here the Go type is the kind's
schema in the real OpenAPI v3 document (nodemedic_sim.apiserver.openapi). Not done: duplicate
fields are not detected (the body is parsed by json.loads, which keeps the last), and a patch is
checked only under Strict (under Warn/Ignore its unknown fields are kept, without a warning).
"""

from __future__ import annotations

import json
from typing import Any

from aiohttp import web

from nodemedic_sim.apiserver import status as st
from nodemedic_sim.apiserver.openapi import schema_for
from nodemedic_sim.apiserver.resources import ResourceType

_DIRECTIVES = ("", "Ignore", "Strict", "Warn")
_REF = "#/components/schemas/"


def directive(request: web.Request, options_kind: str) -> str:
    """The request's fieldValidation value (``Warn`` when absent); 422 when not a known one."""
    value = request.query.get("fieldValidation", "")
    if value not in _DIRECTIVES:
        supported = ", ".join(f'"{d}"' for d in _DIRECTIVES)
        message = f'Unsupported value: "{value}": supported values: {supported}'
        raise st.ApiError(
            422,
            "Invalid",
            f'{options_kind}.meta.k8s.io "" is invalid: fieldValidation: {message}',
            {
                "group": "meta.k8s.io",
                "kind": options_kind,
                "causes": [
                    {
                        "reason": "FieldValueNotSupported",
                        "message": message,
                        "field": "fieldValidation",
                    }
                ],
            },
        )
    return value or "Warn"


def _resolve(schema: dict[str, Any], schemas: dict[str, Any]) -> dict[str, Any]:
    while True:
        ref = schema.get("$ref")
        if ref is None and len(schema.get("allOf") or ()) == 1:
            ref = schema["allOf"][0].get("$ref")
        if not isinstance(ref, str) or not ref.startswith(_REF):
            return schema
        schema = schemas[ref.removeprefix(_REF)]


def _prune(
    value: Any, schema: dict[str, Any], schemas: dict[str, Any], path: str, unknown: list[str]
) -> Any:
    """``value`` without the fields ``schema`` lacks; their paths are appended to ``unknown``."""
    schema = _resolve(schema, schemas)
    if schema.get("x-kubernetes-preserve-unknown-fields"):
        return value
    if isinstance(value, dict):
        props = schema.get("properties")
        extra = schema.get("additionalProperties")
        if isinstance(props, dict):
            out = {}
            for key, item in value.items():
                where = f"{path}.{key}" if path else key
                if key in props:
                    out[key] = _prune(item, props[key], schemas, where, unknown)
                else:
                    unknown.append(where)
            return out
        if isinstance(extra, dict):
            return {
                k: _prune(v, extra, schemas, f"{path}[{k}]", unknown) for k, v in value.items()
            }
        return value
    if isinstance(value, list) and isinstance(schema.get("items"), dict):
        return [
            _prune(v, schema["items"], schemas, f"{path}[{i}]", unknown)
            for i, v in enumerate(value)
        ]
    return value


def unknown_fields(rt: ResourceType, obj: dict[str, Any]) -> tuple[dict[str, Any], list[str]]:
    """(``obj`` without unknown fields, their paths in kube-apiserver's spelling)."""
    schema, schemas = schema_for(rt)
    unknown: list[str] = []
    pruned: dict[str, Any] = _prune(obj, schema, schemas, "", unknown)
    return pruned, unknown


def _strict_message(unknown: list[str]) -> str:
    return "strict decoding error: " + ", ".join(f'unknown field "{p}"' for p in unknown)


def check_body(
    request: web.Request, rt: ResourceType, body: dict[str, Any], options_kind: str
) -> tuple[dict[str, Any], list[str]]:
    """A create/update body as kube-apiserver would keep it, and the warnings to send.

    Raises the 400 kube-apiserver answers for unknown fields under ``fieldValidation=Strict``.
    """
    mode = directive(request, options_kind)
    pruned, unknown = unknown_fields(rt, body)
    if unknown and mode == "Strict":
        raise st.bad_request(
            f'{rt.kind} in version "{rt.version}" cannot be handled as a {rt.kind}: '
            + _strict_message(unknown)
        )
    return pruned, unknown if mode == "Warn" else []


def _go(value: Any) -> str:
    """``value`` as Go's fmt prints a decoded JSON value (``map[a:1 b:[x y]]``)."""
    if isinstance(value, dict):
        return "map[" + " ".join(f"{k}:{_go(value[k])}" for k in sorted(value)) + "]"
    if isinstance(value, list):
        return "[" + " ".join(_go(v) for v in value) + "]"
    if value is None:
        return "<nil>"
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def check_patched(
    request: web.Request, rt: ResourceType, patch: Any, patched: dict[str, Any], strategic: bool
) -> None:
    """Rejects a patch whose result has unknown fields as kube-apiserver does under Strict (422).

    The value shown is the patch itself for a strategic merge patch (printed as a Go map), the
    patched object (as sorted JSON) for the other patch types.
    """
    unknown = sorted(unknown_fields(rt, patched)[1])
    if not unknown:
        return
    shown = _go(patch) if strategic else json.dumps(patched, separators=(",", ":"), sort_keys=True)
    message = f"Invalid value: {json.dumps(shown)}: {_strict_message(unknown)}"
    raise st.ApiError(
        422,
        "Invalid",
        f' "" is invalid: patch: {message}',
        {"causes": [{"reason": "FieldValueInvalid", "message": message, "field": "patch"}]},
    )


def add_warnings(resp: web.StreamResponse, unknown: list[str]) -> web.StreamResponse:
    """Adds kube-apiserver's ``Warning`` header for each dropped field."""
    for path in unknown:
        resp.headers.add("Warning", "299 - " + json.dumps(f'unknown field "{path}"'))
    return resp
