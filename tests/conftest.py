"""Shared pytest configuration: loads the in-memory API server fixtures (apiserver, kube_api).

Also points ``$STATE_DIRECTORY`` (the default of ``--state.dir``) at a fresh directory for every
test, so no test, in process or as a child agent, reads or writes the machine's
/var/lib/nodemedic or another test's local state.

agent.kube is imported first so that every test, like the daemon, sees kubernetes_asyncio through
agent.kube.lazy (only the modules a call needs), not the fully imported package.
"""

from collections.abc import Iterator

import pytest

import agent.kube  # noqa: F401  (installs the lazy kubernetes_asyncio packages)

pytest_plugins = ["agent.testing.pytest_plugin"]


@pytest.fixture(autouse=True)
def _own_state_directory(
    tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch
) -> Iterator[None]:
    monkeypatch.setenv("STATE_DIRECTORY", str(tmp_path_factory.mktemp("state")))
    yield


@pytest.fixture(autouse=True)
def _restore_structlog() -> Iterator[None]:
    """Each test starts with the structlog configuration the one before it found: an agent
    started in process reconfigures logging (level filter included), and a later test's
    capture_logs() would otherwise miss records below that level."""
    import structlog

    saved = structlog.get_config()
    yield
    structlog.configure(**saved)
