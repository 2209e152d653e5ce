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


# `nodemedic ARGS` where the simulation distribution (nodemedic-sim) cannot be imported, as on a
# node installed from the nodemedic wheel alone: the import system finds no nodemedic_sim.
_WITHOUT_SIM = (
    "import sys; sys.modules['nodemedic_sim'] = None\n"
    "from agent.cli import main\n"
    "raise SystemExit(main(sys.argv[1:]))"
)


def nodemedic_without_sim(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", _WITHOUT_SIM, *args], capture_output=True,
                          text=True, timeout=120, cwd=REPO)


def test_simulation_commands_say_install_nodemedic_sim_when_it_is_absent() -> None:
    """apiserver, demo and replay (with their flags, or --help) without nodemedic-sim: one line
    naming the extra, exit 2; nothing else."""
    for args in (["demo"], ["apiserver", "--listen", "127.0.0.1:0"], ["replay", "--help"]):
        res = nodemedic_without_sim(*args)
        assert res.returncode == 2, (args, res.stdout, res.stderr)
        assert res.stdout == ""
        assert res.stderr.count("\n") == 1, res.stderr
        assert res.stderr.startswith(f"nodemedic {args[0]}: "), res.stderr
        assert "install nodemedic[sim]" in res.stderr


def test_without_the_simulation_the_agent_commands_work_and_help_lists_the_rest() -> None:
    """run/version/check-rules need no nodemedic-sim; --help still names the simulation's
    commands, each marked as not installed."""
    res = nodemedic_without_sim("version")
    assert res.returncode == 0 and res.stdout.startswith("nodemedic "), res.stderr
    res = nodemedic_without_sim("check-rules", str(REPO / "rules"))
    assert res.returncode == 0, res.stderr
    res = nodemedic_without_sim("--help")
    assert res.returncode == 0, res.stderr
    for command in ("apiserver", "demo", "replay"):
        line = next(ln for ln in res.stdout.splitlines() if ln.split()[:1] == [command])
        assert "install nodemedic[sim]" in line


def test_simulation_commands_run_when_nodemedic_sim_is_installed() -> None:
    """With nodemedic-sim installed (as `make venv` does) the same commands parse their flags."""
    for command in ("apiserver", "demo", "replay"):
        res = nodemedic(command, "--help")
        assert res.returncode == 0, res.stderr
        assert "nodemedic[sim]" not in res.stdout
