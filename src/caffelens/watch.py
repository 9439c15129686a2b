"""`caffelens watch`: the same parser and rules as `diagnose`, run on a log as it grows.

Reading never waits for the screen: lines are parsed as fast as they arrive, rules that can
judge a growing log (``Rule.live``) run at most every ``EVALUATE_EVERY`` seconds, and the view
is redrawn at most ``REDRAW_EVERY`` seconds. At the end of the input (or Ctrl-C) the final
diagnosis is exactly what `diagnose` prints for the same log.
"""

from __future__ import annotations

import codecs
import io
import math
import os
import queue
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import click
from rich import box
from rich.console import Console, Group
from rich.live import Live
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from caffelens.assemble import Parser
from caffelens.engine import Config, Diagnosis, evaluate
from caffelens.history import DIAGNOSE_POINTS, RunTrace, TraceBuilder
from caffelens.rules import Finding, Severity, fmt
from caffelens.sources import CHUNK, InputError, LineSplitter, is_compressed
from caffelens.tokens import Tokens, can_stream_tokens, helpful, stream_tokens, tokenize_source

EVALUATE_EVERY = 0.2
"""Seconds between rule evaluations while lines arrive: a NaN is reported well within 0.5 s."""
REDRAW_EVERY = 0.25
HISTORY = DIAGNOSE_POINTS
"""Points kept per series: memory stays flat over a week-long run."""
POLL = 0.1
EVALUATE_SHARE = 5
"""Run the rules at most every this many times their last running time (≤ 1/5 of the time)."""


# --- sources ----------------------------------------------------------------------------------


class Follower:
    """Follow a growing file like `tail -F`: wait for growth, reopen after rotation or
    truncation, hold a last line until its newline arrives. :meth:`poll` never blocks."""

    def __init__(self, path: str, from_end: bool = False) -> None:
        self.path = path
        self._file = None
        self._inode: int | None = None
        self._splitter = LineSplitter()
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._open(from_end)

    def _open(self, from_end: bool = False) -> bool:
        try:
            handle = open(self.path, "rb")
        except FileNotFoundError:
            return False
        except IsADirectoryError:
            raise InputError(f"{self.path}: is a directory, not a log file") from None
        except OSError as exc:
            raise InputError(f"{self.path}: {exc.strerror or exc}") from None
        if self._file is not None:
            self._file.close()
        self._file = handle
        self._inode = os.fstat(handle.fileno()).st_ino
        self._splitter = LineSplitter()
        self._decoder.reset()
        if from_end:
            handle.seek(0, os.SEEK_END)
        return True

    def poll(self) -> list[str]:
        """The complete lines written since the last call (possibly none)."""
        if self._file is None and not self._open():
            return []
        lines: list[str] = []
        while True:
            data = self._file.read(CHUNK)
            if not data:
                break
            lines.extend(self._splitter.feed(self._decoder.decode(data)))
        if self._replaced():
            lines.extend(self._splitter.flush())  # the old file's last line is complete now
            if self._open():
                lines.extend(self.poll())
        return lines

    def _replaced(self) -> bool:
        """Rotated (a new file at the path) or truncated (smaller than what we read)."""
        try:
            stat = os.stat(self.path)
        except FileNotFoundError:
            return False
        return stat.st_ino != self._inode or stat.st_size < self._file.tell()

    def close(self) -> None:
        if self._file is not None:
            self._file.close()


COALESCE_LINES = 20_000
"""Lines taken at once from a pipe that is ahead of us (a pipe delivers 64 KB at a time)."""


def stream_batches(stream, stop: threading.Event | None = None) -> Iterator[list[str]]:
    """Read a pipe in a thread; yield batches of complete lines, ``[]`` when idle, end at EOF."""
    batches: queue.Queue = queue.Queue(maxsize=64)
    binary = getattr(stream, "buffer", stream)

    def reader() -> None:
        splitter = LineSplitter()
        decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        try:
            # os.read holds no lock of the buffered stdin object, so the interpreter can
            # exit (--exit-on) while this daemon thread waits for more input
            fd = binary.fileno()
            read = lambda size: os.read(fd, size)  # noqa: E731
        except (AttributeError, OSError, ValueError, io.UnsupportedOperation):
            read = getattr(binary, "read1", binary.read)
        try:
            while True:
                data = read(CHUNK)
                if not data:
                    break
                if isinstance(data, str):
                    lines = splitter.feed(data)
                else:
                    lines = splitter.feed(decoder.decode(data))
                if lines:
                    batches.put(lines)
        except (OSError, ValueError):
            pass
        finally:
            batches.put(splitter.flush() + [None])

    threading.Thread(target=reader, daemon=True, name="caffelens-reader").start()
    while stop is None or not stop.is_set():
        try:
            batch = batches.get(timeout=POLL)
        except queue.Empty:
            yield []
            continue
        while batch and batch[-1] is not None and len(batch) < COALESCE_LINES:
            try:  # behind the writer: take what else is waiting, fewer and bigger batches
                batch = batch + batches.get_nowait()
            except queue.Empty:
                break
        if batch and batch[-1] is None:
            if batch[:-1]:
                yield batch[:-1]
            return
        yield batch


def follow_batches(follower: Follower) -> Iterator[list[str]]:
    """Yield what the followed file gained, forever (until Ctrl-C)."""
    while True:
        lines = follower.poll()
        if not lines:
            time.sleep(POLL)
        yield lines


# --- the live session ----------------------------------------------------------------------------


@dataclass
class LiveSession:
    """Incremental diagnose: feed lines as they come, collect alerts, finish with the diagnosis."""

    config: Config = field(default_factory=Config)
    name: str = "<stdin>"
    clock: Callable[[], float] = time.monotonic
    parser: Parser = field(default_factory=Parser)
    alerts: list[Finding] = field(default_factory=list)
    finished: bool = False

    def __post_init__(self) -> None:
        self.builder = TraceBuilder(self.config.explode_threshold, max_points=HISTORY)
        self.parser.blob_sink = self.builder.blob  # as diagnose: no record per debug value
        self.parser.block_sink = self.builder.values
        self.parser.record_sink = self._add
        self._line = 0
        self._seen: set[tuple] = set()
        self._last_eval = -math.inf
        self._eval_cost = 0.0
        self._dirty = False
        self.diagnosis: Diagnosis | None = None

    def feed(self, lines: list[str] | Tokens) -> list[Finding]:
        """Parse ``lines`` (or their tokens); returns new alerts when the rules were due."""
        if isinstance(lines, Tokens):
            self.parser.feed_tokens(lines, self._line + 1)
            self._line += lines.count
        else:
            self.parser.feed_lines(lines, self._line + 1)
            self._line += len(lines)
        # the rules read whole histories: on a log that streams in faster than they run,
        # run them less often, so that reading keeps most of the time
        every = max(EVALUATE_EVERY, EVALUATE_SHARE * self._eval_cost)
        if self._dirty and self.clock() - self._last_eval >= every:
            return self.evaluate()
        return []

    def _add(self, record) -> None:
        self.builder.add(record)
        self._dirty = True

    def idle(self) -> list[Finding]:
        """No new lines for a moment: run the rules if records came since they last ran."""
        return self.evaluate() if self._dirty else []

    def evaluate(self, final: bool = False) -> list[Finding]:
        """Run the rules now; returns the findings not alerted before."""
        self._last_eval = self.clock()
        started = time.perf_counter()
        self._dirty = False
        if not self.builder.traces:
            return []
        diagnosis = evaluate(self.builder.traces, self.parser.stats, self.config, self.name,
                             live_only=not final)
        self._eval_cost = time.perf_counter() - started
        self.diagnosis = diagnosis  # the latest judgement of the log so far
        new = []
        for finding in diagnosis.findings:
            key = (finding.run, finding.code, finding.layer)
            if key not in self._seen:
                self._seen.add(key)
                new.append(finding)
        self.alerts.extend(new)
        return new

    def finish(self, stopped: bool = False) -> tuple[Diagnosis | None, list[Finding]]:
        """End of input: flush the parser, run every rule; (diagnosis, last new alerts).

        ``stopped``: watch quit on purpose (--exit-on) — the run is still going, so only the
        rules that can judge a growing log are run (no "the log stops here")."""
        if not stopped:
            for record in self.parser.finish():
                self.builder.add(record)
        self.finished = True
        new = self.evaluate(final=not stopped)
        if not self.builder.traces or self.parser.stats.caffe_lines == 0:
            return None, new
        return self.diagnosis, new

    @property
    def trace(self) -> RunTrace | None:
        return self.builder.traces[-1] if self.builder.traces else None


# --- rendering ---------------------------------------------------------------------------------

_SEVERITY_STYLE = {Severity.ERROR: "bold red", Severity.WARNING: "yellow", Severity.INFO: "cyan"}


def alert_line(finding: Finding) -> str:
    """One line per finding for plain output (CI logs, redirected output)."""
    where = ", ".join(str(p) for p in (
        f"iteration {finding.iteration}" if finding.iteration is not None else None,
        finding.phase, finding.direction, finding.layer,
        f"{finding.role} {finding.blob}" if finding.role and finding.blob else finding.blob,
        f"line {finding.line}" if finding.line else None) if p)
    text = f"caffelens: {finding.severity} {finding.code} {finding.rule}"
    text += f" ({where})" if where else ""
    text += f": {finding.message}"
    return text + (f" Fix: {finding.fix}" if finding.fix else "")


def render_view(session: LiveSession, width: int = 100) -> Group:
    """The live screen: header, per-layer table, alerts (newest first)."""
    from caffelens.report.text import sparkline

    trace = session.trace
    header = Table.grid(padding=(0, 2))
    header.add_column(style="dim", no_wrap=True)
    header.add_column()
    if trace is None:
        return Group(Text(f"{session.name}: waiting for Caffe output…", style="dim"))
    status = _status(session, trace)
    header.add_row("log", Text(f"{session.name}  [{status}]"))  # Text: no markup from the log
    if trace.train_net is not None and trace.train_net.name:
        header.add_row("net", Text(trace.train_net.name))
    if trace.losses:
        last = trace.losses[-1]
        rate = _rate(trace)
        header.add_row("iteration", f"{last.iteration}" + (f"  ({rate:.3g} iter/s)" if rate else ""))
        if trace.lrs:
            header.add_row("lr", fmt(trace.lrs[-1].value))
        header.add_row("loss", f"{fmt(last.value)}  {sparkline([r.value for r in trace.losses[-60:]], 40)}")
    tests = [o for o in trace.outputs if o.phase == "test"]
    if tests:
        latest = tests[-1].iteration
        header.add_row("test", Text("  ".join(f"{o.name} {fmt(o.value)}" for o in tests
                                              if o.iteration == latest and o.net == tests[-1].net)))
    parts: list = [header]
    layers = _layer_table(trace, session.config.explode_threshold)
    if layers is not None:
        parts.append(layers)
    if session.alerts:
        alerts = Text()
        for finding in reversed(session.alerts[-8:]):
            alerts.append(f"{str(finding.severity):<8}", style=_SEVERITY_STYLE[finding.severity])
            alerts.append(f"{finding.code} {finding.rule}: {finding.message}\n")  # Text: literal
        parts.append(Panel(alerts, title="alerts", box=box.SQUARE))
    return Group(*parts)


def _status(session: LiveSession, trace: RunTrace) -> str:
    if trace.crashes and not any(c.after_done for c in trace.crashes):
        return "crashed"
    if trace.finished is not None:
        return "done"
    if any(f.severity is Severity.ERROR for f in session.alerts):
        return "failing"
    return "finished reading" if session.finished else "running"


def _rate(trace: RunTrace) -> float | None:
    timed = [r for r in trace.losses[-10:] if r.time is not None]
    if len(timed) < 2 or timed[-1].time <= timed[0].time:
        return None
    return (timed[-1].iteration - timed[0].iteration) / (timed[-1].time - timed[0].time)


def _layer_table(trace: RunTrace, threshold: float) -> Table | None:
    """Latest Forward data, Backward diff and param diff/data per layer, in net order."""
    latest: dict[str, dict[str, list]] = {}
    for (direction, layer, role, blob, stat), series in trace.series.items():
        if not series.values:
            continue
        slot = latest.setdefault(layer, {})
        key = {("forward", "top"): "fwd", ("backward", "bottom"): "bwd"}.get((direction, role))
        if role == "param" and blob in ("0", "") or (role == "param" and not blob.isdigit()):
            key = f"param_{stat}" if direction in ("forward", "backward") else None
        if key and key not in slot:
            slot[key] = series.values
    if not latest:
        return None
    order = [spec.name for spec in trace.train_net.layers] if trace.train_net else []
    names = [n for n in order if n in latest] + [n for n in latest if n not in order]
    table = Table(box=box.SIMPLE_HEAD, pad_edge=False, expand=False)
    for column, justify in (("layer", "left"), ("type", "left"), ("forward data", "right"),
                            ("backward diff", "right"), ("diff/data", "right"), ("trend", "left")):
        table.add_column(column, justify=justify, no_wrap=True)
    for name in names[:40]:
        slot = latest[name]
        fwd, bwd = slot.get("fwd"), slot.get("bwd")
        ratio = None
        if slot.get("param_diff") and slot.get("param_data") and slot["param_data"][-1]:
            ratio = slot["param_diff"][-1] / slot["param_data"][-1]
        table.add_row(
            Text(name), Text(trace.layer_type(name) or ""),
            _cell(fwd[-1] if fwd else None, threshold),
            _cell(bwd[-1] if bwd else None, threshold),
            "" if ratio is None else fmt(ratio),
            _trend(fwd or bwd),
        )
    return table


def _cell(value: float | None, threshold: float) -> Text:
    if value is None:
        return Text("")
    if not math.isfinite(value):
        return Text(fmt(value), style="bold red")
    if abs(value) >= threshold:
        return Text(fmt(value), style="red")
    if value == 0:
        return Text("0", style="yellow")
    return Text(fmt(value))


def _trend(values: list | None) -> str:
    if not values or len(values) < 2:
        return ""
    a, b = values[-min(len(values), 5)], values[-1]
    if not (math.isfinite(a) and math.isfinite(b)) or a <= 0 or b <= 0:
        return ""
    change = math.log10(b / a)
    return "rising" if change > 0.3 else ("falling" if change < -0.3 else "steady")


# --- the command ---------------------------------------------------------------------------------

EXIT_LEVELS = {"error": Severity.ERROR, "warning": Severity.WARNING, "never": None}


class ExitOn(Exception):
    """A finding at the --exit-on level appeared."""

    def __init__(self, finding: Finding) -> None:
        self.finding = finding


@click.command("watch")
@click.argument("log", required=False, default="-", metavar="[LOG]")
@click.option("--from-end", is_flag=True, help="Start at the end of LOG (only new lines).")
@click.option("--no-follow", is_flag=True, help="Read LOG to its end and stop (no tail -F).")
@click.option("--plain", is_flag=True, help="One line per finding, no live screen.")
@click.option("--exit-on", type=click.Choice(list(EXIT_LEVELS)), default="never",
              help="Exit 1 as soon as a finding at this level appears.")
@click.option("--format", "fmt_name", type=click.Choice(
    ["table", "json", "markdown", "github", "junit", "sarif"]), default=None,
    help="Format of the final diagnosis printed at the end of input (default: table).")
@click.option("--fail-on", type=click.Choice(["error", "warning", "info", "never"]),
              default=None, help="Exit code rule for the final diagnosis, as diagnose "
                                 "(default: error).")
@click.option("--select", help="Comma-separated rule codes, code prefixes or names to run.")
@click.option("--ignore", help="Comma-separated rule codes, code prefixes or names to skip.")
@click.option("--explode-threshold", type=click.FloatRange(min=0, min_open=True), default=None,
              help="Mean |value| counted as exploding (default: 1e8).")
def watch_command(log, from_end, no_follow, plain, exit_on, fmt_name, fail_on, select, ignore,
                  explode_threshold) -> None:
    """Watch a training log as it grows: `tail -f train.log | caffelens watch`."""
    from caffelens.cli import Failed, exit_code
    from caffelens.engine import NotCaffeLog
    from caffelens.report import FORMATS

    name = "<stdin>" if log == "-" else log
    from pathlib import Path

    from caffelens.cli import _codes
    from caffelens.config import load_config

    settings = load_config(Path.cwd())  # the same settings as diagnose
    config = settings.engine_config(
        select=_codes(select) or None, ignore=_codes(ignore) or None,
        explode_threshold=explode_threshold)
    fmt_name = fmt_name or settings.format or "table"
    fail_on = fail_on or settings.fail_on or "error"
    session = LiveSession(config, name)
    if log == "-":
        if can_stream_tokens(sys.stdin):  # a helper process reads and tokenizes: two cores
            batches = (tokens or [] for tokens in stream_tokens(sys.stdin))
        else:
            batches = stream_batches(sys.stdin)
    elif no_follow or _compressed(log):
        batches = _file_batches(log)  # read once, decompressing like diagnose
    else:
        if not os.path.exists(log):
            raise InputError(f"{log}: no such file")
        batches = follow_batches(Follower(log, from_end))
    out = sys.stdout
    interactive = not plain and out.isatty() and "NO_COLOR" not in os.environ
    # with a machine-readable final document, alerts go to stderr so stdout stays parseable
    alerts_out = sys.stderr if fmt_name in ("json", "junit", "sarif") else out
    level = EXIT_LEVELS[exit_on]
    try:
        if interactive:
            _run_live(session, batches, level)
        else:
            _run_plain(session, batches, level, alerts_out)
        diagnosis, new = session.finish()
        if not interactive:
            for finding in new:
                _check_exit(finding, level)
                alerts_out.write(alert_line(finding) + "\n")
    except KeyboardInterrupt:
        diagnosis, _ = session.finish()
    except ExitOn as stop:
        alerts_out.write(alert_line(stop.finding) + "\n")
        diagnosis, _ = session.finish(stopped=True)
        if diagnosis is not None:
            out.write(FORMATS[fmt_name]([diagnosis], 100))
        out.flush()
        raise Failed() from None
    if diagnosis is None:
        raise NotCaffeLog.of(name, session.parser.stats)
    if fmt_name == "table":
        from caffelens.report.text import table

        out.write(table([diagnosis], 100, color=interactive))
    else:
        out.write(FORMATS[fmt_name]([diagnosis], 100))
    out.flush()
    if exit_code([diagnosis], fail_on):
        raise Failed()


def _compressed(path: str) -> bool:
    """A .gz/.bz2/.xz log cannot grow line by line: it is read once, not followed."""
    try:
        return is_compressed(path)
    except OSError:
        return False  # following reports it


def _file_batches(path: str) -> Iterator[Tokens]:
    """The tokens of a whole file (plain or compressed), helpers reading a big one."""
    read = False
    try:
        for tokens in tokenize_source(path, parallel=helpful(path)):
            read = True
            yield tokens
    except InputError as exc:
        if not read:
            raise
        # a cut archive: diagnose what was read, as diagnose does
        click.echo(f"caffelens: partial result: {exc}", err=True)


def _check_exit(finding: Finding, level: Severity | None) -> None:
    if level is not None and finding.severity >= level:
        raise ExitOn(finding)


def _run_plain(session: LiveSession, batches, level, out) -> None:
    for batch in batches:
        new = session.feed(batch) if batch else session.idle()
        for finding in new:
            _check_exit(finding, level)  # the ExitOn handler prints it, once
            out.write(alert_line(finding) + "\n")
            out.flush()


def _run_live(session: LiveSession, batches, level) -> None:
    console = Console(markup=False, emoji=False, highlight=False)
    with Live(render_view(session, console.width), console=console, auto_refresh=False,
              transient=False) as live:
        last_draw = -math.inf
        for batch in batches:
            new = session.feed(batch) if batch else session.idle()
            for finding in new:
                if level is not None and finding.severity >= level:
                    live.update(render_view(session, console.width), refresh=True)
                    raise ExitOn(finding)
            now = time.monotonic()
            if now - last_draw >= REDRAW_EVERY or new:
                live.update(render_view(session, console.width), refresh=True)
                last_draw = now
        live.update(render_view(session, console.width), refresh=True)
