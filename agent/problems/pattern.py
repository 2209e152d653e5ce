"""NPD's patterns: Go RE2 syntax translated to Python ``re``, and NPD's buffer match rule.

NPD compiles every rule pattern as ``pattern + "\\z"`` and searches it in the last
``bufferSize`` log messages joined by ``"\\n"``: a rule matches when the pattern ends at the end
of the newest line, possibly spanning earlier lines (pkg/systemlogmonitor/log_buffer.go).

RE2 and Python ``re`` differ; :func:`translate` bridges what NPD configs use and rejects the
rest with a message instead of silently matching something else:
- ``\\z`` (end of text) is ``\\Z`` in Python; Python's ``\\Z`` is not RE2 syntax;
- ``\\d \\w \\s \\b`` are ASCII-only in RE2, Unicode in Python: patterns compile with re.ASCII;
- POSIX classes ``[[:alpha:]]`` exist only in RE2: translated to ASCII ranges;
- ``\\Q...\\E`` literals and ``(?<name>...)`` groups: translated;
- ``\\pL``/``\\p{Greek}`` (Unicode classes) have no ``re`` equivalent: rejected;
- lookaround and backreferences are not RE2: rejected, so a nodemedic YAML pattern stays valid
  for NPD too.
"""

from __future__ import annotations

import re

_POSIX = {
    "alnum": "0-9A-Za-z", "alpha": "A-Za-z", "ascii": "\\x00-\\x7f", "blank": "\\t ",
    "cntrl": "\\x00-\\x1f\\x7f", "digit": "0-9", "graph": "!-~", "lower": "a-z",
    "print": " -~", "punct": "!-/:-@\\[-`{-~", "space": "\\t\\n\\v\\f\\r ", "upper": "A-Z",
    "word": "0-9A-Za-z_", "xdigit": "0-9A-Fa-f",
}
_POSIX_RE = re.compile(r"\[:(\^?)([a-z]+):\]")
# Constructs that can match a newline, so the pattern may span buffered lines (conservative).
_LEADING_FLAGS = re.compile(r"^\(\?[ims]+\)")
_CROSSES_LINES = re.compile(r"\\n|\\s|\\D|\\W|\[\^|\(\?[a-z]*s|\\x0[aA]|\\012|\\x\{0*[aA]\}")


class PatternError(ValueError):
    """The pattern is not valid RE2 or has no faithful Python equivalent."""


def translate(pattern: str) -> str:
    """RE2 pattern -> equivalent Python ``re`` source (to be compiled with re.ASCII)."""
    out: list[str] = []
    i, n = 0, len(pattern)
    in_class = False
    while i < n:
        ch = pattern[i]
        if ch == "\\":
            if i + 1 >= n:
                raise PatternError("trailing backslash")
            nxt = pattern[i + 1]
            if nxt == "Q":
                end = pattern.find("\\E", i + 2)
                lit = pattern[i + 2:] if end < 0 else pattern[i + 2:end]
                out.append(re.escape(lit))
                i = n if end < 0 else end + 2
                continue
            if nxt == "z":
                out.append("\\Z")
            elif nxt == "Z":
                raise PatternError("\\Z is not RE2 syntax (use \\z or $)")
            elif nxt in "pP":
                raise PatternError(f"Unicode class \\{nxt} is not supported by Python re")
            elif nxt.isdigit() and nxt != "0" and not in_class:
                raise PatternError(f"backreference \\{nxt} is not RE2 syntax")
            elif nxt == "C":
                raise PatternError("\\C is not supported")
            else:
                out.append(pattern[i:i + 2])
            i += 2
            continue
        if in_class:
            m = _POSIX_RE.match(pattern, i)
            if m:
                cls = _POSIX.get(m.group(2))
                if cls is None:
                    raise PatternError(f"unknown POSIX class [:{m.group(2)}:]")
                if m.group(1):
                    raise PatternError(f"negated POSIX class [:^{m.group(2)}:] is not supported")
                out.append(cls)
                i = m.end()
                continue
            if ch == "]":
                in_class = False
            out.append(ch)
            i += 1
            continue
        if ch == "[":
            in_class = True
            out.append(ch)
            i += 1
            if i < n and pattern[i] == "^":
                out.append("^")
                i += 1
            if i < n and pattern[i] == "]":  # a leading ] is literal in both dialects
                out.append("\\]")
                i += 1
            continue
        if pattern.startswith("(?", i):
            head = pattern[i:i + 4]
            if head.startswith(("(?=", "(?!", "(?<=", "(?<!")):
                raise PatternError("lookaround is not RE2 syntax")
            if pattern.startswith("(?<", i):
                out.append("(?P<")
                i += 3
                continue
        out.append(ch)
        i += 1
    return "".join(out)


def compile_rule(pattern: str) -> tuple[re.Pattern[str], bool]:
    """(regex anchored at the end as NPD does, whether it may span several lines)."""
    source = translate(pattern)
    flags = ""
    m = _LEADING_FLAGS.match(source)
    if m:  # Go allows (?i) anywhere; Python only at the start: keep it in front of the group
        flags, source = m.group(0), source[m.end():]
    try:
        regex = re.compile(f"{flags}(?:{source})\\Z", re.ASCII)
    except re.error as exc:
        raise PatternError(f"invalid pattern: {exc}") from exc
    return regex, bool(_CROSSES_LINES.search(source))


def compile_plain(pattern: str) -> re.Pattern[str]:
    """An RE2 pattern used unanchored (filelog's message extractor, group 1)."""
    try:
        return re.compile(translate(pattern), re.ASCII)
    except re.error as exc:
        raise PatternError(f"invalid pattern: {exc}") from exc
