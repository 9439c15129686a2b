"""Rules on the run as a whole: crashes, a log that stops, missing debug_info."""

from __future__ import annotations

from collections.abc import Iterator

from caffelens.history import RunTrace
from caffelens.rules import Context, Finding, Rule, Severity, register


@register
class CrashRule(Rule):
    """crash: Caffe died — `Check failed`, an F-level line, a fatal signal or a glibc abort.

    The message of the first fatal line is what matters (later stack lines only repeat it). A
    crash after `Optimization Done.` happened at exit and did not cost training (warning): after
    NaN, for instance, Caffe's max-pooling backward can write out of bounds and glibc aborts
    with `double free or corruption` when memory is freed.
    """

    code = "CL401"
    name = "crash"
    live = True
    severity = Severity.ERROR

    def check(self, trace: RunTrace, context: Context) -> Iterator[Finding]:
        if not trace.crashes:
            return
        first = next((c for c in trace.crashes if c.cause in ("check-failed", "fatal")),
                     trace.crashes[0])
        at = f"iteration {first.iteration}" if first.iteration is not None else "start-up"
        if first.after_done:
            nan = " It follows NaN in training (see nan-onset)." if trace.first_nonfinite else ""
            yield self.finding(
                f"Caffe crashed at exit, after `Optimization Done.`: {first.message}.{nan}",
                trace, severity=Severity.WARNING,
                fix="training itself finished; the crash comes from freeing memory corrupted "
                    "earlier — fix the NaN first if there is one",
                iteration=first.iteration, line=first.line, likely_cause="crash-at-exit",
            )
            return
        yield self.finding(
            f"Caffe crashed at {at}: {first.message}", trace,
            fix=_crash_fix(first.message), iteration=first.iteration, line=first.line,
            likely_cause=first.cause,
        )


def _crash_fix(message: str) -> str:
    text = message.lower()
    if "out of memory" in text:
        return "lower batch_size (or use iter_size to keep the effective batch)"
    if "cannot copy param" in text or "shape mismatch" in text:
        return ("the weights file does not match the net: rename the changed layers, or "
                "start without --weights")
    if "no such file" in text or "failed to open" in text or "mdb_" in text:
        return "check the data/model paths in the prototxt"
    return "read the `Check failed` message: it names the file and condition that failed"


@register
class Truncated(Rule):
    """truncated: the log stops mid-training — the run is still going, or it was killed.

    No `Optimization Done.`, no crash, and the last iteration is short of max_iter. Only the
    last run in a file is checked: an earlier run that was restarted is history.
    """

    code = "CL402"
    name = "truncated"
    severity = Severity.INFO

    def check(self, trace: RunTrace, context: Context) -> Iterator[Finding]:
        if not context.last_run or trace.finished is not None or trace.crashes:
            return
        last = trace.iterations[1]
        if last is None:
            return
        max_iter = trace.solver.max_iter if trace.solver else None
        if max_iter is not None and last >= max_iter:
            return
        goal = f" of max_iter {max_iter}" if max_iter else ""
        yield self.finding(
            f"The log stops at iteration {last}{goal} without `Optimization Done.`: the run "
            f"is still going, or it was killed (out of time, out of memory, Ctrl-C).",
            trace, iteration=last, line=trace.last_line,
        )


@register
class NoDebugInfo(Rule):
    """no-debug-info: per-layer diagnosis needs `debug_info: true` in solver.prototxt.

    Without it Caffe prints only losses and outputs, so caffelens can tell *that* a run went
    wrong, not *where*. It costs one log line per blob per displayed iteration.
    """

    code = "CL403"
    name = "no-debug-info"
    severity = Severity.INFO

    def check(self, trace: RunTrace, context: Context) -> Iterator[Finding]:
        if trace.debug_info or not trace.losses or not context.last_run:
            return
        yield self.finding(
            "The log has no per-layer debug values, so the layer where a problem starts "
            "cannot be found.",
            trace, fix="set debug_info: true in solver.prototxt (with a larger display "
                       "interval if the log gets too big)",
        )
