"""The architecture's layering holds (import-linter contracts in .importlinter).

Only agent.kube talks to kubernetes_asyncio, agent.structs is pure data, the rules engine does no
I/O, and the daemon never imports the test doubles.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def test_import_contracts_are_kept() -> None:
    """`lint-imports` reports every contract kept."""
    exe = Path(sys.executable).parent / "lint-imports"
    if not exe.exists():
        pytest.skip("import-linter not installed (it is in the test extras)")
    res = subprocess.run([str(exe)], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-2000:]
    assert "0 broken" in res.stdout
