"""The compose stack's files, and ``docker-compose config`` renderings of them."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.support import ROOT

COMPOSE = ROOT / "compose"
BASE = COMPOSE / "docker-compose.yml"
LAPTOP = COMPOSE / "docker-compose.laptop.yml"
ENV_EXAMPLE = ROOT / ".env.example"


def env_example() -> dict[str, str]:
    """The variables .env.example sets."""
    out = {}
    for line in ENV_EXAMPLE.read_text().splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            key, _, value = line.partition("=")
            out[key.strip()] = value.strip()
    return out


def rendered(*files: Path) -> dict[str, Any]:
    """``docker-compose config`` output (interpolated, merged) for the given files."""
    exe = shutil.which("docker-compose")
    if exe is None:
        pytest.skip("docker-compose not installed (ci/system-deps.sh installs it)")
    args = [exe, "--env-file", str(ENV_EXAMPLE)]
    for f in files:
        args += ["-f", str(f)]
    out = subprocess.run([*args, "config"], capture_output=True, text=True, check=False, cwd=ROOT)
    assert out.returncode == 0, out.stderr
    return yaml.safe_load(out.stdout)
