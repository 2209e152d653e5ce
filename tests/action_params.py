"""Parameters a test request gets when the test gives none: what each action's model requires,
chosen so the action behaves as it did for a request without them (a drain's grace cap is then
``--safety.drain-grace-cap``: the model's 1h bound never binds below it in tests)."""

from __future__ import annotations

from typing import Any

REQUIRED: dict[str, dict[str, Any]] = {
    "event": {"reason": "NodemedicRuleFiring", "message": ""},
    "drain": {"timeout": "15m", "grace_period_cap": "1h"},
    "evict-pod": {"grace_period_cap": "1h"},
    "restart-service": {"unit": "kubelet.service"},
    "taint": {"key": "nodemedic.io/x", "effect": "NoSchedule"},
    "untaint": {"key": "nodemedic.io/x"},
    "annotate": {"key": "nodemedic.io/x", "value": "v"},
    "webhook": {"url": "http://h/"},
}


def params_for(action: str, params: dict[str, Any] | None) -> dict[str, Any]:
    """``params``, or when None the action's required ones."""
    return dict(REQUIRED.get(action, {})) if params is None else params
