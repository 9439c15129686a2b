"""Formats for machines: the JSON contract, GitHub annotations, JUnit XML, SARIF 2.1.0."""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from xml.sax.saxutils import escape, quoteattr

from caffelens import __version__
from caffelens.engine import Diagnosis
from caffelens.rules import Severity, all_rules

SCHEMA = "caffelens.diagnosis/1"


def json_report(diagnoses: Sequence[Diagnosis], width: int = 100) -> str:
    """The versioned JSON document (schema caffelens.diagnosis/1)."""
    document = {
        "schema": SCHEMA,
        "logs": [
            {
                "path": d.path,
                "summary": d.summary(),
                "findings": [f.to_dict() for f in d.findings],
                **({"error": d.error} if d.error else {}),
            }
            for d in diagnoses
        ],
    }
    return json.dumps(document, indent=2) + "\n"


def escape_data(text: str) -> str:
    """Escape a GitHub workflow-command message (%, CR, LF)."""
    return text.replace("%", "%25").replace("\r", "%0D").replace("\n", "%0A")


def escape_property(text: str) -> str:
    """Escape a workflow-command property value (also ':' and ',')."""
    return escape_data(text).replace(":", "%3A").replace(",", "%2C")


_GITHUB_LEVEL = {Severity.ERROR: "error", Severity.WARNING: "warning", Severity.INFO: "notice"}


def github(diagnoses: Sequence[Diagnosis], width: int = 100) -> str:
    """`::error file=…,line=…,title=…::message` — one annotation per finding."""
    out = []
    for d in diagnoses:
        for f in d.findings:
            props = [f"file={escape_property(d.path)}"]
            if f.line is not None:
                props.append(f"line={f.line}")
            props.append(f"title={escape_property(f'{f.code} {f.rule}')}")
            text = f.text()
            out.append(f"::{_GITHUB_LEVEL[f.severity]} {','.join(props)}::{escape_data(text)}")
    return "\n".join(out) + ("\n" if out else "")


_NOT_XML = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ufffe\uffff]")


def _xml_text(text: str) -> str:
    """Escaped text without the characters XML 1.0 forbids."""
    return escape(_NOT_XML.sub("", text))


def _xml_attr(text: str) -> str:
    return quoteattr(_NOT_XML.sub("", text))


def junit(diagnoses: Sequence[Diagnosis], width: int = 100) -> str:
    """JUnit XML: a testsuite per log, a testcase per rule, failures for its findings."""
    rules = all_rules()
    suites = []
    for d in diagnoses:
        cases = []
        failures = 0
        for rule in rules:
            found = [f for f in d.findings if f.code == rule.code]
            body = ""
            if found:
                failures += 1
                text = "\n".join(f"{f.severity} line {f.line}: {f.text()}" for f in found)
                body = (f"<failure message={_xml_attr(found[0].message)} "
                        f"type={_xml_attr(str(found[0].severity))}>{_xml_text(text)}</failure>")
            cases.append(
                f'    <testcase classname={_xml_attr(d.path)} '
                f'name={_xml_attr(f"{rule.code} {rule.name}")}>{body}</testcase>'
            )
        suites.append(
            f"  <testsuite name={_xml_attr(d.path)} tests=\"{len(rules)}\" "
            f"failures=\"{failures}\" errors=\"0\">\n" + "\n".join(cases) + "\n  </testsuite>"
        )
    return ('<?xml version="1.0" encoding="UTF-8"?>\n<testsuites name="caffelens">\n'
            + "\n".join(suites) + "\n</testsuites>\n")


_SARIF_LEVEL = {Severity.ERROR: "error", Severity.WARNING: "warning", Severity.INFO: "note"}


def sarif(diagnoses: Sequence[Diagnosis], width: int = 100) -> str:
    """SARIF 2.1.0: one run, the rules as reportingDescriptors, findings as results."""
    rules = all_rules()
    results = []
    for d in diagnoses:
        for f in d.findings:
            location = {"physicalLocation": {"artifactLocation": {"uri": d.path}}}
            if f.line is not None:
                location["physicalLocation"]["region"] = {"startLine": f.line}
            text = f.text()
            results.append({
                "ruleId": f.code,
                "level": _SARIF_LEVEL[f.severity],
                "message": {"text": text},
                "locations": [location],
                "properties": {k: v for k, v in f.to_dict().items()
                               if k not in ("message", "code", "line") and v is not None},
            })
    document = {
        "$schema": "https://json.schemastore.org/sarif-2.1.0.json",
        "version": "2.1.0",
        "runs": [{
            "tool": {"driver": {
                "name": "caffelens",
                "version": __version__,
                "informationUri": "https://github.com/caffelens/caffelens",
                "rules": [{
                    "id": r.code,
                    "name": r.name,
                    "shortDescription": {"text": (r.__doc__ or r.name).strip().splitlines()[0]},
                    "fullDescription": {"text": " ".join((r.__doc__ or "").split())},
                    "defaultConfiguration": {"level": _SARIF_LEVEL[r.severity]},
                } for r in rules],
            }},
            "results": results,
        }],
    }
    return json.dumps(document, indent=2) + "\n"
