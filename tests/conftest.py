"""Suite-wide collection rules: the Kafka tier (``@pytest.mark.kafka``) needs a JDK and Maven.

Without them the tier is deselected with one line in the summary saying why and how to enable it; under
``CI=true`` that is a usage error instead, so CI never passes without having run it.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from hypothesis import settings

from pipeline.kraft import HOW_TO_ENABLE, java_missing

# Property tests judge results, not speed: hypothesis's per-example deadline (200 ms) turns a loaded CI
# machine into failures of correct code. Speed is the benchmarks' business (make bench).
settings.register_profile("agentgov", deadline=None)
settings.load_profile("agentgov")

_skipped: list[str] = []


@pytest.fixture(scope="session")
def chdb_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One embedded ClickHouse data path per test process, for unit and integration tests alike: chdb
    serves a single path per process, so tests are isolated by database name instead."""
    return tmp_path_factory.mktemp("chdb")


@pytest.hookimpl(tryfirst=True)  # before xdist's own hook, which reads the groups into the test ids
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    kafka = [item for item in items if item.get_closest_marker("kafka") is not None]
    _group_for_workers(items)
    missing = java_missing() if kafka else None
    if not missing:
        return
    if os.environ.get("CI", "").lower() == "true":
        raise pytest.UsageError(f"Kafka tier cannot run on CI: {missing}; {HOW_TO_ENABLE}")
    config.hook.pytest_deselected(items=kafka)
    items[:] = [item for item in items if item.get_closest_marker("kafka") is None]
    _skipped.append(f"kafka tier skipped ({len(kafka)} tests): {missing}; to enable, {HOW_TO_ENABLE}")


def _group_for_workers(items: list[pytest.Item]) -> None:
    """Units of work for ``pytest -n N --dist loadgroup`` (make test): a module's tests stay on one worker,
    so its module fixtures start once; the Kafka tier is one unit, so one worker runs the 3-node cluster
    (a session fixture) and its tests one after another. Without xdist the marks do nothing."""
    for item in items:
        if item.get_closest_marker("xdist_group") is None:
            module = item.nodeid.split("::")[0].removeprefix("tests/").removesuffix(".py")
            unit = "kafka" if item.get_closest_marker("kafka") is not None else module
            item.add_marker(pytest.mark.xdist_group(unit))


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    for line in _skipped:
        terminalreporter.write_line(line, yellow=True)
