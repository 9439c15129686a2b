"""How fast can CPython read a log at all? The floor under any pure-Python parser.

Times, on one log and in one run, `grep -c .`; decoding and splitting the log into lines;
the same plus `rpartition(": ")` and `float()` on every line (the least a reader of debug
values can do); and bench.py's naive per-line regex parser. Prints each as a ratio of grep
and of the naive parser. Figures, not a test.

    python benchmarks/floor.py benchmarks/out/healthy-100MB-seed0.log [--repeat 3]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from itertools import repeat
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench import naive_parse  # noqa: E402


def grep(path: str) -> None:
    subprocess.run(["grep", "-c", ".", path], capture_output=True, check=False)


def lines_of(path: str):
    with open(path, "rb") as log:
        rest = b""
        while True:
            data = log.read(1 << 20)
            if not data:
                if rest:
                    yield [rest.decode("utf-8", "replace")]
                return
            lines = (rest + data).decode("utf-8", "replace").split("\n")
            rest = lines.pop().encode()
            yield lines


def split_only(path: str) -> None:
    for _ in lines_of(path):
        pass


def split_and_floats(path: str) -> None:
    for lines in lines_of(path):
        for _, _, value in map(str.rpartition, lines, repeat(": ")):
            try:
                float(value)
            except ValueError:
                pass


def best(function, path: str, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        function(path)
        times.append(time.perf_counter() - start)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("log")
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    base = best(grep, args.log, args.repeat)
    naive = best(naive_parse, args.log, args.repeat)
    print(f"{'':38s} {'wall':>7s}    {'/ grep':>6s}  {'/ naive':>7s}   (one core each)")
    for name, seconds in (("grep -c .", base),
                          ("decode + split lines", best(split_only, args.log, args.repeat)),
                          ('+ rpartition(": ") + float() per line',
                           best(split_and_floats, args.log, args.repeat)),
                          ("naive regex parser (bench.py)", naive)):
        print(f"{name:38s} {seconds:7.2f} s  {seconds / base:6.1f}  {seconds / naive:7.2f}")


if __name__ == "__main__":
    main()
