"""`caffelens layers` (golden text at fixed width) and `caffelens compare` (exit codes)."""

from __future__ import annotations

import io
import json
import os
from pathlib import Path

import pytest
from rich.console import Console

import caffelens
from caffelens.cli import main
from caffelens.compare import compare
from caffelens.pictures import _buckets, _worst, layer_rows, render_layers

from conftest import corpus_log

GOLDEN = Path(__file__).parent / "golden"


def render(name: str, stats, width: int) -> str:
    buffer = io.StringIO()
    Console(file=buffer, width=width, color_system=None).print(
        render_layers(caffelens.diagnose(corpus_log(name), path=f"{name}/train.log"), stats, width))
    return buffer.getvalue()


@pytest.mark.parametrize("name, stats, width", [
    ("lr_explode_nan", ("forward", "backward"), 140),
    ("dead_relu_zero_diff", ("ratio",), 80),
])
def test_heatmap_golden(name, stats, width):
    text = render(name, stats, width)
    golden = GOLDEN / f"layers_{name}.txt"
    if os.environ.get("CAFFELENS_UPDATE_GOLDEN"):
        golden.write_text(text)
    assert text == golden.read_text()
    assert all(len(line) <= width for line in text.splitlines())


def test_heatmap_marks_nan_inf_zero_and_net_order():
    trace = caffelens.diagnose(corpus_log("lr_explode_nan")).last
    rows = layer_rows(trace, "forward")
    assert rows.layers[:4] == ["data", "conv1", "relu1", "pool1"]
    text = render("lr_explode_nan", ("forward",), 100)
    pool1 = next(line for line in text.splitlines() if line.startswith("pool1"))
    assert "∞" in pool1 and "×" not in pool1.split()[1][:10]
    relu1 = next(line for line in text.splitlines() if line.startswith("relu1"))
    assert "·" in relu1 and "×" in relu1
    assert "▲ 18 nan-onset (conv2)" in text


def test_decimation_keeps_the_worst_value():
    assert [len(b) for b in _buckets(list(range(100)), 10)] == [10] * 10
    assert _buckets([1, 2], 10) == [[1], [2]]
    nan = float("nan")
    assert _worst([1.0, 5.0, -7.0]) == -7.0
    assert _worst([1.0, float("inf"), nan]) != _worst([1.0, float("inf"), nan])  # NaN wins
    assert _worst([]) is None


def test_layers_without_debug_info(capsys):
    assert main(["layers", str(corpus_log("no_debug_info")), "--width", "80"]) == 0
    assert "set debug_info: true" in " ".join(capsys.readouterr().out.split())


def test_compare_exit_codes(capsys):
    healthy, bad = str(corpus_log("healthy")), str(corpus_log("lr_explode_nan"))
    assert main(["compare", healthy, healthy]) == 0
    assert main(["compare", healthy, str(corpus_log("no_debug_info"))]) == 0
    assert main(["compare", healthy, bad]) == 1
    assert main(["compare", healthy, str(corpus_log("dead_relu_zero_diff"))]) == 1
    assert main(["compare", healthy, "missing.log"]) == 2
    capsys.readouterr()
    assert main(["compare", healthy, bad, "--format", "json"]) == 1
    doc = json.loads(capsys.readouterr().out)
    assert doc["worse"] and doc["departure"]["layer"] == "conv1"


def test_compare_departure_and_deltas():
    result = compare(corpus_log("healthy"), corpus_log("dead_relu_zero_diff"))
    d = result.departure
    assert (d.iteration, d.direction, d.layer, d.role, d.blob) == (0, "forward", "conv1", "top",
                                                                    "conv1")
    assert d.new == 99.9589 and d.ratio > 10
    assert any("accuracy" in r for r in result.reasons)
    assert {f.rule for f in result.new_findings} == {"zero-diff", "loss-at-chance"}
    same = compare(corpus_log("healthy"), corpus_log("healthy"))
    assert not same.worse and same.departure is None and not same.new_findings
    assert all(b == n for _, b, n in same.loss)


def test_compare_margin():
    # iter_size trains the same net differently: its loss at 100 is 0.0634 vs 0.11 (better)
    result = compare(corpus_log("healthy"), corpus_log("iter_size"), margin=0.1)
    assert not [r for r in result.reasons if "train loss" in r]
    reverse = compare(corpus_log("iter_size"), corpus_log("healthy"), margin=0.1)
    assert [r for r in reverse.reasons if "train loss" in r]
    assert not compare(corpus_log("iter_size"), corpus_log("healthy"), margin=1.0).reasons
