"""The Dockerfile installs agentgov from pyproject.toml, on a Python that pyproject allows, as non-root."""

from __future__ import annotations

import re
import tomllib

from packaging.specifiers import SpecifierSet
from packaging.version import Version

from tests.support import ROOT

DOCKERFILE = (ROOT / "Dockerfile").read_text()
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
INSTRUCTIONS = [line.strip() for line in re.sub(r"\\\n", " ", DOCKERFILE).splitlines()
                if line.strip() and not line.lstrip().startswith("#")]


def _runs() -> list[str]:
    return [i for i in INSTRUCTIONS if i.startswith("RUN ")]


def test_base_python_satisfies_requires_python() -> None:
    m = re.search(r"^ARG PYTHON_IMAGE=python:(\d+\.\d+\.\d+)-slim", DOCKERFILE, re.M)
    assert m, "pin the base image to a patch release of python:*-slim"
    assert Version(m.group(1)) in SpecifierSet(PYPROJECT["project"]["requires-python"])


def test_installs_the_project_from_pyproject() -> None:
    installs = [r for r in _runs() if "pip install" in r]
    assert installs == ["RUN pip install ."], "install the project itself; dependencies come from pyproject"
    for r in _runs():
        assert "[embedded" not in r, "containers use real Kafka/ClickHouse, not the embedded extra"
    copied = " ".join(i for i in INSTRUCTIONS if i.startswith("COPY "))
    packages = {p.split(".")[0] for p in PYPROJECT["tool"]["setuptools"]["packages"]}
    for path in ("pyproject.toml", "README.md", *sorted(packages)):
        assert path in copied, f"{path} not copied before pip install"


def test_schemas_and_policies_sit_beside_the_installed_package() -> None:
    copied = " ".join(i for i in INSTRUCTIONS if i.startswith("COPY "))
    assert "schemas/" in copied and "policies/" in copied
    assert any("cp -r schemas policies" in r and "SchemaSet.load()" in r and "load_policy()" in r for r in _runs())


def test_runs_as_non_root() -> None:
    users = [i.split()[1] for i in INSTRUCTIONS if i.startswith("USER ")]
    assert users and users[-1].split(":")[0] not in {"root", "0"}


def test_dockerignore_lets_the_copied_paths_in() -> None:
    ignore = (ROOT / ".dockerignore").read_text().splitlines()
    for path in ("pyproject.toml", "README.md", "pipeline/", "consumers/", "schemas/", "policies/"):
        assert f"!{path}" in ignore
