"""Fixtures of the bench tests: the real tiny-model server of tests/server and a stub."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from server.conftest import live, spec_engine  # noqa: F401 (fixtures, shared with the server tests)
from stub import Stub, running_stub


@pytest.fixture(scope="module")
def stub() -> Iterator[Stub]:
    with running_stub() as server:
        yield server
