"""Shared pytest configuration: loads the in-memory API server fixtures (apiserver, kube_api).

Also points ``$STATE_DIRECTORY`` (the default of ``--state.dir``) at a fresh directory for every
test, so no test, in process or as a child agent, reads or writes the machine's
/var/lib/nodemedic or another test's local state.
"""

from collections.abc import Iterator

import pytest

pytest_plugins = ["agent.testing.pytest_plugin"]


@pytest.fixture(autouse=True)
def _own_state_directory(
    tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch
) -> Iterator[None]:
    monkeypatch.setenv("STATE_DIRECTORY", str(tmp_path_factory.mktemp("state")))
    yield
