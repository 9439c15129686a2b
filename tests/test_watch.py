"""watch: piped input, a file grown between reads, rotation/truncation, exit-on, the view."""

from __future__ import annotations

import io
import itertools
import json
import os
from pathlib import Path

import pytest
from click.testing import CliRunner
from rich.console import Console

import caffelens
from caffelens.cli import cli
from caffelens.watch import Follower, LiveSession, render_view

from conftest import CORPUS, corpus_log

GOLDEN = Path(__file__).parent / "golden"
CORPUS_NAMES = sorted(p.name for p in CORPUS.iterdir() if (p / "train.log").exists())


def invoke(args, data: bytes):
    return CliRunner().invoke(cli, args, input=data)


def test_piped_plain_alerts_then_final_table():
    result = invoke(["watch"], corpus_log("nan_input").read_bytes())
    lines = result.output.splitlines()
    assert result.exit_code == 1
    assert lines[0].startswith("caffelens: error CL101 nan-onset (iteration 20, train, forward, "
                               "data, top data, line 746)")
    assert any("<stdin>  ERROR" in line for line in lines)


def test_piped_json_is_the_diagnose_document():
    data = corpus_log("lr_explode_nan").read_bytes()
    result = CliRunner(mix_stderr=False).invoke(cli, ["watch", "--format", "json"], input=data) \
        if "mix_stderr" in CliRunner.__init__.__code__.co_varnames else \
        CliRunner().invoke(cli, ["watch", "--format", "json"], input=data)
    document = json.loads(result.stdout)
    expected = caffelens.diagnose(corpus_log("lr_explode_nan"))
    assert [f["code"] for f in document["logs"][0]["findings"]] == [
        f.code for f in expected.findings]
    assert result.exit_code == 1


def test_healthy_exit_0_and_fail_on():
    data = corpus_log("healthy").read_bytes()
    assert invoke(["watch"], data).exit_code == 0
    data = corpus_log("dead_relu_zero_diff").read_bytes()
    assert invoke(["watch"], data).exit_code == 0
    assert invoke(["watch", "--fail-on", "warning"], data).exit_code == 1


def test_exit_on_error_stops_at_the_nan():
    result = invoke(["watch", "--exit-on", "error", "--format", "json"],
                    corpus_log("nan_input").read_bytes())
    assert result.exit_code == 1
    assert "CL101 nan-onset" in result.output


def test_empty_and_garbage_input_exit_2():
    assert invoke(["watch"], b"").exit_code == 2
    assert invoke(["watch"], b"hello\nworld\n").exit_code == 2


def _feed_everything(name: str, chunk: int) -> tuple[list, caffelens.Diagnosis]:
    ticks = itertools.count(step=1.0)  # a fake clock: every batch is due for evaluation
    session = LiveSession(name=name, clock=lambda: next(ticks))
    lines = corpus_log(name).read_text().splitlines()
    for start in range(0, len(lines), chunk):
        session.feed(lines[start:start + chunk])
    diagnosis, _ = session.finish()
    return session.alerts, diagnosis


@pytest.mark.parametrize("name", CORPUS_NAMES)
def test_alerts_identical_to_diagnose(name):
    alerts, final = _feed_everything(name, 37)
    expected = caffelens.diagnose(corpus_log(name))
    key = lambda f: (f.run, f.code, f.layer, f.iteration, f.line)  # noqa: E731
    assert sorted(map(key, alerts)) == sorted(map(key, expected.findings))
    assert [f.to_dict() for f in final.findings] == [f.to_dict() for f in expected.findings]


def test_nan_alert_arrives_with_its_block():
    """The nan-onset alert is raised by the batch that completes the NaN iteration's block."""
    ticks = itertools.count(step=1.0)
    session = LiveSession(clock=lambda: next(ticks))
    lines = corpus_log("nan_input").read_text().splitlines()
    raised_at = None
    for number, line in enumerate(lines, 1):
        if any(f.rule == "nan-onset" for f in session.feed([line])):
            raised_at = number
            break
    display = next(i for i, l in enumerate(lines, 1) if "Iteration 20, loss" in l)
    assert raised_at == display


def test_follower_grows_holds_partial_line_and_survives_truncation(tmp_path):
    path = tmp_path / "train.log"
    lines = corpus_log("healthy").read_text().splitlines(keepends=True)
    path.write_text("".join(lines[:10]))
    follower = Follower(str(path))
    assert follower.poll() == [l.rstrip("\n") for l in lines[:10]]
    assert follower.poll() == []
    with path.open("a") as f:
        f.write(lines[10][:20])  # half a line: held back
    assert follower.poll() == []
    with path.open("a") as f:
        f.write(lines[10][20:] + lines[11])
    assert follower.poll() == [lines[10].rstrip("\n"), lines[11].rstrip("\n")]
    path.write_text(lines[0])  # truncated (copytruncate rotation): start over
    assert follower.poll() == [lines[0].rstrip("\n")]
    follower.close()


def test_follower_reopens_after_rotation(tmp_path):
    path = tmp_path / "train.log"
    path.write_text("first\n")
    follower = Follower(str(path))
    assert follower.poll() == ["first"]
    with path.open("a") as f:
        f.write("last of old")
    os.rename(path, tmp_path / "train.log.1")
    path.write_text("new file\n")
    assert follower.poll() == ["last of old", "new file"]
    follower.close()


def test_follower_from_end_and_missing_file(tmp_path):
    path = tmp_path / "train.log"
    follower = Follower(str(path))
    assert follower.poll() == []  # not there yet: wait for it
    path.write_text("a\nb\n")
    assert follower.poll() == ["a", "b"]
    tail = Follower(str(path), from_end=True)
    assert tail.poll() == []
    with path.open("a") as f:
        f.write("c\n")
    assert tail.poll() == ["c"]


def test_follow_file_to_diagnosis_with_no_follow(tmp_path):
    result = CliRunner().invoke(cli, ["watch", str(corpus_log("nan_input")), "--no-follow",
                                      "--format", "json"])
    assert result.exit_code == 1
    assert result.stdout.rstrip().endswith("}")  # the document; alerts go to stderr


def render(session: LiveSession) -> str:
    buffer = io.StringIO()
    Console(file=buffer, width=100, color_system=None).print(render_view(session, 100))
    return buffer.getvalue()


def test_live_view_golden():
    ticks = itertools.count(step=1.0)
    session = LiveSession(name="train.log", clock=lambda: next(ticks))
    lines = corpus_log("lr_explode_nan").read_text().splitlines()
    stop = next(i for i, l in enumerate(lines) if "Iteration 20, Testing net" in l)
    for start in range(0, stop, 50):
        session.feed(lines[start:min(start + 50, stop)])
    session.evaluate()
    text = render(session)
    golden = GOLDEN / "watch_lr_explode_nan.txt"
    if os.environ.get("CAFFELENS_UPDATE_GOLDEN"):
        golden.write_text(text)
    assert text == golden.read_text()


def test_exit_on_with_a_pipe_still_open():
    """--exit-on ends watch cleanly (exit 1) while the writer still holds the pipe open."""
    import subprocess
    import sys

    proc = subprocess.Popen([sys.executable, "-m", "caffelens", "watch", "--plain",
                             "--exit-on", "error"], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    proc.stdin.write(corpus_log("nan_input").read_bytes())
    proc.stdin.flush()  # not closed: the training is "still running"
    try:
        out = proc.stdout.read()  # returns when watch exits and closes its stdout
        err = proc.stderr.read()
        code = proc.wait(timeout=60)
    finally:
        proc.stdin.close()
        proc.kill()
    assert code == 1, err
    assert b"CL101 nan-onset" in out and b"Fatal Python error" not in err


@pytest.mark.parametrize("name", ["lr_explode_nan", "healthy"])
def test_pipe_read_by_a_helper_process_gives_diagnose_findings(name):
    """stdin is a real pipe here: a helper process reads and tokenizes it."""
    import json
    import subprocess
    import sys

    data = corpus_log(name).read_bytes()
    proc = subprocess.run([sys.executable, "-m", "caffelens", "watch", "--plain",
                           "--format", "json"], input=data, capture_output=True, timeout=60)
    assert proc.returncode in (0, 1), proc.stderr
    findings = json.loads(proc.stdout)["logs"][0]["findings"]
    expected = caffelens.diagnose(corpus_log(name))
    assert [(f["rule"], f.get("iteration"), f.get("line")) for f in findings] == \
        [(f.rule, f.iteration, f.line) for f in expected.findings]
