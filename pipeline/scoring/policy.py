"""The governance policy: per-workflow decision boundaries, written by a governance team as YAML.

Example::

    loaded = load_policy(Path("policies/default.yaml"))
    loaded.policy.boundary_for("jml-provisioning").human_approval_tiers
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import yaml
from pydantic import BaseModel, ConfigDict, Field
from pydantic import ValidationError as PydanticValidationError

from ..errors import ConfigError


class Boundary(BaseModel):
    """What one workflow's agents may do. Unset fields fall back to the policy's defaults."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    human_approval_tiers: frozenset[int] = frozenset({2, 3})


class GovernancePolicy(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    version: str = Field(min_length=1)
    defaults: Boundary = Boundary()
    workflows: dict[str, Boundary] = Field(default_factory=dict)

    def boundary_for(self, workflow_id: str) -> Boundary:
        return self.workflows.get(workflow_id, self.defaults)


@dataclass(frozen=True)
class LoadedPolicy:
    """A validated policy with the identity of the file it came from."""

    policy: GovernancePolicy
    sha256: str
    source: str

    @property
    def version(self) -> str:
        return self.policy.version


def default_policy_path() -> Path:
    return Path(__file__).resolve().parents[2] / "policies" / "default.yaml"


def parse_policy(text: str, source: str = "<string>") -> LoadedPolicy:
    try:
        doc = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{source}: not valid YAML: {exc}", source=source) from exc
    if not isinstance(doc, dict):
        raise ConfigError(f"{source}: the policy must be a YAML mapping", source=source)
    try:
        policy = GovernancePolicy.model_validate(doc)
    except PydanticValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc'])}: {err['msg']}" for err in exc.errors()
        )
        raise ConfigError(f"{source}: invalid policy: {problems}", source=source) from exc
    return LoadedPolicy(policy, hashlib.sha256(text.encode()).hexdigest(), source)


def load_policy(path: Path | None = None) -> LoadedPolicy:
    path = path or default_policy_path()
    try:
        text = path.read_text()
    except OSError as exc:
        raise ConfigError(f"cannot read policy file {path}: {exc}", source=str(path)) from exc
    return parse_policy(text, str(path))
