"""A kubelet we cannot see is not a kubelet that is down (issue 12 item 2).

A real HTTPS kubelet stand-in (nodemedic_sim.fake_kubelet) answers 401 (wrong token), 403 (RBAC)
or presents a certificate our CA does not vouch for (another CA, or a certificate for another
host). The real kubelet collector, the shipped rules/kubelet.yaml through the real rules engine,
the gate and the in-memory API server run for longer than the rule's ``for`` and its escalation:
kubelet.service is never restarted, the Ready node is never cordoned, and the cause is visible
(collector status and reason, /status of the rules). A kubelet that refuses connections is still
down: the same set-up restarts it, as before.
"""

from __future__ import annotations

import shutil
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import pytest

from tests.integration.remediation.helpers_remediation import (
    NODE,
    Clock,
    argv_log,
    node,
    recording_systemctl,
    settings,
)

pytest.importorskip("cryptography", reason="cryptography is needed to make a test certificate")

from agent.collectors.base import CollectorContext
from agent.collectors.kubelet import KubeletCollector
from agent.rules.engine import RuleEngine
from agent.rules.loader import load_rules_dir
from agent.runtime.pipeline import Collection
from agent.runtime.remediation import RemediationStage
from agent.structs.snapshot import Snapshot
from nodemedic_sim.apiserver import ApiServer
from nodemedic_sim.fake_kubelet import (
    FakeKubelet,
    Override,
    make_self_signed_cert,
    server_ssl_context,
)

RULES = Path(__file__).parents[3] / "rules"
FIXTURES = Path(__file__).parents[2] / "fixtures" / "kubelet"
TOKEN = "eyJhbGciOiJSUzI1NiJ9.the-right-token"
TICK = 10.0
# 2m for + 3m escalation + margin: well past the point where the old agent had cordoned.
TICKS = 45


@dataclass
class Kubelet:
    fake: FakeKubelet
    ca: Path
    token_file: Path
    tmp: Path


@pytest.fixture
async def kubelet(tmp_path: Path) -> AsyncIterator[Kubelet]:
    cert, key = make_self_signed_cert(tmp_path)
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN + "\n")
    fk = FakeKubelet(FIXTURES, token=TOKEN, ssl_context=server_ssl_context(cert, key))
    await fk.start()
    try:
        yield Kubelet(fk, cert, token_file, tmp_path)
    finally:
        await fk.stop()


@dataclass
class Run:
    stage: RemediationStage
    collection: Collection
    collector: KubeletCollector
    systemctl_log: Path
    last: Snapshot | None = None


async def run_agent(
    apiserver: ApiServer, kube_api: Any, tmp_path: Path, ticks: int, **kubelet_settings: Any
) -> Run:
    """The kubelet collector + shipped kubelet rule + gate for ``ticks`` ticks of 10 s."""
    apiserver.create(node(NODE))
    rules = tmp_path / "rules"
    rules.mkdir()
    shutil.copy(RULES / "kubelet.yaml", rules / "kubelet.yaml")
    systemctl, log = recording_systemctl(tmp_path)
    clock = Clock()
    mono: Callable[[], float] = lambda: clock.t - 1_799_000_000.0  # noqa: E731
    s = settings(rules_dir=rules, collector_timeout=3.0, **kubelet_settings)
    collector = KubeletCollector(CollectorContext(s))
    collection = Collection([collector])
    engine = RuleEngine(load_rules_dir(rules), NODE)
    stage = RemediationStage(s, kube_api, engine, clock=clock, monotonic=mono,
                             systemctl=systemctl)
    run = Run(stage, collection, collector, log)
    await stage.start()
    try:
        for _ in range(ticks):
            snap = await collection.collect()
            # The engine measures durations on the snapshot's clock: put it on the test's.
            run.last = replace(snap, monotonic=mono(), taken_at=clock.t)
            await stage.on_snapshot(run.last)
            clock.t += TICK
    finally:
        await collection.close()
    return run


def cordoned(server: ApiServer) -> bool:
    n = server.get("Node", "", NODE)
    assert n is not None
    return bool(n["spec"].get("unschedulable"))


def assert_frozen_not_acted(run: Run, apiserver: ApiServer, reason: str, text: str) -> None:
    assert argv_log(run.systemctl_log) == []  # kubelet.service never restarted
    assert not cordoned(apiserver)
    assert run.last is not None
    assert "nodemedic_kubelet_up" not in run.last.families  # absent, not 0
    st = run.last.collectors["kubelet"]
    assert (st.ok, st.reason) == (False, reason)
    assert text in (st.error or "")
    rules = {r["rule"]: r for r in run.stage.status()["rules"]}
    assert rules["kubelet-unhealthy"]["state"] == "no data"
    assert rules["kubelet-unhealthy"]["missing_metrics"] == ["nodemedic_kubelet_up"]
    # /status shows the kubelet collector's own detail naming the endpoint's error.
    assert text in (run.collector.status()["endpoint_errors"]["healthz"] or "")


async def test_wrong_token_401_freezes_the_kubelet_rule(
    apiserver: ApiServer, kube_api: Any, kubelet: Kubelet
) -> None:
    """--kubelet.token-file holds a token the kubelet rejects (401): missing data, no restart,
    no cordon, even 7 minutes later."""
    bad = kubelet.tmp / "bad-token"
    bad.write_text("not-the-token")
    run = await run_agent(apiserver, kube_api, kubelet.tmp, TICKS, kubelet_url=kubelet.fake.url,
                          kubelet_ca_file=kubelet.ca, kubelet_token_file=bad)
    assert_frozen_not_acted(run, apiserver, "unauthorized", "HTTP 401")
    assert "--kubelet.token-file" in (run.last.collectors["kubelet"].error or "")  # type: ignore[union-attr]


async def test_forbidden_403_freezes_the_kubelet_rule(
    apiserver: ApiServer, kube_api: Any, kubelet: Kubelet
) -> None:
    """The token is accepted but RBAC refuses (403 on every path): missing data, no action."""
    for path in ("/healthz", "/pods", "/stats/summary", "/metrics"):
        kubelet.fake.overrides[path] = Override(status=403, body=b"Forbidden (user=system:"
                                                b"serviceaccount:kube-system:nodemedic)")
    run = await run_agent(apiserver, kube_api, kubelet.tmp, TICKS, kubelet_url=kubelet.fake.url,
                          kubelet_ca_file=kubelet.ca, kubelet_token_file=kubelet.token_file)
    assert_frozen_not_acted(run, apiserver, "forbidden", "HTTP 403")


async def test_certificate_from_another_ca_freezes_the_kubelet_rule(
    apiserver: ApiServer, kube_api: Any, kubelet: Kubelet
) -> None:
    """--kubelet.ca-file is another CA than the one that signed the kubelet's certificate: the
    TLS verification failure is missing data, nothing is sent to the unverified server."""
    other = kubelet.tmp / "other-ca"
    other.mkdir()
    other_ca, _ = make_self_signed_cert(other)
    run = await run_agent(apiserver, kube_api, kubelet.tmp, TICKS, kubelet_url=kubelet.fake.url,
                          kubelet_ca_file=other_ca, kubelet_token_file=kubelet.token_file)
    assert_frozen_not_acted(run, apiserver, "tls", "certificate verify failed")
    assert kubelet.fake.hits["/healthz"] == 0


async def test_hostname_mismatch_freezes_the_kubelet_rule(
    apiserver: ApiServer, kube_api: Any, tmp_path: Path
) -> None:
    """The kubelet presents a certificate (trusted CA) for another address: missing data."""
    cert, key = make_self_signed_cert(tmp_path, host="127.0.0.2")
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN)
    fk = FakeKubelet(FIXTURES, token=TOKEN, ssl_context=server_ssl_context(cert, key))
    await fk.start()
    try:
        run = await run_agent(apiserver, kube_api, tmp_path, TICKS, kubelet_url=fk.url,
                              kubelet_ca_file=cert, kubelet_token_file=token_file)
    finally:
        await fk.stop()
    assert_frozen_not_acted(run, apiserver, "tls", "IP address mismatch")


async def test_refused_connection_is_still_a_kubelet_down(
    apiserver: ApiServer, kube_api: Any, kubelet: Kubelet
) -> None:
    """Contrast: a kubelet that is not listening (connection refused) is down — the rule
    restarts kubelet.service after 2 minutes and cordons 3 minutes later, as it always did."""
    url = kubelet.fake.url
    await kubelet.fake.stop()
    run = await run_agent(apiserver, kube_api, kubelet.tmp, TICKS, kubelet_url=url,
                          kubelet_ca_file=kubelet.ca, kubelet_token_file=kubelet.token_file)
    assert run.last is not None
    assert run.last.collectors["kubelet"].ok
    assert run.last.families["nodemedic_kubelet_up"].get() == 0
    assert argv_log(run.systemctl_log) == [["restart", "kubelet.service"]]
    assert cordoned(apiserver)
