"""What each corpus EXPECTED.md concludes, stated by the findings."""

from __future__ import annotations

import math

import pytest

import caffelens
from caffelens.rules import Severity


def by_rule(diagnosis, rule):
    return [f for f in diagnosis.findings if f.rule == rule]


def test_lr_explode_nan(corpus_diagnosis):
    d = corpus_diagnosis("lr_explode_nan")
    (explode,) = by_rule(d, "exploding-values")
    assert (explode.iteration, explode.layer, explode.direction, explode.blob, explode.line) == (
        2, "ip2", "forward", "ip2", 681)
    assert explode.severity is Severity.WARNING
    assert "decades per display" in explode.message
    (onset,) = by_rule(d, "nan-onset")
    assert (onset.iteration, onset.direction, onset.layer, onset.blob, onset.role, onset.line) == (
        18, "backward", "conv2", "pool1", "bottom", 1318)
    assert onset.likely_cause == "gradient-explosion"
    assert onset.layer_type == "Convolution"
    assert "lower base_lr from 50 to 5" in onset.fix and "clip_gradients" in onset.fix
    assert any("iteration 17" in e and "line 1286" in e for e in onset.evidence)
    (loss,) = by_rule(d, "nan-loss")
    assert (loss.iteration, loss.line) == (19, 1365)
    assert by_rule(d, "loss-saturated")
    (crash,) = by_rule(d, "crash")
    assert crash.severity is Severity.WARNING and "Optimization Done" in crash.message
    assert d.findings[0].rule == "nan-onset"  # root cause first
    assert d.status == "error"


def test_nan_input(corpus_diagnosis):
    d = corpus_diagnosis("nan_input")
    (onset,) = by_rule(d, "nan-onset")
    assert (onset.iteration, onset.phase, onset.direction, onset.layer, onset.blob) == (
        20, "train", "forward", "data", "data")
    assert onset.likely_cause == "bad-input"
    assert "check the input data" in onset.fix and "`data`" in onset.fix
    assert not by_rule(d, "exploding-values")
    assert by_rule(d, "nan-loss")[0].iteration == 20
    assert by_rule(d, "crash")[0].severity is Severity.WARNING


def test_dead_relu(corpus_diagnosis):
    d = corpus_diagnosis("dead_relu_zero_diff")
    zero = by_rule(d, "zero-diff")
    assert len(zero) == 1
    (finding,) = zero
    assert finding.layer == "conv1" and finding.likely_cause == "dead-relu"
    assert "relu1" in finding.message and "conv2" in finding.message
    assert "bias" in finding.fix
    assert by_rule(d, "loss-at-chance")
    assert not by_rule(d, "nan-onset") and not by_rule(d, "nan-loss")
    assert d.status == "warning"


def test_multi_loss(corpus_diagnosis):
    d = corpus_diagnosis("multi_loss")
    (dominant,) = by_rule(d, "dominant-loss")
    assert dominant.layer == "aux_loss"
    assert "lower loss_weight of layer aux_loss (now 100)" in dominant.fix
    assert not by_rule(d, "nan-onset")
    assert d.findings[0].rule == "dominant-loss"


@pytest.mark.parametrize("name", ["healthy", "iter_size", "resume"])
def test_healthy_runs_are_clean(name, corpus_diagnosis):
    d = corpus_diagnosis(name)
    assert d.findings == []
    assert d.status == "ok"


def test_no_debug_info_is_info_only(corpus_diagnosis):
    d = corpus_diagnosis("no_debug_info")
    assert [f.rule for f in d.findings] == ["no-debug-info"]
    assert d.status == "info"


def test_summary_fields(corpus_diagnosis):
    s = corpus_diagnosis("resume").summary()
    assert (s["first_iteration"], s["last_iteration"], s["debug_info"]) == (50, 100, True)
    assert s["final_loss"] == 0.0232161 and s["status"] == "ok"
    s = corpus_diagnosis("lr_explode_nan").summary()
    assert s["final_loss"] == "nan" and s["lines"] == 3197


def test_threshold_is_configurable(corpus_diagnosis):
    from conftest import corpus_log

    d = caffelens.diagnose(corpus_log("lr_explode_nan"), caffelens.Config(explode_threshold=1e12))
    (explode,) = by_rule(d, "exploding-values")
    assert explode.iteration > 2 and explode.value >= 1e12
    assert math.isfinite(explode.value)


@pytest.mark.parametrize("name", ["healthy", "lr_explode_nan", "nan_input", "dead_relu_zero_diff",
                                  "multi_loss", "iter_size", "no_debug_info", "resume"])
def test_blob_sink_equals_records(name):
    """diagnose's direct path (debug values into the traces, no records) = building from records."""
    from caffelens.engine import evaluate
    from caffelens.history import TraceBuilder

    from conftest import corpus_log

    parser = caffelens.Parser()
    traces = TraceBuilder().add_all(caffelens.parse(corpus_log(name), parser))
    via_records = evaluate(traces, parser.stats, caffelens.Config(), "x")
    direct = caffelens.diagnose(corpus_log(name), path="x")
    assert [f.to_dict() for f in direct.findings] == [f.to_dict() for f in via_records.findings]
    assert direct.summary() == via_records.summary()
