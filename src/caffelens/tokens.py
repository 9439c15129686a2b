"""Read a batch of log lines into tokens: the stateless half of parsing, in bulk.

A debug line whose skeleton (the line after its timestamp, up to the value: `21757
net.cpp:651]     [Forward] Layer conv1, top blob conv1 data`) was read before becomes a key id
and a float, for the whole batch at once, with C-level ``map`` passes and numpy; any other line
is split into its glog prefix and classified (:mod:`caffelens.lines`) one at a time. Nothing
here knows iterations or runs, so a helper process can tokenize a big log while this one
places the tokens in context (:mod:`caffelens.assemble`): see :func:`tokenize_source`.
"""

from __future__ import annotations

import codecs
import contextlib
import multiprocessing
import os
import select
import signal
import sys
import threading
import time
import traceback
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from itertools import compress, cycle, repeat
from operator import add, getitem

import numpy as np

from caffelens import lines as L
from caffelens.sources import CHUNK, InputError, LineSplitter, Source, has_controls, is_compressed
from caffelens.sources import file_snapshot, iter_line_batches, iter_part_batches

MAX_SKELETONS = 100_000
"""Distinct debug-line skeletons remembered; a real net has a few thousand at most."""

_STAMP_SHAPE = bytes.maketrans(b"0123456789WEF", b"0000000000III")
"""A glog timestamp's shape: ``I1125 22:26:05.838073`` and ``E0101 00:00:00.000001`` alike."""


@dataclass
class Tokens:
    """One batch of lines, tokenized."""

    count: int
    ids: np.ndarray
    """Per line: the key id of a known debug line, -1 for a line in ``others``."""
    values: np.ndarray
    """Per line: the value of a known debug line (0 elsewhere)."""
    others: list[tuple]
    """(index in the batch, text, glog prefix or None, event or None), in line order."""
    new_keys: list[tuple]
    """Keys first seen in this batch, numbered on from the previous batches' keys: a key is
    (direction, layer, role, blob, stat)."""


class Tokenizer:
    """Tokenize batches of consecutive lines; learns debug skeletons as it goes."""

    def __init__(self, fast: bool = True) -> None:
        self.fast = fast
        """Learn skeletons; False sends every line the general way (the reference path)."""
        self.keys: list[tuple] = []
        self._key_ids: dict[tuple, int] = {}
        self._skeletons: dict[str, int] = {}
        self._key_start: int | None = None  # where skeletons start: the timestamp's width
        self._stamp_shape = b""  # and the timestamp's shape (see _STAMP_SHAPE)

    def tokenize(self, lines: Sequence[str]) -> Tokens:
        count = len(lines)
        known_keys = len(self.keys)
        if self._skeletons:
            colons = list(map(str.rfind, lines, repeat(": ")))
            skeletons = map(getitem, lines, map(slice, repeat(self._key_start), colons))
            ids = np.fromiter(map(self._skeletons.get, skeletons, repeat(-1)), np.int64, count)
            known = (ids >= 0).tolist()
            _check_stamps(lines, known, ids, self._key_start, self._stamp_shape)
            values = _read_values(lines, colons, known, ids)
            misses: Sequence[int] = np.flatnonzero(ids < 0).tolist()
        else:
            ids, values, misses = np.full(count, -1, np.int64), np.zeros(count), range(count)
        others = []
        for index in misses:
            text = lines[index]
            prefix, message = L.split_prefix(text)
            event = L.classify(message, None if prefix is None else prefix[0])
            if event is not None and event[0] == "blob" and self.fast:
                self._remember(text, event)
            others.append((index, text, prefix, event))
        return Tokens(count, ids, values, others, self.keys[known_keys:])

    def _remember(self, text: str, event: tuple) -> None:
        """Learn a debug line's skeleton when the bulk path would read it exactly as here."""
        q = text.rfind(": ")
        width = L.timestamp_width(text)
        if q <= 0 or width is None or len(self._skeletons) > MAX_SKELETONS:
            return
        if not text[:width].isascii():
            return  # the shape check below is ASCII-only: such lines go the general way
        try:
            L.glog_day(text[1:text.index(" ")])
        except ValueError:
            return  # the clock starts at the first date it can read: let it see this line
        if self._key_start is None:
            self._key_start = width
            self._stamp_shape = text[:width].encode().translate(_STAMP_SHAPE)
        if width != self._key_start:
            return  # another prefix layout (a concatenated log): the general path reads it
        raw = text[q + 2:]
        if not _plain_numbers(raw):
            return
        try:
            value = float(raw)
        except ValueError:
            return  # e.g. "7065.09 (0.140806)": always the general path
        if value == event[6] or (value != value and event[6] != event[6]):
            key = event[1:6]
            key_id = self._key_ids.get(key)
            if key_id is None:
                key_id = self._key_ids[key] = len(self.keys)
                self.keys.append(key)
            self._skeletons[text[width:q]] = key_id


def _check_stamps(lines: Sequence[str], known: list[bool], ids: np.ndarray, width: int,
                  shape: bytes) -> None:
    """Un-mark known skeletons that follow something other than a glog timestamp (spliced
    output, say): the general path would not read them as debug lines. One pass per batch."""
    stamps = list(map(getitem, compress(lines, known), repeat(slice(0, width))))
    joined = "".join(stamps)
    if joined.isascii() and joined.encode().translate(_STAMP_SHAPE) == shape * len(stamps):
        return
    for index, stamp in zip(np.flatnonzero(ids >= 0).tolist(), stamps):
        if not (stamp.isascii() and stamp.encode().translate(_STAMP_SHAPE) == shape):
            ids[index] = -1
            known[index] = False


def _read_values(lines: Sequence[str], colons: list[int], known: list[bool],
                 ids: np.ndarray) -> np.ndarray:
    """The value of every line with a known skeleton; a value the general path would read
    otherwise (MSVC's ``1.#QNAN``, ``7065.09 (0.14)``, ``1_0``) un-marks its line."""
    raw = list(map(getitem, compress(lines, known),
                   map(slice, map(add, compress(colons, known), repeat(2)), repeat(None))))
    values = np.zeros(len(lines))
    at = np.flatnonzero(ids >= 0)
    try:
        if _plain_numbers("\n".join(raw)):
            values[at] = np.fromiter(map(float, raw), np.float64, len(raw))
            return values
    except ValueError:
        pass
    for index, text in zip(at.tolist(), raw):  # rare: find the lines to read one by one
        try:
            if not _plain_numbers(text):
                raise ValueError(text)
            values[index] = float(text)
        except ValueError:
            ids[index] = -1
    return values


def _plain_numbers(joined: str) -> bool:
    """Values (one per line of ``joined``) the general path reads as float() does: no "_"
    (float accepts "1_0", C++ never prints it) and no whitespace before a number (the general
    pattern wants the number right after ": "). Non-ASCII text goes the general way."""
    return (joined.isascii() and "_" not in joined and "\n " not in joined
            and "\n\t" not in joined and not joined[:1].isspace())


class LayoutCache:
    """What a sequence of key ids means, worked out once: a display block repeats one
    sequence every display. Bounded: at most ``MAX`` sequences (runs cut at batch ends and
    shuffled blocks are one-offs), none longer than ``LONGEST`` ids (a run flushed without
    a display line can be a million)."""

    MAX = 128
    LONGEST = 1 << 16

    def __init__(self, work_out) -> None:
        self.work_out = work_out
        self.known: dict[bytes, object] = {}

    def get(self, name: bytes, ids: np.ndarray):
        """The meaning of ``ids``, whose ``tobytes()`` is ``name``."""
        try:
            return self.known[name]
        except KeyError:
            meaning = self.work_out(ids)
            if len(ids) <= self.LONGEST:
                if len(self.known) >= self.MAX:
                    self.known.clear()
                self.known[name] = meaning
            return meaning


# --- helper processes ---------------------------------------------------------------------------

def _start_method() -> str:
    """fork is quick and keeps the pipe of stdin, but unsafe on macOS and in a process that
    runs other threads (Jupyter, an application importing caffelens): spawn there."""
    if sys.platform.startswith("linux") and threading.active_count() == 1:
        return "fork"
    return "spawn"


def _cores() -> int:
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return cores or 1


def _spare_core() -> bool:
    return _cores() > 1

PARALLEL_MIN_BYTES = 8 << 20
"""Smaller files are read in this process: starting helpers would cost more than it saves."""

MAX_HELPERS = 3
"""Helper processes on a plain file, at most (a compressed one has one: it is read from the
start). Tokenizing costs about twice what assembling does, so two helpers keep up with this
process, and three when each has a core of its own; more would wait on this process."""


def _file_helpers() -> int:
    return min(max(_cores() - 1, 2), MAX_HELPERS)


def helpful(source: Source) -> bool:
    """Whether tokenizing ``source`` in helper processes can pay: a big file, a spare core."""
    if not isinstance(source, (str, os.PathLike)):
        return False
    try:
        # spawn would re-run a caller's unguarded script in each helper: only ask for it
        # explicitly (parallel=True); by default helpers are forked or not used
        return (_start_method() == "fork" and _spare_core()
                and os.path.getsize(source) >= PARALLEL_MIN_BYTES)
    except OSError:
        return False  # let the reader report it


def tokenize_source(source: Source, fast: bool = True, chunk_size: int = CHUNK,
                    parallel: bool = False) -> Iterator[Tokens]:
    """The tokens of ``source``, batch by batch, in order.

    With ``parallel`` (a path only), helper processes read and tokenize while the caller
    assembles: two or three of them take turns at 1 MiB slices of a plain file, one reads a
    compressed file. A batch waits in its pipe until taken, so helpers run a batch or two
    ahead and memory stays flat. Each helper learns skeletons on its own; key ids are made one
    here.
    """
    if not parallel:
        tokenizer = Tokenizer(fast)
        for batch in iter_line_batches(source, chunk_size):
            yield tokenizer.tokenize(batch)
        return
    path = os.fspath(source)  # type: ignore[arg-type]
    try:
        helpers, snapshot = ((1, None) if is_compressed(path)
                             else (_file_helpers(), file_snapshot(path)))
    except OSError:
        helpers, snapshot = 1, None  # the helper reports it as the single-process reader would
    with _started(_file_helper, [(path, fast, chunk_size, part, helpers, snapshot)
                                 for part in range(helpers)]) as pipes:
        keys = _KeyTable(helpers)
        for part in cycle(range(helpers)):  # batch k comes from helper k % helpers
            tokens = _receive(pipes[part], path)
            if tokens is None:
                return
            yield keys.renumber(part, tokens)


class _KeyTable:
    """One numbering of keys for the tokens of several helpers."""

    def __init__(self, helpers: int) -> None:
        self.keys: list[tuple] = []
        self.ids: dict[tuple, int] = {}
        self.local = [np.zeros(0, np.int64) for _ in range(helpers)]  # helper id -> ours

    def renumber(self, part: int, tokens: Tokens) -> Tokens:
        known = len(self.keys)
        if tokens.new_keys:
            ours = [self.ids.setdefault(key, len(self.ids)) for key in tokens.new_keys]
            self.keys.extend(key for key in tokens.new_keys if self.ids[key] >= known)
            self.local[part] = np.concatenate([self.local[part], np.array(ours, np.int64)])
        if len(self.local[part]):
            tokens.ids = np.where(tokens.ids >= 0, self.local[part][tokens.ids], -1)
        tokens.new_keys = self.keys[known:]
        return tokens


def stream_tokens(stream, fast: bool = True, wait: float = 0.1) -> Iterator[Tokens | None]:
    """Tokens of a pipe (stdin), read and tokenized in a helper process; None when nothing
    came for ``wait`` seconds, so a live view can redraw. Ends at end of input."""
    with _started(_pipe_helper, [(stream.fileno(), fast)]) as (pipe,):
        while True:
            if not pipe.poll(wait):
                yield None
                continue
            tokens = _receive(pipe, "<stdin>")
            if tokens is None:
                return
            yield tokens


def can_stream_tokens(stream) -> bool:
    """Whether :func:`stream_tokens` can read ``stream``: a file descriptor, fork, 2 cores."""
    try:
        stream.fileno()
    except (AttributeError, OSError, ValueError):
        return False
    return _start_method() == "fork" and _spare_core()


@contextlib.contextmanager
def _started(target, argument_lists: list[tuple]) -> Iterator[list]:
    """One helper process per argument list, each with a pipe to us; stopped on the way out
    (also when the reader stops early: Ctrl-C, watch --exit-on)."""
    context = multiprocessing.get_context(_start_method())
    pipes, processes = [], []
    try:
        for arguments in argument_lists:
            receiver, sender = context.Pipe(duplex=False)
            pipes.append(receiver)
            try:
                process = context.Process(target=target, args=(*arguments, sender), daemon=True)
                with _ctrl_c_held():  # never delivered to a helper half-started
                    process.start()
            finally:
                sender.close()
            processes.append(process)
        yield pipes
    finally:
        for receiver in pipes:
            receiver.close()
        for process in processes:
            if process.is_alive():
                process.terminate()
            process.join()


@contextlib.contextmanager
def _ctrl_c_held() -> Iterator[None]:
    """Hold Ctrl-C back meanwhile; it is delivered right after. A helper started now is born
    with it blocked and ignores it before unblocking it (:func:`_serve`): Ctrl-C is the
    reader's, which stops its helpers."""
    if not hasattr(signal, "pthread_sigmask"):  # Windows: the helper ignores it in _serve
        yield
        return
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


def _receive(pipe, name: str) -> Tokens | None:
    """The next tokens from a helper; None at the end of the input."""
    try:
        kind, payload = pipe.recv()
    except EOFError:
        raise InputError(f"reading {name}: a helper process ended unexpectedly (killed, or "
                         f"it could not start)") from None
    if kind == "tokens":
        return payload
    if kind == "input-error":
        raise InputError(payload)
    if kind == "error":  # a bug: one line, the helper's traceback as its cause
        last = payload.strip().splitlines()[-1]
        raise RuntimeError(f"tokenizing {name} failed in a helper process: {last}") \
            from _HelperTraceback(payload)
    return None


class _HelperTraceback(Exception):
    """Where a helper process failed, as it printed it."""


def _serve(batches: Iterator[list[str]], fast: bool, sender) -> None:
    """A helper's life: tokenize each batch and send it, then the end (or what went wrong)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the reader's (see _ctrl_c_held)
    if hasattr(signal, "pthread_sigmask"):
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})
    try:
        tokenizer = Tokenizer(fast)
        for batch in batches:
            sender.send(("tokens", tokenizer.tokenize(batch)))
        sender.send(("end", None))
    except InputError as exc:
        sender.send(("input-error", str(exc)))
    except BrokenPipeError:
        pass  # the reader stopped early (usually it terminates us first)
    except Exception:  # reported in the main process, with where it happened
        sender.send(("error", traceback.format_exc()))
    finally:
        sender.close()


def _file_helper(path: str, fast: bool, chunk_size: int, part: int, parts: int, snapshot,
                 sender) -> None:
    if parts == 1:
        _serve(iter_line_batches(path, chunk_size), fast, sender)
    else:
        _serve(iter_part_batches(path, chunk_size, part, parts, snapshot), fast, sender)


COALESCE = 0.05
"""Longest a helper gathers a pipe's input into one batch."""


def _pipe_helper(fd: int, fast: bool, sender) -> None:
    _serve(_pipe_batches(fd), fast, sender)


def _pipe_batches(fd: int) -> Iterator[list[str]]:
    """Lines from a pipe as they come; a read error ends the input (what came is the log)."""
    splitter = LineSplitter()
    decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
    while True:
        try:
            data = os.read(fd, CHUNK)
            # a pipe gives 64 KB at a time: while more keeps coming, gather up to CHUNK for
            # at most COALESCE seconds (bigger batches cost less per line; alerts wait little)
            until = time.monotonic() + COALESCE
            while data and len(data) < CHUNK:
                left = until - time.monotonic()
                if left <= 0 or not select.select([fd], [], [], min(left, 0.002))[0]:
                    break
                more = os.read(fd, CHUNK - len(data))
                if not more:
                    break
                data += more
        except OSError:
            data = b""
        lines = splitter.feed(decoder.decode(data, final=not data), has_controls(data))
        if not data:
            lines += splitter.flush()
        if lines:
            yield lines
        if not data:
            return
