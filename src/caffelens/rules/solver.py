"""Rules on what the solver did: gradient clipping and the learning-rate schedule."""

from __future__ import annotations

import math
from collections.abc import Iterator

from caffelens.history import RunTrace
from caffelens.rules import Context, Finding, Rule, Severity, fmt, register

NON_INCREASING_POLICIES = {"fixed", "step", "multistep", "exp", "inv", "poly"}


@register
class GradientClipping(Rule):
    """gradient-clipping: how often `clip_gradients` fired and how hard.

    Occasional clipping is what it is for. When most iterations are clipped, or the scale factor
    is tiny (< 0.01: gradients 100× over the limit), clipping is hiding a learning rate that is
    too high or a loss that is badly scaled (warning).
    """

    code = "CL301"
    name = "gradient-clipping"
    severity = Severity.INFO

    def check(self, trace: RunTrace, context: Context) -> Iterator[Finding]:
        clips = trace.clips
        if not clips:
            return
        first_it, last_it = trace.iterations
        span = (last_it - first_it + 1) if first_it is not None and last_it is not None else None
        scales = [c.scale for c in clips if math.isfinite(c.scale)]
        smallest = min(scales) if scales else math.nan
        count = max(trace.clip_count, len(clips))
        share = count / span if span else None
        hard = (share is not None and share > 0.5) or not scales or smallest < 0.01
        first = clips[0]
        how_often = (f"in {count} of ~{span} iterations ({share:.0%})" if share is not None
                     else f"{count} times")
        biggest = max((c.l2_norm for c in clips), default=math.nan)
        message = (
            f"Gradient clipping fired {how_often}: L2 norm up to {fmt(biggest)} against "
            f"clip_gradients {fmt(first.threshold)}, smallest scale factor {fmt(smallest)}."
        )
        fix = None
        if hard:
            base = trace.solver.base_lr if trace.solver else None
            fix = (f"clipping is doing the work of a lower learning rate: lower base_lr"
                   f"{f' from {fmt(base)} to {fmt(base / 10)}' if base else ''} or fix the "
                   f"loss scale, until clipping is occasional")
        yield self.finding(
            message, trace, severity=Severity.WARNING if hard else Severity.INFO, fix=fix,
            iteration=first.iteration if first.iteration is not None else first.after_iteration,
            phase="train", value=first.l2_norm, line=first.line,
        )


@register
class LrAnomaly(Rule):
    """lr-anomaly: the learning rate is NaN, or rises when the lr_policy says it cannot.

    A NaN learning rate (error) comes from a bad policy parameter (e.g. `inv` with a negative
    power, `poly` past max_iter). A rising lr under fixed/step/multistep/exp/inv/poly (warning)
    means the solver state or the schedule is not what you think: a resumed run with a
    different solver, a policy parameter with the wrong sign (gamma > 1).
    """

    code = "CL302"
    name = "lr-anomaly"
    live = True
    severity = Severity.WARNING

    def check(self, trace: RunTrace, context: Context) -> Iterator[Finding]:
        for lr in trace.lrs:
            if not math.isfinite(lr.value):
                yield self.finding(
                    f"The learning rate is {fmt(lr.value)} at iteration {lr.iteration}.",
                    trace, severity=Severity.ERROR,
                    fix="check lr_policy and its parameters (gamma, power, stepsize) in "
                        "solver.prototxt",
                    iteration=lr.iteration, phase="train", value=lr.value, line=lr.line,
                )
                return
        solver = trace.solver
        policy = (solver.lr_policy or "").lower() if solver else ""
        if policy not in NON_INCREASING_POLICIES or _has_warmup(solver):
            return
        for previous, lr in zip(trace.lrs, trace.lrs[1:]):
            if lr.value > previous.value * (1 + 1e-6) and lr.iteration > previous.iteration:
                yield self.finding(
                    f"The learning rate rises from {fmt(previous.value)} (iteration "
                    f"{previous.iteration}) to {fmt(lr.value)} (iteration {lr.iteration}) "
                    f"although lr_policy is \"{policy}\".",
                    trace,
                    fix=f"check gamma (now {fmt(solver.gamma)}; it must be < 1 for "
                        f"step/exp) and that a resumed run uses the intended solver.prototxt",
                    iteration=lr.iteration, phase="train", value=lr.value, line=lr.line,
                )
                return


def _has_warmup(solver) -> bool:
    raw = getattr(solver, "raw", None) or {}
    return any("warmup" in key or "rampup" in key for key in raw)
