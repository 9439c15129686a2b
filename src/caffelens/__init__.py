"""caffelens: find where and why a Caffe training run went wrong, from its log.

    >>> import caffelens
    >>> for record in caffelens.parse("train.log"): ...
    >>> diagnosis = caffelens.diagnose("train.log")
"""

__version__ = "0.1.0"

from caffelens.assemble import ParseStats, Parser, parse  # noqa: E402
from caffelens.engine import Config, Diagnosis, NotCaffeLog, diagnose  # noqa: E402
from caffelens.records import *  # noqa: E402,F401,F403
from caffelens.records import RECORD_TYPES, Record  # noqa: E402
from caffelens.rules import Finding, Severity  # noqa: E402
from caffelens.sources import InputError  # noqa: E402

__all__ = [
    "Config",
    "Diagnosis",
    "Finding",
    "InputError",
    "NotCaffeLog",
    "ParseStats",
    "Parser",
    "RECORD_TYPES",
    "Record",
    "Severity",
    "diagnose",
    "parse",
] + [cls.__name__ for cls in RECORD_TYPES]
