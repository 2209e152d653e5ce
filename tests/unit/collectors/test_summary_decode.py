"""/stats/summary's trimmed decode gives what a full JSON decode gives, for any body.

decode_summary keeps only the pod fields the families and the pod-gap report read (msgspec skips
containers, volumes and network unbuilt) and falls back to json.loads for any body its typed
decode refuses. The families and the pods-without-stats report of the trimmed decode must equal
those of ``json.loads`` — for the captured summaries, a 250-pod synthetic one, and generated
documents with wrong types, nulls, huge numbers, NaN literals and missing sections.
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agent.collectors.kubelet_summary import KubeletBadSummary, decode_summary, summary_families
from agent.collectors.podgaps import summary_pods_without_stats
from agent.kubelet_client import KubeletBadBody

REPO = Path(__file__).resolve().parents[3]
FIXTURES = REPO / "tests" / "fixtures" / "kubelet"


def _outcome(doc_of: Any, body: bytes, pod_psi: bool) -> Any:
    """What the collector ends up with: families as comparable tuples, skipped count and the
    pod-gap report; or the kind of error."""
    try:
        doc = doc_of(body)
    except (KubeletBadBody, ValueError):
        return "bad body"
    try:
        fams, skipped = summary_families(doc, pod_psi=pod_psi)
    except KubeletBadSummary as exc:
        return f"bad summary: {exc}"
    series = sorted((f.name, tuple(sorted(labels.items())), _same_nan(v))
                    for f in fams for labels, v in f.series())
    return series, skipped, summary_pods_without_stats(doc)


def _same_nan(v: float) -> Any:
    return "nan" if math.isnan(v) else v


def _plain(body: bytes) -> Any:
    try:
        return json.loads(body)
    except ValueError as exc:
        raise KubeletBadBody(str(exc)) from exc


def _assert_same(body: bytes) -> None:
    for pod_psi in (True, False):
        assert _outcome(decode_summary, body, pod_psi) == _outcome(_plain, body, pod_psi)


@pytest.mark.parametrize("name", ["stats_summary_minikube_v1.35.json",
                                  "stats_summary_hybrid_v1.35_nodemedic.json"])
def test_captured_summaries_decode_the_same(name: str) -> None:
    body = (FIXTURES / name).read_bytes()
    _assert_same(body)
    series, _, _ = _outcome(decode_summary, body, True)
    assert len(series) > 20  # the capture really gives families (the comparison is not empty)


def test_synthetic_250_pod_summary_decodes_the_same(tmp_path: Path) -> None:
    sys.path.insert(0, str(REPO / "bench"))
    try:
        from synthetic_node import build_node, summary_json
    finally:
        sys.path.remove(str(REPO / "bench"))
    refs = build_node(tmp_path / "cg", pods=250, containers=2, layout="v2-systemd")
    body = json.dumps(summary_json(refs)).encode()
    _assert_same(body)
    doc = decode_summary(body)
    assert len(doc["pods"]) == 250
    assert "containers" not in doc["pods"][0]  # the big sections are not kept


_scalar = st.one_of(st.none(), st.booleans(), st.integers(-(2**70), 2**70),
                    st.floats(allow_nan=False, allow_infinity=False), st.text(max_size=3))
_psi = st.fixed_dictionaries({}, optional={
    "psi": st.fixed_dictionaries({}, optional={
        k: st.one_of(_scalar, st.fixed_dictionaries({}, optional={"avg10": _scalar,
                                                                  "total": _scalar}))
        for k in ("some", "full")})})
_stats = st.one_of(_scalar, st.fixed_dictionaries({}, optional={
    "usageNanoCores": _scalar, "usageCoreNanoSeconds": _scalar, "workingSetBytes": _scalar,
    "availableBytes": _scalar, "usedBytes": _scalar, "psi": _psi.map(lambda d: d.get("psi"))}))
_ref = st.one_of(_scalar, st.fixed_dictionaries({}, optional={
    "namespace": st.one_of(st.sampled_from(["a", "b"]), _scalar),
    "name": st.one_of(st.sampled_from(["p", "q"]), _scalar),
    "uid": st.one_of(st.sampled_from(["u1", "u2"]), _scalar)}))
_pod = st.one_of(_scalar, st.fixed_dictionaries({}, optional={
    "podRef": _ref, "cpu": _stats, "memory": _stats, "io": _stats,
    "ephemeral-storage": _stats,
    "containers": st.lists(st.dictionaries(st.text(max_size=3), _scalar), max_size=2),
    "volume": st.lists(_scalar, max_size=2)}))
_node = st.one_of(_scalar, st.fixed_dictionaries({}, optional={
    "cpu": _stats, "memory": _stats, "io": _stats, "fs": _stats, "swap": _stats,
    "rlimit": st.dictionaries(st.sampled_from(["curproc", "maxpid"]), _scalar),
    "runtime": st.one_of(_scalar, st.fixed_dictionaries({}, optional={
        "imageFs": _stats, "containerFs": _stats}))}))
_doc = st.one_of(_scalar, st.lists(_scalar, max_size=2), st.fixed_dictionaries({}, optional={
    "node": _node, "pods": st.one_of(_scalar, st.lists(_pod, max_size=4))}))


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(doc=_doc, special=st.sampled_from(["", "NaN", "Infinity", "1e400", "-1e999"]))
def test_any_document_decodes_the_same(doc: Any, special: str) -> None:
    body = json.dumps(doc).encode()
    _assert_same(body)
    if special and isinstance(doc, dict) and isinstance(doc.get("node"), dict):
        # Only Python's JSON reads these; msgspec refuses them and the plain decode takes over.
        _assert_same(body.replace(b'"node": {', b'"node": {"memory": {"rssBytes": '
                                  + special.encode() + b'}, ', 1))


@pytest.mark.parametrize("body", [b"", b"{", b"not json", b'{"node": {}} trailing', b"\xff\xfe",
                                  '{"node": {}}'.encode("utf-16")])
def test_malformed_bodies_are_refused_or_read_alike(body: bytes) -> None:
    _assert_same(body)
