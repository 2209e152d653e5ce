"""The test suite keeps agents off the machine's /var/lib/nodemedic, module fixtures included.

A module-scoped fixture (such as the Prometheus stack's, which starts agents once for many
tests) is set up before conftest's per-test ``$STATE_DIRECTORY``; without a session-wide one its
agents read and write /var/lib/nodemedic and inherit the ledger of whatever ran there before.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from agent.settings import Settings


@pytest.fixture(scope="module")
def module_state_dir() -> Path:
    """The --state.dir an agent started by a module-scoped fixture would get by default."""
    return Settings().state_dir


def test_module_fixture_agents_get_a_test_state_directory(
    module_state_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> None:
    assert module_state_dir != Path("/var/lib/nodemedic")
    assert module_state_dir.is_relative_to(tmp_path_factory.getbasetemp())


def test_each_test_still_gets_its_own(
    module_state_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> None:
    own = Path(os.environ["STATE_DIRECTORY"])
    assert own != module_state_dir
    assert own.is_relative_to(tmp_path_factory.getbasetemp())
