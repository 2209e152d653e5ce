"""Wall-clock times as users read them: RFC 3339 in UTC (``2026-12-03T10:23:46Z``), the format
Kubernetes writes in conditions and Events, and the one /status uses for every time it shows."""

from __future__ import annotations

from datetime import UTC, datetime


def rfc3339(ts: float) -> str:
    """Unix seconds as RFC 3339 UTC with second precision (as Kubernetes' metav1.Time)."""
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
