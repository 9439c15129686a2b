"""The bulk path (debug lines recognised a list at a time, values as arrays into the traces)
gives exactly what the one-line-at-a-time reference path gives, however the log is cut up."""

from __future__ import annotations

import os
import random
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import caffelens
from caffelens.engine import evaluate
from caffelens.history import Series, TraceBuilder

from conftest import CORPUS, VARIANTS

LOGS = sorted(CORPUS.glob("*/train.log")) + sorted(VARIANTS.glob("*.log"))
IDS = [p.parent.name if p.name == "train.log" else p.stem for p in LOGS]
CHUNKS = [150, 4096, 65536]  # a line or two per batch, a few dozen, hundreds


def records(path, chunk_size, fast=True):
    return [r.to_dict() for r in caffelens.parse(path, caffelens.Parser(fast=fast),
                                                 chunk_size=chunk_size)]


@pytest.mark.parametrize("path", LOGS, ids=IDS)
def test_bulk_records_equal_reference_at_every_batch_size(path):
    reference = records(path, 1 << 20, fast=False)
    for chunk in CHUNKS:
        assert records(path, chunk) == reference, chunk


def traces_in_bulk(path, chunk_size):
    builder = TraceBuilder()
    parser = caffelens.Parser(blob_sink=builder.blob, block_sink=builder.values,
                              record_sink=builder.add)
    parser.consume(path, chunk_size)
    return builder.traces, parser.stats


def series_of(traces):
    return [{key: (list(s.iterations), list(map(repr, s.values)), list(s.lines))
             for key, s in t.series.items()} for t in traces]


@pytest.mark.parametrize("path", LOGS, ids=IDS)
def test_bulk_traces_equal_traces_from_records(path):
    parser = caffelens.Parser(fast=False)
    expected = TraceBuilder().add_all(caffelens.parse(path, parser))
    want = evaluate(expected, parser.stats, caffelens.Config(), "x")
    for chunk in CHUNKS:
        traces, stats = traces_in_bulk(path, chunk)
        assert series_of(traces) == series_of(expected), chunk
        # series keys in the same order: rules that walk them report in that order
        assert [list(t.series) for t in traces] == [list(t.series) for t in expected]
        assert [(t.blob_count, t.first_line, t.last_line) for t in traces] == \
            [(t.blob_count, t.first_line, t.last_line) for t in expected]
        assert [[b.to_dict() for b in t.onset_block] for t in traces] == \
            [[b.to_dict() for b in t.onset_block] for t in expected]
        got = evaluate(traces, stats, caffelens.Config(), "x")
        assert [f.to_dict() for f in got.findings] == [f.to_dict() for f in want.findings]


def test_bulk_thinning_keeps_the_same_points_as_one_by_one(tmp_path):
    """A log longer than the history kept per series: the same points survive thinning."""
    source = (CORPUS / "healthy" / "train.log").read_text().splitlines()
    start = next(i for i, line in enumerate(source) if "[Forward]" in line)
    end = next(i for i, line in enumerate(source) if ", loss = " in line and i > start) + 1
    head, block = source[:start], source[start:end]
    lines = list(head)
    for n in range(300):
        lines += [line.replace(f"Iteration {block[-1].split('Iteration ')[1].split(',')[0]},",
                               f"Iteration {n * 10},") for line in block]
    path = tmp_path / "long.log"
    path.write_text("\n".join(lines) + "\n")
    parser = caffelens.Parser(fast=False)
    expected = TraceBuilder(max_points=16).add_all(caffelens.parse(path, parser))
    builder = TraceBuilder(max_points=16)
    bulk = caffelens.Parser(blob_sink=builder.blob, block_sink=builder.values,
                            record_sink=builder.add)
    bulk.consume(path, chunk_size=5000)
    assert len(next(iter(expected[0].series.values())).values) <= 16
    assert series_of(builder.traces) == series_of(expected)


@settings(derandomize=True, max_examples=200, deadline=None)
@given(st.lists(st.integers(0, 40), max_size=120), st.sampled_from([None, 2, 3, 8]),
       st.integers(1, 9))
def test_series_extend_is_add_in_turn(steps, cap, cut):
    """extend() a slice at a time keeps exactly the points add() one by one keeps."""
    iterations = np.cumsum(np.array(steps, dtype=np.int64))  # repeats = iter_size passes
    values = np.arange(len(steps), dtype=float)
    lines = np.arange(len(steps), dtype=np.int64) + 100
    one, bulk = Series(), Series()
    for i, v, n in zip(iterations.tolist(), values.tolist(), lines.tolist()):
        one.add(i, v, n, cap)
    # slices never repeat an iteration inside, as the builder's rows never do
    bounds = [0] + [k for k in range(1, len(steps)) if steps[k] != 0 and k % cut == 0]
    bounds.append(len(steps))
    for a, b in zip(bounds, bounds[1:]):
        for k in range(a, b):  # a repeat inside a slice goes through add, like a new row
            if k > a and iterations[k] == iterations[k - 1]:
                break
        else:
            bulk.extend(iterations[a:b], values[a:b], lines[a:b], cap)
            continue
        for k in range(a, b):
            bulk.add(int(iterations[k]), float(values[k]), int(lines[k]), cap)
    assert (list(bulk.iterations), list(bulk.values), list(bulk.lines)) == \
        (list(one.iterations), list(one.values), list(one.lines))


def test_nan_in_a_bulk_run_is_found_with_its_block(tmp_path):
    """A NaN read in bulk still gets its first-onset line and the block around it."""
    source = (CORPUS / "lr_explode_nan" / "train.log").read_text()
    parser = caffelens.Parser(fast=False)
    expected = TraceBuilder().add_all(caffelens.parse(CORPUS / "lr_explode_nan" / "train.log",
                                                      parser))
    rng = random.Random(0)
    for _ in range(3):
        chunk = rng.randrange(100, 20000)
        traces, _ = traces_in_bulk(CORPUS / "lr_explode_nan" / "train.log", chunk)
        assert traces[0].first_nonfinite == expected[0].first_nonfinite
        assert traces[0].first_large == expected[0].first_large
        assert len(traces[0].onset_block) == len(expected[0].onset_block) > 10
    assert "nan" in source


def traces_agree(path, chunk_size):
    expected = TraceBuilder().add_all(caffelens.parse(path, caffelens.Parser(fast=False)))
    traces, _ = traces_in_bulk(path, chunk_size)
    assert series_of(traces) == series_of(expected)
    assert [[b.to_dict() for b in t.onset_block] for t in traces] == \
        [[b.to_dict() for b in t.onset_block] for t in expected]


def test_a_log_cut_inside_an_iter_size_pass_keeps_the_earlier_passes(tmp_path):
    """Without norms lines a display's passes reach the traces together; a crash mid-pass
    leaves the last pass short, and the series keep the earlier pass for the rest."""
    source = [line for line in (CORPUS / "iter_size" / "train.log").read_text().splitlines()
              if "All net params" not in line]
    path = tmp_path / "cut.log"
    for cut in range(len(source) - 90, len(source), 11):
        path.write_text("\n".join(source[:cut]) + "\n")
        traces_agree(path, 4096)


@pytest.mark.parametrize("name", ["iter_size", "healthy", "lr_explode_nan"])
def test_values_held_back_are_flushed_where_the_reference_flushes(name, monkeypatch):
    """Debug values without a display line are flushed at MAX_PENDING, mid-run if need be."""
    import caffelens.assemble

    monkeypatch.setattr(caffelens.assemble, "MAX_PENDING", 50)
    path = CORPUS / name / "train.log"
    reference = records(path, 1 << 20, fast=False)
    for chunk in (300, 4096):
        assert records(path, chunk) == reference
        traces_agree(path, chunk)


def test_a_known_skeleton_after_something_else_than_a_timestamp_is_not_a_value():
    good = ("I0101 12:00:00.123456 21757 net.cpp:651]     [Forward] Layer conv1, top blob "
            "conv1 data: 0.5")
    lines = [
        "I0101 12:00:00.100000 21757 solver.cpp:218] Iteration 0 (0 iter/s), loss = 2.3",
        good,
        "I0101 12:00:01.100000 21757 solver.cpp:218] Iteration 10 (0 iter/s), loss = 2.3",
        # as wide as a timestamp, but two outputs spliced together
        "W0101 12:00:0I0101 12 21757 net.cpp:651]     [Forward] Layer conv1, top blob conv1 "
        "data: 7e9",
        "E0101 12:00:01.200000 21757 net.cpp:651]     [Forward] Layer conv1, top blob conv1 "
        "data: 0.25",
        "I0101 12:00:02.100000 21757 solver.cpp:218] Iteration 20 (0 iter/s), loss = 2.3",
    ]
    want = [r.to_dict() for r in caffelens.parse(lines, caffelens.Parser(fast=False))]
    got = [r.to_dict() for r in caffelens.parse(lines, caffelens.Parser(), chunk_size=50)]
    assert got == want
    assert [r["value"] for r in got if r["kind"] == "blob"] == [0.5, 0.25]


def test_the_clock_starts_at_the_same_line_after_an_impossible_date():
    debug = "21757 net.cpp:651]     [Forward] Layer conv1, top blob conv1 data: 0.5"
    lines = [f"I0230 12:00:00.000000 {debug}", f"I0301 12:00:01.000000 {debug}",
             "I0301 12:00:05.000000 21757 solver.cpp:218] Iteration 0 (0 iter/s), loss = 2.3"]
    want = [r.to_dict() for r in caffelens.parse(lines, caffelens.Parser(fast=False))]
    got = [r.to_dict() for r in caffelens.parse(lines, caffelens.Parser(), chunk_size=10)]
    assert got == want
    assert [r["time"] for r in got if r["kind"] == "loss"] == [4.0]


# --- a helper process tokenizes, this one assembles ------------------------------------------


@pytest.mark.parametrize("name", ["healthy", "lr_explode_nan", "iter_size", "resume"])
def test_parallel_diagnose_equals_single_process(name):
    path = CORPUS / name / "train.log"
    one = caffelens.diagnose(path, parallel=False)
    two = caffelens.diagnose(path, parallel=True)
    assert [f.to_dict() for f in two.findings] == [f.to_dict() for f in one.findings]
    assert two.summary() == one.summary()
    assert series_of(two.traces) == series_of(one.traces)


def test_parallel_reads_compressed_logs(tmp_path):
    import gzip

    path = tmp_path / "train.log.gz"
    path.write_bytes(gzip.compress((CORPUS / "lr_explode_nan" / "train.log").read_bytes()))
    two = caffelens.diagnose(path, parallel=True)
    one = caffelens.diagnose(CORPUS / "lr_explode_nan" / "train.log", parallel=False)
    assert [f.to_dict() for f in two.findings] == [f.to_dict() for f in one.findings]


def test_parallel_missing_file_is_an_input_error(tmp_path):
    with pytest.raises(caffelens.InputError, match="no such file"):
        caffelens.diagnose(tmp_path / "nope.log", parallel=True)


def test_parallel_cut_archive_gives_the_partial_result(tmp_path):
    import gzip

    data = gzip.compress((CORPUS / "lr_explode_nan" / "train.log").read_bytes())
    path = tmp_path / "cut.log.gz"
    path.write_bytes(data[: len(data) * 2 // 3])
    two = caffelens.diagnose(path, parallel=True)
    one = caffelens.diagnose(path, parallel=False)
    assert two.error and one.error
    assert [f.to_dict() for f in two.findings] == [f.to_dict() for f in one.findings]
    assert two.stats.lines == one.stats.lines > 100


def parts_together(path, chunk, parts, snapshot=None):
    from caffelens.sources import iter_part_batches

    batches = {}
    for part in range(parts):
        for i, batch in enumerate(iter_part_batches(path, chunk, part, parts, snapshot)):
            batches[part + i * parts] = batch
    return [line for k in sorted(batches) for line in batches[k]]


@pytest.mark.parametrize("chunk", [50, 1000, 7777])
def test_file_slices_together_are_the_lines(chunk, tmp_path):
    from caffelens.sources import iter_lines

    healthy = (CORPUS / "healthy" / "train.log").read_bytes()
    long_line = tmp_path / "long.log"  # slices inside one long line: no line starts there
    long_line.write_bytes(healthy[:5000] + b"x" * 300_000 + b"\n\n\n" + healthy[5000:20000])
    for path in (CORPUS / "healthy" / "train.log", long_line):
        for parts in (1, 2, 3):
            assert parts_together(path, chunk, parts) == list(iter_lines(path))


def test_file_slices_read_the_file_as_it_was_when_reading_began(tmp_path):
    from caffelens.sources import file_snapshot, iter_lines

    path = tmp_path / "train.log"
    path.write_bytes((CORPUS / "healthy" / "train.log").read_bytes()[:30000])
    snapshot = file_snapshot(path)
    want = list(iter_lines(path))
    with open(path, "ab") as log:  # the run goes on writing
        log.write(b"I0101 00:00:00.000000  1 solver.cpp:218] Iteration 99, loss = 1\n" * 500)
    assert parts_together(path, 1000, 2, snapshot) == want
    rotated = tmp_path / "new.log"
    rotated.write_bytes(b"another log\n")
    rotated.replace(path)  # rotated: a new file under the same name
    with pytest.raises(caffelens.InputError, match="replaced"):
        parts_together(path, 1000, 2, snapshot)


@pytest.mark.parametrize("name,helpers", [("lr_explode_nan", 2), ("iter_size", 2),
                                          ("multi_loss", 2), ("lr_explode_nan", 3)])
def test_helpers_tokens_give_the_reference_records(name, helpers, monkeypatch):
    """Helpers, each learning its own skeletons, small slices: the same records."""
    import caffelens.tokens
    from caffelens.tokens import tokenize_source

    monkeypatch.setattr(caffelens.tokens, "_file_helpers", lambda: helpers)
    path = CORPUS / name / "train.log"
    parser, number, got = caffelens.Parser(), 1, []
    for tokens in tokenize_source(path, chunk_size=3000, parallel=True):
        got += [r.to_dict() for r in parser.feed_tokens(tokens, number)]
        number += tokens.count
    got += [r.to_dict() for r in parser.finish()]
    assert got == records(path, 1 << 20, fast=False)


@pytest.mark.parametrize("path", LOGS, ids=IDS)
def test_fast_json_lines_are_the_records_json_lines(path):
    """export's template writer = to_dict() + json of every reference record, byte for byte."""
    import io

    from caffelens import export

    reference = io.StringIO()
    count = export.write_jsonl(caffelens.parse(path, caffelens.Parser(fast=False)), reference)
    for chunk in (150, 1 << 20):
        fast = io.StringIO()
        stats = export.export_jsonl(path, fast, chunk_size=chunk)
        assert fast.getvalue() == reference.getvalue(), chunk
        assert stats.records == count


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc for helpers")
def test_ctrl_c_while_helpers_read_is_one_line_and_exit_130(tmp_path):
    """Ctrl-C reaches the whole process group: the helpers stay quiet, the reader reports."""
    import signal
    import subprocess

    path = tmp_path / "big.log"
    data = (CORPUS / "healthy" / "train.log").read_bytes()
    path.write_bytes(data * (40_000_000 // len(data) + 1))
    proc = subprocess.Popen([sys.executable, "-m", "caffelens", "diagnose", str(path)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            start_new_session=True)
    children = Path(f"/proc/{proc.pid}/task/{proc.pid}/children")
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and proc.poll() is None:
        if children.exists() and children.read_text().split():
            break  # the helpers are reading
        time.sleep(0.001)  # send it while the other helpers are being started
    os.killpg(proc.pid, signal.SIGINT)
    try:
        _, err = proc.communicate(timeout=30)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        raise
    assert proc.returncode == 130, err
    assert err.decode().strip() == "Interrupted."


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="patches a forked helper")
def test_a_failing_helper_is_one_line_with_its_traceback_as_cause(monkeypatch):
    from caffelens import tokens

    parent, tokenize = os.getpid(), tokens.Tokenizer.tokenize

    def failing(self, lines):
        if os.getpid() != parent:
            raise MemoryError("simulated")
        return tokenize(self, lines)

    monkeypatch.setattr(tokens.Tokenizer, "tokenize", failing)
    with pytest.raises(RuntimeError) as caught:
        list(tokens.tokenize_source(CORPUS / "healthy" / "train.log", parallel=True))
    assert "\n" not in str(caught.value) and "MemoryError: simulated" in str(caught.value)
    assert "Traceback" in str(caught.value.__cause__)


def test_helpers_started_by_spawn_give_the_same_diagnosis(monkeypatch):
    """macOS, Windows, and a host with threads (Jupyter) spawn helpers instead of forking."""
    from caffelens import tokens

    monkeypatch.setattr(tokens, "_start_method", lambda: "spawn")
    path = CORPUS / "iter_size" / "train.log"
    two = caffelens.diagnose(path, parallel=True)
    one = caffelens.diagnose(path, parallel=False)
    assert [f.to_dict() for f in two.findings] == [f.to_dict() for f in one.findings]
    assert series_of(two.traces) == series_of(one.traces)


def test_helpers_are_not_forked_while_other_threads_run():
    import threading

    from caffelens import tokens

    if not sys.platform.startswith("linux"):
        assert tokens._start_method() == "spawn"
        return
    assert tokens._start_method() == "fork"
    big = CORPUS / "healthy" / "train.log"
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(tokens, "PARALLEL_MIN_BYTES", 1)
        assert tokens.helpful(big) == tokens._spare_core()
    stop = threading.Event()
    thread = threading.Thread(target=stop.wait)
    thread.start()
    try:
        assert tokens._start_method() == "spawn"
        # spawn re-runs an unguarded __main__ script: never chosen unasked
        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(tokens, "PARALLEL_MIN_BYTES", 1)
            assert not tokens.helpful(big)
    finally:
        stop.set()
        thread.join()
