"""Run the rules over a log: records → per-run traces → findings, with select/ignore."""

from __future__ import annotations

import math
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from caffelens.assemble import ParseStats, Parser
from caffelens.history import RunTrace, TraceBuilder
from caffelens.records import json_number
from caffelens.prototxt import NetDefinition, SolverSettings
from caffelens.rules import Context, Finding, Rule, Severity, all_rules
from caffelens.rules import matches as rule_matches
from caffelens.sources import InputError, Source
from caffelens.tokens import helpful


class NotCaffeLog(InputError):
    """The input holds no line Caffe prints."""

    @classmethod
    def of(cls, name: str, stats: ParseStats) -> "NotCaffeLog":
        return cls(f"{name}: {'empty log' if not stats.lines else 'no Caffe training lines found'}")


@dataclass(frozen=True)
class Config:
    """What to check and how strictly; from the command line or [tool.caffelens]."""

    select: tuple[str, ...] = ()
    """Rule codes or names (or code prefixes like "CL1") to run; empty = all."""
    ignore: tuple[str, ...] = ()
    explode_threshold: float = 1e8
    solver: SolverSettings | None = None
    """Overrides the solver parameters printed in the log (--solver)."""
    net: NetDefinition | None = None
    """Overrides the train net printed in the log (--net)."""


@dataclass
class Diagnosis:
    """The findings for one log, with what a summary needs."""

    path: str
    findings: list[Finding]
    traces: list[RunTrace]
    stats: ParseStats
    error: str | None = None
    """Set when the log could not be read to the end (corrupt archive): a partial result."""

    @property
    def status(self) -> str:
        if not self.findings:
            return "ok"
        return str(max(f.severity for f in self.findings))

    @property
    def last(self) -> RunTrace | None:
        return self.traces[-1] if self.traces else None

    def summary(self) -> dict:
        first = last = None
        for trace in self.traces:
            lo, hi = trace.iterations
            if lo is not None:
                first = lo if first is None else min(first, lo)
                last = hi if last is None else max(last, hi)
        final = None
        if self.last is not None and self.last.losses:
            final = json_number(self.last.losses[-1].value)
        return {
            "lines": self.stats.lines,
            "first_iteration": first,
            "last_iteration": last,
            "debug_info": any(t.debug_info for t in self.traces),
            "final_loss": final,
            "status": self.status,
            "runs": len(self.traces),
            "malformed_lines": self.stats.malformed,
        }


def selected(rule: Rule, config: Config) -> bool:
    """flake8-style selection: a code prefix or a rule name; ignore wins over select."""

    def matches(keys: Iterable[str]) -> bool:
        return any(rule_matches(rule, k) for k in keys)

    if config.select and not matches(config.select):
        return False
    return not matches(config.ignore)


def diagnose(source: Source, config: Config | None = None, path: str | None = None,
             parallel: bool | None = None) -> Diagnosis:
    """Parse ``source`` and run every selected rule on each training run in it.

    ``parallel``: read and tokenize in a helper process (two cores on one log); by default
    for a file of 8 MB or more when the machine has a spare core.

    Raises :class:`InputError` when the input cannot be read at all and
    :class:`NotCaffeLog` when it holds no Caffe line.
    """
    config = config or Config()
    builder = TraceBuilder(config.explode_threshold)
    # debug values go straight into the traces, in bulk where they can
    parser = Parser(blob_sink=builder.blob, block_sink=builder.values, record_sink=builder.add)
    name = path or (os.fspath(source) if isinstance(source, (str, os.PathLike)) else "<stdin>")
    error = None
    try:
        parser.consume(source, parallel=helpful(source) if parallel is None else parallel)
    except InputError as exc:
        if parser.stats.caffe_lines == 0:
            raise
        error = str(exc)
    if parser.stats.caffe_lines == 0 or not builder.traces:
        raise NotCaffeLog.of(name, parser.stats)
    return evaluate(builder.traces, parser.stats, config, name, error)


def evaluate(traces: Sequence[RunTrace], stats: ParseStats, config: Config, name: str,
             error: str | None = None, live_only: bool = False) -> Diagnosis:
    """Run the rules over traces already built (``watch`` uses this on a live trace, with
    ``live_only`` while the log is still growing)."""
    rules = [rule for rule in all_rules()
             if selected(rule, config) and (rule.live or not live_only)]
    order = {rule.code: i for i, rule in enumerate(rules)}
    findings: list[Finding] = []
    for trace in traces:
        if config.solver is not None:
            trace.solver = config.solver
        if config.net is not None:
            trace.train_net = config.net
        context = Context(config.explode_threshold, last_run=trace is traces[-1])
        for rule in rules:
            try:
                findings.extend(rule.check(trace, context))
            except Exception as exc:  # a rule bug must not hide the other findings
                raise RuleError(f"rule {rule.name} ({rule.code}) failed: {exc!r}") from exc
    # errors first; within a severity, the story in order: run, iteration, rule
    findings.sort(key=lambda f: (-f.severity, f.run,
                                 f.iteration if f.iteration is not None else math.inf,
                                 order[f.code]))
    return Diagnosis(name, findings, list(traces), stats, error)


class RuleError(RuntimeError):
    """A rule raised: a bug in caffelens, named so it can be reported."""


__all__ = ["Config", "Diagnosis", "NotCaffeLog", "Severity", "diagnose", "evaluate"]
