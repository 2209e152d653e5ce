"""``nodemedic check-rules``: exit codes and the located problem lines a user sees."""

from __future__ import annotations

import argparse
import re
from pathlib import Path

import pytest

from agent.rules import cli

ROOT = Path(__file__).resolve().parents[3]


def run(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="nodemedic")
    cli.add_parser(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["check-rules", *argv])
    code: int = args.func(args)
    return code


def test_shipped_rules_pass(capsys: pytest.CaptureFixture[str]) -> None:
    """The default rule set checks clean with exit code 0 and a summary."""
    assert run([str(ROOT / "rules")]) == 0
    out = capsys.readouterr()
    assert re.fullmatch(r"check-rules: \d+ rule\(s\) in \d+ file\(s\) OK\n", out.out)
    assert out.err == ""


def test_bad_file_exits_1_with_every_problem_located(tmp_path: Path,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    """A bad file among good ones: exit 1, each problem as file:line:column: field: message."""
    bad = tmp_path / "bad.yaml"
    bad.write_text("rules:\n  - name: x\n    when: {metric: nodemedic_kubelet_up, op: '==', "
                   "value: 0}\n    actions: [{type: cordon}]\n    for: soon\n    shell: reboot\n")
    assert run([str(ROOT / "rules"), str(bad)]) == 1
    err = capsys.readouterr().err.splitlines()
    assert err == [
        f"{bad}:5:10: rules[0].for: expected a duration like 10s, 2m or 1h30m, got 'soon'",
        f"{bad}:6:5: rules[0].shell: unknown key 'shell': rules never run commands; use "
        "restart-service with a unit from the agent's allow-list",
        "check-rules: 2 problem(s) in 1 file(s)",
    ]
