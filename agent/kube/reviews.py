"""TokenReview and SubjectAccessReview: who holds a bearer token, and may they do this?

Called by agent.exporter.kubeauth (``--web.kubernetes-auth``) for requests to /metrics and
/status, the way kube-rbac-proxy checks them: the token goes to
``POST /apis/authentication.k8s.io/v1/tokenreviews``; the user, groups, uid and extra it returns go
with the request's attributes to ``POST /apis/authorization.k8s.io/v1/subjectaccessreviews``.
Needs ``create`` on both (deploy/rbac.yaml, ClusterRole nodemedic-node). Errors are
agent.kube.errors types (KubeUnavailable when the API cannot be reached).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from kubernetes_asyncio import client

from agent.kube.errors import REQUEST_TIMEOUT_SECONDS, call_json, raw_body


@dataclass(frozen=True)
class Identity:
    """A TokenReview's answer (``authenticated`` False: the token is not valid)."""

    authenticated: bool
    username: str = ""
    uid: str = ""
    groups: tuple[str, ...] = ()
    extra: dict[str, list[str]] = field(default_factory=dict)
    error: str = ""


async def review_token(api: Any, token: str, audiences: tuple[str, ...] = ()) -> Identity:
    """Ask the API server who ``token`` belongs to."""
    spec: dict[str, Any] = {"token": token}
    if audiences:
        spec["audiences"] = list(audiences)
    body = {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenReview", "spec": spec}
    resp = await call_json(client.AuthenticationV1Api(api).create_token_review(
        raw_body(body), _preload_content=False, _request_timeout=REQUEST_TIMEOUT_SECONDS))
    status = resp.get("status") or {}
    user = status.get("user") or {}
    extra = user.get("extra") or {}
    return Identity(
        authenticated=status.get("authenticated") is True,
        username=str(user.get("username") or ""),
        uid=str(user.get("uid") or ""),
        groups=tuple(str(g) for g in user.get("groups") or ()),
        extra={str(k): [str(x) for x in v] for k, v in extra.items() if isinstance(v, list)},
        error=str(status.get("error") or ""),
    )


async def review_access(api: Any, who: Identity, attributes: dict[str, str]) -> tuple[bool, str]:
    """(allowed, reason) for ``who`` doing ``attributes`` (SubjectAccessReview
    resourceAttributes: verb, group, resource, subresource, name)."""
    spec: dict[str, Any] = {"user": who.username, "groups": list(who.groups),
                            "resourceAttributes": dict(attributes)}
    if who.uid:
        spec["uid"] = who.uid
    if who.extra:
        spec["extra"] = who.extra
    body = {"apiVersion": "authorization.k8s.io/v1", "kind": "SubjectAccessReview", "spec": spec}
    resp = await call_json(client.AuthorizationV1Api(api).create_subject_access_review(
        raw_body(body), _preload_content=False, _request_timeout=REQUEST_TIMEOUT_SECONDS))
    status = resp.get("status") or {}
    return status.get("allowed") is True, str(status.get("reason") or "")
