"""Load rule files into a :class:`RuleSet`: read, parse, validate, check, report every problem.

Called by ``nodemedic check-rules`` (agent.rules.cli), by the daemon at start and on SIGHUP
(:func:`load_rules_dir`, or :class:`RulesReloader` which keeps the last good set and counts
failures), and by tests. Every problem is a :class:`Problem` printed as
``file:line:column: field.path: message``; nothing in a rule file can crash the loader.

The steps live beside it: agent.rules.files reads the files (regular, bounded, UTF-8),
agent.rules.located composes the YAML with positions and locates schema errors,
agent.rules.checks checks valid rules against agent.rules.catalogue (the known metrics) and their
targets; this module adds what spans files (duplicate names), runbook URLs and the reloader.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from pydantic import ValidationError

from agent.structs.metrics import Family, MetricSpec

from .catalogue import (
    AGREED_METRICS,
    Catalogue,
    MetricInfo,
    catalogue_from_specs,
    default_catalogue,
)
from .checks import semantic_problems, unknown_metrics
from .files import read_text, rule_files
from .located import (
    Doc,
    Path_,
    Problem,
    RulesError,
    format_path,
    mark_for,
    parse_yaml,
    validation_problems,
)
from .schema import RUNBOOK_BASE_URL, UNDO_ACTIONS, Rule, RuleFile

# The loader's interface, with what callers import from here that is declared beside it.
__all__ = [
    "AGREED_METRICS", "UNDO_ACTIONS", "Catalogue", "LoadedRule", "MetricInfo", "Problem",
    "RuleName", "RuleSet", "RulesError", "RulesReloader", "catalogue_from_specs", "check_files",
    "default_catalogue", "load_rules", "load_rules_dir", "parse_rules_text", "rule_files",
]


@dataclass(frozen=True, slots=True)
class LoadedRule:
    """A validated rule with where it came from and its absolute runbook URL."""

    rule: Rule
    file: str
    line: int
    runbook_url: str
    index: int = 0  # position in the file's ``rules:`` list
    name_column: int = 1


@dataclass(frozen=True, slots=True)
class RuleSet:
    """All rules of a rules directory (or a list of files), names unique."""

    rules: tuple[LoadedRule, ...] = ()
    files: tuple[str, ...] = ()

    def __len__(self) -> int:
        return len(self.rules)

    def names(self) -> list[str]:
        return [r.rule.name for r in self.rules]


def _resolve_runbook(rule: Rule, base_url: str) -> str:
    if rule.runbook is None:
        return ""
    if rule.runbook.startswith(("http://", "https://")):
        return rule.runbook
    return base_url + rule.runbook.lstrip("/")


@dataclass(frozen=True, slots=True)
class RuleName:
    """Where a rule's name is given, valid rule or not (for duplicate names across files)."""

    name: str
    file: str
    line: int
    column: int
    index: int


def _names(doc: Doc, file: str) -> list[RuleName]:
    raw = doc.data.get("rules") if isinstance(doc.data, dict) else None
    out: list[RuleName] = []
    for i, item in enumerate(raw if isinstance(raw, list) else []):
        name = item.get("name") if isinstance(item, dict) else None
        if isinstance(name, str) and name:
            line, col = doc.value_marks.get(("rules", i, "name"), (1, 1))
            out.append(RuleName(name, file, line, col, i))
    return out


def parse_rules_text(
    text: str, file: str, catalogue: Catalogue, names: list[RuleName] | None = None
) -> tuple[list[LoadedRule], list[Problem]]:
    """Validate one file's text; return its valid rules and every problem found.

    ``names``, when given, receives the name of every rule item that has one, valid or not, so
    that duplicates across files are reported in the same pass as everything else."""
    docs, problems = parse_yaml(text, file)
    rules: list[LoadedRule] = []
    for doc in docs:
        if names is not None:
            names.extend(_names(doc, file))
        if not isinstance(doc.data, dict):
            line, col = doc.value_marks.get((), (1, 1))
            problems.append(Problem(file, line, col, "(document)",
                                    "a rule file is a mapping with a `rules:` list"))
            continue
        valid: list[tuple[int, Rule]] = []
        base_url = RUNBOOK_BASE_URL
        try:
            parsed = RuleFile.model_validate(doc.data)
            valid = list(enumerate(parsed.rules))
            base_url = parsed.runbook_base_url
        except ValidationError as exc:
            problems.extend(validation_problems(file, doc, exc))
            # Still check the rules that validated on their own, so one run shows everything.
            bad = {e["loc"][1] for e in exc.errors()
                   if len(e["loc"]) > 1 and e["loc"][0] == "rules"}
            raw = doc.data.get("rules")
            for i, item in enumerate(raw if isinstance(raw, list) else []):
                if i not in bad:
                    with contextlib.suppress(ValidationError):
                        valid.append((i, Rule.model_validate(item)))
                elif isinstance(item, dict):
                    found = unknown_metrics(item, ("rules", i), catalogue)
                    problems.extend(Problem(file, *mark_for(doc, p), format_path(p), m)
                                    for p, m in found)
        for i, rule in valid:
            base: Path_ = ("rules", i)
            found = semantic_problems(rule, base, catalogue)
            problems.extend(Problem(file, *mark_for(doc, p), format_path(p), m)
                            for p, m in found)
            if not found:
                line, col = doc.value_marks.get((*base, "name"), (1, 1))
                rules.append(LoadedRule(rule, file, line, _resolve_runbook(rule, base_url), i,
                                        col))
    return rules, sorted(problems)


def check_files(
    paths: Iterable[Path | str], catalogue: Catalogue | None = None
) -> tuple[RuleSet, list[Problem]]:
    """Validate files/directories: the rules that are valid and every problem (all files)."""
    cat = default_catalogue() if catalogue is None else catalogue
    files, problems = rule_files(paths)
    loaded: list[LoadedRule] = []
    names: list[RuleName] = []
    for path in files:
        text, read_problems = read_text(path)
        problems.extend(read_problems)
        if text is None:
            continue
        rules, file_problems = parse_rules_text(text, str(path), cat, names)
        problems.extend(file_problems)
        loaded.extend(rules)
    # Duplicate names over every rule that has a name, valid or not: fixing another error must
    # never reveal a duplicate that was there all along.
    first: dict[str, RuleName] = {}
    dupes: set[tuple[str, int, int]] = set()
    for n in names:
        seen = first.setdefault(n.name, n)
        if seen is not n:
            dupes.add((n.file, n.line, n.column))
            problems.append(Problem(n.file, n.line, n.column, f"rules[{n.index}].name",
                                    f"duplicate rule name {n.name!r} "
                                    f"(first defined at {seen.file}:{seen.line})"))
    loaded = [lr for lr in loaded if (lr.file, lr.line, lr.name_column) not in dupes]
    return RuleSet(tuple(loaded), tuple(str(f) for f in files)), sorted(problems)


def load_rules(paths: Iterable[Path | str], catalogue: Catalogue | None = None) -> RuleSet:
    """Load rules from files/directories; raise :class:`RulesError` on any problem."""
    ruleset, problems = check_files(paths, catalogue)
    if problems:
        raise RulesError(problems)
    return ruleset


def load_rules_dir(path: Path | str, catalogue: Catalogue | None = None) -> RuleSet:
    """What the daemon calls at start and on SIGHUP: all rules of ``--rules.dir``."""
    return load_rules([path], catalogue)


_LOADED = MetricSpec("nodemedic_rules_loaded", "Enabled rules in the current rule set.", "gauge")
_RELOAD_FAILURES = MetricSpec(
    "nodemedic_rules_reload_failures_total",
    "Rule (re)loads rejected because a file was invalid; the last good set stays active.",
    "counter",
)
_LAST_OK = MetricSpec(
    "nodemedic_rules_last_reload_success",
    "1 if the last rule (re)load succeeded, 0 if it failed and an older set is active.",
    "gauge",
)


class RulesReloader:
    """Keeps the last good rule set across SIGHUP reloads and exports reload metrics.

    Two phases, so a reload is all or nothing across the agent: :meth:`load` validates a
    directory and changes nothing but the failure counters; :meth:`commit` (which cannot fail)
    makes a loaded set and its directory current. :meth:`reload` does both (start, tests).
    """

    def __init__(self, path: Path | str, catalogue: Catalogue | None = None) -> None:
        self.path = Path(path)
        self.catalogue = catalogue
        self.current = RuleSet()
        self.failures = 0
        self.last_ok = True
        self.last_problems: tuple[Problem, ...] = ()

    def load(self, path: Path | str | None = None) -> RuleSet:
        """Validate ``path`` (default: the current directory); RulesError on any problem."""
        try:
            return load_rules_dir(self.path if path is None else path, self.catalogue)
        except RulesError as exc:
            self.failures += 1
            self.last_ok = False
            self.last_problems = exc.problems
            raise

    def commit(self, ruleset: RuleSet, path: Path | str | None = None) -> None:
        """Make ``ruleset`` (loaded from ``path``) the current set."""
        if path is not None:
            self.path = Path(path)
        self.current = ruleset
        self.last_ok = True
        self.last_problems = ()

    def reload(self) -> RuleSet:
        ruleset = self.load()
        self.commit(ruleset)
        return ruleset

    def families(self) -> list[Family]:
        loaded, failures, ok = _LOADED.family(), _RELOAD_FAILURES.family(), _LAST_OK.family()
        loaded.add((), sum(1 for r in self.current.rules if r.rule.enabled))
        failures.add((), self.failures)
        ok.add((), 1.0 if self.last_ok else 0.0)
        return [loaded, failures, ok]
