"""Rules on small synthetic logs: each fires where it should and stays quiet where it must."""

from __future__ import annotations

import pytest

import caffelens
from caffelens.rules import Severity

P = "I1125 22:24:33.000000 21757 net.cpp:651]     "
S = "I1125 22:24:33.000000 21757 solver.cpp:231] "

NET = """I1125 22:24:32.985875 21757 net.cpp:85] Initializing net from parameters: 
name: "Tiny"
state { phase: TRAIN }
layer { name: "data" type: "Input" top: "data" }
layer { name: "log" type: "Log" bottom: "data" top: "log" }
layer { name: "ip" type: "InnerProduct" bottom: "log" top: "ip" param { lr_mult: 1 } param { lr_mult: 2 } }
layer { name: "loss" type: "EuclideanLoss" bottom: "ip" bottom: "data" top: "loss" }
I1125 22:24:32.995180 21757 net.cpp:310] Network initialization done."""


def run(*blocks: str, solver: str = "base_lr: 0.1\nlr_policy: \"fixed\"\ndisplay: 1") -> list:
    text = (f"I1125 22:24:32.984313 21757 solver.cpp:51] Initializing solver from parameters: \n"
            f"{solver}\n{NET}\n" + "\n".join(blocks))
    return caffelens.diagnose(text.splitlines(), path="tiny.log").findings


def block(it: int, log="0.5", ip="1", ip_w="0.1", w_diff="0.01", loss="0.3", lr="0.1",
          diff="0.02") -> str:
    return "\n".join([
        P + "[Forward] Layer data, top blob data data: 1",
        P + f"[Forward] Layer log, top blob log data: {log}",
        P + f"[Forward] Layer ip, top blob ip data: {ip}",
        P + f"[Forward] Layer ip, param blob 0 data: {ip_w}",
        P + "[Forward] Layer ip, param blob 1 data: 0.1",
        P + f"[Forward] Layer loss, top blob loss data: {loss}",
        P + f"[Backward] Layer loss, bottom blob ip diff: {diff}",
        P + f"[Backward] Layer ip, bottom blob log diff: {diff}",
        P + f"[Backward] Layer ip, param blob 0 diff: {w_diff}",
        P + "[Backward] Layer ip, param blob 1 diff: 0.01",
        S + f"Iteration {it}, loss = {loss}",
        S + f"    Train net output #0: loss = {loss} (* 1 = {loss} loss)",
        S + f"Iteration {it}, lr = {lr}",
    ])


def rules(findings) -> list[str]:
    return [f.rule for f in findings]


def test_healthy_tiny_run_is_quiet():
    assert run(*(block(i) for i in range(6)), S + "Optimization Done.") == []


@pytest.mark.parametrize("where, cause", [
    (dict(log="nan"), "layer-forward"),
    (dict(loss="nan"), "loss-layer"),
    (dict(diff="inf"), "backward"),
    (dict(ip="nan", ip_w="nan"), "backward"),
    (dict(ip="inf", ip_w="3e+38"), "gradient-explosion"),
])
def test_nan_onset_causes(where, cause):
    findings = run(block(0), block(1), block(2, **where))
    onset = next(f for f in findings if f.rule == "nan-onset")
    assert onset.iteration == 2 and onset.likely_cause == cause
    if cause == "layer-forward":
        assert onset.layer_type == "Log" and "Log of a value ≤ 0" in onset.message


def test_exploding_then_nan_is_gradient_explosion():
    findings = run(block(0), block(1, ip="5e+08"), block(2, ip="5e+12"), block(3, diff="nan"))
    assert [f.likely_cause for f in findings if f.rule == "nan-onset"] == ["gradient-explosion"]
    explode = next(f for f in findings if f.rule == "exploding-values")
    assert explode.iteration == 1 and explode.layer == "ip"


def test_zero_diff_fires_and_frozen_or_initial_zero_does_not():
    zero = run(*(block(i, w_diff="0") for i in range(4)))
    (finding,) = [f for f in zero if f.rule == "zero-diff"]
    assert finding.layer == "ip" and finding.blob == "0"
    once = run(block(0, w_diff="0"), *(block(i) for i in range(1, 4)))
    assert "zero-diff" not in rules(once)
    # a diff that only becomes 0 in the last two displays is not (yet) a dead layer
    late = run(*(block(i) for i in range(4)), block(4, w_diff="0"), block(5, w_diff="0"))
    assert "zero-diff" not in rules(late)


def test_zero_diff_with_different_zero_runs_per_param():
    """Regression (fuzz): two params of one layer with different counts of trailing zeros."""
    lines = [block(0, w_diff="0.1")] + [block(i, w_diff="0") for i in range(1, 4)]
    text = "\n".join(lines).replace("param blob 1 diff: 0.01", "param blob 1 diff: 0")
    findings = caffelens.diagnose(text.splitlines(), path="x").findings
    assert [f.rule for f in findings if f.rule == "zero-diff"] == ["zero-diff"]


def test_lr_anomaly():
    nan = run(block(0), block(1, lr="nan"))
    (finding,) = [f for f in nan if f.rule == "lr-anomaly"]
    assert finding.severity is Severity.ERROR and finding.iteration == 1
    rising = run(block(0, lr="0.1"), block(1, lr="0.2"))
    (finding,) = [f for f in rising if f.rule == "lr-anomaly"]
    assert finding.severity is Severity.WARNING and '"fixed"' in finding.message
    assert "lr-anomaly" not in rules(run(block(0, lr="0.1"), block(1, lr="0.05")))
    warm = run(block(0, lr="0.1"), block(1, lr="0.2"),
               solver='base_lr: 0.1\nlr_policy: "sigmoid"\ndisplay: 1')
    assert "lr-anomaly" not in rules(warm)


def test_nan_loss_without_debug_info():
    lines = [S + "Iteration 0, loss = 2.3", S + "Iteration 10, loss = -nan",
             S + "Iteration 10, Testing net (#0)", S + "    Test net output #0: loss = nan"]
    findings = caffelens.diagnose(lines, path="x").findings
    nan = next(f for f in findings if f.rule == "nan-loss")
    assert nan.iteration == 10 and "debug_info: true" in nan.fix
    assert "no-debug-info" in rules(findings)


def test_gradient_clipping_info_vs_warning():
    occasional = [S + f"Iteration {i}, loss = 1" for i in range(0, 100, 10)]
    occasional.insert(3, S + "Gradient clipping: scaling down gradients (L2 norm 12 > 10) "
                             "by scale factor 0.833")
    (clip,) = [f for f in caffelens.diagnose(occasional, path="x").findings
               if f.rule == "gradient-clipping"]
    assert clip.severity is Severity.INFO
    hard = occasional + [S + "Gradient clipping: scaling down gradients (L2 norm 5000 > 10) "
                             "by scale factor 0.002"]
    (clip,) = [f for f in caffelens.diagnose(hard, path="x").findings
               if f.rule == "gradient-clipping"]
    assert clip.severity is Severity.WARNING and clip.fix


def test_crash_before_and_after_done():
    before = [S + "Iteration 0, loss = 1",
              "F1125 22:24:33.000000 21757 syncedmem.cpp:56] Check failed: error == "
              "cudaSuccess (2 vs. 0)  out of memory"]
    (crash,) = [f for f in caffelens.diagnose(before, path="x").findings if f.rule == "crash"]
    assert crash.severity is Severity.ERROR and "batch_size" in crash.fix
    after = [S + "Iteration 0, loss = 1", S + "Optimization Done.",
             "double free or corruption (out)"]
    (crash,) = [f for f in caffelens.diagnose(after, path="x").findings if f.rule == "crash"]
    assert crash.severity is Severity.WARNING


def test_nan_loss_survives_history_thinning():
    """Runs longer than the bounded history still report their NaN (regression, review)."""
    from caffelens.history import DIAGNOSE_POINTS, RECORDS_PER_POINT

    count = 2 * RECORDS_PER_POINT * DIAGNOSE_POINTS + 1000
    first = count // 2 + 1  # an odd index: the first thinning drops it from the history
    lines = [S + f"Iteration {i}, loss = {'nan' if i >= first else '1.5'}" for i in range(count)]
    findings = caffelens.diagnose(lines, path="x").findings
    nan = next(f for f in findings if f.rule == "nan-loss")
    assert nan.iteration == first and f"{count - first} of {count}" in nan.message


def test_nan_loss_message_keeps_blob_case():
    lines = [S + "Iteration 0, loss = 1",
             S + "    Train net output #0: mbox_Loss = nan (* 1 = nan loss)"]
    nan = next(f for f in caffelens.diagnose(lines, path="x").findings if f.rule == "nan-loss")
    assert "mbox_Loss" in nan.message


def test_nan_after_a_layer_that_grows_its_top():
    """Seed rule: NaN born right after a layer whose top is larger than its bottom."""
    shapes = "\n".join([
        "I1125 22:24:32.99 21757 net.cpp:177] Setting up data",
        "I1125 22:24:32.99 21757 net.cpp:184] Top shape: 8 1 4 4 (128)",
        "I1125 22:24:32.99 21757 net.cpp:177] Setting up log",
        "I1125 22:24:32.99 21757 net.cpp:184] Top shape: 8 1 16 16 (2048)",
        "I1125 22:24:32.99 21757 net.cpp:177] Setting up ip",
        "I1125 22:24:32.99 21757 net.cpp:184] Top shape: 8 10 (80)",
    ])
    findings = run(shapes, block(0), block(1, ip="nan"))
    onset = next(f for f in findings if f.rule == "nan-onset")
    assert onset.layer == "ip" and onset.likely_cause == "layer-forward"
    assert any("right after log (Log)" in e and "2048" in e for e in onset.evidence)
    quiet = run(block(0), block(1, ip="nan"))  # no Top shape lines: nothing claimed
    assert not next(f for f in quiet if f.rule == "nan-onset").evidence


def test_loss_spike_survives_history_thinning():
    """A one-off 1e10 loss in a run longer than the kept history is still the evidence
    (the ssdlite public log: 24,001 displayed losses, one spike at 3,330)."""
    from caffelens.history import DIAGNOSE_POINTS, RECORDS_PER_POINT

    count = 2 * RECORDS_PER_POINT * DIAGNOSE_POINTS + 1000
    spike = 1001  # an odd index: thinning drops it from the kept losses
    lines = [S + f"Iteration {i}, loss = {'1e+10' if i == spike else '1.5'}"
             for i in range(count)]
    d = caffelens.diagnose(lines, path="x")
    assert spike not in [r.iteration for r in d.traces[0].losses]
    (explode,) = [f for f in d.findings if f.rule == "exploding-values"]
    assert explode.iteration == spike and explode.value == 1e10
