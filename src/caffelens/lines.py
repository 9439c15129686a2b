"""Classify one Caffe log line: split the glog prefix, then recognise the message.

This layer is stateless and knows nothing about iterations or runs; it turns a message into a
small event tuple ``(tag, *fields)`` that :mod:`caffelens.assemble` places in context. The
debug_info lines are the bulk of any log, so they are tested first, with a cheap substring test
before one compiled pattern. Every pattern is anchored and built from non-overlapping pieces
(``\\S+`` next to a literal space), so none can backtrack catastrophically on a long line.
"""

from __future__ import annotations

import datetime as _dt
import math
import re

# --- the glog prefix ------------------------------------------------------------------------

_PREFIX = re.compile(
    r"([IWEF])(\d{8}|\d{4}) (\d\d):(\d\d):(\d\d(?:\.\d{1,9})?) +(\d{1,18}) [^\]\s]*\] ?"
)


def split_prefix(line: str) -> tuple[tuple[str, str, float, int] | None, str]:
    """Return ``((level, date, seconds_of_day, thread), message)`` or ``(None, line)``.

    ``date`` is ``mmdd`` or ``yyyymmdd`` as printed; glog ≥ 0.6 adds the year.
    """
    m = _PREFIX.match(line)
    if m is None:
        return None, line
    level, date, hh, mm, ss, thread = m.groups()
    seconds = int(hh) * 3600 + int(mm) * 60 + float(ss)
    return (level, date, seconds, int(thread)), line[m.end():]


_TIMESTAMP = re.compile(r"[IWEF](?:\d{8}|\d{4}) \d\d:\d\d:\d\d(?:\.\d{1,9})?")


def timestamp_width(line: str) -> int | None:
    """Length of the glog level+date+time that opens ``line`` (None without one): the part of
    a debug line that changes from one display to the next, with the value."""
    m = _TIMESTAMP.match(line)
    return m.end() if m is not None else None


def glog_day(date: str, year: int = 2000) -> int:
    """The ordinal day of a glog date: ``yyyymmdd``, or ``mmdd`` in ``year`` (2000 is a leap
    year, so 0229 passes). ValueError for a date that does not exist."""
    if len(date) == 8:
        return _dt.date(int(date[:4]), int(date[4:6]), int(date[6:])).toordinal()
    return _dt.date(year, int(date[:2]), int(date[2:])).toordinal()


# --- numbers --------------------------------------------------------------------------------


def to_number(text: str) -> float:
    """Parse a number as C++ iostreams print it, including every NaN/Inf spelling.

    glibc prints ``nan``, ``-nan``, ``inf``; MSVC prints ``1.#QNAN``, ``-1.#IND``, ``1.#INF``,
    ``-nan(ind)``. Raises ValueError for anything else.
    """
    try:
        value = float(text)
    except ValueError:
        upper = text.upper()
        if "#" not in upper and "NAN(" not in upper:
            raise
        if "INF" in upper:
            return -math.inf if upper.startswith("-") else math.inf
        if "NAN" in upper or "IND" in upper:
            return math.nan
        raise
    if "_" in text:  # float() accepts "1_0"; C++ never prints it
        raise ValueError(text)
    return value


# --- message patterns -----------------------------------------------------------------------

_TAG = r"(?:[\[(]\d+(?:\.\d+)?[\])]\s*)?"  # NVCaffe 0.17 device tag: [0.0] train, (0.0) test

_DEBUG = re.compile(
    r"\s*" + _TAG + r"(?:\[debug_info\] )?\[(Forward|Backward)\] Layer (\S+), "
    r"(top|bottom|param) blob (\S+) "
    r"(data|diff): (\S+)(?: \((\S+)\))?\s*$"
)
_DEBUG_HEADER = re.compile(r"\s*\[(Forward|Backward)\] Layer (\S+)\s*$")
_DEBUG_DETAIL = re.compile(
    r"\s*-> (top|bottom|param) blob (\S+), count: \d+,? (data|diff): (\S+)\s*$"
)
_DEBUG_INPUT = re.compile(r"\s*\[Forward\] Input (\S+) data: (\S+)\s*$")
_NET_NORMS = re.compile(
    r"\s*" + _TAG + r"\[Backward\] All net params \(data, diff\): "
    r"L1 norm = \((\S+), (\S+)\); L2 norm = \((\S+), (\S+)\)\s*$"
)
_UPDATE = re.compile(
    r"\s*\[Update\] Layer (\S+), param (\S+) data: (\S+?)(?: \(\S+\))?; diff: (\S+?)"
    r"(?: \(\S+\))?\s*$"
)
_UPDATE_SHARED = re.compile(
    r"\s*\[Update\] Layer (\S+), param blob (\S+) \(owned by layer (\S+), param (\S+)\) "
    r"diff: (\S+)\s*$"
)
_ITERATION = re.compile(r"\s*" + _TAG + r"Iteration (\d{1,18})(?: \(([^()]*)\))?, (.*)")
_RATE = re.compile(r"(\S+) iter/s")
_LR_TAIL = re.compile(
    r"lr = ([^,\s]+)(?:, m = ([^,\s]+))?(?:, lrm = [^,\s]+)?(?:, wd = ([^,\s]+))?"
    r"(?:, gs = ([^,\s]+))?$"
)
_TESTING = re.compile(r"Testing net(?: \(#(\d{1,9})\))?$")
_OUTPUT = re.compile(
    r"\s*" + _TAG + r"(Train|Test) net output #(\d{1,9}): (\S+) = (\S+)"
    r"(?: \(\* (\S+) = (\S+) loss\))?\s*$"
)
_TEST_SCORE = re.compile(r"\s*Test score #(\d{1,9}): (\S+)\s*$")
_TEST_LOSS = re.compile(r"\s*Test loss: (\S+)\s*$")
_CLIP = re.compile(
    r"\s*" + _TAG + r"Gradient clipping: scaling down gradients \(L2 norm (\S+) > (\S+)\) "
    r"by scale factor (\S+)\s*$"
)
_STEP = re.compile(r"\s*" + _TAG + r"(?:MultiStep|Plateau) Status: Iteration (\d{1,18}), step = (\d{1,9})")
_SOLVING = re.compile(r"\s*" + _TAG + r"Solving (\S+)")
_TOP_SHAPE = re.compile(r"\s*Top shape: ([\d ]*)\((\d{1,30})\)\s*$")
_SETTING_UP = re.compile(r"\s*Setting up (\S+)\s*$")
_SHARING = re.compile(r"\s*Sharing parameters '(\S+)' owned by layer '(\S+)', param index (\d{1,9})")
_NEEDS_BACKWARD = re.compile(r"\s*(\S+) (needs|does not need) backward computation\.\s*$")
_SNAPSHOT = re.compile(r"\s*Snapshotting (?:solver state )?to (?:binary proto file |HDF5 file )?(\S+)")
_RESUME = re.compile(
    r"\s*(?:Resuming from|Restoring previous solver status from|Restoring solver state from) (\S+)"
)
_LOG_CREATED = re.compile(r"Log file created at: (\d{4})/(\d\d)/(\d\d)")
_GLIBC = re.compile(
    r"(double free or corruption|free\(\): invalid|malloc\(\): |corrupted size vs\. prev_size"
    r"|munmap_chunk\(\): invalid|terminate called after throwing|Segmentation fault"
    r"|Aborted \(core dumped\)|Floating point exception)"
)

_DIRECTION = {"Forward": "forward", "Backward": "backward"}


def classify(message: str, level: str | None = None) -> tuple | None:
    """Recognise one message (the text after the glog prefix) as an event tuple.

    Returns None for lines Caffe prints that carry nothing we use, and ``("malformed",)`` for a
    line that names a known kind but does not match its format (a cut-off line, say).
    """
    if "] Layer " in message:
        m = _DEBUG.match(message)
        if m is not None:
            direction, layer, role, blob, stat, value, mean = m.groups()
            try:
                number = to_number(mean if mean is not None else value)
            except ValueError:
                return ("malformed",)
            return ("blob", _DIRECTION[direction], layer, role, blob, stat, number)
        m = _DEBUG_HEADER.match(message)
        if m is not None:
            return ("blob_header", _DIRECTION[m.group(1)], m.group(2))
        if "[Update]" in message:
            return _classify_update(message)
        return ("malformed",)
    if "All net params" in message:
        m = _NET_NORMS.match(message)
        if m is None:
            return ("malformed",)
        try:
            return ("norms", *(to_number(v) for v in m.groups()))
        except ValueError:
            return ("malformed",)
    if " -> " in message and " blob " in message:
        m = _DEBUG_DETAIL.match(message)
        if m is not None:
            role, blob, stat, value = m.groups()
            try:
                return ("blob_detail", role, blob, stat, to_number(value))
            except ValueError:
                return ("malformed",)
    if "Iteration " in message:
        event = _classify_iteration(message)
        if event is not None:
            return event
    if " net output #" in message:
        m = _OUTPUT.match(message)
        if m is None:
            return ("malformed",)
        phase, index, name, value, weight, _weighted = m.groups()
        try:
            return (
                "output",
                phase.lower(),
                int(index),
                name,
                to_number(value),
                to_number(weight) if weight is not None else None,
            )
        except ValueError:
            return ("malformed",)
    if level == "F" or "Check failed" in message:
        return ("crash", "check-failed" if "Check failed" in message else "fatal",
                message.strip()[:2000])
    return _classify_rare(message)


def _classify_update(message: str) -> tuple:
    m = _UPDATE.match(message)
    try:
        if m is not None:
            layer, param, data, diff = m.groups()
            return ("update", layer, param, to_number(data), to_number(diff))
        m = _UPDATE_SHARED.match(message)
        if m is not None:
            layer, param, owner, owner_param, diff = m.groups()
            return ("update_shared", layer, param, owner, owner_param, to_number(diff))
    except ValueError:
        pass
    return ("malformed",)


def _classify_iteration(message: str) -> tuple | None:
    m = _STEP.match(message)
    if m is not None:
        return ("step", int(m.group(1)), int(m.group(2)))
    m = _ITERATION.match(message)
    if m is None:
        return None
    iteration, paren, rest = m.groups()
    iteration = int(iteration)
    rest = rest.rstrip()
    try:
        # "loss = X" ends the line; NVCaffe may put "5.1/8.2ep, " before it.
        at = rest.rfind("loss = ")
        if at >= 0 and " " not in rest[at + 7:]:
            rate = None
            if paren is not None:
                r = _RATE.match(paren)
                if r is not None:
                    rate = to_number(r.group(1))
            return ("loss", iteration, to_number(rest[at + 7:]), rate)
        tail = _LR_TAIL.match(rest)
        if tail is not None:
            lr, momentum, decay, scale = (
                None if v is None else to_number(v) for v in tail.groups()
            )
            return ("lr", iteration, lr, momentum, decay, scale)
    except ValueError:
        return ("malformed",)
    tail = _TESTING.match(rest)
    if tail is not None:
        return ("test_start", iteration, int(tail.group(1) or 0))
    return None


def _classify_rare(message: str) -> tuple | None:
    """Start-up, end and crash lines: a few per run, so clarity beats speed here."""
    stripped = message.strip()
    if stripped.startswith("Initializing solver from parameters"):
        return ("solver_dump",)
    if stripped.startswith("Initializing net from parameters"):
        return ("net_dump",)
    for pattern, tag in (
        (_TOP_SHAPE, "shape"),
        (_SETTING_UP, "setting_up"),
        (_SHARING, "sharing"),
        (_NEEDS_BACKWARD, "needs_backward"),
        (_TEST_SCORE, "test_score"),
        (_TEST_LOSS, "test_loss"),
        (_CLIP, "clip"),
        (_SNAPSHOT, "snapshot"),
        (_RESUME, "resume"),
        (_SOLVING, "solving"),
        (_DEBUG_INPUT, "input_blob"),
    ):
        m = pattern.match(message)
        if m is not None:
            return _convert(tag, m.groups())
    if stripped.startswith("Optimization Done"):
        return ("done", False)
    if stripped.startswith("Optimization stopped early"):
        return ("done", True)
    if stripped.startswith("*** Aborted at") or (
        stripped.startswith("*** SIG") and "received by PID" in stripped
    ):
        return ("crash", "signal", stripped)
    m = _GLIBC.search(stripped[:300])
    if m is not None and not stripped.startswith("@"):
        return ("crash", "abort", stripped[:500])
    m = _LOG_CREATED.match(stripped)
    if m is not None:
        return ("log_created", int(m.group(1)))
    return None


def _convert(tag: str, groups: tuple) -> tuple | None:
    try:
        if tag == "shape":
            if any(len(d) > 30 for d in groups[0].split()):
                return ("malformed",)
            dims = tuple(int(d) for d in groups[0].split())
            return ("shape", dims, int(groups[1]))
        if tag == "sharing":
            return ("sharing", groups[0], groups[1], int(groups[2]))
        if tag == "needs_backward":
            return ("needs_backward", groups[0], groups[1] == "needs")
        if tag in ("test_score", "test_loss"):
            index = int(groups[0]) if tag == "test_score" else -1
            return ("test_score", index, to_number(groups[-1]))
        if tag == "clip":
            return ("clip", *(to_number(g) for g in groups))
        if tag == "input_blob":
            return ("blob", "forward", "(input)", "top", groups[0], "data", to_number(groups[1]))
    except ValueError:
        return ("malformed",)
    return (tag, *groups)


_PROTO_LINE = re.compile(r"\s*(?:[A-Za-z_][\w.\[\]/]*\s*[:{]|\}\s*$|#|$)")


def looks_like_proto(line: str) -> bool:
    """True for a line of a protobuf text dump (``base_lr: 0.01``, ``layer {``, ``}``)."""
    return _PROTO_LINE.match(line) is not None
