"""Kubernetes object semantics on top of the store: create/update/patch/delete as the generic
registry and the per-resource strategies of kube-apiserver behave.

Called by nodemedic_sim.apiserver.server (HTTP verbs), nodemedic_sim.apiserver.eviction and the
``ApiServer`` seed/read helpers. It owns: metadata management (uid, creationTimestamp, managed
resourceVersion, generation that bumps on spec changes only, generateName), optimistic
concurrency (409 on a stale resourceVersion or failed delete precondition), status-subresource
separation, validation that returns 422 for obviously bad objects, graceful pod deletion
(deletionTimestamp, then removal when the grace period ends, as the kubelet would confirm), and
finalizers.
"""

from __future__ import annotations

import copy
import json
import re
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from nodemedic_sim.apiserver import managed
from nodemedic_sim.apiserver import status as st
from nodemedic_sim.apiserver.patch import apply_patch
from nodemedic_sim.apiserver.resources import RESOURCES, ResourceType
from nodemedic_sim.apiserver.selectors import valid_label_key, valid_label_value
from nodemedic_sim.apiserver.store import Obj, Store

_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
_TAINT_EFFECTS = ("NoExecute", "NoSchedule", "PreferNoSchedule")
# Resources whose kube-apiserver strategy keeps metadata.generation (bumped on spec changes);
# nodes, namespaces, config maps, events, leases and endpoint slices have none there.
_VERSIONED = frozenset({"pods", "poddisruptionbudgets", "daemonsets"})
_GENERATE_SUFFIX = 5
_SYSTEM_NAMESPACES = ("default", "kube-node-lease", "kube-public", "kube-system")


def rfc3339(ts: float) -> str:
    """Kubernetes metav1.Time text: second precision, UTC, trailing Z."""
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_rfc3339(text: str) -> float:
    """Seconds since the epoch of a metav1.Time / MicroTime string."""
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


def _body_sans_meta(obj: Obj) -> Obj:
    return {k: v for k, v in obj.items() if k not in ("metadata", "status", "kind", "apiVersion")}


class Registry:
    """The object layer: every write goes through here so the semantics are in one place."""

    def __init__(self, store: Store, clock: Callable[[], float] = time.time) -> None:
        self.store = store
        self.clock = clock
        # Pods waiting for the end of their grace period: (ns, name) -> deadline.
        self.terminating: dict[tuple[str, str], float] = {}
        # Nodes whose kubelet is "down": their terminating pods are never confirmed deleted.
        self.unresponsive_nodes: set[str] = set()
        self.pdb_dirty: set[str] = set()
        for ns in _SYSTEM_NAMESPACES:
            self.create(_NAMESPACE, "", {"metadata": {"name": ns}})

    # ---- reads ---------------------------------------------------------------------------
    def get(self, rt: ResourceType, namespace: str, name: str) -> Obj:
        obj = self.store.get(rt.key, namespace if rt.namespaced else "", name)
        if obj is None:
            raise st.not_found(rt.plural, rt.group, name)
        return obj

    # ---- create --------------------------------------------------------------------------
    def create(
        self, rt: ResourceType, namespace: str, body: Obj, *, raw: bool = False,
        manager: str | None = "unknown",
    ) -> Obj:
        """Create ``body``; ``raw`` keeps a given status (seed helper: as a kubelet set it)."""
        if not isinstance(body, dict) or not isinstance(body.get("metadata", {}), dict):
            raise st.bad_request("the body of the request was not a valid object")
        kind = body.get("kind")
        if kind and kind != rt.kind:
            raise st.bad_request(
                f"the kind of the provided object ({kind}) does not match {rt.kind}"
            )
        obj = copy.deepcopy(body)
        obj.pop("kind", None)
        obj.pop("apiVersion", None)
        meta = obj.setdefault("metadata", {})
        ns = namespace if rt.namespaced else ""
        if rt.namespaced:
            body_ns = meta.get("namespace")
            if body_ns and ns and body_ns != ns:
                raise st.bad_request(
                    "the namespace of the provided object does not match the namespace sent on "
                    "the request"
                )
            ns = ns or body_ns or "default"
            meta["namespace"] = ns
            if rt.plural != "namespaces" and self.store.get("namespaces", "", ns) is None:
                raise st.not_found("namespaces", "", ns)
        else:
            meta.pop("namespace", None)
        if not meta.get("name") and meta.get("generateName"):
            for _ in range(8):
                cand = meta["generateName"] + uuid.uuid4().hex[:_GENERATE_SUFFIX]
                if self.store.get(rt.key, ns, cand) is None:
                    meta["name"] = cand
                    break
        self._validate(rt, obj)
        name = meta["name"]
        if self.store.get(rt.key, ns, name) is not None:
            raise st.already_exists(rt.plural, rt.group, name)
        now = self.clock()
        rv = self.store.next_rv()
        for drop in ("deletionTimestamp", "deletionGracePeriodSeconds", "managedFields"):
            meta.pop(drop, None)
        meta["uid"] = str(uuid.uuid4())
        meta["resourceVersion"] = str(rv)
        meta["creationTimestamp"] = rfc3339(now)
        if rt.plural in _VERSIONED:
            meta["generation"] = 1
        else:
            meta.pop("generation", None)
        if not raw:
            self._prepare_create(rt, obj)
        if manager is not None:  # None: a seeded object whose history nobody knows
            meta["managedFields"] = managed.update(
                None, {}, obj, manager=manager, subresource="", api_version=rt.api_version,
                now=rfc3339(now),
            )
        self.store.write(rt.key, "ADDED", obj, None, rv)
        self._after_write(rt, obj)
        return obj

    def _prepare_create(self, rt: ResourceType, obj: Obj) -> None:
        """Per-resource PrepareForCreate: status a client may not set on create is reset."""
        if rt.plural == "pods":
            obj["status"] = {"phase": "Pending", "qosClass": _qos_class(obj)}
        elif rt.plural == "namespaces":
            obj.setdefault("spec", {"finalizers": ["kubernetes"]})
            obj["status"] = {"phase": "Active"}
        elif rt.plural in ("poddisruptionbudgets", "daemonsets"):
            obj["status"] = {}

    # ---- update --------------------------------------------------------------------------
    def replace(  # noqa: PLR0917 - mirrors the REST call's parts
        self, rt: ResourceType, namespace: str, name: str, body: Obj, subresource: str = "",
        manager: str = "unknown",
    ) -> Obj:
        """PUT: full replacement guarded by ``metadata.resourceVersion`` when it is set."""
        if not isinstance(body, dict) or not isinstance(body.get("metadata"), dict):
            raise st.bad_request("the body of the request was not a valid object")
        body_name = body["metadata"].get("name")
        if body_name and body_name != name:
            raise st.bad_request(
                f"the name of the object ({body_name}) does not match the name on the URL ({name})"
            )
        old = self.get(rt, namespace, name)
        want_rv = body["metadata"].get("resourceVersion")
        if want_rv and want_rv != old["metadata"]["resourceVersion"]:
            raise st.conflict(rt.plural, rt.group, name)
        new = copy.deepcopy(body)
        new.pop("kind", None)
        new.pop("apiVersion", None)
        return self._update(rt, old, new, subresource, manager)

    def patch(  # noqa: PLR0917 - mirrors the REST call's parts
        self,
        rt: ResourceType,
        namespace: str,
        name: str,
        content_type: str,
        patch: Any,
        subresource: str = "",
        manager: str = "unknown",
    ) -> Obj:
        """PATCH (strategic, merge or JSON patch); a resourceVersion in it is a precondition."""
        old = self.get(rt, namespace, name)
        full = {"kind": rt.kind, "apiVersion": rt.api_version, **old}
        new = apply_patch(full, content_type, patch, rt.kind)
        new_meta = new.get("metadata")
        if not isinstance(new_meta, dict):
            raise st.bad_request("metadata must be an object")
        want_rv = new_meta.get("resourceVersion")
        if want_rv != old["metadata"]["resourceVersion"]:
            raise st.conflict(rt.plural, rt.group, name)
        if new_meta.get("name") != name:
            raise st.bad_request(
                f"the name of the object ({new_meta.get('name')}) does not match the name on "
                f"the URL ({name})"
            )
        new.pop("kind", None)
        new.pop("apiVersion", None)
        return self._update(rt, old, new, subresource, manager)

    def _update(
        self, rt: ResourceType, old: Obj, new: Obj, subresource: str, manager: str = "unknown"
    ) -> Obj:
        old_meta = old["metadata"]
        if subresource == "status":
            # Status writes change status only (and labels/annotations, as for Node and Pod).
            merged = {**old, "status": new.get("status", {})}
            merged["metadata"] = {**old_meta}
            for k in ("labels", "annotations"):
                if k in new["metadata"]:
                    merged["metadata"][k] = new["metadata"][k]
            new = merged
        elif rt.has_status:
            if "status" in old:
                new["status"] = old["status"]
            else:
                new.pop("status", None)
        meta = new["metadata"] = dict(new.get("metadata") or {})  # never alias the stored dict
        for k in (
            "uid",
            "creationTimestamp",
            "namespace",
            "name",
            "generation",
            "deletionTimestamp",
            "deletionGracePeriodSeconds",
        ):
            if k in old_meta:
                meta[k] = old_meta[k]
            else:
                meta.pop(k, None)
        meta.pop("resourceVersion", None)
        meta.pop("managedFields", None)
        if old_meta.get("deletionTimestamp") and set(meta.get("finalizers") or []) - set(
            old_meta.get("finalizers") or []
        ):
            raise st.invalid(
                rt.kind,
                rt.group,
                meta["name"],
                [
                    (
                        "FieldValueForbidden",
                        "metadata.finalizers",
                        "Forbidden: no new finalizers can be added if the object is being deleted",
                    )
                ],
            )
        self._validate(rt, new)
        if rt.plural in _VERSIONED and _body_sans_meta(new) != _body_sans_meta(old):
            meta["generation"] = int(old_meta.get("generation", 1)) + 1
        compare_old = {
            **old,
            "metadata": {
                k: v for k, v in old_meta.items() if k not in ("resourceVersion", "managedFields")
            },
        }
        if new == compare_old:
            return old  # no-op update: same resourceVersion, no watch event, as in Kubernetes
        meta["managedFields"] = managed.update(
            old_meta.get("managedFields"), old, new, manager=manager, subresource=subresource,
            api_version=rt.api_version, now=rfc3339(self.clock()),
        )
        rv = self.store.next_rv()
        meta["resourceVersion"] = str(rv)
        if (
            meta.get("deletionTimestamp")
            and not meta.get("finalizers")
            and not (rt.plural == "pods" and (meta["namespace"], meta["name"]) in self.terminating)
        ):
            self.store.write(rt.key, "DELETED", new, old, rv)
        else:
            self.store.write(rt.key, "MODIFIED", new, old, rv)
        self._after_write(rt, new)
        return new

    # ---- delete --------------------------------------------------------------------------
    def delete(
        self, rt: ResourceType, namespace: str, name: str, options: Obj | None = None
    ) -> Obj:
        """DELETE with DeleteOptions (gracePeriodSeconds, preconditions); returns the object."""
        options = options or {}
        obj = self.get(rt, namespace, name)
        self.check_preconditions(rt, obj, options)
        if rt.plural == "namespaces":
            return self._delete_namespace(obj)
        grace = 0
        if rt.plural == "pods":
            grace = self._pod_grace(obj, options.get("gracePeriodSeconds"))
        if grace > 0:
            return self._graceful_delete(rt, obj, grace)
        if obj["metadata"].get("finalizers"):
            if obj["metadata"].get("deletionTimestamp"):
                return obj
            return self._mark_deleting(rt, obj, 0)
        return self._remove(rt, obj)

    def check_preconditions(self, rt: ResourceType, obj: Obj, options: Obj) -> None:
        """409 when DeleteOptions.preconditions (uid, resourceVersion) do not match ``obj``."""
        meta = obj["metadata"]
        name = meta["name"]
        pre = options.get("preconditions") or {}
        if pre.get("uid") and pre["uid"] != meta["uid"]:
            raise st.precondition_failed(
                rt.kind, name,
                f"the UID in the precondition ({pre['uid']}) does not match the UID in record "
                f"({meta['uid']}). The object might have been deleted and then recreated",
            )
        if pre.get("resourceVersion") and pre["resourceVersion"] != meta["resourceVersion"]:
            raise st.precondition_failed(
                rt.kind, name,
                f"the ResourceVersion in the precondition ({pre['resourceVersion']}) does not "
                f"match the ResourceVersion in record ({meta['resourceVersion']}). The object "
                "might have been modified",
            )

    def _pod_grace(self, pod: Obj, requested: Any) -> int:
        """podStrategy.CheckGracefulDelete: unscheduled or finished pods go at once."""
        spec = pod.get("spec") or {}
        if requested is not None:
            period = int(requested)
        else:
            period = int(spec.get("terminationGracePeriodSeconds", 30))
        if not spec.get("nodeName"):
            period = 0
        if (pod.get("status") or {}).get("phase") in ("Succeeded", "Failed"):
            period = 0
        return 1 if period < 0 else period

    def _graceful_delete(self, rt: ResourceType, obj: Obj, grace: int) -> Obj:
        meta = obj["metadata"]
        ident = (meta.get("namespace", ""), meta["name"])
        current = meta.get("deletionGracePeriodSeconds")
        if meta.get("deletionTimestamp") and current is not None and grace >= current:
            return obj  # a second delete may only shorten the grace period
        self.terminating[ident] = self.clock() + grace
        return self._mark_deleting(rt, obj, grace)

    def _mark_deleting(self, rt: ResourceType, obj: Obj, grace: int) -> Obj:
        meta = {**obj["metadata"]}
        meta["deletionTimestamp"] = rfc3339(self.clock() + grace)
        meta["deletionGracePeriodSeconds"] = grace
        if not meta.get("finalizers") and grace == 0 and rt.plural != "pods":
            return self._remove(rt, obj)
        rv = self.store.next_rv()
        meta["resourceVersion"] = str(rv)
        new = {**obj, "metadata": meta}
        self.store.write(rt.key, "MODIFIED", new, obj, rv)
        self._after_write(rt, new)
        return new

    def _remove(self, rt: ResourceType, obj: Obj) -> Obj:
        rv = self.store.next_rv()
        meta = obj["metadata"]
        self.terminating.pop((meta.get("namespace", ""), meta["name"]), None)
        gone_obj = {**obj, "metadata": {**meta, "resourceVersion": str(rv)}}
        self.store.write(rt.key, "DELETED", gone_obj, obj, rv)
        self._after_write(rt, gone_obj)
        return gone_obj

    def _delete_namespace(self, ns_obj: Obj) -> Obj:
        """Delete the contents of a namespace, then the namespace (namespace controller work)."""
        name = ns_obj["metadata"]["name"]
        for rt in RESOURCES:
            if rt.namespaced and not rt.storage:
                for obj in self.store.items(rt.key, name):
                    self._remove(rt, obj)
        return self._remove(_NAMESPACE, ns_obj)

    def sweep(self) -> int:
        """Remove pods whose grace period ended (the kubelet's confirmation); returns how many."""
        now = self.clock()
        done = 0
        for ident, deadline in list(self.terminating.items()):
            if deadline > now:
                continue
            pod = self.store.get("pods", *ident)
            if pod is None:
                self.terminating.pop(ident, None)
                continue
            if (pod.get("spec") or {}).get("nodeName") in self.unresponsive_nodes:
                continue
            self.terminating.pop(ident, None)
            if pod["metadata"].get("finalizers"):
                continue
            self._remove(_POD, pod)
            done += 1
        return done

    def _after_write(self, rt: ResourceType, obj: Obj) -> None:
        if rt.plural in ("pods", "poddisruptionbudgets"):
            self.pdb_dirty.add(obj["metadata"].get("namespace", ""))

    # ---- validation ----------------------------------------------------------------------
    def _validate(self, rt: ResourceType, obj: Obj) -> None:
        meta = obj.get("metadata") or {}
        name = str(meta.get("name") or "")
        causes: list[tuple[str, str, str]] = []
        if not name:
            causes.append(
                (
                    "FieldValueRequired",
                    "metadata.name",
                    "Required value: name or generateName is required",
                )
            )
        else:
            rx, what = (
                (_LABEL, "RFC 1123 label")
                if rt.plural == "namespaces"
                else (_SUBDOMAIN, "RFC 1123 subdomain")
            )
            if not rx.match(name) or len(name) > 253:
                causes.append(
                    (
                        "FieldValueInvalid",
                        "metadata.name",
                        f'Invalid value: "{name}": a lowercase {what} must consist of '
                        "lower case alphanumeric characters, '-' or '.', and must start "
                        "and end with an alphanumeric character",
                    )
                )
        for k, v in (meta.get("labels") or {}).items():
            if not valid_label_key(str(k)):
                causes.append(
                    (
                        "FieldValueInvalid",
                        "metadata.labels",
                        f'Invalid value: "{k}": name part must consist of alphanumeric '
                        "characters, '-', '_' or '.'",
                    )
                )
            elif not isinstance(v, str) or not valid_label_value(v):
                causes.append(
                    (
                        "FieldValueInvalid",
                        "metadata.labels",
                        f'Invalid value: "{v}": a valid label must be an empty string or '
                        "consist of alphanumeric characters, '-', '_' or '.', and must "
                        "start and end with an alphanumeric character",
                    )
                )
        for k, v in (meta.get("annotations") or {}).items():
            if not valid_label_key(str(k)) or not isinstance(v, str):
                causes.append(
                    (
                        "FieldValueInvalid",
                        "metadata.annotations",
                        f'Invalid value: "{k}": annotation keys and values must be strings '
                        "with a valid qualified key",
                    )
                )
        if rt.plural == "events" and obj.get("eventTime"):
            # kube-apiserver: an Event with eventTime is a new-style one and must say who
            # reported it and what it did (core/v1 and events.k8s.io/v1 alike).
            for f in ("reportingComponent", "reportingInstance", "action"):
                if not obj.get(f):
                    causes.append(("FieldValueRequired", f, "Required value"))
        spec = obj.get("spec") or {}
        if rt.plural == "pods" and not spec.get("containers"):
            causes.append(("FieldValueRequired", "spec.containers", "Required value"))
        if rt.plural == "nodes":
            seen: set[tuple[str, str]] = set()
            for i, t in enumerate(spec.get("taints") or []):
                effect = (t or {}).get("effect")
                if effect not in _TAINT_EFFECTS:
                    causes.append(
                        (
                            "FieldValueNotSupported",
                            f"metadata.taints[{i}].effect",
                            f'Unsupported value: "{effect}": supported values: '
                            '"NoSchedule", "PreferNoSchedule", "NoExecute"',
                        )
                    )
                if not valid_label_key(str((t or {}).get("key", ""))):
                    causes.append(
                        (
                            "FieldValueInvalid",
                            f"metadata.taints[{i}].key",
                            f'Invalid value: "{(t or {}).get("key", "")}": name part must '
                            "consist of alphanumeric characters, '-', '_' or '.', and must start "
                            "and end with an alphanumeric character (e.g. 'MyName',  or "
                            "'my.name',  or '123-abc', regex used for validation is "
                            "'([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]')",
                        )
                    )
                pair = (str((t or {}).get("key")), str(effect))
                if pair in seen:
                    causes.append(
                        (
                            "FieldValueDuplicate",
                            f"metadata.taints[{i}]",
                            "Duplicate value: "
                            + json.dumps({"Key": pair[0], "Value": str((t or {}).get("value", "")),
                                          "Effect": pair[1], "TimeAdded": None},
                                         separators=(",", ":"))
                            + ": taints must be unique by key and effect pair",
                        )
                    )
                seen.add(pair)
        if (
            rt.plural == "poddisruptionbudgets"
            and "minAvailable" in spec
            and "maxUnavailable" in spec
        ):
            causes.append(
                (
                    "FieldValueInvalid",
                    "spec",
                    "Invalid value: minAvailable and maxUnavailable cannot be both set",
                )
            )
        if rt.plural == "leases":
            dur = spec.get("leaseDurationSeconds")
            if dur is not None and (not isinstance(dur, int) or dur <= 0):
                causes.append(
                    (
                        "FieldValueInvalid",
                        "spec.leaseDurationSeconds",
                        f"Invalid value: {dur}: must be greater than 0",
                    )
                )
        if causes:
            raise st.invalid(rt.kind, rt.group, name, causes)


def _qos_class(pod: Obj) -> str:
    containers = (pod.get("spec") or {}).get("containers") or []
    res = [c.get("resources") or {} for c in containers if isinstance(c, dict)]
    if not any(r.get("requests") or r.get("limits") for r in res):
        return "BestEffort"
    guaranteed = all(
        (r.get("limits") or {}).get(x) is not None
        and (r.get("requests") or {}).get(x, (r.get("limits") or {}).get(x))
        == (r.get("limits") or {}).get(x)
        for r in res
        for x in ("cpu", "memory")
    )
    return "Guaranteed" if guaranteed else "Burstable"


_NAMESPACE = next(r for r in RESOURCES if r.plural == "namespaces")
_POD = next(r for r in RESOURCES if r.plural == "pods" and not r.group)
