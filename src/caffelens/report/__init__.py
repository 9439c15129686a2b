"""Reporters: pure functions from diagnoses to text. The CLI writes what they return."""

from __future__ import annotations

from collections.abc import Callable, Sequence

from caffelens.engine import Diagnosis
from caffelens.report.machine import github, json_report, junit, sarif
from caffelens.report.text import markdown, table

Reporter = Callable[[Sequence[Diagnosis], int], str]

FORMATS: dict[str, Reporter] = {
    "table": table,
    "json": json_report,
    "markdown": markdown,
    "github": github,
    "junit": junit,
    "sarif": sarif,
}
"""Output format name → reporter(diagnoses, width) -> str."""
