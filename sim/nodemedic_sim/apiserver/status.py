"""Kubernetes ``Status`` error bodies, shaped exactly as kube-apiserver returns them.

Raised as :class:`ApiError` anywhere in the in-memory API server (store, patch, eviction) and
turned into an HTTP response by nodemedic_sim.apiserver.server. Messages follow
k8s.io/apimachinery/pkg/api/errors so clients that match on ``reason``/``message`` behave as they
would against a real cluster.
"""

from __future__ import annotations

from typing import Any


class ApiError(Exception):
    """An API failure carrying the full ``Status`` body and its HTTP code."""

    def __init__(self, code: int, reason: str, message: str, details: dict[str, Any] | None = None):
        super().__init__(message)
        self.code = code
        self.reason = reason
        self.message = message
        self.details = details

    def body(self) -> dict[str, Any]:
        """The ``Status`` object sent to the client."""
        out: dict[str, Any] = {
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": self.message,
            "reason": self.reason,
        }
        if self.details is not None:
            out["details"] = self.details
        out["code"] = self.code
        return out


def _qualified(plural: str, group: str) -> str:
    return f"{plural}.{group}" if group else plural


def _details(plural: str, group: str, name: str) -> dict[str, Any]:
    d: dict[str, Any] = {"name": name}
    if group:
        d["group"] = group
    d["kind"] = plural
    return d


def not_found(plural: str, group: str, name: str) -> ApiError:
    """404 ``pods "x" not found``."""
    return ApiError(
        404,
        "NotFound",
        f'{_qualified(plural, group)} "{name}" not found',
        _details(plural, group, name),
    )


def already_exists(plural: str, group: str, name: str) -> ApiError:
    """409 ``pods "x" already exists``."""
    return ApiError(
        409,
        "AlreadyExists",
        f'{_qualified(plural, group)} "{name}" already exists',
        _details(plural, group, name),
    )


def conflict(plural: str, group: str, name: str, why: str | None = None) -> ApiError:
    """409 optimistic-concurrency failure (stale resourceVersion or failed precondition)."""
    why = why or (
        "the object has been modified; please apply your changes to the latest version and "
        "try again"
    )
    return ApiError(
        409,
        "Conflict",
        f'Operation cannot be fulfilled on {_qualified(plural, group)} "{name}": {why}',
        _details(plural, group, name),
    )


def precondition_failed(kind: str, name: str, why: str) -> ApiError:
    """409 for a failed delete precondition: kube-apiserver's storage names the Kind here
    (``on ConfigMap "c"``, details.kind ``ConfigMap``), not the resource as other conflicts do."""
    return ApiError(
        409, "Conflict", f'Operation cannot be fulfilled on {kind} "{name}": {why}',
        {"name": name, "kind": kind},
    )


def invalid(kind: str, group: str, name: str, causes: list[tuple[str, str, str]]) -> ApiError:
    """422 ``Pod "x" is invalid: field: message``; ``causes`` is (reason, field, message)."""
    summary = ", ".join(f"{f}: {m}" for _, f, m in causes)
    if len(causes) > 1:
        summary = "[" + summary + "]"
    details: dict[str, Any] = {"name": name}
    if group:
        details["group"] = group
    details["kind"] = kind
    details["causes"] = [{"reason": r, "message": m, "field": f} for r, f, m in causes]
    return ApiError(422, "Invalid", f'{kind} "{name}" is invalid: {summary}', details)


def bad_request(message: str) -> ApiError:
    """400 BadRequest (bad selector, namespace mismatch, undecodable body)."""
    return ApiError(400, "BadRequest", message)


def gone(message: str) -> ApiError:
    """410 Expired: the requested resourceVersion has been compacted."""
    return ApiError(410, "Expired", message)


def method_not_allowed() -> ApiError:
    """405 for verbs a resource does not support."""
    return ApiError(
        405, "MethodNotAllowed", "the server does not allow this method on the requested resource"
    )


def unsupported_media_type(content_type: str) -> ApiError:
    """415 for a PATCH content type we do not implement (e.g. server-side apply)."""
    return ApiError(
        415,
        "UnsupportedMediaType",
        f"the body of the request was in an unknown format - accepted media types include: "
        f"application/json-patch+json, application/merge-patch+json, "
        f'application/strategic-merge-patch+json (got "{content_type}")',
    )


def injected(code: int) -> ApiError:
    """A failure produced by fault injection, with the reason Kubernetes uses for that code."""
    reasons = {
        400: "BadRequest",
        401: "Unauthorized",
        403: "Forbidden",
        404: "NotFound",
        409: "Conflict",
        410: "Expired",
        422: "Invalid",
        429: "TooManyRequests",
        500: "InternalError",
        503: "ServiceUnavailable",
        504: "Timeout",
    }
    reason = reasons.get(code, "InternalError")
    return ApiError(code, reason, f"injected fault: HTTP {code} {reason}")
