"""Under make test a skip for a missing part fails the run; the opt-in tiers still skip."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_a_skip_fails_under_make_test_but_an_opt_in_skip_does_not(tmp_path: Path) -> None:
    probe = REPO / "tests" / "unit" / f"test_zz_strict_probe_{os.getpid()}.py"
    probe.write_text(
        "import pytest\n"
        "def test_missing_tool():\n    pytest.skip('promtool is not installed')\n"
        "def test_opt_in():\n    pytest.skip('real nodes are off (set NODEMEDIC_K8S_NODES=1)')\n")
    try:
        def run(strict: str) -> str:
            env = {**os.environ, "NODEMEDIC_STRICT_SKIPS": strict}
            return subprocess.run(
                [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p",
                 "no:randomly", str(probe)], cwd=REPO, env=env, capture_output=True,
                text=True, timeout=120).stdout
        strict = run("1")
        assert "1 failed, 1 skipped" in strict, strict
        assert "promtool is not installed" in strict
        assert "2 skipped" in run("0")
    finally:
        probe.unlink()
