"""``--web.kubernetes-auth``: bearer tokens checked by TokenReview, requests by SubjectAccessReview.

Used by agent.exporter.auth.Protection (one check per protected request) and built by
agent.exporter.webfront with the shared API client. The attributes are kube-rbac-proxy's for a node
exporter, so a Prometheus ServiceAccount that may scrape kubelets and node_exporter may scrape
nodemedic too:

- /metrics: ``get`` ``nodes/metrics`` (core group) with ``name`` = this node;
- /status, the landing page and anything else: ``get`` ``nodes/status`` in the API group
  ``nodemedic.io`` with ``name`` = this node. /status lists pods and the agent's decisions, more
  than metrics; a group of its own means no existing grant (the kubelet's ``nodes/proxy``, or
  the real ``nodes/status``) opens it by accident.

Decisions are cached by SHA-256 of the token and the attributes: allowed for
``POSITIVE_TTL_SECONDS``, denied (401 unknown token, 403 not allowed) for
``NEGATIVE_TTL_SECONDS``, so a 15 s scrape costs at most two API calls a minute. API errors are
not cached and fail closed: with the API unreachable a cold entry is refused (401), a warm one is
served until it expires.
"""

from __future__ import annotations

import hashlib
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

import structlog

from agent.kube.errors import KubeError
from agent.kube.reviews import review_access, review_token

log = structlog.get_logger("nodemedic.kubeauth")

METRICS_ATTRIBUTES = {"verb": "get", "group": "", "resource": "nodes", "subresource": "metrics"}
STATUS_ATTRIBUTES = {"verb": "get", "group": "nodemedic.io", "resource": "nodes",
                     "subresource": "status"}
POSITIVE_TTL_SECONDS = 60.0
NEGATIVE_TTL_SECONDS = 10.0
MAX_ENTRIES = 1024


def attributes_for(path: str, node: str) -> dict[str, str]:
    """The SubjectAccessReview resourceAttributes a request to ``path`` needs."""
    base = METRICS_ATTRIBUTES if path == "/metrics" else STATUS_ATTRIBUTES
    return {**base, "name": node}


class KubeAuthorizer:
    """Check ``Authorization: Bearer`` headers; ``api()`` returns the client (None = none yet)."""

    def __init__(self, api: Callable[[], Any | None], node: str,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.api, self.node, self.clock = api, node, clock
        self._cache: OrderedDict[str, tuple[float, int, str]] = OrderedDict()

    def _put(self, key: str, status: int, why: str) -> None:
        ttl = POSITIVE_TTL_SECONDS if status == 200 else NEGATIVE_TTL_SECONDS
        self._cache[key] = (self.clock() + ttl, status, why)
        self._cache.move_to_end(key)
        while len(self._cache) > MAX_ENTRIES:
            self._cache.popitem(last=False)

    async def check(self, authorization: str | None, path: str) -> tuple[int, str]:
        """(200, "") when allowed, else (401 or 403, why)."""
        scheme, _, token = (authorization or "").partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token:
            return 401, "a bearer token is required"
        attrs = attributes_for(path, self.node)
        parts = [token, *(f"{k}={v}" for k, v in sorted(attrs.items()))]
        key = hashlib.sha256("\0".join(parts).encode()).hexdigest()
        hit = self._cache.get(key)
        if hit is not None and hit[0] > self.clock():
            return hit[1], hit[2]
        api = self.api()
        if api is None:
            return 401, "cannot verify the token: no Kubernetes API client"
        try:
            who = await review_token(api, token)
            if not who.authenticated:
                status, why = 401, "token not accepted" + (f": {who.error}" if who.error else "")
            else:
                allowed, reason = await review_access(api, who, attrs)
                status = 200 if allowed else 403
                why = "" if allowed else (
                    f"{who.username} may not {attrs['verb']} {attrs['resource']}/"
                    f"{attrs['subresource']}" + (f": {reason}" if reason else ""))
        except KubeError as exc:
            log.warning("kubernetes_auth_unavailable", error=str(exc))
            return 401, f"cannot verify the token: {exc}"
        self._put(key, status, why)
        return status, why
