"""The recorded incident of recording.py served by a real Prometheus, once per session."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.integration.replay import recording


@dataclass(frozen=True)
class Recorded:
    url: str
    t0: float
    rules_dir: Path


@pytest.fixture(scope="session")
def recorded(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Recorded]:
    if not recording.PROMETHEUS.exists() or shutil.which(str(recording.PROMTOOL)) is None:
        pytest.skip("Debian prometheus/promtool are not installed (make system-deps)")
    tmp = tmp_path_factory.mktemp("replay")
    t0 = recording.window_start()
    prom = recording.Prometheus(tmp, recording.openmetrics(t0))
    rules = tmp / "rules"
    rules.mkdir()
    (rules / "kubelet.yaml").write_text(recording.RULES)
    try:
        yield Recorded(prom.url, t0, rules)
    finally:
        prom.stop()
