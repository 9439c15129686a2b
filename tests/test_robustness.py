"""Robustness: damaged, hostile and strange input never breaks caffelens.

Every case has a defined outcome for ``diagnose``, ``export`` and ``watch`` (they share one
error handling: a one-line ``caffelens: error: …`` on stderr and exit 2 for input errors;
0/1 by the findings otherwise). Bugs found here are marked ``xfail(strict=True)`` with the
reason; when one is fixed its test starts passing and the marker must go.

Large inputs are generated in ``tmp_path``; timings compare a pathological line against a plain
line of the same size measured in the same test, so the limits hold on slow machines too.
"""

from __future__ import annotations

import builtins
import contextlib
import gzip
import io
import json
import lzma
import math
import os
import random
import re
import signal
import time
import tracemalloc
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

import caffelens
from caffelens import lines as L
from caffelens.cli import main
from caffelens.sources import MAX_LINE

from conftest import DATA, corpus_log

ROBUST = DATA / "robustness"
P = "I1125 22:24:33.004931 21757 solver.cpp:231] "
E = "E1125 22:24:33.004931 21757 net.cpp:591] "
HEALTHY = corpus_log("healthy").read_bytes()
NAN_INPUT = corpus_log("nan_input").read_bytes()
LR_EXPLODE = corpus_log("lr_explode_nan").read_bytes()
NO_DEBUG = corpus_log("no_debug_info").read_bytes()
COMMANDS = ["diagnose", "export", "watch"]


# --- helpers ------------------------------------------------------------------------------------


def argv(command: str, path) -> list[str]:
    """The command line reading ``path`` ("-" = stdin) to its end."""
    path = str(path)
    if command == "watch":
        return ["watch", "--plain"] + ([] if path == "-" else ["--no-follow", path])
    return [command, path]


def run(args, capsys, monkeypatch=None, stdin: bytes | None = None):
    if stdin is not None:
        monkeypatch.setattr("sys.stdin", io.TextIOWrapper(io.BytesIO(stdin)))
    code = main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


def assert_input_error(code: int, err: str, *fragments: str) -> None:
    """Exit 2 with exactly one line on stderr, naming the problem; never a traceback."""
    assert "Traceback" not in err and "internal error" not in err, err
    assert code == 2, err
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("caffelens: error: "), err
    for fragment in fragments:
        assert fragment.lower() in lines[0].lower(), (fragment, err)


def assert_analysed(code: int, err: str, expected: set[int] = frozenset({0, 1})) -> None:
    """Analysed: exit 0/1 and nothing on stderr (no traceback, no warning)."""
    assert "Traceback" not in err and "internal error" not in err, err
    assert code in expected, (code, err)
    assert err == "", err


def write(tmp_path: Path, name: str, data: bytes) -> Path:
    path = tmp_path / name
    path.write_bytes(data)
    return path


def same_number(a: float, b: float) -> bool:
    """Equal as floats go, NaN equal to NaN, and -0 distinct from 0."""
    if math.isnan(a) or math.isnan(b):
        return math.isnan(a) and math.isnan(b)
    return a == b and math.copysign(1, a) == math.copysign(1, b)


def strict_json(text: str):
    """json.loads that refuses NaN/Infinity tokens (the contract writes them as strings)."""
    def refuse(token):
        raise ValueError(f"non-finite JSON token {token}")
    return json.loads(text, parse_constant=refuse)


def codes(diagnosis) -> list[str]:
    return [f.code for f in diagnosis.findings]


class Overtime(BaseException):
    """Raised by the interval timer; a BaseException so no ``except Exception`` swallows it."""


@contextlib.contextmanager
def time_limit(seconds: float):
    """Stop the block after ``seconds`` (re matches check signals, so even a runaway regex)."""
    def alarm(signum, frame):
        raise Overtime(f"over {seconds:.2f} s")

    previous = signal.signal(signal.SIGALRM, alarm)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def timed(function, budget: float = 60.0) -> float:
    """Seconds ``function()`` took, or inf when it ran over ``budget``."""
    start = time.perf_counter()
    try:
        with time_limit(budget):
            function()
    except Overtime:
        return math.inf
    return time.perf_counter() - start


# --- missing, directory, unreadable, empty ---------------------------------------------------

FILE_COMMANDS = [
    "diagnose", "export", "watch",
    "watch-follow",  # without --no-follow: must fail at once, not wait for the file
]


def file_argv(command: str, path) -> list[str]:
    return ["watch", "--plain", str(path)] if command == "watch-follow" else argv(command, path)


@pytest.mark.parametrize("command", [
    "diagnose", "export", "watch-follow",
    pytest.param("watch"),
])
def test_missing_file(command, tmp_path, capsys):
    missing = tmp_path / "no" / "such.log"
    code, _, err = run(file_argv(command, missing), capsys)
    assert_input_error(code, err, str(missing), "no such file")


@pytest.mark.parametrize("command", FILE_COMMANDS)
def test_directory(command, tmp_path, capsys):
    code, _, err = run(file_argv(command, tmp_path), capsys)
    assert_input_error(code, err, str(tmp_path), "directory")


@pytest.mark.parametrize("command", FILE_COMMANDS)
def test_unreadable_file(command, tmp_path, capsys):
    path = write(tmp_path, "locked.log", HEALTHY[:5000])
    path.chmod(0)
    try:
        if os.access(path, os.R_OK):
            pytest.skip("chmod 000 does not stop this user from reading (root)")
        code, _, err = run(file_argv(command, path), capsys)
    finally:
        path.chmod(0o644)
    assert_input_error(code, err, str(path), "permission denied")


@pytest.mark.parametrize("command", FILE_COMMANDS)
def test_unreadable_file_simulated(command, tmp_path, capsys, monkeypatch):
    """The same as above for any user: open() of the log raises PermissionError."""
    path = write(tmp_path, "locked.log", HEALTHY[:5000])
    real_open = builtins.open

    def guarded(file, *args, **kwargs):
        if isinstance(file, (str, os.PathLike)) and os.fspath(file) == str(path):
            raise PermissionError(13, "Permission denied", str(path))
        return real_open(file, *args, **kwargs)

    monkeypatch.setattr(builtins, "open", guarded)
    code, _, err = run(file_argv(command, path), capsys)
    assert_input_error(code, err, str(path), "permission denied")


@pytest.mark.parametrize("command", COMMANDS)
def test_empty_file_and_empty_stdin(command, tmp_path, capsys, monkeypatch):
    path = write(tmp_path, "empty.log", b"")
    code, _, err = run(argv(command, path), capsys)
    assert_input_error(code, err, str(path), "empty log")
    code, _, err = run(argv(command, "-"), capsys, monkeypatch, stdin=b"")
    assert_input_error(code, err, "<stdin>", "empty log")


def test_library_input_errors(tmp_path):
    with pytest.raises(caffelens.InputError, match="no such file"):
        caffelens.diagnose(tmp_path / "missing.log")
    with pytest.raises(caffelens.InputError, match="directory"):
        list(caffelens.parse(tmp_path))
    with pytest.raises(caffelens.NotCaffeLog, match="empty log"):
        caffelens.diagnose(write(tmp_path, "empty.log", b""))


# --- not a Caffe log -------------------------------------------------------------------------


def _random_text(seed: int) -> bytes:
    rng = random.Random(seed)
    words = ["lorem", "ipsum", "dolor", "sit", "amet", "model", "epoch", "train", "0.25", "-",
             "GPU", "ok", "warning:", "[x]", "(y)", "#3", "=", "a,b", "::", "{", "}"]
    return "\n".join(" ".join(rng.choice(words) for _ in range(rng.randint(0, 12)))
                     for _ in range(200)).encode()


def _random_binary(seed: int) -> bytes:
    return random.Random(seed).randbytes(20_000)


NOT_CAFFE = {
    "python-traceback": (ROBUST / "python_traceback.log").read_bytes(),
    "nginx-access-log": (ROBUST / "nginx_access.log").read_bytes(),
    "random-text": _random_text(7),
    "random-binary": _random_binary(7),
    "solver-prototxt": (corpus_log("healthy").parent / "solver.prototxt").read_bytes(),
    "net-prototxt": (corpus_log("healthy").parent / "train_val.prototxt").read_bytes(),
    "blank-lines": b"\n  \n\t\n\r\n",
    "csv": b"NumIters,Seconds,LearningRate,loss\n0,0.1,0.01,2.3\n10,1.0,0.01,nan\n",
}


@pytest.mark.parametrize("command", COMMANDS)
@pytest.mark.parametrize("kind", NOT_CAFFE)
def test_not_a_caffe_log(kind, command, tmp_path, capsys):
    path = write(tmp_path, f"{kind}.log", NOT_CAFFE[kind])
    code, _, err = run(argv(command, path), capsys)
    assert_input_error(code, err, str(path), "no Caffe training lines found")


@pytest.mark.parametrize("command", COMMANDS)
def test_not_a_caffe_log_on_stdin(command, capsys, monkeypatch):
    code, _, err = run(argv(command, "-"), capsys, monkeypatch, stdin=NOT_CAFFE["nginx-access-log"])
    assert_input_error(code, err, "<stdin>", "no Caffe training lines found")


@pytest.mark.parametrize("command", [
    "diagnose", "watch",
    pytest.param("export"),
])
def test_glog_log_of_another_program(command, capsys):
    """glog prefixes alone do not make a Caffe log."""
    path = ROBUST / "other_glog_program.log"
    code, _, err = run(argv(command, path), capsys)
    assert_input_error(code, err, str(path), "no Caffe training lines found")


def _glog_line_outside_dump(line: bytes) -> bool:
    """A glog line that does not open a parameter dump (junk inside a dump ends the dump)."""
    return re.match(rb"[IWEF]\d{4} ", line) is not None and not line.rstrip().endswith(
        b"parameters:")


def _with_garbage(log: bytes, seed: int) -> bytes:
    """A garbage line after every glog line: tracebacks, web logs, binary and random junk."""
    rng = random.Random(seed)
    junk = (NOT_CAFFE["python-traceback"].splitlines() + NOT_CAFFE["nginx-access-log"].splitlines()
            + [rng.randbytes(40).replace(b"\n", b"").replace(b"\r", b"") for _ in range(30)])
    out = []
    for line in log.split(b"\n"):
        out.append(line)
        if _glog_line_outside_dump(line):
            out.append(rng.choice(junk))
    return b"\n".join(out)


@pytest.mark.parametrize("command", COMMANDS)
def test_caffe_lines_among_garbage_are_analysed(command, tmp_path, capsys):
    path = write(tmp_path, "mixed.log", _with_garbage(NAN_INPUT, 1))
    code, out, err = run(argv(command, path), capsys)
    clean_code, clean_out, _ = run(argv(command, corpus_log("nan_input")), capsys)
    assert_analysed(code, err)
    assert code == clean_code == (0 if command == "export" else 1)
    if command == "export":
        kinds = [json.loads(line)["kind"] for line in out.splitlines()]
        assert kinds == [json.loads(line)["kind"] for line in clean_out.splitlines()]


def test_garbage_does_not_change_the_findings():
    mixed = caffelens.diagnose(io.BytesIO(_with_garbage(NAN_INPUT, 2)))
    clean = caffelens.diagnose(io.BytesIO(NAN_INPUT))
    assert codes(mixed) == codes(clean)
    assert [f.iteration for f in mixed.findings] == [f.iteration for f in clean.findings]


# --- bytes: junk, encodings, NUL, line endings, huge lines -----------------------------------


def _records(source) -> list[dict]:
    return [r.to_dict() for r in caffelens.parse(source)]


CLEAN_HEALTHY = _records(io.BytesIO(HEALTHY))


def _without_lines(records: list[dict]) -> list[dict]:
    return [{k: v for k, v in r.items() if k != "line"} for r in records]


def test_binary_junk_lines_between_caffe_lines():
    rng = random.Random(3)
    out = []
    for line in HEALTHY.split(b"\n"):
        out.append(line)
        if _glog_line_outside_dump(line) and rng.random() < 0.5:
            out.append(rng.randbytes(rng.randint(1, 300)).replace(b"\n", b"#"))
    parser = caffelens.Parser()
    records = [r.to_dict() for r in caffelens.parse(io.BytesIO(b"\n".join(out)), parser)]
    # junk never becomes a record, and every Caffe line still does (same order, same values)
    assert _without_lines(records) == _without_lines(CLEAN_HEALTHY)
    assert all(1 <= r["line"] <= parser.stats.lines for r in records)


def test_nul_bytes_are_dropped():
    rng = random.Random(4)
    data = bytearray()
    for byte in HEALTHY:
        if rng.random() < 0.02:
            data += b"\x00" * rng.randint(1, 3)
        data.append(byte)
    assert _records(io.BytesIO(bytes(data))) == CLEAN_HEALTHY


@pytest.mark.parametrize("command", COMMANDS)
def test_crlf_line_endings(command, tmp_path, capsys):
    data = HEALTHY.replace(b"\n", b"\r\n")
    assert _records(io.BytesIO(data)) == CLEAN_HEALTHY
    code, _, err = run(argv(command, write(tmp_path, "crlf.log", data)), capsys)
    assert_analysed(code, err, {0})


def test_lone_cr_keeps_what_a_terminal_shows_last():
    """A line redrawn with \\r (progress bars) keeps its last state, as documented in sources."""
    lines = [
        b"Downloading data 10%\rDownloading data 55%\r" + (P + "Iteration 10, loss = 1.5").encode(),
        (P + "Iteration 20, loss = 1.25").encode() + b"\r",
        b"\r\r\r" + (P + "Iteration 30, loss = 1").encode(),
        b"\r",
    ]
    records = list(caffelens.parse(io.BytesIO(b"\n".join(lines))))
    assert [(r.kind, r.iteration, r.value, r.line) for r in records] == [
        ("loss", 10, 1.5, 1), ("loss", 20, 1.25, 2), ("loss", 30, 1.0, 3)]


def test_cr_only_file_is_one_redrawn_line():
    """A file with lone-\\r line ends is one line; only its last state is parsed."""
    data = b"\r".join((P + f"Iteration {i}, loss = {i}").encode() for i in range(0, 50, 10))
    records = list(caffelens.parse(io.BytesIO(data + b"\r")))
    assert [(r.kind, r.iteration, r.line) for r in records] == [("loss", 40, 1)]


@pytest.mark.parametrize("encoding_damage", [b"\xe9", b"\xff\xfe", b"\xc3", b"\xed\xa0\x80",
                                             b"\xf4\x90\x80\x80", b"\xc0\xaf"])
def test_invalid_utf8_and_latin1_in_names(encoding_damage):
    data = NAN_INPUT.replace(b"conv1", b"conv" + encoding_damage + b"1")
    records = list(caffelens.parse(io.BytesIO(data)))
    layers = {r.layer for r in records if r.kind == "blob"}
    damaged = {name for name in layers if name.startswith("conv") and name.endswith("1")}
    assert len(damaged) == 1 and "\ufffd" in damaged.pop()
    assert len(records) == len(list(caffelens.parse(io.BytesIO(NAN_INPUT))))
    assert codes(caffelens.diagnose(io.BytesIO(data))) == codes(
        caffelens.diagnose(io.BytesIO(NAN_INPUT)))


@pytest.mark.parametrize("command", COMMANDS)
def test_latin1_file_through_the_cli(command, tmp_path, capsys):
    data = NAN_INPUT.replace(b"conv1", b"conv\xe91").replace(b"Use CPU.", b"Use CPU \xb5s \xff.")
    code, out, err = run(argv(command, write(tmp_path, "latin1.log", data)) + (
        ["--format", "json"] if command == "diagnose" else []), capsys)
    assert_analysed(code, err)
    if command == "diagnose":
        assert strict_json(out)["logs"][0]["summary"]["lines"] == NAN_INPUT.count(b"\n")
    if command == "export":
        assert any(json.loads(line).get("layer") == "conv\ufffd1" for line in out.splitlines())


def _damaged_healthy() -> bytes:
    """Every kind of byte damage at once, none of which may change the analysis."""
    rng = random.Random(9)
    out = []
    for line in HEALTHY.replace(b"conv1", b"conv1_" + b"L" * 10_240).split(b"\n"):
        if rng.random() < 0.05:
            line = line[: len(line) // 2] + b"\x00" + line[len(line) // 2:]
        out.append(line + (b"\r" if rng.random() < 0.5 else b""))
        if _glog_line_outside_dump(line) and rng.random() < 0.3:
            out.append(rng.choice([rng.randbytes(200).replace(b"\n", b" "), b"caf\xe9 \xff\xfe",
                                   b"\xed\xa0\x80 surrogate", b"\x00\x00\x00"]))
    return b"\n".join(out)


@pytest.mark.parametrize("stdin", [False, True], ids=["file", "stdin"])
@pytest.mark.parametrize("command", COMMANDS)
def test_damaged_bytes_through_the_cli(command, stdin, tmp_path, capsys, monkeypatch):
    """NUL, CR, binary junk lines, invalid UTF-8 and a 10 kB layer name in a healthy log."""
    data = _damaged_healthy()
    if stdin:
        code, out, err = run(argv(command, "-"), capsys, monkeypatch, stdin=data)
    else:
        code, out, err = run(argv(command, write(tmp_path, "damaged.log", data)), capsys)
    assert_analysed(code, err, {0})
    if command == "export":
        records = [strict_json(line) for line in out.splitlines()]
        assert len(records) == len(CLEAN_HEALTHY)
        assert sum(r.get("layer") == "conv1_" + "L" * 10_240 for r in records) > 10


BIG = 50 << 20


def _with_huge_line(tmp_path: Path, at_end: bool = False) -> tuple[Path, int]:
    """The healthy log with a 50 MB line without a newline in the middle (or at the end)."""
    cut = HEALTHY.index(b"\n", len(HEALTHY) // 2) + 1
    path = tmp_path / "huge-line.log"
    with open(path, "wb") as f:
        if at_end:
            f.write(HEALTHY)
        else:
            f.write(HEALTHY[:cut])
        chunk = b"0123456789 [Forward] Layer x, top blob y data: " * 20_000
        for _ in range(BIG // len(chunk) + 1):
            f.write(chunk)
        if not at_end:
            f.write(b"\n" + HEALTHY[cut:])
    return path, cut


def test_50mb_line_parses_in_bounded_memory(tmp_path):
    path, _ = _with_huge_line(tmp_path)
    assert path.stat().st_size > BIG
    parser = caffelens.Parser()
    tracemalloc.start()
    try:
        start = time.perf_counter()
        records = [r.to_dict() for r in caffelens.parse(path, parser)]
        elapsed = time.perf_counter() - start
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 20 << 20, f"peak {peak / 2**20:.1f} MiB"
    assert elapsed < 30
    # the huge line is one (malformed or ignored) line; everything after it is still parsed
    assert parser.stats.lines == HEALTHY.count(b"\n") + 1
    assert _without_lines(records) == _without_lines(CLEAN_HEALTHY)
    huge_line = HEALTHY[: HEALTHY.index(b"\n", len(HEALTHY) // 2) + 1].count(b"\n") + 1
    assert [r["line"] for r in records] == [
        r["line"] + (r["line"] >= huge_line) for r in CLEAN_HEALTHY]


@pytest.mark.parametrize("command", COMMANDS)
def test_50mb_line_through_the_cli(command, tmp_path, capsys):
    path, _ = _with_huge_line(tmp_path)
    start = time.perf_counter()
    code, _, err = run(argv(command, path), capsys)
    assert_analysed(code, err, {0})
    assert time.perf_counter() - start < 30


def test_50mb_last_line_without_newline(tmp_path):
    path, _ = _with_huge_line(tmp_path, at_end=True)
    parser = caffelens.Parser()
    records = _records_with(path, parser)
    assert records == CLEAN_HEALTHY
    assert parser.stats.lines == HEALTHY.count(b"\n") + 1


def _records_with(source, parser) -> list[dict]:
    return [r.to_dict() for r in caffelens.parse(source, parser)]


def test_very_long_layer_names():
    long_name = "conv2_" + "x" * 10_240
    data = LR_EXPLODE.replace(b"conv2", long_name.encode())
    records = list(caffelens.parse(io.BytesIO(data)))
    assert any(r.kind == "blob" and r.layer == long_name for r in records)
    diagnosis = caffelens.diagnose(io.BytesIO(data))
    onset = next(f for f in diagnosis.findings if f.rule == "nan-onset")
    assert onset.layer == long_name
    from caffelens.report import FORMATS
    for name, render in FORMATS.items():
        text = render([diagnosis], 100)
        assert long_name in text or name in ("table",), name


# --- truncation and corrupt archives --------------------------------------------------------


def _cut_inside(log: bytes, marker: bytes, keep: int) -> bytes:
    """The log cut ``keep`` bytes into the last line containing ``marker`` (no newline)."""
    start = log.rindex(b"\n", 0, log.rindex(marker)) + 1
    return log[: start + keep]


@pytest.mark.parametrize("command", COMMANDS)
def test_truncated_last_line(command, tmp_path, capsys):
    """Cut inside a debug line: that line is malformed, the rest is a partial run (CL402)."""
    data = _cut_inside(HEALTHY, b"[Backward] Layer conv2, bottom blob pool1 diff", 80)
    parser = caffelens.Parser()
    diagnosis = caffelens.diagnose(io.BytesIO(data))
    list(caffelens.parse(io.BytesIO(data), parser))
    assert parser.stats.malformed == 1
    assert diagnosis.error is None and "CL402" in codes(diagnosis)
    code, _, err = run(argv(command, write(tmp_path, "cut.log", data)), capsys)
    assert_analysed(code, err, {0})


def test_log_cut_mid_iteration():
    """Cut after a debug block, before its `Iteration N, loss` line: the block is kept and
    given the iteration the display interval predicts; the run is reported truncated."""
    cut = HEALTHY.index(b"Iteration 110, loss")
    data = HEALTHY[: HEALTHY.rindex(b"\n", 0, cut) + 1]
    records = list(caffelens.parse(io.BytesIO(data)))
    losses = [r for r in records if r.kind == "loss"]
    assert losses[-1].iteration == 100
    tail = [r for r in records if r.kind == "blob" and r.line > losses[-1].line]
    assert tail and {r.iteration for r in tail if r.phase == "train"} <= {110}
    diagnosis = caffelens.diagnose(io.BytesIO(data))
    assert diagnosis.error is None
    truncated = next(f for f in diagnosis.findings if f.code == "CL402")
    assert truncated.iteration in (100, 110)


def test_cut_anywhere_never_raises():
    """Cut two logs at 80 seeded byte offsets: a diagnosis, or NotCaffeLog before any line."""
    rng = random.Random(5)
    for log in (NO_DEBUG, HEALTHY):
        first_caffe_line = log.index(b"] ") + 2
        for cut in sorted(rng.sample(range(len(log)), 40)):
            data = log[:cut]
            try:
                diagnosis = caffelens.diagnose(io.BytesIO(data))
            except caffelens.NotCaffeLog:
                assert cut < log.index(b"Iteration ") + 40, cut
                continue
            assert cut >= first_caffe_line
            assert diagnosis.error is None
            assert all(1 <= f.line <= diagnosis.stats.lines for f in diagnosis.findings if f.line)


@pytest.mark.parametrize("command", COMMANDS)
def test_cut_anywhere_through_the_cli(command, tmp_path, capsys):
    rng = random.Random(6)
    for i, cut in enumerate(sorted(rng.sample(range(len(NO_DEBUG)), 8))):
        path = write(tmp_path, f"cut{i}.log", NO_DEBUG[:cut])
        code, _, err = run(argv(command, path), capsys)
        if code == 2:
            assert_input_error(code, err, "no Caffe training lines found")
        else:
            assert_analysed(code, err)


GZ_GARBAGE = b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\x03" + b"garbage, not deflate" * 50


def test_corrupt_gzip_is_an_input_error(tmp_path):
    path = write(tmp_path, "corrupt.log.gz", GZ_GARBAGE)
    with pytest.raises(caffelens.InputError, match="corrupt or truncated compressed data"):
        list(caffelens.parse(path))
    with pytest.raises(caffelens.InputError, match="corrupt or truncated compressed data"):
        caffelens.diagnose(path)


@pytest.mark.parametrize("command", [
    pytest.param("diagnose"),
    pytest.param("export"),
    pytest.param("watch"),
])
def test_corrupt_gzip_through_the_cli(command, tmp_path, capsys):
    path = write(tmp_path, "corrupt.log.gz", GZ_GARBAGE)
    code, _, err = run(argv(command, path), capsys)
    assert_input_error(code, err, str(path), "corrupt or truncated compressed data")


def _half_gzip() -> bytes:
    compressed = gzip.compress(HEALTHY)
    return compressed[: len(compressed) // 2]


def test_gzip_cut_in_half_is_a_partial_result(tmp_path):
    """diagnose: a PARTIAL RESULT. What could be read is analysed, Diagnosis.error says why
    it stops, the table prints 'partial result:', the JSON carries "error"."""
    path = write(tmp_path, "half.log.gz", _half_gzip())
    diagnosis = caffelens.diagnose(path)
    assert diagnosis.error and "corrupt or truncated compressed data" in diagnosis.error
    assert diagnosis.stats.lines > 500 and "CL402" in codes(diagnosis)


@pytest.mark.parametrize("fmt", ["table", "json"])
def test_gzip_cut_in_half_diagnose_cli(fmt, tmp_path, capsys):
    path = write(tmp_path, "half.log.gz", _half_gzip())
    code, out, err = run(["diagnose", str(path), "--format", fmt], capsys)
    assert_analysed(code, err, {0})
    if fmt == "json":
        assert "corrupt or truncated" in strict_json(out)["logs"][0]["error"]
    else:
        assert "partial result:" in out


def test_gzip_cut_in_half_export_is_a_clear_error(tmp_path, capsys):
    """export: the records read so far are written, then a CLEAR ERROR (exit 2)."""
    path = write(tmp_path, "half.log.gz", _half_gzip())
    code, out, err = run(["export", str(path)], capsys)
    assert_input_error(code, err, str(path), "corrupt or truncated compressed data")
    assert len(out.splitlines()) > 300
    assert all(strict_json(line)["kind"] for line in out.splitlines())


@pytest.mark.parametrize("data", ["whole", "half"])
def test_watch_reads_gzip_like_diagnose(data, tmp_path, capsys):
    blob = gzip.compress(HEALTHY) if data == "whole" else _half_gzip()
    path = write(tmp_path, "train.log.gz", blob)
    expected, _, _ = run(["diagnose", str(path)], capsys)
    code, _, err = run(argv("watch", path), capsys)
    if data == "half":  # watch says on stderr that it read only part of the archive
        assert err.startswith("caffelens: partial result:") and len(err.splitlines()) == 1
        err = ""
    assert_analysed(code, err)
    assert code == expected


def test_corrupt_and_truncated_bz2_xz(tmp_path):
    """Garbage after the magic: a clear InputError. Truncated: partial result or clear error."""
    import bz2

    for name, data in (("bad.bz2", b"BZh9" + b"garbage" * 100),
                       ("bad.xz", b"\xfd7zXZ\x00" + b"garbage" * 100)):
        with pytest.raises(caffelens.InputError, match="corrupt or truncated compressed data"):
            caffelens.diagnose(write(tmp_path, name, data))
    for name, compress in (("half.bz2", bz2.compress), ("half.xz", lzma.compress)):
        blob = compress(HEALTHY * 8)
        path = write(tmp_path, name, blob[: len(blob) // 2])
        try:
            diagnosis = caffelens.diagnose(path)
        except caffelens.InputError as exc:
            assert "corrupt or truncated compressed data" in str(exc)
        else:
            assert "corrupt or truncated compressed data" in diagnosis.error


# --- interleaved processes, appended runs ---------------------------------------------------


def test_two_runs_appended_get_runs_0_and_1():
    records = list(caffelens.parse(io.BytesIO(HEALTHY + NAN_INPUT)))
    first = len(list(caffelens.parse(io.BytesIO(HEALTHY))))
    assert {r.run for r in records[:first]} == {0}
    assert {r.run for r in records[first:]} == {1}
    diagnosis = caffelens.diagnose(io.BytesIO(HEALTHY + NAN_INPUT))
    assert diagnosis.summary()["runs"] == 2
    assert {f.run for f in diagnosis.findings if f.code in ("CL101", "CL102")} == {1}


@pytest.mark.parametrize("command", COMMANDS)
def test_same_run_appended_twice(command, tmp_path, capsys):
    records = list(caffelens.parse(io.BytesIO(HEALTHY + HEALTHY)))
    assert [r.run for r in records] == [0] * len(CLEAN_HEALTHY) + [1] * len(CLEAN_HEALTHY)
    code, _, err = run(argv(command, write(tmp_path, "twice.log", HEALTHY + HEALTHY)), capsys)
    assert_analysed(code, err, {0})


def _interleave(a: bytes, b: bytes, seed: int) -> bytes:
    rng = random.Random(seed)
    left, right = a.split(b"\n"), b.split(b"\n")
    out: list[bytes] = []
    while left or right:
        source = left if left and (not right or rng.random() < 0.5) else right
        k = rng.randint(1, 6)
        out += source[:k]
        del source[:k]
    return b"\n".join(out)


@pytest.mark.parametrize("command", COMMANDS)
def test_two_processes_interleaved(command, tmp_path, capsys):
    """Two trainings (thread ids 21757 and 21815) writing one file: no crash, every loss line
    is read, and the NaN of the broken one is still found."""
    data = _interleave(HEALTHY, NAN_INPUT, 8)
    assert b" 21757 " in data and b" 21815 " in data
    records = list(caffelens.parse(io.BytesIO(data)))
    expected_losses = len(re.findall(rb"\] Iteration \d+(?: \([^)]*\))?, loss = ", data))
    assert sum(r.kind == "loss" for r in records) == expected_losses
    diagnosis = caffelens.diagnose(io.BytesIO(data))
    assert {"CL101", "CL102"} <= set(codes(diagnosis))
    code, _, err = run(argv(command, write(tmp_path, "two.log", data)), capsys)
    assert_analysed(code, err, {0} if command == "export" else {1})


def test_same_run_from_two_threads_line_by_line():
    other = HEALTHY.replace(b" 21757 ", b" 31337 ")
    data = b"\n".join(x for pair in zip(HEALTHY.split(b"\n"), other.split(b"\n")) for x in pair)
    records = list(caffelens.parse(io.BytesIO(data)))
    assert sum(r.kind == "loss" for r in records) == 2 * sum(
        r["kind"] == "loss" for r in CLEAN_HEALTHY)
    assert codes(caffelens.diagnose(io.BytesIO(data))) == []


# --- numbers at the edges ------------------------------------------------------------------

FINITE_EDGES = ["1e+38", "3.40282e+38", "-3.40282e+38", "1.4013e-45", "-1.4013e-45", "-0",
                "0", "1e-45", "1.17549e-38"]
NON_FINITE = {"nan": math.nan, "-nan": math.nan, "NaN": math.nan, "1.#QNAN": math.nan,
              "-1.#IND": math.nan, "-nan(ind)": math.nan, "inf": math.inf, "-inf": -math.inf,
              "1.#INF": math.inf, "-1.#INF": -math.inf}
EDGE_VALUES = {**{v: float(v) for v in FINITE_EDGES}, **NON_FINITE}


def _edge_log(v: str) -> list[str]:
    return [
        P + "Iteration 0, loss = 2.3",
        P + "    [Forward] Layer conv1, top blob conv1 data: " + v,
        P + "    [Backward] Layer conv1, bottom blob data diff: " + v,
        P + "    [Backward] Layer conv1, param blob 0 diff: " + v,
        P + "    [Forward] Layer conv1, top blob conv1 data: 0.5 (" + v + ")",
        E + "    [Backward] All net params (data, diff): "
            f"L1 norm = ({v}, {v}); L2 norm = ({v}, {v})",
        P + f"Iteration 10, loss = {v}",
        P + f"    Train net output #0: loss = {v} (* 1 = {v} loss)",
        P + f"Iteration 10, lr = {v}",
        P + f"Gradient clipping: scaling down gradients (L2 norm {v} > 10) by scale factor {v}",
        P + "Iteration 20, Testing net (#0)",
        P + f"    Test net output #0: accuracy = {v}",
    ]


@pytest.mark.parametrize("text", EDGE_VALUES)
def test_edge_numbers_are_parsed_exactly(text):
    expected = EDGE_VALUES[text]
    records = list(caffelens.parse(_edge_log(text)))
    values = []
    for r in records:
        if r.kind in ("blob", "loss", "lr", "output") and r.line > 1:
            values.append(r.value)
        elif r.kind == "net-norms":
            values += [r.l1_data, r.l1_diff, r.l2_data, r.l2_diff]
        elif r.kind == "clip":
            values += [r.l2_norm, r.scale]
    assert len(values) == 3 + 1 + 4 + 1 + 1 + 1 + 2 + 1
    assert all(same_number(v, expected) for v in values), (text, values)


def _healthy_with(value: str) -> bytes:
    """The healthy log with every debug and loss value from the middle on replaced."""
    lines = HEALTHY.split(b"\n")
    pattern = re.compile(rb"((?:data|diff): |loss = )[-+0-9.e]+$")
    half = len(lines) // 2
    return b"\n".join(pattern.sub(lambda m: m.group(1) + value.encode(), line) if i > half
                      else line for i, line in enumerate(lines))


@pytest.mark.parametrize("text", EDGE_VALUES)
def test_edge_numbers_diagnose_every_format(text):
    from caffelens.report import FORMATS

    data = _healthy_with(text)
    diagnosis = caffelens.diagnose(io.BytesIO(data))
    if not math.isfinite(EDGE_VALUES[text]):
        assert {"CL101", "CL102"} <= set(codes(diagnosis))
    for name, render in FORMATS.items():
        output = render([diagnosis], 100)
        if name in ("json", "sarif"):
            strict_json(output)
        if name == "junit":
            ET.fromstring(output.encode())


@pytest.mark.parametrize("text", ["3.40282e+38", "-0", "1.4013e-45", "-nan(ind)", "1.#INF"])
def test_edge_numbers_cli_commands_agree(text, tmp_path, capsys):
    path = write(tmp_path, "edge.log", _healthy_with(text))
    diagnose_code, out, err = run(["diagnose", str(path), "--format", "json"], capsys)
    assert_analysed(diagnose_code, err)
    strict_json(out)
    watch_code, _, err = run(argv("watch", path), capsys)
    assert_analysed(watch_code, err)
    assert watch_code == diagnose_code
    code, out, err = run(["export", str(path)], capsys)
    assert_analysed(code, err, {0})
    for line in out.splitlines():
        strict_json(line)


# --- huge integers (Python refuses int() of more than 4300 digits) -------------------------

DIGITS = "9" * 5000
HUGE_INT_LINES = {
    "iteration-loss": P + f"Iteration {DIGITS}, loss = 1.5",
    "iteration-lr": P + f"Iteration {DIGITS}, lr = 0.1",
    "iteration-testing": P + f"Iteration {DIGITS}, Testing net (#0)",
    "testing-net-index": P + f"Iteration 10, Testing net (#{DIGITS})",
    "multistep": P + f"MultiStep Status: Iteration {DIGITS}, step = 1",
    "thread-id": f"I1125 22:24:33.004931 {DIGITS} solver.cpp:231] Iteration 10, loss = 1",
    "snapshot-iter": P + f"Snapshotting to binary proto file snap_iter_{DIGITS}.caffemodel",
    "resume-iter": P + f"Resuming from snap_iter_{DIGITS}.solverstate",
}
WHERE = {
    "iteration-loss": "lines._classify_iteration: int(iteration) before the try",
    "iteration-lr": "lines._classify_iteration: int(iteration) before the try",
    "iteration-testing": "lines._classify_iteration: int(iteration) before the try",
    "testing-net-index": "lines._classify_iteration: int(tail.group(1)) outside the try",
    "multistep": "lines._classify_iteration: int(m.group(1)) of _STEP outside the try",
    "thread-id": "lines.split_prefix: int(thread)",
    "snapshot-iter": "assemble.Parser._on_snapshot: int(_ITER_IN_PATH group)",
    "resume-iter": "assemble.Parser._on_resume: int(_ITER_IN_PATH group)",
}


@pytest.mark.parametrize("case", [
    pytest.param(case)
    for case in HUGE_INT_LINES
])
def test_huge_integers_never_raise(case):
    lines = [P + "Iteration 0, loss = 2", HUGE_INT_LINES[case], P + "Iteration 20, loss = 1.25"]
    records = list(caffelens.parse(lines))
    assert (records[-1].kind, records[-1].iteration, records[-1].line) == ("loss", 20, 3)


def test_huge_integer_in_solver_dump_never_raises():
    lines = [P + "Initializing solver from parameters: ", "display: 10", "max_iter: " + DIGITS,
             P + "Iteration 0, loss = 2"]
    parser = caffelens.Parser()
    records = list(caffelens.parse(lines, parser))
    assert records[-1].kind == "loss"


@pytest.mark.parametrize("command", COMMANDS)
def test_huge_iteration_through_the_cli(command, tmp_path, capsys):
    path = write(tmp_path, "huge.log", HEALTHY + HUGE_INT_LINES["iteration-loss"].encode() + b"\n")
    code, _, err = run(argv(command, path), capsys)
    assert_analysed(code, err)


@pytest.mark.parametrize("iteration", ["9223372036854775808", "1" + "0" * 400])
def test_iteration_beyond_int64_never_raises(iteration):
    """No Caffe counts past int64 (its iter_ is an int): such a line is not an iteration line."""
    data = HEALTHY.replace(b"Iteration 290, loss", f"Iteration {iteration}, loss".encode())
    records = list(caffelens.parse(io.BytesIO(data)))
    assert not any(r.kind == "loss" and r.iteration == int(iteration) for r in records)
    assert [r.iteration for r in records if r.kind == "loss"][-1] == 300
    caffelens.diagnose(io.BytesIO(data))


def test_iteration_at_int64_max_is_fine():
    data = HEALTHY.replace(b"Iteration 290, loss", b"Iteration 9223372036854775807, loss")
    caffelens.diagnose(io.BytesIO(data))


@pytest.mark.parametrize("field", ["base_lr", "clip_gradients"])
def test_huge_integer_in_a_float_field_never_raises(field):
    lines = [P + "Initializing solver from parameters: ", "display: 10",
             f"{field}: 1" + "0" * 400, P + "Iteration 0, loss = 2"]
    records = list(caffelens.parse(lines))
    assert records[-1].kind == "loss"


@pytest.mark.parametrize("command", ["diagnose", "watch"])
def test_extreme_negative_loss_prints_no_warning(command, tmp_path, capsys):
    path = write(tmp_path, "neg.log", _healthy_with("-1e+308"))
    code, _, err = run(argv(command, path), capsys)
    assert_analysed(code, err)


@pytest.mark.parametrize("line", [
    P + "Iteration " + "9" * 400 + ", loss = 1.5",
    P + f"    Train net output #{DIGITS}: loss = 1",
    P + f"Top shape: {DIGITS} (1)",
    P + f"Sharing parameters 'w' owned by layer 'a', param index {DIGITS}",
    P + f"Test score #{DIGITS}: 1",
    f"I1125 22:24:{DIGITS[:2]}.{DIGITS} 1 solver.cpp:231] Iteration 10, loss = 1",
    "I9999 99:99:99.0 1 solver.cpp:231] Iteration 10, loss = 1",
    "I00000230 00:00:00 1 solver.cpp:231] Iteration 10, loss = 1",
])
def test_other_huge_or_impossible_fields_never_raise(line):
    lines = [P + "Iteration 0, loss = 2", line, P + "Iteration 20, loss = 1.25"]
    records = list(caffelens.parse(lines))
    assert records[-1].kind == "loss" and records[-1].line == 3
    caffelens.diagnose(lines)


# --- pathological lines: no catastrophic backtracking ----------------------------------------

SIZE = 2_000_000  # characters of each pathological message (classify sees it uncut)
FAMILY_HEADS = {
    # debug lines
    "debug": "    [Forward] Layer conv1, top blob conv1 data: ",
    "debug-layer": "[Forward] Layer ",
    "debug-mean": "    [Backward] Layer conv1, param blob 0 diff: 1 (",
    "debug-tag": "[0.0] ",
    "update": "    [Update] Layer conv1, param 0 data: 1; diff: ",
    "debug-detail": "    -> top blob conv1, count: 10 data: ",
    # All net params
    "norms": "    [Backward] All net params (data, diff): L1 norm = (",
    # Iteration / loss / lr
    "iteration": "Iteration ",
    "loss": "Iteration 10, loss = ",
    "lr": "Iteration 10, lr = 0.1, m = ",
    "testing": "Iteration 10, Testing net (#",
    "multistep": "MultiStep Status: Iteration ",
    # net output
    "train-output": "    Train net output #0: loss = 1 (* ",
    "test-output": "    Test net output #",
    # clip
    "clip": "Gradient clipping: scaling down gradients (L2 norm ",
    # start-up lines
    "top-shape": "Top shape: ",
    "sharing": "Sharing parameters '",
    "needs-backward": "conv1 ",
    "snapshot": "Snapshotting to binary proto file ",
    "crash": "Check failed: ",
    # prototxt-looking (classified as messages, and tested by looks_like_proto)
    "proto-field": "base_lr: ",
    "proto-open": "layer {",
    "empty": "",
}
FILLERS = {
    "parens": ("(", ""),
    "commas": (",", ""),
    "spaces-then-bang": (" ", "!"),
    "layer-marker": ("] Layer ", ""),
    "digits": ("9", ""),
    "colon-space": (": ", "x"),
}


def _pathological(head: str, filler: str, tail: str, size: int = SIZE) -> str:
    return head + filler * ((size - len(head) - len(tail)) // len(filler)) + tail


def _line_work(message: str) -> None:
    """Everything the parser does with one line, uncut, plus the real parse (cut at 1 MiB)."""
    prefix, rest = L.split_prefix(P + message)
    L.classify(rest, prefix[0] if prefix else None)
    L.looks_like_proto(message)
    records = list(caffelens.parse([P + message, P + "Iteration 7, loss = 0.5"]))
    assert records and records[-1].kind == "loss" and records[-1].line == 2


@pytest.fixture(scope="module")
def plain_line_time():
    plain = "a" * SIZE
    return min(timed(lambda: _line_work(plain)) for _ in range(3))


@pytest.mark.parametrize("filler", FILLERS)
@pytest.mark.parametrize("family", FAMILY_HEADS)
def test_no_catastrophic_backtracking(family, filler, plain_line_time):
    unit, tail = FILLERS[filler]
    message = _pathological(FAMILY_HEADS[family], unit, tail)
    budget = 20 * plain_line_time + 0.5
    elapsed = timed(lambda: _line_work(message), budget)
    assert elapsed < budget, f"{family}/{filler}: {elapsed:.3f} s, plain {plain_line_time:.3f} s"


def test_layer_marker_repeated_10_5_times(plain_line_time):
    for message in ("] Layer " * 100_000, "[Forward] Layer " + "] Layer " * 100_000,
                    "(" * 1_000_000 + "] Layer ", "," * 1_000_000 + " net output #",
                    " " * 1_000_000 + "x", "[Forward] Layer " + "x," * 500_000 + " y"):
        budget = 20 * plain_line_time + 0.5
        assert timed(lambda: _line_work(message), budget) < budget


def test_10mb_pathological_line_through_parse(tmp_path, plain_line_time):
    """End to end from a file: a 10 MB line (cut at MAX_LINE) between real lines."""
    head = "[Backward] All net params (data, diff): L1 norm = ("
    data = (HEALTHY + (P + _pathological(head, "(", "", 10_000_000)).encode() + b"\n"
            + (P + "Iteration 400, loss = 0.5\n").encode())
    path = write(tmp_path, "patho.log", data)
    records: list = []
    elapsed = timed(lambda: records.extend(caffelens.parse(path)), 30)
    plain = write(tmp_path, "plain.log", HEALTHY + b"a" * 10_000_000 + b"\n"
                  + (P + "Iteration 400, loss = 0.5\n").encode())
    reference = timed(lambda: list(caffelens.parse(plain)))
    assert elapsed < 20 * reference + 0.5
    assert records[-1].kind == "loss" and records[-1].iteration == 400


# Protobuf dumps are parsed with pyparsing. A dump line must look like proto text to be
# collected; glog cuts a real dump at 30,000 bytes, so these lines are 32 kB (64 kB for the
# quadratic case, to fail by a wide margin). The reference is a plain dump line of the same
# size (`name: value` statements). Both are timed twice, interleaved; the faster run counts.
DUMP_SIZE = 32_000
DUMP_LINES = {
    "spaces-before-bang": "base_lr: 0.01 c" + " " * (2 * DUMP_SIZE) + "!",
    "commas": "base_lr: " + "," * DUMP_SIZE,
    "parens": "base_lr: " + "(" * DUMP_SIZE,
    "brackets": "stepvalue: " + "[" * DUMP_SIZE,
    "braces": "layer " + "{" * DUMP_SIZE,
    "list": "stepvalue: [" + "1, " * (DUMP_SIZE // 3),
    "adjacent-quotes": "net: " + '"' * DUMP_SIZE,
    "backslashes": 'net: "' + "\\" * DUMP_SIZE,
    "hashes": "base_lr: 1 " + "#" * DUMP_SIZE,
    "nested-lines": "\n".join(["layer {"] * (DUMP_SIZE // 8)),
    "close-lines": "\n".join(["}"] * (DUMP_SIZE // 2)),
}


def _dump_log(body: str) -> list[str]:
    return ([P + "Initializing solver from parameters: ", "display: 10"] + body.split("\n")
            + [P + "Iteration 0, loss = 2.5"])


def _plain_dump_line(size: int) -> str:
    parts, i, length = [], 0, 0
    while length < size:
        parts.append(f"field_{i % 97}: {i}")
        length += len(parts[-1]) + 1
        i += 1
    return " ".join(parts)


# `[1, 1, …]` goes through pyparsing's general grammar (DelimitedList), ~50 µs per element:
# linear, but ~20x a plain line per byte, so its limit is 60x (a quadratic blows any factor).
DUMP_FACTOR = {"list": 60}


@pytest.fixture
def cli_pyparsing_state():
    """Time the grammar as the CLI runs it. pyparsing's packrat cache is process-wide and
    matplotlib (the HTML report) switches it on, which makes these lines 2-3x slower."""
    import pyparsing as pp

    was_enabled = getattr(pp.ParserElement, "_packratEnabled", False)
    pp.ParserElement.disable_memoization()
    yield
    if was_enabled:
        pp.ParserElement.enable_packrat()


@pytest.mark.parametrize("case", [
    pytest.param(case) if case == "spaces-before-bang" else case
    for case in DUMP_LINES
])
def test_dump_lines_no_catastrophic_backtracking(case, cli_pyparsing_state):
    lines = _dump_log(DUMP_LINES[case])
    assert all(L.looks_like_proto(line) for line in lines[1:-1])  # they are in the dump
    reference_lines = _dump_log(_plain_dump_line(len(DUMP_LINES[case])))
    records: list = []
    plain = elapsed = math.inf
    for _ in range(2):
        plain = min(plain, timed(lambda: list(caffelens.parse(reference_lines))))
        budget = DUMP_FACTOR.get(case, 20) * plain + 0.5
        records.clear()
        elapsed = min(elapsed, timed(lambda: records.extend(caffelens.parse(lines)), budget))
        if elapsed == math.inf:
            break
    assert elapsed < budget, f"{case}: {elapsed:.2f} s, plain dump line {plain:.3f} s"
    assert records[-1].kind == "loss"


def test_dump_list_parse_time_is_linear(cli_pyparsing_state):
    """The slow `[1, 1, …]` form is linear: 4x the elements, at most ~8x the time."""
    def cost(elements: int) -> float:
        lines = _dump_log("stepvalue: [" + "1, " * elements)
        return min(timed(lambda: list(caffelens.parse(lines))) for _ in range(2))

    small, large = cost(1_500), cost(6_000)
    assert large < 8 * small + 0.05, (small, large)


def test_dump_long_string_memory_is_bounded():
    lines = _dump_log('net: "' + "x" * (MAX_LINE - 16) + '"')
    tracemalloc.start()
    try:
        list(caffelens.parse(lines))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 64 << 20, f"peak {peak / 2**20:.0f} MiB"


# --- nothing in a log is evaluated, executed or opened ---------------------------------------

HOSTILE = (ROBUST / "hostile_lines.log").read_bytes()


def _spy_on_opens(monkeypatch) -> list:
    opened: list = []
    for module, name in ((builtins, "open"), (io, "open"), (os, "open")):
        real = getattr(module, name)

        def spy(file, *args, _real=real, **kwargs):
            opened.append(file)
            return _real(file, *args, **kwargs)

        monkeypatch.setattr(module, name, spy)
    return opened


def test_parse_of_a_stream_opens_nothing_and_runs_nothing(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    opened = _spy_on_opens(monkeypatch)
    records = list(caffelens.parse(io.BytesIO(HOSTILE)))
    diagnosis = caffelens.diagnose(io.BytesIO(HOSTILE))
    monkeypatch.undo()
    assert opened == []
    assert list(tmp_path.iterdir()) == []
    paths = [r.path for r in records if r.kind in ("snapshot", "resume")]
    assert "../../etc/passwd_iter_10.caffemodel" in paths
    assert "../../../../root/.ssh/id_rsa" in paths
    layers = {r.layer for r in records if r.kind == "blob"}
    assert {"{{7*7}}", "__import__('os').system('touch_PWNED')"} <= layers
    crash = next(f for f in diagnosis.findings if f.code == "CL401")
    assert "{{7*7}} $(touch PWNED) `touch PWNED` %n%n %x" in crash.message


@pytest.mark.parametrize("command", COMMANDS)
def test_cli_opens_only_the_log(command, tmp_path, capsys, monkeypatch):
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    log = write(work, "hostile.log", HOSTILE)
    output = work / "out.txt"
    args = argv(command, log) + (["-o", str(output)] if command != "watch" else [])
    opened = _spy_on_opens(monkeypatch)
    code, out, err = run(args, capsys)
    monkeypatch.undo()
    assert_analysed(code, err)
    allowed = {str(log), str(output), "caffelens.toml", "pyproject.toml",
               str(work / "caffelens.toml"), str(work / "pyproject.toml")}
    assert {os.fspath(p) for p in opened if not isinstance(p, int)} <= allowed
    created = sorted(p.name for p in tmp_path.rglob("*"))
    assert "PWNED" not in created and not (Path("/") / "PWNED").exists()
    assert sorted(created) == sorted(["work", "hostile.log"] + (
        ["out.txt"] if command != "watch" else []))
    text = output.read_text() if command != "watch" else out
    assert "{{7*7}}" in text  # shown verbatim, not templated


# --- report output from hostile names --------------------------------------------------------


def _rename_layer(log: bytes, old: bytes, new: bytes) -> bytes:
    return re.sub(rb"\b" + old + rb"\b", lambda m: new, log)


MARKUP_NAMES = ["a[/]b", "[/]", "[bold]conv2[/bold]", "[link=file:///etc/passwd]x[/link]"]


@pytest.mark.parametrize("name", MARKUP_NAMES)
def test_markup_in_layer_names_is_shown_verbatim(name, tmp_path, capsys):
    """Log text is never rich markup: '[/]' used to raise MarkupError, '[bold]x' showed 'x'."""
    _, clean, _ = run(["diagnose", str(corpus_log("lr_explode_nan")), "--width", "400"], capsys)
    data = _rename_layer(LR_EXPLODE, b"conv2", name.encode())
    code, out, err = run(["diagnose", str(write(tmp_path, "m.log", data)), "--width", "400"],
                         capsys)
    assert_analysed(code, err, {1})
    assert out.count(name) == clean.count("conv2") > 0  # every mention, the where column too


def test_markup_in_net_and_output_names(tmp_path, capsys):
    from rich.console import Console
    from caffelens.watch import LiveSession, render_view

    data = LR_EXPLODE.replace(b'name: "DigitsLeNet"', b'name: "Net[/]"').replace(
        b"accuracy", b"acc[/]")
    code, out, err = run(["diagnose", str(write(tmp_path, "m.log", data))], capsys)
    assert_analysed(code, err, {1})
    assert "Net[/]" in out and "acc[/]" in out
    session = LiveSession(name="x")
    session.feed(data.decode().splitlines())
    console = Console(file=io.StringIO(), width=120)
    console.print(render_view(session, 120))
    view = console.file.getvalue()
    assert "Net[/]" in view and "acc[/]" in view


CONTROL_NAME = "conv2\x01\x1b[31m\x1b]0;pwned\x07"


def as_read(name: str) -> str:
    """A name as caffelens reads it: control characters (ESC, BEL, NUL…) are dropped."""
    return re.sub("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]", "", name)


def test_junit_is_well_formed_with_control_characters():
    from caffelens.report import FORMATS

    data = _rename_layer(LR_EXPLODE, b"conv2", CONTROL_NAME.encode())
    diagnosis = caffelens.diagnose(io.BytesIO(data))
    assert any(f.layer == as_read(CONTROL_NAME) for f in diagnosis.findings)
    ET.fromstring(FORMATS["junit"]([diagnosis], 100).encode())


@pytest.mark.parametrize("command", ["diagnose", "watch"])
def test_no_terminal_escapes_from_the_log(command, tmp_path, capsys):
    data = _rename_layer(LR_EXPLODE, b"conv2", CONTROL_NAME.encode())
    code, out, err = run(argv(command, write(tmp_path, "esc.log", data)), capsys)
    assert_analysed(code, err, {1})
    assert "\x1b" not in out and "\x07" not in out


def test_machine_formats_survive_hostile_names():
    """JSON, SARIF, GitHub and Markdown keep hostile names intact and their syntax valid."""
    from caffelens.report import FORMATS

    for name in MARKUP_NAMES + [CONTROL_NAME, "p|q", "%0A::error::x", "a<&>]]>b", "\u202ex"]:
        diagnosis = caffelens.diagnose(io.BytesIO(_rename_layer(LR_EXPLODE, b"conv2",
                                                               name.encode())))
        name = as_read(name)
        onset = next(f for f in diagnosis.findings if f.code == "CL101")
        assert onset.layer == name
        document = strict_json(FORMATS["json"]([diagnosis], 100))
        assert any(f["layer"] == name for f in document["logs"][0]["findings"])
        strict_json(FORMATS["sarif"]([diagnosis], 100))
        for line in FORMATS["github"]([diagnosis], 100).splitlines():
            assert line.startswith(("::error ", "::warning ", "::notice ")), line
            assert "\r" not in line
        for line in FORMATS["markdown"]([diagnosis], 100).splitlines():
            if line.startswith("| ") and name in line:
                cells = re.split(r"(?<!\\)\|", line)
                assert len(cells) == 8, line


# --- fast path and reference path agree -----------------------------------------------------

DEBUG = "I1125 22:24:33.004931 21757 net.cpp:651]     [Forward] Layer conv1, top blob conv1 data: "


@pytest.mark.parametrize("variant", ["junk-before-prefix", "two-spaces", "tab"])
def test_fast_and_reference_parser_agree_on_damaged_debug_lines(variant):
    damaged = {"junk-before-prefix": "\ufffd\ufffdgarbage" + DEBUG + "0.25",
               "two-spaces": DEBUG + " 0.25", "tab": DEBUG + "\t0.25"}[variant]
    lines = [DEBUG + "0.5", damaged, P + "Iteration 10, loss = 1"]
    fast = [r.to_dict() for r in caffelens.parse(lines, caffelens.Parser(fast=True))]
    reference = [r.to_dict() for r in caffelens.parse(lines, caffelens.Parser(fast=False))]
    assert fast == reference


# --- properties (hypothesis, derandomized) ---------------------------------------------------

prop = settings(derandomize=True, deadline=None, max_examples=120,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])

HOSTILE_WORDS = st.sampled_from([
    "I1125 22:24:32.983922 21757 net.cpp:651] ", "E1231 23:59:59.999999 2 x.cc:1] ",
    "F0101 00:00:00.0 3 blob.cpp:9] ", "[Forward] Layer ", "[Backward] Layer ", ", top blob ",
    ", bottom blob ", ", param blob ", " data: ", " diff: ", "Iteration ", ", loss = ",
    ", lr = ", "Testing net (#0)", "    Test net output #0: ", "Train net output #1: ",
    " (* 1 = ", " loss)", "All net params (data, diff): L1 norm = (", "); L2 norm = (",
    "Initializing solver from parameters: \n", "Initializing net from parameters: \n",
    "layer {\n", "}\n", "name: ", "base_lr: ", "display: ", "Snapshotting to ", "_iter_",
    "Check failed: ", "*** SIGSEGV ", "Optimization Done.", "Top shape: ", "Sharing parameters '",
    " needs backward computation.", "nan", "-nan", "inf", "-inf", "1.#QNAN", "-1.#IND",
    "1.#INF", "-nan(ind)", "1e+38", "3.40282e+38", "1.4013e-45", "-0", "0", "10", "0.5",
    "[/]", "[bold]", "\x1b[31m", "\x01", "<&>", "|", "%0A", "{{7*7}}", "\n", "\r\n", "\r",
    "\x00", " ", "\t", ",", "(", ")", "\xe9", "\ufffd",
])


def _diagnose_or_input_error(source):
    try:
        return caffelens.diagnose(source)
    except caffelens.InputError:  # NotCaffeLog is one
        return None


@prop
@given(st.binary(max_size=4000))
def test_arbitrary_bytes_never_raise_in_parse_and_diagnose(data):
    parser = caffelens.Parser()
    records = list(caffelens.parse(io.BytesIO(data), parser))
    assert all(1 <= r.line <= parser.stats.lines for r in records)
    _diagnose_or_input_error(io.BytesIO(data))


@prop
@given(st.lists(HOSTILE_WORDS, max_size=150).map("".join), st.sampled_from(["utf-8", "latin-1"]))
def test_hostile_caffe_like_bytes_never_raise(text, encoding):
    from caffelens.report import FORMATS

    data = text.encode(encoding, "replace")
    parser = caffelens.Parser()
    records = list(caffelens.parse(io.BytesIO(data), parser))
    assert all(1 <= r.line <= parser.stats.lines for r in records)
    for record in records:
        json.dumps(record.to_dict(), allow_nan=False)
    diagnosis = _diagnose_or_input_error(io.BytesIO(data))
    if diagnosis is not None:
        for name in ("json", "sarif", "github", "markdown"):
            output = FORMATS[name]([diagnosis], 100)
            if name in ("json", "sarif"):
                strict_json(output)


@prop
@given(st.lists(HOSTILE_WORDS.filter(lambda w: "\n" not in w and "\r" not in w), max_size=60)
       .map("".join))
def test_fast_and_reference_parser_agree_on_caffe_like_lines(text):
    lines = [DEBUG + "0.5", text, DEBUG + "0.25", P + "Iteration 10, loss = 1"]
    fast = [r.to_dict() for r in caffelens.parse(lines, caffelens.Parser(fast=True))]
    reference = [r.to_dict() for r in caffelens.parse(lines, caffelens.Parser(fast=False))]
    assert fast == reference
