"""The command line: exit codes for every format, stdin, errors, export, rules/explain."""

from __future__ import annotations

import csv
import gzip
import io
import json
import xml.etree.ElementTree as ET

import pytest
from click.testing import CliRunner

from caffelens.cli import cli, main

from conftest import corpus_log

FORMATS = ["table", "json", "markdown", "github", "junit", "sarif"]


def call(args, capsys, stdin: bytes | None = None, monkeypatch=None):
    if stdin is not None:
        monkeypatch.setattr("sys.stdin", io.TextIOWrapper(io.BytesIO(stdin)))
    code = main(args)
    out, err = capsys.readouterr()
    return code, out, err


@pytest.mark.parametrize("fmt", FORMATS)
def test_exit_codes_every_format(fmt, capsys):
    nan_log, healthy = str(corpus_log("nan_input")), str(corpus_log("healthy"))
    assert call(["diagnose", nan_log, "--format", fmt], capsys)[0] == 1
    assert call(["diagnose", healthy, "--format", fmt], capsys)[0] == 0
    assert call(["diagnose", nan_log, "--format", fmt, "--fail-on", "never"], capsys)[0] == 0
    dead = str(corpus_log("dead_relu_zero_diff"))
    assert call(["diagnose", dead, "--format", fmt], capsys)[0] == 0
    assert call(["diagnose", dead, "--format", fmt, "--fail-on", "warning"], capsys)[0] == 1
    nodebug = str(corpus_log("no_debug_info"))
    assert call(["diagnose", nodebug, "--format", fmt, "--fail-on", "warning"], capsys)[0] == 0
    assert call(["diagnose", nodebug, "--format", fmt, "--fail-on", "info"], capsys)[0] == 1
    assert call(["diagnose", "missing.log", "--format", fmt], capsys)[0] == 2


def test_json_contract(capsys):
    code, out, _ = call(["diagnose", str(corpus_log("lr_explode_nan")), "--format", "json"], capsys)
    doc = json.loads(out)
    assert code == 1 and doc["schema"] == "caffelens.diagnosis/1"
    (log,) = doc["logs"]
    assert set(log["summary"]) >= {"lines", "first_iteration", "last_iteration", "debug_info",
                                   "final_loss", "status"}
    assert log["summary"]["status"] == "error" and log["summary"]["final_loss"] == "nan"
    keys = {"code", "rule", "severity", "iteration", "phase", "direction", "layer", "layer_type",
            "blob", "role", "value", "line", "likely_cause", "message", "fix"}
    for finding in log["findings"]:
        assert set(finding) >= keys
        assert finding["severity"] in ("error", "warning", "info")
    onset = next(f for f in log["findings"] if f["rule"] == "nan-onset")
    assert onset["value"] == "inf" and onset["likely_cause"] == "gradient-explosion"


def test_select_and_ignore(capsys):
    log = str(corpus_log("lr_explode_nan"))
    _, out, _ = call(["diagnose", log, "--format", "json", "--select", "CL1"], capsys)
    assert {f["code"][:3] for f in json.loads(out)["logs"][0]["findings"]} == {"CL1"}
    code, out, _ = call(["diagnose", log, "--format", "json", "--ignore", "nan-onset,nan-loss"],
                        capsys)
    rules = {f["rule"] for f in json.loads(out)["logs"][0]["findings"]}
    assert "nan-onset" not in rules and "nan-loss" not in rules and code == 0


def test_config_file(tmp_path, monkeypatch, capsys):
    (tmp_path / "caffelens.toml").write_text('ignore = ["nan-onset", "CL102"]\nfail-on = "never"\n')
    monkeypatch.chdir(tmp_path)
    code, out, _ = call(["diagnose", str(corpus_log("lr_explode_nan")), "--format", "json"], capsys)
    rules = {f["rule"] for f in json.loads(out)["logs"][0]["findings"]}
    assert code == 0 and "nan-onset" not in rules and "nan-loss" not in rules
    (tmp_path / "caffelens.toml").write_text('fail-on = "sometimes"\n')
    code, _, err = call(["diagnose", str(corpus_log("healthy"))], capsys)
    assert code == 2 and "fail-on" in err


def test_github_annotations(capsys):
    _, out, _ = call(["diagnose", str(corpus_log("lr_explode_nan")), "--format", "github"], capsys)
    first = out.splitlines()[0]
    assert first.startswith("::error file=") and ",line=1318," in first
    assert "title=CL101 nan-onset::" in first


def test_github_escaping():
    from caffelens.report.machine import escape_data, escape_property

    assert escape_data("50% done\r\nnext") == "50%25 done%0D%0Anext"
    assert escape_property("a:b,c") == "a%3Ab%2Cc"


def test_junit_and_sarif_are_valid(capsys):
    log = str(corpus_log("nan_input"))
    _, out, _ = call(["diagnose", log, "--format", "junit"], capsys)
    root = ET.fromstring(out)
    cases = root.findall(".//testcase")
    assert len(cases) == 13
    failed = {c.get("name") for c in cases if c.find("failure") is not None}
    assert "CL101 nan-onset" in failed and "CL104 zero-diff" not in failed
    _, out, _ = call(["diagnose", log, "--format", "sarif"], capsys)
    doc = json.loads(out)
    assert doc["version"] == "2.1.0"
    results = doc["runs"][0]["results"]
    onset = next(r for r in results if r["ruleId"] == "CL101")
    assert onset["level"] == "error"
    assert onset["locations"][0]["physicalLocation"]["region"]["startLine"] == 746


def test_stdin_and_gzip(tmp_path, capsys, monkeypatch):
    data = corpus_log("nan_input").read_bytes()
    code, out, _ = call(["diagnose", "-", "--format", "json"], capsys, stdin=data,
                        monkeypatch=monkeypatch)
    assert code == 1 and json.loads(out)["logs"][0]["path"] == "<stdin>"
    gz = tmp_path / "train.log.gz"
    gz.write_bytes(gzip.compress(data))
    code, out, _ = call(["diagnose", str(gz), "--format", "json"], capsys)
    assert code == 1
    assert json.loads(out)["logs"][0]["findings"][0]["line"] == 746


@pytest.mark.parametrize("content, message", [
    (b"", "empty log"),
    (b"Traceback (most recent call last):\n  File \"x.py\", line 1\nValueError: x\n",
     "no Caffe training lines found"),
    (bytes(range(256)) * 100, "no Caffe training lines found"),
])
def test_input_errors_exit_2(tmp_path, capsys, content, message):
    path = tmp_path / "x.log"
    path.write_bytes(content)
    for command in (["diagnose", str(path)], ["export", str(path)]):
        code, _, err = call(command, capsys)
        assert code == 2 and message in err and "Traceback" not in err
        assert len(err.strip().splitlines()) == 1


def test_missing_and_directory(tmp_path, capsys):
    code, _, err = call(["diagnose", str(tmp_path / "nope.log")], capsys)
    assert code == 2 and "no such file" in err
    code, _, err = call(["diagnose", str(tmp_path)], capsys)
    assert code == 2 and "directory" in err
    code, _, err = call(["diagnose", "--format", "yaml", str(corpus_log("healthy"))], capsys)
    assert code == 2


def test_export_jsonl(capsys):
    code, out, _ = call(["export", str(corpus_log("lr_explode_nan"))], capsys)
    rows = [json.loads(line) for line in out.splitlines()]
    assert code == 0
    blob = next(r for r in rows if r["kind"] == "blob" and r["line"] == 1318)
    assert blob == {**blob, "run": 0, "iteration": 18, "phase": "train", "pass": 0,
                    "direction": "backward", "layer": "conv2", "blob": "pool1",
                    "role": "bottom", "stat": "diff", "value": "inf"}
    kinds = {r["kind"] for r in rows}
    assert kinds >= {"blob", "loss", "output", "lr", "net-norms", "test", "solver", "net"}


def test_export_tables_keep_nan_rows(tmp_path, capsys):
    out_file = tmp_path / "train.csv"
    code, _, _ = call(["export", str(corpus_log("lr_explode_nan")), "--table", "train",
                       "-o", str(out_file)], capsys)
    rows = list(csv.DictReader(out_file.open()))
    assert code == 0 and list(rows[0])[:3] == ["NumIters", "Seconds", "LearningRate"]
    assert rows[19]["NumIters"] == "19" and rows[19]["loss"] == "nan"
    assert rows[0]["LearningRate"] == "50"
    code, out, _ = call(["export", str(corpus_log("healthy")), "--table", "test"], capsys)
    rows = list(csv.DictReader(io.StringIO(out)))
    assert [r["accuracy"] for r in rows] == ["0.106667", "0.973333", "0.983333", "0.99"]
    code, out, _ = call(["export", str(corpus_log("healthy")), "--format", "csv"], capsys)
    assert out.startswith("kind,line,run,iteration") and code == 0


def test_rules_and_explain(capsys):
    code, out, _ = call(["rules"], capsys)
    assert code == 0 and len(out.splitlines()) == 13 and "CL101  nan-onset" in out
    code, out, _ = call(["explain", "zero-diff"], capsys)
    assert code == 0 and "dead ReLU" in out
    assert call(["explain", "CL101"], capsys)[1].startswith("CL101 nan-onset")
    assert call(["explain", "nope"], capsys)[0] == 2


def test_version(capsys):
    code, out, _ = call(["--version"], capsys)
    assert code == 0 and "caffelens, version" in out


def test_clirunner_smoke():
    result = CliRunner().invoke(cli, ["diagnose", str(corpus_log("healthy")), "--width", "100"])
    assert result.exit_code == 0 and "No problems found." in result.output


def test_python_dash_m(tmp_path):
    import subprocess
    import sys

    proc = subprocess.run([sys.executable, "-m", "caffelens", "diagnose",
                           str(corpus_log("nan_input")), "--format", "json"],
                          capture_output=True, text=True)
    assert proc.returncode == 1 and json.loads(proc.stdout)["logs"][0]["summary"]["status"] == "error"


def test_log_text_is_never_rich_markup(tmp_path, capsys):
    """A layer named like rich markup or an emoji code is printed as is, in every view."""
    text = corpus_log("nan_input").read_text().replace("conv1", "[bold]x[/bold]:smile:")
    path = tmp_path / "markup.log"
    path.write_text(text)
    for args in (["layers", str(path), "--width", "100"], ["diagnose", str(path), "--width", "200"],
                 ["compare", str(path), str(path)]):
        code, out, err = call(args, capsys)
        assert code in (0, 1) and "Traceback" not in err
    code, out, _ = call(["layers", str(path), "--width", "100"], capsys)
    assert "[bold]x[/bold]:smile:" in out


@pytest.mark.parametrize("toml, message", [
    ('format = "xml"\n', "format must be one of"),
    ("select = 5\n", "select must be a list"),
    ("explode-threshold = -1\n", "positive number"),
    ('select = ["CL9"]\n', "no rule matches"),
])
def test_bad_settings_are_input_errors(tmp_path, monkeypatch, capsys, toml, message):
    (tmp_path / "caffelens.toml").write_text(toml)
    monkeypatch.chdir(tmp_path)
    for command in ("diagnose", "watch"):
        code, _, err = call([command, str(corpus_log("healthy"))] +
                            (["--no-follow"] if command == "watch" else []), capsys)
        assert code == 2 and message in err and "internal error" not in err


def test_bad_options_exit_2(tmp_path, capsys):
    healthy = str(corpus_log("healthy"))
    for args in (["diagnose", healthy, "--explode-threshold", "0"],
                 ["diagnose", healthy, "--select", "CL9"],
                 ["diagnose", healthy, "-o", str(tmp_path / "no" / "x.json")],
                 ["compare", healthy, healthy, "--margin", "-1"],
                 ["compare", healthy, healthy, "--factor", "0"]):
        code, _, err = call(args, capsys)
        assert code == 2 and "internal error" not in err, args


def test_several_logs_one_document(capsys):
    """Several paths run in a process pool and give one document / one summary table."""
    logs = [str(corpus_log(n)) for n in ("healthy", "nan_input", "dead_relu_zero_diff")]
    code, out, _ = call(["diagnose", *logs, "--format", "json"], capsys)
    assert code == 1
    assert [l["summary"]["status"] for l in json.loads(out)["logs"]] == ["ok", "error", "warning"]
    code, out, _ = call(["diagnose", *logs, "--width", "120"], capsys)
    assert code == 1 and "summary" in out
    assert call(["diagnose", logs[0], "missing.log"], capsys)[0] == 2
