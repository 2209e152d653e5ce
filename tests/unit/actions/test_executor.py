"""The one executor's error policy (agent.actions.executor), shared by rule and failover actions:
every error becomes an Outcome, never an exception, except a cancellation."""

from __future__ import annotations

import asyncio
from typing import Any

import aiohttp
import pytest

from agent.actions import executor, registry
from agent.actions.base import ActionContext
from agent.actions.cordon import Cordon
from agent.actions.drain import Drain
from agent.actions.restart_service import RestartService
from agent.kube.errors import KubeError, KubeUnavailable
from agent.safety.gate import SafetyGate
from agent.structs.remediation import Decision, Outcome
from tests.unit.actions.helpers_actions import request, settings


def allowed(action: str, params: dict[str, Any] | None = None) -> Decision:
    """An allowed decision as the gate makes it: with the action it looked up."""
    return Decision(request(action, params), "allowed", "ok", action=registry.get(action))


def ctx() -> ActionContext:
    return ActionContext(api=object(), node_name="node-a", settings=settings())


def raising(cls: type[Any], exc: BaseException, monkeypatch: pytest.MonkeyPatch) -> None:
    async def execute(self: Any, decision: Decision, ctx: ActionContext) -> Outcome:
        raise exc

    monkeypatch.setattr(cls, "execute", execute)


@pytest.mark.parametrize(("exc", "message"), [
    (ValueError("bad"), "ValueError: bad"),
    (OSError(28, "No space left on device"), "OSError: [Errno 28] No space left on device"),
    (aiohttp.ClientConnectionError("reset"), "ClientConnectionError: reset"),
    (TimeoutError("slow"), "TimeoutError: slow"),
    (KubeError(403, "nodes is forbidden"), "HTTP 403: nodes is forbidden"),
    (KubeUnavailable("ClientConnectorError: refused"),
     "API unreachable: ClientConnectorError: refused"),
])
async def test_every_error_of_a_one_shot_action_is_a_failure(
    monkeypatch: pytest.MonkeyPatch, exc: Exception, message: str,
) -> None:
    raising(Cordon, exc, monkeypatch)
    out = await executor.run(allowed("cordon"), ctx())
    assert (out.kind, out.message) == ("failure", message)


async def test_an_unreachable_api_makes_resumable_and_continuing_work_wait(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    raising(Drain, KubeUnavailable("down"), monkeypatch)
    raising(Cordon, KubeUnavailable("down"), monkeypatch)
    drain = allowed("drain", {"timeout": 600, "grace_period_cap": 30})
    assert (await executor.run(drain, ctx())).kind == "retry"
    assert (await executor.run(allowed("cordon"), ctx(), continuing=True)).kind == "retry"


async def test_a_cancellation_is_not_an_error(monkeypatch: pytest.MonkeyPatch) -> None:
    raising(Cordon, asyncio.CancelledError(), monkeypatch)
    with pytest.raises(asyncio.CancelledError):
        await executor.run(allowed("cordon"), ctx())


async def test_a_decision_without_its_action_is_a_failure() -> None:
    """The executor runs the action the gate looked up; a decision without one (the gate
    found none) fails instead of being looked up again."""
    out = await executor.run(Decision(request("cordon"), "allowed", "ok"), ctx())
    assert (out.kind, out.message) == ("failure", "no action named 'cordon'")


async def test_the_action_is_looked_up_once_per_request(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Gate, executor and the execution record share one registry lookup per request."""
    calls: list[str] = []
    real = registry.get

    def counting(name: str) -> Any:
        calls.append(name)
        return real(name)

    async def restarted(self: Any, decision: Decision, ctx: ActionContext) -> Outcome:
        return Outcome(decision, "success", "restarted")

    monkeypatch.setattr(registry, "get", counting)
    monkeypatch.setattr(RestartService, "execute", restarted)
    gate = SafetyGate(settings(), None)
    decision = await gate.decide(request("restart-service", {"unit": "kubelet.service"}))
    assert decision.kind == "allowed"
    out = await executor.run(decision, ctx())
    executor.record(gate, decision, out, continuing=False)
    assert out.kind == "success"
    assert calls == ["restart-service"]
    assert len(gate.ledger.history) == 1 and gate.ledger.history[0][3]  # counted as disruptive
