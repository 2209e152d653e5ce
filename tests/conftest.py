"""Shared pytest configuration: loads the in-memory API server fixtures (apiserver, kube_api).

agent.kube is imported first so that every test, like the daemon, sees kubernetes_asyncio through
agent.kube.lazy (only the modules a call needs), not the fully imported package.
"""

import agent.kube  # noqa: F401  (installs the lazy kubernetes_asyncio packages)

pytest_plugins = ["agent.testing.pytest_plugin"]
