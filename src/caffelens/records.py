"""Typed records the parser yields: one frozen dataclass per kind of Caffe log line.

Every record carries ``line`` (1-based line number in the log) and ``run`` (0 for the first
training run in the file, +1 at each new ``Initializing solver`` after training started).
Values are plain ``int``/``float``/``str``; non-finite numbers are ``float('nan')``/``inf``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields
from typing import Any, ClassVar

from caffelens.prototxt import NetDefinition, SolverSettings


@dataclass(frozen=True, slots=True)
class Record:
    line: int
    """1-based line number in the log."""
    run: int
    """Index of the training run within the file (restarts appended to one log)."""

    kind: ClassVar[str] = "record"

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict: ``kind`` first, non-finite floats as "nan"/"inf"/"-inf"."""
        out: dict[str, Any] = {"kind": self.kind}
        for attr, key in _json_fields(type(self)):
            value = getattr(self, attr)
            if value.__class__ is float:
                if value - value != 0:  # NaN or ±Inf (export writes millions of these)
                    value = _jsonable(value)
            elif value is not None and value.__class__ not in (int, str, bool):
                value = _jsonable(value)
            out[key] = value
        return out


_JSON_NAMES = {"pass_index": "pass"}
_FIELDS: dict[type, list[tuple[str, str]]] = {}


def _json_fields(cls: type) -> list[tuple[str, str]]:
    """(attribute, JSON key) pairs of a record class, computed once per class."""
    names = _FIELDS.get(cls)
    if names is None:
        names = _FIELDS[cls] = [(f.name, _JSON_NAMES.get(f.name, f.name)) for f in fields(cls)]
    return names


def json_number(value: Any) -> Any:
    """A number for JSON: non-finite floats become the strings "nan", "inf", "-inf"."""
    if isinstance(value, float) and not math.isfinite(value):
        return "nan" if math.isnan(value) else ("inf" if value > 0 else "-inf")
    return value


def _jsonable(value: Any) -> Any:
    if isinstance(value, float):
        return json_number(value)
    if isinstance(value, tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, (SolverSettings, NetDefinition)):
        return None  # exported through their own records' summary fields
    return value


@dataclass(frozen=True, slots=True)
class BlobValue(Record):
    """One debug_info value: the mean absolute value (asum/count) of a blob's data or diff."""

    iteration: int | None
    phase: str
    """"train" or "test"."""
    net: int
    """Test net index (0 for the train net)."""
    pass_index: int
    """Forward/Backward pass within the iteration (iter_size > 1 gives several)."""
    batch: int | None
    """Test batch index during testing, None in training."""
    direction: str
    """"forward", "backward" or "update"."""
    layer: str
    blob: str
    """Blob name; for params the index or param name as printed."""
    role: str
    """"top", "bottom" or "param"."""
    stat: str
    """"data" or "diff"."""
    value: float
    param_index: int | None = None
    """Resolved index of a param blob within its layer, when known."""
    param_name: str | None = None
    """The param's name from the net definition (shared weights), when it has one."""

    kind: ClassVar[str] = "blob"


@dataclass(frozen=True, slots=True)
class NetNorms(Record):
    """`[Backward] All net params (data, diff): L1 norm = (a, b); L2 norm = (c, d)`."""

    iteration: int | None
    pass_index: int
    l1_data: float
    l1_diff: float
    l2_data: float
    l2_diff: float
    thread: int | None = None
    """glog thread id: multi-GPU runs print one line per solver thread."""

    kind: ClassVar[str] = "net-norms"


@dataclass(frozen=True, slots=True)
class Loss(Record):
    """`Iteration N, loss = X` — the display loss, smoothed over `average_loss` iterations."""

    iteration: int
    value: float
    time: float | None = None
    rate: float | None = None
    """Iterations per second as Caffe printed it (garbage at the first display)."""

    kind: ClassVar[str] = "loss"


@dataclass(frozen=True, slots=True)
class Output(Record):
    """`Train net output #k: name = v (* w = wv loss)`, `Test net output …` or `Test score #k`."""

    iteration: int | None
    phase: str
    net: int
    index: int
    name: str
    value: float
    weight: float | None = None
    """The loss weight when Caffe printed one (loss outputs only)."""
    time: float | None = None

    kind: ClassVar[str] = "output"


@dataclass(frozen=True, slots=True)
class LearningRate(Record):
    """`Iteration N, lr = X` (NVCaffe adds momentum, weight decay and global grad scale)."""

    iteration: int
    value: float
    momentum: float | None = None
    weight_decay: float | None = None
    grad_scale: float | None = None
    time: float | None = None

    kind: ClassVar[str] = "lr"


@dataclass(frozen=True, slots=True)
class TestStart(Record):
    """`Iteration N, Testing net (#k)`."""

    iteration: int
    net: int
    time: float | None = None

    kind: ClassVar[str] = "test"
    __test__: ClassVar[bool] = False  # not a pytest test class


@dataclass(frozen=True, slots=True)
class GradientClip(Record):
    """`Gradient clipping: scaling down gradients (L2 norm X > Y) by scale factor Z`.

    Printed on every clipped iteration; only the one right after a display's lr line is known to
    belong to that iteration, the others carry ``iteration=None`` and ``after_iteration``.
    """

    iteration: int | None
    after_iteration: int | None
    l2_norm: float
    threshold: float
    scale: float

    kind: ClassVar[str] = "clip"


@dataclass(frozen=True, slots=True)
class StepChange(Record):
    """`MultiStep Status: Iteration N, step = k` (also Intel's Plateau Status)."""

    iteration: int
    step: int

    kind: ClassVar[str] = "step"


@dataclass(frozen=True, slots=True)
class SolverConfig(Record):
    """The `Initializing solver from parameters:` dump, parsed."""

    settings: SolverSettings

    kind: ClassVar[str] = "solver"

    def to_dict(self) -> dict[str, Any]:
        out = Record.to_dict(self)
        out["settings"] = {
            f.name: _jsonable(getattr(self.settings, f.name))
            for f in fields(self.settings)
            if f.name != "raw"
        }
        return out


@dataclass(frozen=True, slots=True)
class NetConfig(Record):
    """An `Initializing net from parameters:` dump (train net or a test net), parsed."""

    phase: str | None
    definition: NetDefinition

    kind: ClassVar[str] = "net"

    def to_dict(self) -> dict[str, Any]:
        out = Record.to_dict(self)
        out["name"] = self.definition.name
        out["layers"] = [
            {"name": layer.name, "type": layer.type} for layer in self.definition.layers
        ]
        return out


@dataclass(frozen=True, slots=True)
class TopShape(Record):
    """`Top shape: 64 16 8 8 (65536)` while setting up ``layer``."""

    layer: str | None
    shape: tuple[int, ...]
    count: int

    kind: ClassVar[str] = "shape"


@dataclass(frozen=True, slots=True)
class ParamSharing(Record):
    """`Sharing parameters 'w' owned by layer 'L', param index 0` while setting up ``layer``."""

    layer: str | None
    name: str
    owner: str
    owner_index: int

    kind: ClassVar[str] = "sharing"


@dataclass(frozen=True, slots=True)
class BackwardNeed(Record):
    """`L needs backward computation.` / `L does not need backward computation.`"""

    layer: str
    needed: bool

    kind: ClassVar[str] = "backward-need"


@dataclass(frozen=True, slots=True)
class Solving(Record):
    """`Solving <net>`: the solver starts its loop."""

    net_name: str

    kind: ClassVar[str] = "solving"


@dataclass(frozen=True, slots=True)
class Snapshot(Record):
    """`Snapshotting to …` (weights or solver state)."""

    iteration: int | None
    path: str

    kind: ClassVar[str] = "snapshot"


@dataclass(frozen=True, slots=True)
class Resume(Record):
    """`Resuming from X.solverstate` (or `Restoring previous solver status from`)."""

    path: str
    from_iteration: int | None

    kind: ClassVar[str] = "resume"


@dataclass(frozen=True, slots=True)
class Finished(Record):
    """`Optimization Done.` or `Optimization stopped early.`"""

    iteration: int | None
    early: bool

    kind: ClassVar[str] = "done"


@dataclass(frozen=True, slots=True)
class Crash(Record):
    """A fatal event: `Check failed`, an F-level line, a fatal signal or a glibc abort."""

    iteration: int | None
    cause: str
    """"check-failed", "fatal", "signal" or "abort"."""
    message: str
    after_done: bool = False
    """True when the crash came after `Optimization Done.` (e.g. a crash at exit)."""

    kind: ClassVar[str] = "crash"


RECORD_TYPES: tuple[type[Record], ...] = (
    BlobValue,
    NetNorms,
    Loss,
    Output,
    LearningRate,
    TestStart,
    GradientClip,
    StepChange,
    SolverConfig,
    NetConfig,
    TopShape,
    ParamSharing,
    BackwardNeed,
    Solving,
    Snapshot,
    Resume,
    Finished,
    Crash,
)
