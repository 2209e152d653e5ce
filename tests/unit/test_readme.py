"""The README's flag, collector and metric tables match what the code really accepts and exports."""

from __future__ import annotations

from agent import docs


def test_readme_tables_are_current() -> None:
    """Regenerating the tables changes nothing (run `python -m agent.docs` after a change)."""
    text = docs.README.read_text()
    assert docs.render(text) == text, "README tables are stale: run `python -m agent.docs`"


def test_readme_starts_with_the_two_commands() -> None:
    """A fresh clone needs only `make run` and `make test`, and the README says so first."""
    head = docs.README.read_text().split("\n## ", 1)[0]
    assert "make run" in head and "make test" in head
