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
    params_of,
)
from agent.actions.registry import action
from agent.settings import Settings
from agent.structs import actionparams as ap
from agent.structs.durations import format_duration
from agent.structs.remediation import ActionRequest, Decision, Outcome


def url_allowed(url: str, allowlist: tuple[str, ...]) -> bool:
    return any(url == e or (e.endswith("/") and url.startswith(e)) for e in allowlist)


def checked(req: ActionRequest, settings: Settings) -> tuple[str, float]:
    p = params_of(req, ap.Webhook)  # the model checks the URL's scheme and the timeout's range
    if not url_allowed(p.url, settings.actions_webhook_allowlist):
        raise InvalidParams(f"url {p.url!r} is not in --actions.webhook-allowlist")
    return p.url, p.timeout


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
