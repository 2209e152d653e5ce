"""Loading --problems.dir: NPD JSON unchanged, nodemedic YAML strictly, file:line errors."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from agent.problems.loader import check_problems, load_problems
from agent.rules.loader import RulesError

FIXTURES = Path(__file__).resolve().parents[2] / "fixtures" / "npd"


def test_npd_shipped_configs_load_unchanged() -> None:
    """Every copied NPD config loads without a problem, with NPD's defaults and semantics."""
    ps, problems = check_problems([FIXTURES])
    assert problems == []
    by = {(m.name, m.source.plugin): m for m in ps.log_monitors}
    km = by[("kernel-monitor", "kmsg")]
    assert km.buffer_size == 10 and km.source.lookback == 300
    assert {c.type for c in km.conditions} == {"KernelDeadlock", "ReadonlyFilesystem",
                                               "XfsShutdown"}
    assert by[("systemd-monitor", "journald")].source.identifiers == ("systemd",)
    (custom,) = ps.check_monitors
    assert (custom.interval, custom.timeout, custom.max_output, custom.concurrency) == \
        (30, 5, 80, 3)
    assert custom.rules[0].disabled  # its script is not in a plugin dir: never run


def test_yaml_errors_name_file_line_and_field(tmp_path: Path) -> None:
    """A bad nodemedic YAML file is rejected with file:line:column: field: message."""
    f = tmp_path / "bad.yaml"
    f.write_text("monitors:\n  - name: x\n    source: {plugin: kmsg}\n    rules:\n"
                 "      - type: permanent\n        reason: Foo\n        condition: Nope\n"
                 "        pattern: 'a'\n"
                 "      - {type: temporary, reason: Bar, pattern: 'a(?=b)'}\n")
    _, problems = check_problems([f])
    text = [str(p) for p in problems]
    assert any(t.startswith(f"{f}:7:20: monitors[0].rules[0].condition:") for t in text), text
    assert any(t.startswith(f"{f}:9:") and "lookaround" in t for t in text), text
    with pytest.raises(RulesError):
        load_problems(tmp_path)


def test_npd_json_errors_are_located(tmp_path: Path) -> None:
    """NPD JSON with a bad pattern or a typo'd rule type is located by line (tabs kept)."""
    head = '{\n\t"plugin": "kmsg",\n\t"source": "s",\n\t"conditions": [],\n\t"rules": [\n'
    f = tmp_path / "m.json"
    f.write_text(head + '\t\t{"type": "temporary", "reason": "R", "pattern": "a"},\n'
                 '\t\t{"type": "sometimes", "reason": "R", "pattern": "a"}\n\t]\n}\n')
    (p,) = check_problems([f])[1]
    assert (p.line, p.column, p.field) == (7, 12, "rules[1].type"), p
    f.write_text(head + '\t\t{"type": "temporary", "reason": "R", "pattern": "a"},\n'
                 '\t\t{"type": "temporary", "reason": "R", "pattern": "(a"}\n\t]\n}\n')
    (p,) = check_problems([f])[1]
    assert (p.line, p.field) == (7, "rules[1].pattern"), p
    g = tmp_path / "broken.json"
    g.write_text('{"plugin": "kmsg",\n "source": }')
    (p,) = check_problems([g])[1]
    assert (p.line, p.field) == (2, "(json)")


def test_plugin_allowlist(tmp_path: Path) -> None:
    """A plugin is enabled only inside --problems.plugin-dir, resolved through symlinks."""
    plugins = tmp_path / "plugins"
    plugins.mkdir()
    ok = plugins / "ok.sh"
    ok.write_text("#!/bin/sh\nexit 0\n")
    ok.chmod(0o755)
    outside = tmp_path / "evil.sh"
    outside.write_text("#!/bin/sh\nexit 0\n")
    outside.chmod(0o755)
    (plugins / "link.sh").symlink_to(outside)
    d = tmp_path / "defs"
    d.mkdir()
    (d / "c.yaml").write_text(
        "checks:\n  - name: c\n    conditions: [{type: Cond, reason: Fine}]\n    rules:\n"
        "      - {type: permanent, condition: Cond, reason: A, argv: [ok.sh, --x]}\n"
        "      - {type: permanent, condition: Cond, reason: B, argv: [link.sh]}\n"
        "      - {type: permanent, condition: Cond, reason: C, argv: [../evil.sh]}\n")
    (c,) = load_problems(d, plugins).check_monitors
    assert c.rules[0].argv == (str(ok.resolve()), "--x") and not c.rules[0].disabled
    assert "outside" in c.rules[1].disabled and "outside" in c.rules[2].disabled


def test_check_rules_covers_problem_definitions(tmp_path: Path) -> None:
    """`nodemedic check-rules --problems DIR` validates definitions (exit 1 with the problem
    line on stderr; exit 0 for the shipped ones)."""
    repo = Path(__file__).resolve().parents[3]
    env = {**os.environ, "PYTHONPATH": str(repo)}
    good = subprocess.run([sys.executable, "-m", "agent", "check-rules", "--problems",
                           str(repo / "problems"), "--problems", str(FIXTURES)],
                          capture_output=True, text=True, env=env, timeout=60)
    assert good.returncode == 0, good.stderr
    assert "problem monitor(s)" in good.stdout
    bad = tmp_path / "x.yaml"
    bad.write_text("monitors: [{name: x, source: {plugin: kmsg}, rules: [], extra: 1}]\n")
    res = subprocess.run([sys.executable, "-m", "agent", "check-rules", "--problems", str(bad)],
                         capture_output=True, text=True, env=env, timeout=60)
    assert res.returncode == 1
    assert f"{bad}:1:" in res.stderr and "extra" in res.stderr


def test_kubelet_conditions_cannot_be_claimed(tmp_path: Path) -> None:
    """A definition declaring Ready (or another kubelet condition) is rejected: nodemedic never
    writes the kubelet's conditions."""
    f = tmp_path / "m.json"
    f.write_text('{"plugin": "kmsg", "source": "s", "conditions": [{"type": "Ready", '
                 '"reason": "Fine"}], "rules": []}')
    (p,) = check_problems([f])[1]
    assert p.field == "conditions[0].type" and "kubelet" in p.message
