"""Markdown reference tables built from pydantic models: the rule actions
(agent.structs.actionparams) and the nodemedic YAML problem definitions (agent.problems.schema).

One row per field, with its type, default (or "required"), limits and description, read from the
model itself, so a parameter added to a model appears in docs/ the next time ``python -m
agent.docs`` runs (and tests/unit/test_readme.py fails until it has).
"""

from __future__ import annotations

import types
import typing
from collections.abc import Iterator
from typing import Any, Literal

from pydantic import BaseModel, BeforeValidator
from pydantic.fields import FieldInfo

from agent.structs.durations import format_duration


def _md(text: str) -> str:
    """One table cell: Markdown code spans for reST ````x````, pipes escaped, on one line."""
    return " ".join(text.replace("``", "`").replace("|", "\\|").split())


def _is_duration(model: type[BaseModel], name: str, info: FieldInfo) -> bool:
    """A number field parsed from "30s"/"2m" by a before-validator is a duration."""
    if _strip_optional(info.annotation) is not float:
        return False
    if any(isinstance(m, BeforeValidator) for m in info.metadata):
        return True
    validators = model.__pydantic_decorators__.field_validators.values()
    return any(name in d.info.fields and d.info.mode == "before" for d in validators)


def _strip_optional(tp: Any) -> Any:
    args = [a for a in typing.get_args(tp) if a is not type(None)]
    if typing.get_origin(tp) in (typing.Union, types.UnionType) and len(args) == 1:
        return args[0]
    return tp


def _nested(tp: Any) -> type[BaseModel] | None:
    """The model a field holds (directly or as a list), if any."""
    tp = _strip_optional(tp)
    if typing.get_origin(tp) is list:
        tp = typing.get_args(tp)[0]
    return tp if isinstance(tp, type) and issubclass(tp, BaseModel) else None


def _show(value: Any) -> str:
    return f"`{str(value).lower() if isinstance(value, bool) else value}`"


def _type(tp: Any, duration: bool, offered: Any = None) -> str:
    """The type as a user writes it; ``offered``: the values the JSON Schema offers, when it
    offers fewer than the model parses (so that the error can say why one is refused)."""
    tp = _strip_optional(tp)
    if duration:
        return "duration"
    if typing.get_origin(tp) is Literal:
        values = offered if isinstance(offered, list) else typing.get_args(tp)
        return " \\| ".join(_show(v) for v in values)
    if typing.get_origin(tp) is list:
        inner = typing.get_args(tp)[0]
        return "list of mappings" if _nested(inner) else f"list of {_type(inner, False)}s"
    if isinstance(tp, type) and issubclass(tp, BaseModel):
        return "mapping"
    names = {bool: "bool", int: "integer", float: "number", str: "string"}
    return names.get(tp, "value") if isinstance(tp, type) else "value"


def _default(info: FieldInfo, duration: bool) -> str:
    if info.is_required():
        return "required"
    if info.default_factory is not None:
        return ""
    value = info.default
    if value is None:
        return "unset"
    if isinstance(value, bool):
        return _show(value)
    if duration:
        return f"`{format_duration(float(value))}`"
    return f"`{value}`" if value != "" else '`""`'


_LIMITS = (("ge", "≥ {}"), ("gt", "> {}"), ("le", "≤ {}"), ("lt", "< {}"),
           ("min_length", "at least {} long"), ("max_length", "at most {} long"))


def _limits(info: FieldInfo) -> str:
    out = []
    for meta in info.metadata:
        for attr, text in _LIMITS:
            value = getattr(meta, attr, None)
            if value is not None:
                out.append(text.format(value))
    return ", ".join(out)


def field_rows(model: type[BaseModel], prefix: str = "") -> Iterator[list[str]]:
    """``[key, type, default, limits, meaning]`` for every field of ``model``, nested models
    flattened as ``parent.child`` (``parent[].child`` for lists)."""
    for name, info in model.model_fields.items():
        if name == "type" and typing.get_origin(info.annotation) is Literal \
                and len(typing.get_args(info.annotation)) == 1:
            continue  # an action's discriminator, named by the table's first column
        key = prefix + (info.alias or name)
        duration = _is_duration(model, name, info)
        extra = info.json_schema_extra if isinstance(info.json_schema_extra, dict) else {}
        yield [f"`{key}`", _type(info.annotation, duration, extra.get("enum")),
               _default(info, duration),
               _limits(info), _md(info.description or "")]
        inner = _nested(info.annotation)
        if inner is not None:
            is_list = typing.get_origin(_strip_optional(info.annotation)) is list
            yield from field_rows(inner, f"{key}{'[]' if is_list else ''}.")


def table(header: list[str], rows: list[list[str]]) -> str:
    """A Markdown table; a column empty in every row is left out."""
    keep = [i for i in range(len(header)) if any(r[i] for r in rows)]
    header, rows = [header[i] for i in keep], [[r[i] for i in keep] for r in rows]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def actions_table() -> str:
    """Every rule action: where it may be used, what it does and its parameters, all read from
    the action's one declaration (its model in agent.structs.actionparams)."""
    from agent.structs.actionparams import ACTION_MODELS

    rows = []
    for name, model in ACTION_MODELS.items():
        where = " and ".join(model.rule_targets) + " rules"
        params = "; ".join(
            f"{key} ({typ}, {default or 'optional'}{', ' + limits if limits else ''})"
            + (f": {meaning}" if meaning else "")
            for key, typ, default, limits, meaning in field_rows(model)
        ) or "–"
        doc = " ".join((model.__doc__ or "").split())
        rows.append([f"`{name}`", where, "yes" if model.in_undo else "no", _md(doc), params])
    return table(["action", "allowed in", "in `undo`", "what it does", "parameters"], rows)


def problems_table() -> str:
    """Every key of a nodemedic YAML problems file (``monitors:`` and ``checks:``)."""
    from agent.problems.schema import ProblemsFile

    return table(["key", "type", "default", "limits", "meaning"], list(field_rows(ProblemsFile)))
