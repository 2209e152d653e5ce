"""Builders for the safety unit tests: the ones in tests/unit/actions/helpers_actions.py."""

from __future__ import annotations

from tests.unit.actions.helpers_actions import NODE, request, settings

__all__ = ["NODE", "request", "settings"]
