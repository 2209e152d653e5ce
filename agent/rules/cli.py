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
    p.add_argument("paths", nargs="+", metavar="PATH", help="rule file or directory")
    p.add_argument("-q", "--quiet", action="store_true", help="print nothing on success")
    p.set_defaults(func=_cmd_check_rules)


def _cmd_check_rules(args: argparse.Namespace) -> int:
    ruleset, problems = check_files(args.paths)
    for problem in problems:
        print(problem, file=sys.stderr)
    if problems:
        bad = len({p.file for p in problems})
        print(f"check-rules: {len(problems)} problem(s) in {bad} file(s)", file=sys.stderr)
        return 1
    if not args.quiet:
        print(f"check-rules: {len(ruleset)} rule(s) in {len(ruleset.files)} file(s) OK")
    return 0
