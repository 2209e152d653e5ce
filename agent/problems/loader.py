"""Load ``--problems.dir``: NPD monitor JSON (unchanged) and nodemedic YAML, with file:line errors.

Called by the detector at start, by ``nodemedic check-rules --problems DIR`` and by tests. Files
are ``*.json`` (NPD: ``plugin`` kmsg/journald/filelog is a system-log-monitor, ``custom`` a
custom-plugin-monitor; other NPD monitor kinds, e.g. system-stats-monitor, are reported as
unsupported) and ``*.yaml``/``*.yml`` (nodemedic). Every problem is a
:class:`agent.rules.located.Problem` (``file:line:column: field: message``), located with the
same YAML position tracking as the rule loader (JSON is YAML once its tabs are spaces). A
custom plugin outside ``plugin_dir`` (or missing, or not executable) is not an error, so NPD's
shipped configs load: its rule is kept *disabled* with the reason, and nothing runs it.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ValidationError

from agent.problems import schema as s
from agent.problems.model import (
    CheckMonitor,
    CheckRule,
    ConditionDef,
    LogMonitor,
    LogRule,
    LogSource,
    ProblemSet,
)
from agent.problems.pattern import PatternError, compile_plain, compile_rule
from agent.rules.files import read_text
from agent.rules.located import (  # the rule loader's position-tracking YAML helpers
    Doc,
    Path_,
    Problem,
    RulesError,
    mark_for,
    parse_yaml,
    validation_problems,
)

SUFFIXES = (".json", ".yaml", ".yml")
# Conditions the kubelet (and the cloud route controller) own: never ours to write.
RESERVED_CONDITIONS = frozenset(
    {"Ready", "MemoryPressure", "DiskPressure", "PIDPressure", "NetworkUnavailable"})


class _Ctx:
    """Per-file conversion state: where problems are reported."""

    def __init__(self, file: str, doc: Doc, plugin_dir: Path | None) -> None:
        self.file, self.doc, self.plugin_dir = file, doc, plugin_dir
        self.problems: list[Problem] = []

    def err(self, path: Path_, message: str) -> None:
        field = ".".join(str(p) if isinstance(p, str) else f"[{p}]" for p in path)
        self.problems.append(Problem(self.file, *mark_for(self.doc, path),
                                     field.replace(".[", "["), message))


def _attribution(pattern: str) -> str:
    """NPD configs carry no attribution: infer it from the kernel's wording."""
    if "Killed process" in pattern:
        return "oom"
    if pattern.startswith("task ") and "blocked for more than" in pattern:
        return "hung"
    return "none"


def _conditions(ctx: _Ctx, conds: Sequence[s.NpdCondition | s.Condition],
                base: Path_) -> tuple[ConditionDef, ...]:
    out: dict[str, ConditionDef] = {}
    for i, c in enumerate(conds):
        if c.type in RESERVED_CONDITIONS:
            ctx.err((*base, "conditions", i, "type"), f"{c.type} is the kubelet's condition; "
                    "nodemedic never writes it")
            continue
        if c.type in out:
            ctx.err((*base, "conditions", i, "type"), f"condition {c.type!r} declared twice")
        out[c.type] = ConditionDef(c.type, c.reason, c.message)
    return tuple(out.values())


def _log_rule(ctx: _Ctx, r: s.NpdLogRule | s.LogRuleYaml, path: Path_,
              conds: tuple[ConditionDef, ...], strict: bool) -> LogRule | None:
    try:
        regex, multiline = compile_rule(r.pattern)
    except PatternError as exc:
        ctx.err((*path, "pattern"), str(exc))
        return None
    known = {c.type for c in conds}
    if r.type != "temporary" and r.condition not in known:
        ctx.err((*path, "condition"), f"{r.type} rule needs a condition declared in "
                f"conditions; got {r.condition!r} (declared: {', '.join(sorted(known)) or '-'})")
        return None
    if strict and r.type == "temporary" and r.condition:
        ctx.err((*path, "condition"), "a temporary rule makes an Event, not a condition")
        return None
    if isinstance(r, s.LogRuleYaml):
        if r.min_count > 1 and r.window <= 0:
            ctx.err((*path, "window"), "min_count above 1 needs a window, e.g. 20m")
            return None
        return LogRule(r.type, r.reason, r.pattern, regex, multiline, r.condition, r.min_count,
                       r.window, r.clear_after, r.attribute, r.message)
    return LogRule(r.type, r.reason, r.pattern, regex, multiline, r.condition,
                   attribute=_attribution(r.pattern))  # type: ignore[arg-type]


def _npd_log(ctx: _Ctx, m: s.NpdLogMonitor) -> LogMonitor:
    conds = _conditions(ctx, m.conditions, ())
    cfg = m.plugin_config
    path = m.log_path or ("/dev/kmsg" if m.plugin == "kmsg" else "")
    message_regex = None
    if m.plugin == "filelog":
        if not path:
            ctx.err(("logPath",), "the filelog plugin needs a logPath")
        if cfg.get("message"):
            try:
                message_regex = compile_plain(cfg["message"])
            except PatternError as exc:
                ctx.err(("pluginConfig", "message"), str(exc))
    ids = (cfg["source"],) if m.plugin == "journald" and cfg.get("source") else ()
    src = LogSource(m.plugin, path, ids, (), m.lookback, message_regex)
    rules = [_log_rule(ctx, r, ("rules", i), conds, strict=False) for i, r in enumerate(m.rules)]
    return LogMonitor(m.source, ctx.file, src, m.buffer_size, conds,
                      tuple(r for r in rules if r is not None))


def _plugin_argv(ctx: _Ctx, argv: Sequence[str]) -> tuple[tuple[str, ...], str]:
    """(argv with the plugin's resolved path, reason it is disabled or "")."""
    if ctx.plugin_dir is None:
        return tuple(argv), "no --problems.plugin-dir is set: custom plugins are off"
    allowed = ctx.plugin_dir.resolve()
    raw = Path(argv[0])
    if not raw.is_absolute():
        raw = allowed / raw
    real = Path(os.path.realpath(raw))
    if not real.is_relative_to(allowed):
        return tuple(argv), f"{argv[0]} is outside --problems.plugin-dir {allowed}"
    if not real.is_file() or not os.access(real, os.X_OK):
        return tuple(argv), f"{real} is not an executable file"
    return (str(real), *argv[1:]), ""


def _checks(ctx: _Ctx, name: str, *, interval: float, timeout: float, max_output: int,
            concurrency: int, conds_in: Sequence[s.NpdCondition | s.Condition],
            rules_in: Sequence[s.NpdCheckRule | s.CheckRuleYaml]) -> CheckMonitor:
    conds = _conditions(ctx, conds_in, ())
    known = {c.type for c in conds}
    rules: list[CheckRule] = []
    for i, r in enumerate(rules_in):
        base: Path_ = ("rules", i)
        if r.type == "permanent" and r.condition not in known:
            ctx.err((*base, "condition"), f"permanent check needs a condition declared in "
                    f"conditions; got {r.condition!r}")
            continue
        rt = r.timeout if r.timeout is not None else timeout
        if rt > timeout:
            ctx.err((*base, "timeout"), f"rule timeout {rt:g}s exceeds the monitor's {timeout:g}s")
            continue
        argv_in = [r.path, *r.args] if isinstance(r, s.NpdCheckRule) else r.argv
        argv, disabled = _plugin_argv(ctx, argv_in)
        rules.append(CheckRule(r.type, r.reason, argv, rt, r.condition, disabled))
    if interval < 1:
        ctx.err(("pluginConfig",), "invoke interval must be at least 1s")
    return CheckMonitor(name, ctx.file, max(interval, 1.0), timeout, max_output, concurrency,
                        conds, tuple(rules))


def _yaml_monitor(ctx: _Ctx, m: s.MonitorYaml, i: int) -> LogMonitor:
    base: Path_ = ("monitors", i)
    sub = _Ctx(ctx.file, ctx.doc, ctx.plugin_dir)
    conds = _conditions(sub, m.conditions, base)
    src = m.source
    path = src.path or ("/dev/kmsg" if src.plugin == "kmsg" else "")
    if src.plugin == "filelog" and not path:
        ctx.err((*base, "source", "path"), "the filelog plugin needs a path")
    message_regex = None
    if src.message:
        try:
            message_regex = compile_plain(src.message)
        except PatternError as exc:
            ctx.err((*base, "source", "message"), str(exc))
    source = LogSource(src.plugin, path, tuple(src.identifiers), tuple(src.units), src.lookback,
                       message_regex)
    rules = [_log_rule(sub, r, (*base, "rules", j), conds, strict=True)
             for j, r in enumerate(m.rules)]
    ctx.problems.extend(sub.problems)
    return LogMonitor(m.name, ctx.file, source, m.buffer_size, conds,
                      tuple(r for r in rules if r is not None))


def _validate(ctx: _Ctx, model: type[BaseModel], data: Any) -> Any:
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        ctx.problems.extend(validation_problems(ctx.file, ctx.doc, exc))
        return None


def parse_text(text: str, file: str, plugin_dir: Path | None = None
               ) -> tuple[list[LogMonitor], list[CheckMonitor], list[Problem]]:
    """Parse one file's text (format by suffix); monitors and every problem found."""
    logs: list[LogMonitor] = []
    checks: list[CheckMonitor] = []
    is_json = file.endswith(".json")
    if is_json:
        try:
            json.loads(text)
        except json.JSONDecodeError as exc:
            return [], [], [Problem(file, exc.lineno, exc.colno, "(json)", f"invalid JSON: "
                                    f"{exc.msg}")]
        text = text.replace("\t", " ")  # JSON whitespace; keeps every line and column
    docs, problems = parse_yaml(text, file)
    for doc in docs:
        ctx = _Ctx(file, doc, plugin_dir)
        if not isinstance(doc.data, dict):
            ctx.err((), "must be a mapping")
        elif is_json:
            plugin = doc.data.get("plugin", "filelog")
            if plugin == "custom":
                c = _validate(ctx, s.NpdCustomMonitor, doc.data)
                if c is not None:
                    pc = c.plugin_config
                    checks.append(_checks(
                        ctx, c.source, interval=pc.invoke_interval, timeout=pc.timeout,
                        max_output=pc.max_output_length, concurrency=pc.concurrency,
                        conds_in=c.conditions, rules_in=c.rules))
            elif plugin in ("kmsg", "journald", "filelog"):
                m = _validate(ctx, s.NpdLogMonitor, doc.data)
                if m is not None:
                    logs.append(_npd_log(ctx, m))
            else:
                ctx.err(("plugin",), f"unsupported NPD plugin {plugin!r}; supported: kmsg, "
                        "journald, filelog (system-log-monitor) and custom")
        else:
            f = _validate(ctx, s.ProblemsFile, doc.data)
            if f is not None:
                logs.extend(_yaml_monitor(ctx, m, i) for i, m in enumerate(f.monitors))
                for i, c in enumerate(f.checks):
                    sub = _Ctx(file, doc, plugin_dir)
                    checks.append(_checks(
                        sub, c.name, interval=c.interval, timeout=c.timeout,
                        max_output=c.max_output, concurrency=c.concurrency,
                        conds_in=c.conditions, rules_in=c.rules))
                    ctx.problems.extend(_rebase(p, ("checks", i), doc) for p in sub.problems)
        problems.extend(ctx.problems)
    return logs, checks, problems


def _rebase(p: Problem, base: Path_, doc: Doc) -> Problem:
    """A problem found inside checks[i] with a path relative to it: prefix the path."""
    prefix = ".".join(str(x) if isinstance(x, str) else f"[{x}]" for x in base).replace(".[", "[")
    return Problem(p.file, p.line, p.column, f"{prefix}.{p.field}", p.message)


def problem_files(paths: Iterable[Path | str]) -> tuple[list[Path], list[Problem]]:
    """Expand directories to their *.json/*.yaml/*.yml files (sorted, no dotfiles)."""
    files: list[Path] = []
    problems: list[Problem] = []
    for raw in paths:
        p = Path(raw)
        if p.is_dir():
            files.extend(sorted(c for c in p.iterdir() if c.suffix in SUFFIXES
                                and not c.name.startswith(".") and c.is_file()))
        elif p.is_file():
            files.append(p)
        else:
            problems.append(Problem(str(p), 1, 1, "(file)", "no such file or directory"))
    return files, problems


def check_problems(paths: Iterable[Path | str], plugin_dir: Path | None = None
                   ) -> tuple[ProblemSet, list[Problem]]:
    """Validate files/directories: what loaded and every problem across all files."""
    files, problems = problem_files(paths)
    logs: list[LogMonitor] = []
    checks: list[CheckMonitor] = []
    names: dict[str, str] = {}
    for path in files:
        text, read_problems = read_text(path)
        problems.extend(read_problems)
        if text is None:
            continue
        lm, cm, file_problems = parse_text(text, str(path), plugin_dir)
        problems.extend(file_problems)
        both: list[LogMonitor | CheckMonitor] = [*lm, *cm]
        for m in both:
            if not m.file.endswith(".json") and m.name in names:
                problems.append(Problem(m.file, 1, 1, "name", f"duplicate monitor name "
                                        f"{m.name!r} (first in {names[m.name]})"))
            names.setdefault(m.name, m.file)
        logs.extend(lm)
        checks.extend(cm)
    return (ProblemSet(tuple(logs), tuple(checks), tuple(str(f) for f in files)),
            sorted(problems))


def load_problems(path: Path | str, plugin_dir: Path | None = None) -> ProblemSet:
    """What the detector calls: every definition of ``--problems.dir``; a missing directory is
    an empty set (problem detection off), any invalid file raises RulesError."""
    if not Path(path).exists():
        return ProblemSet()
    ps, problems = check_problems([path], plugin_dir)
    if problems:
        raise RulesError(problems)
    return ps
