"""Rules on the loss curve: saturation, divergence, chance level, one loss dominating."""

from __future__ import annotations

import math
from collections.abc import Iterator

import numpy as np

from caffelens.history import RunTrace
from caffelens.records import Output
from caffelens.rules import Context, Finding, Rule, Severity, fmt, register
from caffelens.rules.numeric import lower_lr_fix

SATURATED_LOSS = -math.log(np.finfo(np.float32).tiny)  # 87.3365: -ln(FLT_MIN)


@register
class LossSaturated(Rule):
    """loss-saturated: the loss sits at 87.3365 = −ln(FLT_MIN), or k/batch multiples of it.

    SoftmaxWithLoss clamps the probability of the true class at FLT_MIN, so a sample whose
    logits exploded contributes exactly 87.3365; a batch where k of N samples saturated gives
    87.3365·k/N. The softmax is saturated by exploded logits: the net has diverged even though
    the loss is finite. Fix: lower the learning rate, clip gradients, check the input scale.
    """

    code = "CL201"
    name = "loss-saturated"
    live = True
    severity = Severity.WARNING

    def check(self, trace: RunTrace, context: Context) -> Iterator[Finding]:
        batch = trace.batch_size()
        hits: dict[str, list] = {}
        totals: dict[str, int] = {}
        for output in trace.train_outputs():
            weight = output.weight
            if not weight or not math.isfinite(output.value) or not _softmax_output(trace, output.name):
                continue
            totals[output.name] = totals.get(output.name, 0) + 1
            ratio = output.value / (SATURATED_LOSS * weight)
            if _is_saturated(ratio, batch):
                hits.setdefault(output.name, []).append(output)
        # a saturated softmax stays saturated: a few coincidences in thousands are not it
        name = max(hits, key=lambda n: len(hits[n]) / totals[n], default=None)
        if name is None or len(hits[name]) < 2 or len(hits[name]) < 0.05 * totals[name]:
            return
        first = hits[name][0]
        share = f"{len(hits[name])} of {totals[name]} displayed values of {name}"
        yield self.finding(
            f"Loss output {first.name} = {fmt(first.value)} at iteration {first.iteration} is "
            f"a multiple of 87.3365/batch (−ln FLT_MIN): the softmax is saturated by exploded "
            f"logits ({share} saturated).",
            trace, fix=lower_lr_fix(trace, first.iteration), iteration=first.iteration,
            phase="train", blob=first.name, value=first.value, line=first.line,
            likely_cause="gradient-explosion",
        )


def _softmax_output(trace: RunTrace, blob: str) -> bool:
    """True when ``blob`` is the top of a softmax loss layer, or when the net is unknown."""
    producers = trace.producers(blob)
    if not producers:
        return True
    return "Softmax" in producers[0].type or producers[0].type in ("MultinomialLogisticLoss",
                                                                   "InfogainLoss")


def _is_saturated(ratio: float, batch: int | None) -> bool:
    if ratio < 0.5 or ratio > 1.0001:
        return False
    if abs(ratio - 1) < 1e-4:
        return True
    if batch is None:
        return False
    k = ratio * batch
    return abs(k - round(k)) < 0.02 * max(1.0, batch / 64)


@register
class LossDivergence(Rule):
    """loss-divergence: the loss rises well above its running minimum and stays there.

    "Well above" means above min + max(min, half the drop from the first loss to the minimum);
    "stays" means every later displayed loss is above it too (NaN counts as above). Usually the
    learning rate is too high for this point of training (a step up, a warm-up that overshoots,
    or simply base_lr). The finding gives the iteration and the lr in effect then.
    """

    code = "CL202"
    name = "loss-divergence"
    severity = Severity.WARNING

    def check(self, trace: RunTrace, context: Context) -> Iterator[Finding]:
        losses, note = _loss_series(trace)
        if len(losses) < 3:
            return
        raw = np.array([r.value for r in losses], dtype=float)
        raw[~np.isfinite(raw)] = np.inf
        # the display loss of a small batch is noisy: smooth it, less so for short runs
        window = 3 if len(raw) < 50 else 5
        values = _rolling_median(raw, window)
        running_min = np.minimum.accumulate(values)
        first = values[0]
        with np.errstate(all="ignore"):  # inf - inf, and 2 × -1e308
            threshold = running_min + np.maximum(2 * running_min, 0.5 * (first - running_min))
        above = values > threshold
        # first index from which every later loss stays above its threshold at that point
        stays = np.logical_and.accumulate(above[::-1])[::-1]
        hits = np.flatnonzero(stays)
        # "stays there": at least 3 displays and 5% of the run, so noise at the end is not it
        if len(hits) == 0 or len(values) - hits[0] < max(3, 0.05 * len(values)):
            return
        start = int(hits[0])
        # the median lags: report the first raw loss above the line in the window before
        for k in range(max(0, start - window + 1), start + 1):
            if np.all(raw[k:start + 1] > threshold[start]):
                start = k
                break
        at = losses[start]
        if not math.isfinite(at.value):
            return  # a jump straight to NaN is nan-loss's finding
        minimum = float(running_min[hits[0]])
        lr = trace.lr_at(at.iteration)
        yield self.finding(
            f"The loss diverges at iteration {at.iteration}: {fmt(at.value)} against a minimum "
            f"of {fmt(minimum)} so far, and it never comes back (last: "
            f"{fmt(losses[-1].value)}); lr was {fmt(lr)} then." + note,
            trace, fix=lower_lr_fix(trace, at.iteration), iteration=at.iteration,
            phase="train", value=at.value, line=at.line,
        )


def _loss_series(trace: RunTrace) -> tuple[list, str]:
    """The displayed losses, or — when they went negative, which a smoothed sum of
    non-negative losses cannot — the weighted sum of the train outputs per iteration.

    Caffe smooths the displayed loss with a running sum over `average_loss` iterations; one
    huge spike leaves float rounding garbage in that sum for the rest of the run."""
    losses = trace.losses
    if not trace.negative_loss and not any(math.isfinite(r.value) and r.value < 0
                                           for r in losses):
        return losses, ""
    totals: dict[int, Output] = {}
    for o in trace.train_outputs():
        if o.weight and o.iteration is not None:
            previous = totals.get(o.iteration)
            value = o.value * o.weight + (previous.value if previous else 0.0)
            totals[o.iteration] = Output(o.line, o.run, o.iteration, "train", 0, 0, "total",
                                         value)
    note = (" (The displayed loss went negative — a loss spike corrupted Caffe's running sum — "
            "so this is judged on the train outputs.)")
    return list(totals.values()), note


def _rolling_median(values: np.ndarray, window: int) -> np.ndarray:
    """Median of each value with the ``window - 1`` before it (fewer at the start)."""
    if len(values) < window:
        return values
    padded = np.concatenate([np.full(window - 1, values[0]), values])
    windows = np.lib.stride_tricks.sliding_window_view(padded, window)
    return np.median(windows, axis=1)


@register
class LossAtChance(Rule):
    """loss-at-chance: the softmax loss stays near ln(number of classes).

    A classifier that outputs the uniform distribution has loss ln(C). Staying there means the
    net learns nothing: dead units (see zero-diff), a learning rate too low or far too high,
    labels that do not match the inputs, or inputs that are all zero.
    """

    code = "CL203"
    name = "loss-at-chance"
    severity = Severity.WARNING

    def check(self, trace: RunTrace, context: Context) -> Iterator[Finding]:
        classes = _class_count(trace)
        values = np.array([r.value for r in trace.losses], dtype=float)
        if classes is None or classes < 2 or len(values) < 5:
            return
        chance = math.log(classes)
        near = np.abs(values[1:] - chance) <= 0.05 * chance
        if not near.all():
            return
        first, last = trace.losses[0], trace.losses[-1]
        yield self.finding(
            f"The loss stays at chance level ln({classes}) = {chance:.4g} from iteration "
            f"{first.iteration} to {last.iteration} ({fmt(first.value)} → {fmt(last.value)}): "
            f"the net learns nothing.",
            trace,
            fix="look for dead layers (zero-diff findings), check that labels match the "
                "inputs and the input is not constant; try a different base_lr "
                f"(now {fmt(trace.solver.base_lr if trace.solver else None)})",
            iteration=first.iteration, phase="train", value=last.value, line=last.line,
        )


def _class_count(trace: RunTrace) -> int | None:
    """C from the channel dim of the blob feeding a SoftmaxWithLoss layer (`Top shape`)."""
    net = trace.train_net
    if net is None:
        return None
    for spec in net.layers:
        if spec.type not in ("SoftmaxWithLoss", "SoftmaxLoss") or not spec.bottoms:
            continue
        logits = spec.bottoms[0]
        for producer in net.producers(logits):
            if producer.name in trace.shapes:
                shapes = trace.shapes[producer.name]
                index = producer.tops.index(logits)
                if index < len(shapes) and len(shapes[index]) >= 2:
                    return shapes[index][1]
    return None


@register
class DominantLoss(Rule):
    """dominant-loss: with several loss layers, one dominates the weighted loss (≥ 10×).

    The total loss is Σ loss_weight·loss. When one term is ten times all the others together,
    its gradient drives the shared layers and the other heads barely learn; a large
    loss_weight on an auxiliary head can blow up the whole trunk. Fix: lower that layer's
    loss_weight so the terms are comparable.
    """

    code = "CL204"
    name = "dominant-loss"
    live = True
    severity = Severity.WARNING

    def check(self, trace: RunTrace, context: Context) -> Iterator[Finding]:
        dominant = trace.dominant_loss()
        if dominant is None:
            return
        name, weighted, weight, others = dominant
        producers = trace.producers(name)
        layer = producers[0].name if producers else name
        first = next(o for o in trace.train_outputs() if o.name == name)
        iteration, line = first.iteration, first.line
        evidence = ()
        diffs = {
            k[1]: s.values[0] for k, s in trace.series.items()
            if k[0] == "backward" and k[2] == "bottom" and s.values
            and (trace.layer(k[1]) is not None and trace.layer(k[1]).is_loss())
        }
        if len(diffs) >= 2 and layer in diffs:
            rest = max(v for k, v in diffs.items() if k != layer)
            if rest > 0:
                evidence = (f"Its bottom diff is {diffs[layer] / rest:.0f}× the other loss "
                            f"layers' at the first displayed iteration.",)
        suggested = weight * others / abs(weighted) if weighted else weight
        yield self.finding(
            f"Loss layer {layer} dominates the total loss: {name} contributes "
            f"{fmt(weighted)} (loss_weight {fmt(weight)}) against {fmt(others)} from the "
            f"other losses together at iteration {iteration}.",
            trace,
            fix=f"lower loss_weight of layer {layer} (now {fmt(weight)}) to about "
                f"{fmt(float(f'{suggested:.1g}'))}",
            iteration=iteration, phase="train", layer=layer,
            layer_type=trace.layer_type(layer), blob=name, value=weighted, line=line,
            evidence=evidence,
        )
