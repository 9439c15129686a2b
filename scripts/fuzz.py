#!/usr/bin/env python3
"""Mutation fuzzing of caffelens on the real corpus logs.

Each mutant is a corpus log (tests/data/corpus/*/train.log) put through 1-4 random mutations:
truncate, flip bytes, drop / duplicate / shuffle lines, splice lines from another log, insert
NaN/Inf spellings, insert huge or tiny numbers, insert binary junk, change line endings, insert
an over-long line. Every mutant is run in-process through ``caffelens.parse`` and
``caffelens.diagnose``; anything raised other than ``caffelens.InputError`` (``NotCaffeLog`` is
one), a record whose line is outside 1..number of lines, a line count that differs from the
bytes, or a mutant that runs over ``--timeout`` seconds is a failure. Failing inputs are saved
under scripts/fuzz-failures/ with a note of their seed, mutations and traceback.

    python scripts/fuzz.py                      # 1,000,000 mutated lines, seed 0
    python scripts/fuzz.py --lines 50000 --seed 7
    python scripts/fuzz.py --replay 0-123       # rebuild mutant 123 of seed 0 and show it fail

Exit status: 0 without failures, 1 with.
"""

from __future__ import annotations

import argparse
import collections
import io
import random
import re
import signal
import sys
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

import caffelens  # noqa: E402

CORPUS = ROOT / "tests" / "data" / "corpus"
FAILURES = Path(__file__).resolve().parent / "fuzz-failures"

NAN_SPELLINGS = [b"nan", b"-nan", b"NaN", b"NAN", b"inf", b"-inf", b"Infinity", b"1.#QNAN",
                 b"-1.#QNAN", b"1.#IND", b"-1.#IND", b"1.#INF", b"-1.#INF", b"-nan(ind)",
                 b"nan(ind)", b"1.#SNAN"]
HUGE_NUMBERS = [b"1e+38", b"3.40282e+38", b"-3.40282e+38", b"1.4013e-45", b"-1.4013e-45",
                b"1.17549e-38", b"-0", b"0", b"1e+308", b"1.79769e+308", b"1e+400", b"1e-400",
                b"4294967296", b"18446744073709551616", b"99999999999999999999999999",
                b"-2147483648", b"0x7fffffff", b"1" + b"0" * 400]
LONG_DIGITS = b"9" * 5000  # past Python's 4300-digit int() limit; used rarely
LONG_TOKENS = [b"(", b",", b" ", b"] Layer ", b"9", b"[", b"{", b"\\", b'"', b"a_", b": ",
               b"-> ", b"nan ", b"Iteration "]
NUMBER = re.compile(rb"-?\d+(?:\.\d+)?(?:e[-+]?\d+)?")


class Overtime(BaseException):
    """The mutant ran over --timeout (raised by SIGALRM; re matches check for signals)."""


@dataclass
class Mutant:
    seed: str
    base: str
    mutations: list[str] = field(default_factory=list)
    data: bytes = b""


# --- mutations: each takes (rng, lines, corpus) and returns (lines, description) ---------------


def truncate(rng, lines, corpus):
    i = rng.randrange(len(lines))
    keep = rng.randint(0, len(lines[i]))
    return lines[:i] + [lines[i][:keep]], f"truncate(line {i + 1}, byte {keep})"


def flip_bytes(rng, lines, corpus):
    out = list(lines)
    count = rng.choice([1, 2, 5, 20, 100])
    for _ in range(count):
        i = rng.randrange(len(out))
        if out[i]:
            j = rng.randrange(len(out[i]))
            b = bytearray(out[i])
            b[j] ^= rng.randint(1, 255)
            out[i] = bytes(b)
    return out, f"flip_bytes({count})"


def drop_lines(rng, lines, corpus):
    if rng.random() < 0.5:
        start = rng.randrange(len(lines))
        length = rng.randint(1, 200)
        return lines[:start] + lines[start + length:], f"drop_span({start + 1}, {length})"
    p = rng.choice([0.01, 0.05, 0.2])
    return [x for x in lines if rng.random() >= p], f"drop_random(p={p})"


def duplicate_lines(rng, lines, corpus):
    start = rng.randrange(len(lines))
    length = rng.randint(1, 100)
    span = lines[start:start + length]
    at = rng.choice([start + length, rng.randrange(len(lines) + 1)])
    return lines[:at] + span + lines[at:], f"duplicate({start + 1}, {length}, at {at + 1})"


def shuffle_lines(rng, lines, corpus):
    start = rng.randrange(len(lines))
    length = rng.randint(2, 60)
    window = lines[start:start + length]
    rng.shuffle(window)
    return lines[:start] + window + lines[start + length:], f"shuffle({start + 1}, {length})"


def splice(rng, lines, corpus):
    name, other = rng.choice(corpus)
    src = rng.randrange(len(other))
    length = rng.randint(1, 300)
    at = rng.randrange(len(lines) + 1)
    replace = rng.randint(0, 50)
    piece = other[src:src + length]
    return (lines[:at] + piece + lines[at + replace:],
            f"splice({name}:{src + 1}+{length} at {at + 1}, replacing {replace})")


def _replace_numbers(rng, lines, values, count, last_only):
    out = list(lines)
    candidates = [i for i, line in enumerate(out) if NUMBER.search(line)]
    done = 0
    for i in rng.sample(candidates, min(count, len(candidates))):
        matches = list(NUMBER.finditer(out[i]))
        m = matches[-1] if last_only or rng.random() < 0.6 else rng.choice(matches)
        out[i] = out[i][:m.start()] + rng.choice(values) + out[i][m.end():]
        done += 1
    return out, done


def insert_nan(rng, lines, corpus):
    count = rng.choice([1, 3, 30, 300])
    out, done = _replace_numbers(rng, lines, NAN_SPELLINGS, count, last_only=True)
    return out, f"insert_nan({done})"


def insert_huge(rng, lines, corpus):
    count = rng.choice([1, 3, 30, 300])
    values = HUGE_NUMBERS + ([LONG_DIGITS] if rng.random() < 0.05 else [])
    out, done = _replace_numbers(rng, lines, values, count, last_only=False)
    return out, f"insert_huge({done}{', long digits' if LONG_DIGITS in values else ''})"


def binary_junk(rng, lines, corpus):
    out = list(lines)
    count = rng.choice([1, 5, 50])
    for _ in range(count):
        junk = rng.randbytes(rng.randint(1, 400))
        i = rng.randrange(len(out) + 1)
        if rng.random() < 0.5:  # a junk line of its own (newlines in it make more lines)
            out.insert(i, junk)
        elif i < len(out):      # junk inside a line
            j = rng.randint(0, len(out[i]))
            out[i] = out[i][:j] + junk + out[i][j:]
    return out, f"binary_junk({count})"


def line_endings(rng, lines, corpus):
    start = rng.randrange(len(lines))
    length = rng.randint(1, 500)
    ending = rng.choice([b"\r", b"\r\r", b"\x00"])
    out = lines[:start] + [x + ending for x in lines[start:start + length]] + lines[start + length:]
    return out, f"line_endings({start + 1}, {length}, {ending!r})"


def long_line(rng, lines, corpus):
    token = rng.choice(LONG_TOKENS)
    size = rng.choice([1_000, 20_000, 200_000])
    head = rng.choice([b"", b"I1125 22:24:33.004931 21757 net.cpp:651]     [Forward] Layer ",
                       b"I1125 22:24:33.004931 21757 solver.cpp:231] Iteration 10, loss = ",
                       b"base_lr: "])
    at = rng.randrange(len(lines) + 1)
    line = head + token * (size // len(token))
    description = f"long_line({token!r} x {size // len(token)} at {at + 1})"
    return lines[:at] + [line] + lines[at:], description


MUTATIONS = [truncate, flip_bytes, drop_lines, duplicate_lines, shuffle_lines, splice,
             insert_nan, insert_huge, binary_junk, line_endings, long_line]


def make_mutant(seed: str, corpus) -> Mutant:
    rng = random.Random(seed)
    name, lines = rng.choice(corpus)
    mutant = Mutant(seed, name)
    lines = list(lines)
    for _ in range(rng.randint(1, 4)):
        if not lines:
            break
        mutation = rng.choice(MUTATIONS)
        lines, description = mutation(rng, lines, corpus)
        mutant.mutations.append(description)
    mutant.data = b"\n".join(lines)
    return mutant


# --- running one mutant ------------------------------------------------------------------------


@dataclass
class Outcome:
    lines: int = 0
    records: int = 0
    failure: str | None = None
    signature: str | None = None
    details: str = ""
    mismatch: bool = False


def _signature(exc: BaseException) -> str:
    frames = [f for f in traceback.extract_tb(exc.__traceback__) if "caffelens" in f.filename
              or "prototxt" in f.filename]
    where = frames[-1] if frames else (traceback.extract_tb(exc.__traceback__) or [None])[-1]
    place = f"{Path(where.filename).name}:{where.lineno} in {where.name}" if where else "?"
    return f"{type(exc).__name__} at {place}"


def expected_line_count(data: bytes) -> int:
    return data.count(b"\n") + (0 if not data or data.endswith(b"\n") else 1)


def run_mutant(mutant: Mutant, timeout: float, differential: bool) -> Outcome:
    outcome = Outcome()
    data = mutant.data

    def alarm(signum, frame):
        raise Overtime()

    signal.signal(signal.SIGALRM, alarm)
    signal.setitimer(signal.ITIMER_REAL, timeout)
    stage = "parse"
    try:
        parser = caffelens.Parser()
        records = list(caffelens.parse(io.BytesIO(data), parser))
        outcome.lines = parser.stats.lines
        outcome.records = len(records)
        bad = [r for r in records if not 1 <= r.line <= parser.stats.lines]
        if bad:
            outcome.failure = (f"{len(bad)} record(s) with a line outside 1..{parser.stats.lines}"
                               f", first: {bad[0]!r}"[:500])
            outcome.signature = "record line out of range"
        elif parser.stats.lines != expected_line_count(data):
            outcome.failure = (f"{parser.stats.lines} lines parsed, the bytes hold "
                               f"{expected_line_count(data)}")
            outcome.signature = "line count differs"
        if differential:
            stage = "reference parse"
            reference = [r.to_dict() for r in
                         caffelens.parse(io.BytesIO(data), caffelens.Parser(fast=False))]
            outcome.mismatch = reference != [r.to_dict() for r in records]
        stage = "diagnose"
        try:
            caffelens.diagnose(io.BytesIO(data))
        except caffelens.InputError:
            pass
    except Overtime:
        outcome.failure = f"{stage} ran over {timeout} s"
        outcome.signature = f"timeout in {stage}"
    except Exception as exc:  # noqa: BLE001 - that is the point
        outcome.failure = f"{stage}: {type(exc).__name__}: {str(exc)[:300]}"
        outcome.signature = f"{stage}: {_signature(exc)}"
        outcome.details = "".join(traceback.format_exception(exc))
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
    return outcome


def save(mutant: Mutant, outcome: Outcome) -> Path:
    FAILURES.mkdir(parents=True, exist_ok=True)
    path = FAILURES / f"{mutant.seed}.log"
    path.write_bytes(mutant.data)
    note = (f"seed: {mutant.seed}\nbase: {mutant.base}\nmutations: {'; '.join(mutant.mutations)}\n"
            f"failure: {outcome.failure}\nsignature: {outcome.signature}\n"
            f"replay: python scripts/fuzz.py --replay {mutant.seed}\n\n{outcome.details}")
    path.with_suffix(".txt").write_text(note, encoding="utf-8")
    return path


def load_corpus() -> list[tuple[str, list[bytes]]]:
    logs = sorted(CORPUS.glob("*/train.log"))
    if not logs:
        sys.exit(f"fuzz: no corpus logs under {CORPUS}")
    return [(p.parent.name, p.read_bytes().split(b"\n")) for p in logs]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--lines", type=int, default=1_000_000,
                    help="stop after this many mutated lines in total (default 1,000,000)")
    ap.add_argument("--seed", type=int, default=0, help="master seed (default 0)")
    ap.add_argument("--timeout", type=float, default=30.0,
                    help="seconds one mutant may take for parse + diagnose (default 30)")
    ap.add_argument("--max-saved", type=int, default=5,
                    help="failing inputs saved per failure signature (default 5)")
    ap.add_argument("--max-printed", type=int, default=100, help="failures listed (default 100)")
    ap.add_argument("--differential", action="store_true",
                    help="also parse with Parser(fast=False) and count record mismatches")
    ap.add_argument("--replay", metavar="SEED-I", help="rebuild one mutant and run it loudly")
    args = ap.parse_args(argv)
    corpus = load_corpus()

    if args.replay:
        mutant = make_mutant(args.replay, corpus)
        print(f"mutant {mutant.seed}: {mutant.base}, {'; '.join(mutant.mutations)}, "
              f"{len(mutant.data):,} bytes")
        outcome = run_mutant(mutant, args.timeout, args.differential)
        print(outcome.failure or "no failure", outcome.details, sep="\n")
        return 1 if outcome.failure else 0

    started = time.perf_counter()
    mutants = total_lines = total_records = mismatches = 0
    failures: list[tuple[Mutant, Outcome, Path | None]] = []
    saved: collections.Counter = collections.Counter()
    signatures: collections.Counter = collections.Counter()
    mutations_seen: collections.Counter = collections.Counter()
    while total_lines < args.lines:
        mutant = make_mutant(f"{args.seed}-{mutants}", corpus)
        mutants += 1
        for description in mutant.mutations:
            mutations_seen[description.split("(")[0]] += 1
        outcome = run_mutant(mutant, args.timeout, args.differential)
        total_lines += outcome.lines or expected_line_count(mutant.data)
        total_records += outcome.records
        mismatches += outcome.mismatch
        if outcome.failure:
            signatures[outcome.signature] += 1
            path = None
            if saved[outcome.signature] < args.max_saved:
                saved[outcome.signature] += 1
                path = save(mutant, outcome)
            failures.append((mutant, outcome, path))
        if mutants % 100 == 0:
            print(f"  … {mutants} mutants, {total_lines:,} lines, {len(failures)} failures, "
                  f"{time.perf_counter() - started:.0f} s", file=sys.stderr, flush=True)

    elapsed = time.perf_counter() - started
    print(f"caffelens fuzz: seed {args.seed}, target {args.lines:,} lines")
    print(f"mutants:      {mutants:,}")
    print(f"total lines:  {total_lines:,}")
    print(f"records:      {total_records:,}")
    print(f"failures:     {len(failures):,}")
    for mutant, outcome, path in failures[: args.max_printed]:
        print(f"  seed {mutant.seed} ({mutant.base}; {'; '.join(mutant.mutations)}): "
              f"{outcome.failure}" + (f" -> {path.relative_to(ROOT)}" if path else ""))
    if len(failures) > args.max_printed:
        print(f"  … {len(failures) - args.max_printed} more")
    if signatures:
        print("failure signatures:")
        for signature, count in signatures.most_common():
            print(f"  {count:6,} × {signature}")
    if args.differential:
        print(f"fast/reference parser mismatches: {mismatches:,} mutants")
    applied = ", ".join(f"{k} {v:,}" for k, v in sorted(mutations_seen.items()))
    print(f"mutations applied: {applied}")
    print(f"time:         {elapsed:.1f} s")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
