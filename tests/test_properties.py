"""Property tests: arbitrary input never raises; chunking never changes the records."""

from __future__ import annotations

import io
import random

from hypothesis import HealthCheck, given, settings, strategies as st

import caffelens
from caffelens.sources import iter_lines

from conftest import corpus_log

SAMPLE = corpus_log("iter_size").read_bytes()[:25_000]
CAFFE_WORDS = st.sampled_from([
    "[Forward] Layer ", "[Backward] Layer ", ", top blob ", ", bottom blob ", ", param blob ",
    " data: ", " diff: ", "nan", "-nan", "inf", "1.#QNAN", "Iteration ", ", loss = ", ", lr = ",
    "Testing net (#0)", "Test net output #0: ", "Train net output #1: ", " (* 1 = ", " loss)",
    "All net params (data, diff): L1 norm = (", "); L2 norm = (", "Initializing solver from "
    "parameters: ", "Initializing net from parameters: ", "layer {", "}", "base_lr: ",
    "I1125 22:24:32.983922 21757 net.cpp:651] ", "E1231 23:59:59.999999 1 x.cc:1] ", "\n",
    "\r\n", "\r", "\x00", " ", "1e+38", "12", ",", "(", ")", "Check failed: ", "*** SIGSEGV ",
])
fuzz = settings(derandomize=True, max_examples=150, deadline=None,
                suppress_health_check=[HealthCheck.too_slow])
few = settings(fuzz, max_examples=30)  # each example parses a real 25 KB log


@fuzz
@given(st.text())
def test_arbitrary_text_never_raises(text):
    list(caffelens.parse(io.StringIO(text)))


@fuzz
@given(st.binary())
def test_arbitrary_bytes_never_raise(data):
    list(caffelens.parse(io.BytesIO(data)))


@fuzz
@given(st.lists(CAFFE_WORDS, max_size=80).map("".join))
def test_caffe_like_text_never_raises_and_lines_are_valid(text):
    records = list(caffelens.parse(io.StringIO(text)))
    count = len(list(iter_lines(io.StringIO(text))))
    assert all(1 <= r.line <= max(count, 1) for r in records)


def _records(source):
    return [r.to_dict() for r in caffelens.parse(source)]


REFERENCE = _records(io.BytesIO(SAMPLE))


@few
@given(st.integers(min_value=1, max_value=5000))
def test_chunk_size_does_not_change_records(chunk):
    lines = list(iter_lines(io.BytesIO(SAMPLE), chunk_size=chunk))
    assert _records(iter(lines)) == REFERENCE


@few
@given(st.lists(st.integers(min_value=0, max_value=len(SAMPLE)), max_size=30))
def test_arbitrary_text_pieces_give_same_records(cuts):
    text = SAMPLE.decode()
    bounds = sorted(set([0, len(text), *[min(c, len(text)) for c in cuts]]))
    pieces = [text[a:b] for a, b in zip(bounds, bounds[1:])]

    class Pieces(io.TextIOBase):
        def __init__(self):
            self.parts = iter(pieces)

        def read(self, size=-1):
            return "" if size == 0 else next(self.parts, "")

    assert [r.to_dict() for r in caffelens.parse(Pieces())] == REFERENCE


@few
@given(st.randoms(use_true_random=False), st.sampled_from(
    ["truncate", "flip", "drop", "duplicate", "shuffle"]))
def test_mutated_real_log_never_raises(rnd: random.Random, mutation):
    lines = SAMPLE.split(b"\n")
    if mutation == "truncate":
        data = SAMPLE[: rnd.randrange(len(SAMPLE))]
    elif mutation == "flip":
        buf = bytearray(SAMPLE)
        for _ in range(50):
            buf[rnd.randrange(len(buf))] = rnd.randrange(256)
        data = bytes(buf)
    elif mutation == "drop":
        data = b"\n".join(l for l in lines if rnd.random() > 0.2)
    elif mutation == "duplicate":
        data = b"\n".join(l for line in lines for l in ([line] * rnd.choice((1, 1, 2))))
    else:
        rnd.shuffle(lines)
        data = b"\n".join(lines)
    count = data.count(b"\n") + 1
    records = list(caffelens.parse(io.BytesIO(data)))
    assert all(1 <= r.line <= count for r in records)
