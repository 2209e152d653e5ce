"""Fixtures for the failover scenario tests: the in-memory API server and API clients."""

from __future__ import annotations

from agent.testing.pytest_plugin import apiserver, kube_api

__all__ = ["apiserver", "kube_api"]
