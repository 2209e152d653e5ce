"""Label selectors (equality and set-based) and field selectors, as kube-apiserver parses them.

Used by the list and watch paths (nodemedic_sim.apiserver.registry) and by the
eviction PDB check (nodemedic_sim.apiserver.eviction, for ``spec.selector`` objects). Parse errors
raise a 400 ``ApiError`` with the wording of k8s.io/apimachinery's parsers.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from typing import Any

from nodemedic_sim.apiserver.resources import ResourceType
from nodemedic_sim.apiserver.status import ApiError, bad_request

Matcher = Callable[[Mapping[str, Any]], bool]


_NAME = r"[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?"
_KEY_RE = re.compile(
    rf"^([a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*/)?{_NAME}$"
)
_VALUE_RE = re.compile(rf"^({_NAME})?$")
_REQ_RE = re.compile(
    r"^\s*(?P<neg>!)?\s*(?P<key>[^\s!=<>()]+)\s*"
    r"(?:(?P<op>==|=|!=|\s+in\s+|\s+notin\s+)\s*(?P<val>.*?))?\s*$",
    re.DOTALL,
)


def valid_label_key(key: str) -> bool:
    """Whether ``key`` is a valid qualified label/annotation key (prefix/name)."""
    return len(key) <= 316 and bool(_KEY_RE.match(key))


def valid_label_value(value: str) -> bool:
    """Whether ``value`` is a valid label value (63 chars of [-A-Za-z0-9_.], alnum ends)."""
    return len(value) <= 63 and bool(_VALUE_RE.match(value))


def _split_top(text: str) -> list[str]:
    """Split on commas that are not inside parentheses."""
    parts: list[str] = []
    cur: list[str] = []
    depth = 0
    for ch in text:
        if ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
        if ch == "," and depth == 0:
            parts.append("".join(cur))
            cur = []
        else:
            cur.append(ch)
    parts.append("".join(cur))
    return parts


def _requirement(text: str) -> Matcher:
    m = _REQ_RE.match(text)
    if not m:
        raise bad_request(
            f"unable to parse requirement: found '{text.strip()}', expected: identifier"
        )
    key, op, val, neg = m["key"], (m["op"] or "").strip(), m["val"], bool(m["neg"])
    if not valid_label_key(key):
        raise bad_request(
            f'unable to parse requirement: values[0][{key}]: Invalid value: "{key}": name part '
            "must consist of alphanumeric characters, '-', '_' or '.', and must start and end "
            "with an alphanumeric character"
        )
    if neg:
        if op:
            raise bad_request(
                f"unable to parse requirement: found '{text.strip()}', "
                "expected: ',' or 'end of string'"
            )
        return lambda labels: key not in labels
    if not op:
        return lambda labels: key in labels
    if op in ("in", "notin"):
        v = (val or "").strip()
        if not (v.startswith("(") and v.endswith(")")):
            raise bad_request(f"unable to parse requirement: found '{v}', expected: '('")
        values = {x.strip() for x in v[1:-1].split(",") if x.strip()}
        if not values:
            raise bad_request(
                "unable to parse requirement: for 'in', 'notin' operators, "
                "values set can't be empty"
            )
        for x in values:
            _check_value(key, x)
        if op == "in":
            return lambda labels: labels.get(key) in values
        return lambda labels: labels.get(key) not in values
    value = (val or "").strip()
    _check_value(key, value)
    if op == "!=":
        return lambda labels: labels.get(key) != value
    return lambda labels: key in labels and labels[key] == value


def _check_value(key: str, value: str) -> None:
    if not valid_label_value(value):
        raise bad_request(
            f'unable to parse requirement: values[0][{key}]: Invalid value: "{value}": a valid '
            "label must be an empty string or consist of alphanumeric characters, '-', '_' or "
            "'.', and must start and end with an alphanumeric character"
        )


def parse_label_selector(text: str | None) -> Matcher | None:
    """Compile a ``labelSelector`` query string into a matcher over a labels dict (None = all)."""
    if not text or not text.strip():
        return None
    reqs = [_requirement(p) for p in _split_top(text)]
    return lambda labels: all(r(labels) for r in reqs)


def selector_from_spec(sel: Mapping[str, Any] | None) -> Matcher:
    """Compile a ``metav1.LabelSelector`` object (matchLabels + matchExpressions).

    An empty selector matches everything, as policy/v1 PodDisruptionBudgets define it.
    """
    if not sel:
        return lambda labels: True
    match_labels = dict(sel.get("matchLabels") or {})
    exprs = list(sel.get("matchExpressions") or [])

    def matches(labels: Mapping[str, Any]) -> bool:
        for k, v in match_labels.items():
            if labels.get(k) != v:
                return False
        for e in exprs:
            key, op, values = e.get("key"), e.get("operator"), set(e.get("values") or [])
            if (
                (op == "In" and labels.get(key) not in values)
                or (op == "NotIn" and labels.get(key) in values)
                or (op == "Exists" and key not in labels)
                or (op == "DoesNotExist" and key in labels)
            ):
                return False
        return True

    return matches


def field_value(obj: Mapping[str, Any], path: str) -> str:
    """The string form of a field-selector field (missing bools read as "false")."""
    if path == "source":
        path = "source.component"
    cur: Any = obj
    for part in path.split("."):
        cur = cur.get(part) if isinstance(cur, Mapping) else None
    if isinstance(cur, bool):
        return "true" if cur else "false"
    if cur is None:
        return "false" if path in ("spec.unschedulable", "spec.hostNetwork") else ""
    return str(cur)


def parse_field_selector(text: str | None, rt: ResourceType) -> Matcher | None:
    """Compile a ``fieldSelector`` for ``rt``; unsupported fields are a 400, as in Kubernetes."""
    if not text or not text.strip():
        return None
    reqs: list[tuple[str, bool, str]] = []
    for raw in text.split(","):
        part = raw.strip()
        if not part:
            continue
        m = re.match(r"^([^=!]+)(==|=|!=)(.*)$", part)
        if not m:
            raise bad_request(f"invalid selector: '{text}'; can't understand '{part}'")
        fld, op, value = m.group(1).strip(), m.group(2), m.group(3).strip()
        if fld not in rt.field_labels:
            raise ApiError(400, "BadRequest", f"field label not supported: {fld}")
        reqs.append((fld, op == "!=", value))

    def matches(obj: Mapping[str, Any]) -> bool:
        return all((field_value(obj, fld) == value) != negate for fld, negate, value in reqs)

    return matches


def equality_terms(text: str | None) -> dict[str, str]:
    """``field=value`` terms of a field selector (used to pick an index; no validation)."""
    out: dict[str, str] = {}
    for raw in (text or "").split(","):
        m = re.match(r"^\s*([^=!]+?)\s*(==|=)\s*(.*?)\s*$", raw)
        if m and "!" not in m.group(1):
            out[m.group(1)] = m.group(3)
    return out


def object_matcher(label: Matcher | None, fields: Matcher | None) -> Matcher | None:
    """Combine a label matcher and a field matcher into one matcher over whole objects."""
    if label is None and fields is None:
        return None

    def matches(obj: Mapping[str, Any]) -> bool:
        if label is not None and not label(obj.get("metadata", {}).get("labels") or {}):
            return False
        return fields is None or fields(obj)

    return matches
