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
import itertools
import multiprocessing
import os
import time
import traceback
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from itertools import compress, repeat
from operator import add, getitem

import numpy as np

from caffelens import lines as L
from caffelens.sources import CHUNK, InputError, LineSplitter, Source, has_controls, is_compressed
from caffelens.sources import iter_line_batches, iter_part_batches

MAX_SKELETONS = 100_000
"""Distinct debug-line skeletons remembered; a real net has a few thousand at most."""


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

    def tokenize(self, lines: Sequence[str]) -> Tokens:
        count = len(lines)
        known_keys = len(self.keys)
        if self._skeletons:
            colons = list(map(str.rfind, lines, repeat(": ")))
            skeletons = map(getitem, lines, map(slice, repeat(self._key_start), colons))
            ids = np.fromiter(map(self._skeletons.get, skeletons, repeat(-1)), np.int64, count)
            values = _read_values(lines, colons, ids)
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
        if self._key_start is None:
            self._key_start = width
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


def _read_values(lines: Sequence[str], colons: list[int], ids: np.ndarray) -> np.ndarray:
    """The value of every line with a known skeleton; a value the general path would read
    otherwise (MSVC's ``1.#QNAN``, ``7065.09 (0.14)``, ``1_0``) un-marks its line."""
    known = (ids >= 0).tolist()
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


# --- helper processes ---------------------------------------------------------------------------

PARALLEL_MIN_BYTES = 8 << 20
"""Smaller files are read in this process: starting helpers would cost more than it saves."""

HELPERS = 2
"""Helper processes on a plain file (a compressed one has one: it is read from the start)."""


def helpful(source: Source) -> bool:
    """Whether tokenizing ``source`` in helper processes can pay: a big file, a spare core."""
    if not isinstance(source, (str, os.PathLike)):
        return False
    try:
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
        return (cores or 1) > 1 and os.path.getsize(source) >= PARALLEL_MIN_BYTES
    except OSError:
        return False  # let the reader report it


def tokenize_source(source: Source, fast: bool = True, chunk_size: int = CHUNK,
                    parallel: bool = False) -> Iterator[Tokens]:
    """The tokens of ``source``, batch by batch, in order.

    With ``parallel`` (a path only), helper processes read and tokenize while the caller
    assembles: two of them take alternate slices of a plain file, one reads a compressed
    file. A batch waits in its pipe until taken, so helpers run a batch or two ahead and
    memory stays flat. Each helper learns skeletons on its own; key ids are made one here.
    """
    if not parallel:
        tokenizer = Tokenizer(fast)
        for batch in iter_line_batches(source, chunk_size):
            yield tokenizer.tokenize(batch)
        return
    path = os.fspath(source)  # type: ignore[arg-type]
    try:
        helpers = 1 if is_compressed(path) else HELPERS
    except OSError:
        helpers = 1  # the helper reports the error as the single-process reader would
    context = multiprocessing.get_context("fork" if os.name == "posix" else "spawn")
    pipes, processes = [], []
    try:
        for part in range(helpers):
            receiver, sender = context.Pipe(duplex=False)
            process = context.Process(target=_helper, daemon=True,
                                      args=(path, fast, chunk_size, part, helpers, sender))
            process.start()
            sender.close()
            pipes.append(receiver)
            processes.append(process)
        keys = _KeyTable(helpers)
        for batch in itertools.count():
            part = batch % helpers
            try:
                kind, payload = pipes[part].recv()
            except EOFError:
                raise InputError(f"{path}: the reading process died") from None
            if kind == "tokens":
                yield keys.renumber(part, payload)
            elif kind == "input-error":
                raise InputError(payload)
            elif kind == "error":
                raise RuntimeError(f"tokenizing {path} failed:\n{payload}")
            else:
                return
    finally:
        for receiver in pipes:
            receiver.close()
        for process in processes:
            if process.is_alive():
                process.terminate()
            process.join()


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


COALESCE = 0.05
"""Longest a helper gathers a pipe's input into one batch."""


def stream_tokens(stream, fast: bool = True, wait: float = 0.1) -> Iterator[Tokens | None]:
    """Tokens of a pipe (stdin), read and tokenized in a helper process; None when nothing
    came for ``wait`` seconds, so a live view can redraw. Ends at end of input."""
    context = multiprocessing.get_context("fork")
    receiver, sender = context.Pipe(duplex=False)
    process = context.Process(target=_stream_helper, args=(stream.fileno(), fast, sender),
                              daemon=True)
    process.start()
    sender.close()
    try:
        while True:
            if not receiver.poll(wait):
                yield None
                continue
            try:
                kind, payload = receiver.recv()
            except EOFError:
                return
            if kind == "tokens":
                yield payload
            elif kind == "error":
                raise RuntimeError(f"reading the input failed:\n{payload}")
            else:
                return
    finally:
        receiver.close()
        if process.is_alive():
            process.terminate()
        process.join()


def can_stream_tokens(stream) -> bool:
    """Whether :func:`stream_tokens` can read ``stream``: a file descriptor, fork, 2 cores."""
    try:
        stream.fileno()
    except (AttributeError, OSError, ValueError):
        return False
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return "fork" in multiprocessing.get_all_start_methods() and (cores or 1) > 1


def _stream_helper(fd: int, fast: bool, sender) -> None:
    import select

    try:
        tokenizer = Tokenizer(fast)
        splitter = LineSplitter()
        decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        while True:
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
            lines = splitter.feed(decoder.decode(data, final=not data), has_controls(data))
            if not data:
                lines += splitter.flush()
            if lines:
                sender.send(("tokens", tokenizer.tokenize(lines)))
            if not data:
                break
        sender.send(("end", None))
    except BrokenPipeError:
        pass
    except OSError:
        sender.send(("end", None))  # the input went away: what was read is the log
    except Exception:
        sender.send(("error", traceback.format_exc()))
    finally:
        sender.close()


def _helper(path: str, fast: bool, chunk_size: int, part: int, parts: int, sender) -> None:
    try:
        tokenizer = Tokenizer(fast)
        if parts == 1:
            batches = iter_line_batches(path, chunk_size)
        else:
            batches = iter_part_batches(path, chunk_size, part, parts)
        for batch in batches:
            sender.send(("tokens", tokenizer.tokenize(batch)))
        sender.send(("end", None))
    except InputError as exc:
        sender.send(("input-error", str(exc)))
    except BrokenPipeError:
        pass  # the reader stopped early
    except Exception:  # reported in the main process, with where it happened
        sender.send(("error", traceback.format_exc()))
    finally:
        sender.close()
