"""The /status document as users read it: every time in one format, RFC 3339 UTC.

Components report times as Unix seconds (what they compute with and persist) under the key
names in ``TIME_KEYS``; :func:`with_rfc3339_times` returns a copy of the document with each of
those values as RFC 3339, so /status never mixes Unix floats, ``+00:00`` offsets and ``Z``
(the components' own structures are not changed: the copy is new all the way down).
"""

from __future__ import annotations

from typing import Any

from agent.structs.times import rfc3339

# Keys whose numeric values in /status are wall-clock Unix seconds.
TIME_KEYS = frozenset({"at", "since", "started", "pending_since", "firing_since",
                       "resolved_since"})


def with_rfc3339_times(doc: dict[str, Any]) -> dict[str, Any]:
    """A copy of ``doc`` with the numbers under ``TIME_KEYS`` as RFC 3339 strings."""
    return {k: _convert(v, str(k)) for k, v in doc.items()}


def _convert(doc: Any, key: str) -> Any:
    if isinstance(doc, dict):
        return {k: _convert(v, str(k)) for k, v in doc.items()}
    if isinstance(doc, (list, tuple)):
        return [_convert(v, key) for v in doc]
    if key in TIME_KEYS and isinstance(doc, (int, float)) and not isinstance(doc, bool):
        return rfc3339(doc)
    return doc
