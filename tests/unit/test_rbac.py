"""Structural checks of deploy/rbac.yaml: the roles nodemedic's ServiceAccount is bound to.

No API server can run here (DESIGN.md §6), so the manifest is checked for what RBAC would reject
silently or what would widen the grant: unknown verbs, bindings to missing roles or subjects,
and the documented least-privilege choices (no delete, no secrets, pause ConfigMap by name).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[2]
DOCS = list(yaml.safe_load_all((REPO / "deploy" / "rbac.yaml").read_text()))
VALID_VERBS = {"get", "list", "watch", "create", "update", "patch", "delete", "deletecollection"}


def _by_kind(kind: str) -> list[dict[str, Any]]:
    return [d for d in DOCS if d["kind"] == kind]


def _rules() -> list[dict[str, Any]]:
    return [r for d in _by_kind("ClusterRole") + _by_kind("Role") for r in d["rules"]]


def _verbs(resource: str) -> set[str]:
    return {v for r in _rules() if resource in r["resources"] for v in r["verbs"]}


def _is_scraper_sample(d: dict[str, Any]) -> bool:
    return (d["metadata"].get("labels") or {}).get("app.kubernetes.io/component") == "scraper"


def test_every_binding_points_at_a_defined_role_and_the_service_account() -> None:
    """Each (Cluster)RoleBinding references a role in the file and the nodemedic ServiceAccount;
    every role but the scraper sample (bound by the user to their Prometheus) is bound."""
    roles = {(d["kind"], d["metadata"]["name"], d["metadata"].get("namespace")) for d in DOCS
             if d["kind"] in ("Role", "ClusterRole") and not _is_scraper_sample(d)}
    sa = _by_kind("ServiceAccount")[0]["metadata"]
    bindings = _by_kind("RoleBinding") + _by_kind("ClusterRoleBinding")
    assert len(bindings) == len(roles)
    for b in bindings:
        ns = b["metadata"].get("namespace") if b["roleRef"]["kind"] == "Role" else None
        assert (b["roleRef"]["kind"], b["roleRef"]["name"], ns) in roles, b["metadata"]["name"]
        assert b["subjects"] == [
            {"kind": "ServiceAccount", "name": sa["name"], "namespace": sa["namespace"]}
        ]


def test_rules_use_only_valid_verbs_and_never_delete() -> None:
    """Every verb is a real RBAC verb, and nothing grants delete or wildcards."""
    for rule in _rules():
        assert set(rule["verbs"]) <= VALID_VERBS - {"delete", "deletecollection"}, rule
        assert "*" not in rule["resources"] and "*" not in rule["apiGroups"], rule


def test_pods_are_removed_only_through_the_eviction_api() -> None:
    """Pods can be evicted (PDBs honoured) but not deleted, and no secrets are readable."""
    assert _verbs("pods/eviction") == {"create"}
    assert "delete" not in _verbs("pods")
    assert not _verbs("secrets")


def test_pause_configmap_is_readable_by_name_only() -> None:
    """The agent may read the ConfigMap kube-system/nodemedic and no other ConfigMap."""
    rules = [r for r in _rules() if "configmaps" in r["resources"]]
    assert rules and all(r.get("resourceNames") == ["nodemedic"] for r in rules)


def test_lease_writes_only_for_failover_and_the_cordon_lock() -> None:
    """Only nodemedic-failover may write Leases freely; nodemedic-cordon-lock may update only the
    cordon Lease by name; no role reads PodDisruptionBudgets."""
    for d in _by_kind("ClusterRole") + _by_kind("Role"):
        name = d["metadata"]["name"]
        updates = [r for r in d["rules"] if "leases" in r["resources"] and "update" in r["verbs"]]
        if name == "nodemedic-cordon-lock":
            assert updates and all(r.get("resourceNames") == ["nodemedic-cordon"]
                                   for r in updates), name
        else:
            writes = any("leases" in r["resources"] and {"create", "update"} & set(r["verbs"])
                         for r in d["rules"])
            assert writes == (name == "nodemedic-failover"), name
    assert not _verbs("poddisruptionbudgets"), "PDBs are enforced by the API server's 429"


def test_kubernetes_auth_can_review_tokens_and_access() -> None:
    """--web.kubernetes-auth creates TokenReviews and SubjectAccessReviews (agent/kube/reviews.py)
    with the agent's identity, and nothing else on those APIs."""
    node = next(d for d in _by_kind("ClusterRole") if d["metadata"]["name"] == "nodemedic-node")
    grants = {(g, r, v) for rule in node["rules"] for g in rule["apiGroups"]
              for r in rule["resources"] for v in rule["verbs"]}
    assert ("authentication.k8s.io", "tokenreviews", "create") in grants
    assert ("authorization.k8s.io", "subjectaccessreviews", "create") in grants
    assert {v for g, r, v in grants if r in ("tokenreviews", "subjectaccessreviews")} == {"create"}


def test_scraper_sample_grants_exactly_what_the_agent_checks() -> None:
    """The sample scraper role allows the SubjectAccessReview attributes the agent asks for
    /metrics and /status (agent.exporter.kubeauth), and nothing more."""
    from agent.exporter.kubeauth import attributes_for

    role = next(d for d in _by_kind("ClusterRole") if _is_scraper_sample(d))
    grants = {(g, r, v) for rule in role["rules"] for g in rule["apiGroups"]
              for r in rule["resources"] for v in rule["verbs"]}
    wanted = set()
    for path in ("/metrics", "/status"):
        a = attributes_for(path, "any-node")
        wanted.add((a["group"], f"{a['resource']}/{a['subresource']}", a["verb"]))
    assert grants == wanted


def test_problem_conditions_can_be_patched_on_the_status_subresource() -> None:
    """The problem detector patches nodes/status (its condition types only) and nothing more."""
    core = {v for r in _rules() if "" in r["apiGroups"] and "nodes/status" in r["resources"]
            for v in r["verbs"]}
    assert core == {"patch"}
