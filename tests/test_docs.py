"""Documentation generated from the tests stays current."""

from __future__ import annotations

from pathlib import Path

from .bad_input_table import render

DOC = Path(__file__).resolve().parents[1] / "docs" / "bad-input.md"


def test_bad_input_table_is_current() -> None:
    assert DOC.exists(), "run: python -m tests.bad_input_table > docs/bad-input.md"
    assert DOC.read_text() == render(), (
        "docs/bad-input.md is out of date: python -m tests.bad_input_table > docs/bad-input.md"
    )
