"""Turn a path, a compressed file, a stream or an iterable into log lines, lazily.

Logs are untrusted: bytes are decoded as UTF-8 with replacement, a line longer than
``MAX_LINE`` characters is cut (the rest up to its newline is skipped, so memory stays bounded),
``\\r\\n`` endings are stripped, and a line redrawn with lone ``\\r`` (progress bars) keeps what a
terminal would show last.
"""

from __future__ import annotations

import bz2
import codecs
import gzip
import io
import lzma
import os
import re
import zlib
from collections.abc import Iterable, Iterator
from typing import BinaryIO, TextIO, Union

MAX_LINE = 1 << 20
"""Longest line kept, in characters; no Caffe line comes near it."""

CHUNK = 1 << 20

Source = Union[str, os.PathLike, BinaryIO, TextIO, Iterable[str]]


class InputError(Exception):
    """The input cannot be read at all (missing, a directory, unreadable, corrupt archive)."""


_MAGIC = (
    (b"\x1f\x8b", gzip.open),
    (b"BZh", bz2.open),
    (b"\xfd7zXZ\x00", lzma.open),
)


def open_binary(path: str | os.PathLike) -> BinaryIO:
    """Open a log file, decompressing gzip/bz2/xz by their magic bytes (not the name)."""
    try:
        raw = open(path, "rb")
    except FileNotFoundError:
        raise InputError(f"{os.fspath(path)}: no such file") from None
    except IsADirectoryError:
        raise InputError(f"{os.fspath(path)}: is a directory, not a log file") from None
    except PermissionError:
        raise InputError(f"{os.fspath(path)}: permission denied") from None
    except OSError as exc:
        raise InputError(f"{os.fspath(path)}: {exc.strerror or exc}") from None
    head = raw.peek(8)[:8] if hasattr(raw, "peek") else b""
    for magic, opener in _MAGIC:
        if head.startswith(magic):
            return opener(raw)  # type: ignore[operator]
    return raw


def iter_lines(source: Source, chunk_size: int = CHUNK) -> Iterator[str]:
    """Yield the lines of ``source`` without their line endings."""
    for batch in iter_line_batches(source, chunk_size):
        yield from batch


def iter_line_batches(source: Source, chunk_size: int = CHUNK) -> Iterator[list[str]]:
    """Yield the lines of ``source`` in lists, about ``chunk_size`` characters of log each.

    The parser takes a list at a time so that it can recognise repeated debug lines with a
    few C-level passes over the list instead of Python code per line.
    """
    if isinstance(source, (str, os.PathLike)):
        with open_binary(source) as stream:
            yield from _split_binary(stream, chunk_size, os.fspath(source))
        return
    if isinstance(source, io.TextIOBase) or hasattr(source, "buffer"):
        buffer = getattr(source, "buffer", None)
        if buffer is not None:
            yield from _split_binary(buffer, chunk_size, getattr(source, "name", "<stream>"))
            return
    if hasattr(source, "read"):
        probe = source.read(0)  # type: ignore[union-attr]
        if isinstance(probe, bytes):
            yield from _split_binary(source, chunk_size, "<stream>")  # type: ignore[arg-type]
        else:
            yield from _split_text(iter(lambda: source.read(chunk_size), ""))  # type: ignore[union-attr]
        return
    yield from _split_items(source, chunk_size)  # type: ignore[arg-type]


def _split_items(items: Iterable[str], chunk_size: int) -> Iterator[list[str]]:
    """An iterable of lines: each item is one line (its newline optional), cut if too long."""
    batch: list[str] = []
    size = 0
    for item in items:
        if isinstance(item, (bytes, bytearray)):
            item = bytes(item).decode("utf-8", "replace")
        if item.endswith("\n"):
            item = item[:-1]
        if "\n" in item:
            for lines in _split_text((item,)):
                batch.extend(lines)
        else:
            batch.append(_clean(item[:MAX_LINE]))
        size += len(item) + 1
        if size >= chunk_size:
            yield batch
            batch, size = [], 0
    if batch:
        yield batch


def is_compressed(path: str | os.PathLike) -> bool:
    """Whether ``path`` starts with a gzip, bzip2 or xz signature."""
    with open(path, "rb") as stream:
        head = stream.read(8)
    return any(head.startswith(magic) for magic, _ in _MAGIC)


def iter_part_batches(path: str | os.PathLike, chunk_size: int, part: int, parts: int,
                      snapshot: tuple[int, int, int] | None = None) -> Iterator[list[str]]:
    """Batches ``part``, ``part + parts``, … of a plain (uncompressed) file, batch k being
    the lines that start in bytes [k·chunk_size, (k+1)·chunk_size): processes reading one file
    side by side each take every ``parts``-th batch; the batches together are
    :func:`iter_line_batches`' lines. A batch may be empty (inside a very long line).

    ``snapshot`` is (size, device, inode) as the caller saw the file: every part reads that
    file up to that size, so a log that grows meanwhile is cut at one place for all, and one
    that is replaced is an error rather than two files mixed."""
    name = os.fspath(path)
    try:
        stream = open(path, "rb")
    except OSError as exc:
        raise InputError(f"{name}: {exc.strerror or exc}") from None
    with stream:
        status = os.fstat(stream.fileno())
        size = status.st_size
        if snapshot is not None:
            if (status.st_dev, status.st_ino) != snapshot[1:]:
                raise InputError(f"{name}: the file was replaced while it was being read")
            size = min(size, snapshot[0])
        k = part
        while k * chunk_size < size:
            stop = min((k + 1) * chunk_size, size)
            start = _line_start(stream, k * chunk_size, stop)
            if start == stop:
                yield []  # inside a long line that an earlier batch reads
            else:
                end = _line_start(stream, stop, size)
                stream.seek(start)
                yield [line for lines in _split_binary(_Range(stream, end - start), chunk_size,
                                                       name)
                       for line in lines]
            k += parts


def file_snapshot(path: str | os.PathLike) -> tuple[int, int, int]:
    """(size, device, inode) of a file, for :func:`iter_part_batches`."""
    status = os.stat(path)
    return status.st_size, status.st_dev, status.st_ino


def _line_start(stream: BinaryIO, offset: int, limit: int) -> int:
    """The first offset in [``offset``, ``limit``) where a line starts, else ``limit``: the
    scan stops at ``limit``, so slices inside one long line cost their own length only."""
    if offset == 0:
        return 0
    stream.seek(offset - 1)
    position = offset - 1  # a newline at p starts a line at p + 1
    while position < limit - 1:
        piece = stream.read(min(1 << 16, limit - 1 - position))
        if not piece:
            break  # the file shrank
        newline = piece.find(b"\n")
        if newline >= 0:
            return position + newline + 1
        position += len(piece)
    return limit


class _Range:
    """At most ``size`` bytes of ``stream`` from where it stands."""

    def __init__(self, stream: BinaryIO, size: int) -> None:
        self.stream, self.left = stream, size

    def read1(self, size: int) -> bytes:
        data = self.stream.read(min(size, self.left))
        self.left -= len(data)
        return data


def _split_binary(stream: BinaryIO, chunk_size: int, name: str) -> Iterator[list[str]]:
    decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")

    def chunks() -> Iterator[str]:
        while True:
            try:
                data = stream.read1(chunk_size) if hasattr(stream, "read1") else stream.read(chunk_size)
            except (OSError, EOFError, lzma.LZMAError, zlib.error) as exc:
                raise InputError(f"{name}: corrupt or truncated compressed data ({exc})") from None
            if not data:
                tail = decoder.decode(b"", final=True)
                if tail:
                    yield tail, None
                return
            yield decoder.decode(data), has_controls(data)

    splitter = LineSplitter()
    for piece, controls in chunks():
        lines = splitter.feed(piece, controls)
        if lines:
            yield lines
    tail = splitter.flush()
    if tail:
        yield tail


class LineSplitter:
    """Incremental splitter: feed text as it arrives, get the lines it completes.

    A last line without its newline is held until the newline comes (or :meth:`flush`), so a
    growing log is never parsed half a line at a time. Over-long lines are cut at MAX_LINE.
    """

    def __init__(self) -> None:
        self._pending: list[str] = []
        self._pending_len = 0
        self._skipping = False  # inside an over-long line, dropping text until its newline

    def feed(self, piece: str, controls: bool | None = None) -> list[str]:
        """``controls``: whether ``piece`` holds a control character, when the caller knows
        (a bytes check is ten times cheaper than a text one)."""
        if "\n" not in piece:
            self._hold(piece)
            return []
        lines = piece.split("\n")  # C speed; the last part is the start of an unfinished line
        rest = lines.pop()
        if self._pending or self._skipping:
            self._hold(lines[0])
            lines[0] = _clean("".join(self._pending))  # a "\r" may end the previous piece
            self._pending.clear()
            self._pending_len = 0
            self._skipping = False
        if len(piece) > MAX_LINE:
            lines = [line[:MAX_LINE] for line in lines]
        if controls is None:
            controls = _CONTROL.search(piece) is not None
        if controls or "\r" in piece:
            lines = [_clean(line) for line in lines]
        self._hold(rest)
        return lines

    def flush(self) -> list[str]:
        """End of input: the held partial line, if any."""
        if not self._pending:
            return []
        line = _clean("".join(self._pending))
        self._pending.clear()
        self._pending_len = 0
        self._skipping = False
        return [line]

    @property
    def holding(self) -> bool:
        return bool(self._pending)

    def _hold(self, text: str) -> None:
        if self._skipping or not text:
            return
        room = MAX_LINE - self._pending_len
        if len(text) > room:
            text = text[:room]
            self._skipping = True
        self._pending.append(text)
        self._pending_len += len(text)


def _split_text(pieces: Iterable[str]) -> Iterator[list[str]]:
    """Re-split arbitrary text pieces into lines, cutting over-long ones; a list per piece."""
    splitter = LineSplitter()
    for piece in pieces:
        if not isinstance(piece, str):
            piece = bytes(piece).decode("utf-8", "replace")
        lines = splitter.feed(piece)
        if lines:
            yield lines
    tail = splitter.flush()
    if tail:
        yield tail


_CONTROL = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")
"""Control characters (NUL, ESC…): never part of a Caffe line, and an ESC from a log must not
reach the user's terminal."""


_CONTROL_BYTES = bytes([*range(0x00, 0x09), 0x0B, 0x0C, *range(0x0E, 0x20), 0x7F])


def has_controls(data: bytes) -> bool:
    """Whether ``data`` holds a byte that decodes to a character of ``_CONTROL``."""
    return len(data.translate(None, _CONTROL_BYTES)) != len(data)


def _clean(line: str) -> str:
    if "\r" in line:
        line = line.rstrip("\r")
        if "\r" in line:
            line = line.rsplit("\r", 1)[1] or line.replace("\r", "")
    if _CONTROL.search(line):
        line = _CONTROL.sub("", line)
    return line
