"""The real-systemd tier: building the rootfs (~1 min once) and the .deb (~2-4 min per source
change) happens inside the first test's setup, so these tests get a longer time limit."""

from __future__ import annotations

import pytest

SYSTEM_TIMEOUT = 1800


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "tests/system/" in item.nodeid:
            item.add_marker(pytest.mark.timeout(SYSTEM_TIMEOUT))
            item.add_marker(pytest.mark.root)
            item.add_marker(pytest.mark.slow)
