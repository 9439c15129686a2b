"""Write records as JSON lines or CSV, and the train/test tables of Caffe's parse_log.py."""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Iterable
from typing import TextIO

from caffelens.assemble import ParseStats, Parser
from caffelens.records import BlobValue, LearningRate, Loss, Output, Record, SolverConfig, NetConfig
from caffelens.sources import CHUNK, Source


def export_jsonl(source: Source, out: TextIO, parallel: bool = False,
                 chunk_size: int = CHUNK) -> ParseStats:
    """:func:`write_jsonl` of every record of ``source``, debug values written straight from
    the parser's arrays through one template per printed blob (the same bytes, tested).
    Returns the parser's stats, ``records`` counting the lines written."""
    encode = json.JSONEncoder(separators=(",", ":"), allow_nan=False).encode
    write = out.write
    parser = Parser()

    def write_record(record: Record) -> None:
        parser.stats.records += 1
        write(encode(record.to_dict()) + "\n")

    parser.record_sink = write_record
    parser.block_sink = _BlobLines(parser, write)
    parser.consume(source, chunk_size, parallel)
    return parser.stats


class _BlobLines:
    """Writes a run of debug values as BlobValue JSON lines (the parser's ``block_sink``)."""

    def __init__(self, parser: Parser, write) -> None:
        self.parser, self.write = parser, write
        self.templates: dict[tuple, str] = {}  # (phase, net, key id) -> template
        self.templates_of = (0, 0)  # (run, definitions): param names may change with either

    def __call__(self, run, iteration, phase, net, keys, lines, ids, values, passes,
                 batches) -> None:
        count = len(ids)
        passes = [passes] * count if isinstance(passes, int) else (
            passes.tolist() if passes is not None else [0] * count)
        batches = [None] * count if batches is None else batches.tolist()
        iteration = "null" if iteration is None else str(iteration)
        if self.templates_of != (run, self.parser.definitions):
            self.templates_of = (run, self.parser.definitions)
            self.templates.clear()
        text = []
        for line, key, value, pass_index, batch in zip(lines.tolist(), ids.tolist(),
                                                       values.tolist(), passes, batches):
            template = self.templates.get((phase, net, key))
            if template is None:
                template = self._template(run, phase, net, key, keys[key])
            text.append(template % (line, iteration, pass_index,
                                    "null" if batch is None else batch, _json_float(value)))
        self.write("".join(text))
        self.parser.stats.records += count

    def _template(self, run, phase, net, key_id, key) -> str:
        direction, layer, role, blob, stat = key
        index = name = None
        if role == "param":
            index, name = self.parser.param_of(phase, net, layer, blob)
        fields = BlobValue(0, run, 0, phase, net, 0, None, direction, layer, blob, role, stat,
                           0.0, index, name).to_dict()
        varying = {"line": "%d", "iteration": "%s", "pass": "%d", "batch": "%s",
                   "value": "%s"}
        parts = []
        for name_, value in fields.items():
            encoded = json.dumps(value, separators=(",", ":")).replace("%", "%%")
            parts.append(f"{json.dumps(name_)}:{varying.get(name_, encoded)}")
        template = "{" + ",".join(parts) + "}\n"
        self.templates[(phase, net, key_id)] = template
        return template


def _json_float(value: float) -> str:
    """A float as the JSON encoder writes it; non-finite ones as strings, as to_dict does."""
    if value - value == 0:
        return repr(value)
    return '"nan"' if value != value else ('"inf"' if value > 0 else '"-inf"')


def write_jsonl(records: Iterable[Record], out: TextIO) -> int:
    """One JSON object per record; non-finite numbers as "nan"/"inf"/"-inf". Returns count."""
    encode = json.JSONEncoder(separators=(",", ":"), allow_nan=False).encode
    count = 0
    for record in records:
        out.write(encode(record.to_dict()))
        out.write("\n")
        count += 1
    return count


_CSV_COLUMNS = (
    "kind", "line", "run", "iteration", "phase", "net", "pass", "batch", "direction", "layer",
    "blob", "role", "stat", "value", "name", "index", "weight",
)


def write_csv(records: Iterable[Record], out: TextIO) -> int:
    """One row per value-carrying record (blob, loss, output, lr, net-norms, clip)."""
    writer = csv.DictWriter(out, fieldnames=_CSV_COLUMNS, extrasaction="ignore",
                            lineterminator="\n")
    writer.writeheader()
    count = 0
    for record in records:
        if isinstance(record, (SolverConfig, NetConfig)):
            continue
        row = record.to_dict()
        if record.kind == "net-norms":
            for stat in ("l1_data", "l1_diff", "l2_data", "l2_diff"):
                writer.writerow({**row, "stat": stat, "value": row[stat]})
                count += 1
            continue
        if record.kind == "clip":
            row["value"] = row["l2_norm"]
        writer.writerow(row)
        count += 1
    return count


def write_table(records: Iterable[Record], phase: str, out: TextIO) -> int:
    """parse_log.py's CSV (NumIters, Seconds, LearningRate, one column per output), keeping
    the NaN rows that parse_log.py drops."""
    rows: dict[tuple[int, int], dict] = {}
    names: list[str] = []
    lr = math.nan
    lrs: dict[tuple[int, int], float] = {}
    for record in records:
        if isinstance(record, LearningRate):
            lr = record.value
            lrs[(record.run, record.iteration)] = record.value
        elif isinstance(record, Output) and record.phase == phase and record.iteration is not None:
            if phase == "test" and record.net != 0:
                name = f"{record.name}#net{record.net}"
            else:
                name = record.name
            key = (record.run, record.iteration)
            row = rows.setdefault(key, {"NumIters": record.iteration, "Seconds": record.time,
                                        "LearningRate": lr})
            row.setdefault(name, record.value)
            if name not in names:
                names.append(name)
        elif isinstance(record, Loss) and phase == "train":
            key = (record.run, record.iteration)
            rows.setdefault(key, {"NumIters": record.iteration, "Seconds": record.time,
                                  "LearningRate": lr})
    for key, row in rows.items():
        if key in lrs and phase == "train":
            row["LearningRate"] = lrs[key]
    writer = csv.DictWriter(out, fieldnames=["NumIters", "Seconds", "LearningRate", *names],
                            lineterminator="\n")
    writer.writeheader()
    for row in rows.values():
        writer.writerow({k: _csv_number(v) for k, v in row.items()})
    return len(rows)


def _csv_number(value):
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        return f"{value:g}" if abs(value) >= 1e-4 or value == 0 else repr(value)
    return "" if value is None else value
