"""``restart-service``: ``systemctl restart UNIT`` for an allow-listed systemd unit on this node.

Run through the safety gate by the remediation stage (e.g. restart kubelet when /healthz fails).
The unit must match a strict name pattern and be listed in ``--actions.restart-allowlist``; it is
passed as one argv element to ``systemctl`` (never through a shell), so nothing in a rule can
inject a command. Tests point ``ActionContext.systemctl`` at a recording script.
"""

from __future__ import annotations

import re

from agent import subproc
from agent.actions.base import (
    Action,
    ActionContext,
    InvalidParams,
    Plan,
    outcome,
    params_of,
    require_local,
)
from agent.actions.registry import action
from agent.settings import Settings
from agent.structs import actionparams as ap
from agent.structs.durations import format_duration
from agent.structs.remediation import ActionRequest, Decision, Outcome

UNIT_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9:_.@\\-]{0,250}\.(service|socket|timer)$")
SYSTEMCTL_TIMEOUT = 90.0  # systemctl waits for the restart job; kubelet stop can take a while


def allowed_unit(req: ActionRequest, settings: Settings) -> str:
    unit = params_of(req, ap.RestartService).unit
    if not UNIT_RE.match(unit):
        raise InvalidParams(f"unit {unit!r} is not a valid systemd unit name")
    if unit not in settings.actions_restart_allowlist:
        raise InvalidParams(
            f"unit {unit!r} is not in --actions.restart-allowlist "
            f"({', '.join(settings.actions_restart_allowlist) or 'empty'})"
        )
    require_local(req, settings)
    return unit


@action(ap.RestartService)
class RestartService(Action):
    needs_api = False
    disruptive = True

    def explain(self, req: ActionRequest, settings: Settings) -> Plan:
        unit = allowed_unit(req, settings)
        return Plan(self.name, req.target.key, f"systemctl restart {unit}", (f"restart {unit}",))

    async def execute(self, decision: Decision, ctx: ActionContext) -> Outcome:
        unit = allowed_unit(decision.request, ctx.settings)
        argv = [ctx.systemctl, "restart", unit]
        try:
            res = await subproc.run(argv, limit=SYSTEMCTL_TIMEOUT, max_stdout=4096)
        except OSError as exc:
            return outcome(decision, "failure", f"cannot run {ctx.systemctl}: {exc}", argv=argv)
        if res.timed_out:
            return outcome(
                decision,
                "failure",
                f"systemctl restart {unit} timed out after {format_duration(SYSTEMCTL_TIMEOUT)}",
                argv=argv,
            )
        if not res.ok:
            tail = (res.stderr or res.stdout).decode("utf-8", "replace").strip()[-300:]
            return outcome(
                decision,
                "failure",
                f"systemctl restart {unit} exited {res.returncode}: {tail}",
                argv=argv,
            )
        return outcome(decision, "success", f"restarted {unit}", argv=argv)
