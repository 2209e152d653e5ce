"""restart-service and webhook executed for real: a recording systemctl script, a loopback
HTTP server; plus how an Eviction 429 body from a real cluster is reported."""

from __future__ import annotations

import json
import stat
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from helpers_actions import NODE, request, settings

from agent.actions import registry
from agent.actions.base import ActionContext
from agent.kube.errors import KubeTooManyRequests, call_json
from agent.structs.remediation import Decision

FIXTURES = Path(__file__).parents[2] / "fixtures" / "actions"


def recording_systemctl(tmp_path: Path, exit_code: int = 0) -> tuple[Path, Path]:
    """A fake systemctl that appends its argv (one JSON list per line) to a log."""
    log = tmp_path / "argv.log"
    script = tmp_path / "systemctl"
    script.write_text(
        "#!/usr/bin/env python3\n"
        "import json, sys\n"
        f"open({str(log)!r}, 'a').write(json.dumps(sys.argv[1:]) + '\\n')\n"
        f"sys.stderr.write('boom\\n' if {exit_code} else '')\n"
        f"sys.exit({exit_code})\n"
    )
    script.chmod(script.stat().st_mode | stat.S_IEXEC)
    return script, log


def allowed(req: Any) -> Decision:
    return Decision(req, "allowed", "ok")


async def test_restart_service_runs_systemctl_with_an_argv_list(tmp_path: Path) -> None:
    """The unit reaches systemctl as one argv element: `systemctl restart kubelet.service`."""
    script, log = recording_systemctl(tmp_path)
    act = registry.get("restart-service")
    assert act is not None
    ctx = ActionContext(api=None, node_name=NODE, settings=settings(), systemctl=str(script))
    out = await act.execute(allowed(request("restart-service", {"unit": "kubelet.service"})), ctx)
    assert out.kind == "success"
    assert [json.loads(line) for line in log.read_text().splitlines()] == [
        ["restart", "kubelet.service"]
    ]


async def test_restart_service_failure_is_reported_with_stderr(tmp_path: Path) -> None:
    """A non-zero systemctl exit is a failure outcome carrying its stderr."""
    script, _ = recording_systemctl(tmp_path, exit_code=5)
    act = registry.get("restart-service")
    assert act is not None
    ctx = ActionContext(api=None, node_name=NODE, settings=settings(), systemctl=str(script))
    out = await act.execute(allowed(request("restart-service", {"unit": "kubelet.service"})), ctx)
    assert out.kind == "failure"
    assert "exited 5: boom" in out.message


async def test_restart_service_missing_binary_is_a_failure(tmp_path: Path) -> None:
    """No systemctl on the host is a clear failure, not a crash."""
    act = registry.get("restart-service")
    assert act is not None
    ctx = ActionContext(
        api=None, node_name=NODE, settings=settings(), systemctl=str(tmp_path / "nope")
    )
    out = await act.execute(allowed(request("restart-service", {"unit": "kubelet.service"})), ctx)
    assert out.kind == "failure"
    assert "cannot run" in out.message


@pytest.fixture
async def hook_server() -> AsyncIterator[tuple[str, list[Any]]]:
    received: list[Any] = []

    async def ok(req: web.Request) -> web.Response:
        received.append(await req.json())
        return web.json_response({"ok": True})

    async def fail(req: web.Request) -> web.Response:
        return web.Response(status=503)

    app = web.Application()
    app.router.add_post("/hook/ok", ok)
    app.router.add_post("/hook/fail", fail)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        yield f"http://127.0.0.1:{port}/hook/", received
    finally:
        await runner.cleanup()


async def test_webhook_posts_the_rule_as_json(hook_server: tuple[str, list[Any]]) -> None:
    """The webhook receives rule, node, target and observed values as JSON."""
    base, received = hook_server
    act = registry.get("webhook")
    assert act is not None
    ctx = ActionContext(
        api=None, node_name=NODE, settings=settings(actions_webhook_allowlist=(base,))
    )
    req = request("webhook", {"url": base + "ok"}, observed={"nodemedic_kubelet_up": 0.0})
    out = await act.execute(allowed(req), ctx)
    assert out.kind == "success"
    assert received[0]["rule"] == "kubelet-down"
    assert received[0]["node"] == NODE
    assert received[0]["observed"] == {"nodemedic_kubelet_up": 0.0}


async def test_webhook_non_2xx_is_a_failure(hook_server: tuple[str, list[Any]]) -> None:
    """A 503 from the receiver is a failure outcome naming the status."""
    base, _ = hook_server
    act = registry.get("webhook")
    assert act is not None
    ctx = ActionContext(
        api=None, node_name=NODE, settings=settings(actions_webhook_allowlist=(base,))
    )
    out = await act.execute(allowed(request("webhook", {"url": base + "fail"})), ctx)
    assert out.kind == "failure"
    assert "503" in out.message


async def test_eviction_429_body_becomes_retry_later() -> None:
    """A real PDB-violation 429 body raises KubeTooManyRequests with the API's message."""
    body = (FIXTURES / "eviction_429_pdb_violation.json").read_bytes()

    async def handler(req: web.Request) -> web.Response:
        return web.Response(status=429, body=body, content_type="application/json")

    app = web.Application()
    app.router.add_post("/evict", handler)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        async with aiohttp.ClientSession() as session:
            with pytest.raises(KubeTooManyRequests) as info:
                await call_json(session.post(f"http://127.0.0.1:{port}/evict"))
    finally:
        await runner.cleanup()
    assert info.value.status == 429
    assert "disruption budget" in info.value.reason
