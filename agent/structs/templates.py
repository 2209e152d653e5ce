"""Message templates of rule actions: ``str.format`` fields from a fixed list, nothing else.

Used by agent.structs.actionparams (the ``event`` message and ``annotate`` value are validated
with ``check_template`` when a rule file loads) and agent.rules.schema, which re-exports
``render_template`` for the rules engine to fill them from the firing rule's fields. No attribute
access, no indexing, no nested fields: nothing in a rule runs as code.
"""

from __future__ import annotations

import string

MAX_TEMPLATE_LENGTH = 1024

# Fields an event message / annotation value template may use; filled by the engine.
TEMPLATE_FIELDS = frozenset(
    {"rule", "severity", "node", "target", "namespace", "pod", "container", "metric",
     "value", "step", "runbook", "description"}
)
_TEMPLATE_SAMPLE: dict[str, object] = {
    name: ("x" if name not in ("value", "step") else 1) for name in TEMPLATE_FIELDS
}
_TEMPLATE_SAMPLE["value"] = 1.5


def check_template(text: str) -> str:
    """Validate an ``str.format`` template: only names from TEMPLATE_FIELDS, no attribute access,
    no indexing, no nested fields; raise ValueError saying what is wrong."""
    if len(text) > MAX_TEMPLATE_LENGTH:
        raise ValueError(f"template longer than {MAX_TEMPLATE_LENGTH} characters")
    try:
        parts = list(string.Formatter().parse(text))
    except ValueError as exc:
        raise ValueError(f"bad template: {exc} (write {{{{ and }}}} for literal braces)") from exc
    for _literal, field_name, spec, conversion in parts:
        if field_name is None:
            continue
        if field_name not in TEMPLATE_FIELDS:
            raise ValueError(
                f"unknown template field {{{field_name}}}; allowed: "
                + ", ".join(sorted(TEMPLATE_FIELDS))
            )
        if conversion not in (None, "s", "r"):
            raise ValueError(f"bad conversion !{conversion} in {{{field_name}}}")
        if spec and "{" in spec:
            raise ValueError(f"nested fields are not allowed in {{{field_name}:{spec}}}")
        if spec:
            try:
                format(_TEMPLATE_SAMPLE[field_name], spec)
            except (ValueError, TypeError) as exc:
                raise ValueError(f"bad format spec in {{{field_name}:{spec}}}: {exc}") from exc
    return text


def render_template(text: str, fields: dict[str, object]) -> str:
    """Render a validated template; never raises (a broken render returns the raw template)."""
    values = {name: fields.get(name, "") for name in TEMPLATE_FIELDS}
    try:
        return text.format_map(values)
    except (ValueError, TypeError, KeyError, IndexError):
        return text
