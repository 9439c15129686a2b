"""Tests for caffelens.prototxt: the protobuf text grammar and the solver/net models."""

from __future__ import annotations

import json
import math
import re
import time
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from caffelens.prototxt import (
    MAX_DEPTH,
    LayerDef,
    NetDefinition,
    ParamSpec,
    ProtoTextError,
    SolverSettings,
    net_from_file,
    net_from_message,
    net_from_text,
    parse_message,
    read_prototxt,
    solver_from_file,
    solver_from_text,
)

DATA = Path(__file__).parent / "data" / "prototxt"
SHARED = Path(__file__).resolve().parents[1].parent / "shared"

# --------------------------------------------------------------------------------------------
# parse_message: values

SCALARS = [
    ("a: 1", 1),
    ("a: -7", -7),
    ("a: 0", 0),
    ("a: 18446744073709551615", 18446744073709551615),
    ("a: 0x1F", 31),
    ("a: -0x10", -16),
    ("a: 017", 15),  # protobuf reads a leading 0 as octal
    ("a: 09", 9),
    ("a: 1e-05", 1e-05),
    ("a: 5.70877e+08", 5.70877e08),
    ("a: -0.5", -0.5),
    ("a: .5", 0.5),
    ("a: 5.", 5.0),
    ("a: 1.5f", 1.5),
    ("a: 2E3", 2000.0),
    ("a: inf", math.inf),
    ("a: -inf", -math.inf),
    ("a: Infinity", math.inf),
    ("a: -infinity", -math.inf),
    ("a: true", True),
    ("a: false", False),
    ("a: True", True),
    ("a: CPU", "CPU"),
    ("a: MAX", "MAX"),
    ("a: TRAIN", "TRAIN"),
    ("a: inf_mode", "inf_mode"),
    ("a: nan_x", "nan_x"),
    ("a: t", "t"),
    ('a: "xavier"', "xavier"),
    ("a: 'single'", "single"),
    ('a: ""', ""),
    ('a: "a" "b"', "ab"),
    ("a: \"a\" 'b' \"c\"", "abc"),
    ('a: "a"\n   "b"', "ab"),
    ('a: "a" # comment\n "b"', "ab"),
    ('a: "# not a comment"', "# not a comment"),
    ('a: "{ } : ,"', "{ } : ,"),
]


@pytest.mark.parametrize(("text", "expected"), SCALARS, ids=[t for t, _ in SCALARS])
def test_scalar_values(text, expected):
    value = parse_message(text)["a"]
    assert value == [expected]
    assert type(value[0]) is type(expected)


@pytest.mark.parametrize("text", ["a: nan", "a: NaN", "a: -nan"])
def test_nan(text):
    (value,) = parse_message(text)["a"]
    assert isinstance(value, float) and math.isnan(value)


ESCAPES = [
    (r'"say \"hi\""', 'say "hi"'),
    (r'"back\\slash"', "back\\slash"),
    (r'"a\nb\tc\rd"', "a\nb\tc\rd"),
    (r"'it\'s'", "it's"),
    (r'"\101\102"', "AB"),
    (r'"\0"', "\x00"),
    (r'"\303\251t\303\251"', "été"),  # CEscape writes UTF-8 bytes as octal
    (r'"\303" "\251"', "é"),  # an escaped UTF-8 sequence split across literals
    (r'"\x41\x4a"', "AJ"),
    (r'"\u00e9"', "é"),
    (r'"\U0001F600"', "\U0001f600"),
    (r'"\a\b\f\v\?"', "\a\b\f\v?"),
    (r'"\q"', "q"),  # unknown escape keeps its character
    (r'"\377"', "\ufffd"),  # not UTF-8
    ('"été"', "été"),  # raw UTF-8 in a hand-written file
]


@pytest.mark.parametrize(("literal", "expected"), ESCAPES, ids=[t for t, _ in ESCAPES])
def test_string_escapes(literal, expected):
    assert parse_message(f"s: {literal}") == {"s": [expected]}


# --------------------------------------------------------------------------------------------
# parse_message: structure

STRUCTURE = [
    ("", {}),
    ("   \n\t\r\n", {}),
    ("# only a comment", {}),
    ("a { }", {"a": [{}]}),
    ("a: { }", {"a": [{}]}),
    ("a{b:1}", {"a": [{"b": [1]}]}),
    ("a\n{\n  b: 1\n}", {"a": [{"b": [1]}]}),
    ("a { b { c { d: 1 } } }", {"a": [{"b": [{"c": [{"d": [1]}]}]}]}),
    ("a { x: 1 } a: { x: 2 }", {"a": [{"x": [1]}, {"x": [2]}]}),
    ("top: 'a' top: 'b' bottom: 'c' top: 'd'", {"top": ["a", "b", "d"], "bottom": ["c"]}),
    ("a: 1, b: 2; c: 3", {"a": [1], "b": [2], "c": [3]}),
    ("a { b: 1 }, a { b: 2 };", {"a": [{"b": [1]}, {"b": [2]}]}),
    ("dim: [1, 2, 3]", {"dim": [1, 2, 3]}),
    ("dim: 1 dim: [2, 3] dim: 4", {"dim": [1, 2, 3, 4]}),
    ("dim: [ 1 ,\n 2 ]", {"dim": [1, 2]}),
    ('stage: ["a", "b" "c"]', {"stage": ["a", "bc"]}),
    ("mode: [CPU, GPU]", {"mode": ["CPU", "GPU"]}),
    ("dim: []", {}),
    ("a: 1 # trailing\n# full line\nb: 2", {"a": [1], "b": [2]}),
    ("a: # between\n 1", {"a": [1]}),
    ("a # between\n { b: 1 }", {"a": [{"b": [1]}]}),
    ("a {  # open\n b: 1 # in\n} # close", {"a": [{"b": [1]}]}),
    ("[ext.field]: 3", {"[ext.field]": [3]}),
    ("[type.googleapis.com/caffe.X] { a: 1 }", {"[type.googleapis.com/caffe.X]": [{"a": [1]}]}),
    ("a:1\r\nb:2\r\n", {"a": [1], "b": [2]}),
]


@pytest.mark.parametrize(("text", "expected"), STRUCTURE, ids=[t for t, _ in STRUCTURE])
def test_structure(text, expected):
    assert parse_message(text) == expected


def test_tabs_are_whitespace_and_kept_in_strings():
    assert parse_message('a:\t"x\ty"\tb\t{\tc: 1 }') == {"a": ["x\ty"], "b": [{"c": [1]}]}
    with pytest.raises(ProtoTextError) as info:
        parse_message("a:\t\t@")
    assert info.value.col == 5


def test_results_are_plain_python():
    message = parse_message((DATA / "dump_caffenetbench_solver_net_param.txt").read_text())
    assert json.loads(json.dumps(message)) == message

    def walk(value):
        if isinstance(value, dict):
            assert all(type(k) is str and type(v) is list for k, v in value.items())
            for values in value.values():
                for v in values:
                    walk(v)
        else:
            assert type(value) in (int, float, bool, str)

    walk(message)


def test_debugstring_layout_and_free_layout_agree():
    """The one-line fast path and the general grammar must read the same message."""
    debugstring = (
        'name: "n"\nlayer {\n  name: "conv"\n  top: "a"\n  top: "b"\n  param {\n    lr_mult: 0\n'
        '  }\n  convolution_param {\n    weight_filler {\n      type: "msra"\n      std: 1e-05\n'
        "    }\n    engine: CUDNN\n    bias_term: false\n  }\n}\n"
    )
    free = (
        'name:\n"n" layer: { name # c\n: "conv" top: ["a", "b"] param { lr_mult: 0 } '
        "convolution_param {weight_filler{type:'ms' \"ra\";std:1e-05,} engine:CUDNN bias_term:"
        " false}}"
    )
    assert parse_message(debugstring) == parse_message(free)


# --------------------------------------------------------------------------------------------
# parse_message: errors

MALFORMED = [
    ("a: ", 1, 4, "Expected value"),
    ("a", 1, 2, "Expected ':' or '{'"),
    ("a b", 1, 3, "Expected ':' or '{'"),
    ("a: {", 1, 5, "unclosed"),
    ("a { b: 1 } }", 1, 12, "without a matching"),
    ("}", 1, 1, "without a matching"),
    ('a: "abc', 1, 4, "Expected value"),
    ('a: "x\ny"', 1, 4, "Expected value"),
    ("a: 1x", 1, 4, "Expected value"),
    ("a: 1.2.3", 1, 4, "Expected value"),
    ("a: 0x", 1, 4, "Expected value"),
    ("a: -FOO", 1, 4, "Expected value"),
    ("a: @", 1, 4, "Expected value"),
    ("a: [1, 2", 1, 9, "Expected ']'"),
    ("a: [1,]", 1, 6, "Expected ']'"),
    ("a: [{ b: 1 }]", 1, 5, "Expected ']'"),  # message lists are not supported
    ("{", 1, 1, "Expected field name"),
    ("\x00", 1, 1, "Expected field name"),
    ("a: 1\nb: 2\n  c d: 3\ne: 4", 3, 5, "Expected ':' or '{'"),
    ("layer {\n  name: 'x'\n  type: \n}", 4, 1, "Expected value"),
    ("I1125 22:24:32.984613 21757 solver.cpp:94] Creating net", 1, 7, "Expected ':' or '{'"),
]


@pytest.mark.parametrize(
    ("text", "line", "col", "message"), MALFORMED, ids=[t[0] for t in MALFORMED]
)
def test_malformed_input_raises_with_position(text, line, col, message):
    with pytest.raises(ProtoTextError, match=re.escape(message)) as info:
        parse_message(text)
    assert (info.value.line, info.value.col) == (line, col)
    assert str(info.value).startswith(f"line {line}, col {col}: ")
    assert isinstance(info.value, ValueError)


def test_nesting_depth_is_capped():
    def nested(depth: int) -> str:
        return "a { " * depth + "x: 1 " + "} " * depth

    deepest = parse_message(nested(MAX_DEPTH))
    for _ in range(MAX_DEPTH):
        deepest = deepest["a"][0]
    assert deepest == {"x": [1]}
    with pytest.raises(ProtoTextError, match="nested deeper than 100"):
        parse_message(nested(MAX_DEPTH + 1))
    with pytest.raises(ProtoTextError, match="nested deeper"):  # not RecursionError
        parse_message("a {" * 20_000)
    with pytest.raises(ProtoTextError, match="nested deeper"):
        parse_message("a {" * 20_000, partial=True)


@pytest.mark.parametrize(
    "text",
    [
        'a: "' + "\\" * 20_000,
        'a: "' + "\\a" * 20_000,
        "a: " + "1" * 50_000 + "x",
        "a: " + "1" * 20_000 + "." + "1" * 20_000 + "e",
        "#" * 100_000,
        "a: 'x'" + " #" * 20_000 + "\n",
        "a: " + '"x" ' * 10_000 + "#",
        "a: [" + "1, " * 5_000,  # lists take the general grammar: ~0.1 ms per item
        "a" * 100_000,
        "{" * 50_000,
    ],
    ids=lambda t: t[:12],
)
def test_pathological_input_is_fast(text):
    start = time.perf_counter()
    try:
        parse_message(text)
    except ProtoTextError:
        pass
    assert time.perf_counter() - start < 2.0


# --------------------------------------------------------------------------------------------
# parse_message: truncated text (glog cuts messages at 30,000 bytes; a crash cuts a dump)

TRUNCATED = [
    (
        'layer {\n  name: "x"\n  param {\n    lr_mult: 1\n    de',
        {"layer": [{"name": ["x"], "param": [{"lr_mult": [1]}]}]},
    ),
    ('layer {\n  name: "x"\n  type: "xavie', {"layer": [{"name": ["x"]}]}),
    ('layer {\n  name: "x"\n  type: "xavier"', {"layer": [{"name": ["x"], "type": ["xavier"]}]}),
    # the last number might have lost digits (10 -> 1), so it is dropped
    ('layer {\n  name: "x"\n  lr_mult: 1', {"layer": [{"name": ["x"]}]}),
    ('layer {\n  name: "x"\n  p {\n  }', {"layer": [{"name": ["x"], "p": [{}]}]}),
    ("layer {\n  name: 'x'\n  ", {"layer": [{"name": ["x"]}]}),
    # an opening line is dropped too: an empty layer would only be noise
    ('layer {\n  name: "x"\n}\nlayer {', {"layer": [{"name": ["x"]}]}),
    ("name: ", {}),
    ('name: "Le', {}),
]


@pytest.mark.parametrize(("text", "expected"), TRUNCATED, ids=[t for t, _ in TRUNCATED])
def test_truncated_text(text, expected):
    with pytest.raises(ProtoTextError):
        parse_message(text)
    assert parse_message(text, partial=True) == expected


def test_partial_still_rejects_garbage_before_the_last_line():
    text = 'layer {\n  name: "x"\n  garbage here\n  type: "y"\n'
    with pytest.raises(ProtoTextError, match="line 3"):
        parse_message(text, partial=True)
    with pytest.raises(ProtoTextError, match="without a matching"):
        parse_message("a: 1\n}\nb {", partial=True)


def test_partial_handles_statements_spanning_lines():
    assert parse_message("x {\n a:\n 1", partial=True) == {"x": [{}]}
    with pytest.raises(ProtoTextError, match="spans several lines"):
        parse_message("x {\n a\n :\n\n \n 1", partial=True)


def test_truncated_solver_dump():
    text = (DATA / "dump_nvcaffe0173_solver.txt").read_text()
    cut = text[: text.index("train_state {") + len("train_state {\n  level: 0")]
    solver = solver_from_text(cut, partial=True)
    assert solver.truncated and solver.base_lr == 0.001
    assert solver.raw["train_state"] == [{}]  # `level: 0` may have been `level: 07`
    assert not solver_from_text(text, partial=True).truncated


def test_partial_on_complete_text_is_a_no_op():
    text = (DATA / "healthy_train_val.prototxt").read_text()
    assert parse_message(text, partial=True) == parse_message(text)
    assert not net_from_text(text, partial=True).truncated


# --------------------------------------------------------------------------------------------
# Property tests (derandomized)


def _c_escape(text: str) -> str:
    """Escape like protobuf's CEscape: printable ASCII as is, other bytes as octal."""
    out = []
    for byte in text.encode("utf-8"):
        char = chr(byte)
        if char in '"\'\\':
            out.append("\\" + char)
        elif char == "\n":
            out.append("\\n")
        elif char == "\t":
            out.append("\\t")
        elif 0x20 <= byte < 0x7F:
            out.append(char)
        else:
            out.append(f"\\{byte:03o}")
    return '"' + "".join(out) + '"'


class _Enum(str):
    """A generated enum identifier: rendered bare, parsed back as a plain str."""


_RESERVED = re.compile(r"(?i)inf|infinity|nan|true|false")
field_names = st.from_regex(r"[a-z_][a-z0-9_]{0,6}", fullmatch=True)
scalars = st.one_of(
    st.integers(min_value=-(2**63), max_value=2**64),
    st.floats(allow_nan=False),
    st.booleans(),
    st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=12),
    st.from_regex(r"[A-Z][A-Z0-9_]{0,6}", fullmatch=True)
    .filter(lambda s: not _RESERVED.fullmatch(s))
    .map(_Enum),
)
messages = st.recursive(
    st.dictionaries(field_names, st.lists(scalars, min_size=1, max_size=3), max_size=4),
    lambda children: st.dictionaries(
        field_names, st.lists(st.one_of(scalars, children), min_size=1, max_size=3), max_size=4
    ),
    max_leaves=20,
)


def _render_scalar(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, _Enum):
        return str(value)
    if isinstance(value, str):
        return _c_escape(value)
    return repr(value)  # ints, and floats as 1e-05 / inf / -inf


def _render(message: dict, style: str, indent: int = 0) -> str:
    """Print a message as DebugString does ("debug"), on one line ("compact"), or with
    comments and `name: {` ("commented")."""
    pad = "  " * indent if style != "compact" else ""
    end = "\n" if style != "compact" else " "
    note = " # note: {x} \"y\"" if style == "commented" else ""
    out = []
    for name, values in message.items():
        for value in values:
            if isinstance(value, dict):
                opener = f"{name}: {{" if style == "commented" else f"{name} {{"
                inner = _render(value, style, indent + 1)
                out.append(f"{pad}{opener}{note}{end}{inner}{pad}}}{end}")
            else:
                out.append(f"{pad}{name}: {_render_scalar(value)}{note}{end}")
    return "".join(out)


def _plain(message: dict) -> dict:
    """Drop keys whose value lists are empty: they cannot be expressed in text."""
    return {
        k: [_plain(v) if isinstance(v, dict) else v for v in vs] for k, vs in message.items() if vs
    }


PROPERTY_SETTINGS = settings(
    derandomize=True, max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)


@PROPERTY_SETTINGS
@given(messages, st.sampled_from(["debug", "compact", "commented"]))
def test_round_trip(message, style):
    assert parse_message(_render(message, style)) == _plain(message)


@settings(PROPERTY_SETTINGS, max_examples=50)
@given(messages, st.data())
def test_any_prefix_parses_with_partial(message, data):
    text = _render(message, "debug")
    cut = data.draw(st.integers(min_value=0, max_value=len(text)))
    result = parse_message(text[:cut], partial=True)
    assert set(result) <= set(_plain(message))
    if cut == len(text):
        assert result == _plain(message)


grammar_soup = st.text(
    alphabet=st.one_of(st.sampled_from(list("ab_:{}[],;\"'\\#\n .-0x9eE")), st.characters()),
    max_size=60,
)


@PROPERTY_SETTINGS
@given(grammar_soup, st.booleans())
def test_arbitrary_text_raises_only_proto_text_error(text, partial):
    try:
        result = parse_message(text, partial=partial)
    except ProtoTextError:
        return
    assert isinstance(result, dict)


# --------------------------------------------------------------------------------------------
# Solver settings


def test_healthy_solver_file():
    solver = solver_from_file(DATA / "healthy_solver.prototxt")
    assert solver.base_lr == 0.05
    assert solver.lr_policy == "step"
    assert solver.stepsize == 200
    assert solver.gamma == 0.5
    assert solver.momentum == 0.9
    assert solver.weight_decay == 0.0005
    assert solver.debug_info is True
    assert solver.test_iter == (3,)
    assert solver.test_interval == 100
    assert solver.display == 10
    assert solver.max_iter == 300
    assert solver.net == "train_val.prototxt"
    assert solver.snapshot == 0
    assert solver.snapshot_prefix == "snapshots/digits"
    assert solver.random_seed == 1701
    assert solver.type == solver.solver_type == "SGD"
    assert (solver.iter_size, solver.average_loss, solver.test_initialization) == (1, 1, True)
    assert solver.stepvalue == ()
    assert solver.raw["solver_mode"] == ["CPU"]
    assert solver.raw["snapshot_after_train"] == [False]
    assert not solver.truncated
    assert isinstance(solver.base_lr, float) and isinstance(solver.stepsize, int)


def test_iter_size_solver_file():
    solver = solver_from_file(DATA / "iter_size_solver.prototxt")
    assert (solver.iter_size, solver.average_loss, solver.max_iter) == (2, 5, 100)


def test_solver_defaults_when_absent():
    solver = solver_from_text("")
    assert solver == SolverSettings()
    assert solver.base_lr is None and solver.lr_policy is None and solver.momentum is None
    assert (solver.iter_size, solver.average_loss) == (1, 1)
    assert (solver.debug_info, solver.test_initialization) == (False, True)
    assert solver.type == "SGD"


def test_old_solver_type_enum_is_upgraded():
    solver = solver_from_text((DATA / "dump_bvlc_rmsprop_solver_type_enum.txt").read_text())
    assert solver.type == "RMSProp"
    assert solver.lr_policy == "inv" and solver.power == 0.75 and solver.momentum == 0.0
    assert solver.raw["rms_decay"] == [0.95]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("solver_type: ADAM", "Adam"),
        ("solver_type: NESTEROV", "Nesterov"),
        ("solver_type: ADAGRAD", "AdaGrad"),
        ("solver_type: ADADELTA", "AdaDelta"),
        ("solver_type: SGD", "SGD"),
        ("solver_type: 5", "Adam"),
        ('type: "Adam"', "Adam"),
        ('type: "MyFork"', "MyFork"),
    ],
)
def test_solver_type(text, expected):
    assert solver_from_text(text).type == expected


def test_multistep_and_adam_fields():
    solver = solver_from_text(
        'lr_policy: "multistep" stepvalue: 100 stepvalue: 200 stepvalue: [300]\n'
        'type: "Adam" momentum: 0.9 momentum2: 0.999 delta: 1e-08 regularization_type: "L1"\n'
        "clip_gradients: 35 debug_info: 1 test_initialization: f test_iter: 10 test_iter: 20"
    )
    assert solver.stepvalue == (100, 200, 300)
    assert (solver.momentum2, solver.delta, solver.regularization_type) == (0.999, 1e-08, "L1")
    assert solver.clip_gradients == 35.0 and isinstance(solver.clip_gradients, float)
    assert (solver.debug_info, solver.test_initialization) == (True, False)
    assert solver.test_iter == (10, 20)


def test_real_solver_dumps():
    nv = solver_from_text((DATA / "dump_nvcaffe0173_solver.txt").read_text())
    assert (nv.base_lr, nv.lr_policy, nv.max_iter, nv.debug_info) == (0.001, "fixed", 40, True)
    assert nv.raw["snapshot_format"] == ["HDF5"]
    assert nv.raw["train_state"] == [{"level": [0], "stage": [""]}]

    ssd = solver_from_text((DATA / "dump_ssd_solver.txt").read_text())
    assert ssd.train_net == "models/VGGNet/VOC0712/SSD_300x300/train.prototxt"
    assert ssd.net is None
    assert ssd.raw["eval_type"] == ["detection"]

    intel = solver_from_text((DATA / "dump_intelcaffe_solver.txt").read_text())
    assert (intel.lr_policy, intel.clip_gradients, intel.type) == ("poly", -1.0, "SGD")
    assert intel.raw["engine"] == ["MKL2017"]


def test_solver_with_inline_net_param():
    solver = solver_from_text((DATA / "dump_caffenetbench_solver_net_param.txt").read_text())
    assert (solver.type, solver.base_lr, solver.stepsize) == ("RMSProp", 0.01, 100000)
    assert solver.net is None
    net = net_from_message(solver.raw["net_param"][0])
    assert net.name == "CaffeNet"
    assert net.layers[0].type == "Data" and net.layers[0].phase == "TRAIN"
    assert net.layer("loss").is_loss()


@pytest.mark.parametrize(
    "text",
    ['base_lr: "fast"', "base_lr: true", "stepsize: 1.5", "debug_info: 2", "net: 3", "net { }"],
)
def test_solver_field_of_the_wrong_kind(text):
    with pytest.raises(ProtoTextError, match=text.split(":")[0].split(" ")[0]):
        solver_from_text(text)


def test_settings_are_frozen_and_hashable():
    solver = solver_from_text("base_lr: 0.1")
    with pytest.raises(AttributeError):
        solver.base_lr = 1.0  # type: ignore[misc]
    assert hash(solver) == hash(solver_from_text("base_lr: 0.1  # same"))


# --------------------------------------------------------------------------------------------
# Net definitions


def test_multi_loss_net_file():
    net = net_from_file(DATA / "multi_loss_train_val.prototxt")
    assert net.name == "DigitsLeNetAux"
    assert net.phase is None  # a file has no state; Caffe adds it when it builds a net
    aux = net.layer("aux_loss")
    assert aux == LayerDef(
        name="aux_loss",
        type="SoftmaxWithLoss",
        bottoms=("aux_ip", "label"),
        tops=("aux_loss",),
        loss_weights=(100.0,),
    )
    assert aux.loss_weight() == 100.0 and aux.is_loss()
    assert net.layer("loss").loss_weight() == 1.0
    assert [layer.phase for layer in net.layers if layer.name == "data"] == ["TRAIN", "TEST"]
    assert net.layer("data", phase="TEST").raw["hdf5_data_param"][0]["batch_size"] == [100]
    assert net.layer("accuracy").phase == "TEST"
    assert not net.layer("accuracy").is_loss()
    assert net.layer("missing") is None
    conv1 = net.layer("conv1")
    assert conv1.params == (ParamSpec(lr_mult=1.0), ParamSpec(lr_mult=2.0))
    assert not conv1.frozen


def test_multi_loss_train_dump():
    net = net_from_text((DATA / "dump_multi_loss_train_net.txt").read_text())
    assert net.phase == "TRAIN"
    assert net.layer("aux_loss").loss_weights == (100.0,)
    assert net.layer("loss").loss_weights == (1.0,)  # this dump states it explicitly
    assert [l.name for l in net.layers if l.is_loss()] == ["aux_loss", "loss"]
    assert [l.name for l in net.layers if l.is_data()] == ["data"]
    assert all(layer.phase in (None, "TRAIN") for layer in net.layers)
    pooling = net.layer("pool1").raw["pooling_param"]
    assert pooling == [{"pool": ["MAX"], "kernel_size": [2], "stride": [2]}]


def test_dead_relu_net_file():
    net = net_from_file(DATA / "dead_relu_train_val.prototxt")
    bias = net.layer("conv1").raw["convolution_param"][0]["bias_filler"][0]
    assert bias == {"type": ["constant"], "value": [-100]}


def test_layer_helpers():
    def layer(**kw) -> LayerDef:
        return LayerDef(**{"name": "l", "type": "X", **kw})

    assert layer(type="EuclideanLoss").loss_weight() == 1.0
    assert layer(type="SoftmaxWithLoss", loss_weights=(0.0,)).is_loss() is False
    assert layer(type="Accuracy").loss_weight() == 0.0
    assert layer(type="Python", loss_weights=(0.3,)).is_loss()
    assert layer(type="Data", tops=("data",)).is_data()
    assert layer(type="Python", tops=("blob",)).is_data()
    assert not layer(type="Python", bottoms=("a",), tops=("b",)).is_data()
    assert layer(type="Input").is_data()
    assert not layer(type="Silence", bottoms=("a",)).is_data()
    assert layer(params=(ParamSpec(lr_mult=0.0), ParamSpec(lr_mult=0.0))).frozen
    assert not layer(params=(ParamSpec(lr_mult=0.0), ParamSpec())).frozen
    assert not layer().frozen


@pytest.mark.parametrize(
    ("rules", "phase"),
    [
        ("include { phase: TRAIN }", "TRAIN"),
        ("include: { phase: TEST }", "TEST"),
        ("include { phase: 1 }", "TEST"),
        ("include { phase: TRAIN } include { phase: TRAIN stage: 'x' }", "TRAIN"),
        ("include { phase: TRAIN } include { phase: TEST }", None),
        ("include { stage: 'deploy' }", None),
        ("include { phase: TEST } include { min_level: 1 }", None),
        ("exclude { phase: TEST }", "TRAIN"),
        ("exclude { phase: TEST stage: 'x' }", None),
        ("", None),
    ],
)
def test_layer_phase_from_rules(rules, phase):
    net = net_from_text(f'layer {{ name: "l" type: "ReLU" {rules} }}')
    assert net.layers[0].phase == phase


def test_named_params_and_inputs():
    net = net_from_text(
        'name: "siamese" input: "data" input: "data_p" input_dim: 1\n'
        'layer { name: "ip" type: "InnerProduct" bottom: "data" top: "ip"\n'
        '  param { name: "w" lr_mult: 0 decay_mult: 0 } param { name: "b" lr_mult: 0 } }\n'
        'layer { name: "ip_p" type: "InnerProduct" bottom: "data_p" top: "ip_p"\n'
        '  param { name: "w" } param { name: "b" } }'
    )
    assert net.inputs == ("data", "data_p")
    assert net.layer("ip").params == (ParamSpec("w", 0.0, 0.0), ParamSpec("b", 0.0, 1.0))
    assert net.layer("ip").frozen
    assert [p.name for p in net.layer("ip_p").params] == ["w", "b"]


def test_v1_net_file():
    net = net_from_file(DATA / "v1_lenet_train_test.prototxt")
    assert net.name == "LeNet"
    assert [(l.name, l.type, l.phase) for l in net.layers] == [
        ("mnist", "Data", "TRAIN"),
        ("mnist", "Data", "TEST"),
        ("conv1", "Convolution", None),
        ("pool1", "Pooling", None),
        ("ip1", "InnerProduct", None),
        ("relu1", "ReLU", None),
        ("ip2", "InnerProduct", None),
        ("accuracy", "Accuracy", "TEST"),
        ("loss", "SoftmaxWithLoss", None),
    ]
    assert net.layer("conv1").params == (ParamSpec(None, 1.0, 1.0), ParamSpec(None, 2.0, 1.0))
    assert net.layer("ip1").params == (ParamSpec("ip1_w", 1.0, 1.0), ParamSpec("ip1_b", 2.0, 0.0))
    assert net.layer("ip2").frozen
    assert net.layer("loss").is_loss() and net.layer("loss").loss_weight() == 1.0
    assert net.layer("mnist").is_data()
    assert net.layer("conv1").raw["blobs_lr"] == [1, 2]


def test_v1_dump_puts_state_after_layers():
    net = net_from_text((DATA / "v1_dump_2014.txt").read_text())
    assert net.phase == "TRAIN"
    types = ["ImageData", "Convolution", "ReLU", "Pooling", "InnerProduct", "SoftmaxWithLoss"]
    assert [l.type for l in net.layers] == types
    assert net.layer("data").phase == "TRAIN"
    assert net.layer("conv1_1").params == (ParamSpec(None, 1.0, 1.0), ParamSpec(None, 2.0, 0.0))
    assert net.layer("loss").tops == () and net.layer("loss").is_loss()


# fmt: off
V1_TYPES = [
    ("CONVOLUTION", "Convolution"), ("INNER_PRODUCT", "InnerProduct"), ("RELU", "ReLU"),
    ("POOLING", "Pooling"), ("SOFTMAX_LOSS", "SoftmaxWithLoss"), ("DATA", "Data"),
    ("IMAGE_DATA", "ImageData"), ("HDF5_DATA", "HDF5Data"), ("ACCURACY", "Accuracy"),
    ("LRN", "LRN"), ("DROPOUT", "Dropout"), ("CONCAT", "Concat"), ("SPLIT", "Split"),
    ("EUCLIDEAN_LOSS", "EuclideanLoss"),
    ("SIGMOID_CROSS_ENTROPY_LOSS", "SigmoidCrossEntropyLoss"), ("ELTWISE", "Eltwise"),
    ("ELTWISE_PRODUCT", "Eltwise"), ("POWER", "Power"), ("EXP", "Exp"), ("LOG", "Log"),
    ("ABSVAL", "AbsVal"), ("BNLL", "BNLL"), ("TANH", "TanH"), ("MVN", "MVN"),
    ("IM2COL", "Im2col"), ("HDF5_OUTPUT", "HDF5Output"), ("DUMMY_DATA", "DummyData"),
    ("MEMORY_DATA", "MemoryData"), ("WINDOW_DATA", "WindowData"), ("SILENCE", "Silence"),
    ("MULTINOMIAL_LOGISTIC_LOSS", "MultinomialLogisticLoss"), ("THRESHOLD", "Threshold"),
    ("DECONVOLUTION", "Deconvolution"), ("CONTRASTIVE_LOSS", "ContrastiveLoss"),
    ("INFOGAIN_LOSS", "InfogainLoss"), ("HINGE_LOSS", "HingeLoss"), ("ARGMAX", "ArgMax"),
    ("SLICE", "Slice"), ("FLATTEN", "Flatten"), ("SIGMOID", "Sigmoid"),
    ("SOFTMAX", "Softmax"), ("NONE", ""),
    ("4", "Convolution"), ("21", "SoftmaxWithLoss"), ("39", "Deconvolution"),
    ("WARP_CTC_LOSS", "WarpCtcLoss"),  # unknown fork enum: CamelCased
]
# fmt: on


@pytest.mark.parametrize(("v1", "v2"), V1_TYPES)
def test_v1_layer_types(v1, v2):
    net = net_from_text(f"layers {{ name: 'l' type: {v1} }}")
    assert net.layers[0].type == v2


def test_v1_layers_win_over_v2_layer_like_caffe_upgrade():
    net = net_from_text("layers { name: 'old' type: RELU } layer { name: 'new' type: 'ReLU' }")
    assert [l.name for l in net.layers] == ["old"]


def test_v0_layers():
    net = net_from_text(
        'name: "old"\nlayers { layer { name: "conv1" type: "conv" num_output: 96 blobs_lr: 1 '
        'blobs_lr: 2 weight_decay: 1 weight_decay: 0 } bottom: "data" top: "conv1" }\n'
        'layers { layer { name: "loss" type: "softmax_loss" } bottom: "fc8" bottom: "label" }'
    )
    conv1, loss = net.layers
    assert (conv1.name, conv1.type) == ("conv1", "Convolution")
    assert (conv1.bottoms, conv1.tops) == (("data",), ("conv1",))
    assert conv1.params == (ParamSpec(None, 1.0, 1.0), ParamSpec(None, 2.0, 0.0))
    assert (loss.type, loss.is_loss()) == ("SoftmaxWithLoss", True)


@pytest.mark.parametrize(
    "text",
    [
        "layer: 3",
        "layer { name: 3 }",
        "layer { top: 1 }",
        "layer { param: 'w' }",
        "layer { param { lr_mult: 'x' } }",
        "layer { loss_weight: TRUE }",
        "state: 1",
        "layer { include: 1 }",
    ],
)
def test_net_field_of_the_wrong_kind(text):
    with pytest.raises(ProtoTextError):
        net_from_text(text)


def test_glog_truncated_real_dumps():
    for path, layers, last in [
        (DATA / "dump_warpctc_lstm_net_glog_truncated.txt", 151, "lstm1_transform_37"),
        (DATA / "dump_nvcaffe0165_resnet50_net_glog_truncated.txt", 162, "res5.2.sum"),
    ]:
        text = path.read_text()
        assert len(text) == 29_923
        with pytest.raises(ProtoTextError) as info:
            net_from_text(text)
        assert info.value.line == text.count("\n") + 1  # the problem is at the very end
        net = net_from_text(text, partial=True)
        assert net.truncated
        assert len(net.layers) == layers
        assert net.layers[-1].name == last
    resnet = net_from_text(
        (DATA / "dump_nvcaffe0165_resnet50_net_glog_truncated.txt").read_text(), partial=True
    )
    assert resnet.name == "Resnet50-fp16" and resnet.phase == "TRAIN"
    # the last layer was cut after its first bottom
    assert resnet.layers[-1].type == "Eltwise" and resnet.layers[-1].bottoms == ("res5.2.conv3/bn",)
    assert resnet.raw["default_forward_type"] == ["FLOAT16"]  # NVCaffe's mixed precision
    assert resnet.raw["global_grad_scale"] == [10]
    assert resnet.layers[0].is_data() and resnet.layers[0].phase == "TRAIN"


def test_net_definition_is_hashable_and_comparable():
    text = (DATA / "healthy_train_val.prototxt").read_text()
    assert net_from_text(text) == net_from_text(text)
    assert hash(net_from_text(text)) == hash(net_from_text(text))
    assert NetDefinition().layers == ()


# --------------------------------------------------------------------------------------------
# Files


def test_read_prototxt():
    assert read_prototxt(DATA / "healthy_solver.prototxt")["base_lr"] == [0.05]
    assert read_prototxt(str(DATA / "healthy_solver.prototxt"))["debug_info"] == [True]


def test_file_errors(tmp_path):
    with pytest.raises(OSError):
        read_prototxt(tmp_path / "missing.prototxt")
    with pytest.raises(OSError):
        net_from_file(tmp_path / "missing.prototxt")
    bad = tmp_path / "bad.prototxt"
    bad.write_text("base_lr: 0.1\nlr_policy: step\nbroken line\n")
    with pytest.raises(ProtoTextError, match=r"bad\.prototxt: line 3, col 8") as info:
        solver_from_file(bad)
    assert (info.value.line, info.value.col) == (3, 8)
    wrong = tmp_path / "wrong.prototxt"
    wrong.write_text("base_lr: 'x'\n")
    with pytest.raises(ProtoTextError, match=r"wrong\.prototxt: base_lr"):
        solver_from_file(wrong)
    latin1 = tmp_path / "latin1.prototxt"
    latin1.write_bytes(b'name: "caf\xe9"\n')
    assert net_from_file(latin1).name == "caf\ufffd"


# --------------------------------------------------------------------------------------------
# Speed


def _resnet_text(lines: int) -> str:
    block = (
        'layer {{\n  name: "res{i}"\n  type: "Convolution"\n  bottom: "res{p}"\n  top: "res{i}"\n'
        "  param {{\n    lr_mult: 1\n    decay_mult: 1\n  }}\n  convolution_param {{\n"
        "    num_output: 256\n    bias_term: false\n    pad: 1\n    kernel_size: 3\n"
        '    weight_filler {{\n      type: "msra"\n    }}\n  }}\n}}\n'
        'layer {{\n  name: "res{i}/bn"\n  type: "BatchNorm"\n  bottom: "res{i}"\n  top: "res{i}"\n'
        "  param {{\n    lr_mult: 0\n  }}\n  batch_norm_param {{\n    eps: 1e-05\n  }}\n}}\n"
    )
    text = 'name: "ResNet"\nstate {\n  phase: TRAIN\n}\n'
    i = 1
    while text.count("\n") < lines:
        text += block.format(i=i, p=i - 1)
        i += 1
    return text


def test_ten_thousand_line_net_parses_quickly():
    text = _resnet_text(10_000)
    start = time.perf_counter()
    net = net_from_text(text)
    elapsed = time.perf_counter() - start
    assert len(net.layers) > 300
    assert elapsed < 1.0, f"{elapsed:.2f}s"  # about 0.1 s on a laptop


# --------------------------------------------------------------------------------------------
# Every dump in ../shared (skipped when the folder is absent)

_GLOG = re.compile(r"[IWEF]\d{4} \d\d:\d\d:\d\d\.\d+\s+\d+ [^\]]*\] ?")
_DUMP_START = re.compile(r"Initializing (solver|net) from parameters:\s*$")
GLOG_MESSAGE_LIMIT = 30_000


def extract_dumps(lines: list[str]):
    """Yield (kind, line number, text) for each start-up dump in a log (FORMATS.md 1.3): the
    lines after `Initializing solver/net from parameters: ` up to the next glog line. NVCaffe
    0.16+ and Intel Caffe put an empty glog line (`net.cpp:157] `) before the dump."""
    i = 0
    while i < len(lines):
        match = _DUMP_START.search(lines[i])
        if match is None or not _GLOG.match(lines[i]):
            i += 1
            continue
        j = i + 1
        if j < len(lines) and _GLOG.match(lines[j]) and not _GLOG.sub("", lines[j]).strip():
            j += 1
        body = []
        while j < len(lines) and not _GLOG.match(lines[j]):
            body.append(lines[j])
            j += 1
        yield match.group(1), i + 1, "\n".join(body)
        i = j


def _shared_dumps() -> list[tuple[str, str, str]]:
    if not SHARED.is_dir():
        return []
    logs = sorted((SHARED / "public-logs").glob("*.log"))
    logs += sorted((SHARED / "corpus").glob("*/*.log"))
    dumps = []
    for log in logs:
        lines = log.read_text(encoding="utf-8", errors="replace").splitlines()
        for kind, line, text in extract_dumps(lines):
            dumps.append((f"{log.parent.name}/{log.name}:{line}", kind, text))
    return dumps


SHARED_DUMPS = _shared_dumps()
needs_shared = pytest.mark.skipif(not SHARED.is_dir(), reason="../shared is not available")


@needs_shared
def test_shared_logs_hold_many_dumps():
    assert len(SHARED_DUMPS) >= 90
    assert {kind for _, kind, _ in SHARED_DUMPS} == {"solver", "net"}


@needs_shared
@pytest.mark.parametrize(
    ("where", "kind", "text"),
    [pytest.param(*dump, id=dump[0]) for dump in SHARED_DUMPS] or [("none", "net", "")],
)
def test_every_shared_dump_parses(where, kind, text):
    build = solver_from_text if kind == "solver" else net_from_text
    try:
        result = build(text)
    except ProtoTextError as exc:
        # The only dumps that may fail are those glog cut at its 30,000-byte message limit,
        # and the failure must be at their very end.
        size = len(text.encode()) + len("Initializing net from parameters: \n")
        assert GLOG_MESSAGE_LIMIT - 100 < size <= GLOG_MESSAGE_LIMIT, f"{where}: {exc}"
        assert exc.line == text.count("\n") + 1, f"{where}: {exc}"
        result = build(text, partial=True)
        assert result.truncated
    if kind == "solver":
        assert result.base_lr is not None and result.max_iter is not None
    else:
        assert result.layers
        complete = result.layers[:-1] if result.truncated else result.layers
        assert all(layer.name and layer.type for layer in complete)
        if "state {" in text:
            assert result.phase in ("TRAIN", "TEST")


@needs_shared
@pytest.mark.parametrize(
    "path",
    sorted((SHARED / "corpus").glob("*/*.prototxt")) if SHARED.is_dir() else [None],
    ids=lambda p: f"{p.parent.name}/{p.name}" if p else "",
)
def test_every_corpus_prototxt_parses(path):
    if "solver" in path.name:
        solver = solver_from_file(path)
        assert solver.net == "train_val.prototxt" and solver.random_seed == 1701
    else:
        net = net_from_file(path)
        assert net.layer("loss").is_loss() and net.layer("data").is_data()
