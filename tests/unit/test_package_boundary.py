"""The installed packages carry no test-only code: no module under ``pipeline/`` or ``consumers/`` imports
the tests' support package (chaos drills, fault injection) or anything named like it.

Fault injection and the ``kill -9`` drill live in ``tests/support/`` (see its docstring); they are not
shipped in the wheel, so a production process cannot pick them up by accident.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
INSTALLED = ("pipeline", "consumers")
TEST_ONLY = ("tests", "chaos", "faults", "testing")  # a package root or a module name that is test-only


def imported_modules(path: Path, package: str) -> set[str]:
    """Absolute names of every module ``path`` imports (relative imports resolved against ``package``)."""
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                parent = parts[: len(parts) - node.level + 1]
                base = ".".join([*parent, base] if base else parent)
            out.add(base)
            out.update(f"{base}.{alias.name}" for alias in node.names)  # ``from . import faults``
    return out


def is_test_only(module: str) -> bool:
    parts = module.split(".")
    return parts[0] == "tests" or any(p in TEST_ONLY for p in parts[1:])


def offenders(root: Path = ROOT) -> dict[str, list[str]]:
    bad: dict[str, list[str]] = {}
    for top in INSTALLED:
        for path in sorted((root / top).rglob("*.py")):
            rel = path.relative_to(root)
            package = ".".join(rel.with_suffix("").parts[:-1] if rel.name != "__init__.py" else rel.parts[:-1])
            hits = sorted(m for m in imported_modules(path, package) if is_test_only(m))
            if hits:
                bad[str(rel)] = hits
    return bad


def test_no_installed_module_imports_test_only_code() -> None:
    assert offenders() == {}


def test_chaos_and_faults_are_not_in_the_installed_packages() -> None:
    shipped = {p.stem for top in INSTALLED for p in (ROOT / top).rglob("*.py")}
    assert not shipped & {"chaos", "faults"}
    assert (ROOT / "tests" / "support" / "chaos.py").exists() and (ROOT / "tests" / "support" / "faults.py").exists()


def from_a_test_module(module: str) -> bool:
    parts = module.split(".")
    return parts[0] == "tests" and any(p.startswith("test_") or p == "conftest" for p in parts[1:-1])


def test_tests_import_helpers_from_support_not_from_test_modules_or_conftest() -> None:
    """Helpers live in tests/support/ (or a factory); a test module or conftest.py is never imported."""
    bad: dict[str, list[str]] = {}
    for path in sorted((ROOT / "tests").rglob("*.py")):
        rel = path.relative_to(ROOT)
        hits = sorted(m for m in imported_modules(path, ".".join(rel.parts[:-1])) if from_a_test_module(m))
        if hits:
            bad[str(rel)] = hits
    assert bad == {}
    assert from_a_test_module("tests.unit.test_serde.record") and from_a_test_module("tests.integration.conftest.Bus")


@pytest.mark.parametrize("source", [
    "from tests.support.chaos import Slot",
    "from .faults import FaultyClient",
    "from . import chaos",
    "import tests.support.faults",
    "def f():\n    from ..testing import chaos\n",
])
def test_the_walk_finds_a_test_only_import(tmp_path: Path, source: str) -> None:
    """The check can fail: a module that imports test-only code is reported."""
    (tmp_path / "pipeline" / "sinks").mkdir(parents=True)
    (tmp_path / "consumers").mkdir()
    (tmp_path / "pipeline" / "sinks" / "leaky.py").write_text(source + "\n")
    (tmp_path / "pipeline" / "clean.py").write_text("from .sinks import clickhouse\nimport json\n")
    assert list(offenders(tmp_path)) == ["pipeline/sinks/leaky.py"]
