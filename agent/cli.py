"""The ``nodemedic`` command: run, version, check-rules, apiserver, demo, replay.

Entry point of the console script (pyproject ``[project.scripts]``) and of ``python -m agent``.
Subcommands owned by other packages register themselves through an ``add_parser(subparsers)``
function in their module (agent.rules.cli; nodemedic_sim.apiserver.command, nodemedic_sim.demo
and nodemedic_sim.replay.command from the separate ``nodemedic-sim`` distribution, installed by
the ``nodemedic[sim]`` extra); this module only parses, configures logging and hands over.
Without that distribution the simulation's subcommands are still listed, and invoking one prints
a one-line "install nodemedic[sim]" error (exit 2). ``run`` and ``version`` are built in: invoked
as one of them, the parser does not import those modules (the in-memory API server, jsonpatch and
the demo would otherwise stay in every agent's memory).
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import importlib.util
import os
import platform
import re
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import NoReturn

from agent import __version__
from agent.collectors import registry as collector_registry
from agent.settings import Settings, SettingsError, build_parser, check_paths, load_settings
from agent.settings_text import did_you_mean

# Modules that contribute subcommands; each exposes add_parser(subparsers).
_SUBCOMMAND_MODULES = ("agent.rules.cli",)
# The simulation's subcommands (command -> its module), in the nodemedic-sim distribution.
_SIM_PACKAGE = "nodemedic_sim"
_SIM_COMMANDS = {
    "apiserver": "nodemedic_sim.apiserver.command",
    "demo": "nodemedic_sim.demo",
    "replay": "nodemedic_sim.replay.command",
}
# Subcommands this module defines itself (make_parser); they need none of the modules above.
_BUILTIN_COMMANDS = frozenset({"run", "version"})


def _collector_names() -> list[str]:
    collector_registry.load_builtin()
    return list(collector_registry.collectors())


_CHOICE = re.compile(r"invalid choice: '(?P<word>[^']*)' \(choose from (?P<choices>.*)\)")


class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors: ``nodemedic run: error: ... (did you mean X?)`` and a pointer
    to ``--help``, instead of the whole usage block above the one line that matters."""

    def error(self, message: str) -> NoReturn:
        m = _CHOICE.search(message)
        if m is not None:
            choices = [c.strip().strip("'") for c in m.group("choices").split(",")]
            message = f"unknown command {m.group('word')!r}{did_you_mean(m.group('word'), choices)}"
        self.exit(2, f"{self.prog}: error: {message}; see `{self.prog} --help`\n")


def unknown_arguments(parser: argparse.ArgumentParser, extras: Sequence[str]) -> str:
    """One line for arguments ``parser`` does not know, each flag with its closest known flag."""
    options = [o for a in parser._actions for o in a.option_strings]
    parts = []
    prev = ""
    for arg in extras:
        word = arg.split("=", 1)[0]
        if not word.startswith("-") and prev.startswith("-") and "=" not in prev:
            prev = arg
            continue  # the value of the unknown flag before it
        hint = did_you_mean(word, options) if word.startswith("-") else ""
        parts.append(f"{arg}{hint}")
        prev = arg
    return "unknown argument" + ("s" if len(parts) > 1 else "") + ": " + ", ".join(parts)


def _subparser(parser: argparse.ArgumentParser, command: str) -> argparse.ArgumentParser:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction) and command in action.choices:
            sub: argparse.ArgumentParser = action.choices[command]
            return sub
    return parser


def make_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The ``nodemedic`` parser; for a built-in ``command`` without the other subcommands."""
    parser = _Parser(
        prog="nodemedic",
        description="Node-local Kubernetes health agent and autoremediation daemon.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    run = sub.add_parser(
        "run", help="run the agent",
        # A prefix is not a flag: --kubelet.ca would silently become whichever flag it abbreviates
        # today, and an error once a second flag shares the prefix; a typo gets "did you mean".
        allow_abbrev=False,
        description="Collect, evaluate rules, remediate within budgets, export metrics. "
        "Precedence: flags > NODEMEDIC_* environment > --config file > defaults.",
    )
    build_parser(run, _collector_names())
    run.set_defaults(func=_cmd_run)
    ver = sub.add_parser("version", help="print version information")
    ver.set_defaults(func=_cmd_version)
    if command not in _BUILTIN_COMMANDS:
        for mod_name in _SUBCOMMAND_MODULES:
            importlib.import_module(mod_name).add_parser(sub)
        sim = sim_installed()
        for name, mod_name in _SIM_COMMANDS.items():
            if sim:
                importlib.import_module(mod_name).add_parser(sub)
            else:
                stub = sub.add_parser(name, help="not installed: install nodemedic[sim]",
                                      add_help=False)
                stub.set_defaults(func=_needs_sim)
    return parser


def sim_installed() -> bool:
    """Whether the nodemedic-sim distribution (package nodemedic_sim) can be imported."""
    return importlib.util.find_spec(_SIM_PACKAGE) is not None


def sim_missing_message(command: str) -> str:
    """The one line a simulation subcommand prints when nodemedic-sim is not installed."""
    return (f"nodemedic {command}: not installed; it is part of the simulation package: "
            "install nodemedic[sim] (pip install 'nodemedic[sim]', or -e ./sim from a checkout)")


def _needs_sim(args: argparse.Namespace) -> int:
    print(sim_missing_message(args.command), file=sys.stderr)
    return 2


def _cmd_version(_: argparse.Namespace) -> int:
    print(f"nodemedic {__version__} (python {platform.python_version()}, {sys.platform})")
    return 0


def _cmd_run(args: argparse.Namespace) -> int:
    names = _collector_names()

    def reload_settings() -> Settings:
        settings = load_settings(args, collector_names=names, base_dir=Path.cwd())
        check_paths(settings)
        return settings

    try:
        settings = reload_settings()
    except SettingsError as exc:
        print(f"nodemedic: invalid setting: {exc}", file=sys.stderr)
        return 2
    from agent.exporter.webfront import check_settings

    web_error = check_settings(settings)
    if web_error is not None:
        print(f"nodemedic: invalid web config: {web_error}", file=sys.stderr)
        return 2
    from agent.runtime.daemon import Agent
    from agent.runtime.logging import configure_logging

    configure_logging(settings.log_level, settings.log_format)
    agent = Agent(settings, reload_settings=reload_settings, handle_signals=True)
    try:
        return asyncio.run(agent.run())
    except OSError as exc:  # e.g. the listen address is in use
        print(f"nodemedic: cannot start: {exc}", file=sys.stderr)
        return 1
    except Exception as exc:  # invalid rules at start etc. carry a clear message
        msg = str(exc)
        print(f"nodemedic: cannot start: {msg}", file=sys.stderr)
        return 1


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in _SIM_COMMANDS and not sim_installed():
        # Before parsing: the command's own flags (and --help) are unknown without the package.
        print(sim_missing_message(argv[0]), file=sys.stderr)
        return 2
    parser = make_parser(argv[0] if argv else None)
    args, extras = parser.parse_known_args(argv)
    if extras:
        sub = _subparser(parser, getattr(args, "command", None) or "")
        sub.error(unknown_arguments(sub, extras))
    if not getattr(args, "command", None):
        parser.print_help(sys.stderr)
        return 2
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    code: int = args.func(args)
    return code


if __name__ == "__main__":
    raise SystemExit(main())
