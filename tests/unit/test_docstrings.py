"""Module docstrings stay true: every module says what it does, every document it cites exists,
and every module it names as a caller really uses it (issue 16 item 5).

A docstring that says "Called by agent.x" while agent.x no longer imports the module, or that
points at a docs/ page that was renamed, misleads the next maintainer more than no docstring.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
# The agent and the simulation distribution (sim/nodemedic_sim), each named from its own root.
SIM_ROOT = ROOT / "sim"
MODULES = sorted([*(ROOT / "agent").rglob("*.py"), *(SIM_ROOT / "nodemedic_sim").rglob("*.py")])
# A sentence naming callers: "Called by X", "Used by X and Y", "Read by X", "Started by X", ...
_CALLERS = re.compile(
    r"\b(?:called|used|read|created|started|registered|imported|run)\b(?: once)?"
    r"(?: [\w ]{0,30}?)? by ((?:[^.;]|\.(?=\S))*)", re.I)  # to the end of the clause
_MODULE_NAME = re.compile(r"\b(?:agent|nodemedic_sim)(?:[./]\w+)+")
_DOC_PATH = re.compile(r"(?<![\w/])((?:docs|deploy|rules|problems|systemd|bench|dashboards|"
                       r"packaging|scripts|tests)/[\w./-]*\w|[A-Z][A-Z_]+\.md)")


def _root_of(path: Path) -> Path:
    return SIM_ROOT if path.is_relative_to(SIM_ROOT) else ROOT


def _module_name(path: Path) -> str:
    rel = path.relative_to(_root_of(path)).with_suffix("")
    parts = rel.parts[:-1] if rel.name == "__init__" else rel.parts
    return ".".join(parts)


def _docstring(path: Path) -> str:
    return ast.get_docstring(ast.parse(path.read_text())) or ""


def _source_of(name: str) -> str:
    """The source text of module or package ``name`` (all its files), or of the module holding
    attribute ``name``; "" if nothing by that name exists."""
    name = name.removeprefix("sim/")
    parts = name.replace("/", ".").removesuffix(".__init__").split(".")
    while parts:
        base = (SIM_ROOT if parts[0] == "nodemedic_sim" else ROOT).joinpath(*parts)
        if base.with_suffix(".py").is_file():
            return base.with_suffix(".py").read_text()
        if base.is_dir():
            return "\n".join(p.read_text() for p in sorted(base.rglob("*.py")))
        parts.pop()
    return ""


def _refers_to(source: str, module: str) -> bool:
    """Does ``source`` import ``module`` (or its package re-export), by any spelling?"""
    parent, _, leaf = module.rpartition(".")
    if re.search(rf"\b{re.escape(module)}\b", source):
        return True
    if re.search(rf"from \.+{leaf}\b|from \. import \(?[^)]*?\b{leaf}\b", source):
        return True  # a relative import (the caller is in the same package)
    return bool(re.search(rf"from {re.escape(parent)} import \(?[^)]*?\b{leaf}\b", source))


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_module_says_what_it_does(path: Path) -> None:
    doc = _docstring(path)
    assert len(doc.split()) >= 4, f"{path.relative_to(ROOT)}: no module docstring"


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(ROOT)))
def test_cited_documents_exist(path: Path) -> None:
    """Each repository path a docstring cites (docs/*.md, deploy/..., DESIGN.md) exists."""
    for cited in _DOC_PATH.findall(_docstring(path)):
        cited = cited.split("#")[0]
        assert (ROOT / cited).exists() or (ROOT / "docs" / cited).exists(), (
            f"{path.relative_to(ROOT)} cites {cited}, which does not exist")


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(ROOT)))
def test_named_callers_use_the_module(path: Path) -> None:
    """"Called by agent.x" holds: agent.x (or a module of package agent.x) imports this one."""
    module = _module_name(path)
    for sentence in _CALLERS.findall(_docstring(path)):
        for caller in _MODULE_NAME.findall(sentence):
            source = _source_of(caller)
            assert source, f"{module}: names {caller}, which does not exist"
            if caller.replace("/", ".") in (module, module.rpartition(".")[0]):
                continue
            assert _refers_to(source, module), (
                f"{module}'s docstring names {caller} as a caller, but {caller} does not import it")


def test_the_checks_catch_a_false_claim() -> None:
    """The caller check is not vacuous: a module nothing imports is not 'used' by the CLI."""
    assert not _refers_to(_source_of("agent.cli"), "nodemedic_sim.kueue")
    assert _refers_to(_source_of("agent.cli"), "agent.settings")
    assert _source_of("nodemedic_sim.kueue")
