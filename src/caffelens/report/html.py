"""The report file: one self-contained HTML page (the findings table and inline SVG plots), or
one PNG summary figure.

matplotlib is an optional extra (``caffelens[report]``), imported lazily by the two public
functions; importing caffelens never imports it. Figures are drawn on their own Agg canvas
(``FigureCanvasAgg``), never through pyplot, so a caller's backend and global figure state are
left alone, and the style is matplotlib's default plus a few settings, whatever the user's
matplotlibrc says. Everything read from the log is untrusted: it is ``html.escape``-d in the
page and ``$``-escaped in plot text (matplotlib would parse ``$...$`` as math).
"""

from __future__ import annotations

import html
import io
import math
import os
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import IO, Any

import numpy as np

from caffelens import __version__
from caffelens.engine import Diagnosis
from caffelens.history import RunTrace
from caffelens.report.text import header_facts, where
from caffelens.rules import Finding, Severity, fmt

MAX_LAYERS = 30
"""Lines per per-layer panel; more layers are sampled (see :func:`_pick_layers`)."""
MAX_POINTS = 2000
"""Points per drawn line; longer series are decimated keeping each bucket's min and max."""
MAX_MARKS = 400
"""Off-axis markers (NaN/Inf, zero) per panel."""
INSTALL_HINT = "the report needs matplotlib: pip install 'caffelens[report]'"

PLOT_IDS = ("plot-loss", "plot-layers", "plot-norms", "plot-clipping")
"""Stable ids of the plots (or of the note that replaces a plot without data)."""

_SEVERITY_COLOR = {Severity.ERROR: "#d62728", Severity.WARNING: "#e07b00",
                   Severity.INFO: "#1f77b4"}
_BAD_COLOR = "#d62728"
_ZERO_COLOR = "#555555"
_LR_COLOR = "#7f7f7f"

_RC: dict[str, Any] = {
    "svg.fonttype": "none",          # text stays text: small, selectable, escaped by the writer
    "svg.hashsalt": "caffelens",     # stable ids (set per plot when saving)
    "font.family": "sans-serif",
    "font.sans-serif": ["DejaVu Sans", "Helvetica", "Arial", "Liberation Sans"],
    "font.size": 10,
    "axes.titlesize": 10.5,
    "axes.labelsize": 10,
    "xtick.labelsize": 9,
    "ytick.labelsize": 9,
    "legend.fontsize": 9,
    "legend.title_fontsize": 9,
    "legend.frameon": False,
    "axes.grid": True,
    "grid.alpha": 0.35,
    "grid.linewidth": 0.5,
    "text.usetex": False,
    "path.simplify": True,
    "figure.dpi": 100,
    "savefig.dpi": 100,
}


class MissingExtra(ImportError):
    """An optional dependency is not installed; the message says what to install."""


# -- data: what to draw, independent of matplotlib ------------------------------------------


@dataclass
class _Line:
    """One drawable series: non-finite points split out (drawn at the top of a log axis) and
    zeros split out (drawn at the bottom), the rest decimated."""

    label: str
    x: np.ndarray
    y: np.ndarray
    bad: np.ndarray = field(default_factory=lambda: np.empty(0))
    zero: np.ndarray = field(default_factory=lambda: np.empty(0))
    first_bad: tuple[int, str] | None = None
    """(iteration, "nan"/"inf") of the first non-finite value."""


def _line(label: str, iterations: Sequence[Any], values: Sequence[float],
          log: bool = False) -> _Line:
    x = np.asarray(iterations, dtype=float)
    y = np.asarray(values, dtype=float)
    bad_mask = ~np.isfinite(y)
    first_bad = None
    if bad_mask.any():
        i = int(np.argmax(bad_mask))
        first_bad = (int(x[i]), "nan" if math.isnan(y[i]) else "inf")
    zero_mask = (y <= 0) & ~bad_mask if log else np.zeros(y.shape, dtype=bool)
    shown = np.where(bad_mask | zero_mask, np.nan, y)
    x_shown, y_shown = _decimate(x, shown)
    return _Line(label, x_shown, y_shown, x[bad_mask], x[zero_mask], first_bad)


def _decimate(x: np.ndarray, y: np.ndarray, limit: int = MAX_POINTS):
    """At most ~``limit`` points: per bucket its min, max and first gap (NaN) are kept, so
    spikes and breaks survive."""
    n = len(x)
    if n <= limit:
        return x, y
    edges = np.linspace(0, n, limit // 3 + 1).astype(int)
    keep = {0, n - 1}
    for lo, hi in zip(edges[:-1], edges[1:]):
        chunk = y[lo:hi]
        if chunk.size == 0:
            continue
        finite = np.isfinite(chunk)
        if not finite.all():
            keep.add(lo + int(np.argmin(finite)))
        if finite.any():
            values = np.where(finite, chunk, np.nan)
            keep.add(lo + int(np.nanargmin(values)))
            keep.add(lo + int(np.nanargmax(values)))
    index = np.fromiter(sorted(keep), dtype=int)
    return x[index], y[index]


def _thin_marks(x: np.ndarray) -> np.ndarray:
    x = np.unique(x)
    if x.size > MAX_MARKS:
        x = x[np.linspace(0, x.size - 1, MAX_MARKS).round().astype(int)]
    return x


@dataclass
class _LayerPanel:
    direction: str
    title: str
    lines: list[tuple[str, _Line]]
    """(layer, line) in net order."""
    total: int
    """Layers with values before the cap."""


_DIRECTIONS = {
    "forward": ("top", "data", "Forward: mean |data| of each layer's top blob"),
    "backward": ("bottom", "diff", "Backward: mean |diff| of each layer's bottom blob"),
}


def _layer_panel(trace: RunTrace, direction: str, keep: Sequence[str] | None = None
                 ) -> _LayerPanel:
    role, stat, title = _DIRECTIONS[direction]
    blobs: dict[str, list[str]] = {}
    for key in trace.series:
        d, layer, r, blob, s = key
        if d == direction and r == role and s == stat:
            blobs.setdefault(layer, []).append(blob)
    order = _net_order(trace, blobs)
    total = len(order)
    if keep is not None:
        order = [name for name in order if name in set(keep)]
    lines = []
    for layer in order:
        names = blobs[layer]
        spec = trace.layer(layer)
        if spec is not None:
            declared = list(spec.tops if role == "top" else spec.bottoms)
            names = sorted(names, key=lambda b: declared.index(b) if b in declared
                           else len(declared))
        main = trace.series[(direction, layer, role, names[0], stat)]
        line = _line(layer, main.iterations, main.values, log=True)
        # a layer is non-finite where any of its blobs is
        for other in names[1:]:
            series = trace.series[(direction, layer, role, other, stat)]
            values = np.asarray(series.values, dtype=float)
            extra = np.asarray(series.iterations, dtype=float)[~np.isfinite(values)]
            if extra.size:
                line.bad = np.union1d(line.bad, extra)
                first = (int(extra[0]), "nan" if math.isnan(values[~np.isfinite(values)][0])
                         else "inf")
                if line.first_bad is None or first[0] < line.first_bad[0]:
                    line.first_bad = first
        lines.append((layer, line))
    return _LayerPanel(direction, title, lines, total)


def _net_order(trace: RunTrace, layers: Iterable[str]) -> list[str]:
    """Layers in the order the net runs them: the order of the Forward debug lines, which
    also places the Split layers Caffe inserts (absent from the prototxt); layers without a
    Forward line follow in the train net's order, then in log order."""
    present = list(dict.fromkeys(layers))
    forward = list(dict.fromkeys(key[1] for key in trace.series if key[0] == "forward"))
    declared = [spec.name for spec in trace.train_net.layers] if trace.train_net else []
    rank: dict[str, tuple[int, int]] = {}
    for i, name in enumerate(forward):
        rank.setdefault(name, (0, i))
    for i, name in enumerate(declared):
        rank.setdefault(name, (1, i))
    for i, name in enumerate(present):
        rank.setdefault(name, (2, i))
    return sorted(present, key=rank.__getitem__)


def _pick_layers(trace: RunTrace, findings: Sequence[Finding], limit: int = MAX_LAYERS
                 ) -> tuple[list[str] | None, int]:
    """At most ``limit`` layers shared by both panels: the layers findings name and the layers
    that went non-finite first, then evenly spaced through the net. None: no cap needed."""
    layers = []
    for key in trace.series:
        direction, layer, role, _, stat = key
        if (direction, role, stat) in (("forward", "top", "data"), ("backward", "bottom", "diff")):
            if layer not in layers:
                layers.append(layer)
    order = _net_order(trace, layers)
    if len(order) <= limit:
        return None, len(order)
    wanted = [f.layer for f in findings if f.layer in order]
    nonfinite: dict[str, int] = {}
    for (iteration, phase), names in trace.nonfinite_layers.items():
        if phase == "train" and iteration is not None:
            for name in names:
                nonfinite[name] = min(nonfinite.get(name, iteration), iteration)
    wanted += sorted((n for n in nonfinite if n in order), key=lambda n: (nonfinite[n],
                                                                         order.index(n)))
    chosen = list(dict.fromkeys(wanted))[:limit]
    rest = [n for n in order if n not in chosen]
    room = limit - len(chosen)
    if room > 0 and rest:
        picks = np.linspace(0, len(rest) - 1, min(room, len(rest))).round().astype(int)
        chosen += [rest[i] for i in dict.fromkeys(picks.tolist())]
    chosen_set = set(chosen)
    return [n for n in order if n in chosen_set], len(order)


def _loss_lines(trace: RunTrace) -> tuple[list[_Line], _Line | None]:
    """(train loss, train outputs when there are several, test outputs), and the lr."""
    lines = []
    train_names = list(dict.fromkeys(o.name for o in trace.outputs if o.phase == "train"))
    if trace.losses:
        label = "train loss (total)" if len(train_names) > 1 else "train loss"
        lines.append(_line(label, [r.iteration for r in trace.losses],
                           [r.value for r in trace.losses]))
    if len(train_names) > 1:
        for name in train_names:
            series = [o for o in trace.outputs
                      if o.phase == "train" and o.name == name and o.iteration is not None]
            lines.append(_line(f"train {name}", [o.iteration for o in series],
                               [o.value for o in series]))
    tests = list(dict.fromkeys((o.net, o.name) for o in trace.outputs if o.phase == "test"))
    for net, name in tests:
        series = [o for o in trace.outputs if o.phase == "test" and o.net == net
                  and o.name == name and o.iteration is not None]
        if series:
            label = f"test {name}" if net == 0 else f"test #{net} {name}"
            lines.append(_line(label, [o.iteration for o in series], [o.value for o in series]))
    lr = None
    if trace.lrs:
        lr = _line("lr", [r.iteration for r in trace.lrs], [r.value for r in trace.lrs])
    return lines, lr


def _norm_lines(trace: RunTrace) -> list[_Line]:
    last: dict[int, Any] = {}
    for record in trace.norms:
        if record.iteration is not None:
            last[record.iteration] = record  # last pass (and thread) of the iteration wins
    if not last:
        return []
    its = sorted(last)
    return [_line("L2 norm of data (weights)", its, [last[i].l2_data for i in its], log=True),
            _line("L2 norm of diff (gradients)", its, [last[i].l2_diff for i in its], log=True)]


def _xlim(trace: RunTrace, findings: Sequence[Finding]) -> tuple[float, float]:
    """One iteration range for every time plot of a run, so their axes line up down the
    page: everything plotted, and the findings' iterations."""
    seen = [r.iteration for r in trace.losses] + [r.iteration for r in trace.lrs]
    seen += [o.iteration for o in trace.outputs if o.iteration is not None]
    seen += [r.iteration for r in trace.norms if r.iteration is not None]
    for series in trace.series.values():
        if series.iterations:
            seen += [series.iterations[0], series.iterations[-1]]
    seen += [int(x) for x in _clip_positions(trace)]
    seen += [f.iteration for f in findings if f.iteration is not None]
    if not seen:
        return (-0.5, 0.5)
    lo, hi = min(seen), max(seen)
    pad = (hi - lo) * 0.03 or 0.5
    return (lo - pad, hi + pad)


def _clip_positions(trace: RunTrace) -> list[float]:
    """An iteration per clipping event: known for the one printed after a display's lr line,
    else the display's iteration + the events since (exact when clipping fires every
    iteration, an estimate otherwise)."""
    out: list[float] = []
    base, count = None, 0
    for clip in trace.clips:
        if clip.iteration is not None:
            base, count = clip.iteration, 0
            out.append(float(clip.iteration))
            continue
        anchor = clip.after_iteration if clip.after_iteration is not None else base
        if anchor != base:
            base, count = anchor, 0
        count += 1
        out.append(float((anchor or 0) + count))
    return out


# -- notes for plots without data -----------------------------------------------------------


def _note_loss(trace: RunTrace) -> str:
    return "no loss values: the log has no `Iteration N, loss = X` lines"


def _note_layers(trace: RunTrace) -> str:
    if not trace.debug_info:
        return "no per-layer values: set debug_info: true in the solver"
    return "no per-layer values in the train phase (only test-phase debug lines)"


def _note_norms(trace: RunTrace) -> str:
    if not trace.debug_info:
        return ("no `All net params` norms: Caffe prints them only with debug_info: true "
                "in the solver")
    return "no `All net params` norms in this log"


def _note_clipping(trace: RunTrace) -> str:
    solver = trace.solver
    if solver is not None and solver.clip_gradients is not None and solver.clip_gradients > 0:
        return (f"no gradient clipping events: clip_gradients is {fmt(solver.clip_gradients)} "
                "and the gradient L2 norm never exceeded it")
    return "no gradient clipping events: clip_gradients is not set in the solver"


# -- matplotlib -----------------------------------------------------------------------------


def _matplotlib():
    """(matplotlib, Figure, FigureCanvasAgg), or :class:`MissingExtra`."""
    try:
        import matplotlib
        import matplotlib.style  # noqa: F401  (mpl.style.context)
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError as exc:
        raise MissingExtra(INSTALL_HINT) from exc
    return matplotlib, Figure, FigureCanvasAgg


def _plain(text: str) -> str:
    """Text from the log, safe for matplotlib: no mathtext, no legend-hiding underscore."""
    text = text.replace("$", r"\$")
    return " " + text if text.startswith("_") else text


def _draw_line(ax, line: _Line, **style) -> Any:
    (handle,) = ax.plot(line.x, line.y, label=_plain(line.label), **style)
    return handle


def _offaxis_marks(ax, bad: np.ndarray, zero: np.ndarray, log: bool):
    """Red x at the top for NaN/Inf; a grey triangle at the bottom for 0 on a log axis.
    Returns legend handles."""
    import matplotlib.transforms as mtransforms

    blend = mtransforms.blended_transform_factory(ax.transData, ax.transAxes)
    handles = []
    if bad.size:
        xs = _thin_marks(bad)
        (h,) = ax.plot(xs, np.full(xs.size, 0.985), "x",
                       color=_BAD_COLOR, ms=5, mew=1.3, transform=blend, clip_on=False,
                       zorder=5, label="NaN/Inf (off the axis)")
        handles.append(h)
    if zero.size and log:
        xs = _thin_marks(zero)
        (h,) = ax.plot(xs, np.full(xs.size, 0.012), "v", color=_ZERO_COLOR, ms=3.5,
                       transform=blend, clip_on=False, zorder=5, label="0 (off the log axis)")
        handles.append(h)
    return handles


def _auto_scale(ax, lines: Sequence[_Line], decades: float = 2.0) -> bool:
    """Log y when the positive values span more than ``decades``."""
    values = np.concatenate([ln.y for ln in lines]) if lines else np.empty(0)
    values = values[np.isfinite(values)]
    if values.size and (values > 0).all() and values.max() / values.min() > 10 ** decades:
        _log_axis(ax)
        return True
    return False


def _log_axis(ax) -> None:
    """A log y axis labelled 0.01 … 1000, 1e-7, 1e8 (plain text: no mathtext, which is slow
    to lay out); minor ticks are labelled only when the view spans less than a decade."""
    from matplotlib.ticker import Formatter

    class Decades(Formatter):
        def __init__(self, minor: bool) -> None:
            self.minor = minor

        def __call__(self, value: float, pos: int | None = None) -> str:
            if not (value > 0 and math.isfinite(value)):
                return ""
            exponent = math.floor(math.log10(value) + 1e-9)
            mantissa = round(value / 10 ** exponent, 6)
            if self.minor:
                lo, hi = self.axis.get_view_interval()
                span = math.log10(hi / lo) if lo > 0 and hi > 0 else math.inf
                if span >= 2.5 or (span >= 1 and mantissa not in (2, 5)):
                    return ""
            if -2 <= exponent <= 3:
                return f"{mantissa * 10 ** exponent:.6g}"
            return f"{mantissa:g}e{exponent}"

    ax.set_yscale("log")
    ax.yaxis.set_major_formatter(Decades(False))
    ax.yaxis.set_minor_formatter(Decades(True))


def _finding_marks(ax, findings: Sequence[Finding]) -> list[tuple[float, str, str]]:
    """A dashed vertical line per finding iteration, coloured by the worst severity there;
    returns (iteration, label, colour) for :func:`_label_marks` once the layout is known."""
    groups: dict[int, list[Finding]] = {}
    for f in findings:
        if f.iteration is not None:
            groups.setdefault(f.iteration, []).append(f)
    marks = []
    for iteration in sorted(groups):
        group = groups[iteration]
        color = _SEVERITY_COLOR[max(f.severity for f in group)]
        ax.axvline(iteration, color=color, lw=1.1, ls=(0, (4, 2)), alpha=0.85, zorder=1)
        label = ", ".join(dict.fromkeys(f.rule for f in group))
        marks.append((float(iteration), label, color))
    return marks


def _label_marks(fig, pending: list[tuple[Any, list[tuple[float, str, str]]]]) -> None:
    """Rule names beside their markers, pushed right where they would overlap (the axes have
    their final positions: the layout is fixed, see :class:`_Stack`)."""
    if not any(marks for _, marks in pending):
        return
    for ax, marks in pending:
        lo, hi = ax.get_xlim()
        last = -math.inf
        step = 10.5  # points: one rotated line of 8-pt text
        for x, label, color in marks:
            if not lo <= x <= hi:
                continue
            px = ax.transData.transform((x, 0))[0] * 72 / fig.dpi
            at = max(px + 2, last + step)
            last = at
            ax.annotate(_plain(label), xy=(x, 1), xycoords=("data", "axes fraction"),
                           xytext=(at - px, -11), textcoords="offset points",
                           rotation=90, ha="left", va="top", fontsize=8, color=color,
                           annotation_clip=False, zorder=6,
                           bbox=dict(boxstyle="square,pad=0.1", fc="white", ec="none",
                                     alpha=0.75))


def _plot_loss(ax, trace: RunTrace, findings) -> tuple[list, list]:
    """Loss and test outputs with the lr on a twin axis; (handles, pending labels)."""
    lines, lr = _loss_lines(trace)
    handles = []
    bad = [ln.bad for ln in lines]
    for i, line in enumerate(lines):
        train = line.label.startswith("train")
        style = dict(lw=1.6 if i == 0 else 1.0, color=f"C{i}")
        if not train and len(line.x) <= 60:
            style.update(marker="o", ms=3.5)
        elif i > 0:
            style.update(ls="--")
        if len(line.x) <= 40 and train:
            style.update(marker=".", ms=4)
        handles.append(_draw_line(ax, line, **style))
    _auto_scale(ax, lines)
    ax.set_ylabel("loss / output")
    if lr is not None and len(lr.x):
        twin = ax.twinx()
        twin.grid(False)
        handles.append(twin.step(lr.x, lr.y, where="post", color=_LR_COLOR, lw=1.2,
                                 ls=(0, (1, 1.5)), label="lr (right axis)")[0])
        finite = lr.y[np.isfinite(lr.y)]
        if finite.size and (finite > 0).all() and finite.max() / finite.min() > 10:
            _log_axis(twin)
        elif finite.size and finite.min() >= 0 and finite.max() > 0:
            twin.set_ylim(0, finite.max() * 1.15)
        twin.set_ylabel("learning rate", color=_LR_COLOR)
        twin.tick_params(axis="y", colors=_LR_COLOR)
        bad.append(lr.bad)
    all_bad = np.concatenate(bad) if bad else np.empty(0)
    handles += _offaxis_marks(ax, all_bad, np.empty(0), log=False)
    marks = _finding_marks(ax, findings)
    return handles, [(ax, marks)]


def _layer_style(index: int) -> dict:
    """tab10 colours; every further ten layers get the next dash pattern."""
    dashes = ["-", (0, (5, 1.5)), (0, (1.2, 1.2)), (0, (6, 1.5, 1.2, 1.5))]
    return {"color": f"C{index % 10}", "ls": dashes[(index // 10) % len(dashes)]}


def _plot_layers(axes, panels: Sequence[_LayerPanel], findings) -> tuple[list, list, list]:
    """Forward/backward panels sharing one colour per layer; (handles, labels, pending)."""
    layers = list(dict.fromkeys(layer for p in panels for layer, _ in p.lines))
    # net order across both panels
    legend: dict[str, Any] = {}
    extra: dict[str, Any] = {}
    pending = []
    for ax, panel in zip(axes, panels):
        bad, zero = [], []
        for i, (layer, line) in enumerate(panel.lines):
            handle = _draw_line(ax, line, lw=1.3, **_layer_style(layers.index(layer)))
            # the legend names each layer's first nan/inf (else first 0), over both panels
            event = None
            if line.first_bad is not None:
                event = (0, line.first_bad[0], panel.direction != "forward", line.first_bad[1])
            elif line.zero.size:
                event = (1, int(line.zero[0]), panel.direction != "forward", "0")
            if layer not in legend:
                legend[layer] = [handle, line.label, event]
            elif event is not None and (legend[layer][2] is None or event < legend[layer][2]):
                legend[layer][2] = event
            bad.append(line.bad)
            zero.append(line.zero)
        _log_axis(ax)
        for h in _offaxis_marks(ax, np.concatenate(bad) if bad else np.empty(0),
                                np.concatenate(zero) if zero else np.empty(0), log=True):
            extra.setdefault(h.get_label(), h)
        ax.set_ylabel("mean |data|" if panel.direction == "forward" else "mean |diff|")
        pending.append((ax, _finding_marks(ax, findings)))
    both = len(panels) > 1
    labels = []
    for layer in layers:
        _, label, event = legend[layer]
        if event is not None:
            label += f"  · {event[3]}@{event[1]}"
            if both:
                label += " bwd" if event[2] else " fwd"
        labels.append(_plain(_short(label)))
    handles = [legend[layer][0] for layer in layers] + list(extra.values())
    labels += list(extra)
    return handles, labels, pending


def _plot_norms(ax, lines: Sequence[_Line], findings) -> tuple[list, list]:
    handles = []
    for i, line in enumerate(lines):
        dashed = i % 2 == 1 and len(line.x) <= 300  # dashes turn to noise on long runs
        handles.append(_draw_line(ax, line, color=("C0", "C3")[i % 2], lw=1.4 if i == 0 else 1.1,
                                  ls="--" if dashed else "-"))
    _log_axis(ax)
    bad = np.concatenate([ln.bad for ln in lines])
    zero = np.concatenate([ln.zero for ln in lines])
    handles += _offaxis_marks(ax, bad, zero, log=True)
    ax.set_ylabel("L2 norm")
    return handles, [(ax, _finding_marks(ax, findings))]


def _plot_clipping(axes, trace: RunTrace, findings) -> tuple[list, list]:
    x = np.asarray(_clip_positions(trace), dtype=float)
    norm = _line("gradient L2 norm", x, [c.l2_norm for c in trace.clips], log=True)
    threshold = _line("clip_gradients threshold", x, [c.threshold for c in trace.clips],
                      log=True)
    scale = _line("scale factor", x, [c.scale for c in trace.clips], log=True)
    dense = len(x) <= 200
    ax1, ax2 = axes
    handles = [_draw_line(ax1, norm, color="C0", lw=1.0, marker="." if dense else None, ms=3),
               _draw_line(ax1, threshold, color="#333333", lw=1.0, ls="--")]
    _log_axis(ax1)
    ax1.set_ylabel("L2 norm")
    handles += _offaxis_marks(ax1, norm.bad, norm.zero, log=True)
    handles.append(_draw_line(ax2, scale, color="C2", lw=1.0, marker="." if dense else None,
                              ms=3))
    _log_axis(ax2)
    seen = {h.get_label() for h in handles}
    handles += [h for h in _offaxis_marks(ax2, scale.bad, scale.zero, log=True)
                if h.get_label() not in seen]
    ax2.set_ylabel("scale factor")
    pending = [(ax, _finding_marks(ax, findings)) for ax in axes]
    return handles, pending


_WIDTH = 12.6
"""Every figure is this wide (inches) with its axes at the same place, so iteration axes line
up down the page: y labels in [0, _LEFT], axes in [_LEFT, _RIGHT], the right axis (lr) after
it, legends from _KEY."""
_LEFT, _RIGHT, _KEY = 0.95, 9.1, 9.8
_TOP, _BOTTOM, _TITLE, _GAP = 0.12, 0.5, 0.3, 0.22
_MAX_LABEL = 20


class _Stack:
    """Axes stacked on one iteration axis in a figure of fixed geometry (no layout engine:
    deterministic and fast; the figure is scaled as a whole by the page)."""

    def __init__(self, Figure, Canvas, heights: Sequence[float],
                 titles: Sequence[str | None] | None = None, xlabel: str = "iteration",
                 top: float = _TOP) -> None:
        titles = list(titles or [None] * len(heights))
        total = top + _BOTTOM + sum(heights) + sum(_TITLE for t in titles if t) \
            + _GAP * (len(heights) - 1)
        self.fig = Figure(figsize=(_WIDTH, total))
        Canvas(self.fig)
        self.height = total
        self.axes = []
        self.rows = []
        y = total - top
        for height, title in zip(heights, titles):
            if title:
                y -= _TITLE
            y -= height
            ax = self.fig.add_axes((_LEFT / _WIDTH, y / total, (_RIGHT - _LEFT) / _WIDTH,
                                    height / total),
                                   sharex=self.axes[0] if self.axes else None)
            if title:
                ax.set_title(_plain(title), loc="left", pad=4)
            self.axes.append(ax)
            self.rows.append((y + height + (_TITLE if title else 0), height))
            y -= _GAP
        for ax in self.axes[:-1]:
            ax.tick_params(labelbottom=False)
        self.axes[-1].set_xlabel(xlabel)

    def legend(self, handles: list, labels: list | None = None, row: int = 0,
               **kwargs) -> None:
        """A legend right of the axes (and of a right axis), top-aligned with ``row``."""
        if labels is None:
            labels = [h.get_label() for h in handles]
        top = self.rows[row][0]
        self.fig.legend(handles, labels, loc="upper left",
                        bbox_to_anchor=(_KEY / _WIDTH, top / self.height),
                        borderaxespad=0, borderpad=0, handlelength=2.2, labelspacing=0.35,
                        **kwargs)


def _short(text: str, limit: int = _MAX_LABEL) -> str:
    """Legend text that fits the legend column: long names lose their middle."""
    head, sep, tail = text.partition("  · ")
    if len(head) > limit:
        keep = limit - 1
        head = head[: keep - keep // 2] + "…" + head[len(head) - keep // 2:]
    return head + sep + tail


@dataclass
class _Plot:
    id: str
    title: str
    caption: str
    svg: str | None = None
    note: str | None = None
    extra: list[str] = field(default_factory=list)
    """Further notes shown under the plot (e.g. 'showing 30 of 40 layers')."""


class _Renderer:
    """Draws the plots of one run; each plot is a fresh Figure on an Agg canvas."""

    def __init__(self, diagnosis: Diagnosis, trace: RunTrace) -> None:
        self.mpl, self.Figure, self.Canvas = _matplotlib()
        self.diagnosis = diagnosis
        self.trace = trace
        self.findings = [f for f in diagnosis.findings if f.run == trace.run]
        self.xlim = _xlim(trace, self.findings)

    def stack(self, heights, titles=None, xlabel: str = "iteration") -> _Stack:
        return _Stack(self.Figure, self.Canvas, heights, titles, xlabel)

    def svg(self, fig, salt: str) -> str:
        buffer = io.StringIO()
        with self.mpl.rc_context({"svg.hashsalt": f"caffelens-{salt}"}):
            fig.savefig(buffer, format="svg", metadata={"Date": None, "Creator": None})
        return _inline_svg(buffer.getvalue())

    def finish(self, plot: _Plot, stack: _Stack, pending) -> _Plot:
        """The end every plot shares: one x range for all, finding labels, the SVG."""
        stack.axes[0].set_xlim(*self.xlim)
        _label_marks(stack.fig, pending)
        plot.svg = self.svg(stack.fig, plot.id)
        return plot

    # each returns a _Plot with svg, or with a note when there is nothing to draw

    def loss(self, pid: str) -> _Plot:
        plot = _Plot(pid, "Loss, test outputs and learning rate",
                     "The displayed train loss (averaged over average_loss iterations) and each "
                     "test output; the learning rate on the right axis.")
        if not _loss_lines(self.trace)[0]:
            plot.note = _note_loss(self.trace)
            return plot
        stack = self.stack([2.9])
        handles, pending = _plot_loss(stack.axes[0], self.trace, self.findings)
        stack.legend(handles)
        return self.finish(plot, stack, pending)

    def layers(self, pid: str) -> _Plot:
        plot = _Plot(pid, "Per-layer values",
                     "Mean absolute value of each blob (debug_info prints asum/count) on a log "
                     "axis: one line per layer in net order, the same colour in both panels "
                     "(a layer with several blobs shows its first). "
                     "× at the top: NaN/Inf; ▾ at the bottom: exactly 0. The legend gives "
                     "each layer's first nan/inf (else 0) as value@iteration.")
        keep, total = _pick_layers(self.trace, self.findings)
        panels = [p for p in (_layer_panel(self.trace, d, keep) for d in _DIRECTIONS)
                  if p.lines]
        if not panels:
            plot.note = _note_layers(self.trace)
            return plot
        if keep is not None:
            plot.extra.append(
                f"Showing {len(keep)} of {total} layers: those named by findings or "
                "non-finite first, then layers evenly spaced through the net.")
        count = len({layer for p in panels for layer, _ in p.lines})
        height = max(2.5, min(3.2, 0.15 * count))
        stack = self.stack([height] * len(panels), [p.title for p in panels])
        handles, labels, pending = _plot_layers(stack.axes, panels, self.findings)
        stack.legend(handles, labels, title="layer · first nan/inf/0",
                     fontsize=8 if count > 20 else 9)
        return self.finish(plot, stack, pending)

    def norms(self, pid: str) -> _Plot:
        plot = _Plot(pid, "All net params: L2 norms",
                     "The `All net params (data, diff)` L2 norms of the Backward debug line "
                     "(last pass of each iteration), on a log axis.")
        lines = _norm_lines(self.trace)
        if not lines:
            plot.note = _note_norms(self.trace)
            return plot
        stack = self.stack([2.4])
        handles, pending = _plot_norms(stack.axes[0], lines, self.findings)
        stack.legend(handles)
        return self.finish(plot, stack, pending)

    def clipping(self, pid: str) -> _Plot:
        trace = self.trace
        plot = _Plot(pid, "Gradient clipping",
                     "Each `Gradient clipping: scaling down gradients` event: the gradient L2 "
                     "norm against the clip_gradients threshold, and the factor the update was "
                     "scaled by. Only the event printed at a display line has a known "
                     "iteration; the others are placed one iteration apart after it.")
        if not trace.clips:
            plot.note = _note_clipping(trace)
            return plot
        if trace.clip_count > len(trace.clips):
            plot.extra.append(f"{trace.clip_count} events, {len(trace.clips)} kept (thinned).")
        else:
            plot.extra.append(f"{trace.clip_count} clipping events.")
        stack = self.stack([1.9, 1.6], xlabel="iteration (estimated between display lines)")
        handles, pending = _plot_clipping(stack.axes, trace, self.findings)
        stack.legend(handles)
        return self.finish(plot, stack, pending)


def _inline_svg(svg: str) -> str:
    """matplotlib's SVG file → an element for the page: no XML prolog, DOCTYPE or metadata
    (they hold URLs), ids prefixed so several plots can share a page, scalable by CSS."""
    start = svg.index("<svg")
    svg = svg[start:]
    svg = re.sub(r"<metadata>.*?</metadata>\s*", "", svg, flags=re.S)
    svg = re.sub(r'\s(width|height)="[\d.]+pt"', "", svg, count=2)
    svg = svg.replace("<svg ", '<svg role="img" class="plot-svg" ', 1)
    return svg.strip()


# -- HTML -----------------------------------------------------------------------------------


def _e(value: Any) -> str:
    return html.escape("" if value is None else str(value), quote=True)


_CSS = """
:root { --error: #c62828; --warning: #b45f06; --info: #1565c0; --ok: #2e7d32;
        --muted: #5f6368; --line: #dadce0; }
* { box-sizing: border-box; }
body { font: 15px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, "DejaVu Sans", Arial,
       sans-serif; color: #202124; margin: 0; background: #fff; }
main { max-width: 1320px; margin: 0 auto; padding: 24px 28px 48px; }
h1 { font-size: 22px; margin: 0 0 4px; }
h2 { font-size: 18px; margin: 32px 0 8px; border-bottom: 1px solid var(--line);
     padding-bottom: 4px; }
h3 { font-size: 15px; margin: 20px 0 4px; }
code, .mono { font-family: ui-monospace, "DejaVu Sans Mono", Menlo, Consolas, monospace;
              font-size: 13px; }
.path { color: var(--muted); word-break: break-all; margin: 0 0 12px; }
.badge { display: inline-block; padding: 1px 8px; border-radius: 10px; font-size: 12px;
         font-weight: 600; color: #fff; text-transform: uppercase; letter-spacing: .03em;
         vertical-align: middle; }
.badge.error { background: var(--error); } .badge.warning { background: var(--warning); }
.badge.info { background: var(--info); } .badge.ok { background: var(--ok); }
dl.facts { display: grid; grid-template-columns: max-content 1fr; gap: 2px 16px; margin: 0; }
dl.facts dt { color: var(--muted); } dl.facts dd { margin: 0; }
.partial { background: #fff4e5; border-left: 4px solid var(--warning); padding: 8px 12px; }
table.findings { border-collapse: collapse; width: 100%; font-size: 14px; }
table.findings th { text-align: left; font-weight: 600; color: var(--muted);
                    border-bottom: 2px solid var(--line); padding: 6px 8px; }
table.findings td { vertical-align: top; border-bottom: 1px solid var(--line);
                    padding: 8px; }
table.findings tr.error td:first-child { border-left: 4px solid var(--error); }
table.findings tr.warning td:first-child { border-left: 4px solid var(--warning); }
table.findings tr.info td:first-child { border-left: 4px solid var(--info); }
td.num { text-align: right; white-space: nowrap; }
td.rule { white-space: nowrap; }
td.where { min-width: 160px; }
.evidence { margin: 6px 0 0; padding-left: 18px; color: var(--muted); font-size: 13px; }
.fix { font-weight: 600; }
.line { color: var(--muted); font-size: 12px; }
figure.plot { margin: 18px 0 8px; }
figure.plot figcaption { color: var(--muted); font-size: 13px; margin-bottom: 4px; }
svg.plot-svg { width: 100%; height: auto; display: block; }
p.plot-note { color: var(--muted); font-style: italic; margin: 6px 0 14px;
              padding: 8px 12px; background: #f8f9fa; border-left: 4px solid var(--line); }
p.plot-extra { color: var(--muted); font-size: 13px; margin: 2px 0 0; }
footer { margin-top: 40px; color: var(--muted); font-size: 12px; }
"""


def _findings_html(d: Diagnosis) -> str:
    if not d.findings:
        return '<p class="no-findings">No problems found.</p>'
    rows = []
    multi = len(d.traces) > 1
    for i, f in enumerate(d.findings, 1):
        severity = str(f.severity)
        message = _e(f.message)
        if f.evidence:
            message += '<ul class="evidence">' + "".join(
                f"<li>{_e(item)}</li>" for item in f.evidence) + "</ul>"
        place = _e(where(f))
        extra = []
        if multi:
            extra.append(f"run {f.run + 1}")
        if f.line:
            extra.append(f"line {f.line}")
        if extra:
            place += f'<div class="line">{_e(", ".join(extra))}</div>'
        rows.append(
            f'<tr class="finding {severity}" id="finding-{i}" data-code="{_e(f.code)}">'
            f'<td><span class="badge {severity}">{_e(severity)}</span></td>'
            f'<td class="rule"><span class="mono">{_e(f.code)}</span><br>{_e(f.rule)}</td>'
            f'<td class="num">{_e("" if f.iteration is None else f.iteration)}</td>'
            f'<td class="where">{place}</td>'
            f'<td class="message">{message}</td>'
            f'<td class="cause">{_e(f.likely_cause or "")}</td>'
            f'<td class="fix">{_e(f.fix or "")}</td></tr>')
    head = ("<tr><th>severity</th><th>rule</th><th>iteration</th><th>where</th>"
            "<th>what happened</th><th>likely cause</th><th>what to change</th></tr>")
    return (f'<table class="findings"><thead>{head}</thead>\n<tbody>\n'
            + "\n".join(rows) + "\n</tbody></table>")


def _plot_html(plot: _Plot) -> str:
    if plot.svg is None:
        return (f'<h3>{_e(plot.title)}</h3>\n'
                f'<p class="plot-note" id="{_e(plot.id)}">{_e(plot.note)}</p>')
    extra = "".join(f'<p class="plot-extra">{_e(x)}</p>' for x in plot.extra)
    return (f'<figure class="plot" id="{_e(plot.id)}"><h3>{_e(plot.title)}</h3>'
            f'<figcaption>{_e(plot.caption)}</figcaption>\n{plot.svg}\n{extra}</figure>')


def _run_plots(d: Diagnosis, trace: RunTrace, suffix: str) -> list[_Plot]:
    renderer = _Renderer(d, trace)
    with renderer.mpl.style.context("default"), renderer.mpl.rc_context(_RC):
        return [renderer.loss("plot-loss" + suffix), renderer.layers("plot-layers" + suffix),
                renderer.norms("plot-norms" + suffix),
                renderer.clipping("plot-clipping" + suffix)]


def render_html(diagnosis: Diagnosis) -> str:
    """The whole report page for one diagnosis: facts, findings table and plots, with no
    reference to anything outside the file (plots are inline SVG, the style is inline CSS).

    Plot ids are ``plot-loss``, ``plot-layers``, ``plot-norms`` and ``plot-clipping`` (a
    ``<figure>``, or a ``<p class="plot-note">`` saying why there is no data); a log with
    several training runs gets them per run, the later runs suffixed ``-run2``, ``-run3``….
    Raises :class:`MissingExtra` when matplotlib is not installed.
    """
    _matplotlib()
    d = diagnosis
    status = d.status
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        '<meta name="generator" content="caffelens">',
        f"<title>caffelens report: {_e(d.path)}</title>",
        f"<style>{_CSS}</style></head><body><main>",
        f'<h1>caffelens report <span class="badge {_e(status)}">{_e(status)}</span></h1>',
        f'<p class="path mono">{_e(d.path)}</p>',
    ]
    facts = header_facts(d)
    if facts:
        parts.append('<dl class="facts">' + "".join(
            f"<dt>{_e(label)}</dt><dd>{_e(value)}</dd>" for label, value in facts) + "</dl>")
    if d.error:
        parts.append(f'<p class="partial">partial result: {_e(d.error)}</p>')
    counts = {s: sum(f.severity == s for f in d.findings) for s in Severity}
    summary = ", ".join(f"{n} {s}{'s' if n != 1 else ''}"
                        for s, n in sorted(counts.items(), reverse=True) if n)
    parts.append(f'<section id="findings"><h2>Findings{": " + _e(summary) if summary else ""}'
                 f"</h2>\n{_findings_html(d)}</section>")
    parts.append('<section id="plots"><h2>Plots</h2>')
    parts.append('<p class="plot-extra">Dashed vertical lines mark the findings\' iterations: '
                 '<span style="color:#d62728">error</span>, '
                 '<span style="color:#e07b00">warning</span>, '
                 '<span style="color:#1f77b4">info</span>, labelled with the rule name.</p>')
    if not d.traces:
        for pid in PLOT_IDS:
            parts.append(f'<p class="plot-note" id="{pid}">no training run in the log</p>')
    for index, trace in enumerate(d.traces):
        suffix = "" if index == 0 else f"-run{index + 1}"
        if len(d.traces) > 1:
            lo, hi = trace.iterations
            span = f" (iterations {lo} – {hi})" if lo is not None else ""
            parts.append(f'<h2 id="run{index + 1}">Run {index + 1} of {len(d.traces)}'
                         f"{_e(span)}</h2>")
        for plot in _run_plots(d, trace, suffix):
            parts.append(_plot_html(plot))
    parts.append("</section>")
    parts.append(f'<footer>caffelens {_e(__version__)}</footer></main></body></html>')
    return "\n".join(parts) + "\n"


# -- PNG ------------------------------------------------------------------------------------


def render_png(diagnosis: Diagnosis, path: str | os.PathLike | IO[bytes]) -> None:
    """One summary figure written to ``path`` as PNG: loss and lr, per-layer Forward and
    Backward values, and the net-param norms, stacked on one iteration axis (the last run of
    the log). Panels without data say why. Raises :class:`MissingExtra` when matplotlib is
    not installed."""
    mpl, Figure, Canvas = _matplotlib()
    d = diagnosis
    trace = d.last
    findings = [f for f in d.findings if trace is not None and f.run == trace.run]
    with mpl.style.context("default"), mpl.rc_context(_RC):
        titles = ["Loss, test outputs and learning rate", _DIRECTIONS["forward"][2],
                  _DIRECTIONS["backward"][2], "All net params: L2 norms"]
        stack = _Stack(Figure, Canvas, [2.6, 2.6, 2.6, 2.1], titles, top=0.45)
        fig, axes = stack.fig, stack.axes
        fig.text(0.15 / _WIDTH, 1 - 0.12 / stack.height,
                 _plain(f"caffelens: {d.path} ({d.status})"), ha="left", va="top",
                 fontsize=11, fontweight="bold")
        pending: list = []

        def note(ax, text: str) -> None:
            ax.set_yticks([])
            ax.grid(False)
            ax.text(0.5, 0.5, _plain(text), ha="center", va="center", color="#5f6368",
                    fontsize=11, transform=ax.transAxes, style="italic")

        nothing = "no training run in the log"
        if trace is not None and _loss_lines(trace)[0]:
            handles, marks = _plot_loss(axes[0], trace, findings)
            stack.legend(handles, row=0)
            pending += marks
        else:
            note(axes[0], _note_loss(trace) if trace else nothing)
        keep = _pick_layers(trace, findings) if trace is not None else (None, 0)
        drawn, drawn_axes = [], []
        for ax, direction in zip(axes[1:3], _DIRECTIONS):
            panel = _layer_panel(trace, direction, keep[0]) if trace is not None else None
            if panel is not None and panel.lines:
                drawn.append(panel)
                drawn_axes.append(ax)
            elif trace is None:
                note(ax, nothing)
            else:
                note(ax, _note_layers(trace) if not trace.debug_info
                     else f"no {direction} values in the train phase")
        if drawn:
            handles, labels, marks = _plot_layers(drawn_axes, drawn, findings)
            count = len({layer for p in drawn for layer, _ in p.lines})
            title = "layer · first nan/inf/0"
            if keep[0] is not None:
                title += f"\n({len(keep[0])} of {keep[1]} layers shown)"
            stack.legend(handles, labels, row=1, title=title, fontsize=8 if count > 20 else 9)
            pending += marks
        lines = _norm_lines(trace) if trace is not None else []
        if lines:
            handles, marks = _plot_norms(axes[3], lines, findings)
            stack.legend(handles, row=3)
            pending += marks
        else:
            note(axes[3], _note_norms(trace) if trace else nothing)
        if trace is not None:
            axes[0].set_xlim(*_xlim(trace, findings))
        _label_marks(fig, pending)
        fig.savefig(path, format="png", metadata={"Software": None})


__all__ = ["MissingExtra", "PLOT_IDS", "render_html", "render_png"]
