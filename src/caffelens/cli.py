"""The command line: options → library call → exit code. Nothing else lives here.

Exit codes (one place, :func:`main`): 0 nothing at or above --fail-on, 1 findings at or above
it, 2 usage or input error (missing file, not a Caffe log).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from pathlib import Path

import click

from caffelens import __version__
from caffelens.assemble import Parser, parse
from caffelens.config import ConfigError, load_config
from caffelens.engine import Config, Diagnosis, NotCaffeLog, RuleError, diagnose
from caffelens.rules import Severity, all_rules, find_rule
from caffelens.sources import InputError
from caffelens.tokens import helpful

EXIT_OK, EXIT_FINDINGS, EXIT_ERROR = 0, 1, 2

FAIL_LEVELS = {"error": Severity.ERROR, "warning": Severity.WARNING, "info": Severity.INFO,
               "never": None}


class Failed(Exception):
    """Raised by a command to exit 1 after its output is written."""


def exit_code(diagnoses: Sequence[Diagnosis], fail_on: str) -> int:
    """1 when any finding is at or above ``fail_on``, else 0."""
    level = FAIL_LEVELS[fail_on]
    if level is None:
        return EXIT_OK
    worst = [f.severity for d in diagnoses for f in d.findings]
    return EXIT_FINDINGS if worst and max(worst) >= level else EXIT_OK


def _open_source(path: str):
    return sys.stdin if path == "-" else path


def _write(text: str, output: str | None) -> None:
    if output:
        try:
            Path(output).write_text(text, encoding="utf-8")
        except OSError as exc:
            raise InputError(f"{output}: cannot write: {exc.strerror or exc}") from None
    else:
        click.echo(text, nl=False)


def _codes(value: str | None) -> tuple[str, ...]:
    return tuple(c.strip() for c in (value or "").split(",") if c.strip())


class CaffelensGroup(click.Group):
    """Maps outcomes to exit codes in one place, whoever calls the CLI (main, CliRunner)."""

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except Failed:
            ctx.exit(EXIT_FINDINGS)
        except (InputError, ConfigError) as exc:
            click.echo(f"caffelens: error: {exc}", err=True)
            ctx.exit(EXIT_ERROR)
        except RuleError as exc:
            click.echo(f"caffelens: internal error: {exc}", err=True)
            ctx.exit(EXIT_ERROR)


@click.group(cls=CaffelensGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="caffelens")
def cli() -> None:
    """Find where and why a Caffe training run went wrong, from its log."""


@cli.command("diagnose")
@click.argument("logs", nargs=-1, required=True, metavar="LOG...")
@click.option("--format", "fmt", type=click.Choice(
    ["table", "json", "markdown", "github", "junit", "sarif"]), default=None,
    help="Output format (default: table).")
@click.option("-o", "--output", type=click.Path(dir_okay=False, writable=True),
              help="Write the report to FILE instead of stdout.")
@click.option("--fail-on", type=click.Choice(list(FAIL_LEVELS)), default=None,
              help="Exit 1 when a finding at or above this severity exists (default: error).")
@click.option("--select", help="Comma-separated rule codes, code prefixes or names to run.")
@click.option("--ignore", help="Comma-separated rule codes, code prefixes or names to skip.")
@click.option("--explode-threshold", type=click.FloatRange(min=0, min_open=True), default=None,
              help="Mean |value| counted as exploding (default: 1e8).")
@click.option("--solver", "solver_path", type=click.Path(dir_okay=False),
              help="solver.prototxt to use instead of the parameters printed in the log.")
@click.option("--net", "net_path", type=click.Path(dir_okay=False),
              help="train_val.prototxt to use instead of the net printed in the log.")
@click.option("--width", type=int, default=None, help="Table width (default: terminal).")
def diagnose_command(logs, fmt, output, fail_on, select, ignore, explode_threshold,
                     solver_path, net_path, width) -> None:
    """Diagnose one or more Caffe training logs (use - for stdin)."""
    from caffelens.report import FORMATS

    settings = load_config(Path.cwd())
    config = settings.engine_config(
        select=_codes(select) or None, ignore=_codes(ignore) or None,
        explode_threshold=explode_threshold, solver_path=solver_path, net_path=net_path,
    )
    fmt = fmt or settings.format or "table"
    fail_on = fail_on or settings.fail_on or "error"
    diagnoses = diagnose_all(logs, config)
    if fmt == "table":
        from caffelens.report.text import table

        color = output is None and sys.stdout.isatty() and "NO_COLOR" not in os.environ
        text = table(diagnoses, width or _terminal_width(), color=color)
    else:
        text = FORMATS[fmt](diagnoses, width or 100)
    _write(text, output)
    if exit_code(diagnoses, fail_on):
        raise Failed()


def diagnose_all(logs: Sequence[str], config: Config) -> list[Diagnosis]:
    """Diagnose several logs, in parallel processes when there are several paths."""
    if len(logs) > 1 and "-" not in logs and (os.cpu_count() or 1) > 1:
        from concurrent.futures import ProcessPoolExecutor

        with ProcessPoolExecutor(min(len(logs), os.cpu_count() or 1)) as pool:
            # the pool has the cores already: no helper process per log
            return list(pool.map(diagnose, logs, [config] * len(logs), [None] * len(logs),
                                 [False] * len(logs)))
    return [diagnose(_open_source(log), config, path=log if log != "-" else "<stdin>")
            for log in logs]


def _terminal_width() -> int:
    try:
        return max(80, min(160, os.get_terminal_size().columns))
    except OSError:
        return 100


@cli.command("export")
@click.argument("log", metavar="LOG")
@click.option("--format", "fmt", type=click.Choice(["jsonl", "csv"]), default="jsonl",
              help="Record format (default: jsonl).")
@click.option("--table", "table_phase", type=click.Choice(["train", "test"]),
              help="Write parse_log.py's train or test CSV instead of every record.")
@click.option("-o", "--output", type=click.Path(dir_okay=False, writable=True),
              help="Write to FILE instead of stdout.")
def export_command(log, fmt, table_phase, output) -> None:
    """Write every parsed record of LOG as JSON lines or CSV."""
    from caffelens import export

    source = _open_source(log)
    out = open(output, "w", encoding="utf-8", newline="") if output else sys.stdout
    try:
        if fmt == "jsonl" and not table_phase:
            stats = export.export_jsonl(source, out, parallel=helpful(source))
        else:
            parser = Parser()
            records = parse(source, parser)
            if table_phase:
                export.write_table(records, table_phase, out)
            else:
                export.write_csv(records, out)
            stats = parser.stats
    finally:
        if output:
            out.close()
    if stats.records == 0:  # glog lines of some other program are not a Caffe log
        name = "<stdin>" if log == "-" else log
        raise NotCaffeLog.of(name, stats)


@cli.command("rules")
def rules_command() -> None:
    """List the rules: code, name, default severity, summary."""
    for rule in all_rules():
        summary = (rule.__doc__ or "").strip().splitlines()[0].split(": ", 1)[-1]
        click.echo(f"{rule.code}  {rule.name:<18} {str(rule.severity):<8} {summary}")


@cli.command("explain")
@click.argument("rule")
def explain_command(rule) -> None:
    """Print the documentation of one rule (by code or name)."""
    cls = find_rule(rule)
    if cls is None:
        raise click.UsageError(f"no rule named {rule!r}; see `caffelens rules`")
    import inspect

    click.echo(f"{cls.code} {cls.name} (default severity: {cls.severity})\n")
    click.echo(inspect.cleandoc(cls.__doc__ or ""))


@cli.command("layers")
@click.argument("log", metavar="LOG")
@click.option("--stat", "stats", type=click.Choice(["forward", "backward", "ratio"]),
              multiple=True, help="Panel(s) to show (default: forward and backward).")
@click.option("--width", type=int, default=None, help="Columns (default: terminal width).")
def layers_command(log, stats, width) -> None:
    """Heatmap of per-layer magnitudes over iterations (log10 scale), findings marked."""
    from rich.console import Console

    from caffelens.pictures import render_layers

    diagnosis = diagnose(_open_source(log), Config(), path=log if log != "-" else "<stdin>")
    width = width or _terminal_width()
    color = sys.stdout.isatty() and "NO_COLOR" not in os.environ
    console = Console(width=width, color_system="standard" if color else None,
                      highlight=False, force_terminal=color or None, markup=False, emoji=False)
    console.print(render_layers(diagnosis, stats or ("forward", "backward"), width))


@cli.command("compare")
@click.argument("baseline", metavar="BASELINE")
@click.argument("new", metavar="NEW")
@click.option("--factor", type=click.FloatRange(min=1, min_open=True), default=10.0,
              show_default=True,
              help="A per-layer magnitude this many times off the baseline is a departure.")
@click.option("--margin", type=click.FloatRange(min=0), default=0.1, show_default=True,
              help="Relative margin by which final loss/test outputs may be worse.")
@click.option("--format", "fmt", type=click.Choice(["table", "json"]), default="table")
@click.option("--width", type=int, default=None)
def compare_command(baseline, new, factor, margin, fmt, width) -> None:
    """Compare NEW against BASELINE; exit 1 when NEW is worse by the margin."""
    import json

    from caffelens.compare import compare, render_comparison

    result = compare(baseline, new, factor, margin)
    if fmt == "json":
        click.echo(json.dumps(result.to_dict(), indent=2))
    else:
        click.echo(render_comparison(result, width or _terminal_width()), nl=False)
    if result.worse:
        raise Failed()


@cli.command("report")
@click.argument("log", metavar="LOG")
@click.option("-o", "--output", type=click.Path(dir_okay=False, writable=True), required=True,
              help="The file to write (report.html, or a .png with --format png).")
@click.option("--format", "fmt", type=click.Choice(["html", "png"]), default="html",
              help="A self-contained HTML report, or one summary figure as PNG.")
def report_command(log, output, fmt) -> None:
    """Write an HTML report with the diagnosis and plots (needs caffelens[report])."""
    from caffelens.report.html import MissingExtra, render_html, render_png

    diagnosis = diagnose(_open_source(log), Config(), path=log if log != "-" else "<stdin>")
    try:
        if fmt == "png":
            render_png(diagnosis, output)
        else:
            Path(output).write_text(render_html(diagnosis), encoding="utf-8")
    except MissingExtra as exc:
        raise ConfigError(str(exc)) from None
    click.echo(f"wrote {output}", err=True)


def _register_watch() -> None:
    try:
        from caffelens.watch import watch_command
    except ImportError:  # pragma: no cover - watch not built yet
        return
    cli.add_command(watch_command)


_register_watch()


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI and return its exit code (only __main__ and the entry point exit)."""
    try:
        code = cli.main(args=list(argv) if argv is not None else None, prog_name="caffelens",
                        standalone_mode=False)
        if isinstance(code, int):  # ctx.exit(n) inside a command
            return code
    except click.exceptions.Exit as exc:
        return exc.exit_code
    except click.ClickException as exc:
        exc.show()
        return EXIT_ERROR
    except (click.Abort, KeyboardInterrupt):  # click turns Ctrl-C into Abort
        click.echo("Interrupted.", err=True)
        return 130  # 128 + SIGINT, as shells report it
    except BrokenPipeError:
        # the reader went away (`| head`): exit quietly, without the interpreter's warning
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return EXIT_OK
    except Exception as exc:  # a bug in caffelens: one line, unless asked for the traceback
        if os.environ.get("CAFFELENS_DEBUG"):
            raise
        click.echo(f"caffelens: internal error: {exc!r} (set CAFFELENS_DEBUG=1 for the "
                   f"traceback, and please report it)", err=True)
        return EXIT_ERROR
    return EXIT_OK


__all__ = ["main", "cli", "exit_code", "NotCaffeLog"]
