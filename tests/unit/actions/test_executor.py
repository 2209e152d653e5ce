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
from agent.kube.errors import KubeError, KubeUnavailable
from agent.structs.remediation import Decision, Outcome
from tests.unit.actions.helpers_actions import request, settings


def allowed(action: str, params: dict[str, Any] | None = None) -> Decision:
    return Decision(request(action, params), "allowed", "ok")


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


async def test_an_unknown_action_is_a_failure(monkeypatch: pytest.MonkeyPatch) -> None:
    decision = allowed("cordon")
    monkeypatch.setattr(registry, "get", lambda name: None)  # declared, not implemented
    out = await executor.run(decision, ctx())
    assert (out.kind, out.message) == ("failure", "no action named 'cordon'")
