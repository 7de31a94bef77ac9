"""Session fixtures of the LM distillation tests (built once: compiling dominates)."""

import pytest
from _lm_helpers import packed_corpus, peaked_teacher


@pytest.fixture(scope="session")
def packed():
    return packed_corpus()


@pytest.fixture(scope="session")
def teacher():
    return peaked_teacher()
