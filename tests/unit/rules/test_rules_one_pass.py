"""check-rules reports every problem in one pass; non-regular rule files are refused by name.

Issue 12 item 8: a bad label, or a duplicate name across files, appeared only after the schema
errors were fixed, and a reload logged only the first problem. Item 9: a ``*.yaml`` symlink to
/dev/zero, a FIFO or a socket in the rules directory was skipped silently ("0 rule(s) in 0
file(s) OK").
"""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest
from rules_testkit import CATALOGUE

from agent import cli
from agent.rules import files, loader
from agent.rules.loader import RulesError, check_files, load_rules_dir

GOOD = """rules:
  - name: shared
    when: {metric: nodemedic_kubelet_up, op: "==", value: 0}
    actions: [{type: cordon}]
"""
# One rule with a schema error (missing actions), a bad label, and a name another file has.
BAD = """rules:
  - name: shared
    when: {metric: nodemedic_host_filesystem_avail_bytes, op: "<", value: 1,
           labels: {mountpoint: /}}
"""


def test_every_problem_of_every_file_in_one_pass(tmp_path: Path) -> None:
    (tmp_path / "a.yaml").write_text(GOOD)
    (tmp_path / "b.yaml").write_text(BAD)
    (tmp_path / "c.yaml").write_text("rules: [\n")
    _, problems = check_files([tmp_path], CATALOGUE)
    text = [str(p) for p in problems]
    b, c = str(tmp_path / "b.yaml"), str(tmp_path / "c.yaml")
    assert any(t.startswith(f"{b}:2:5: rules[0].actions: required") for t in text), text
    assert any(f"{b}:4:33: rules[0].when.labels.mountpoint: " in t
               and "has no label 'mountpoint' (it has path)" in t for t in text), text
    assert any(f"{b}:2:11: rules[0].name: duplicate rule name 'shared' (first defined at "
               f"{tmp_path / 'a.yaml'}:2)" in t for t in text), text
    assert any(t.startswith(f"{c}:") and "invalid YAML" in t for t in text), text


def test_the_reload_error_carries_every_problem(tmp_path: Path) -> None:
    (tmp_path / "a.yaml").write_text(GOOD)
    (tmp_path / "b.yaml").write_text(BAD)
    with pytest.raises(RulesError) as err:
        load_rules_dir(tmp_path, CATALOGUE)
    assert len(err.value.problems) == 3


def fifo_and_friends(d: Path) -> dict[str, str]:
    """Non-regular *.yaml entries; name -> what the error must call it."""
    os.mkfifo(d / "fifo.yaml")
    (d / "zero.yaml").symlink_to("/dev/zero")
    (d / "dangling.yaml").symlink_to(d / "missing-target")
    (d / "sub.yaml").mkdir()
    return {"fifo.yaml": "is a FIFO (named pipe), not a regular file",
            "zero.yaml": "is a character device (through a symlink), not a regular file",
            "dangling.yaml": "broken symlink",
            "sub.yaml": "is a directory, not a regular file"}


def test_non_regular_files_are_refused_by_name(tmp_path: Path) -> None:
    expected = fifo_and_friends(tmp_path)
    sock = socket.socket(socket.AF_UNIX)
    sock.bind(str(tmp_path / "sock.yaml"))
    expected["sock.yaml"] = "is a socket, not a regular file"
    try:
        ruleset, problems = check_files([tmp_path], CATALOGUE)
    finally:
        sock.close()
    found = {Path(p.file).name: p.message for p in problems}
    assert found == expected
    assert len(ruleset) == 0


def test_check_rules_does_not_say_ok_for_a_fifo(tmp_path: Path,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    """The reproduction: before, `check-rules` printed "0 rule(s) in 0 file(s) OK"."""
    os.mkfifo(tmp_path / "rules.yaml")
    # Naming the FIFO itself must not block on opening it either.
    assert cli.main(["check-rules", str(tmp_path), str(tmp_path / "rules.yaml")]) == 1
    err = capsys.readouterr().err
    assert "rules.yaml:1:1: (file): is a FIFO (named pipe)" in err


def test_huge_file_is_refused_with_the_limit(tmp_path: Path) -> None:
    big = tmp_path / "big.yaml"
    big.write_bytes(b"#" * (files.MAX_FILE_BYTES + 1))
    _, problems = check_files([tmp_path], CATALOGUE)
    assert [p.message for p in problems] == [
        f"file is {files.MAX_FILE_BYTES + 1} bytes, larger than the limit of "
        f"{files.MAX_FILE_BYTES} bytes"]


def test_file_vanishing_between_listing_and_reading(tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "a.yaml").write_text(GOOD)
    real = loader.rule_files

    def list_then_delete(paths: object) -> object:
        out = real(paths)  # type: ignore[arg-type]
        (tmp_path / "a.yaml").unlink()
        return out

    monkeypatch.setattr(loader, "rule_files", list_then_delete)
    _, problems = check_files([tmp_path], CATALOGUE)
    assert [p.message for p in problems] == ["file vanished before it could be read"]

