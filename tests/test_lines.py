"""Table-driven tests: one real line (verbatim from a Caffe version or fork) → one event."""

from __future__ import annotations

import math

import pytest

from caffelens.lines import classify, looks_like_proto, split_prefix, to_number

NAN = "NAN"


def event(line: str):
    prefix, message = split_prefix(line)
    return classify(message, prefix[0] if prefix else None)


CASES = [
    # D1/D2/D4/D5 debug lines (BVLC 1.0, NVCaffe 0.17, Intel)
    ("I1125 22:24:32.996170 21757 net.cpp:651]     [Forward] Layer conv1, top blob conv1 data: 0.266089",
     ("blob", "forward", "conv1", "top", "conv1", "data", 0.266089)),
    ("I0519 23:35:49.450031 215053 net.cpp:999]     [Forward] Layer conv1, param blob 0 data: 8.23628e-05",
     ("blob", "forward", "conv1", "param", "0", "data", 8.23628e-05)),
    ("I0110 12:21:21.624730 12515 net.cpp:599]     [Backward] Layer loss, bottom blob ip2 diff: 0.015342",
     ("blob", "backward", "loss", "bottom", "ip2", "diff", 0.015342)),
    ("I0315 11:08:25.781900 11950 net.cpp:630]     [Backward] Layer relu3_3, param blob 0 diff: nan",
     ("blob", "backward", "relu3_3", "param", "0", "diff", NAN)),
    ("I0428 10:34:10.712746  2335 net.cpp:663]     [Forward] Layer conv6_4, top blob conv6_4 data: inf",
     ("blob", "forward", "conv6_4", "top", "conv6_4", "data", math.inf)),
    ("I0110 12:21:21.624730 12515 net.cpp:599]     [Forward] Layer loss, top blob (automatic) data: 1.98465",
     ("blob", "forward", "loss", "top", "(automatic)", "data", 1.98465)),
    ("I0110 12:21:21.624730 12515 net.cpp:599]     [Forward] Layer conv5_1/expand/scale, top blob conv5_1/expand data: 1.5",
     ("blob", "forward", "conv5_1/expand/scale", "top", "conv5_1/expand", "data", 1.5)),
    ("I0110 12:21:21.624730 12515 net.cpp:599]     [Forward] Layer ip1_p, param blob shared_w data: 0.05",
     ("blob", "forward", "ip1_p", "param", "shared_w", "data", 0.05)),
    # D9: 2014 one-day variant "asum (mean)": the mean is what we keep
    ("I0726 14:56:44.788625 27342 net.cpp:424]     [debug_info] [Forward] Layer mnist, top blob data data: 7065.09 (0.140806)",
     ("blob", "forward", "mnist", "top", "data", "data", 0.140806)),
    # D6 net norms at E level, NVCaffe 6-digit thread id
    ("E0519 23:35:49.920118 215053 net.cpp:1111]     [Backward] All net params (data, diff): L1 norm = (5887.97, 119.067); L2 norm = (25.8547, 2.82644)",
     ("norms", 5887.97, 119.067, 25.8547, 2.82644)),
    ("E1125 22:24:33.004920 21757 net.cpp:779]     [Backward] All net params (data, diff): L1 norm = (1.12211e+09, nan); L2 norm = (6.94881e+14, inf)",
     ("norms", 1.12211e09, NAN, 6.94881e14, math.inf)),
    # D7/D8 [Update] (rc2 era)
    ("I0216 11:58:39.608300 17497 net.cpp:702]     [Update] Layer conv1, param 0 data: 0.29; diff: 0.0065",
     ("update", "conv1", "0", 0.29, 0.0065)),
    ("I0216 11:58:39.608300 17497 net.cpp:712]     [Update] Layer ip2, param blob 0 (owned by layer ip1, param 0) diff: 0.001",
     ("update_shared", "ip2", "0", "ip1", "0", 0.001)),
    # D10 NVCaffe 0.16 multi-line
    ("I0405 08:29:55.934293 78183 net.cpp:950] [Forward] Layer conv1",
     ("blob_header", "forward", "conv1")),
    ("I0405 08:29:55.934293 78183 net.cpp:955]  -> top blob conv1, count: 123 data: 0.1",
     ("blob_detail", "top", "conv1", "data", 0.1)),
    ("I0405 08:29:55.934293 78183 net.cpp:975]  -> bottom blob data, count: 12, diff: 0.002",
     ("blob_detail", "bottom", "data", "diff", 0.002)),
    # loss lines across versions
    ("I1125 22:24:33.004931 21757 solver.cpp:231] Iteration 0, loss = 2.30248",
     ("loss", 0, 2.30248, None)),
    ("I0728 23:56:00.280272  4259 solver.cpp:218] Iteration 100 (4.71409 iter/s, 21.213s/100 iters), loss = 0.224371",
     ("loss", 100, 0.224371, 4.71409)),
    ("I0617 01:38:27.679226 12178 solver.cpp:218] Iteration 0 (-1.43241e+25 iter/s, 1.25215s/50 iters), loss = 5.38281",
     ("loss", 0, 5.38281, -1.43241e25)),
    ("I0131 12:54:46.797070   164 solver.cpp:242] Iteration 0 (0 iter/s, 1.26811s/1 iter), loss = 2.30648",
     ("loss", 0, 2.30648, 0.0)),
    ("I0405 08:29:55.934293 78183 solver.cpp:337] Iteration 0 (5.50154 s), loss = 6.92188",
     ("loss", 0, 6.92188, None)),
    ("I0519 23:28:22.339370 212057 solver.cpp:337]     [0.0] Iteration 2500 (296.136 iter/s, 0.337683s/100 iter), 5.1/8.2ep, loss = 1.12786",
     ("loss", 2500, 1.12786, 296.136)),
    ("I1226 10:39:44.034162 48847 solver.cpp:243] Iteration 140, loss = nan",
     ("loss", 140, NAN, None)),
    ("I0101 00:00:00.000000 1 solver.cpp:243] Iteration 40, loss = 1.#QNAN",
     ("loss", 40, NAN, None)),
    ("I0101 00:00:00.000000 1 solver.cpp:243] Iteration 40, loss = -nan(ind)",
     ("loss", 40, NAN, None)),
    # lr lines
    ("I0728 23:55:39.066838  4259 sgd_solver.cpp:105] Iteration 0, lr = 0.01",
     ("lr", 0, 0.01, None, None, None)),
    ("I0625 18:29:47.084022   173 sgd_solver.cpp:137] Iteration 0, lr = 0.2, m = 0.9",
     ("lr", 0, 0.2, 0.9, None, None)),
    ("I0228 07:57:10.336941  7886 sgd_solver.cpp:170] Iteration 100, lr = 0.996487, m = 0.9, wd = 0.0005, gs = 169.85",
     ("lr", 100, 0.996487, 0.9, 0.0005, 169.85)),
    ("I0519 23:35:50.068400 215053 sgd_solver.cpp:180] [0.0] Iteration 0, lr = 0.001, m = 0.9, lrm = 0.01, wd = 0.004, gs = 1",
     ("lr", 0, 0.001, 0.9, 0.004, 1.0)),
    # test lines
    ("I0703 14:46:27.170404 30876 solver.cpp:270] Iteration 240, Testing net (#0)",
     ("test_start", 240, 0)),
    ("I1030 08:01:11.823031  8180 solver.cpp:106] Iteration 0, Testing net",
     ("test_start", 0, 0)),
    ("I0703 14:46:31.030282 30876 solver.cpp:319]     Test net output #0: loss1/loss1 = 5.37281 (* 0.3 = 1.61184 loss)",
     ("output", "test", 0, "loss1/loss1", 5.37281, 0.3)),
    ("I0605 00:52:00.048539 27501 solver.cpp:253]     Train net output #0: accuracy = 0",
     ("output", "train", 0, "accuracy", 0.0, None)),
    ("I0519 23:35:50.068375 215053 solver.cpp:358]     [0.0]     Train net output #0: loss = 2.30193 (* 1 = 2.30193 loss)",
     ("output", "train", 0, "loss", 2.30193, 1.0)),
    ("I0519 23:35:49.767199 215053 solver.cpp:581]     (0.0)    Test net output #1: loss = 2.3027 (* 1 = 2.3027 loss)",
     ("output", "test", 1, "loss", 2.3027, 1.0)),
    ("I1226 10:40:28.642740 48847 solver.cpp:259]     Train net output #0: mbox_loss = nan (* 1 = nan loss)",
     ("output", "train", 0, "mbox_loss", NAN, 1.0)),
    ("I1030 08:01:30.135462  8180 solver.cpp:142] Test score #0: 0.0641",
     ("test_score", 0, 0.0641)),
    # clipping, steps, run lines
    ("I0116 15:17:42.365571  5685 sgd_solver.cpp:92] Gradient clipping: scaling down gradients (L2 norm 65233.4 > 5000) by scale factor 0.0766479",
     ("clip", 65233.4, 5000.0, 0.0766479)),
    ("I0319 15:23:25.174888 22685 sgd_solver.cpp:47] MultiStep Status: Iteration 50000, step = 1",
     ("step", 50000, 1)),
    ("I0519 23:35:48.434705 215055 solver.cpp:411] [0.2] Solving CIFAR10_quick Learning Rate Policy: fixed",
     ("solving", "CIFAR10_quick")),
    ("I1125 22:24:32.994838 21757 net.cpp:184] Top shape: 100 16 8 8 (102400)",
     ("shape", (100, 16, 8, 8), 102400)),
    ("I1125 22:24:32.995126 21757 net.cpp:184] Top shape: (1)", ("shape", (), 1)),
    ("I1125 22:24:32.995136 21757 net.cpp:253] loss needs backward computation.",
     ("needs_backward", "loss", True)),
    ("I1125 22:24:32.995138 21757 net.cpp:255] accuracy does not need backward computation.",
     ("needs_backward", "accuracy", False)),
    ("I0101 00:00:00.000000 1 net.cpp:1] Sharing parameters 'shared_w' owned by layer 'ip1', param index 0",
     ("sharing", "shared_w", "ip1", 0)),
    ("I1125 22:24:33.610046 21757 solver.cpp:325] Optimization Done.", ("done", False)),
    ("I0405 10:20:16.816094 78085 caffe.cpp:242] Optimization Done in 1h 50m 47s", ("done", False)),
    ("I0101 00:00:00.000000 1 solver.cpp:1] Optimization stopped early.", ("done", True)),
    ("I0101 00:00:00.000000 1 caffe.cpp:228] Resuming from snapshots/digits_iter_50.solverstate",
     ("resume", "snapshots/digits_iter_50.solverstate")),
    ("I0101 00:00:00.000000 1 solver.cpp:1] Snapshotting to binary proto file snapshots/x_iter_100.caffemodel",
     ("snapshot", "snapshots/x_iter_100.caffemodel")),
    ("I0101 00:00:00.000000 1 solver.cpp:1] Snapshotting solver state to binary proto file snapshots/x_iter_100.solverstate",
     ("snapshot", "snapshots/x_iter_100.solverstate")),
    # crashes
    ("F0617 01:28:09.979980 13482 net.cpp:757] Cannot copy param 0 weights from layer 'fc7'",
     ("crash", "fatal", "Cannot copy param 0 weights from layer 'fc7'")),
    ("F1125 00:00:00.000000 1 blob.cpp:133] Check failed: data_",
     ("crash", "check-failed", "Check failed: data_")),
    ("*** Aborted at 1493312334 (unix time) try \"date -d @1493312334\" if you are using GNU date ***",
     ("crash", "signal", "*** Aborted at 1493312334 (unix time) try \"date -d @1493312334\" if you are using GNU date ***")),
    ("double free or corruption (out)", ("crash", "abort", "double free or corruption (out)")),
    # glog year prefix and no prefix at all
    ("I20261125 22:24:16.096681 21575 solver.cpp:231] Iteration 10, loss = 1.5", ("loss", 10, 1.5, None)),
    ("Iteration 10, loss = 1.5", ("loss", 10, 1.5, None)),
    ("    [Forward] Layer conv1, top blob conv1 data: 0.5",
     ("blob", "forward", "conv1", "top", "conv1", "data", 0.5)),
    # noise that must be ignored
    ("I1125 22:24:32.994772 21757 net.cpp:192] Memory required for data: 321216516", None),
    ("I1125 22:24:32.983922 21757 caffe.cpp:197] Use CPU.", None),
    ("    @     0x7fb19159ea3d  google::LogMessage::Fail()", None),
    ("Process finished with exit code 0", None),
    # cut-off lines are malformed, never a wrong value
    ("I1125 22:24:33.041375 21757 net.cpp:651]     [Forward] Layer relu1, top blob con", ("malformed",)),
    ("I1125 22:24:33.041375 21757 net.cpp:651]     [Forward] Layer relu1, top blob conv1 data: 0.2x", ("malformed",)),
    ("I1125 22:24:33.004937 21757 solver.cpp:247]     Train net output #0: loss = 2.3", ("output", "train", 0, "loss", 2.3, None)),
]


def _same(actual, expected) -> bool:
    if expected == NAN:
        return isinstance(actual, float) and math.isnan(actual)
    if isinstance(expected, tuple) and isinstance(actual, tuple):
        return len(actual) == len(expected) and all(_same(a, e) for a, e in zip(actual, expected))
    return actual == expected and type(actual) is type(expected) if isinstance(expected, float) \
        else actual == expected


@pytest.mark.parametrize("line, expected", CASES, ids=[c[0][-60:] for c in CASES])
def test_classify(line, expected):
    assert _same(event(line), expected), event(line)


@pytest.mark.parametrize("text, expected", [
    ("0.0645037", 0.0645037), ("1.58482e+08", 1.58482e8), ("-0", -0.0), ("1e+38", 1e38),
    ("3.40282e+38", 3.40282e38), ("1.4013e-45", 1.4013e-45), ("inf", math.inf),
    ("-inf", -math.inf), ("1.#INF", math.inf), ("-1.#INF", -math.inf),
    ("nan", NAN), ("-nan", NAN), ("NaN", NAN), ("1.#QNAN", NAN), ("-1.#IND", NAN),
    ("-nan(ind)", NAN),
])
def test_numbers(text, expected):
    assert _same(to_number(text), expected)


@pytest.mark.parametrize("text", ["", "abc", "1_0", "0x10z", "1.#", "--1"])
def test_bad_numbers(text):
    with pytest.raises(ValueError):
        to_number(text)


def test_prefix_variants():
    assert split_prefix("I0603 04:24:33.434226   822 caffe.cpp:279] Use CPU.") == (
        ("I", "0603", 4 * 3600 + 24 * 60 + 33.434226, 822), "Use CPU.")
    prefix, message = split_prefix("E20261125 22:24:16.096681 21575 net.cpp:779] x")
    assert prefix[:2] == ("E", "20261125") and message == "x"
    assert split_prefix("base_lr: 0.01") == (None, "base_lr: 0.01")


@pytest.mark.parametrize("line, proto", [
    ("base_lr: 0.01", True), ("layer {", True), ("  }", True), ("  top: \"conv1\"", True),
    ("Creating training net from net file: x", False), ("Use CPU.", False),
    ("Top shape: 1 2", False),
])
def test_looks_like_proto(line, proto):
    assert looks_like_proto(line) is proto
