"""Terminal pictures: a layer × iteration heatmap of log10 magnitudes (`caffelens layers`).

Each cell is a bar whose height is the log10 of the mean |value| (scaled over the panel), so
the picture reads without colour too; colour (rich styles) adds the same scale. NaN is `×`,
±Inf is `∞`, exactly zero is `·`, no value is a blank. Columns are decimated to the width by
buckets of iterations, and a bucket shows its worst value (non-finite first, then largest), so a
NaN is never averaged away.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from rich.console import Group
from rich.table import Table
from rich.text import Text

from caffelens.engine import Diagnosis
from caffelens.history import RunTrace
from caffelens.rules import Finding, Severity, fmt

BARS = "▁▂▃▄▅▆▇█"
PALETTE = ["blue", "cyan", "green", "yellow", "dark_orange", "red", "magenta", "bright_magenta"]
STATS = {
    "forward": "Forward data (top blobs)",
    "backward": "Backward diff (bottom blobs, else param diff)",
    "ratio": "param diff / data (param blob 0)",
}
LAST_WIDTH = 10
_MARK_STYLE = {Severity.ERROR: "bold red", Severity.WARNING: "yellow", Severity.INFO: "cyan"}


@dataclass
class LayerRows:
    """One panel's data: layer names in net order, and per layer {iteration: value}."""

    title: str
    layers: list[str]
    values: dict[str, dict[int, float]]


def layer_rows(trace: RunTrace, stat: str) -> LayerRows:
    """The per-layer series a panel shows, in net order (layers not in the net come last)."""
    wanted: dict[str, dict[int, float]] = {}
    for (direction, layer, role, blob, kind), series in trace.series.items():
        if stat == "forward" and (direction, role) == ("forward", "top"):
            target = wanted.setdefault(layer, {})
        elif stat == "backward" and direction == "backward" and (
            role == "bottom" or (role == "param" and blob == "0")
        ):
            target = wanted.setdefault(layer, {})
            if role == "param" and target:
                continue  # a bottom diff was found first; it is the gradient that flows on
        else:
            continue
        for iteration, value in zip(series.iterations, series.values):
            target.setdefault(iteration, value)
    if stat == "ratio":
        for (direction, layer, role, blob, kind), series in trace.series.items():
            if (direction, role, blob, kind) != ("backward", "param", "0", "diff"):
                continue
            data = trace.series.get(("forward", layer, "param", "0", "data"))
            if data is None:
                data = next((s for k, s in trace.series.items()
                             if k[:3] == ("forward", layer, "param") and k[4] == "data"), None)
            if data is None:
                continue
            by_iteration = dict(zip(data.iterations, data.values))
            row = wanted.setdefault(layer, {})
            for iteration, diff in zip(series.iterations, series.values):
                base = by_iteration.get(iteration)
                if base is not None:
                    row[iteration] = diff / base if base else (math.inf if diff else 0.0)
    order = [spec.name for spec in trace.train_net.layers] if trace.train_net else []
    layers = [n for n in order if n in wanted] + sorted(n for n in wanted if n not in order)
    return LayerRows(STATS[stat], layers, wanted)


def _buckets(iterations: list[int], columns: int) -> list[list[int]]:
    """Split the iteration axis into at most ``columns`` consecutive buckets."""
    if len(iterations) <= columns:
        return [[i] for i in iterations]
    edges = [round(k * len(iterations) / columns) for k in range(columns + 1)]
    return [iterations[a:b] for a, b in zip(edges, edges[1:]) if b > a]


def _worst(values: list[float]) -> float | None:
    if not values:
        return None
    bad = [v for v in values if not math.isfinite(v)]
    if bad:
        return next((v for v in bad if math.isnan(v)), bad[0])
    return max(values, key=abs)


def _cell(value: float | None, lo: float, hi: float) -> Text:
    if value is None:
        return Text(" ")
    if math.isnan(value):
        return Text("×", style="bold red")
    if math.isinf(value):
        return Text("∞", style="bold red")
    if value == 0:
        return Text("·", style="yellow")
    level = (math.log10(abs(value)) - lo) / ((hi - lo) or 1.0)
    index = min(len(BARS) - 1, max(0, int(level * len(BARS))))
    return Text(BARS[index], style=PALETTE[index])


def heatmap(rows: LayerRows, iterations: list[int], columns: int,
            label_width: int) -> tuple[Table, list[list[int]]]:
    """The panel as a rich table: layer | cells | latest value."""
    buckets = _buckets(iterations, columns)
    finite = [abs(v) for row in rows.values.values() for v in row.values()
              if math.isfinite(v) and v != 0]
    lo, hi = (math.log10(min(finite)), math.log10(max(finite))) if finite else (0.0, 1.0)
    table = Table(box=None, pad_edge=False, show_header=True, padding=(0, 1))
    table.add_column("layer", no_wrap=True, width=label_width, overflow="ellipsis")
    table.add_column(rows.title, no_wrap=True, width=max(len(buckets), 10), overflow="crop")
    table.add_column("last", justify="right", no_wrap=True, width=LAST_WIDTH)
    for layer in rows.layers:
        row = rows.values[layer]
        cells = Text()
        for bucket in buckets:
            cells.append_text(_cell(_worst([row[i] for i in bucket if i in row]), lo, hi))
        last = row[max(row)] if row else None
        table.add_row(Text(layer), cells, "" if last is None else fmt(last))
    return table, buckets


def legend_for(findings: Sequence[Finding]) -> Text:
    """What each ▲ on the axes stands for."""
    text = Text()
    for finding in findings:
        if finding.iteration is not None:
            if text:
                text.append("   ")
            text.append("▲", style=_MARK_STYLE[finding.severity])
            text.append(f" {finding.iteration} {finding.rule}"
                        + (f" ({finding.layer})" if finding.layer else ""), style="dim")
    return text


def axis(buckets: list[list[int]], findings: Sequence[Finding], label_width: int) -> Group:
    """The iteration axis under a panel, with a ▲ under the bucket of each finding."""
    marks = Text(" " * (label_width + 2))
    placed: dict[int, Finding] = {}
    for finding in findings:
        if finding.iteration is None:
            continue
        for k, bucket in enumerate(buckets):
            if bucket[0] <= finding.iteration <= bucket[-1] or (
                k + 1 < len(buckets) and bucket[-1] < finding.iteration < buckets[k + 1][0]
            ):
                if k not in placed or finding.severity > placed[k].severity:
                    placed[k] = finding
                break
    for k in range(len(buckets)):
        if k in placed:
            marks.append("▲", style=_MARK_STYLE[placed[k].severity])
        else:
            marks.append(" ")
    first, last = buckets[0][0], buckets[-1][-1]
    span = len(buckets)
    left, right = f"iteration {first}", str(last)
    ruler = " " * (label_width + 2) + left + " " * max(1, span - len(left) - len(right)) + right
    return Group(marks, Text(ruler, style="dim"))


def render_layers(diagnosis: Diagnosis, stats: Sequence[str], width: int = 100) -> Group:
    """The `caffelens layers` picture for the last run in the log."""
    trace = diagnosis.last
    if trace is None or not trace.series:
        return Group(Text(f"{diagnosis.path}: no per-layer values — set debug_info: true in "
                          f"solver.prototxt", style="yellow"))
    panels = [layer_rows(trace, stat) for stat in stats]
    panels = [p for p in panels if p.layers]
    if not panels:
        return Group(Text(f"{diagnosis.path}: no values for {', '.join(stats)}", style="yellow"))
    # side by side, a row is the same layer in every panel
    union = list(dict.fromkeys(n for p in panels for n in p.layers))
    order = {name: i for i, name in enumerate(
        [spec.name for spec in trace.train_net.layers] if trace.train_net else [])}
    seen = {name: i for i, name in enumerate(union)}
    union.sort(key=lambda name: (order.get(name, len(order)), seen[name]))
    for panel in panels:
        panel.layers = union
        for name in union:
            panel.values.setdefault(name, {})
    label_width = min(22, max(len(n) for p in panels for n in p.layers))
    iterations = sorted({i for p in panels for row in p.values.values() for i in row})
    findings = [f for f in diagnosis.findings if f.run == trace.run]
    per_panel = (width - 3 * (len(panels) - 1)) // len(panels)
    columns = max(10, per_panel - label_width - LAST_WIDTH - 4)  # 4: cell padding
    grid = Table.grid(padding=(0, 3))
    tables = []
    for panel in panels:
        grid.add_column(no_wrap=True)
        table, buckets = heatmap(panel, iterations, columns, label_width)
        tables.append(Group(table, axis(buckets, findings, label_width)))
    grid.add_row(*tables)
    legend = Text("log10 mean|x| ", style="dim")
    for bar, colour in zip(BARS, PALETTE):
        legend.append(bar, style=colour)
    legend.append(" low→high  × NaN  ∞ Inf  · zero", style="dim")
    title = Text(f"{diagnosis.path} — run {trace.run}, iterations {iterations[0]}–"
                 f"{iterations[-1]}, {len(iterations)} displayed", style="bold")
    return Group(title, grid, legend_for(findings), legend)
