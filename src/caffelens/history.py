"""Collect parsed records into per-run traces: the series and first events the rules read.

Training debug values are kept per blob as numpy series (one value per displayed iteration,
last pass of the iteration); test-phase values are not stored, only their first non-finite
and first exploding value. That keeps memory proportional to layers × displays, not to lines.
"""

from __future__ import annotations

import math
from array import array
from collections.abc import Iterable
from dataclasses import dataclass, field
from itertools import repeat

import numpy as np

from caffelens.prototxt import LayerDef, NetDefinition, SolverSettings
from caffelens.records import (
    BlobValue,
    Crash,
    Finished,
    GradientClip,
    LearningRate,
    Loss,
    NetConfig,
    NetNorms,
    Output,
    Record,
    Resume,
    SolverConfig,
    TestStart,
    TopShape,
)
from caffelens.tokens import LayoutCache

BlobKey = tuple[str, str, str, str, str]
"""(direction, layer, role, blob, stat) — one printed series."""


@dataclass
class Series:
    """Values of one blob statistic over displayed iterations (train phase)."""

    # compact typed arrays: a gigabyte log holds millions of these values
    iterations: array = field(default_factory=lambda: array("q"))
    values: array = field(default_factory=lambda: array("d"))
    lines: array = field(default_factory=lambda: array("q"))

    def add(self, iteration: int | None, value: float, line: int, cap: int | None = None) -> None:
        if iteration is None:
            return
        if self.iterations and self.iterations[-1] == iteration:
            # iter_size > 1: keep the last pass of the iteration
            self.values[-1], self.lines[-1] = value, line
            return
        self.iterations.append(iteration)
        self.values.append(value)
        self.lines.append(line)
        if cap is not None and len(self.values) > cap:
            for column in (self.iterations, self.values, self.lines):
                thin(column)

    def extend(self, iterations: np.ndarray, values: np.ndarray, lines: np.ndarray,
               cap: int | None = None) -> None:
        """``add`` for each item in turn, a slice at a time (same points kept when thinning)."""
        start, count = 0, len(values)
        if count and self.iterations and self.iterations[-1] == iterations[0]:
            self.values[-1], self.lines[-1] = float(values[0]), int(lines[0])
            start = 1
        while start < count:
            stop = count if cap is None else min(count, start + cap + 1 - len(self.values))
            self.iterations.frombytes(iterations[start:stop].astype(np.int64).tobytes())
            self.values.frombytes(values[start:stop].astype(np.float64).tobytes())
            self.lines.frombytes(lines[start:stop].astype(np.int64).tobytes())
            start = stop
            if cap is not None and len(self.values) > cap:
                for column in (self.iterations, self.values, self.lines):
                    thin(column)

    def array(self) -> np.ndarray:
        return np.asarray(self.values, dtype=float)


def thin(column) -> None:
    """Halve a history in place, keeping the first and last items: bounded memory, whole span."""
    del column[1:-1:2]


@dataclass
class RunTrace:
    """Everything the rules need to know about one training run in a log."""

    run: int
    solver: SolverSettings | None = None
    train_net: NetDefinition | None = None
    test_nets: list[NetDefinition] = field(default_factory=list)
    losses: list[Loss] = field(default_factory=list)
    outputs: list[Output] = field(default_factory=list)
    lrs: list[LearningRate] = field(default_factory=list)
    tests: list[TestStart] = field(default_factory=list)
    clips: list[GradientClip] = field(default_factory=list)
    clip_count: int = 0
    """All clipping events, also those thinned out of ``clips``."""
    loss_count: int = 0
    """All displayed losses, also those thinned out of ``losses``."""
    bad_loss_count: int = 0
    bad_losses: list[Loss] = field(default_factory=list)
    first_large_loss: Loss | None = None
    """The first finite loss past the explode threshold (thinning may drop it from losses)."""
    negative_loss: bool = False
    """A displayed loss was negative (Caffe's smoothed sum went wrong), kept or thinned."""
    bad_outputs: list[Output] = field(default_factory=list)
    """Non-finite losses and outputs, kept apart so that thinning never drops a NaN."""
    norms: list[NetNorms] = field(default_factory=list)
    crashes: list[Crash] = field(default_factory=list)
    finished: Finished | None = None
    resume: Resume | None = None
    shapes: dict[str, list[tuple[int, ...]]] = field(default_factory=dict)
    series: dict[BlobKey, Series] = field(default_factory=dict)
    blob_count: int = 0
    first_nonfinite: BlobValue | None = None
    first_nonfinite_norms: NetNorms | None = None
    nonfinite_layers: dict[tuple[int | None, str], set[str]] = field(default_factory=dict)
    """(iteration, phase) -> layers with a non-finite value in it."""
    first_large: BlobValue | None = None
    first_line: int | None = None
    last_line: int | None = None
    # the Forward/Backward block of one (iteration, pass), in print order, for context: raw
    # BlobValue tuples, or _Values of a clean block (expanded only if NaN follows in it)
    _onset_raw: list = field(default_factory=list)
    _block_key: tuple | None = None
    _block: list = field(default_factory=list)
    _rows: _Rows | None = None

    @property
    def onset_block(self) -> list[BlobValue]:
        """The train block (iteration, pass) where the first non-finite value appeared."""
        return [BlobValue(*raw) for piece in self._onset_raw
                for raw in (piece.raw() if isinstance(piece, _Values) else (piece,))]

    # -- derived facts ------------------------------------------------------------------

    @property
    def iterations(self) -> tuple[int | None, int | None]:
        seen = [r.iteration for r in self.losses] + [t.iteration for t in self.tests]
        return (min(seen), max(seen)) if seen else (None, None)

    @property
    def debug_info(self) -> bool:
        return self.blob_count > 0

    def layer(self, name: str) -> LayerDef | None:
        return self.train_net.layer(name) if self.train_net is not None else None

    def producers(self, blob: str) -> list[LayerDef]:
        """The train net's layers that write ``blob`` (none when the net is unknown)."""
        return self.train_net.producers(blob) if self.train_net is not None else []

    def layer_type(self, name: str) -> str | None:
        spec = self.layer(name)
        if spec is None:
            for net in self.test_nets:
                spec = net.layer(name)
                if spec is not None:
                    break
        return spec.type if spec is not None else None

    def lr_at(self, iteration: int | None) -> float | None:
        """The learning rate in effect at ``iteration`` (last lr line at or before it)."""
        best = None
        for lr in self.lrs:
            if iteration is None or lr.iteration <= iteration:
                best = lr.value
        if best is None and self.solver is not None:
            best = self.solver.base_lr
        return best

    def batch_size(self) -> int | None:
        """First dimension of the train net's first data-layer top, from `Top shape` lines."""
        if self.train_net is not None:
            for spec in self.train_net.layers:
                if spec.is_data() and self.shapes.get(spec.name):
                    return self.shapes[spec.name][0][0] if self.shapes[spec.name][0] else None
        return None

    def train_outputs(self) -> list[Output]:
        return [o for o in self.outputs if o.phase == "train"]

    def dominant_loss(self) -> tuple[str, float, float, float] | None:
        """(output, weighted value, loss_weight, the other terms together) when one weighted
        loss term is ≥ 10× all the others at the first display with several terms."""
        by_iteration: dict[int | None, dict[str, tuple[float, float]]] = {}
        for output in self.train_outputs():
            if output.weight:
                by_iteration.setdefault(output.iteration, {})[output.name] = (
                    output.value * output.weight, output.weight)
        terms = next((t for t in by_iteration.values() if len(t) >= 2), None)
        if terms is None:
            return None
        name, (weighted, weight) = max(terms.items(), key=lambda kv: abs(kv[1][0]))
        others = sum(abs(v[0]) for k, v in terms.items() if k != name)
        if not math.isfinite(weighted) or others <= 0 or abs(weighted) < 10 * others:
            return None
        return name, weighted, weight, others


DIAGNOSE_POINTS = 512
"""History kept per series by `diagnose`: older points are thinned evenly (first and last
kept, NaN kept apart), so memory is flat on huge logs — at most 12 KB per printed blob, 17 MB
for a net printing 1,400 values per display."""

RECORDS_PER_POINT = 16
"""Losses, outputs, lrs… are fewer than debug values: keep 16× more of them (8,192) before
thinning; the NaN, the first huge and any negative loss are kept apart."""


@dataclass
class _Values:
    """A clean run of training debug values kept as arrays (a block's context)."""

    keys: list[tuple]
    lines: np.ndarray
    ids: np.ndarray
    values: np.ndarray
    run: int
    iteration: int | None
    pass_index: int

    def raw(self) -> list[tuple]:
        keys, run, iteration, pass_index = self.keys, self.run, self.iteration, self.pass_index
        return [(line, run, iteration, "train", 0, pass_index, None, keys[key][0], keys[key][1],
                 keys[key][3], keys[key][2], keys[key][4], value)
                for line, key, value in zip(self.lines.tolist(), self.ids.tolist(),
                                            self.values.tolist())]


@dataclass
class _Rows:
    """Displayed iterations with the same set of series, as rows of a matrix: a block costs
    one row append, not one append per series; columns go to the series every so often."""

    keys: list[tuple]
    layout: bytes  # the block's key ids as printed, before duplicates are dropped
    ids: np.ndarray  # series key id per column
    iterations: list[int] = field(default_factory=list)
    values: list[np.ndarray] = field(default_factory=list)
    lines: list[np.ndarray] = field(default_factory=list)


ROWS_HELD = 1 << 18
"""Values held as rows before they move into their series (bounds that memory)."""


def _last_of_each(ids: np.ndarray) -> np.ndarray | None:
    """Where each key is last in a block (iter_size prints a key once a pass: the last pass
    counts); None when no key repeats."""
    _, first_from_end = np.unique(ids[::-1], return_index=True)
    last = np.sort(len(ids) - 1 - first_from_end)
    return last if len(last) < len(ids) else None


class TraceBuilder:
    """Feed records in log order; read ``traces`` (one per run) at the end."""

    def __init__(self, explode_threshold: float = 1e8,
                 max_points: int | None = DIAGNOSE_POINTS) -> None:
        self.explode_threshold = explode_threshold
        self.max_points = max_points
        """Bound on every stored history (None: keep all); `watch` sets it for week-long runs."""
        self._traces: list[RunTrace] = []
        self._shapes_done: set[int] = set()
        self._layouts = LayoutCache(_last_of_each)

    @property
    def traces(self) -> list[RunTrace]:
        """The runs so far, every series up to date."""
        for trace in self._traces:
            if trace._rows is not None:
                self._store_rows(trace)
        return self._traces

    def trace(self, run: int) -> RunTrace:
        while len(self._traces) <= run:
            self._traces.append(RunTrace(len(self._traces)))
        return self._traces[run]

    def add_all(self, records: Iterable[Record]) -> list[RunTrace]:
        for record in records:
            self.add(record)
        return self.traces

    def add(self, record: Record) -> None:
        traces = self._traces
        trace = traces[record.run] if record.run < len(traces) else self.trace(record.run)
        if trace.first_line is None:
            trace.first_line = record.line
        trace.last_line = record.line
        kind = type(record)
        if kind is BlobValue:
            self._blob(trace, record)  # type: ignore[arg-type]
        elif kind is Loss:
            trace.loss_count += 1
            self._append(trace.losses, record)
            value = record.value  # type: ignore[attr-defined]
            if value - value != 0:
                trace.bad_loss_count += 1
                self._append(trace.bad_losses, record)
            elif value < 0 or abs(value) >= self.explode_threshold:
                trace.negative_loss = trace.negative_loss or value < 0
                if trace.first_large_loss is None and abs(value) >= self.explode_threshold:
                    trace.first_large_loss = record  # type: ignore[assignment]
        elif kind is Output:
            self._append(trace.outputs, record)
            if record.value - record.value != 0:  # type: ignore[attr-defined]
                self._append(trace.bad_outputs, record)
        elif kind is LearningRate:
            self._append(trace.lrs, record)
        elif kind is TestStart:
            self._append(trace.tests, record)
        elif kind is GradientClip:
            trace.clip_count += 1
            self._append(trace.clips, record)
        elif kind is NetNorms:
            self._append(trace.norms, record)
            if trace.first_nonfinite_norms is None and not all(
                math.isfinite(v)
                for v in (record.l1_data, record.l1_diff, record.l2_data, record.l2_diff)
            ):
                trace.first_nonfinite_norms = record  # type: ignore[assignment]
        elif kind is Crash:
            self._append(trace.crashes, record)
        elif kind is Finished:
            trace.finished = trace.finished or record  # type: ignore[assignment]
        elif kind is Resume:
            trace.resume = record  # type: ignore[assignment]
        elif kind is SolverConfig:
            trace.solver = record.settings  # type: ignore[attr-defined]
        elif kind is NetConfig:
            definition = record.definition  # type: ignore[attr-defined]
            if record.phase == "test":  # type: ignore[attr-defined]
                trace.test_nets.append(definition)
            elif trace.train_net is None or definition.phase == "TRAIN" and \
                    trace.train_net.phase != "TRAIN":
                trace.train_net = definition
        elif kind is TopShape:
            # only the train net's shapes: it is set up first, test nets after
            if trace.test_nets or record.layer is None:  # type: ignore[attr-defined]
                return
            trace.shapes.setdefault(record.layer, []).append(record.shape)  # type: ignore[attr-defined]

    def _append(self, column: list, record: Record) -> None:
        column.append(record)
        if self.max_points is not None and len(column) > RECORDS_PER_POINT * self.max_points:
            thin(column)

    def _blob(self, trace: RunTrace, blob: BlobValue) -> None:
        self.blob(blob.line, blob.run, blob.iteration, blob.phase, blob.net, blob.pass_index,
                  blob.batch, blob.direction, blob.layer, blob.blob, blob.role, blob.stat,
                  blob.value)

    def blob(self, line, run, iteration, phase, net, pass_index, batch, direction, layer,
             blob, role, stat, value) -> None:
        """One debug value, in BlobValue's field order (the parser's ``blob_sink``)."""
        traces = self._traces
        trace = traces[run] if run < len(traces) else self.trace(run)
        if trace.first_line is None:
            trace.first_line = line
        trace.last_line = line
        trace.blob_count += 1
        onset = False
        if value - value != 0:  # NaN or ±Inf, without a function call
            trace.nonfinite_layers.setdefault((iteration, phase), set()).add(layer)
            if trace.first_nonfinite is None or line < trace.first_nonfinite.line:
                trace.first_nonfinite = BlobValue(line, run, iteration, phase, net, pass_index,
                                                  batch, direction, layer, blob, role, stat,
                                                  value)
                onset = True
        elif value >= self.explode_threshold and (
            trace.first_large is None or line < trace.first_large.line
        ):
            trace.first_large = BlobValue(line, run, iteration, phase, net, pass_index, batch,
                                          direction, layer, blob, role, stat, value)
        if phase != "train":
            return
        block_key = (iteration, pass_index)
        if block_key != trace._block_key:
            trace._block_key = block_key
            trace._block = []
        trace._block.append((line, run, iteration, phase, net, pass_index, batch, direction,
                             layer, blob, role, stat, value))
        if onset:
            trace._onset_raw = trace._block  # keeps growing until the block ends
        if trace._rows is not None:
            self._store_rows(trace)  # keep each series in log order
        key = (direction, layer, role, blob, stat)
        series = trace.series.get(key)
        if series is None:
            series = trace.series[key] = Series()
        series.add(iteration, value, line, self.max_points)

    def values(self, run, iteration, phase, net, keys, lines, ids, values, passes,
               batches) -> None:
        """Debug values in bulk (the parser's ``block_sink``): ``keys[ids[i]]`` is value i's
        (direction, layer, role, blob, stat); ``passes`` (train: an array, or one pass as an
        int) or ``batches`` (test) may be None. A block with NaN, Inf or a huge value goes
        value by value to :meth:`blob`."""
        trace = self._traces[run] if run < len(self._traces) else self.trace(run)
        if not (values.max() < self.explode_threshold and values.min() > -math.inf):
            pass_list = repeat(passes) if isinstance(passes, int) else (
                passes.tolist() if passes is not None else repeat(0))
            batch_list = batches.tolist() if batches is not None else repeat(None)
            for line, key, value, pass_index, batch in zip(
                    lines.tolist(), ids.tolist(), values.tolist(), pass_list, batch_list):
                direction, layer, role, blob, stat = keys[key]
                self.blob(line, run, iteration, phase, net, pass_index, batch, direction, layer,
                          blob, role, stat, value)
            return
        if trace.first_line is None:
            trace.first_line = int(lines[0])
        trace.last_line = int(lines[-1])
        trace.blob_count += len(values)
        if phase != "train":
            return
        context = lines, ids, values
        if isinstance(passes, int):
            last = passes
        else:
            last = int(passes[-1])
            if passes[0] != last:  # iter_size: the context is the last pass
                in_last = passes == last
                context = lines[in_last], ids[in_last], values[in_last]
        if (iteration, last) != trace._block_key:
            trace._block_key = (iteration, last)
            trace._block = []
        trace._block.append(_Values(keys, *context, run, iteration, last))
        if iteration is None:
            return
        layout = ids.tobytes()
        unique = self._layouts.get(layout, ids)
        if unique is not None:
            lines, ids, values = lines[unique], ids[unique], values[unique]
        rows = trace._rows
        if rows is not None and (rows.layout != layout or rows.keys is not keys
                                 or rows.iterations[-1] == iteration):
            self._store_rows(trace)
            rows = None
        if rows is None:
            rows = trace._rows = _Rows(keys, layout, ids)
        rows.iterations.append(iteration)
        rows.values.append(values)
        rows.lines.append(lines)
        if len(rows.iterations) * len(ids) >= ROWS_HELD:
            self._store_rows(trace)

    def _store_rows(self, trace: RunTrace) -> None:
        rows, trace._rows = trace._rows, None
        iterations = np.array(rows.iterations, dtype=np.int64)
        values, lines = np.vstack(rows.values), np.vstack(rows.lines)
        for column, key in enumerate(rows.ids.tolist()):
            key = rows.keys[key]
            series = trace.series.get(key)
            if series is None:
                series = trace.series[key] = Series()
            series.extend(iterations, values[:, column], lines[:, column], self.max_points)
