"""Place classified lines in context: run, iteration, phase, pass and test batch.

Caffe prints the debug block of a displayed iteration *before* its ``Iteration N, loss`` line,
so training debug values are held back until that line names their iteration. Test nets print
their own ``[Forward]`` lines between ``Testing net (#k)`` and ``Test net output``; those carry
phase "test", the net index and the batch index. With ``iter_size: k`` a block holds k
Forward/Backward passes. A new ``Initializing solver`` after training started begins a new run.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from itertools import repeat

import numpy as np

from caffelens import lines as L
from caffelens.prototxt import NetDefinition, ProtoTextError, SolverSettings, net_from_text
from caffelens.prototxt import solver_from_text
from caffelens.records import (
    BackwardNeed,
    BlobValue,
    Crash,
    Finished,
    GradientClip,
    LearningRate,
    Loss,
    NetConfig,
    NetNorms,
    Output,
    ParamSharing,
    Record,
    Resume,
    Snapshot,
    SolverConfig,
    Solving,
    StepChange,
    TestStart,
    TopShape,
)
from caffelens.sources import CHUNK, Source, iter_line_batches
from caffelens.tokens import LayoutCache, Tokenizer, Tokens, tokenize_source

MAX_DUMP_LINES = 200_000
MAX_DUMP_CHARS = 4_000_000
"""A protobuf dump longer than this is not a dump (glog cuts a message at 30,000 bytes; a
solver that embeds its net is longer, but not this long): stop collecting it."""

MAX_PENDING = 1_000_000
"""Debug values held back waiting for their display line; flushed beyond this."""

_TIMED = frozenset({"loss", "lr", "test_start", "output", "test_score"})
"""Events whose records carry the time (the clock starts at the first line with an event)."""

_ITER_IN_PATH = re.compile(r"_iter_(\d{1,18})")


@dataclass
class ParseStats:
    """What the parser saw: lines read, records produced, lines it could not make sense of."""

    lines: int = 0
    records: int = 0
    caffe_lines: int = 0
    """Lines recognised as Caffe output (glog-prefixed or a known message)."""
    malformed: int = 0
    """Lines that named a known kind but did not match its format (cut-off lines, say)."""
    bad_dumps: int = 0
    """Solver/net parameter dumps that could not be parsed."""


@dataclass
class _Clock:
    """Seconds since the first timestamp; mmdd dates roll over into the next year."""

    year: int = 2000  # a leap year, so 0229 is valid when the log does not say the year
    start: float | None = None
    last_month: int = 0
    cache: dict = field(default_factory=dict)

    def seconds(self, date: str, seconds_of_day: float) -> float | None:
        day = self.cache.get(date)
        if day is None:
            try:
                if len(date) == 4:
                    month = int(date[:2])
                    if month < self.last_month:
                        self.year += 1
                        self.cache.clear()
                    self.last_month = month
                day = L.glog_day(date, self.year)
            except ValueError:
                return None
            self.cache[date] = day
        t = day * 86400.0 + seconds_of_day
        if self.start is None:
            self.start = t
        return round((t - self.start) * 1e6) / 1e6  # whole microseconds, as glog prints


@dataclass
class _Layout:
    """A run of debug lines, by its sequence of keys."""

    starts_backward: bool
    ends_backward: bool
    passes: np.ndarray | None
    """Pass of each value counted from the first (None: all in one pass)."""
    batches: np.ndarray | None = None
    """Test batch of each value when the run starts a test (once a test has needed it)."""
    last_batch_keys: frozenset = frozenset()




class Parser:
    """Streaming parser: feed it lines, get records. Use :func:`parse` for the common case."""

    def __init__(self, fast: bool = True, blob_sink=None, block_sink=None,
                 record_sink=None) -> None:
        self.fast = fast
        """Use the skeleton cache for debug lines; False is the plain reference path."""
        self.blob_sink = blob_sink
        """Called with a debug value's fields (BlobValue's order, without the param ones)
        instead of building a record: `diagnose` keeps only what its rules need."""
        self.block_sink = block_sink
        """Called with runs of debug values as arrays (instead of a record or a ``blob_sink``
        call per value), ``(run, iteration,
        phase, net, keys, lines, ids, values, passes, batches)`` where ``keys[ids[i]]`` is
        value i's (direction, layer, role, blob, stat); passes (train) or batches (test) is
        None. See :meth:`caffelens.history.TraceBuilder.values`."""
        self.record_sink = record_sink
        """Called with each record instead of returning it, in log order with the calls to the
        two sinks above (returned records reach their reader only after a whole batch)."""
        self.stats = ParseStats()
        self.run = 0
        self.solver: SolverSettings | None = None
        self.train_net: NetDefinition | None = None
        self.test_nets: list[NetDefinition] = []
        self._clock = _Clock()
        self._trained = False  # this run has printed an iteration line
        self._last_display: int | None = None
        self._last_tested: int | None = None
        self._done = False
        self._crashed = False
        # debug attribution
        self._pending: list[tuple] = []
        self._pass = 0
        self._saw_backward = False
        self._phase = "train"
        self._test_net = 0
        self._test_iteration: int | None = None
        self._batch = 0
        self._batch_keys: set = set()
        self._test_outputs_seen = False
        self._multiline: tuple[str, str] | None = None  # NVCaffe 0.16 "[Forward] Layer L" header
        self._root_thread: int | None = None
        self.tokenizer = Tokenizer(fast)
        self.keys: list[tuple] = []  # key id -> (direction, layer, role, blob, stat)
        self._batch_key: list[tuple] = []  # key id -> (direction, layer, role, blob)
        self._backward = np.zeros(0, dtype=bool)  # key id -> is a Backward value
        self._pending_values = 0
        self._layouts = LayoutCache(self._work_out_layout)
        self.definitions = 0
        """Solver/net dumps read so far (param names may change with each)."""
        self._params: dict[tuple, tuple] = {}  # (phase, net, layer, printed param) -> (index, name)
        # start-up context
        self._dump: list[str] | None = None
        self._dump_kind = ""
        self._dump_line = 0
        self._dump_chars = 0
        self._setting_up: str | None = None
        self._after_lr: int | None = None  # iteration whose lr line was the last solver line

    # -- public ---------------------------------------------------------------------------

    def feed(self, text: str, number: int) -> Sequence[Record]:
        """Consume one line (``number`` is 1-based); return the records it completes."""
        return self.feed_lines([text], number)

    def feed_lines(self, lines: Sequence[str], number: int) -> list[Record]:
        """Consume consecutive lines, ``lines[0]`` being line ``number``; return their records.

        Debug lines repeat the same skeleton every displayed iteration: those seen before are
        read for the whole list at once (:mod:`caffelens.tokens`) and move on as numpy arrays;
        other lines take the general path. The records are those of the general path
        (``fast=False``), which tests check on every log we have, at every batch size.
        """
        return self.feed_tokens(self.tokenizer.tokenize(lines), number)

    def feed_tokens(self, tokens: Tokens, number: int) -> list[Record]:
        """:meth:`feed_lines` for lines already tokenized (maybe in another process)."""
        out: list[Record] = []
        emit = out.extend if self.record_sink is None else self._to_record_sink
        if tokens.new_keys:
            self.keys.extend(tokens.new_keys)
            self._backward = np.array([key[0] == "backward" for key in self.keys], dtype=bool)
            self._batch_key.extend(key[:4] for key in tokens.new_keys)
        ids, values = tokens.ids, tokens.values
        start = 0
        for index, text, prefix, event in tokens.others:
            if index > start:
                self._debug_run(ids[start:index], values[start:index], number + start, emit)
            self.stats.lines += 1
            emit(self._feed(text, number + index, prefix, event))
            start = index + 1
        if tokens.count > start:
            self._debug_run(ids[start:], values[start:], number + start, emit)
        return out

    def _to_record_sink(self, records: Iterable[Record]) -> None:
        for record in records:
            self.record_sink(record)

    def consume(self, source: Source, chunk_size: int = CHUNK, parallel: bool = False) -> None:
        """Read all of ``source`` into the sinks (``record_sink`` must be set); ``parallel``:
        tokenize in a helper process (see :func:`caffelens.tokens.tokenize_source`)."""
        if self.record_sink is None:
            raise ValueError("consume() needs a record_sink; iterate parse() for records")
        number = 1
        for tokens in tokenize_source(source, self.fast, chunk_size, parallel):
            self.feed_tokens(tokens, number)
            number += tokens.count
        self._to_record_sink(self.finish())

    def _test_run(self, ids: np.ndarray, values: np.ndarray, first: int,
                  layout: _Layout) -> list[Record]:
        """Test-net values: a key seen again in this test starts its next batch."""
        keys = self.keys
        if not self._batch_keys:  # the usual case, a test's first run: as worked out before
            if layout.batches is None:
                layout.batches, layout.last_batch_keys = self._batches(ids, set())
            batches = self._batch + layout.batches
            self._batch += int(layout.batches[-1])
            self._batch_keys = set(layout.last_batch_keys)
        else:
            found, _ = self._batches(ids, self._batch_keys)
            batches = self._batch + found
            self._batch += int(found[-1])
        if self.block_sink is not None:
            self.block_sink(self.run, self._test_iteration, "test", self._test_net, keys,
                            np.arange(first, first + len(ids)), ids, values, None, batches)
            return []
        out: list[Record] = []
        for number, key, value, batch in zip(range(first, first + len(ids)), ids.tolist(),
                                             values.tolist(), batches.tolist()):
            direction, layer, role, blob, stat = keys[key]
            out.extend(self._emit_blob(number, self._test_iteration, "test", self._test_net, 0,
                                       batch, direction, layer, role, blob, stat, value))
        return out

    def _batches(self, ids: np.ndarray, seen: set) -> tuple[np.ndarray, frozenset]:
        """Batch of each value counted from the current one, updating ``seen``, as
        :meth:`_blob` counts them: a (direction, layer, role, blob) seen again starts one."""
        batch, batches = 0, []
        for key in ids.tolist():
            key = self._batch_key[key]
            if key in seen:
                batch += 1
                seen.clear()
            seen.add(key)
            batches.append(batch)
        return np.array(batches), frozenset(seen)

    def _layout(self, ids: np.ndarray) -> _Layout:
        """What a run's sequence of keys means for passes (and test batches, worked out when
        a test needs them); runs repeat every display, so this is done once per sequence."""
        return self._layouts.get(ids.tobytes(), ids)

    def _work_out_layout(self, ids: np.ndarray) -> _Layout:
        backward = self._backward[ids]
        starts = np.zeros(len(ids), dtype=np.int64)
        starts[1:] = backward[:-1] & ~backward[1:]  # a Forward after a Backward
        return _Layout(bool(backward[0]), bool(backward[-1]),
                       np.cumsum(starts) if starts.any() else None)

    def _debug_run(self, ids: np.ndarray, values: np.ndarray, first: int, emit) -> None:
        """Consecutive debug lines with known skeletons, from line ``first`` on."""
        count = len(ids)
        self.stats.lines += count
        self.stats.caffe_lines += count
        if self._dump is not None:
            emit(self._finish_dump())  # a prefixed line ends a dump
        self._trained = True
        if self._phase == "test" and self._test_outputs_seen:
            self._phase = "train"  # the test is over; this is the next training block
        layout = self._layout(ids)
        if self._phase == "test":
            emit(self._test_run(ids, values, first, layout))
            return
        room = MAX_PENDING - self._pending_values
        while len(ids) > room:  # flush where the line-by-line path does: at MAX_PENDING values
            self._train_run(ids[:room], values[:room], first, self._layout(ids[:room]), emit)
            ids, values, first, room = ids[room:], values[room:], first + room, MAX_PENDING
            layout = self._layout(ids)
        self._train_run(ids, values, first, layout, emit)

    def _train_run(self, ids: np.ndarray, values: np.ndarray, first: int, layout: _Layout,
                   emit) -> None:
        # passes: a Forward value after a Backward one starts the next pass (iter_size)
        if self._saw_backward and not layout.starts_backward:
            self._pass += 1
        passes = self._pass
        if layout.passes is not None:
            passes = self._pass + layout.passes
            self._pass = int(passes[-1])
        self._saw_backward = layout.ends_backward
        self._pending.append(("values", first, ids, values, passes))
        self._pending_values += len(ids)
        if self._pending_values >= MAX_PENDING:
            emit(self._flush(self._predicted_iteration()))

    def _feed(self, text: str, number: int, prefix, event) -> Iterator[Record]:
        """One line the general way; ``prefix`` and ``event`` from :mod:`caffelens.lines`."""
        if self._dump is not None:
            if (prefix is None and len(self._dump) < MAX_DUMP_LINES
                    and self._dump_chars + len(text) < MAX_DUMP_CHARS and L.looks_like_proto(text)):
                self._dump.append(text)
                self._dump_chars += len(text) + 1
                return
            if prefix is not None and not L.split_prefix(text)[1].strip() and not self._dump:
                return  # NVCaffe/Intel print the dump header and an empty prefixed line
            yield from self._finish_dump()
        thread = time = None
        if prefix is not None:
            _, date, seconds, thread = prefix
            self.stats.caffe_lines += 1
        if event is None:
            return
        if prefix is None:
            self.stats.caffe_lines += 1
        elif event[0] in _TIMED or self._clock.start is None:
            time = self._clock.seconds(date, seconds)
        handler = getattr(self, "_on_" + event[0])
        yield from handler(event, number, time, thread)

    def finish(self) -> Iterator[Record]:
        """End of input: complete a dump in progress and flush held-back debug values."""
        if self._dump is not None:
            yield from self._finish_dump()
        yield from self._flush(self._predicted_iteration())

    # -- debug values ---------------------------------------------------------------------

    def _on_blob(self, event, number, time, thread):
        _, direction, layer, role, blob, stat, value = event
        return self._blob(direction, layer, role, blob, stat, value, number)

    def _on_blob_header(self, event, number, time, thread):
        self._multiline = (event[1], event[2])
        return ()

    def _on_blob_detail(self, event, number, time, thread):
        if self._multiline is None:
            self.stats.malformed += 1
            return
        _, role, blob, stat, value = event
        direction, layer = self._multiline
        yield from self._blob(direction, layer, role, blob, stat, value, number)

    def _blob(self, direction, layer, role, blob, stat, value, number) -> Sequence[Record]:
        self._trained = True
        if self._phase == "test" and self._test_outputs_seen:
            self._phase = "train"  # the test is over; this is the next training block
        if self._phase == "test":
            key = (direction, layer, role, blob)
            if key in self._batch_keys:
                self._batch += 1
                self._batch_keys.clear()
            self._batch_keys.add(key)
            return self._emit_blob(
                number, self._test_iteration, "test", self._test_net, 0, self._batch,
                direction, layer, role, blob, stat, value,
            )
        if direction == "forward" and self._saw_backward:
            self._pass += 1
            self._saw_backward = False
        elif direction == "backward":
            self._saw_backward = True
        self._pending.append(
            ("value", number, direction, layer, role, blob, stat, value, self._pass)
        )
        self._pending_values += 1
        if self._pending_values >= MAX_PENDING:
            return list(self._flush(self._predicted_iteration()))
        return ()

    def _on_input_blob(self, event, number, time, thread):
        return self._on_blob(event, number, time, thread)

    def _on_update(self, event, number, time, thread):
        _, layer, param, data, diff = event
        for stat, value in (("data", data), ("diff", diff)):
            yield from self._emit_blob(
                number, self._last_display, "train", 0, 0, None,
                "update", layer, "param", param, stat, value,
            )

    def _on_update_shared(self, event, number, time, thread):
        _, layer, param, _owner, _owner_param, diff = event
        yield from self._emit_blob(
            number, self._last_display, "train", 0, 0, None,
            "update", layer, "param", param, "diff", diff,
        )

    def _on_norms(self, event, number, time, thread):
        _, l1_data, l1_diff, l2_data, l2_diff = event
        item = ("norms", number, l1_data, l1_diff, l2_data, l2_diff, thread, self._pass)
        if self._phase == "test":
            self._phase = "train"
        other_worker = (
            self._root_thread is not None and thread is not None and thread != self._root_thread
        )
        if other_worker and all(p[0] == "norms" for p in self._pending):
            # multi-GPU: a non-root solver's line for the iteration just displayed
            yield NetNorms(number, self.run, self._last_display, 0, l1_data, l1_diff,
                           l2_data, l2_diff, thread)
            return
        self._saw_backward = True
        self._pending.append(item)

    def _flush(self, iteration: int | None) -> Iterator[Record]:
        pending, self._pending = self._pending, []
        self._pass = 0
        self._saw_backward = False
        self._pending_values = 0
        sink, run = self.blob_sink, self.run
        keys = self.keys
        bulk = self.block_sink is not None
        runs: list[tuple] = []  # consecutive debug runs, handed to block_sink together
        for item in pending:
            tag = item[0]
            if tag == "values" and bulk:
                runs.append(item)
                continue
            if runs:
                self._to_block_sink(iteration, runs)
                runs = []
            if tag == "values":
                _, first, ids, values, passes = item
                if isinstance(passes, int):
                    passes = repeat(passes)
                else:
                    passes = passes.tolist()
                for number, key, value, pass_index in zip(
                        range(first, first + len(ids)), ids.tolist(), values.tolist(), passes):
                    direction, layer, role, blob, stat = keys[key]
                    yield from self._emit_blob(
                        number, iteration, "train", 0, pass_index, None,
                        direction, layer, role, blob, stat, value,
                    )
            elif tag == "norms":
                _, number, l1d, l1g, l2d, l2g, thread, pass_index = item
                yield NetNorms(number, self.run, iteration, pass_index, l1d, l1g, l2d, l2g, thread)
            elif sink is not None:  # the hot loop of diagnose
                _, number, direction, layer, role, blob, stat, value, pass_index = item
                sink(number, run, iteration, "train", 0, pass_index, None,
                     direction, layer, blob, role, stat, value)
            else:
                _, number, direction, layer, role, blob, stat, value, pass_index = item
                yield from self._emit_blob(
                    number, iteration, "train", 0, pass_index, None,
                    direction, layer, role, blob, stat, value,
                )
        if runs:
            self._to_block_sink(iteration, runs)

    def _to_block_sink(self, iteration: int | None, runs: list[tuple]) -> None:
        if len(runs) == 1:  # the usual display block: one run of debug lines
            _, first, ids, values, passes = runs[0]
            lines = np.arange(first, first + len(ids))
        else:
            parts = [(np.arange(first, first + len(ids)), ids, values,
                      np.full(len(ids), passes) if isinstance(passes, int) else passes)
                     for _, first, ids, values, passes in runs]
            lines, ids, values, passes = [np.concatenate(column) for column in zip(*parts)]
        self.block_sink(self.run, iteration, "train", 0, self.keys, lines, ids, values, passes,
                        None)

    def _emit_blob(self, number, iteration, phase, net, pass_index, batch,
                   direction, layer, role, blob, stat, value) -> tuple:
        """The record for one debug value, or nothing when a ``blob_sink`` takes it."""
        if self.blob_sink is not None:
            self.blob_sink(number, self.run, iteration, phase, net, pass_index, batch,
                           direction, layer, blob, role, stat, value)
            return ()
        return (self._blob_record(number, iteration, phase, net, pass_index, batch,
                                  direction, layer, role, blob, stat, value),)

    def _blob_record(self, number, iteration, phase, net, pass_index, batch,
                     direction, layer, role, blob, stat, value) -> BlobValue:
        index = name = None
        if role == "param":
            index, name = self.param_of(phase, net, layer, blob)
        return BlobValue(number, self.run, iteration, phase, net, pass_index, batch,
                         direction, layer, blob, role, stat, value, index, name)

    def param_of(self, phase: str, net: int, layer: str, blob: str) -> tuple:
        """(index, name) of a printed param blob, as a BlobValue record gets them; changes
        when :attr:`definitions` does."""
        key = (phase, net, layer, blob)
        resolved = self._params.get(key)
        if resolved is None:
            resolved = self._params[key] = self._resolve_param(phase, net, layer, blob)
        return resolved

    def _resolve_param(self, phase, net, layer, blob):
        """A param prints as its index or, when named in the net, its name: give both."""
        definition = self.train_net if phase == "train" else (
            self.test_nets[net] if net < len(self.test_nets) else None
        )
        spec = definition.layer(layer) if definition is not None else None
        if blob.isdigit():
            index = int(blob)
            name = None
            if spec is not None and index < len(spec.params):
                name = spec.params[index].name
            return index, name
        if spec is not None:
            for i, param in enumerate(spec.params):
                if param.name == blob:
                    return i, blob
        return None, blob

    def _predicted_iteration(self) -> int | None:
        """The iteration a held-back block belongs to when its display line never came."""
        if self._last_tested is not None and (
            self._last_display is None or self._last_tested > self._last_display
        ):
            return self._last_tested
        if self._last_display is None:
            return None
        step = self.solver.display if self.solver and self.solver.display else None
        return self._last_display + step if step else None

    # -- solver lines ---------------------------------------------------------------------

    def _start_iteration_line(self, iteration: int, number: int) -> Iterator[Record]:
        if self._last_display is not None and iteration < self._last_display and self._trained:
            yield from self._flush(iteration)
            self._new_run(keep_config=True)
        self._trained = True

    def _on_loss(self, event, number, time, thread):
        _, iteration, value, rate = event
        yield from self._start_iteration_line(iteration, number)
        self._root_thread = thread
        yield from self._flush(iteration)
        self._phase = "train"
        self._last_display = iteration
        self._after_lr = None
        yield Loss(number, self.run, iteration, value, time, rate)

    def _on_lr(self, event, number, time, thread):
        _, iteration, value, momentum, decay, scale = event
        # never a new run: NVCaffe 0.17 prints `Iteration 39, lr` after `Iteration 40, loss`
        self._trained = True
        if self._pending and self._last_display != iteration:
            yield from self._flush(iteration)  # 2014 Caffe printed lr before loss
        self._after_lr = iteration
        yield LearningRate(number, self.run, iteration, value, momentum, decay, scale, time)

    def _on_test_start(self, event, number, time, thread):
        _, iteration, net = event
        yield from self._start_iteration_line(iteration, number)
        if self._pending:
            yield from self._flush(self._predicted_iteration())
        self._phase = "test"
        self._test_net = net
        self._test_iteration = iteration
        self._last_tested = iteration
        self._batch = 0
        self._batch_keys.clear()
        self._test_outputs_seen = False
        yield TestStart(number, self.run, iteration, net, time)

    def _on_output(self, event, number, time, thread):
        _, phase, index, name, value, weight = event
        if phase == "test":
            iteration, net = self._test_iteration, self._test_net
            self._test_outputs_seen = True
        else:
            iteration, net = self._last_display, 0
        yield Output(number, self.run, iteration, phase, net, index, name, value, weight, time)

    def _on_test_score(self, event, number, time, thread):
        _, index, value = event
        self._test_outputs_seen = True
        name = "score" if index >= 0 else "loss"
        yield Output(number, self.run, self._test_iteration, "test", self._test_net,
                     max(index, 0), f"{name}#{index}" if index >= 0 else name, value, None, time)

    def _on_clip(self, event, number, time, thread):
        _, norm, threshold, scale = event
        iteration = self._after_lr
        self._after_lr = None
        yield GradientClip(number, self.run, iteration, self._last_display, norm, threshold, scale)

    def _on_step(self, event, number, time, thread):
        _, iteration, step = event
        yield StepChange(number, self.run, iteration, step)

    def _on_solving(self, event, number, time, thread):
        yield Solving(number, self.run, event[1])

    def _on_snapshot(self, event, number, time, thread):
        path = event[1]
        m = _ITER_IN_PATH.search(path)
        yield Snapshot(number, self.run, int(m.group(1)) if m else self._last_display, path)

    def _on_resume(self, event, number, time, thread):
        path = event[1]
        m = _ITER_IN_PATH.search(path)
        yield Resume(number, self.run, path, int(m.group(1)) if m else None)

    def _on_done(self, event, number, time, thread):
        if self._done:
            return  # solver.cpp and caffe.cpp both print it
        yield from self._flush(self._last_display)
        self._done = True
        yield Finished(number, self.run, self._last_display, event[1])

    def _on_crash(self, event, number, time, thread):
        _, cause, message = event
        self._crashed = True
        yield Crash(number, self.run, self._last_display, cause, message, self._done)

    def _on_malformed(self, event, number, time, thread):
        self.stats.malformed += 1
        return ()

    def _on_log_created(self, event, number, time, thread):
        self._clock.year = event[1]
        return ()

    # -- start-up -------------------------------------------------------------------------

    def _on_solver_dump(self, event, number, time, thread):
        if self._trained or self._crashed:  # a run that died at start-up is a run too
            yield from self._flush(self._predicted_iteration())
            self._new_run(keep_config=False)
        self._dump, self._dump_kind, self._dump_line = [], "solver", number
        self._dump_chars = 0

    def _on_net_dump(self, event, number, time, thread):
        self._dump, self._dump_kind, self._dump_line = [], "net", number
        self._dump_chars = 0
        return ()

    def _finish_dump(self) -> Iterator[Record]:
        text, self._dump = "\n".join(self._dump or ()), None
        self._params.clear()  # a new net definition can name params differently
        self.definitions += 1
        try:
            # glog cuts a message at 30,000 bytes: big nets arrive truncated, keep what is there
            if self._dump_kind == "solver":
                self.solver = solver_from_text(text, partial=True)
                record: Record = SolverConfig(self._dump_line, self.run, self.solver)
            else:
                net = net_from_text(text, partial=True)
                if net.phase == "TEST":
                    self.test_nets.append(net)
                elif net.phase == "TRAIN" or self.train_net is None:
                    self.train_net = net  # (an LSTM's unrolled inner net has no phase)
                record = NetConfig(self._dump_line, self.run,
                                   (net.phase or "TRAIN").lower(), net)
        except (ProtoTextError, ValueError, OverflowError, RecursionError):
            self.stats.bad_dumps += 1
            return
        yield record

    def _on_setting_up(self, event, number, time, thread):
        self._setting_up = event[1]
        return ()

    def _on_shape(self, event, number, time, thread):
        yield TopShape(number, self.run, self._setting_up, event[1], event[2])

    def _on_sharing(self, event, number, time, thread):
        _, name, owner, index = event
        yield ParamSharing(number, self.run, self._setting_up, name, owner, index)

    def _on_needs_backward(self, event, number, time, thread):
        yield BackwardNeed(number, self.run, event[1], event[2])

    def _new_run(self, keep_config: bool) -> None:
        self.run += 1
        self._trained = False
        self._last_display = None
        self._last_tested = None
        self._done = False
        self._crashed = False
        self._phase = "train"
        if not keep_config:
            self.solver = None
            self.train_net = None
            self.test_nets = []


def parse(source: Source, parser: Parser | None = None,
          chunk_size: int = CHUNK) -> Iterator[Record]:
    """Yield the records of a Caffe log lazily.

    ``source`` is a path (plain, .gz, .bz2 or .xz), an open text or binary stream (stdin), or
    any iterable of lines. Malformed lines are skipped and counted in ``parser.stats``; pass
    your own :class:`Parser` to read them afterwards. ``chunk_size`` (characters of log per
    batch of lines) matters only to tests.
    """
    parser = parser or Parser()
    number = 1
    stats = parser.stats
    for batch in iter_line_batches(source, chunk_size):
        for record in parser.feed_lines(batch, number):
            stats.records += 1
            yield record
        number += len(batch)
    for record in parser.finish():
        stats.records += 1
        yield record
