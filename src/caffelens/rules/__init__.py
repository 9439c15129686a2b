"""The rule registry. A rule is a small class: code, name, severity, a docstring users read
(``caffelens explain CODE``), and ``check(trace, context)`` that only yields findings."""

from __future__ import annotations

import enum
import math
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import ClassVar

from caffelens.history import RunTrace
from caffelens.records import json_number


class Severity(enum.IntEnum):
    INFO = 1
    WARNING = 2
    ERROR = 3

    def __str__(self) -> str:
        return self.name.lower()


@dataclass(frozen=True)
class Finding:
    """One diagnosis: what happened, where, the likely cause and what to change."""

    code: str
    rule: str
    severity: Severity
    message: str
    fix: str | None = None
    iteration: int | None = None
    phase: str | None = None
    direction: str | None = None
    layer: str | None = None
    layer_type: str | None = None
    blob: str | None = None
    role: str | None = None
    value: float | None = None
    line: int | None = None
    likely_cause: str | None = None
    run: int = 0
    evidence: tuple[str, ...] = field(default=())
    """Supporting facts, one short sentence each (e.g. the earlier net-norm overflow)."""

    def text(self) -> str:
        """Message, evidence and fix in one paragraph, for formats with a single text field."""
        parts = [self.message, *self.evidence]
        if self.fix:
            parts.append(f"Fix: {self.fix}")
        return " ".join(parts)

    def to_dict(self) -> dict:
        value = json_number(self.value)
        return {
            "code": self.code,
            "rule": self.rule,
            "severity": str(self.severity),
            "iteration": self.iteration,
            "phase": self.phase,
            "direction": self.direction,
            "layer": self.layer,
            "layer_type": self.layer_type,
            "blob": self.blob,
            "role": self.role,
            "value": value,
            "line": self.line,
            "likely_cause": self.likely_cause,
            "message": self.message,
            "fix": self.fix,
            "run": self.run,
            "evidence": list(self.evidence),
        }


@dataclass(frozen=True)
class Context:
    """Settings and facts about the whole log that rules may need."""

    explode_threshold: float = 1e8
    last_run: bool = True


class Rule:
    """Base class: subclasses set the class attributes and implement ``check``."""

    code: ClassVar[str]
    name: ClassVar[str]
    severity: ClassVar[Severity]
    live: ClassVar[bool] = False
    """True when a finding, once made, stays true as the log grows: `watch` reports it at once.
    Other rules (a trend, "the log stops here") are only judged at the end of the input."""

    def check(self, trace: RunTrace, context: Context) -> Iterator[Finding]:
        raise NotImplementedError

    def finding(self, message: str, trace: RunTrace, severity: Severity | None = None,
                **where) -> Finding:
        return Finding(self.code, self.name, severity or self.severity, message,
                       run=trace.run, **where)


def matches(rule: Rule | type[Rule], key: str) -> bool:
    """flake8-style selection: ``key`` is a code prefix ("CL1" selects CL101…) or a rule name."""
    return rule.code.startswith(key.upper()) or rule.name == key.lower()


REGISTRY: list[type[Rule]] = []


def register(cls: type[Rule]) -> type[Rule]:
    REGISTRY.append(cls)
    return cls


def all_rules() -> list[Rule]:
    """Every rule, in report order (root causes first)."""
    # imported in report order: numeric health, loss, solver, run
    import caffelens.rules.numeric  # noqa: F401
    import caffelens.rules.loss  # noqa: F401
    import caffelens.rules.solver  # noqa: F401
    import caffelens.rules.run  # noqa: F401

    return [cls() for cls in REGISTRY]


def find_rule(key: str) -> type[Rule] | None:
    all_rules()
    key = key.strip().lower()
    for cls in REGISTRY:
        if cls.code.lower() == key or cls.name == key:
            return cls
    return None


def fmt(value: float | None) -> str:
    """A number the way Caffe prints it (%g), for messages."""
    if value is None:
        return "?"
    if isinstance(value, float) and math.isnan(value):
        return "nan"
    return f"{value:g}"
