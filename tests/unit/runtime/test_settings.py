"""Settings precedence and validation, as a user of flags, env and config files sees them."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from agent.settings import FLAGS, SettingsError, build_parser, load_settings


def parse(argv: list[str], names: tuple[str, ...] = ("cgroup", "host")) -> argparse.Namespace:
    p = argparse.ArgumentParser()
    build_parser(p, names)
    return p.parse_args(argv)


def test_defaults_are_valid() -> None:
    """With nothing set, the defaults load and match the documented ones."""
    s = load_settings(parse([]), environ={})
    assert s.web_listen_address == ":9678"
    assert s.collect_interval == 10.0
    assert s.dry_run is False


def test_flag_beats_env_beats_config(tmp_path: Path) -> None:
    """Flags override NODEMEDIC_* variables, which override the config file."""
    cfg = tmp_path / "c.yaml"
    cfg.write_text("collect.interval: 30s\nnode-name: from-config\nkubelet.url: http://cfg:10255\n")
    env = {"NODEMEDIC_COLLECT_INTERVAL": "20s", "NODEMEDIC_NODE_NAME": "from-env"}
    s = load_settings(parse(["--config", str(cfg), "--collect.interval", "5s"]), environ=env)
    assert s.collect_interval == 5.0
    assert s.node_name == "from-env"
    assert s.kubelet_url == "http://cfg:10255"


def test_collector_toggles_from_flags_env_and_config(tmp_path: Path) -> None:
    """--no-collector.NAME, NODEMEDIC_COLLECTOR_NAME and config keys disable collectors."""
    cfg = tmp_path / "c.yaml"
    cfg.write_text("collector.host: false\n")
    s = load_settings(parse(["--config", str(cfg), "--no-collector.cgroup"]), environ={},
                      collector_names=("cgroup", "host"))
    assert s.collector_enabled("cgroup", True) is False
    assert s.collector_enabled("host", True) is False
    s2 = load_settings(parse([]), environ={"NODEMEDIC_COLLECTOR_HOST": "no"},
                       collector_names=("cgroup", "host"))
    assert s2.collector_enabled("host", True) is False
    assert s2.collector_enabled("cgroup", True) is True


@pytest.mark.parametrize(
    ("argv", "env", "needle"),
    [
        (["--collect.interval", "abc"], {}, "--collect.interval='abc': expected a duration"),
        (["--collect.interval", "0.1s"], {}, "--collect.interval"),
        (["--web.listen-address", "nope"], {}, "--web.listen-address='nope': must be HOST:PORT"),
        (["--kubelet.url", "ftp://x"], {}, "--kubelet.url='ftp://x': must be an http"),
        ([], {"NODEMEDIC_DRY_RUN": "maybe"}, "$NODEMEDIC_DRY_RUN='maybe': must be true or false"),
        (["--log.level", "loud"], {}, "--log.level='loud'"),
    ],
)
def test_invalid_settings_name_the_setting(
    argv: list[str], env: dict[str, str], needle: str
) -> None:
    """An invalid value raises one line naming where it came from and what is allowed."""
    with pytest.raises(SettingsError) as exc:
        load_settings(parse(argv), environ=env)
    assert needle in str(exc.value)
    assert "\n" not in str(exc.value)


def test_config_file_errors_are_located(tmp_path: Path) -> None:
    """Unknown keys and bad YAML in the config file name the file (and line for YAML)."""
    bad = tmp_path / "bad.yaml"
    bad.write_text("collect.interval: 10s\nwhat.is.this: 1\n")
    with pytest.raises(SettingsError, match=r"bad.yaml: what.is.this: unknown setting"):
        load_settings(parse(["--config", str(bad)]), environ={})
    broken = tmp_path / "broken.yaml"
    broken.write_text("a: [1, 2\n")
    with pytest.raises(SettingsError, match=r"broken.yaml:2:1: invalid YAML"):
        load_settings(parse(["--config", str(broken)]), environ={})
    missing = tmp_path / "missing.yaml"
    with pytest.raises(SettingsError, match="cannot read"):
        load_settings(parse(["--config", str(missing)]), environ={})


def test_every_flag_has_env_and_help() -> None:
    """Each documented flag maps to a settings field, an env variable and help text."""
    for flag in FLAGS:
        assert flag.env.startswith("NODEMEDIC_")
        assert flag.help


def test_config_key_collector_timeout_is_a_setting(tmp_path: Path) -> None:
    """`collector.timeout` in a config file is the timeout setting, not a collector name."""
    cfg = tmp_path / "c.yaml"
    cfg.write_text("collector.timeout: 3s\ncollector.host: false\n")
    s = load_settings(parse(["--config", str(cfg)]), environ={},
                      collector_names=("cgroup", "host"))
    assert s.collector_timeout == 3.0
    assert s.collector_enabled("host", True) is False


def test_run_help_renders() -> None:
    """`nodemedic run --help` prints every flag (help texts may contain %)."""
    from agent.cli import make_parser

    p = make_parser()
    sub = next(a for a in p._actions if a.dest == "command")
    text = sub.choices["run"].format_help()  # type: ignore[attr-defined]
    for flag in FLAGS:
        assert f"--{flag.name}" in text
