"""Kubernetes API errors as plain exceptions, and the raw-JSON call helper the kube modules share.

Used by agent.kube.nodes, .pods, .events and .configmaps (the remediation side of agent.kube).
Callers outside agent.kube never see kubernetes_asyncio types: they catch :class:`KubeError` and
its subclasses. Responses are read as raw JSON dicts (``_preload_content=False``) rather than
generated models so that a read-modify-replace never drops fields the client's models do not know.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable
from typing import Any

import aiohttp

# Per-request time limit: a hung API server must not stall a remediation tick.
REQUEST_TIMEOUT_SECONDS = 5.0
# Cluster-wide LISTs (nodes, for the cordon budget) may be large in big clusters.
LIST_TIMEOUT_SECONDS = 30.0


class KubeError(Exception):
    """The API answered with an error status; ``status`` is the HTTP code (0 = no answer)."""

    def __init__(self, status: int, reason: str, body: Any = None) -> None:
        super().__init__(f"HTTP {status}: {reason}" if status else reason)
        self.status = status
        self.reason = reason
        self.body = body


class KubeUnavailable(KubeError):
    """The API could not be reached (connection refused, reset, timeout)."""

    def __init__(self, reason: str) -> None:
        super().__init__(0, reason)


class KubeNotFound(KubeError):
    """404."""


class KubeConflict(KubeError):
    """409: the object changed since we read it (stale resourceVersion) or already exists."""


class KubeTooManyRequests(KubeError):
    """429: for the Eviction API, a PodDisruptionBudget forbids the eviction right now."""


_BY_STATUS: dict[int, type[KubeError]] = {
    404: KubeNotFound,
    409: KubeConflict,
    429: KubeTooManyRequests,
}


def raw_body(body: dict[str, Any]) -> Any:
    """Pass a raw JSON dict where the generated client annotates a model (it serialises both)."""
    return body


def _message(body: Any, fallback: str) -> str:
    if isinstance(body, dict) and isinstance(body.get("message"), str):
        return str(body["message"])
    return fallback


async def call_json(
    request: Awaitable[Any], limit_seconds: float = REQUEST_TIMEOUT_SECONDS
) -> dict[str, Any]:
    """Await a kubernetes_asyncio call made with ``_preload_content=False`` and return its JSON.

    Raises :class:`KubeUnavailable` when no answer came and the matching :class:`KubeError`
    subclass for a non-2xx status, with the API's own ``message`` as the reason.
    """
    try:
        async with asyncio.timeout(limit_seconds):
            resp = await request
            try:
                raw = await resp.read()
            finally:
                resp.release()
    except (aiohttp.ClientError, OSError, TimeoutError) as exc:
        raise KubeUnavailable(f"API unreachable: {type(exc).__name__}: {exc}") from exc
    status = int(resp.status)
    try:
        body: Any = json.loads(raw) if raw else {}
    except ValueError:
        body = raw[:200].decode("utf-8", "replace")
    if not 200 <= status <= 299:
        cls = _BY_STATUS.get(status, KubeError)
        raise cls(status, _message(body, str(getattr(resp, "reason", "") or "error")), body)
    if not isinstance(body, dict):
        raise KubeError(status, "API returned a non-object JSON body", body)
    return body
