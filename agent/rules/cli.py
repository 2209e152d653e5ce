"""The ``nodemedic check-rules PATH...`` subcommand: validate rule files without running anything.

Registered by agent.cli through :func:`add_parser`. Prints every problem of every file as
``file:line:column: field: message`` on stderr and exits 1 if there is any, else prints a
one-line summary and exits 0. Safe to run in CI and pre-commit hooks: no I/O beyond reading
the files.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from .loader import check_files


def add_parser(subparsers: Any) -> None:
    """Add ``check-rules`` to the ``nodemedic`` subcommands."""
    p = subparsers.add_parser(
        "check-rules", help="validate remediation rule files",
        description="Validate rule files (or every *.yaml/*.yml in a directory). Each problem is "
        "printed as file:line:column: field: message; the exit code is 1 if there is any.",
    )
    p.add_argument("paths", nargs="*", metavar="PATH", help="rule file or directory")
    p.add_argument("--problems", action="append", default=[], metavar="PATH",
                   help="also validate node problem definitions (NPD JSON or nodemedic YAML "
                   "files, or a --problems.dir directory); repeatable")
    p.add_argument("--plugin-dir", default=None, metavar="DIR",
                   help="the --problems.plugin-dir custom plugin checks are resolved against")
    p.add_argument("-q", "--quiet", action="store_true", help="print nothing on success")
    p.set_defaults(func=_cmd_check_rules)


def _cmd_check_rules(args: argparse.Namespace) -> int:
    if not args.paths and not args.problems:
        print("check-rules: give rule PATHs and/or --problems PATH", file=sys.stderr)
        return 2
    ruleset, problems = check_files(args.paths) if args.paths else (None, [])
    summary = [f"{len(ruleset)} rule(s) in {len(ruleset.files)} file(s)"] if ruleset else []
    if args.problems:
        from pathlib import Path

        from agent.problems.loader import check_problems

        plugin_dir = Path(args.plugin_dir) if args.plugin_dir else None
        pset, more = check_problems(args.problems, plugin_dir)
        problems = sorted([*problems, *more])
        summary.append(f"{len(pset)} problem monitor(s) in {len(pset.files)} file(s)")
        for m in pset.check_monitors:
            for r in m.rules:
                if r.disabled and not args.quiet:
                    print(f"{m.file}: {m.name}: check {r.reason} disabled: {r.disabled}")
    for problem in problems:
        print(problem, file=sys.stderr)
    if problems:
        bad = len({p.file for p in problems})
        print(f"check-rules: {len(problems)} problem(s) in {bad} file(s)", file=sys.stderr)
        return 1
    if not args.quiet:
        print(f"check-rules: {', '.join(summary)} OK")
    return 0
