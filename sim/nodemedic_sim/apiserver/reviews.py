"""TokenReview and SubjectAccessReview for the in-memory API server: a small configurable model.

Served by nodemedic_sim.apiserver.server at ``POST /apis/authentication.k8s.io/v1/tokenreviews``
and ``POST /apis/authorization.k8s.io/v1/subjectaccessreviews`` (create-only, never stored, as in
kube-apiserver). Tests say which tokens exist (token -> username, groups, uid) and what is allowed
(an RBAC-like allow list: a user or ``group:NAME`` may do a verb on group/resource/subresource,
optionally only for some names; ``*`` matches anything in a field). Everything else is denied,
with the reason RBAC's authorizer gives nothing (allowed=false, no reason).

Typical use::

    server.reviews.add_token("prom-token", "system:serviceaccount:monitoring:prometheus")
    server.reviews.allow("system:serviceaccount:monitoring:prometheus", "get", "nodes",
                         subresource="metrics")
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import Any

from nodemedic_sim.apiserver import status as st

AUTHN_REVIEWS = "/apis/authentication.k8s.io/v1/tokenreviews"
ACCESS_REVIEWS = "/apis/authorization.k8s.io/v1/subjectaccessreviews"
PATHS = (AUTHN_REVIEWS, ACCESS_REVIEWS)


@dataclass(frozen=True)
class Rule:
    """``subject`` (a username, or ``group:NAME``) may ``verb`` group/resource/subresource."""

    subject: str
    verb: str
    resource: str
    group: str = ""
    subresource: str = ""
    names: tuple[str, ...] = ()

    def matches(self, user: str, groups: list[str], attrs: dict[str, Any]) -> bool:
        subjects = {user, *(f"group:{g}" for g in groups)}
        if self.subject not in subjects:
            return False

        def ok(mine: str, theirs: Any) -> bool:
            return mine == "*" or mine == str(theirs or "")

        return (ok(self.verb, attrs.get("verb")) and ok(self.group, attrs.get("group"))
                and ok(self.resource, attrs.get("resource"))
                and ok(self.subresource, attrs.get("subresource"))
                and (not self.names or str(attrs.get("name") or "") in self.names))


class Reviews:
    """The token and authorisation model behind the two review APIs."""

    def __init__(self) -> None:
        self.tokens: dict[str, dict[str, Any]] = {}
        self.rules: list[Rule] = []
        self.token_reviews = 0
        self.access_reviews = 0
        self.reviewed: Counter[str] = Counter()  # TokenReviews by the username they resolved to

    def add_token(self, token: str, username: str, groups: tuple[str, ...] = (),
                  uid: str = "") -> None:
        """``token`` authenticates as ``username`` (``system:authenticated`` is added)."""
        self.tokens[token] = {"username": username, "uid": uid or f"uid-{username}",
                              "groups": [*groups, "system:authenticated"]}

    def allow(self, subject: str, verb: str, resource: str, *, group: str = "",
              subresource: str = "", names: tuple[str, ...] = ()) -> None:
        self.rules.append(Rule(subject, verb, resource, group, subresource, names))

    def handle(self, path: str, body: Any) -> dict[str, Any]:
        """The response object for a POST to one of :data:`PATHS`."""
        if not isinstance(body, dict) or not isinstance(body.get("spec"), dict):
            raise st.bad_request("the body must be an object with a spec")
        spec = body["spec"]
        out = {"apiVersion": body.get("apiVersion"), "kind": body.get("kind"),
               "metadata": {"creationTimestamp": None}, "spec": spec}
        if path == AUTHN_REVIEWS:
            self.token_reviews += 1
            who = self.tokens.get(str(spec.get("token") or ""))
            self.reviewed[who["username"] if who else ""] += 1
            out["status"] = ({"authenticated": True, "user": who} if who is not None
                             else {"user": {}, "error": "invalid bearer token"})
            return out
        self.access_reviews += 1
        attrs = spec.get("resourceAttributes") or {}
        user, groups = str(spec.get("user") or ""), list(spec.get("groups") or [])
        allowed = any(r.matches(user, groups, attrs) for r in self.rules)
        out["status"] = {"allowed": allowed}
        return out
