"""Load rule files: safe YAML with positions, schema validation, semantic checks, located errors.

Called by ``nodemedic check-rules`` (agent.rules.cli), by the daemon at start and on SIGHUP
(:func:`load_rules_dir`, or :class:`RulesReloader` which keeps the last good set and counts
failures), and by tests. Every problem is a :class:`Problem` printed as
``file:line:column: field.path: message``; nothing in a rule file can crash the loader.

YAML is *composed* with PyYAML's SafeLoader (node tree with marks) and converted to Python here,
so each value keeps its line/column, duplicate keys are errors instead of silently last-wins, and
alias bombs are cut off by a node budget.
"""

from __future__ import annotations

import contextlib
import difflib
import os
import stat
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError
from pydantic_core import ErrorDetails

from agent.structs.metrics import Family, MetricSpec
from agent.structs.remediation import ACTION_TYPES

from .schema import (
    NODE_ONLY,
    POD_ONLY,
    RUNBOOK_BASE_URL,
    UNDO_ACTIONS,
    AllOf,
    AnyOf,
    MetricCondition,
    NotOf,
    Rule,
    RuleFile,
)

MAX_FILE_BYTES = 1 << 20
MAX_NODES = 50_000  # per document; defeats "billion laughs" alias expansion
RULE_SUFFIXES = (".yaml", ".yml")
_COMMAND_KEYS = frozenset({"command", "cmd", "exec", "shell", "script", "run", "args", "bash"})

Path_ = tuple[str | int, ...]


@dataclass(frozen=True, slots=True)
class MetricInfo:
    """What check-rules knows about a metric; ``None`` means "not known yet, do not check"."""

    type: str | None
    labelnames: tuple[str, ...] | None


Catalogue = Mapping[str, MetricInfo]

_CG = ("namespace", "pod", "uid", "container", "qos")
_LB = ("namespace", "service", "port")
# The collector metrics agreed between engineers (names.md). Used where a collector does not
# declare its metrics yet; a collector's own MetricSpec always wins.
AGREED_METRICS: dict[str, MetricInfo] = {
    **{n: MetricInfo("gauge", _CG) for n in (
        "nodemedic_container_memory_usage_bytes", "nodemedic_container_memory_working_set_bytes",
        "nodemedic_container_memory_limit_bytes", "nodemedic_container_cpu_quota_cores")},
    **{n: MetricInfo("counter", _CG) for n in (
        "nodemedic_container_oom_kills_total", "nodemedic_container_oom_events_total",
        "nodemedic_container_cpu_usage_seconds_total",
        "nodemedic_container_cpu_cfs_periods_total",
        "nodemedic_container_cpu_cfs_throttled_periods_total",
        "nodemedic_container_cpu_cfs_throttled_seconds_total")},
    "nodemedic_container_pressure_avg10_ratio": MetricInfo("gauge", (*_CG, "resource", "kind")),
    "nodemedic_container_pressure_seconds_total": MetricInfo(
        "counter", (*_CG, "resource", "kind")),
    "nodemedic_kubelet_up": MetricInfo("gauge", ()),
    "nodemedic_kubelet_healthz_duration_seconds": MetricInfo("gauge", ()),
    "nodemedic_kubelet_pods": MetricInfo("gauge", ("phase",)),
    "nodemedic_kubelet_pleg_relist_interval_seconds": MetricInfo("gauge", ()),
    "nodemedic_host_clock_synchronized": MetricInfo("gauge", ()),
    "nodemedic_host_clock_offset_seconds": MetricInfo("gauge", ()),
    "nodemedic_host_filesystem_avail_bytes": MetricInfo("gauge", ("path",)),
    "nodemedic_host_filesystem_size_bytes": MetricInfo("gauge", ("path",)),
    "nodemedic_host_filesystem_files_free": MetricInfo("gauge", ("path",)),
    "nodemedic_host_memory_available_bytes": MetricInfo("gauge", ()),
    "nodemedic_host_load1": MetricInfo("gauge", ()),
    "nodemedic_host_pressure_avg10_ratio": MetricInfo("gauge", ("resource", "kind")),
    "nodemedic_api_up": MetricInfo("gauge", ()),
    "nodemedic_node_condition": MetricInfo("gauge", ("condition", "status")),
    "nodemedic_node_unschedulable": MetricInfo("gauge", ()),
    "nodemedic_node_taint": MetricInfo("gauge", ("key", "effect")),
    "nodemedic_node_lease_age_seconds": MetricInfo("gauge", ()),
    "nodemedic_service_endpoint_connections": MetricInfo("gauge", (*_LB, "endpoint", "pod")),
    "nodemedic_service_endpoint_bytes_total": MetricInfo("counter", (*_LB, "endpoint", "pod")),
    "nodemedic_service_endpoint_expected_share": MetricInfo("gauge", (*_LB, "endpoint")),
    "nodemedic_service_skew_max_mean_ratio": MetricInfo("gauge", _LB),
    "nodemedic_service_skew_cv": MetricInfo("gauge", _LB),
    "nodemedic_service_skew_chi2_p_value": MetricInfo("gauge", _LB),
    "nodemedic_service_connections": MetricInfo("gauge", _LB),
    "nodemedic_service_chain_problems": MetricInfo("gauge", (*_LB, "problem")),
}


def catalogue_from_specs(specs: Iterable[MetricSpec]) -> dict[str, MetricInfo]:
    """Build a catalogue from metric specs (tests pass their own)."""
    return {s.name: MetricInfo(s.type, tuple(s.labelnames)) for s in specs}


def default_catalogue() -> dict[str, MetricInfo]:
    """Agreed metric names overlaid with what the registered collectors declare."""
    from agent.collectors import registry  # deferred: collectors import heavier modules

    out = dict(AGREED_METRICS)
    # A collector module broken mid-development must not break check-rules: the agreed names
    # still apply, and the daemon reports the broken collector itself.
    with contextlib.suppress(Exception):
        registry.load_builtin()
    for name, (_collector, spec) in registry.metric_catalogue().items():
        out[name] = MetricInfo(spec.type, tuple(spec.labelnames))
    return out


# --------------------------------------------------------------------------- problems


@dataclass(frozen=True, slots=True, order=True)
class Problem:
    """One located problem in a rule file (line and column are 1-based)."""

    file: str
    line: int
    column: int
    field: str
    message: str

    def __str__(self) -> str:
        return f"{self.file}:{self.line}:{self.column}: {self.field}: {self.message}"


class RulesError(Exception):
    """Rules could not be loaded; ``problems`` says where and why."""

    def __init__(self, problems: Sequence[Problem]) -> None:
        self.problems = tuple(problems)
        first = str(self.problems[0]) if self.problems else "invalid rules"
        more = f" (+{len(self.problems) - 1} more)" if len(self.problems) > 1 else ""
        super().__init__(first + more)


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


def format_path(path: Path_) -> str:
    out = ""
    for comp in path:
        if isinstance(comp, int):
            out += f"[{comp}]"
        else:
            out += ("." if out else "") + comp
    return out or "(document)"


# --------------------------------------------------------------------------- YAML with marks


@dataclass
class _Doc:
    data: Any
    value_marks: dict[Path_, tuple[int, int]] = field(default_factory=dict)
    key_marks: dict[Path_, tuple[int, int]] = field(default_factory=dict)


class _YamlProblem(Exception):
    def __init__(self, mark: yaml.Mark | None, path: Path_, message: str) -> None:
        super().__init__(message)
        self.where = (mark.line + 1, mark.column + 1) if mark is not None else (1, 1)
        self.path = path
        self.message = message


class _Converter:
    """Turn a composed node tree into plain Python, recording marks per path."""

    def __init__(self, doc: _Doc) -> None:
        self.doc = doc
        self.budget = MAX_NODES
        self.constructor = yaml.constructor.SafeConstructor()
        self.problems: list[tuple[tuple[int, int], Path_, str]] = []

    @staticmethod
    def _pos(node: yaml.Node) -> tuple[int, int]:
        return node.start_mark.line + 1, node.start_mark.column + 1

    def convert(self, node: yaml.Node, path: Path_, active: frozenset[int]) -> Any:
        self.budget -= 1
        if self.budget < 0:
            raise _YamlProblem(node.start_mark, path, f"document has more than {MAX_NODES} "
                               "nodes (alias expansion?)")
        if id(node) in active:
            raise _YamlProblem(node.start_mark, path, "recursive alias")
        self.doc.value_marks.setdefault(path, self._pos(node))
        expected = ("tag:yaml.org,2002:map" if isinstance(node, yaml.MappingNode)
                    else "tag:yaml.org,2002:seq" if isinstance(node, yaml.SequenceNode) else None)
        if expected is not None and node.tag != expected:
            raise _YamlProblem(node.start_mark, path, f"unsupported tag {node.tag!r}")
        if isinstance(node, yaml.MappingNode):
            inner = active | {id(node)}
            out: dict[Any, Any] = {}
            for knode, vnode in node.value:
                if knode.tag == "tag:yaml.org,2002:merge":
                    raise _YamlProblem(knode.start_mark, path, "merge keys (<<) are not supported")
                if not isinstance(knode, yaml.ScalarNode):
                    raise _YamlProblem(knode.start_mark, path, "mapping keys must be strings")
                key = self._scalar(knode, path)
                if not isinstance(key, str):
                    key = str(key)
                    self.problems.append((self._pos(knode), (*path, key),
                                          "mapping keys must be strings (quote it)"))
                if key in out:
                    self.problems.append((self._pos(knode), (*path, key), "duplicate key"))
                    continue
                self.doc.key_marks[(*path, key)] = self._pos(knode)
                out[key] = self.convert(vnode, (*path, key), inner)
            return out
        if isinstance(node, yaml.SequenceNode):
            inner = active | {id(node)}
            return [self.convert(v, (*path, i), inner) for i, v in enumerate(node.value)]
        return self._scalar(node, path)

    def _scalar(self, node: yaml.Node, path: Path_) -> Any:
        try:
            return self.constructor.construct_object(node, deep=True)
        except yaml.YAMLError as exc:
            problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
            raise _YamlProblem(node.start_mark, path, f"unsupported value: {problem}") from exc


def _parse_yaml(text: str, file: str) -> tuple[list[_Doc], list[Problem]]:
    docs: list[_Doc] = []
    problems: list[Problem] = []
    try:
        nodes = list(yaml.compose_all(text, Loader=yaml.SafeLoader))
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line, col = (mark.line + 1, mark.column + 1) if mark is not None else (1, 1)
        msg = exc.problem or exc.context or "invalid YAML"
        return [], [Problem(file, line, col, "(yaml)", f"invalid YAML: {msg}")]
    except (yaml.YAMLError, RecursionError, ValueError) as exc:
        return [], [Problem(file, 1, 1, "(yaml)", f"invalid YAML: {exc}")]
    for node in nodes:
        if node is None:
            continue
        doc = _Doc(None)
        conv = _Converter(doc)
        try:
            doc.data = conv.convert(node, (), frozenset())
        except _YamlProblem as exc:
            problems.append(Problem(file, *exc.where, format_path(exc.path), exc.message))
            continue
        except RecursionError:
            problems.append(Problem(file, *conv._pos(node), "(document)", "nesting too deep"))
            continue
        problems.extend(Problem(file, *pos, format_path(p), m) for pos, p, m in conv.problems)
        docs.append(doc)
    return docs, problems


# --------------------------------------------------------------------------- validation


def _locate(doc: _Doc, loc: Sequence[str | int], use_key: bool) -> tuple[Path_, tuple[int, int]]:
    """Map a pydantic error location onto the data, skipping union tags pydantic inserts."""
    path: Path_ = ()
    node = doc.data
    for comp in loc:
        in_map = isinstance(node, dict) and isinstance(comp, str) and comp in node
        in_list = isinstance(node, list) and isinstance(comp, int) and 0 <= comp < len(node)
        if in_map or in_list:
            path = (*path, comp)
            node = node[comp]
    if use_key and path in doc.key_marks:
        return path, doc.key_marks[path]
    probe = path
    while probe not in doc.value_marks and probe:
        probe = probe[:-1]
    return path, doc.value_marks.get(probe, (1, 1))


_FIELD_HINTS = {
    "name": "must be a lower-case DNS label (a-z, 0-9 and -, at most 63 characters)",
    "metric": "must be a metric name starting with nodemedic_",
    "divide_by": "must be a metric name starting with nodemedic_",
    "runbook_base_url": "must be an http(s) URL ending in /",
}


def _message(err: ErrorDetails, path: Path_) -> str:
    etype = err["type"]
    ctx: dict[str, Any] = dict(err.get("ctx") or {})
    if etype == "extra_forbidden":
        key = str(path[-1]) if path else "?"
        if key.lower() in _COMMAND_KEYS:
            return (f"unknown key {key!r}: rules never run commands; use restart-service with "
                    "a unit from the agent's allow-list")
        return f"unknown key {key!r}"
    if etype == "missing":
        return "required"
    if etype == "union_tag_invalid":
        return f"unknown action type {ctx.get('tag')!r}; known: {', '.join(ACTION_TYPES)}"
    if etype == "union_tag_not_found":
        return f"an action needs a type: one of {', '.join(ACTION_TYPES)}"
    if etype == "string_pattern_mismatch" and path and str(path[-1]) in _FIELD_HINTS:
        return _FIELD_HINTS[str(path[-1])]
    msg = str(err["msg"]).removeprefix("Value error, ").replace("Input should be", "must be")
    if etype.endswith("_type") or etype in ("finite_number", "literal_error"):
        shown = repr(err.get("input"))
        msg += f", got {shown if len(shown) <= 40 else shown[:37] + '...'}"
    return msg


def _validation_problems(file: str, doc: _Doc, exc: ValidationError) -> list[Problem]:
    out: list[Problem] = []
    for err in exc.errors(include_url=False):
        loc = err["loc"]
        path, (line, col) = _locate(doc, loc, use_key=err["type"] == "extra_forbidden")
        shown = path
        if err["type"] == "missing" and loc and isinstance(loc[-1], str):
            shown = (*path, loc[-1])
        out.append(Problem(file, line, col, format_path(shown), _message(err, shown)))
    return out


def _walk_conditions(cond: BaseModel, path: Path_) -> Iterable[tuple[MetricCondition, Path_]]:
    if isinstance(cond, MetricCondition):
        yield cond, path
    elif isinstance(cond, AllOf):
        for i, c in enumerate(cond.all):
            yield from _walk_conditions(c, (*path, "all", i))
    elif isinstance(cond, AnyOf):
        for i, c in enumerate(cond.any):
            yield from _walk_conditions(c, (*path, "any", i))
    elif isinstance(cond, NotOf):
        yield from _walk_conditions(cond.not_, (*path, "not"))


def _semantic(rule: Rule, base: Path_, catalogue: Catalogue) -> list[tuple[Path_, str]]:
    """Checks that need the metric catalogue or span several fields."""
    out: list[tuple[Path_, str]] = []
    conds = [("when", rule.when)] + ([("resolve", rule.resolve)] if rule.resolve else [])
    for root, cond in conds:
        for leaf, p in _walk_conditions(cond, (*base, root)):
            infos: list[MetricInfo] = []
            for fld in ("metric", "divide_by"):
                name = getattr(leaf, fld)
                if name is None:
                    continue
                info = catalogue.get(name)
                if info is None:
                    out.append(((*p, fld), _unknown_metric(name, catalogue)))
                    continue
                infos.append(info)
                if leaf.function != "value" and info.type not in (None, "counter"):
                    out.append(((*p, "function"),
                                f"{leaf.function} needs a counter, {name} is a {info.type}"))
                names = info.labelnames
                if names is None:
                    continue
                if fld == "metric":
                    for label in leaf.labels:
                        if label not in names:
                            known = ", ".join(names) or "no labels"
                            out.append(((*p, "labels", label),
                                        f"{name} has no label {label!r} (it has {known})"))
                if rule.target == "pod" and not {"namespace", "pod"} <= set(names):
                    out.append(((*p, fld), f"target pod needs namespace and pod labels; "
                                f"{name} has {', '.join(names) or 'none'}"))
            if (len(infos) == 2 and infos[0].labelnames is not None
                    and infos[1].labelnames is not None
                    and set(infos[0].labelnames) != set(infos[1].labelnames)):
                out.append(((*p, "divide_by"), "divide_by needs a metric with the same labels"))
    steps: list[tuple[Path_, list[Any], list[Any]]] = [
        ((*base,), list(rule.actions), list(rule.undo))]
    steps += [((*base, "escalate", i), list(s.actions), list(s.undo))
              for i, s in enumerate(rule.escalate)]
    for step_path, actions, undo in steps:
        for i, act in enumerate(actions):
            ap = (*step_path, "actions", i, "type")
            if rule.target == "pod" and act.type in NODE_ONLY:
                out.append((ap, f"{act.type} is not allowed in a pod-target rule: one pod "
                                "must never disrupt the whole node"))
            if rule.target == "node" and act.type in POD_ONLY:
                out.append((ap, f"{act.type} needs target: pod"))
            if rule.target == "node" and act.type == "annotate" and act.target != "node":
                out.append(((*step_path, "actions", i, "target"),
                            f"annotate target {act.target} needs a rule with target: pod"))
        for i, act in enumerate(undo):
            if act.type not in UNDO_ACTIONS:
                out.append(((*step_path, "undo", i, "type"),
                            f"undo may only use {', '.join(sorted(UNDO_ACTIONS))}"))
    return out


def _unknown_metrics(raw: dict[str, Any], base: Path_,
                     catalogue: Catalogue) -> list[tuple[Path_, str]]:
    """Unknown metric names and label names in a rule that failed validation, so one run reports
    them with the schema errors instead of only after those are fixed."""
    out: list[tuple[Path_, str]] = []

    def walk(node: Any, path: Path_) -> None:
        if isinstance(node, dict):
            metric = node.get("metric")
            info = catalogue.get(metric) if isinstance(metric, str) else None
            labels = node.get("labels")
            if info is not None and info.labelnames is not None and isinstance(labels, dict):
                for label in labels:
                    if label not in info.labelnames:
                        known = ", ".join(info.labelnames) or "no labels"
                        out.append(((*path, "labels", label),
                                    f"{metric} has no label {label!r} (it has {known})"))
            for key, value in node.items():
                if key in ("metric", "divide_by") and isinstance(value, str):
                    if value not in catalogue:
                        out.append(((*path, key), _unknown_metric(value, catalogue)))
                elif key != "labels":
                    walk(value, (*path, key))
        elif isinstance(node, list):
            for i, value in enumerate(node):
                walk(value, (*path, i))

    for root in ("when", "resolve"):
        walk(raw.get(root), (*base, root))
    return out


def _unknown_metric(name: str, catalogue: Catalogue) -> str:
    near = difflib.get_close_matches(name, list(catalogue), n=1)
    return f"unknown metric {name!r}" + (f"; did you mean {near[0]}?" if near else "")


def _mark_for(doc: _Doc, path: Path_) -> tuple[int, int]:
    probe = path
    while probe and probe not in doc.value_marks:
        probe = probe[:-1]
    return doc.value_marks.get(probe, (1, 1))


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


def _names(doc: _Doc, file: str) -> list[RuleName]:
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
    docs, problems = _parse_yaml(text, file)
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
            problems.extend(_validation_problems(file, doc, exc))
            # Still check the rules that validated on their own, so one run shows everything.
            bad = {e["loc"][1] for e in exc.errors()
                   if len(e["loc"]) > 1 and e["loc"][0] == "rules"}
            raw = doc.data.get("rules")
            for i, item in enumerate(raw if isinstance(raw, list) else []):
                if i not in bad:
                    with contextlib.suppress(ValidationError):
                        valid.append((i, Rule.model_validate(item)))
                elif isinstance(item, dict):
                    found = _unknown_metrics(item, ("rules", i), catalogue)
                    problems.extend(Problem(file, *_mark_for(doc, p), format_path(p), m)
                                    for p, m in found)
        for i, rule in valid:
            base: Path_ = ("rules", i)
            found = _semantic(rule, base, catalogue)
            problems.extend(Problem(file, *_mark_for(doc, p), format_path(p), m)
                            for p, m in found)
            if not found:
                line, col = doc.value_marks.get((*base, "name"), (1, 1))
                rules.append(LoadedRule(rule, file, line, _resolve_runbook(rule, base_url), i,
                                        col))
    return rules, sorted(problems)


_KINDS = (
    (stat.S_ISDIR, "a directory"), (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"), (stat.S_ISFIFO, "a FIFO (named pipe)"),
    (stat.S_ISSOCK, "a socket"),
)


def _kind(mode: int) -> str:
    for test, name in _KINDS:
        if test(mode):
            return name
    return "not a regular file"


def _file_problem(path: Path, message: str) -> Problem:
    return Problem(str(path), 1, 1, "(file)", message)


def _read(path: Path) -> tuple[str | None, list[Problem]]:
    """Read one rule file: regular files only (checked on the open descriptor, so a file swapped
    for a FIFO or /dev/zero after listing is still refused), at most MAX_FILE_BYTES, UTF-8."""
    link = " (through a symlink)" if path.is_symlink() else ""
    try:
        mode = path.stat().st_mode  # before open(): opening a FIFO or a socket blocks or fails
    except FileNotFoundError:
        what = "broken symlink" if link else "file vanished before it could be read"
        return None, [_file_problem(path, what)]
    except OSError as exc:
        return None, [_file_problem(path, f"cannot read: {exc.strerror or exc}")]
    if not stat.S_ISREG(mode):
        return None, [_file_problem(path, f"is {_kind(mode)}{link}, not a regular file")]
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    except FileNotFoundError:
        return None, [_file_problem(path, "file vanished before it could be read")]
    except OSError as exc:
        return None, [_file_problem(path, f"cannot read: {exc.strerror or exc}")]
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):  # swapped for something else since the stat()
            return None, [_file_problem(path, f"is {_kind(st.st_mode)}{link}, not a regular "
                                        "file")]
        if st.st_size > MAX_FILE_BYTES:
            return None, [_file_problem(path, f"file is {st.st_size} bytes, larger than the "
                                        f"limit of {MAX_FILE_BYTES} bytes")]
        with os.fdopen(fd, "rb", closefd=False) as fh:
            data = fh.read(MAX_FILE_BYTES + 1)
        if len(data) > MAX_FILE_BYTES:  # grew while we read it
            return None, [_file_problem(path, f"file larger than the limit of {MAX_FILE_BYTES} "
                                        "bytes")]
        return data.decode("utf-8"), []
    except UnicodeDecodeError as exc:
        return None, [_file_problem(path, f"not UTF-8: {exc.reason}")]
    except FileNotFoundError:
        return None, [_file_problem(path, "file vanished while it was read")]
    except OSError as exc:
        return None, [_file_problem(path, f"cannot read: {exc.strerror or exc}")]
    finally:
        os.close(fd)


def rule_files(paths: Iterable[Path | str]) -> tuple[list[Path], list[Problem]]:
    """Expand directories to their *.yaml/*.yml entries (sorted, not recursive, no dotfiles).

    Every such entry is returned, whatever it is: :func:`_read` refuses the ones that are not
    regular files (FIFOs, sockets, devices, directories, broken symlinks) with a named problem
    instead of skipping them silently."""
    files: list[Path] = []
    problems: list[Problem] = []
    for raw in paths:
        p = Path(raw)
        if p.is_dir():
            try:
                entries = sorted(p.iterdir())
            except OSError as exc:
                problems.append(_file_problem(p, f"cannot list: {exc.strerror or exc}"))
                continue
            files.extend(c for c in entries
                         if c.suffix in RULE_SUFFIXES and not c.name.startswith("."))
        elif p.exists() or p.is_symlink():
            files.append(p)
        else:
            problems.append(_file_problem(p, "no such file or directory"))
    return files, problems


def check_files(
    paths: Iterable[Path | str], catalogue: Catalogue | None = None
) -> tuple[RuleSet, list[Problem]]:
    """Validate files/directories: the rules that are valid and every problem (all files)."""
    cat = default_catalogue() if catalogue is None else catalogue
    files, problems = rule_files(paths)
    loaded: list[LoadedRule] = []
    names: list[RuleName] = []
    for path in files:
        text, read_problems = _read(path)
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
