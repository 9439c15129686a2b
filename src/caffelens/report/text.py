"""Formats for people: the rich diagnosis table (default) and Markdown."""

from __future__ import annotations

import io
import math
from collections.abc import Sequence

import numpy as np
from rich import box
from rich.console import Console, Group
from rich.table import Table
from rich.text import Text

from caffelens.engine import Diagnosis
from caffelens.history import RunTrace
from caffelens.rules import Finding, Severity, fmt

_BARS = "▁▂▃▄▅▆▇█"
_STYLE = {Severity.ERROR: "bold red", Severity.WARNING: "yellow", Severity.INFO: "cyan"}


def sparkline(values: Sequence[float], width: int = 40) -> str:
    """Unicode sparkline on a log scale; NaN/Inf shown as '×'. Decimated to ``width``."""
    data = np.asarray(values, dtype=float)
    if data.size == 0:
        return ""
    if data.size > width:
        data = data[np.linspace(0, data.size - 1, width).round().astype(int)]
    finite = np.isfinite(data) & (data > 0)
    if not finite.any():
        return "×" * data.size
    logs = np.log10(np.where(finite, data, 1.0))
    lo, hi = logs[finite].min(), logs[finite].max()
    scale = (hi - lo) or 1.0
    out = []
    for ok, value, raw in zip(finite, logs, data):
        if ok:
            out.append(_BARS[int((value - lo) / scale * (len(_BARS) - 1))])
        else:
            out.append("▁" if raw <= 0 and math.isfinite(raw) else "×")  # × only for NaN/Inf
    return "".join(out)


def where(f: Finding, runs: int = 1) -> str:
    """[run ·] phase · direction · layer · blob, skipping what is unknown."""
    parts = [f"run {f.run + 1}" if runs > 1 else None, f.phase,
             f.direction.capitalize() if f.direction else None]
    if f.layer:
        parts.append(f"{f.layer} ({f.layer_type})" if f.layer_type else f.layer)
    if f.blob and f.blob != f.layer:
        parts.append(f"{f.role} {f.blob}" if f.role else f.blob)
    return " · ".join(p for p in parts if p)


def header_facts(d: Diagnosis) -> list[tuple[str, str]]:
    """The facts a person checks first about a run, as (label, value) pairs."""
    trace = d.last
    summary = d.summary()
    facts: list[tuple[str, str]] = []
    if trace is None:
        return facts
    net = trace.train_net.name if trace.train_net is not None else None
    if net:
        facts.append(("net", net))
    lo, hi = summary["first_iteration"], summary["last_iteration"]
    if lo is not None:
        runs = f" in {len(d.traces)} runs" if len(d.traces) > 1 else ""
        facts.append(("iterations", f"{lo} – {hi}{runs}"))
    solver = trace.solver
    if solver is not None:
        if solver.display:
            facts.append(("display", str(solver.display)))
        policy = f" ({solver.lr_policy})" if solver.lr_policy else ""
        if solver.base_lr is not None:
            facts.append(("base_lr", f"{fmt(solver.base_lr)}{policy}"))
        if solver.iter_size and solver.iter_size > 1:
            facts.append(("iter_size", str(solver.iter_size)))
    facts.append(("debug_info", "on" if summary["debug_info"] else "off"))
    if trace.losses:
        losses = [r.value for r in trace.losses]
        facts.append(("final loss", f"{fmt(losses[-1])}  {sparkline(losses)}"))
    tests = _test_summary(trace)
    if tests:
        facts.append(("test", tests))
    return facts


def _test_summary(trace: RunTrace) -> str:
    """'accuracy 0.99 (best 0.99 @ 300); loss 0.03' for net #0's outputs."""
    outputs = [o for o in trace.outputs if o.phase == "test" and o.net == 0]
    if not outputs:
        return ""
    names = list(dict.fromkeys(o.name for o in outputs))
    parts = []
    for name in names[:4]:
        series = [o for o in outputs if o.name == name]
        last = series[-1]
        text = f"{name} {fmt(last.value)}"
        if "acc" in name.lower() or "map" in name.lower() or "eval" in name.lower():
            finite = [o for o in series if math.isfinite(o.value)]
            if finite:
                best = max(finite, key=lambda o: o.value)
                text += f" (best {fmt(best.value)} @ {best.iteration})"
        parts.append(text)
    return "; ".join(parts)


def _findings_table(d: Diagnosis) -> Table:
    table = Table(box=box.SIMPLE_HEAD, expand=True, pad_edge=False)
    table.add_column("severity", no_wrap=True)
    table.add_column("iter", justify="right", no_wrap=True)
    table.add_column("where", ratio=1)
    table.add_column("what happened · likely cause · what to change", ratio=3)
    for f in d.findings:
        what = Text(f.message)
        if f.likely_cause:
            what.append(f"\nlikely cause: {f.likely_cause}", style="italic")
        for item in f.evidence:
            what.append(f"\n• {item}", style="dim")
        if f.fix:
            what.append("\n→ ", style="bold")
            what.append(f.fix, style="bold")
        table.add_row(
            Text(f"{f.severity}\n{f.code}\n{f.rule}", style=_STYLE[f.severity]),
            "" if f.iteration is None else str(f.iteration),
            Text(where(f, len(d.traces)) + (f"\nline {f.line}" if f.line else "")),
            what,
        )
    return table


def render_diagnosis(d: Diagnosis) -> Group:
    """The renderable for one log: a header of facts, then findings (or 'no problems')."""
    title = Text(d.path, style="bold")
    title.append(f"  {d.status.upper()}", style=_STYLE.get(
        {"error": Severity.ERROR, "warning": Severity.WARNING, "info": Severity.INFO}.get(
            d.status, Severity.INFO), "green") if d.status != "ok" else "bold green")
    facts = Table.grid(padding=(0, 2))
    facts.add_column(style="dim", no_wrap=True)
    facts.add_column()
    for label, value in header_facts(d):
        facts.add_row(label, Text(value))
    parts: list = [title, facts]
    if d.error:
        parts.append(Text(f"partial result: {d.error}", style="yellow"))
    if d.findings:
        parts.append(_findings_table(d))
    else:
        parts.append(Text("No problems found.", style="green"))
    return Group(*parts)


def table(diagnoses: Sequence[Diagnosis], width: int = 100, color: bool = False) -> str:
    """The default report, rendered to text at ``width`` columns."""
    buffer = io.StringIO()
    console = Console(file=buffer, width=width, color_system="standard" if color else None,
                      force_terminal=color, highlight=False, legacy_windows=False,
                      markup=False, emoji=False)  # text from the log is printed as is
    for i, d in enumerate(diagnoses):
        if i:
            console.print()
        console.print(render_diagnosis(d))
    if len(diagnoses) > 1:
        summary = Table(title="summary", box=box.SIMPLE_HEAD)
        for column in ("log", "status", "errors", "warnings", "last iteration"):
            summary.add_column(column)
        for d in diagnoses:
            count = lambda s: str(sum(f.severity == s for f in d.findings))  # noqa: E731
            summary.add_row(Text(d.path), d.status, count(Severity.ERROR), count(Severity.WARNING),
                            str(d.summary()["last_iteration"]))
        console.print(summary)
    return buffer.getvalue()


def markdown(diagnoses: Sequence[Diagnosis], width: int = 100) -> str:
    """A Markdown section per log, for a PR comment or a CI job summary."""
    out = []
    for d in diagnoses:
        out.append(f"## caffelens: `{d.path}` — {d.status}\n")
        for label, value in header_facts(d):
            out.append(f"- **{label}**: {value}")
        out.append("")
        if not d.findings:
            out.append("No problems found.\n")
            continue
        out.append("| severity | rule | iteration | where | what happened | what to change |")
        out.append("|---|---|---|---|---|---|")
        for f in d.findings:
            message = " ".join([f.message, *f.evidence]) + (
                f" *Likely cause: {f.likely_cause}.*" if f.likely_cause else "")
            cells = [str(f.severity), f"{f.code} {f.rule}",
                     "" if f.iteration is None else str(f.iteration), where(f, len(d.traces)),
                     message,
                     f.fix or ""]
            out.append("| " + " | ".join(c.replace("|", "\\|").replace("\n", " ")
                                          for c in cells) + " |")
        out.append("")
    return "\n".join(out) + "\n"
