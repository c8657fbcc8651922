"""pytest plugin for `bench.mutate`: records which test executes which line of the module under mutation.

Loaded with `-p bench.mutate_contexts` and `XBOOT_MUTATE_MODULE` (the module's path) and
`XBOOT_MUTATE_DATA` (the coverage data file). Each test's lines are measured under its node ID as the
coverage context, so a mutant on line N runs only the tests that execute line N.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import coverage
import pytest

_measure: coverage.Coverage | None = None


def pytest_configure(config: pytest.Config) -> None:
    global _measure
    module = os.environ.get("XBOOT_MUTATE_MODULE")
    if not module:
        return
    _measure = coverage.Coverage(data_file=os.environ["XBOOT_MUTATE_DATA"], include=[module], branch=False)
    _measure.start()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item: pytest.Item) -> Iterator[None]:
    if _measure is not None:
        _measure.switch_context(item.nodeid)
    yield
    if _measure is not None:
        _measure.switch_context("")


def pytest_unconfigure(config: pytest.Config) -> None:
    if _measure is not None:
        _measure.stop()
        _measure.save()
