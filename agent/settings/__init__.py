"""Typed settings for the agent, from flags > environment > config file > defaults.

Called by agent.cli (``nodemedic run``) and by the SIGHUP reload in agent.runtime.daemon. Every
setting is declared once in ``FLAGS``; argparse options, environment variables
(``NODEMEDIC_`` + flag name upper-cased with ``.``/``-`` as ``_``), config-file keys (the flag
name without dashes) and the README flag table are all derived from that list, so they cannot
drift apart. ``load_settings`` raises :class:`SettingsError` with one line naming the setting and
what is allowed, also for combinations that contradict each other. Next to each field,
:class:`OnReload` says how a SIGHUP applies a change (live, by rebuilding the collectors, or only
after a restart); agent.runtime.reloadplan derives what a reload does from it.

The package: agent.settings.model declares the options (the pydantic model and its checks),
agent.settings.flags how they are spelled outside; this module loads and merges them (and
re-exports both, so ``from agent.settings import Settings`` is the one import callers need).
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Annotated, Any

import yaml
from pydantic import ValidationError

from agent.settings.flags import (
    FLAG_BY_FIELD,
    FLAGS,
    Flag,
    bounds_message_of,
    convert,
    display_value,
    flag_default,
    flag_name,
    kind_help,
    reload_mode,
)
from agent.settings.model import (
    COLLECTORS,
    KUBELET_LEASE_RENEW_INTERVAL,
    LEASE_RENEW_CONTEXT,
    LIVE,
    RESTART,
    Combination,
    OnReload,
    ReloadMode,
    Settings,
    SettingsError,
    settings_for_tests,
)
from agent.settings_text import ENV_PREFIX, did_you_mean, unknown_env_name

__all__ = [
    "COLLECTORS", "FLAGS", "KUBELET_LEASE_RENEW_INTERVAL", "LEASE_RENEW_CONTEXT", "LIVE",
    "RESTART", "Flag", "OnReload", "ReloadMode", "Settings",
    "SettingsError", "build_parser", "check_paths", "display_value", "flag_default", "flag_name",
    "load_settings", "reload_mode", "settings_for_tests",
]


def build_parser(parser: argparse.ArgumentParser, collector_names: Sequence[str]) -> None:
    """Add every setting flag (and --collector.NAME / --no-collector.NAME) to ``parser``."""
    for flag in FLAGS:
        dest = f"s_{flag.field}"
        if flag.kind == "bool":
            parser.add_argument(
                f"--{flag.name}", dest=dest, action="store_const", const="true", default=None,
                help=f"{flag.help} (env {flag.env})".replace("%", "%%"),
            )
            parser.add_argument(
                f"--no-{flag.name}", dest=dest, action="store_const", const="false",
                help=argparse.SUPPRESS,
            )
        else:
            parser.add_argument(
                f"--{flag.name}", dest=dest, default=None, metavar=flag.kind.upper(),
                help=f"{flag.help} (default {flag_default(flag) or 'unset'}; env {flag.env})"
                .replace("%", "%%"),
            )
    for name in collector_names:
        parser.add_argument(
            f"--collector.{name}", dest=f"c_{name}", action="store_const", const=True,
            default=None, help=f"enable the {name} collector",
        )
        parser.add_argument(
            f"--no-collector.{name}", dest=f"c_{name}", action="store_const", const=False,
            help=f"disable the {name} collector",
        )


def _read_config(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise SettingsError(f"--config={path}: cannot read: {exc.strerror or exc}") from exc
    except UnicodeDecodeError as exc:
        raise SettingsError(f"{path}: not UTF-8 text (byte {exc.start})") from exc
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f":{mark.line + 1}:{mark.column + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise SettingsError(f"{path}{where}: invalid YAML: {problem}") from exc
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise SettingsError(f"{path}: must be a mapping of flag names to values")
    return data


def load_settings(
    args: argparse.Namespace | None = None,
    environ: Mapping[str, str] | None = None,
    collector_names: Sequence[str] = (),
    base_dir: Path | None = None,
) -> Settings:
    """Merge defaults < config file < environment < flags and validate the result."""
    env = os.environ if environ is None else environ
    flag_values: dict[str, Any] = {}
    collectors: Annotated[dict[str, bool], COLLECTORS] = {}
    if args is not None:
        for flag in FLAGS:
            v = getattr(args, f"s_{flag.field}", None)
            if v is not None:
                flag_values[flag.field] = v
        for name in collector_names:
            v = getattr(args, f"c_{name}", None)
            if v is not None:
                collectors[name] = bool(v)

    config_path_raw = flag_values.get("config") or env.get(FLAG_BY_FIELD["config"].env)
    merged: dict[str, tuple[str, Any]] = {}  # field -> (source description, raw value)
    if config_path_raw:
        cfg_path = Path(config_path_raw)
        if base_dir is not None and not cfg_path.is_absolute():
            cfg_path = base_dir / cfg_path
        cfg = _read_config(cfg_path)
        for key, value in cfg.items():
            if not isinstance(key, str):
                raise SettingsError(f"{cfg_path}: {key!r}: keys must be setting names (strings)")
            known_flag = str(key).replace(".", "_").replace("-", "_") in FLAG_BY_FIELD
            if key.startswith("collector.") and key.count(".") == 1 and not known_flag:
                name = key.split(".", 1)[1]
                if collector_names and name not in collector_names:
                    raise SettingsError(
                        f"{cfg_path}: {key}: unknown collector"
                        f"{did_you_mean(key, [f'collector.{n}' for n in collector_names])}; "
                        f"known: {', '.join(collector_names)}"
                    )
                if not isinstance(value, bool):
                    raise SettingsError(f"{cfg_path}: {key}: must be true or false")
                collectors.setdefault(name, value)
                continue
            field = str(key).replace(".", "_").replace("-", "_")
            if field not in FLAG_BY_FIELD or field == "config":
                keys = [f.name for f in FLAGS if f.field != "config"]
                keys += [f"collector.{n}" for n in collector_names]
                raise SettingsError(
                    f"{cfg_path}: {key}: unknown setting{did_you_mean(key, keys)}; "
                    "see `nodemedic run --help`"
                )
            merged[field] = (f"{cfg_path}: {key}", value)
        merged["config"] = ("--config", str(cfg_path))
    _check_env_names(env, collector_names)
    for flag in FLAGS:
        if flag.env in env:
            merged[flag.field] = (f"${flag.env}", env[flag.env])
    for name in collector_names:
        key = f"{ENV_PREFIX}COLLECTOR_{name.upper()}"
        if key in env and name not in collectors:
            try:
                collectors[name] = convert(Flag("x", "bool", ""), env[key])
            except ValueError as exc:
                raise SettingsError(f"${key}={env[key]!r}: {exc}") from exc
    for fld, raw in flag_values.items():
        merged[fld] = (f"--{FLAG_BY_FIELD[fld].name}", raw)

    values: dict[str, Any] = {}
    for fld, (source, raw) in merged.items():
        flag = FLAG_BY_FIELD[fld]
        try:
            values[fld] = convert(flag, raw)
        except (TypeError, ValueError, OverflowError) as exc:
            raise SettingsError(f"{source}={raw!r}: {kind_help(flag, exc)}") from exc
    values["collectors"] = collectors
    try:
        return Settings(**values)
    except ValidationError as exc:
        err = exc.errors()[0]
        cause = (err.get("ctx") or {}).get("error")
        fld = (cause.field if isinstance(cause, Combination)
               else str(err["loc"][0]) if err["loc"] else "?")
        known = FLAG_BY_FIELD.get(fld)
        source, raw = merged.get(fld, (f"--{known.name}" if known else fld, values.get(fld)))
        msg = bounds_message_of(fld, str(err["type"])) or str(err["msg"]).removeprefix(
            "Value error, ")
        raise SettingsError(f"{source}={raw!r}: {msg}") from exc


def _check_env_names(env: Mapping[str, str], collector_names: Sequence[str]) -> None:
    """Refuse a NODEMEDIC_* variable that names no setting (a typo would be silently ignored)."""
    known = {f.env for f in FLAGS} | {f"{ENV_PREFIX}COLLECTOR_{n.upper()}" for n in collector_names}
    error = unknown_env_name(env, known, check_collectors=bool(collector_names))
    if error is not None:
        raise SettingsError(error)


def check_paths(settings: Settings) -> None:
    """Refuse settings naming paths that must exist (at start and on every reload)."""
    if not settings.rules_dir.is_dir():
        what = "is not a directory" if settings.rules_dir.exists() else "does not exist"
        raise SettingsError(
            f"--rules.dir={str(settings.rules_dir)!r}: {what}; the agent needs its rules "
            "directory (an empty directory means no rules, which is alerted on)"
        )
