"""The report file: a self-contained HTML page (findings table + inline SVG plots) and the PNG
summary, on the real corpus logs."""

from __future__ import annotations

import copy
import importlib.util
import io
import re
import subprocess
import sys
from html.parser import HTMLParser

import pytest

import caffelens
from caffelens.history import Series
from caffelens.report.html import PLOT_IDS, MissingExtra, render_html, render_png

from conftest import VARIANTS, corpus_log

needs_mpl = pytest.mark.skipif(importlib.util.find_spec("matplotlib") is None,
                               reason="matplotlib (caffelens[report]) is not installed")

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def report(corpus_diagnosis):
    """name -> (diagnosis, rendered page), rendered once per module."""
    cache: dict[str, tuple[caffelens.Diagnosis, str]] = {}

    def get(name: str):
        if name not in cache:
            d = corpus_diagnosis(name)
            cache[name] = (d, render_html(d))
        return cache[name]

    return get


class Page(HTMLParser):
    """What the tests read back: elements by id, the findings rows and their cells."""

    def __init__(self, text: str) -> None:
        super().__init__(convert_charrefs=True)
        self.ids: dict[str, tuple[str, dict]] = {}
        self.rows: list[dict] = []
        self._cell: list[str] | None = None
        self._row: dict | None = None
        self.feed(text)

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if "id" in attrs:
            self.ids[attrs["id"]] = (tag, attrs)
        if tag == "tr" and "finding" in (attrs.get("class") or "").split():
            self._row = {"code": attrs.get("data-code"), "cells": []}
            self.rows.append(self._row)
        elif tag == "td" and self._row is not None:
            self._cell = []
            self._row["cells"].append(self._cell)

    def handle_endtag(self, tag):
        if tag == "tr":
            self._row = None
            self._cell = None

    def handle_data(self, data):
        if self._cell is not None:
            self._cell.append(data)

    def cells(self, row: dict) -> list[str]:
        return ["".join(cell) for cell in row["cells"]]


def plot_block(doc: str, pid: str) -> str:
    """The markup of the plot (or its note) with id ``pid``."""
    match = re.search(rf'<(figure|p) class="plot[^"]*" id="{pid}">.*?</\1>', doc, re.S)
    assert match, f"no element with id {pid}"
    return match.group(0)


# -- self-contained ---------------------------------------------------------------------


@needs_mpl
def test_page_is_self_contained(report):
    _, doc = report("lr_explode_nan")
    assert doc.startswith("<!DOCTYPE html>")
    # namespace declarations of the inline SVGs are identifiers, not references
    stripped = re.sub(r'\sxmlns(:\w+)?="[^"]*"', "", doc)
    for needle in ("http://", "https://", 'src="//', "src='//", "<link", "<script", "@import",
                   "url(http", "<img", "<iframe", "<object"):
        assert needle not in stripped.lower(), needle
    assert "<svg" in doc and "<?xml" not in doc and "<!DOCTYPE svg" not in doc
    assert "<metadata>" not in doc  # matplotlib's RDF block holds URLs and a version


@needs_mpl
def test_every_plot_is_there_or_explained(report):
    d, doc = report("lr_explode_nan")
    page = Page(doc)
    for pid in ("plot-loss", "plot-layers", "plot-norms"):
        tag, _ = page.ids[pid]
        assert tag == "figure", pid
        assert "<svg" in plot_block(doc, pid)
    tag, attrs = page.ids["plot-clipping"]
    assert tag == "p" and attrs["class"] == "plot-note"
    assert "no gradient clipping events" in plot_block(doc, "plot-clipping")
    assert set(PLOT_IDS) <= set(page.ids)


@needs_mpl
def test_plots_without_data_become_notes(report):
    _, doc = report("no_debug_info")
    page = Page(doc)
    assert page.ids["plot-loss"][0] == "figure"
    for pid in ("plot-layers", "plot-norms"):
        assert page.ids[pid][0] == "p", pid
        assert "debug_info: true" in plot_block(doc, pid)
    assert page.ids["plot-clipping"][0] == "p"


@needs_mpl
def test_layer_plot_has_one_line_per_layer_in_net_order(report):
    d, doc = report("lr_explode_nan")
    block = plot_block(doc, "plot-layers")
    legend = re.findall(r"<text [^>]*>([^<]*)</text>", block)
    names = [spec.name for spec in d.last.train_net.layers]
    shown = [text.split("  · ")[0] for text in legend if text.split("  · ")[0] in names]
    assert shown == names  # every layer of this net has a Forward line, in net order
    assert "conv2  · inf@18 bwd" in legend  # the onset of CL101, named in the legend
    assert "NaN/Inf (off the axis)" in legend


@needs_mpl
def test_finding_markers_on_every_time_plot(report):
    d, doc = report("lr_explode_nan")
    rules = {f.rule for f in d.findings if f.iteration is not None}
    for pid in ("plot-loss", "plot-layers", "plot-norms"):
        texts = " ".join(re.findall(r"<text [^>]*>([^<]*)</text>", plot_block(doc, pid)))
        for rule in rules:
            assert rule in texts, (pid, rule)


# -- findings table ---------------------------------------------------------------------


@needs_mpl
@pytest.mark.parametrize("name", ["lr_explode_nan", "no_debug_info"])
def test_findings_table_matches_diagnosis(report, name):
    d, doc = report(name)
    page = Page(doc)
    assert len(page.rows) == len(d.findings) > 0
    for row, finding in zip(page.rows, d.findings):
        severity, rule, iteration, place, message, cause, fix = page.cells(row)
        assert row["code"] == finding.code
        assert severity == str(finding.severity)
        assert rule == finding.code + finding.rule
        assert iteration == ("" if finding.iteration is None else str(finding.iteration))
        assert message.startswith(finding.message)
        for item in finding.evidence:
            assert item in message
        assert cause == (finding.likely_cause or "")
        assert fix == (finding.fix or "")
        if finding.line:
            assert f"line {finding.line}" in place


@needs_mpl
def test_no_findings_no_table(report):
    d, _ = report("no_debug_info")
    clean = copy.copy(d)
    clean.findings = []
    doc = render_html(clean)
    assert "No problems found." in doc and Page(doc).rows == []
    assert '<span class="badge ok">ok</span>' in doc


@needs_mpl
def test_text_from_the_log_is_escaped(tmp_path):
    evil = "<script>alert(1)</script>"
    text = corpus_log("lr_explode_nan").read_text()
    log = tmp_path / "evil.log"
    # a layer named like markup, and one that matplotlib would read as (broken) math
    log.write_text(text.replace("conv2", evil).replace("conv1", "c$_{1$"))
    d = caffelens.diagnose(log)
    assert any(f.layer == evil for f in d.findings)  # the table has to show it
    doc = render_html(d)
    assert "<script" not in doc.lower()
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in doc
    page = Page(doc)
    onset = next(row for row in page.rows if row["code"] == "CL101")
    assert evil in page.cells(onset)[3]  # the where cell, unescaped by the parser
    legend = re.findall(r"<text [^>]*>([^<]*)</text>", plot_block(doc, "plot-layers"))
    assert any(t.startswith("&lt;script&gt;") for t in legend)
    assert any(t.startswith("c$_{1$") for t in legend)  # shown as typed, not as math


# -- structure and determinism ----------------------------------------------------------


@needs_mpl
def test_output_is_deterministic(report, corpus_diagnosis):
    d, doc = report("iter_size")
    assert render_html(d) == doc
    assert "Date" not in doc and "Matplotlib v" not in doc


@needs_mpl
def test_iter_size_norms_keep_the_last_pass(report):
    d, doc = report("iter_size")
    from caffelens.report.html import _norm_lines

    iterations = {r.iteration for r in d.last.norms}
    (data, diff) = _norm_lines(d.last)
    assert len(d.last.norms) > len(iterations)  # two passes per iteration in this log
    assert list(data.x) == sorted(iterations)
    last = {r.iteration: r.l2_diff for r in d.last.norms}
    assert list(diff.y) == [last[i] for i in sorted(iterations)]
    assert Page(doc).ids["plot-norms"][0] == "figure"


@needs_mpl
def test_clipping_plot():
    d = caffelens.diagnose(VARIANTS / "clipping.log")
    doc = render_html(d)
    block = plot_block(doc, "plot-clipping")
    assert block.startswith("<figure") and "<svg" in block
    assert f"{d.last.clip_count} clipping events" in block
    assert "gradient-clipping" in block  # the CL301 marker
    # the inf L2 norm and the 0 scale factor of one event are marked off the axis
    assert "NaN/Inf (off the axis)" in block and "0 (off the log axis)" in block


@needs_mpl
def test_several_runs_get_their_own_plots():
    d = caffelens.diagnose(VARIANTS / "two_runs.log")
    assert len(d.traces) == 2
    page = Page(render_html(d))
    for pid in PLOT_IDS:
        assert pid in page.ids and f"{pid}-run2" in page.ids
    assert "run2" in page.ids


@needs_mpl
def test_layer_cap_says_so(corpus_diagnosis):
    d = copy.deepcopy(corpus_diagnosis("healthy"))
    trace = d.last
    base = trace.series[("forward", "conv1", "top", "conv1", "data")]
    for i in range(40):
        for key in (("forward", f"extra{i}", "top", f"extra{i}", "data"),
                    ("backward", f"extra{i}", "bottom", f"extra{i}", "diff")):
            trace.series[key] = Series(list(base.iterations), [v * (i + 2) for v in base.values],
                                       list(base.lines))
    total = len({key[1] for key in trace.series if key[2] in ("top", "bottom")})
    doc = render_html(d)
    assert f"Showing 30 of {total} layers" in doc
    legend = re.findall(r"<text [^>]*>([^<]*)</text>", plot_block(doc, "plot-layers"))
    layer_entries = [t for t in legend if t.startswith(("extra", "conv", "relu", "pool", "ip",
                                                        "loss", "data"))]
    assert len(layer_entries) == 30


# -- PNG and the optional dependency ----------------------------------------------------


@needs_mpl
def test_png_summary(tmp_path, corpus_diagnosis):
    path = tmp_path / "summary.png"
    render_png(corpus_diagnosis("lr_explode_nan"), path)
    data = path.read_bytes()
    assert data.startswith(PNG_MAGIC)
    assert b"Software" not in data[:4096]  # no matplotlib version stamp
    buffer = io.BytesIO()
    render_png(corpus_diagnosis("no_debug_info"), buffer)  # notes instead of panels
    assert buffer.getvalue().startswith(PNG_MAGIC)


def test_missing_matplotlib_raises_missing_extra(monkeypatch, corpus_diagnosis, tmp_path):
    d = corpus_diagnosis("no_debug_info")
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    message = "the report needs matplotlib: pip install 'caffelens[report]'"
    with pytest.raises(MissingExtra, match=re.escape(message)) as info:
        render_html(d)
    assert isinstance(info.value, ImportError)
    assert str(info.value) == message
    with pytest.raises(MissingExtra, match=re.escape(message)):
        render_png(d, tmp_path / "x.png")
    assert not (tmp_path / "x.png").exists()


def test_importing_caffelens_does_not_import_matplotlib():
    code = ("import sys, caffelens, caffelens.cli, caffelens.report.html; "
            "assert 'matplotlib' not in sys.modules, 'matplotlib imported'")
    subprocess.run([sys.executable, "-c", code], check=True)


@needs_mpl
def test_report_command_exit_codes(tmp_path):
    from caffelens.cli import main

    out = tmp_path / "r.html"
    assert main(["report", str(corpus_log("nan_input")), "-o", str(out)]) == 0
    assert out.read_text().startswith("<!DOCTYPE html>")
    png = tmp_path / "r.png"
    assert main(["report", str(corpus_log("nan_input")), "-o", str(png),
                 "--format", "png"]) == 0
    assert png.read_bytes().startswith(b"\x89PNG")
    assert main(["report", str(tmp_path / "missing.log"), "-o", str(out)]) == 2
