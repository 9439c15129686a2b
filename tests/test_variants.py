"""Format variants the corpus lacks (hand-made fixtures, see tests/data/variants/README.md)."""

from __future__ import annotations

import math

import pytest

import caffelens
from caffelens.records import (
    BlobValue, Crash, Finished, GradientClip, LearningRate, Loss, NetConfig, NetNorms, Output,
    ParamSharing, Resume, SolverConfig,
)

from conftest import VARIANTS

NAMES = sorted(p.stem for p in VARIANTS.glob("*.log"))


def records(name):
    parser = caffelens.Parser()
    out = list(caffelens.parse(VARIANTS / f"{name}.log", parser))
    return out, parser.stats


def of(rs, kind):
    return [r for r in rs if isinstance(r, kind)]


def losses(rs, run=None):
    return [(r.iteration, r.value) for r in of(rs, Loss) if run is None or r.run == run]


def test_year_prefix_and_rollover():
    rs, _ = records("year_prefix")
    assert losses(rs) == [(0, 2.35144), (10, 1.21403), (20, 0.612257), (30, 0.473318),
                          (40, 0.358861), (50, 0.390126), (60, 0.300214)]
    lrs = {r.iteration: r.value for r in of(rs, LearningRate)}
    assert lrs[30] == 0.05 and lrs[40] == 0.025
    times = [r.time for r in rs if getattr(r, "time", None) is not None]
    assert times == sorted(times) and times[-1] < 3600  # no year jump across Dec 31 → Jan 1
    acc = [(o.iteration, o.value) for o in of(rs, Output) if o.name == "accuracy"]
    assert acc == [(0, 0.0933333), (30, 0.906667), (60, 0.93)]


def test_mmdd_rollover_without_year():
    lines = ["I1231 23:59:59.500000 1 solver.cpp:1] Iteration 0, loss = 1",
             "I0101 00:00:00.500000 1 solver.cpp:1] Iteration 10, loss = 1"]
    times = [r.time for r in caffelens.parse(lines)]
    assert times == [0.0, 1.0]


def test_no_prefix_crlf():
    rs, stats = records("no_prefix")
    assert losses(rs) == [(0, 2.30248), (10, 1.96289), (20, 0.873501), (30, 0.523449),
                          (40, 0.197555), (50, 0.217125)]
    blobs = of(rs, BlobValue)
    assert sum(b.direction == "forward" for b in blobs) == 50
    assert sum(b.direction == "backward" for b in blobs) == 35
    assert [n.line for n in of(rs, NetNorms)] == [157, 178, 199, 220, 241]
    assert {b.iteration for b in blobs} == {0, 10, 20, 30, 40}
    assert of(rs, SolverConfig)[0].settings.display == 10
    assert stats.malformed == 0


def test_nvcaffe017_device_tags_and_workers():
    rs, _ = records("nvcaffe017_devtags")
    assert losses(rs)[:5] == [(0, 2.30193), (1, 2.2956), (2, 2.28577), (50000, 1.12844),
                              (100000, 1.04021)]
    assert losses(rs)[-1] == (100000, 1.07136)
    lrs = of(rs, LearningRate)
    assert [(r.iteration, r.value, r.momentum, r.weight_decay, r.grad_scale) for r in lrs] == [
        (0, 0.001, 0.9, 0.004, 1.0), (50000, 0.001, 0.9, 0.004, 1.0)]
    norms = [(n.line, n.iteration, n.thread) for n in of(rs, NetNorms)]
    assert (288, 0, 96102) in norms and (292, 0, 96103) in norms
    assert (315, 50000, 96103) in norms and (316, 50000, 96102) in norms
    tests = [(o.iteration, o.value) for o in of(rs, Output) if o.phase == "test"]
    assert tests == [(0, 2.30266), (50000, 1.16614), (100000, 1.13709)]
    assert of(rs, Finished) and {r.run for r in rs} == {0}
    assert len([b for b in of(rs, BlobValue) if b.direction == "forward"]) == 30


def test_nvcaffe016_multiline_debug():
    rs, stats = records("nvcaffe016_multiline_debug")
    blobs = [b for b in of(rs, BlobValue) if b.iteration == 0]
    fc8 = [b for b in blobs if b.layer == "fc8"]
    assert ("forward", "top", "fc8", "data", 0.0501709) in [
        (b.direction, b.role, b.blob, b.stat, b.value) for b in fc8]
    assert ("backward", "param", "0", "diff", 1.63913e-05) in [
        (b.direction, b.role, b.blob, b.stat, b.value) for b in fc8]
    assert {b.iteration for b in of(rs, BlobValue)} == {0, 100, 200}
    assert losses(rs)[3] == (100, 6.75391) and losses(rs)[-1] == (300, 6.25781)
    lr = next(r for r in of(rs, LearningRate) if r.iteration == 100)
    assert (lr.value, lr.momentum, lr.weight_decay, lr.grad_scale) == (0.444444, 0.9, 0.0005, 169.85)
    assert stats.malformed == 0


def test_windows_nan_spellings():
    rs, _ = records("windows_nan")
    assert {r.run for r in rs} == {0, 1}
    run1 = losses(rs, 0)
    assert run1[:2] == [(0, 2.3541), (10, 87.3365)] and math.isnan(run1[2][1])
    first = min((b for b in of(rs, BlobValue) if not math.isfinite(b.value)), key=lambda b: b.line)
    assert (first.line, first.layer, first.iteration, first.value) == (123, "ip1", 20, math.inf)
    nan = min((b for b in of(rs, BlobValue) if math.isnan(b.value)), key=lambda b: b.line)
    assert nan.line == 126 and nan.layer == "loss"
    norms = next(n for n in of(rs, NetNorms) if n.line == 130)
    assert math.isinf(norms.l1_data) and math.isnan(norms.l1_diff) and math.isnan(norms.l2_diff)
    run2 = losses(rs, 1)
    assert run2[0] == (0, 2.36107) and math.isnan(run2[2][1]) and run2[2][0] == 20
    d = caffelens.diagnose(VARIANTS / "windows_nan.log")
    onset = next(f for f in d.findings if f.rule == "nan-onset")
    assert (onset.iteration, onset.layer, onset.line) == (20, "ip1", 123)
    assert onset.likely_cause == "gradient-explosion"


def test_update_lines_2015():
    rs, stats = records("update_lines_2015")
    updates = [b for b in of(rs, BlobValue) if b.direction == "update"]
    assert len(updates) == 12 + 6  # D8 gives a diff, D7 a data and a diff value
    assert {b.iteration for b in updates} == {0, 100, 200}
    owned = [b for b in updates if b.layer == "ip1" and b.blob == "ip1_w" and b.iteration == 0]
    assert sorted((b.stat, b.value) for b in owned) == [("data", 0.108019), ("diff", 2.81206e-05)]
    shared = next(b for b in updates if b.layer == "ip1_p" and b.blob == "ip1_w")
    assert shared.param_index == 0 and shared.param_name == "ip1_w"
    for update in updates:  # they come after the lr line of the iteration they belong to
        lr = next(r for r in of(rs, LearningRate) if r.iteration == update.iteration)
        assert update.line > lr.line
    assert losses(rs)[-1] == (300, 0.517209)
    assert stats.malformed == 0


def test_named_params_resolve_to_index_and_name():
    rs, _ = records("named_params_shared")
    blobs = of(rs, BlobValue)
    fwd = next(b for b in blobs if b.layer == "ip1_p" and b.role == "param"
               and b.direction == "forward" and b.blob == "shared_w")
    bwd = next(b for b in blobs if b.layer == "ip1_p" and b.role == "param"
               and b.direction == "backward" and b.blob == "0")
    assert (fwd.param_index, fwd.param_name) == (0, "shared_w")
    assert (bwd.param_index, bwd.param_name) == (0, "shared_w")
    sharing = of(rs, ParamSharing)
    assert [(s.name, s.owner, s.owner_index) for s in sharing] == [
        ("shared_w", "ip1", 0), ("shared_b", "ip1", 1)]
    assert losses(rs)[-1] == (40, 0.47186)


def test_batchnorm_and_frozen_layers_print_no_backward_param_lines():
    rs, _ = records("batchnorm_frozen")
    blobs = of(rs, BlobValue)
    assert not [b for b in blobs if b.direction == "backward" and b.layer in ("bn1", "conv1")]
    bn_stats = [b for b in blobs if b.layer == "bn1" and b.role == "param" and b.blob == "2"]
    assert [b.value for b in bn_stats] == [1.0, 10.9447]
    assert caffelens.diagnose(VARIANTS / "batchnorm_frozen.log").findings == []


def test_two_runs_in_one_file():
    rs, _ = records("two_runs")
    assert losses(rs, 0) == [(0, 2.40473), (10, 9.32417), (20, 14.8806), (30, 11.0472),
                             (40, 16.2291)]
    assert losses(rs, 1)[0] == (0, 2.35911) and losses(rs, 1)[-1] == (100, 0.473126)
    solvers = of(rs, SolverConfig)
    assert [(s.run, s.settings.base_lr) for s in solvers] == [(0, 0.5), (1, 0.01)]
    d = caffelens.diagnose(VARIANTS / "two_runs.log")
    assert not [f for f in d.findings if f.rule == "truncated"]  # the killed run is history
    # run 0 (base_lr 0.5) diverged before it was killed; run 1 is healthy
    assert [(f.rule, f.run, f.iteration) for f in d.findings
            if f.severity >= caffelens.Severity.WARNING] == [("loss-divergence", 0, 10)]


def test_truncated_last_line():
    rs, stats = records("truncated")
    assert losses(rs) == [(0, 2.30248), (10, 1.96289), (20, 0.873501)]
    cut = [b for b in of(rs, BlobValue) if b.iteration == 30]
    assert len(cut) == 5 and max(b.line for b in cut) == 236  # the held-back block is flushed
    assert stats.malformed == 1  # the half line
    assert sum(b.direction == "forward" for b in of(rs, BlobValue)) == 38
    d = caffelens.diagnose(VARIANTS / "truncated.log")
    assert [f.rule for f in d.findings] == ["truncated"]


def test_caffe2014():
    rs, _ = records("caffe2014")
    assert losses(rs)[0] == (100, 0.259651) and losses(rs)[-1] == (1000, 0.00993174)
    lrs = {r.iteration: r.value for r in of(rs, LearningRate)}
    assert lrs[100] == 0.00992565 and lrs[1000] == 0.00931012
    scores = [(o.iteration, o.index, o.value) for o in of(rs, Output) if o.phase == "test"]
    assert scores[:2] == [(0, 0, 0.0641), (0, 1, 2.30298)]
    assert scores[-2:] == [(1000, 0, 0.9798), (1000, 1, 0.06115)]
    nets = of(rs, NetConfig)
    assert nets and nets[0].definition.layers[1].type == "Convolution"


def test_clipping_attribution():
    rs, _ = records("clipping")
    clips = of(rs, GradientClip)
    assert len(clips) == 50
    first = clips[0]
    assert (first.line, first.iteration, first.l2_norm, first.scale) == (138, 0, 65233.4, 0.000153296)
    assert sum(c.iteration is not None for c in clips) == 5
    inf = next(c for c in clips if c.line == 171)
    assert math.isinf(inf.l2_norm) and inf.scale == 0 and inf.iteration is None
    assert inf.after_iteration == 20
    d = caffelens.diagnose(VARIANTS / "clipping.log")
    (clip,) = [f for f in d.findings if f.rule == "gradient-clipping"]
    assert str(clip.severity) == "warning" and "50 of ~51" in clip.message


@pytest.mark.parametrize("name, cause, text", [
    ("crash_check_failed", "check-failed", "Check failed: data_"),
    ("crash_sigsegv", "signal", "*** Aborted at 1493312334"),
])
def test_crashes(name, cause, text):
    rs, _ = records(name)
    crash = of(rs, Crash)[0]
    assert crash.cause == cause and crash.message.startswith(text)
    d = caffelens.diagnose(VARIANTS / f"{name}.log")
    finding = next(f for f in d.findings if f.rule == "crash")
    assert str(finding.severity) == "error" and text in finding.message


def test_two_test_nets_batches():
    rs, _ = records("test_nets_two")
    test = [b for b in of(rs, BlobValue) if b.phase == "test"]
    assert len(test) == 60
    assert {(b.iteration, b.net): max(x.batch for x in test if (x.iteration, x.net) == (
        b.iteration, b.net)) for b in test} == {(0, 0): 1, (0, 1): 2, (10, 0): 1, (10, 1): 2}
    outs = [(o.iteration, o.net, o.value) for o in of(rs, Output) if o.phase == "test"]
    assert outs == [(0, 0, 2.30401), (0, 1, 2.30362), (10, 0, 1.25982), (10, 1, 1.2405)]
    losses_ = [b.value for b in test if b.layer == "loss" and b.iteration == 0 and b.net == 1]
    assert losses_ == [2.30417, 2.29548, 2.3112]
    assert [b for b in of(rs, BlobValue) if b.phase == "train"][0].iteration == 0


def test_resumed_iter_size():
    rs, _ = records("resumed_iter_size")
    assert of(rs, Resume)[0].from_iteration == 1000
    assert losses(rs) == [(1000, 0.310247), (1010, 0.303902), (1020, 0.279477), (1030, 0.289364)]
    norms = of(rs, NetNorms)
    assert [(n.iteration, n.pass_index, n.line) for n in norms[:3]] == [
        (1000, 0, 112), (1000, 1, 122), (1000, 2, 132)]
    assert [n.l1_diff for n in norms[:3]] == [1.25099, 2.48608, 3.59297]
    diffs = [b.value for b in of(rs, BlobValue) if b.iteration == 1000 and b.layer == "ip1"
             and b.direction == "backward" and b.role == "param" and b.blob == "0"]
    assert diffs == [0.00187305, 0.00371694, 0.00537211]


@pytest.mark.parametrize("name", ["year_prefix", "no_prefix", "nvcaffe017_devtags",
                                  "nvcaffe016_multiline_debug", "update_lines_2015",
                                  "named_params_shared", "batchnorm_frozen", "test_nets_two",
                                  "resumed_iter_size", "caffe2014"])
def test_healthy_variants_have_no_warning_or_error(name):
    d = caffelens.diagnose(VARIANTS / f"{name}.log")
    assert [f.rule for f in d.findings if f.severity >= caffelens.Severity.WARNING] == []


@pytest.mark.parametrize("name", NAMES)
def test_every_variant_parses_with_valid_lines(name):
    rs, stats = records(name)
    assert rs and all(1 <= r.line <= stats.lines for r in rs)
    fast = [r.to_dict() for r in caffelens.parse(VARIANTS / f"{name}.log", caffelens.Parser())]
    slow = [r.to_dict() for r in caffelens.parse(VARIANTS / f"{name}.log",
                                                 caffelens.Parser(fast=False))]
    assert fast == slow
