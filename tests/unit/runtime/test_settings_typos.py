"""A misspelt flag, NODEMEDIC_* variable or config key is refused in one line that names the
closest real one (issue 16 item 7); values outside a range say the range in the setting's units."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from agent import cli
from agent.settings import SettingsError, build_parser, load_settings
from agent.settings_text import NOT_SETTINGS

NAMES = ("cgroup", "host")


def parse(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser()
    build_parser(p, NAMES)
    return p.parse_args(argv)


def refused(argv: list[str], env: dict[str, str]) -> str:
    with pytest.raises(SettingsError) as err:
        load_settings(parse(argv), environ=env, collector_names=NAMES)
    text = str(err.value)
    assert "\n" not in text
    return text


@pytest.mark.parametrize(
    ("key", "suggestion"),
    [("colect.interval: 3s", "collect.interval"), ("dryrun: true", "dry-run"),
     ("collector.hots: false", "collector.host"), ("safety.max-cordon: 2", "safety.max-cordoned")],
)
def test_config_key_typo_suggests_the_key(tmp_path: Path, key: str, suggestion: str) -> None:
    cfg = tmp_path / "c.yaml"
    cfg.write_text(key + "\n")
    text = refused(["--config", str(cfg)], {})
    assert text.startswith(f"{cfg}: {key.split(':', maxsplit=1)[0]}: unknown")
    assert f"(did you mean {suggestion}?)" in text


@pytest.mark.parametrize(
    ("var", "suggestion"),
    [("NODEMEDIC_COLECT_INTERVAL", "NODEMEDIC_COLLECT_INTERVAL"),
     ("NODEMEDIC_DRYRUN", "NODEMEDIC_DRY_RUN"),
     ("NODEMEDIC_COLLECTOR_CGROUPS", "NODEMEDIC_COLLECTOR_CGROUP")],
)
def test_environment_typo_is_refused_with_suggestion(var: str, suggestion: str) -> None:
    text = refused([], {var: "1"})
    assert text.startswith(f"${var}: unknown setting (did you mean {suggestion}?)")


def test_the_projects_own_variables_are_not_settings() -> None:
    """NODEMEDIC_ARGS (the systemd unit's argument list) and the scripts' knobs are allowed."""
    env = dict.fromkeys(NOT_SETTINGS, "x")
    assert load_settings(parse([]), environ=env, collector_names=NAMES).dry_run is False


@pytest.mark.parametrize(
    ("argv", "message"),
    [(["--collect.interval", "500ms"], "--collect.interval='500ms': must be from 1s to 1h"),
     (["--collect.interval", "2h"], "--collect.interval='2h': must be from 1s to 1h"),
     (["--failover.lease-duration", "100ms"],
      "--failover.lease-duration='100ms': must be from 300ms to 10m"),
     (["--failover.probe-timeout", "0s"], "--failover.probe-timeout='0s': must be more than 0s "
      "and at most 1m"),
     (["--failover.probers", "11"], "--failover.probers='11': must be from 0 to 10"),
     (["--collect.interval", "2m", "--collector.timeout", "3m"],
      "must be shorter than --collect.interval (2m)"),
     (["--failover.lease-duration", "1m", "--failover.retry-period", "30s"],
      "at most a third of --failover.lease-duration (1m, so at most 20s)")],
)
def test_out_of_range_values_keep_their_units(argv: list[str], message: str) -> None:
    assert message in refused(argv, {})


def run_cli(argv: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    with pytest.raises(SystemExit) as exit_:
        cli.main(argv)
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1, err  # one line, not the usage block
    assert "usage:" not in err
    return err


@pytest.mark.parametrize(
    ("argv", "needle"),
    [(["run", "--colect.interval=5s"],
      "nodemedic run: error: unknown argument: --colect.interval=5s (did you mean "
      "--collect.interval?)"),
     (["run", "--dry-rn"], "(did you mean --dry-run?)"),
     (["run", "--collect.int", "5s"],
      "unknown argument: --collect.int (did you mean --collect.interval?); "),  # no prefixes
     (["run", "stray"], "unknown argument: stray; "),
     (["run", "--no-collector.cgrop"], "(did you mean --no-collector.cgroup?)"),
     (["rn"], "nodemedic: error: unknown command 'rn' (did you mean run?)"),
     (["run", "--collect.interval"], "argument --collect.interval: expected one argument")],
)
def test_flag_typo_is_one_line_with_suggestion(argv: list[str], needle: str,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    err = run_cli(argv, capsys)
    assert needle in err
    assert "--help`" in err


def test_values_are_shown_as_users_write_them() -> None:
    """/status and the log show a restart-only change in the setting's units (15s, not 15.0)."""
    from agent.settings import display_value

    assert display_value("failover_lease_duration", 15.0) == "15s"
    assert display_value("collect_interval", 90.0) == "1m30s"
    assert display_value("failover_probe_timeout", 0.5) == "500ms"
    assert display_value("web_kubernetes_auth", True) == "true"
    assert display_value("host_disk_paths", ("/", "/var")) == "/,/var"
    assert display_value("node_name", "n-1") == "n-1"
