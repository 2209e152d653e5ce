"""The `nodemedic` command as users type it: version, check-rules on good and bad rule files."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def nodemedic(*args: str, cwd: Path = REPO) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "agent", *args], capture_output=True,
                          text=True, timeout=120, cwd=cwd)


def test_version() -> None:
    """`nodemedic version` prints the version and exits 0."""
    res = nodemedic("version")
    assert res.returncode == 0
    assert res.stdout.startswith("nodemedic ")


def test_default_rules_pass_check_rules() -> None:
    """The shipped rule set is valid."""
    res = nodemedic("check-rules", str(REPO / "rules"))
    assert res.returncode == 0, res.stderr


def test_bad_rule_file_is_located(tmp_path: Path) -> None:
    """A broken rule exits 1 with file:line:column: field: message for each problem."""
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        "rules:\n"
        "  - name: oops\n"
        "    description: test\n"
        "    when:\n"
        "      metric: nodemedic_kubelet_up\n"
        "      op: '=='\n"
        "      value: 0\n"
        "    for: ten minutes\n"
        "    actions:\n"
        "      - type: rm-rf\n"
    )
    res = nodemedic("check-rules", str(bad))
    assert res.returncode == 1
    lines = [ln for ln in res.stderr.splitlines() if ln.startswith(str(bad))]
    assert lines, res.stderr
    for ln in lines:
        _path, line, col, rest = ln.split(":", 3)
        assert int(line) > 0 and int(col) > 0 and rest.strip()


def test_no_subcommand_prints_help_and_exits_2() -> None:
    """Running without a subcommand is a usage error."""
    res = nodemedic()
    assert res.returncode == 2
    assert "run" in res.stderr
