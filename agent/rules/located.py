"""Located problems in YAML files: safe YAML composed with positions, pydantic errors mapped back.

YAML is *composed* with PyYAML's SafeLoader (node tree with marks) and converted to Python here,
so each value keeps its line/column, duplicate keys are errors instead of silently last-wins, and
alias bombs are cut off by a node budget. A pydantic ValidationError on the converted data
becomes one :class:`Problem` per error, printed as ``file:line:column: field.path: message``.
The rule loader (agent.rules.loader) and the problem definitions loader
(agent.problems.loader) both use it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import yaml
from pydantic import ValidationError
from pydantic_core import ErrorDetails

from agent.structs.remediation import ACTION_TYPES

MAX_NODES = 50_000  # per document; defeats "billion laughs" alias expansion
_COMMAND_KEYS = frozenset({"command", "cmd", "exec", "shell", "script", "run", "args", "bash"})

Path_ = tuple[str | int, ...]


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
class Doc:
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

    def __init__(self, doc: Doc) -> None:
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


def parse_yaml(text: str, file: str) -> tuple[list[Doc], list[Problem]]:
    docs: list[Doc] = []
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
        doc = Doc(None)
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


def locate(doc: Doc, loc: Sequence[str | int], use_key: bool) -> tuple[Path_, tuple[int, int]]:
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


def validation_problems(file: str, doc: Doc, exc: ValidationError) -> list[Problem]:
    out: list[Problem] = []
    for err in exc.errors(include_url=False):
        loc = err["loc"]
        path, (line, col) = locate(doc, loc, use_key=err["type"] == "extra_forbidden")
        shown = path
        if err["type"] == "missing" and loc and isinstance(loc[-1], str):
            shown = (*path, loc[-1])
        out.append(Problem(file, line, col, format_path(shown), _message(err, shown)))
    return out


def mark_for(doc: Doc, path: Path_) -> tuple[int, int]:
    probe = path
    while probe and probe not in doc.value_marks:
        probe = probe[:-1]
    return doc.value_marks.get(probe, (1, 1))
