"""The protobuf text format as Caffe prints it, and plain models of solver and net definitions.

Caffe dumps its `SolverParameter` and each `NetParameter` at start-up (`Initializing solver
from parameters:` / `Initializing net from parameters:`), using protobuf's `DebugString`. This
module parses that text (and hand-written `.prototxt` files) without knowing `caffe.proto`:
`parse_message` returns every field name mapped to the list of its values, and the models
(`SolverSettings`, `NetDefinition`) pick out what an analysis needs.

The grammar is deliberately flat: one statement is `name: value`, `name [:] {` or `}`, and a
small stack assembles the nesting. That keeps the parse linear in the input (no backtracking
into earlier statements, no Python recursion per nesting level), gives exact error positions,
and lets a truncated dump be cut back to its last complete statement. glog truncates each
message at 30,000 bytes, so every large net dump in a real log is cut mid-field.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyparsing as pp

__all__ = [
    "DATA_LAYER_TYPES",
    "MAX_DEPTH",
    "LayerDef",
    "NetDefinition",
    "ParamSpec",
    "ProtoTextError",
    "SolverSettings",
    "net_from_file",
    "net_from_message",
    "net_from_text",
    "parse_message",
    "read_prototxt",
    "solver_from_file",
    "solver_from_message",
    "solver_from_text",
]

MAX_DEPTH = 100
"""Deepest message nesting accepted; Caffe's own definitions stay below 10."""

Message = dict[str, list[Any]]


class ProtoTextError(ValueError):
    """Malformed protobuf text, or a value of the wrong kind for a Caffe field."""

    def __init__(self, message: str, *, line: int | None = None, col: int | None = None):
        if line is not None:
            message = f"line {line}, col {col}: {message}"
        super().__init__(message)
        self.line = line
        """1-based line of the problem in the parsed text, when it has a position."""
        self.col = col
        """1-based column of the problem, when it has a position."""


# --------------------------------------------------------------------------------------------
# Scalar conversion (called from parse actions)

_ESCAPE = re.compile(
    r"\\(?:([0-7]{1,3})|[xX]([0-9a-fA-F]{1,2})|u([0-9a-fA-F]{4})|U([0-9a-fA-F]{8})|(.))",
    re.DOTALL,
)
# fmt: off
_SIMPLE_ESCAPES = {
    "n": b"\n", "t": b"\t", "r": b"\r", "a": b"\a", "b": b"\b", "f": b"\f", "v": b"\v",
    "\\": b"\\", "'": b"'", '"': b'"', "?": b"?",
}
# fmt: on


def _unescape(body: str) -> str:
    """C-unescape a string literal's body. Octal/hex escapes are bytes (protobuf's CEscape
    writes non-ASCII UTF-8 as `\\303\\251`), so bytes are collected and decoded at the end."""
    if "\\" not in body:
        return body
    out = bytearray()
    pos = 0
    for m in _ESCAPE.finditer(body):
        out += body[pos : m.start()].encode("utf-8", "surrogatepass")
        octal, hexa, u4, u8, other = m.groups()
        if octal is not None:
            out.append(int(octal, 8) & 0xFF)
        elif hexa is not None:
            out.append(int(hexa, 16))
        elif u4 is not None or u8 is not None:
            code = int(u4 or u8, 16)
            out += (chr(code) if code <= 0x10FFFF else "\ufffd").encode("utf-8", "surrogatepass")
        else:  # a simple escape; an unknown one keeps its character, as old protobuf did
            out += _SIMPLE_ESCAPES.get(other) or other.encode("utf-8", "surrogatepass")
        pos = m.end()
    out += body[pos:].encode("utf-8", "surrogatepass")
    return out.decode("utf-8", "replace")


_OCTAL_INT = re.compile(r"-?0[0-7]+")
_KEYWORDS: dict[str, Any] = {"true": True, "True": True, "false": False, "False": False}


def _number(text: str) -> int | float:
    """An integer or float token as protobuf reads it: `0x1F`, `017` (octal), `1e-05`, `5.`,
    `.5`, `1.5f`, `inf`, `-infinity`, `nan`."""
    lowered = text.lower()
    magnitude = lowered.lstrip("-")
    if magnitude in ("inf", "infinity", "nan"):
        return float(lowered.replace("infinity", "inf"))
    if magnitude.startswith("0x"):
        return int(lowered, 16)
    if "." in magnitude or "e" in magnitude or magnitude.endswith("f"):
        return float(lowered.rstrip("f"))
    if len(magnitude) > 30:  # no Caffe field holds such an integer; int() would refuse 4300+ digits
        return float(lowered)
    if _OCTAL_INT.fullmatch(lowered):
        return int(lowered, 8)
    return int(lowered)


# --------------------------------------------------------------------------------------------
# Grammar

_FIELD, _OPEN, _CLOSE = "field", "open", "close"


def _field_statement(s: str, loc: int, toks: pp.ParseResults) -> list[tuple]:
    if "open" in toks:
        return [(_OPEN, toks["name"], loc)]
    values = toks["values"]
    values = values.as_list() if isinstance(values, pp.ParseResults) else [values]
    return [(_FIELD, toks["name"], values)]


# Token patterns, shared by the general grammar and the one-line fast path below. No
# repetition wraps alternatives that can match the same text, so matching stays linear.
_NAME = r"[A-Za-z_][A-Za-z0-9_]*"
# unrolled loops: no backtracking frame per character on a long string
_STRING = r'"[^"\\\n]*(?:\\.[^"\\\n]*)*"' r"|'[^'\\\n]*(?:\\.[^'\\\n]*)*'"
_NUMBER = (
    r"-?(?:0[xX][0-9a-fA-F]+"
    r"|(?:[0-9]+\.[0-9]*|\.[0-9]+|[0-9]+)(?:[eE][+-]?[0-9]+)?[fF]?"
    r"|(?i:inf(?:inity)?|nan))"
    r"(?![\w.])"
)
# One whole statement in the layout DebugString prints (`name: scalar`, `name {`, `}` on one
# line). A string value must not be followed by another literal, which would concatenate.
_ONE_LINE_STATEMENT = (
    r"(?:(?P<close>\})"
    rf"|(?P<name>{_NAME})[ \t]*"
    r"(?:(?P<open>(?::[ \t]*)?\{)"
    rf"|:[ \t]*(?:(?P<string>{_STRING})(?!(?:\s|#[^\n]*(?:\n|\Z))*[\"'])"
    rf"|(?P<number>{_NUMBER})"
    rf"|(?P<ident>{_NAME}))))"
    r"(?:[ \t]*[,;])?"
)


def _one_line_statement(s: str, loc: int, toks: pp.ParseResults) -> list[tuple]:
    match: re.Match[str] = toks[0]
    if match["close"] is not None:
        return [(_CLOSE, None, loc)]
    name = match["name"]
    if match["open"] is not None:
        return [(_OPEN, name, loc)]
    if match["string"] is not None:
        value: Any = _unescape(match["string"][1:-1])
    elif match["number"] is not None:
        value = _number(match["number"])
    else:
        ident = match["ident"]
        value = _KEYWORDS.get(ident, ident)
    return [(_FIELD, name, [value])]


def _build_grammar() -> pp.ParserElement:
    field_name = pp.Regex(
        rf"{_NAME}|\[[A-Za-z_][\w.]*(?:/[\w.]+)*\]"  # a field, an extension or an Any URL
    ).set_name("field name")

    # A string value is one or more adjacent literals ("a" "b" == "ab"). Bodies are joined
    # before unescaping so that a multi-byte escape split across literals still decodes.
    string_literal = pp.Regex(_STRING).set_name("quoted string")
    string_literal.add_parse_action(lambda toks: toks[0][1:-1])
    string_value = pp.OneOrMore(string_literal).set_name("string")
    string_value.add_parse_action(lambda toks: _unescape("".join(toks)))

    number = pp.Regex(_NUMBER).set_name("number")
    number.add_parse_action(lambda toks: _number(toks[0]))

    identifier = pp.Regex(_NAME).set_name("identifier")
    identifier.add_parse_action(lambda toks: _KEYWORDS.get(toks[0], toks[0]))

    scalar = (string_value | number | identifier).set_name("value")
    scalar_list = pp.Group(
        pp.Suppress("[") - pp.Opt(pp.DelimitedList(scalar)) + pp.Suppress("]")
    ).set_name("list of values")

    lbrace = pp.Literal("{").set_name("'{'")
    separator = pp.Suppress(pp.Opt(pp.one_of(", ;")))
    # After a field name only ':' or '{' may follow, so '-' stops backtracking there: an
    # error is reported where it is, not at the start of the enclosing layer.
    field_value = (lbrace("open") | scalar_list("values") | scalar("values")).set_name(
        "value, '[' or '{'"
    )
    field_body = (pp.Suppress(":") + field_value | lbrace("open")).set_name("':' or '{'")
    field_statement = (field_name("name") - field_body + separator).set_name("field")
    field_statement.add_parse_action(_field_statement)

    close_statement = (pp.Literal("}") + separator).set_name("'}'")
    close_statement.add_parse_action(lambda s, loc, toks: [(_CLOSE, None, loc)])

    comment = pp.Suppress(pp.python_style_comment)
    general_statement = (close_statement | field_statement).set_name("field or '}'")
    general_statement.ignore(comment)  # comments may sit anywhere whitespace may

    # The fast path: one regex match per line of a dump instead of about ten grammar
    # elements, for the same language; anything else (comments, lists, odd layout) falls
    # through to the general statement.
    one_line_statement = pp.Regex(_ONE_LINE_STATEMENT, as_match=True).set_name("statement")
    one_line_statement.add_parse_action(_one_line_statement)

    statement = one_line_statement | comment | general_statement
    end = pp.StringEnd().set_name("field name, '}' or end of text")
    document = (pp.ZeroOrMore(statement) + end).set_name("protobuf text")
    document.parse_with_tabs()  # keep tabs inside strings, and columns true to the text
    document.streamline()
    return document


_DOCUMENT = _build_grammar()


# --------------------------------------------------------------------------------------------
# Parsing


def _position(text: str, loc: int) -> dict[str, int]:
    return {"line": pp.lineno(loc, text), "col": pp.col(loc, text)}


def _syntax_error(text: str, exc: pp.ParseBaseException) -> ProtoTextError:
    found = text[exc.loc : exc.loc + 20].split("\n", 1)[0]
    where = f"found {found!r}" if found else "found end of text"
    return ProtoTextError(f"{exc.msg}, {where}", **_position(text, exc.loc))


def _assemble(statements: pp.ParseResults, text: str, *, close_open: bool) -> tuple[Message, bool]:
    """Nest the flat statements. Returns the message and whether open messages were closed
    at the end of the text (only allowed with ``close_open``)."""
    root: Message = {}
    current = root
    stack: list[tuple[Message, int]] = []
    for kind, name, payload in statements:
        if kind == _FIELD:
            if payload:
                current.setdefault(name, []).extend(payload)
        elif kind == _OPEN:
            if len(stack) >= MAX_DEPTH:
                raise ProtoTextError(
                    f"messages nested deeper than {MAX_DEPTH} levels", **_position(text, payload)
                )
            child: Message = {}
            current.setdefault(name, []).append(child)
            stack.append((current, payload))
            current = child
        else:
            if not stack:
                raise ProtoTextError("'}' without a matching '{'", **_position(text, payload))
            current, _ = stack.pop()
    if stack and not close_open:
        opened_at = stack[-1][1]
        raise ProtoTextError(
            f"text ends inside {len(stack)} unclosed message(s); the innermost opens at "
            f"line {pp.lineno(opened_at, text)}",
            **_position(text, len(text)),
        )
    return root, bool(stack)


def _parse_strict(text: str) -> pp.ParseResults:
    return _DOCUMENT.parse_string(text, parse_all=True)


def _parse(text: str, partial: bool) -> tuple[Message, bool]:
    """Parse ``text``; with ``partial``, accept a text cut off at its end (see parse_message).
    Returns the message and whether it was truncated."""
    try:
        statements = _parse_strict(text)
    except pp.ParseBaseException as exc:
        error = _syntax_error(text, exc)
        # Only an error on the last line can be a cut; anything earlier is garbage.
        if partial and "\n" not in text[exc.loc :].rstrip():
            return _parse_cut(text, error)
        raise error from None
    message, unclosed = _assemble(statements, text, close_open=partial)
    if unclosed:
        return _parse_cut(text, None)
    return message, False


def _parse_cut(text: str, error: ProtoTextError | None) -> tuple[Message, bool]:
    """A text that ends early: keep its last line only when that line ends in a token that
    cannot have been cut (a quote or '}'); a trailing `lr_mult: 1` may have been `10`, and an
    opening `layer {` would only add an empty layer. A statement that spans lines (hand-written
    text only) may need a line or two more dropped; the attempts are bounded so that a long
    run of such lines cannot make this quadratic."""
    stripped = text.rstrip()
    head, _, last = stripped.rpartition("\n")
    candidates = [stripped] if last.endswith(("}", '"', "'")) else []
    candidates.append(head)
    for _ in range(2):
        head = head.rpartition("\n")[0]
        candidates.append(head)
    for candidate in dict.fromkeys(candidates):
        try:
            statements = _parse_strict(candidate)
        except pp.ParseBaseException:
            continue
        message, _ = _assemble(statements, candidate, close_open=True)
        return message, True
    if error is None:
        error = ProtoTextError(
            "text ends inside a statement that spans several lines",
            **_position(text, len(text)),
        )
    raise error


def parse_message(text: str, *, partial: bool = False) -> Message:
    """Parse protobuf text into ``{field name: [values in order]}``.

    Values are ``int``, ``float``, ``bool`` (``true``/``false``), ``str`` (quoted strings,
    unescaped; enum identifiers such as ``"CPU"`` or ``"TRAIN"``), or a nested ``dict`` of the
    same shape. ``name: [a, b]`` extends the list. Raises `ProtoTextError` with the line and
    column of the first problem.

    With ``partial=True`` a text that stops early — a glog message cut at 30,000 bytes, or a
    crash mid-dump — is not an error: the incomplete last line is dropped and open messages
    are closed. Garbage before the last line still raises.
    """
    return _parse(text, partial)[0]


def _in_file(path: str | os.PathLike[str], exc: ProtoTextError) -> ProtoTextError:
    """The same error, its message prefixed with the file name."""
    error = ProtoTextError(f"{os.fspath(path)}: {exc}")
    error.line, error.col = exc.line, exc.col
    return error


def read_prototxt(path: str | os.PathLike[str]) -> Message:
    """Parse a `.prototxt` file. Raises `OSError` or `ProtoTextError`."""
    text = Path(path).read_text(encoding="utf-8", errors="replace")
    try:
        return parse_message(text)
    except ProtoTextError as exc:
        raise _in_file(path, exc) from None


# --------------------------------------------------------------------------------------------
# Typed access to parsed messages

def _as_float(value: Any, key: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ProtoTextError(f"{key}: expected a number, got {value!r}")
    try:
        return float(value)
    except OverflowError:
        raise ProtoTextError(f"{key}: {str(value)[:20]}… is too large") from None


def _as_int(value: Any, key: str) -> int:
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, bool) or not isinstance(value, int):
        raise ProtoTextError(f"{key}: expected an integer, got {value!r}")
    return value


def _as_str(value: Any, key: str) -> str:
    if not isinstance(value, str):
        raise ProtoTextError(f"{key}: expected a string, got {value!r}")
    return value


def _as_bool(value: Any, key: str) -> bool:
    # protobuf also accepts t/f and 0/1 for booleans
    if isinstance(value, bool):
        return value
    if value in (0, 1, "t", "f"):
        return value in (1, "t")
    raise ProtoTextError(f"{key}: expected true or false, got {value!r}")


def _as_message(value: Any, key: str) -> Message:
    if not isinstance(value, dict):
        raise ProtoTextError(f"{key}: expected a message {{ ... }}, got {value!r}")
    return value


def _last(msg: Message, key: str, convert, default: Any = None) -> Any:
    """The value of a singular field: the last one given, like protobuf's merge semantics."""
    values = msg.get(key)
    if not values:
        return default
    return convert(values[-1], key)


def _all(msg: Message, key: str, convert) -> tuple:
    return tuple(convert(v, key) for v in msg.get(key, ()))


# --------------------------------------------------------------------------------------------
# Solver

# fmt: off
_SOLVER_TYPES = {  # SolverParameter.SolverType enum (deprecated solver_type field) -> type
    "SGD": "SGD", "NESTEROV": "Nesterov", "ADAGRAD": "AdaGrad",
    "RMSPROP": "RMSProp", "ADADELTA": "AdaDelta", "ADAM": "Adam",
}
# fmt: on
_SOLVER_TYPE_NUMBERS = ("SGD", "Nesterov", "AdaGrad", "RMSProp", "AdaDelta", "Adam")


@dataclass(frozen=True, slots=True)
class SolverSettings:
    """A Caffe `SolverParameter`: values as given, None where the text does not set them."""

    base_lr: float | None = None
    lr_policy: str | None = None
    """"fixed", "step", "multistep", "inv", "exp", "poly", "sigmoid", or a fork's own."""
    gamma: float | None = None
    stepsize: int | None = None
    stepvalue: tuple[int, ...] = ()
    """Iterations where the "multistep" policy multiplies the rate by ``gamma``."""
    power: float | None = None
    momentum: float | None = None
    momentum2: float | None = None
    """Adam's beta2."""
    weight_decay: float | None = None
    regularization_type: str | None = None
    """"L2" (Caffe's default) or "L1"."""
    clip_gradients: float | None = None
    """L2-norm threshold for gradient clipping; Caffe's default -1 means off."""
    iter_size: int = 1
    """Forward/backward passes accumulated per update."""
    display: int | None = None
    average_loss: int = 1
    """Displayed loss is the mean over this many iterations."""
    debug_info: bool = False
    max_iter: int | None = None
    test_interval: int | None = None
    test_iter: tuple[int, ...] = ()
    """Test batches per test net."""
    test_initialization: bool = True
    type: str = "SGD"
    """Solver: "SGD", "Nesterov", "AdaGrad", "RMSProp", "AdaDelta", "Adam" (Caffe's default
    is SGD). The deprecated enum ``solver_type: ADAM`` is upgraded as Caffe does."""
    net: str | None = None
    train_net: str | None = None
    snapshot: int | None = None
    snapshot_prefix: str | None = None
    random_seed: int | None = None
    delta: float | None = None
    """Numerical-stability epsilon of AdaGrad/AdaDelta/Adam/RMSProp."""
    truncated: bool = False
    """The dump stopped early (parsed with ``partial=True``); later fields may be missing."""
    raw: Message = field(default_factory=dict, compare=False, hash=False, repr=False)
    """Everything the text says, as `parse_message` returned it (e.g. ``net_param``)."""

    @property
    def solver_type(self) -> str:
        """Alias of `type`."""
        return self.type


def _solver_type(msg: Message) -> str:
    type_ = _last(msg, "type", _as_str)
    if type_ is not None:
        return type_
    old = msg.get("solver_type")
    if not old:
        return "SGD"
    value = old[-1]
    if isinstance(value, int) and not isinstance(value, bool) and 0 <= value < len(
        _SOLVER_TYPE_NUMBERS
    ):
        return _SOLVER_TYPE_NUMBERS[value]
    value = _as_str(value, "solver_type")
    return _SOLVER_TYPES.get(value, value)


def solver_from_message(msg: Message, *, truncated: bool = False) -> SolverSettings:
    """Build `SolverSettings` from a `parse_message` result."""
    return SolverSettings(
        base_lr=_last(msg, "base_lr", _as_float),
        lr_policy=_last(msg, "lr_policy", _as_str),
        gamma=_last(msg, "gamma", _as_float),
        stepsize=_last(msg, "stepsize", _as_int),
        stepvalue=_all(msg, "stepvalue", _as_int),
        power=_last(msg, "power", _as_float),
        momentum=_last(msg, "momentum", _as_float),
        momentum2=_last(msg, "momentum2", _as_float),
        weight_decay=_last(msg, "weight_decay", _as_float),
        regularization_type=_last(msg, "regularization_type", _as_str),
        clip_gradients=_last(msg, "clip_gradients", _as_float),
        iter_size=_last(msg, "iter_size", _as_int, 1),
        display=_last(msg, "display", _as_int),
        average_loss=_last(msg, "average_loss", _as_int, 1),
        debug_info=_last(msg, "debug_info", _as_bool, False),
        max_iter=_last(msg, "max_iter", _as_int),
        test_interval=_last(msg, "test_interval", _as_int),
        test_iter=_all(msg, "test_iter", _as_int),
        test_initialization=_last(msg, "test_initialization", _as_bool, True),
        type=_solver_type(msg),
        net=_last(msg, "net", _as_str),
        train_net=_last(msg, "train_net", _as_str),
        snapshot=_last(msg, "snapshot", _as_int),
        snapshot_prefix=_last(msg, "snapshot_prefix", _as_str),
        random_seed=_last(msg, "random_seed", _as_int),
        delta=_last(msg, "delta", _as_float),
        truncated=truncated,
        raw=msg,
    )


def solver_from_text(text: str, *, partial: bool = False) -> SolverSettings:
    """Parse a solver definition (a file's text or the dump after `Initializing solver from
    parameters:`). ``partial`` as in `parse_message`; the result says if it was truncated."""
    msg, truncated = _parse(text, partial)
    return solver_from_message(msg, truncated=truncated)


def solver_from_file(path: str | os.PathLike[str]) -> SolverSettings:
    """Parse a `solver.prototxt`. Raises `OSError` or `ProtoTextError`."""
    msg = read_prototxt(path)
    try:
        return solver_from_message(msg)
    except ProtoTextError as exc:
        raise _in_file(path, exc) from None


# --------------------------------------------------------------------------------------------
# Net

# fmt: off
# Layer types that produce blobs from outside the net (forks add their own).
DATA_LAYER_TYPES = frozenset({
    "Data", "ImageData", "HDF5Data", "MemoryData", "DummyData", "WindowData", "Input",
    "Python", "AnnotatedData", "VideoData", "MultiLabelData", "SegData", "ImageSegData",
})
# V1LayerParameter.LayerType -> V2 type string, from Caffe's UpgradeV1LayerType, plus the
# pre-2014-06 name ELTWISE_PRODUCT. Enum numbers map too, for hand-written files.
_V1_TYPES = {
    "NONE": "", "ABSVAL": "AbsVal", "ACCURACY": "Accuracy", "ARGMAX": "ArgMax", "BNLL": "BNLL",
    "CONCAT": "Concat", "CONTRASTIVE_LOSS": "ContrastiveLoss", "CONVOLUTION": "Convolution",
    "DECONVOLUTION": "Deconvolution", "DATA": "Data", "DROPOUT": "Dropout",
    "DUMMY_DATA": "DummyData", "EUCLIDEAN_LOSS": "EuclideanLoss", "ELTWISE": "Eltwise",
    "ELTWISE_PRODUCT": "Eltwise", "EXP": "Exp", "FLATTEN": "Flatten", "HDF5_DATA": "HDF5Data",
    "HDF5_OUTPUT": "HDF5Output", "HINGE_LOSS": "HingeLoss", "IM2COL": "Im2col",
    "IMAGE_DATA": "ImageData", "INFOGAIN_LOSS": "InfogainLoss",
    "INNER_PRODUCT": "InnerProduct", "LRN": "LRN", "MEMORY_DATA": "MemoryData",
    "MULTINOMIAL_LOGISTIC_LOSS": "MultinomialLogisticLoss", "MVN": "MVN", "POOLING": "Pooling",
    "POWER": "Power", "RELU": "ReLU", "SIGMOID": "Sigmoid",
    "SIGMOID_CROSS_ENTROPY_LOSS": "SigmoidCrossEntropyLoss", "SILENCE": "Silence",
    "SOFTMAX": "Softmax", "SOFTMAX_LOSS": "SoftmaxWithLoss", "SPLIT": "Split", "SLICE": "Slice",
    "TANH": "TanH", "WINDOW_DATA": "WindowData", "THRESHOLD": "Threshold",
    # not in BVLC's V1 enum, but in forks of that era
    "RESHAPE": "Reshape", "PRELU": "PReLU", "LOG": "Log", "BATCH_NORM": "BatchNorm",
}
_V1_TYPE_NUMBERS = {
    0: "NONE", 1: "ACCURACY", 2: "BNLL", 3: "CONCAT", 4: "CONVOLUTION", 5: "DATA",
    6: "DROPOUT", 7: "EUCLIDEAN_LOSS", 8: "FLATTEN", 9: "HDF5_DATA", 10: "HDF5_OUTPUT",
    11: "IM2COL", 12: "IMAGE_DATA", 13: "INFOGAIN_LOSS", 14: "INNER_PRODUCT", 15: "LRN",
    16: "MULTINOMIAL_LOGISTIC_LOSS", 17: "POOLING", 18: "RELU", 19: "SIGMOID", 20: "SOFTMAX",
    21: "SOFTMAX_LOSS", 22: "SPLIT", 23: "TANH", 24: "WINDOW_DATA", 25: "ELTWISE", 26: "POWER",
    27: "SIGMOID_CROSS_ENTROPY_LOSS", 28: "HINGE_LOSS", 29: "MEMORY_DATA", 30: "ARGMAX",
    31: "THRESHOLD", 32: "DUMMY_DATA", 33: "SLICE", 34: "MVN", 35: "ABSVAL", 36: "SILENCE",
    37: "CONTRASTIVE_LOSS", 38: "EXP", 39: "DECONVOLUTION",
}
# V0 (before 2014-03) layer type strings -> V1 enum names, from Caffe's UpgradeV0LayerType.
_V0_TYPES = {
    "accuracy": "ACCURACY", "bnll": "BNLL", "concat": "CONCAT", "conv": "CONVOLUTION",
    "data": "DATA", "dropout": "DROPOUT", "euclidean_loss": "EUCLIDEAN_LOSS",
    "flatten": "FLATTEN", "hdf5_data": "HDF5_DATA", "hdf5_output": "HDF5_OUTPUT",
    "im2col": "IM2COL", "images": "IMAGE_DATA", "infogain_loss": "INFOGAIN_LOSS",
    "innerproduct": "INNER_PRODUCT", "lrn": "LRN",
    "multinomial_logistic_loss": "MULTINOMIAL_LOGISTIC_LOSS", "pool": "POOLING",
    "relu": "RELU", "sigmoid": "SIGMOID", "softmax": "SOFTMAX", "softmax_loss": "SOFTMAX_LOSS",
    "split": "SPLIT", "tanh": "TANH", "window_data": "WINDOW_DATA", "padding": "PADDING",
}
# fmt: on
_PHASES = ("TRAIN", "TEST")


def _v1_type(value: Any) -> str:
    """A V1 enum (name or number) as its V2 type string; an unknown name is CamelCased."""
    if isinstance(value, int) and not isinstance(value, bool):
        value = _V1_TYPE_NUMBERS.get(value, str(value))
    value = _as_str(value, "type")
    known = _V1_TYPES.get(value)
    if known is not None:
        return known
    return "".join(part.capitalize() for part in value.split("_"))


def _as_phase(value: Any, key: str) -> str:
    if isinstance(value, int) and not isinstance(value, bool) and 0 <= value < len(_PHASES):
        return _PHASES[value]
    return _as_str(value, key)


@dataclass(frozen=True, slots=True)
class ParamSpec:
    """One learnable blob's `param { }` settings (V1: `blobs_lr`, `weight_decay`, `param`)."""

    name: str | None = None
    """Share name: params with the same name share weights."""
    lr_mult: float = 1.0
    decay_mult: float = 1.0


@dataclass(frozen=True, slots=True)
class LayerDef:
    """One layer of a net definition, V1 (`layers { type: CONVOLUTION }`) upgraded to V2."""

    name: str
    type: str
    """V2 type string ("Convolution", "SoftmaxWithLoss", …)."""
    bottoms: tuple[str, ...] = ()
    tops: tuple[str, ...] = ()
    loss_weights: tuple[float, ...] = ()
    """As given; empty when the definition gives none (see `loss_weight`)."""
    params: tuple[ParamSpec, ...] = ()
    """Declared param specs, in blob order; blobs beyond these use lr_mult = decay_mult = 1."""
    phase: str | None = None
    """"TRAIN" or "TEST" when include/exclude rules restrict the layer to one phase."""
    raw: Message = field(default_factory=dict, compare=False, hash=False, repr=False)
    """The layer's message as parsed (layer-specific parameters live here)."""

    @property
    def frozen(self) -> bool:
        """Every declared param has lr_mult 0 (a layer that declares none is not frozen)."""
        return bool(self.params) and all(p.lr_mult == 0 for p in self.params)

    def loss_weight(self) -> float:
        """Weight of the first top in the total loss: as given, else Caffe's default of 1 for
        `…Loss` layers and 0 for the rest."""
        if self.loss_weights:
            return self.loss_weights[0]
        return 1.0 if self.type.endswith("Loss") else 0.0

    def is_loss(self) -> bool:
        return self.loss_weight() != 0

    def is_data(self) -> bool:
        """Feeds the net from outside: no bottoms, and tops or a data-layer type."""
        return not self.bottoms and (bool(self.tops) or self.type in DATA_LAYER_TYPES)


@dataclass(frozen=True, slots=True)
class NetDefinition:
    """A Caffe `NetParameter`: the layers in order, plus the net-level fields."""

    name: str | None = None
    layers: tuple[LayerDef, ...] = ()
    phase: str | None = None
    """From `state { phase: … }`, which Caffe sets in every dump it prints."""
    inputs: tuple[str, ...] = ()
    """Old-style net inputs (`input: "data"`)."""
    truncated: bool = False
    """The dump stopped early (parsed with ``partial=True``); later layers are missing and
    the last layer may be incomplete."""
    raw: Message = field(default_factory=dict, compare=False, hash=False, repr=False)

    def producers(self, blob: str) -> list[LayerDef]:
        """The layers with ``blob`` among their tops, in net order (in-place layers re-produce
        their input, so the last one is what a consumer further down reads)."""
        return [layer for layer in self.layers if blob in layer.tops]

    def layer(self, name: str, phase: str | None = None) -> LayerDef | None:
        """The first layer called ``name`` (in ``phase``, or in both phases, when given)."""
        for layer in self.layers:
            if layer.name == name and (phase is None or layer.phase in (None, phase)):
                return layer
        return None


def _rule_phases(rules: list[Any], key: str) -> set[str | None]:
    phases: set[str | None] = set()
    for rule in rules:
        rule = _as_message(rule, key)
        phases.add(_last(rule, "phase", _as_phase))
    return phases


def _layer_phase(msg: Message) -> str | None:
    """The single phase a layer's NetStateRules allow, if they pin one down."""
    if msg.get("include"):
        included = _rule_phases(msg["include"], "include")
        if len(included) == 1 and None not in included:
            return included.pop()
        return None
    if msg.get("exclude"):
        excluded = _rule_phases(msg["exclude"], "exclude")
        pure = all(set(_as_message(r, "exclude")) == {"phase"} for r in msg["exclude"])
        if pure and len(excluded) == 1 and None not in excluded:
            other = set(_PHASES) - excluded
            if len(other) == 1:
                return other.pop()
    return None


def _v2_params(msg: Message) -> tuple[ParamSpec, ...]:
    specs = []
    for spec in msg.get("param", ()):
        spec = _as_message(spec, "param")
        specs.append(
            ParamSpec(
                name=_last(spec, "name", _as_str),
                lr_mult=_last(spec, "lr_mult", _as_float, 1.0),
                decay_mult=_last(spec, "decay_mult", _as_float, 1.0),
            )
        )
    return tuple(specs)


def _v1_params(msg: Message, inner: Message) -> tuple[ParamSpec, ...]:
    names = _all(msg, "param", _as_str)
    lrs = _all(inner, "blobs_lr", _as_float)
    decays = _all(inner, "weight_decay", _as_float)
    count = max(len(names), len(lrs), len(decays), len(msg.get("blob_share_mode", ())))
    return tuple(
        ParamSpec(
            name=names[i] if i < len(names) else None,
            lr_mult=lrs[i] if i < len(lrs) else 1.0,
            decay_mult=decays[i] if i < len(decays) else 1.0,
        )
        for i in range(count)
    )


def _layer_from_message(msg: Message, *, v1: bool) -> LayerDef:
    inner = msg
    if v1:
        v0 = _last(msg, "layer", _as_message)  # V0: `layers { layer { name type } bottom top }`
        if v0 is not None:
            inner = v0
            v0_type = _last(v0, "type", _as_str, "")
            type_ = _v1_type(_V0_TYPES.get(v0_type, v0_type.upper()))
        else:
            type_ = _v1_type(_last(msg, "type", lambda v, k: v, "NONE"))
        params = _v1_params(msg, inner)
    else:
        type_ = _last(msg, "type", _as_str, "")
        params = _v2_params(msg)
    return LayerDef(
        name=_last(inner, "name", _as_str, ""),
        type=type_,
        bottoms=_all(msg, "bottom", _as_str),
        tops=_all(msg, "top", _as_str),
        loss_weights=_all(msg, "loss_weight", _as_float),
        params=params,
        phase=_layer_phase(msg),
        raw=msg,
    )


def net_from_message(msg: Message, *, truncated: bool = False) -> NetDefinition:
    """Build a `NetDefinition` from a `parse_message` result (e.g. a solver's ``net_param``)."""
    state = _last(msg, "state", _as_message)
    # V0/V1 `layers`; like Caffe's upgrade, V2 `layer` entries are then ignored
    v1 = bool(msg.get("layers"))
    key = "layers" if v1 else "layer"
    layers = tuple(_layer_from_message(_as_message(m, key), v1=v1) for m in msg.get(key, ()))
    return NetDefinition(
        name=_last(msg, "name", _as_str),
        layers=layers,
        phase=None if state is None else _last(state, "phase", _as_phase),
        inputs=_all(msg, "input", _as_str),
        truncated=truncated,
        raw=msg,
    )


def net_from_text(text: str, *, partial: bool = False) -> NetDefinition:
    """Parse a net definition (a file's text or the dump after `Initializing net from
    parameters:`). ``partial`` as in `parse_message`; the result says if it was truncated."""
    msg, truncated = _parse(text, partial)
    return net_from_message(msg, truncated=truncated)


def net_from_file(path: str | os.PathLike[str]) -> NetDefinition:
    """Parse a `train_val.prototxt`. Raises `OSError` or `ProtoTextError`."""
    msg = read_prototxt(path)
    try:
        return net_from_message(msg)
    except ProtoTextError as exc:
        raise _in_file(path, exc) from None
