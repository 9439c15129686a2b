"""Compare a run against a baseline: where NEW departs, and whether it is worse.

Runs are aligned by iteration. NEW "departs" at the first iteration (and, within it, the first
layer in print order) where a per-layer magnitude differs from the baseline's by more than
``factor`` (or is non-finite where the baseline is finite). NEW is *worse* — exit 1, so CI can
gate a change to a net or solver against a golden log — when it has an error finding the
baseline does not, or its final train loss / test outputs are worse by more than ``margin``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from caffelens.engine import Config, Diagnosis, diagnose
from caffelens.history import RunTrace
from caffelens.records import json_number
from caffelens.rules import Finding, Severity, fmt
from caffelens.sources import Source


@dataclass(frozen=True)
class Departure:
    """The first place NEW's magnitudes leave the baseline's."""

    iteration: int
    direction: str
    layer: str
    role: str
    blob: str
    stat: str
    baseline: float
    new: float
    line: int

    @property
    def ratio(self) -> float:
        if not (math.isfinite(self.new) and math.isfinite(self.baseline)):
            return math.inf
        low, high = sorted((abs(self.baseline), abs(self.new)))
        if high == 0:
            return 1.0
        return math.inf if low == 0 else high / low


@dataclass
class Comparison:
    baseline: Diagnosis
    new: Diagnosis
    factor: float
    margin: float
    loss: list[tuple[int, float, float]] = field(default_factory=list)
    """(iteration, baseline loss, new loss) at the iterations both displayed."""
    outputs: dict[str, list[tuple[int, float, float]]] = field(default_factory=dict)
    """Test output name -> (iteration, baseline, new)."""
    departure: Departure | None = None
    new_findings: list[Finding] = field(default_factory=list)
    reasons: list[str] = field(default_factory=list)
    """Why NEW is worse; empty when it is not."""

    @property
    def worse(self) -> bool:
        return bool(self.reasons)

    def to_dict(self) -> dict:
        return {
            "schema": "caffelens.comparison/1",
            "baseline": self.baseline.path,
            "new": self.new.path,
            "worse": self.worse,
            "reasons": self.reasons,
            "departure": None if self.departure is None else {
                "iteration": self.departure.iteration, "direction": self.departure.direction,
                "layer": self.departure.layer, "blob": self.departure.blob,
                "role": self.departure.role, "stat": self.departure.stat,
                "baseline": _json(self.departure.baseline), "new": _json(self.departure.new),
                "ratio": _json(self.departure.ratio), "line": self.departure.line,
            },
            "loss": [[i, _json(a), _json(b)] for i, a, b in self.loss],
            "test_outputs": {k: [[i, _json(a), _json(b)] for i, a, b in v]
                             for k, v in self.outputs.items()},
            "new_findings": [f.to_dict() for f in self.new_findings],
        }


_json = json_number


def compare(baseline: Source, new: Source, factor: float = 10.0, margin: float = 0.1,
            config: Config | None = None) -> Comparison:
    """Diagnose both logs and compare NEW against BASELINE (last run of each)."""
    config = config or Config()
    base_d, new_d = diagnose(baseline, config), diagnose(new, config)
    result = Comparison(base_d, new_d, factor, margin)
    base, cur = base_d.last, new_d.last
    if base is None or cur is None:
        return result
    base_loss = {r.iteration: r.value for r in base.losses}
    result.loss = [(r.iteration, base_loss[r.iteration], r.value)
                   for r in cur.losses if r.iteration in base_loss]
    base_out = {(o.iteration, o.name): o.value for o in base.outputs if o.phase == "test"}
    for o in cur.outputs:
        if o.phase == "test" and (o.iteration, o.name) in base_out:
            result.outputs.setdefault(o.name, []).append(
                (o.iteration, base_out[(o.iteration, o.name)], o.value))
    result.departure = _departure(base, cur, factor)
    seen = {(f.code, f.layer) for f in base_d.findings}
    result.new_findings = [f for f in new_d.findings if (f.code, f.layer) not in seen]
    result.reasons = _reasons(result, base, cur, margin)
    return result


def _departure(base: RunTrace, cur: RunTrace, factor: float) -> Departure | None:
    candidates = []
    for key, series in cur.series.items():
        reference = base.series.get(key)
        if reference is None:
            continue
        by_iteration = dict(zip(reference.iterations, reference.values))
        for iteration, value, line in zip(series.iterations, series.values, series.lines):
            expected = by_iteration.get(iteration)
            if expected is None:
                continue
            d = Departure(iteration, *key, expected, value, line)
            if not math.isfinite(expected):
                continue
            if d.ratio > factor:
                candidates.append(d)
                break  # the first departure of this series is enough
    return min(candidates, key=lambda d: (d.iteration, d.line), default=None)


_HIGHER_IS_BETTER = ("acc", "map", "eval", "precision", "recall", "iou", "f1", "top")


def _reasons(result: Comparison, base: RunTrace, cur: RunTrace, margin: float) -> list[str]:
    reasons = []
    errors = [f for f in result.new_findings if f.severity is Severity.ERROR]
    for f in errors:
        reasons.append(f"new error {f.code} {f.rule}: {f.message}")
    if result.loss:  # at the last iteration both runs displayed
        iteration, b, n = result.loss[-1]
        if _worse(b, n, margin, higher_is_better=False):
            reasons.append(f"train loss {fmt(n)} vs baseline {fmt(b)} at iteration {iteration}")
    for name, rows in result.outputs.items():
        iteration, b, n = rows[-1]
        higher = any(k in name.lower() for k in _HIGHER_IS_BETTER)
        if _worse(b, n, margin, higher_is_better=higher):
            reasons.append(f"test {name} {fmt(n)} vs baseline {fmt(b)} at iteration {iteration}")
    return reasons


def _worse(baseline: float, new: float, margin: float, higher_is_better: bool) -> bool:
    if not math.isfinite(new):
        return math.isfinite(baseline)
    if not math.isfinite(baseline):
        return False
    if higher_is_better:
        return new < baseline - margin * abs(baseline)
    return new > baseline + margin * abs(baseline)


def render_comparison(result: Comparison, width: int = 100) -> str:
    """A short text report: verdict, where NEW departs, deltas, new findings."""
    import io

    from rich.console import Console
    from rich.table import Table

    buffer = io.StringIO()
    # text from the logs is printed as is: no rich markup or emoji codes in layer names
    console = Console(file=buffer, width=width, color_system=None, highlight=False,
                      markup=False, emoji=False)
    verdict = "WORSE" if result.worse else "not worse"
    console.print(f"{result.new.path} vs baseline {result.baseline.path}: {verdict} "
                  f"(margin {result.margin:g}, factor {result.factor:g})")
    for reason in result.reasons:
        console.print(f"  - {reason}")
    d = result.departure
    if d is not None:
        console.print(
            f"First departure: iteration {d.iteration}, {d.direction} {d.stat} of {d.role} "
            f"blob {d.blob} in layer {d.layer}: {fmt(d.new)} vs {fmt(d.baseline)} "
            f"({'non-finite' if not math.isfinite(d.ratio) else f'{d.ratio:.3g}×'}, line {d.line})")
    else:
        console.print(f"No per-layer magnitude differs by more than {result.factor:g}× "
                      f"at the iterations both runs displayed.")
    if result.loss or result.outputs:
        table = Table(title="at the last common iterations", show_edge=False)
        for column in ("series", "iteration", "baseline", "new", "delta"):
            table.add_column(column, justify="right" if column != "series" else "left")
        for name, rows in [("train loss", result.loss), *result.outputs.items()]:
            for iteration, b, n in rows[-3:]:
                delta = n - b if math.isfinite(n) and math.isfinite(b) else math.nan
                table.add_row(name, str(iteration), fmt(b), fmt(n), fmt(delta))
        console.print(table)
    if result.new_findings:
        console.print("Findings NEW has and the baseline does not:")
        for f in result.new_findings:
            console.print(f"  {f.severity} {f.code} {f.rule} (iteration {f.iteration}): {f.message}")
    return buffer.getvalue()
