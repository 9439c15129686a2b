from __future__ import annotations

from pathlib import Path

import pytest

import caffelens

DATA = Path(__file__).parent / "data"
CORPUS = DATA / "corpus"
VARIANTS = DATA / "variants"
SHARED = Path(__file__).resolve().parents[2] / "shared"


def corpus_log(name: str) -> Path:
    return CORPUS / name / "train.log"


@pytest.fixture(scope="session")
def corpus_records():
    """name -> list of records, parsed once per session."""
    cache: dict[str, list] = {}

    def get(name: str) -> list:
        if name not in cache:
            cache[name] = list(caffelens.parse(corpus_log(name)))
        return cache[name]

    return get


@pytest.fixture(scope="session")
def corpus_diagnosis():
    cache: dict[str, caffelens.Diagnosis] = {}

    def get(name: str) -> caffelens.Diagnosis:
        if name not in cache:
            cache[name] = caffelens.diagnose(corpus_log(name))
        return cache[name]

    return get
