"""``webhook``: POST a JSON description of the firing rule to an allow-listed URL.

Run through the safety gate by the remediation stage (e.g. to open a ticket or page someone).
The URL must be listed in ``--actions.webhook-allowlist`` (an entry ending in ``/`` allows every
URL below it), so a rule cannot send node data anywhere else. Each POST has a timeout (default
5s, at most 30s); any non-2xx answer is a failure.
"""

from __future__ import annotations

from typing import Any

import aiohttp

from agent.actions.base import (
    Action,
    ActionContext,
    InvalidParams,
    Plan,
    outcome,
    param_duration,
    param_str,
)
from agent.actions.registry import action
from agent.settings import Settings
from agent.structs import actionparams as ap
from agent.structs.durations import format_duration
from agent.structs.remediation import ActionRequest, Decision, Outcome

DEFAULT_TIMEOUT = 5.0
MAX_TIMEOUT = 30.0


def url_allowed(url: str, allowlist: tuple[str, ...]) -> bool:
    return any(url == e or (e.endswith("/") and url.startswith(e)) for e in allowlist)


def checked(req: ActionRequest, settings: Settings) -> tuple[str, float]:
    url = param_str(req.action.params, "url")
    if not url.startswith(("http://", "https://")):
        raise InvalidParams("parameter 'url' must be an http:// or https:// URL")
    if not url_allowed(url, settings.actions_webhook_allowlist):
        raise InvalidParams(f"url {url!r} is not in --actions.webhook-allowlist")
    timeout = param_duration(req.action.params, "timeout", DEFAULT_TIMEOUT)
    if not 0 < timeout <= MAX_TIMEOUT:
        raise InvalidParams(
            f"parameter 'timeout' must be above 0 and at most {format_duration(MAX_TIMEOUT)}")
    return url, timeout


def payload(req: ActionRequest, node: str, now: float) -> dict[str, Any]:
    return {
        "source": "nodemedic",
        "node": node,
        "rule": req.rule,
        "step": req.step,
        "severity": req.severity,
        "target": req.target.key,
        "reason": req.reason,
        "observed": dict(req.observed),
        "runbook": req.runbook,
        "undo": req.undo,
        "time": now,
    }


@action(ap.Webhook)
class Webhook(Action):
    targets = ("node", "pod", "service")
    needs_api = False

    def explain(self, req: ActionRequest, settings: Settings) -> Plan:
        url, timeout = checked(req, settings)
        return Plan(self.name, req.target.key,
                    f"POST JSON to {url} (timeout {format_duration(timeout)})")

    async def execute(self, decision: Decision, ctx: ActionContext) -> Outcome:
        req = decision.request
        url, timeout = checked(req, ctx.settings)
        body = payload(req, ctx.node_name, ctx.now())
        own = ctx.http is None
        session: aiohttp.ClientSession = aiohttp.ClientSession() if own else ctx.http
        try:
            async with session.post(
                url, json=body, timeout=aiohttp.ClientTimeout(total=timeout), allow_redirects=False
            ) as resp:
                status = resp.status
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            return outcome(decision, "failure", f"POST {url} failed: {type(exc).__name__}: {exc}")
        finally:
            if own:
                await session.close()
        if not 200 <= status <= 299:
            return outcome(decision, "failure", f"POST {url} answered HTTP {status}", status=status)
        return outcome(decision, "success", f"POST {url} answered HTTP {status}", status=status)
