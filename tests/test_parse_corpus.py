"""Every parser-level fact in the corpus EXPECTED.md files, asserted on the real logs."""

from __future__ import annotations

import math

import pytest

import caffelens
from caffelens.records import (
    BlobValue, Crash, Finished, GradientClip, LearningRate, Loss, NetConfig, NetNorms, Output,
    Resume, Snapshot, SolverConfig, TestStart,
)

from conftest import corpus_log


def of(records, kind):
    return [r for r in records if isinstance(r, kind)]


def test_healthy_counts_and_series(corpus_records):
    records = corpus_records("healthy")
    blobs = of(records, BlobValue)
    assert sum(b.direction == "forward" for b in blobs) == 858
    assert sum(b.direction == "backward" for b in blobs) == 480
    assert len(of(records, NetNorms)) == 30
    assert all(math.isfinite(b.value) for b in blobs)
    losses = of(records, Loss)
    assert (losses[0].iteration, losses[0].value) == (0, 2.30248)
    assert (losses[-2].iteration, losses[-2].value) == (290, 0.00556677)
    assert (losses[-1].iteration, losses[-1].value) == (300, 0.00306797)  # forward-only pass
    lrs = {r.iteration: r.value for r in of(records, LearningRate)}
    assert lrs[190] == 0.05 and lrs[200] == 0.025
    accuracy = [(o.iteration, o.value) for o in of(records, Output)
                if o.phase == "test" and o.name == "accuracy"]
    assert accuracy == [(0, 0.106667), (100, 0.973333), (200, 0.983333), (300, 0.99)]
    assert not [b for b in blobs if b.direction == "backward" and b.stat == "diff"
                and b.value == 0]


def test_healthy_attribution(corpus_records):
    records = corpus_records("healthy")
    blobs = of(records, BlobValue)
    # the first train block (lines before "Iteration 0, loss") belongs to iteration 0
    train0 = [b for b in blobs if b.phase == "train" and b.iteration == 0]
    assert train0 and all(b.pass_index == 0 for b in train0)
    assert {b.layer for b in train0} >= {"data", "conv1", "loss"}
    loss0 = next(r for r in records if isinstance(r, Loss))
    assert max(b.line for b in train0) < loss0.line
    # test batches: 3 test batches per test (test_iter: 3), net 0, never in training series
    test0 = [b for b in blobs if b.phase == "test" and b.iteration == 0]
    assert {b.batch for b in test0} == {0, 1, 2}
    assert {b.net for b in test0} == {0}
    assert all(b.direction == "forward" for b in test0)
    # bias param at iteration 0 prints data 0 and resolves to index 1
    bias = [b for b in train0 if b.layer == "conv1" and b.role == "param" and b.blob == "1"]
    assert bias[0].value == 0 and bias[0].param_index == 1
    # Caffe 1.0 prints no debug block for the forward-only pass after max_iter; the test
    # at 300 comes after its loss line and is still a test
    assert not [b for b in blobs if b.phase == "train" and b.iteration == 300]
    assert {b.batch for b in blobs if b.phase == "test" and b.iteration == 300} == {0, 1, 2}


def test_iter_size_passes(corpus_records):
    records = corpus_records("iter_size")
    norms = [n for n in of(records, NetNorms) if n.iteration == 0]
    assert [(n.pass_index, n.l1_diff) for n in norms] == [(0, 71.4304), (1, 112.695)]
    blobs = [b for b in of(records, BlobValue) if b.phase == "train"]
    assert {b.pass_index for b in blobs} == {0, 1}
    iterations = [r.iteration for r in of(records, Loss)]
    assert iterations == list(range(0, 101, 10))
    loss10 = next(r for r in of(records, Loss) if r.iteration == 10)
    out10 = next(o for o in of(records, Output) if o.phase == "train" and o.iteration == 10)
    assert (loss10.value, out10.value) == (2.06327, 1.96336)
    assert of(records, Loss)[-1].value == 0.0634403
    solver = of(records, SolverConfig)[0].settings
    assert (solver.iter_size, solver.average_loss) == (2, 5)


def test_lr_explode_nan_onset_lines(corpus_records):
    records = corpus_records("lr_explode_nan")
    blobs = of(records, BlobValue)
    first_large = next(b for b in blobs if math.isfinite(b.value) and b.value > 1e8)
    assert (first_large.iteration, first_large.direction, first_large.layer,
            first_large.blob, first_large.value, first_large.line) == (
        2, "forward", "ip2", "ip2", 1.58482e08, 681)
    norms = of(records, NetNorms)
    bad_norm = next(n for n in norms if not math.isfinite(n.l2_diff))
    assert (bad_norm.iteration, bad_norm.line, bad_norm.l2_data) == (17, 1286, 6.94881e14)
    first_bad = min((b for b in blobs if not math.isfinite(b.value)), key=lambda b: b.line)
    assert (first_bad.iteration, first_bad.direction, first_bad.layer, first_bad.blob,
            first_bad.role, first_bad.line) == (18, "backward", "conv2", "pool1", "bottom", 1318)
    assert math.isinf(first_bad.value)
    first_nan = min((b for b in blobs if math.isnan(b.value)), key=lambda b: b.line)
    assert (first_nan.iteration, first_nan.layer, first_nan.blob, first_nan.line) == (
        18, "relu1", "conv1", 1322)
    losses = {r.iteration: r for r in of(records, Loss)}
    assert losses[1].value == 81.8779 and losses[18].value == 77.784
    assert math.isnan(losses[19].value) and losses[19].line == 1365
    test_loss = [o for o in of(records, Output) if o.phase == "test" and o.name == "loss"]
    assert [o.iteration for o in test_loss if math.isnan(o.value)] == [20, 40, 60]
    crash = of(records, Crash)
    assert crash and crash[0].after_done and "double free or corruption" in crash[0].message
    assert of(records, Finished)


def test_nan_input(corpus_records):
    records = corpus_records("nan_input")
    blobs = of(records, BlobValue)
    first_bad = min((b for b in blobs if not math.isfinite(b.value)), key=lambda b: b.line)
    assert (first_bad.iteration, first_bad.phase, first_bad.direction, first_bad.layer,
            first_bad.blob, first_bad.line) == (20, "train", "forward", "data", "data", 746)
    label = next(b for b in blobs if b.iteration == 20 and b.phase == "train"
                 and b.layer == "data" and b.blob == "label")
    assert label.value == 4.01562
    conv1_w = next(b for b in blobs if b.iteration == 20 and b.phase == "train"
                   and b.layer == "conv1" and b.role == "param" and b.blob == "0")
    assert conv1_w.value == 0.311347
    assert next(r for r in of(records, Loss) if r.iteration == 15).value == 1.47633
    assert math.isnan(next(r for r in of(records, Loss) if r.iteration == 20).value)
    test25 = [b for b in blobs if b.phase == "test" and b.iteration == 25
              and b.layer == "conv1" and b.role == "param" and b.blob == "0"]
    assert test25[0].line == 791 and math.isnan(test25[0].value)
    assert {o.iteration for o in of(records, Output)
            if o.phase == "test" and o.name == "loss" and math.isnan(o.value)} == {25, 50}
    assert of(records, Crash)[0].after_done


def test_dead_relu_zero_diffs(corpus_records):
    records = corpus_records("dead_relu_zero_diff")
    blobs = [b for b in of(records, BlobValue) if b.phase == "train"]
    displayed = list(range(0, 100, 10))
    for layer, role, blob in (("relu1", "bottom", "conv1"), ("conv1", "param", "0"),
                              ("conv1", "param", "1"), ("conv2", "param", "0")):
        series = [(b.iteration, b.value) for b in blobs if b.direction == "backward"
                  and b.layer == layer and b.role == role and b.blob == blob]
        assert series == [(i, 0.0) for i in displayed], (layer, blob)
    pool1 = next(b for b in blobs if b.iteration == 0 and b.direction == "backward"
                 and b.layer == "pool1")
    assert pool1.value == 0.000133252
    assert of(records, Loss)[-1].value == 2.30506


def test_multi_loss_outputs(corpus_records):
    records = corpus_records("multi_loss")
    out0 = [(o.index, o.name, o.value, o.weight) for o in of(records, Output)
            if o.phase == "train" and o.iteration == 0]
    assert out0 == [(0, "aux_loss", 2.27645, 100.0), (1, "loss", 2.30678, 1.0)]
    assert of(records, Loss)[0].value == 229.952
    net = of(records, NetConfig)[0].definition
    assert net.layer("aux_loss").loss_weight() == 100


def test_resume_starts_at_snapshot_iteration(corpus_records):
    records = corpus_records("resume")
    resume = of(records, Resume)
    assert resume[0].path == "snapshots/digits_iter_50.solverstate"
    assert resume[0].from_iteration == 50
    tests = of(records, TestStart)
    assert tests[0].iteration == 50
    losses = of(records, Loss)
    assert (losses[0].iteration, losses[0].value) == (50, 0.0908408)
    assert [r.iteration for r in losses] == [50, 60, 70, 80, 90, 100]
    assert losses[-1].value == 0.0232161
    accuracy = {o.iteration: o.value for o in of(records, Output)
                if o.phase == "test" and o.name == "accuracy"}
    assert accuracy[50] == 0.936667 and accuracy[75] == 0.976667 and accuracy[100] == 0.983333
    assert [s.iteration for s in of(records, Snapshot)] == [100, 100]
    assert {r.run for r in records} == {0}


def test_resume_part1_snapshot(corpus_records):
    records = list(caffelens.parse(corpus_log("resume").with_name("train_part1.log")))
    assert of(records, Loss)[-1].iteration == 50 and of(records, Loss)[-1].value == 0.217125
    snaps = of(records, Snapshot)
    assert [s.path for s in snaps] == ["snapshots/digits_iter_50.caffemodel",
                                       "snapshots/digits_iter_50.solverstate"]


def test_no_debug_info(corpus_records):
    records = corpus_records("no_debug_info")
    assert not of(records, BlobValue) and not of(records, NetNorms)
    losses = of(records, Loss)
    assert (losses[0].value, losses[-1].iteration, losses[-1].value) == (2.30248, 300, 0.00306797)
    solver = of(records, SolverConfig)[0].settings
    assert solver.debug_info is False


@pytest.mark.parametrize("name", ["healthy", "lr_explode_nan", "nan_input", "dead_relu_zero_diff",
                                  "multi_loss", "iter_size", "no_debug_info", "resume"])
def test_every_record_has_valid_line_and_no_malformed(name, corpus_records):
    parser = caffelens.Parser()
    records = list(caffelens.parse(corpus_log(name), parser))
    total = sum(1 for _ in open(corpus_log(name), "rb"))
    assert all(1 <= r.line <= total for r in records)
    assert parser.stats.lines == total
    assert parser.stats.malformed == 0
    assert parser.stats.bad_dumps == 0
    # train series never mixes in test values: every train blob has an iteration
    assert all(b.iteration is not None for b in records if isinstance(b, BlobValue))


def test_clip_lines_absent_in_corpus(corpus_records):
    assert not of(corpus_records("lr_explode_nan"), GradientClip)


@pytest.mark.parametrize("name", ["healthy", "lr_explode_nan", "nan_input", "dead_relu_zero_diff",
                                  "multi_loss", "iter_size", "no_debug_info", "resume"])
def test_fast_path_equals_reference_path(name):
    """The skeleton cache for debug lines yields exactly the records of plain matching."""
    fast = [r.to_dict() for r in caffelens.parse(corpus_log(name), caffelens.Parser(fast=True))]
    slow = [r.to_dict() for r in caffelens.parse(corpus_log(name), caffelens.Parser(fast=False))]
    assert fast == slow
