"""Fixtures of the cgroup collector tests: writable copies of the committed fixture trees
(tests/fixtures/cgroup, built from real captures), one per test."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

FIX = Path(__file__).resolve().parents[2] / "fixtures" / "cgroup"


@pytest.fixture
def v2_copy(tmp_path: Path) -> Path:
    """The v2 systemd-driver tree, writable."""
    dst = tmp_path / "v2"
    shutil.copytree(FIX / "v2-systemd", dst, symlinks=True)
    return dst


@pytest.fixture
def v1_copy(tmp_path: Path) -> Path:
    """The v1 cgroupfs-driver tree, writable."""
    dst = tmp_path / "v1"
    shutil.copytree(FIX / "v1-cgroupfs", dst, symlinks=True)
    return dst
