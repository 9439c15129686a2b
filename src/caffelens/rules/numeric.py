"""Numeric health of the debug values: NaN/Inf, explosion, zero gradients."""

from __future__ import annotations

import math
from collections.abc import Iterator

import numpy as np

from caffelens.history import RunTrace
from caffelens.records import BlobValue
from caffelens.rules import Context, Finding, Rule, Severity, fmt, register

FLOAT_MAX_LOG10 = math.log10(3.40282e38)

_FORWARD_HAZARDS = {
    "Log": "Log of a value ≤ 0",
    "Power": "Power of a negative base or a zero with a negative exponent",
    "Sqrt": "Sqrt of a negative value",
    "Exp": "Exp overflows for inputs above ~88",
    "Div": "division by zero",
    "BatchNorm": "BatchNorm with a zero variance (eps too small) or corrupt running statistics",
    "Eltwise": "an Eltwise PROD of large values overflows",
    "Normalize": "normalising an all-zero vector",
    "Reduction": "a reduction that overflows",
}


def where(blob: BlobValue) -> str:
    """`Backward diff of bottom blob pool1 in layer conv2` — the words a Caffe user knows."""
    direction = {"forward": "Forward", "backward": "Backward", "update": "Update"}[blob.direction]
    return f"{direction} {blob.stat} of {blob.role} blob {blob.blob} in layer {blob.layer}"


def _sentence(text: str) -> str:
    """Capitalise the first letter only: blob names keep their case."""
    return text[:1].upper() + text[1:] + "."


def lower_lr_fix(trace: RunTrace, iteration: int | None = None) -> str:
    """'lower base_lr from 50 to 5' with the run's own numbers, plus clipping if it is off —
    after the loss_weight of a loss term that dominates, which is then the first thing to fix."""
    base = trace.solver.base_lr if trace.solver is not None else None
    lr = trace.lr_at(iteration)
    parts = []
    dominant = trace.dominant_loss()
    if dominant is not None:
        name, _weighted, weight, _others = dominant
        parts.append(f"first lower the loss_weight of {name} (now {fmt(weight)}), which "
                     f"dominates the loss")
    if base is not None:
        parts.append(f"lower base_lr from {fmt(base)} to {fmt(base / 10)}")
    elif lr is not None:
        parts.append(f"lower the learning rate (now {fmt(lr)}) tenfold")
    else:
        parts.append("lower base_lr tenfold")
    if trace.solver is None or not trace.solver.clip_gradients or trace.solver.clip_gradients < 0:
        parts.append("set clip_gradients: 10 in solver.prototxt")
    return "; ".join(parts)


@register
class NanOnset(Rule):
    """nan-onset: the first NaN or Inf in the per-layer debug values.

    Once one value is NaN, it spreads through every later layer and iteration, so the only
    interesting NaN is the first one. Where it appears says why:

    - bad-input: in the top of a data layer — the input data itself contains NaN/Inf.
    - gradient-explosion: values crossed the explosion threshold in earlier iterations — the
      learning rate is too high or gradients are not clipped.
    - loss-layer: in a loss layer's top while its inputs are finite — e.g. log(0) in a
      hand-made loss, labels out of range.
    - layer-forward: in another layer's top while its inputs and weights are finite — the layer
      computes something undefined (Log, Sqrt, Power, Exp, Div, BatchNorm variance…).
    - backward: first in a gradient, with no explosion before.

    The `All net params` L2 norm can overflow an iteration before any per-layer value; it is
    reported as early evidence, but the origin is the first per-layer value.
    """

    code = "CL101"
    name = "nan-onset"
    live = True
    severity = Severity.ERROR

    def check(self, trace: RunTrace, context: Context) -> Iterator[Finding]:
        onset = trace.first_nonfinite
        if onset is None:
            return
        layer_type = trace.layer_type(onset.layer)
        cause, reason, fix = self._cause(trace, onset, layer_type, context)
        spread = trace.nonfinite_layers.get((onset.iteration, onset.phase), set())
        at = (f"iteration {onset.iteration}" if onset.iteration is not None
              else "an iteration the log does not name")
        phase = "" if onset.phase == "train" else f" ({onset.phase} net #{onset.net})"
        message = (
            f"First non-finite value: {fmt(onset.value)} in {where(onset)}"
            f"{f' ({layer_type})' if layer_type else ''}, {at}{phase}; {reason}."
        )
        if len(spread) > 1:
            message += f" NaN/Inf then spread to {len(spread) - 1} more layers within {at}."
        evidence = []
        if cause in ("layer-forward", "loss-layer"):
            grown = _growing_layer_before(trace, onset.layer)
            if grown is not None:
                evidence.append(grown)
        norms = trace.first_nonfinite_norms
        if norms is not None and norms.line < onset.line:
            evidence.append(
                f"`All net params` norms were already non-finite at iteration {norms.iteration} "
                f"(line {norms.line}: L2 diff {fmt(norms.l2_diff)}), before any per-layer value."
            )
        if trace.first_large is not None and trace.first_large.line < onset.line:
            large = trace.first_large
            evidence.append(
                f"Values passed {context.explode_threshold:g} first at iteration "
                f"{large.iteration}: {where(large)} = {fmt(large.value)} (line {large.line})."
            )
        yield self.finding(
            message, trace, fix=fix, iteration=onset.iteration, phase=onset.phase,
            direction=onset.direction, layer=onset.layer, layer_type=layer_type,
            blob=onset.blob, role=onset.role, value=onset.value, line=onset.line,
            likely_cause=cause, evidence=tuple(evidence),
        )

    def _cause(self, trace: RunTrace, onset: BlobValue, layer_type: str | None,
               context: Context) -> tuple[str, str, str]:
        spec = trace.layer(onset.layer)
        forward_top = onset.direction == "forward" and onset.role == "top"
        is_data = spec.is_data() if spec is not None else _first_in_block(trace, onset)
        if forward_top and is_data:
            return (
                "bad-input",
                "the input data contains NaN/Inf (the weights are still finite)",
                f"check the input data: NaN first appears in the top of data layer "
                f"`{onset.layer}` (blob `{onset.blob}`) in the batch of iteration "
                f"{onset.iteration}; scan the source (LMDB/HDF5/image list) for NaN/Inf and "
                f"clean or drop those samples",
            )
        large = trace.first_large
        if large is not None and large.line < onset.line and (
            large.iteration is None or onset.iteration is None
            or large.iteration < onset.iteration
        ):
            return (
                "gradient-explosion",
                f"values had been exploding since iteration {large.iteration} "
                f"(≥ {context.explode_threshold:g})",
                lower_lr_fix(trace, onset.iteration),
            )
        if forward_top:
            params = [b for b in trace.onset_block
                      if b.layer == onset.layer and b.role == "param"]
            huge = [b for b in params if math.isfinite(b.value)
                    and b.value >= context.explode_threshold]
            if huge:
                return (
                    "gradient-explosion",
                    f"the weights of {onset.layer} had already grown to {fmt(huge[0].value)} "
                    f"(param blob {huge[0].blob})",
                    lower_lr_fix(trace, onset.iteration),
                )
            if any(not math.isfinite(b.value) for b in params):
                return (
                    "backward",
                    f"the weights of {onset.layer} were already non-finite: an update between "
                    f"displayed iterations wrote NaN into them",
                    lower_lr_fix(trace, onset.iteration)
                    + "; set display: 1 to see the iteration where it happens",
                )
            if (spec is not None and spec.is_loss()) or (
                layer_type or onset.layer
            ).lower().endswith("loss"):
                return (
                    "loss-layer",
                    "the loss layer produced it from finite inputs",
                    f"check the labels and the inputs of loss layer `{onset.layer}` (labels "
                    f"out of range, log(0) or division by zero in the loss); "
                    + lower_lr_fix(trace, onset.iteration),
                )
            hazard = _FORWARD_HAZARDS.get(layer_type or "", "an undefined operation")
            block = trace.onset_block
            if not block or block[0].line >= onset.line:  # an excerpt that starts at the NaN
                return (
                    "layer-forward",
                    f"the lines before it are not in the log, so the inputs of {onset.layer} "
                    f"cannot be checked; if they were finite, the layer produced it "
                    f"({hazard})",
                    f"check the input and the operation of `{onset.layer}` with the whole log "
                    f"(debug_info: true, display: 1 around iteration {onset.iteration})"
                    if onset.iteration is not None else
                    f"check the input and the operation of `{onset.layer}` with the whole log",
                )
            return (
                "layer-forward",
                f"layer {onset.layer} produced it from finite inputs ({hazard})",
                f"guard the input of {layer_type or 'layer'} `{onset.layer}`: {hazard} — add "
                f"a shift/eps so its input stays in range",
            )
        return (
            "backward",
            "it was born in the backward pass, with no explosion before",
            lower_lr_fix(trace, onset.iteration),
        )


def _top_count(trace: RunTrace, blob: str) -> tuple[str, int] | None:
    """(producing layer, element count) of a blob, from the train net's `Top shape` lines."""
    producers = trace.producers(blob)
    producer = producers[-1] if producers else None  # in-place layers re-produce the blob
    if producer is None or producer.name not in trace.shapes:
        return None
    shapes = trace.shapes[producer.name]
    index = producer.tops.index(blob)
    if index >= len(shapes):
        return None
    count = 1
    for dim in shapes[index]:
        count *= dim
    return producer.name, count


def _growing_layer_before(trace: RunTrace, layer: str) -> str | None:
    """The layer feeding ``layer`` makes its top larger than its bottom (Deconvolution,
    upsampling, Tile…): values it amplifies are where NaN tends to be born."""
    spec = trace.layer(layer)
    if spec is None or not spec.bottoms:
        return None
    fed = _top_count(trace, spec.bottoms[0])
    if fed is None:
        return None
    producer = trace.layer(fed[0])
    if producer is None or not producer.bottoms or producer.name == layer:
        return None
    source = _top_count(trace, producer.bottoms[0])
    if source is None or fed[1] <= source[1]:
        return None
    return (f"It comes right after {producer.name} ({producer.type}), whose top "
            f"({fed[1]} values) is larger than its bottom ({source[1]}): check that layer's "
            f"weights and stride/upsampling factor.")


def _first_in_block(trace: RunTrace, onset: BlobValue) -> bool:
    """Without a net definition: the first layer printed in its Forward pass, named like an
    input (an excerpt of a log can start anywhere, so position alone proves nothing)."""
    block = trace.onset_block
    named = any(word in onset.layer.lower() for word in ("data", "input", "image", "label"))
    return named and bool(block) and block[0].layer == onset.layer


@register
class NanLoss(Rule):
    """nan-loss: a NaN/Inf loss or train/test output.

    Works without debug_info. Caffe's displayed loss is smoothed over `average_loss`
    iterations with a running sum, so once it is NaN it stays NaN even if the outputs recover.
    Fix: find where the NaN starts (set `debug_info: true` and see nan-onset), then lower the
    learning rate, clip gradients, or clean the data.
    """

    code = "CL102"
    name = "nan-loss"
    live = True
    severity = Severity.ERROR

    def check(self, trace: RunTrace, context: Context) -> Iterator[Finding]:
        bad, bad_out = trace.bad_losses, trace.bad_outputs
        first = min(bad + bad_out, key=lambda r: r.line, default=None)  # type: ignore[operator]
        if first is None:
            return
        parts = []
        if bad:
            parts.append(
                f"train loss is {fmt(bad[0].value)} from iteration {bad[0].iteration}"
                f" ({trace.bad_loss_count} of {trace.loss_count} displayed losses)"
            )
        tests = sorted({o.iteration for o in bad_out if o.phase == "test"
                        and o.iteration is not None})
        if tests:
            shown = ", ".join(str(i) for i in tests[:5]) + (" …" if len(tests) > 5 else "")
            parts.append(f"test outputs are non-finite at iterations {shown}")
        trains = [o for o in bad_out if o.phase == "train"]
        if trains and not bad:
            parts.append(f"train output {trains[0].name} is {fmt(trains[0].value)} from "
                         f"iteration {trains[0].iteration}")
        onset = trace.first_nonfinite
        if onset is not None:  # the fix is the root cause's, not a generic one
            _, _, onset_fix = NanOnset()._cause(trace, onset, trace.layer_type(onset.layer),
                                               context)
            fix = f"the NaN starts in layer {onset.layer} (see nan-onset): {onset_fix}"
        elif not trace.debug_info:
            fix = ("set debug_info: true in solver.prototxt to find the layer where NaN starts; "
                   + lower_lr_fix(trace))
        else:
            fix = lower_lr_fix(trace)
        name = getattr(first, "name", None)
        yield self.finding(
            _sentence("; ".join(parts)), trace, fix=fix,
            iteration=first.iteration, phase=getattr(first, "phase", "train"),
            blob=name, value=first.value, line=first.line,
        )


@register
class ExplodingValues(Rule):
    """exploding-values: a debug value reached the explosion threshold (default 1e8).

    Mean absolute activations or gradients of 1e8 mean the weights are diverging: the
    learning rate is too high, gradients are not clipped, or a loss weight is too large. The
    finding gives the growth rate in decades (powers of ten) per display interval and, while
    values are finite, the iteration at which the trend reaches float overflow (3.4e38).
    """

    code = "CL103"
    name = "exploding-values"
    live = True
    severity = Severity.WARNING

    def check(self, trace: RunTrace, context: Context) -> Iterator[Finding]:
        large = trace.first_large
        if large is None:
            yield from self._loss_spike(trace, context)
            return
        layer_type = trace.layer_type(large.layer)
        at = f"iteration {large.iteration}" if large.iteration is not None else "the log"
        message = (
            f"Values exceed {context.explode_threshold:g} from {at}: {where(large)}"
            f"{f' ({layer_type})' if layer_type else ''} = {fmt(large.value)}"
        )
        growth = self._growth(trace, large)
        if growth is not None:
            rate, overflow_at = growth
            message += f", growing {rate:.1f} decades per display interval"
            if overflow_at is not None and trace.first_nonfinite is None:
                message += f"; at this rate float overflows near iteration {overflow_at}"
        yield self.finding(
            message + ".", trace, fix=lower_lr_fix(trace, large.iteration),
            iteration=large.iteration, phase=large.phase, direction=large.direction,
            layer=large.layer, layer_type=layer_type, blob=large.blob, role=large.role,
            value=large.value, line=large.line, likely_cause="gradient-explosion",
        )

    def _loss_spike(self, trace: RunTrace, context: Context) -> Iterator[Finding]:
        """Without per-layer values, a displayed loss past the threshold is the evidence."""
        # the builder keeps the first huge loss apart from the thinned history
        candidates = [r for r in (trace.first_large_loss, next(
            (r for r in trace.losses if math.isfinite(r.value)
             and abs(r.value) >= context.explode_threshold), None))
            if r is not None and abs(r.value) >= context.explode_threshold]
        spike = min(candidates, key=lambda r: r.line, default=None)
        if spike is None:
            return
        yield self.finding(
            f"The displayed loss reaches {fmt(spike.value)} at iteration {spike.iteration} "
            f"(≥ {context.explode_threshold:g}): the net diverged at least for a while.",
            trace, fix=lower_lr_fix(trace, spike.iteration)
            + ("" if trace.debug_info else "; set debug_info: true to see which layer exploded"),
            iteration=spike.iteration, phase="train", value=spike.value, line=spike.line,
            likely_cause="gradient-explosion",
        )

    def _growth(self, trace: RunTrace, large: BlobValue) -> tuple[float, int | None] | None:
        series = trace.series.get(
            (large.direction, large.layer, large.role, large.blob, large.stat)
        )
        if series is None or large.iteration not in series.iterations:
            return None
        end = series.iterations.index(large.iteration) + 1
        values = series.array()[max(0, end - 4):end]
        iterations = np.asarray(series.iterations[max(0, end - 4):end])
        keep = np.isfinite(values) & (values > 0)
        values, iterations = values[keep], iterations[keep]
        if len(values) < 2:
            return None
        steps = np.arange(len(values))
        rate = float(np.polyfit(steps, np.log10(values), 1)[0])
        if rate <= 0:
            return None
        interval = float(np.median(np.diff(iterations))) or 1.0
        left = (FLOAT_MAX_LOG10 - math.log10(values[-1])) / rate
        return rate, int(iterations[-1] + math.ceil(left) * interval)


@register
class ZeroDiff(Rule):
    """zero-diff: a learnable param whose gradient is exactly 0 — the layer does not learn.

    Flagged when the param's Backward diff is 0 in every displayed iteration (at least 2) or in
    the last 3 or more. The finding names where the gradient stops: typically a ReLU whose
    output is all zeros (a dead ReLU, from a large negative bias or a learning rate that
    pushed pre-activations negative). Frozen params (lr_mult: 0) print no Backward line and are
    never flagged; BatchNorm statistics have a zero diff by design; a bias initialised to 0 is
    normal (that is data, not diff).
    """

    code = "CL104"
    name = "zero-diff"
    severity = Severity.WARNING

    def check(self, trace: RunTrace, context: Context) -> Iterator[Finding]:
        by_layer: dict[str, list[tuple[str, int, int, int]]] = {}
        for (direction, layer, role, blob, stat), series in trace.series.items():
            if direction != "backward" or role != "param" or stat != "diff":
                continue
            if trace.layer_type(layer) in ("BatchNorm",):
                continue
            spec = trace.layer(layer)
            if spec is not None and blob.isdigit() and int(blob) < len(spec.params) and \
                    spec.params[int(blob)].lr_mult == 0:
                continue
            values = series.array()
            zeros = _trailing_zeros(values)
            if (zeros == len(values) and zeros >= 2) or zeros >= 3:
                by_layer.setdefault(layer, []).append(
                    (blob, zeros, len(values), series.lines[-zeros])
                )
        if not by_layer:
            return
        # one finding per place where the gradient stops, root layer (in net order) first
        order = {spec.name: i for i, spec in enumerate(trace.train_net.layers)} \
            if trace.train_net is not None else {}
        groups: dict = {}
        for layer, params in by_layer.items():
            series = trace.series[("backward", layer, "param", params[0][0], "diff")]
            stop = _gradient_stop(trace, layer, series.iterations[-1]) or _dead_input(
                trace, layer, series.iterations[-1])
            groups.setdefault(stop, []).append(layer)
        for stop, layers in groups.items():
            layers.sort(key=lambda name: (order.get(name, len(order)), by_layer[name][0][3]))
            yield self._finding(trace, layers, by_layer, stop)

    def _finding(self, trace: RunTrace, layers: list[str], by_layer: dict, stop) -> Finding:
        layer = layers[0]
        params = by_layer[layer]
        layer_type = trace.layer_type(layer)
        blobs = ", ".join(p[0] for p in params)
        zeros, total, first_line = params[0][1], params[0][2], min(p[3] for p in params)
        span = (f"all {total} displayed iterations" if zeros == total
                else f"the last {zeros} displayed iterations")
        series = trace.series[("backward", layer, "param", params[0][0], "diff")]
        start = series.iterations[-zeros]
        message = (
            f"Layer {layer}{f' ({layer_type})' if layer_type else ''} does not learn: the diff "
            f"of param blob{'s' if len(params) > 1 else ''} {blobs} is exactly 0 in {span} "
            f"(from iteration {start})."
        )
        others = [f"{name} (param {', '.join(p[0] for p in by_layer[name])})"
                  for name in layers[1:]]
        if others:
            message += f" Also without gradient: {', '.join(others)}."
        fix = (f"check the initialisation of {layer} (weight_filler/bias_filler) and lower "
               f"the learning rate; use ReLU negative_slope: 0.01 (leaky) or PReLU if ReLUs die")
        if zeros < total:  # it learned, then died: too large updates killed the units
            fix = (f"it learned until iteration {start}, so updates that were too large killed "
                   f"it: " + lower_lr_fix(trace, start)
                   + "; ReLU negative_slope: 0.01 (leaky) keeps units from dying")
        cause = None
        if stop is not None:
            stop_layer, stop_blob, dead = stop
            stop_type = trace.layer_type(stop_layer)
            message += f" The gradient stops at {stop_layer}"
            message += f" ({stop_type})" if stop_type else ""
            if dead:
                cause = "dead-relu" if (stop_type or "ReLU") == "ReLU" else "zero-activation"
                message += f": its top {stop_blob} is 0 in Forward — a dead "
                message += "ReLU." if (stop_type or "ReLU") == "ReLU" else "layer."
                bias = _bias_of_input(trace, stop_layer)
                if bias is not None:
                    fix = (f"{bias[0]}'s bias has mean |b| = {fmt(bias[1])}: fix its bias_filler "
                           f"(e.g. constant 0 or 0.1) and weight init; " + fix.split("; ", 1)[1])
            else:
                message += f", where the diff of {stop_blob} becomes 0."
        return self.finding(
            message, trace, fix=fix, iteration=start, phase="train", direction="backward",
            layer=layer, layer_type=layer_type, blob=params[0][0], role="param", value=0.0,
            line=first_line, likely_cause=cause,
        )


def _trailing_zeros(values: np.ndarray) -> int:
    nonzero = np.flatnonzero(values != 0)
    return len(values) if len(nonzero) == 0 else len(values) - 1 - int(nonzero[-1])


def _gradient_stop(trace: RunTrace, layer: str, iteration: int,
                   depth: int = 0) -> tuple[str, str, bool] | None:
    """Where the gradient flowing back to ``layer`` becomes exactly 0.

    Follows ``layer``'s tops: the Backward lines that print a diff for a top blob, in print
    order, run from the farthest consumer to the nearest (in-place layers reuse the name). The
    first of them that is 0 after a non-zero one is where the gradient stops; when the first
    is already 0, the stop is further up, behind that consumer.
    """
    spec = trace.layer(layer)
    if spec is None or depth > 20:
        return None
    for top in spec.tops:
        chain = sorted(
            (s.lines[s.iterations.index(iteration)], k[1], s.values[s.iterations.index(iteration)])
            for k, s in trace.series.items()
            if k[0] == "backward" and k[2] == "bottom" and k[3] == top
            and iteration in s.iterations and k[1] != layer
        )
        for position, (_line, consumer, value) in enumerate(chain):
            if value != 0:
                continue
            if position == 0 and consumer != layer:
                deeper = _gradient_stop(trace, consumer, iteration, depth + 1)
                if deeper is not None:
                    return deeper
            top_series = [s for k, s in trace.series.items()
                          if k[:3] == ("forward", consumer, "top") and iteration in s.iterations]
            dead = any(s.values[s.iterations.index(iteration)] == 0 for s in top_series)
            return consumer, top, dead
    return None


def _dead_input(trace: RunTrace, layer: str, iteration: int) -> tuple[str, str, bool] | None:
    """A weight gradient is 0 when the layer's input is all zeros: find the first layer, in
    Forward print order, whose top is 0 — where the activations died."""
    spec = trace.layer(layer)
    if spec is None:
        return None

    def value(key) -> float | None:
        s = trace.series.get(key)
        return s.values[s.iterations.index(iteration)] if s and iteration in s.iterations else None

    if not any(value(("forward", producer, "top", bottom, "data")) == 0
               for bottom in spec.bottoms for producer in
               (p.name for p in trace.producers(bottom))):
        return None
    tops = sorted(
        (s.lines[s.iterations.index(iteration)], k[1], k[3])
        for k, s in trace.series.items()
        if k[0] == "forward" and k[2] == "top" and iteration in s.iterations
        and s.values[s.iterations.index(iteration)] == 0
    )
    return (tops[0][1], tops[0][2], True) if tops else None


def _bias_of_input(trace: RunTrace, layer: str) -> tuple[str, float] | None:
    """The layer feeding ``layer`` and its bias magnitude, when the bias is unusually large."""
    spec = trace.layer(layer)
    if spec is None or not spec.bottoms:
        return None
    names = [other.name for other in trace.train_net.layers] if trace.train_net else []
    before = [p for p in trace.producers(spec.bottoms[0])
              if names.index(p.name) < names.index(layer)]
    if not before:
        return None
    producer = before[-1]  # the last writer of the blob before ``layer`` reads it
    series = trace.series.get(("forward", producer.name, "param", "1", "data"))
    if series is None or not series.values:
        return None
    value = series.values[0]  # as initialised: a bias that grew later is a symptom, not a cause
    return (producer.name, value) if value >= 1 else None
