"""When is a failed node fenced (safe to force-delete its pods), and the taints that follow.

Called by agent.peers.work. A node counts as fenced only when it is judged ``failed`` and either
- no peer and no heartbeat showed it alive for ``fencing_time`` (its agent is watchdog-restarted
  by systemd, so a node whose agent stays silent that long is powered off or fully isolated), or
- an operator hook confirms it: the node annotation ``nodemedic.io/fenced=true`` (set by a human
  or an IPMI/cloud controller), or the configured command (argv + node name) exiting 0.
Only then does the leader add ``node.kubernetes.io/out-of-service=nodeshutdown:NoExecute``, which
makes Kubernetes force-delete the node's pods and detach their volumes. ``fencing_state`` is pure.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import structlog

from agent import subproc
from agent.peers.detector import Verdict

FENCED_ANNOTATION = "nodemedic.io/fenced"
OUT_OF_SERVICE = {"key": "node.kubernetes.io/out-of-service", "value": "nodeshutdown",
                  "effect": "NoExecute"}
FAILED_TAINT = {"key": "nodemedic.io/node-failed", "value": "", "effect": "NoSchedule"}
HOOK_TIMEOUT = 30.0

log = structlog.get_logger("nodemedic.failover")


def fencing_state(
    verdict: Verdict, failed_since: float, now: float, fencing_time: float, operator: bool,
) -> tuple[bool, str]:
    """(fenced, why). ``failed_since`` is when the leader first judged the node failed."""
    if verdict.state != "failed":
        return False, f"node is {verdict.state}, not failed"
    if operator:
        return True, "an operator hook confirmed the node is fenced"
    quiet_since = max(failed_since, verdict.last_seen) if verdict.last_seen else failed_since
    quiet = now - quiet_since
    if quiet >= fencing_time:
        return True, f"no peer reached it for {quiet:.0f}s (fencing time {fencing_time:g}s)"
    return False, f"silent for {quiet:.0f}s of the {fencing_time:g}s fencing time"


async def run_hook(argv: Sequence[str], node: str) -> bool:
    """Run the operator's fencing command with the node name appended; True on exit status 0.
    Its output is discarded; at HOOK_TIMEOUT its whole process group is killed."""
    if not argv:
        return False
    try:
        res = await subproc.run([*argv, node], limit=HOOK_TIMEOUT, max_stdout=0, max_stderr=0)
    except OSError as exc:
        log.warning("fence_command_failed", node=node, argv=[*argv, node],
                    error=f"cannot run: {exc}")
        return False
    if res.timed_out:
        log.warning("fence_command_failed", node=node, argv=[*argv, node],
                    error=f"timed out after {HOOK_TIMEOUT:g}s")
        return False
    # A non-zero exit is the hook's answer ("not fenced"), not a failure.
    log.info("fence_command_answered", node=node, exit_code=res.returncode, fenced=res.ok)
    return res.ok


def same_taint(a: dict[str, Any], b: dict[str, Any]) -> bool:
    return bool(a.get("key") == b["key"] and a.get("effect") == b["effect"])
