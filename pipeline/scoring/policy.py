"""The governance policy: per-workflow decision boundaries plus identity-wide controls, written by a
governance team as versioned YAML (reference: docs/policy.md).

Per workflow (each field falls back to ``defaults`` unless the workflow sets it, each key of the
``lifecycle`` section separately; an explicit ``null`` means "no restriction"): the agents that may act in
it, allowed actions and systems, input allowlists and the signal cap, the tiers that need a human approval,
and the lifecycle rules. Identity-wide (top level, because an identity's
privileges do not depend on which workflow granted them): approved policy versions, privileged
entitlements and groups, separation-of-duties pairs, the identity-provider systems, escalation and drift
settings.

Validation happens once, at load; rules read the precomputed, plain-Python :class:`ResolvedBoundary`.

Example::

    loaded = load_policy(Path("policies/default.yaml"))
    loaded.policy.boundary_for("jml-provisioning").human_approval_tiers   # frozenset({2, 3})
    print(check_policy(Path("policies/default.yaml")))
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, field_validator, model_validator
from pydantic import ValidationError as PydanticValidationError

from ..errors import PolicyError
from ..events import INVISIBLE, Action, LifecycleState, TriggerKind, identity_key, identity_pattern, is_blank, name_key

Name = str  # an entitlement, role, group or system name as it appears in events


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Lifecycle(_Strict):
    """Which lifecycle triggers may cause which actions (AG-LCM-*)."""

    trigger_actions: dict[TriggerKind, frozenset[Action]] = Field(default_factory=dict)
    """Trigger kind -> the only actions it may cause. Kinds not listed may cause any action."""
    access_triggers: frozenset[TriggerKind] = frozenset(
        {TriggerKind.joiner, TriggerKind.mover, TriggerKind.leaver, TriggerKind.access_request})
    """Trigger kinds that can justify an access change; anything else raises AG-LCM-003."""
    blocked_states: dict[LifecycleState, frozenset[Action]] = Field(
        default_factory=lambda: {LifecycleState.terminated: frozenset(),
                                 LifecycleState.pre_hire: frozenset({Action.create_account})})
    """Target lifecycle state -> the granting actions still allowed in that state (AG-LCM-001)."""


class Boundary(_Strict):
    """What one workflow's agents may do. Unset fields fall back to the policy's defaults."""

    agents: tuple[str, ...] | None = None
    """fnmatch patterns (``agent-jml-*``) of the agents (``agent.agent_id``) that may act in the workflow,
    matched as identities are (:func:`~pipeline.events.identity_key` on both sides); any other agent naming
    the workflow raises AG-BND-005. None: any agent (the workflow_id an event names is then its own claim)."""
    allowed_actions: frozenset[Action] | None = None
    allowed_systems: frozenset[Name] | None = None
    input_allowlist: dict[Action, frozenset[Name]] = Field(default_factory=dict)
    """Action -> the input attributes it may evaluate; other actions use ``default_inputs``."""
    default_inputs: frozenset[Name] | None = None
    max_signals: int | None = Field(default=None, ge=0)
    human_approval_tiers: frozenset[int] = frozenset({2, 3})
    lifecycle: Lifecycle = Lifecycle()

    @field_validator("agents")
    @classmethod
    def _agent_patterns(cls, patterns: tuple[str, ...] | None) -> tuple[str, ...] | None:
        if patterns is None:
            return None
        if not patterns:
            raise ValueError("an empty list binds no agent: list at least one agent pattern "
                             "(e.g. agent-jml-*), or leave agents unset or null for any agent")
        for i, pattern in enumerate(patterns):
            if is_blank(pattern):
                raise ValueError(f"pattern {i} is blank ({pattern!r}): name an agent id or an fnmatch pattern")
            if pattern != pattern.strip(INVISIBLE):
                raise ValueError(f"pattern {i} ({pattern!r}) starts or ends with whitespace or an invisible "
                                 "character, which no agent id does: it would match no agent")
        return patterns

    @model_validator(mode="after")
    def _tiers(self) -> Boundary:
        bad = sorted(t for t in self.human_approval_tiers if not 0 <= t <= 3)
        if bad:
            raise ValueError(f"human_approval_tiers: tiers {bad} outside 0..3")
        return self


class Privileged(_Strict):
    """What counts as privileged: a tier, plus names that are privileged whatever tier an event claims."""

    min_tier: int = Field(default=3, ge=1, le=3)
    entitlements: frozenset[Name] = frozenset()
    groups: frozenset[Name] = frozenset()
    """Resource ids (groups, roles) that are privileged."""


class ToxicPair(_Strict):
    """Two entitlements or roles that one identity must never hold together (AG-SOD-001)."""

    name: str = Field(min_length=1)
    entitlements: tuple[Name, Name]

    @model_validator(mode="after")
    def _distinct(self) -> ToxicPair:
        if name_key(self.entitlements[0]) == name_key(self.entitlements[1]):  # compared as events are
            raise ValueError(f"entitlements: a toxic pair needs two different names, got {self.entitlements[0]!r}")
        return self


class Escalation(_Strict):
    window_seconds: int = Field(default=3600, gt=0)
    """How far back a hidden-escalation chain may reach (event time)."""
    transient_revoke_seconds: int = Field(default=900, gt=0)
    """A privileged grant revoked within this many seconds is AG-ESC-003."""
    tier_stepping_min_steps: int = Field(default=3, ge=2, le=4)
    """Grants at strictly increasing tiers, ending at tier 3, that make AG-ESC-002."""
    max_delegation_depth: int = Field(default=8, ge=1, le=32)

    @model_validator(mode="after")
    def _windows(self) -> Escalation:
        if self.transient_revoke_seconds > self.window_seconds:
            raise ValueError("transient_revoke_seconds must not exceed window_seconds "
                             f"({self.transient_revoke_seconds} > {self.window_seconds})")
        return self


class Drift(_Strict):
    baseline_window_seconds: int = Field(default=7 * 86400, gt=0)
    """Window the agent baselines are aggregated over (read by the baseline publisher)."""
    min_baseline_events: int = Field(default=200, ge=1)
    """Warm-up: no drift findings until the agent's baseline holds this many events."""
    rate_window_seconds: int = Field(default=3600, gt=0)
    rate_factor: float = Field(default=3.0, gt=1.0)
    rate_min_grants: int = Field(default=20, ge=1)
    """Below this many grants in the rate window a rate is noise, not drift."""
    stale_policy_share: float = Field(default=0.2, gt=0.0, le=1.0)
    stale_min_events: int = Field(default=10, ge=1)


class Review(_Strict):
    """Review workbench: triage SLA per severity and the cap on exception lifetimes (docs/review.md)."""

    sla_hours: dict[str, float] = Field(default_factory=lambda: {"critical": 4.0, "high": 24.0, "medium": 72.0})
    exception_max_days: int = Field(default=90, ge=1, le=3650)
    certify_justification_required: bool = True
    """Recertification: a certify decision needs a justification (revoke and reassign always do)."""
    campaign_on_timeout: str = "none"
    """What an overdue campaign does by itself: only ``none`` (see docs/recertification.md; no auto-apply)."""

    @model_validator(mode="after")
    def _severities(self) -> Review:
        unknown = sorted(set(self.sla_hours) - {"critical", "high", "medium", "low", "info"})
        if unknown:
            raise ValueError(f"sla_hours: unknown severities {unknown}")
        if any(h <= 0 for h in self.sla_hours.values()):
            raise ValueError("sla_hours: hours must be positive")
        if self.campaign_on_timeout != "none":
            raise ValueError("campaign_on_timeout: only 'none' is accepted: auto-apply + deny by default revokes "
                             "everything nobody looked at; overdue campaigns alert instead")
        return self


@dataclass(frozen=True, slots=True)
class ResolvedBoundary:
    """A workflow's boundary with defaults applied, as plain frozensets for the hot path.
    ``None`` means unrestricted."""

    agents: tuple[str, ...] | None
    """The agent patterns as the policy writes them (for messages)."""
    agent_pattern: re.Pattern[str] | None
    """``agents`` compiled: each pattern folded by :func:`~pipeline.events.identity_key`, fnmatch-translated,
    one alternation; match it against ``identity_key(agent_id)`` (:meth:`GovernancePolicy.agent_bound`)."""
    allowed_actions: frozenset[str] | None
    allowed_systems: frozenset[str] | None
    input_allowlist: dict[str, frozenset[str]]
    default_inputs: frozenset[str] | None
    max_signals: int | None
    human_approval_tiers: frozenset[int]
    trigger_actions: dict[str, frozenset[str]]
    access_triggers: frozenset[str]
    blocked_states: dict[str, frozenset[str]]

    def inputs_for(self, action: str) -> frozenset[str] | None:
        return self.input_allowlist.get(action, self.default_inputs)


def _strs(values: Any) -> frozenset[str]:
    return frozenset(str(v) for v in values)


def _pick(default: BaseModel, wf: BaseModel | None, name: str) -> Any:
    """The workflow's value of a field if it sets it, else the default's. A section (a nested model such as
    ``lifecycle``) is merged key by key the same way, so a workflow that sets one of its keys keeps the
    others from ``defaults`` (docs/policy.md "A boundary"); a map or list value is replaced whole."""
    base = getattr(default, name)
    if wf is None or name not in wf.model_fields_set:
        return base
    value = getattr(wf, name)
    if isinstance(value, BaseModel):
        return {key: _pick(base, value, key) for key in type(value).model_fields}
    return value



def _resolve(defaults: Boundary, wf: Boundary | None) -> ResolvedBoundary:
    def pick(name: str) -> Any:
        return _pick(defaults, wf, name)

    actions, systems, inputs = pick("allowed_actions"), pick("allowed_systems"), pick("default_inputs")
    lc = Lifecycle.model_validate(pick("lifecycle"))
    agents = pick("agents")
    return ResolvedBoundary(
        agents=agents,
        agent_pattern=None if agents is None else identity_pattern(agents),
        allowed_actions=None if actions is None else _strs(actions),
        allowed_systems=None if systems is None else _strs(systems),
        input_allowlist={str(a): _strs(v) for a, v in pick("input_allowlist").items()},
        default_inputs=None if inputs is None else _strs(inputs),
        max_signals=pick("max_signals"),
        human_approval_tiers=frozenset(pick("human_approval_tiers")),
        trigger_actions={str(k): _strs(v) for k, v in lc.trigger_actions.items()},
        access_triggers=_strs(lc.access_triggers),
        blocked_states={str(k): _strs(v) for k, v in lc.blocked_states.items()},
    )


@dataclass(frozen=True, slots=True)
class _Compiled:
    default: ResolvedBoundary
    workflows: dict[str, ResolvedBoundary]
    sod: dict[str, tuple[tuple[str, str], ...]]
    """name_key(name) -> (partner as the policy spells it, pair name)."""
    privileged_entitlements: frozenset[str]
    privileged_groups: frozenset[str]
    """Both as name_key: privileged names match whatever case and padding an event spells them with."""
    identity_providers: frozenset[str]
    """As name_key, like the privileged names."""
    privileged_memo: dict[tuple[str, str | None], bool] = field(default_factory=dict)
    """(resource_id, entitlement) as an event spells them -> ``privileged_name``'s answer, for the names seen
    last (at most ``PRIVILEGED_MEMO_MAX``): every access change asks it, and an estate's names are few."""
    agent_memo: dict[tuple[str, str], bool] = field(default_factory=dict)
    """(workflow_id, agent_id) as an event spells them -> ``agent_bound``'s answer, for the pairs seen last
    (at most ``AGENT_MEMO_MAX``): every event asks it, and an estate's agents are few."""


PRIVILEGED_MEMO_MAX = 65_536
AGENT_MEMO_MAX = 65_536


class GovernancePolicy(_Strict):
    version: str = Field(min_length=1)
    description: str = ""
    approved_policy_versions: dict[str, frozenset[str]] = Field(default_factory=dict)
    """policy_id -> the versions of it agents may decide under. Empty: AG-POL-001/AG-DRF-006 are off."""
    privileged: Privileged = Privileged()
    separation_of_duties: tuple[ToxicPair, ...] = ()
    identity_providers: frozenset[Name] = frozenset({"entra-id", "okta", "active-directory"})
    """Systems (``resource.system``) whose account is the person's identity: its disabling or deletion means
    the person left everywhere, and its creation that they are back (AG-XRN-007). An account on any other
    system is that system's alone: a mover losing one application's account has not left. Identity-wide,
    like the privileged names: the leaver may have been disabled by any workflow's agent."""
    escalation: Escalation = Escalation()
    drift: Drift = Drift()
    defaults: Boundary = Boundary()
    workflows: dict[str, Boundary] = Field(default_factory=dict)
    review: Review = Review()

    _compiled: _Compiled | None = PrivateAttr(default=None)

    def model_post_init(self, __context: Any) -> None:
        partners: dict[str, list[tuple[str, str]]] = {}
        for pair in self.separation_of_duties:
            a, b = pair.entitlements
            partners.setdefault(name_key(a), []).append((b, pair.name))
            partners.setdefault(name_key(b), []).append((a, pair.name))
        self._compiled = _Compiled(
            default=_resolve(self.defaults, None),
            workflows={wf: _resolve(self.defaults, b) for wf, b in self.workflows.items()},
            sod={k: tuple(v) for k, v in partners.items()},
            privileged_entitlements=frozenset(name_key(n) for n in self.privileged.entitlements),
            privileged_groups=frozenset(name_key(n) for n in self.privileged.groups),
            identity_providers=frozenset(name_key(n) for n in self.identity_providers),
        )

    @property
    def _c(self) -> _Compiled:
        # Read through __pydantic_private__: plain attribute access to a private attribute goes through
        # BaseModel.__getattr__, about 50x slower, and these lookups run for every event.
        compiled: _Compiled = self.__pydantic_private__["_compiled"]  # type: ignore[index]
        return compiled

    @property
    def default_boundary(self) -> ResolvedBoundary:
        return self._c.default

    def boundary_for(self, workflow_id: str) -> ResolvedBoundary:
        """The workflow's boundary with defaults applied; unknown workflows get the defaults."""
        c = self._c
        return c.workflows.get(workflow_id, c.default)

    def agent_bound(self, workflow_id: str, agent_id: str) -> bool:
        """Whether ``agent_id`` may act in ``workflow_id``: its boundary (the defaults' for an unknown workflow)
        lists no ``agents``, or one of its patterns matches the agent, both compared as
        :func:`~pipeline.events.identity_key` (``Agent-JML-07`` is ``agent-jml-07``), with ``fnmatchcase``."""
        c = self._c
        pattern = c.workflows.get(workflow_id, c.default).agent_pattern
        if pattern is None:
            return True
        memo = c.agent_memo
        known = memo.get((workflow_id, agent_id))
        if known is None:
            known = pattern.match(identity_key(agent_id)) is not None
            if len(memo) >= AGENT_MEMO_MAX:
                memo.clear()
            memo[(workflow_id, agent_id)] = known
        return known

    def sod_partners(self, name: str) -> tuple[tuple[str, str], ...]:
        """(partner, pair name) for every toxic pair ``name`` belongs to. Names match as
        :func:`~pipeline.events.name_key` (case-insensitive, trimmed): compare the partner with what an
        identity holds the same way."""
        return self._c.sod.get(name_key(name), ())

    def privileged_name(self, resource_id: str, entitlement: str | None) -> bool:
        """``resource_id`` is a privileged group or role, or ``entitlement`` a privileged entitlement,
        compared as :func:`~pipeline.events.name_key` (case-insensitive, trimmed)."""
        memo = self._c.privileged_memo
        try:
            known = memo.get((resource_id, entitlement))
        except TypeError:  # not names (unhashable): answered as below, unremembered
            return self._privileged_name(resource_id, entitlement)
        if known is None:
            known = self._privileged_name(resource_id, entitlement)
            if len(memo) >= PRIVILEGED_MEMO_MAX:
                memo.clear()
            memo[(resource_id, entitlement)] = known
        return known

    def _privileged_name(self, resource_id: str, entitlement: str | None) -> bool:
        c = self._c
        return name_key(resource_id) in c.privileged_groups or (
            entitlement is not None and name_key(entitlement) in c.privileged_entitlements)

    def identity_provider(self, system: str) -> bool:
        """``system`` is one of the policy's identity providers, compared as :func:`~pipeline.events.name_key`
        (``Entra-ID`` is ``entra-id``: a case variant must not make a leaver's directory account count as an
        application's)."""
        return name_key(system) in self._c.identity_providers

    def version_approved(self, policy_id: str, policy_version: str) -> bool | None:
        """Whether a decision's policy version is approved; None when no versions are configured."""
        if not self.approved_policy_versions:
            return None
        versions = self.approved_policy_versions.get(policy_id)
        return versions is not None and policy_version in versions

    def approved_policy_refs(self) -> list[str]:
        """``policy_id@version`` strings, as the baseline aggregation takes them."""
        return sorted(f"{pid}@{v}" for pid, vs in self.approved_policy_versions.items() for v in vs)


@dataclass(frozen=True)
class LoadedPolicy:
    """A validated policy with the identity of the file it came from."""

    policy: GovernancePolicy
    sha256: str
    source: str

    @property
    def version(self) -> str:
        return self.policy.version

    @property
    def governance(self) -> GovernancePolicy:
        """The governance policy itself, the way rules read it (``ctx.governance``)."""
        return self.policy


def default_policy_path() -> Path:
    return Path(__file__).resolve().parents[2] / "policies" / "default.yaml"


def _where(loc: tuple[Any, ...]) -> str:
    # pydantic appends validator names ("function-after[...]") to the location; keep the field path.
    return ".".join(str(p) for p in loc if not str(p).startswith(("function-", "[key]"))) or "<root>"


def _msg(err: Any) -> str:
    value = err.get("input")
    if isinstance(value, str | int | float | bool) and err["type"] not in ("value_error", "missing"):
        return f"{err['msg']} (got {value!r})"
    return str(err["msg"])


def parse_policy(text: str, source: str = "<string>") -> LoadedPolicy:
    try:
        doc = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise PolicyError(f"{source}: not valid YAML: {exc}", source=source) from exc
    if not isinstance(doc, dict):
        raise PolicyError(f"{source}: the policy must be a YAML mapping", source=source)
    if isinstance(doc.get("version"), int | float):
        # `version: 7` would silently become "7" or "7.1" -> "7.1"; make the author quote it.
        raise PolicyError(f"{source}: invalid policy: version: must be a quoted string, e.g. \"{doc['version']}\"",
                          source=source, fields=["version"])
    try:
        policy = GovernancePolicy.model_validate(doc)
    except PydanticValidationError as exc:
        fields = [_where(err["loc"]) for err in exc.errors()]
        problems = "; ".join(f"{f}: {_msg(err)}" for f, err in zip(fields, exc.errors(), strict=True))
        raise PolicyError(f"{source}: invalid policy: {problems}", source=source, fields=fields) from exc
    return LoadedPolicy(policy, hashlib.sha256(text.encode()).hexdigest(), source)


def load_policy(path: Path | None = None) -> LoadedPolicy:
    path = path or default_policy_path()
    try:
        text = path.read_bytes().decode("utf-8")
    except OSError as exc:
        raise PolicyError(f"cannot read policy file {path}: {exc}", source=str(path)) from exc
    except UnicodeDecodeError as exc:  # a PolicyError, so a running scorer keeps its previous policy
        raise PolicyError(f"policy file {path} is not UTF-8 (byte {exc.start}: {exc.reason})",
                          source=str(path)) from exc
    return parse_policy(text, str(path))


def _fmt(values: frozenset[str] | None) -> str:
    return "any" if values is None else (", ".join(sorted(values)) or "none")


def check_policy(path: Path | None = None) -> str:
    """Validate a policy file and summarise it for a human. Raises :class:`ConfigError` naming the field."""
    loaded = load_policy(path)
    p = loaded.policy
    lines = [f"policy {loaded.source}", f"  version {p.version}  sha256 {loaded.sha256}"]
    refs = p.approved_policy_refs()
    lines.append(f"  approved policy versions: {', '.join(refs) if refs else 'not configured (AG-POL-001 off)'}")
    priv = p.privileged
    lines.append(f"  privileged: tier >= {priv.min_tier}; {len(priv.entitlements)} entitlements, "
                 f"{len(priv.groups)} groups/roles")
    lines.append(f"  separation of duties: {len(p.separation_of_duties)} toxic pairs")
    lines.append(f"  identity providers: {_fmt(p.identity_providers)}")
    e, d = p.escalation, p.drift
    lines.append(f"  escalation: window {e.window_seconds}s, transient revoke {e.transient_revoke_seconds}s, "
                 f"tier stepping {e.tier_stepping_min_steps} steps")
    lines.append(f"  drift: baseline {d.baseline_window_seconds}s, warm-up {d.min_baseline_events} events, "
                 f"rate x{d.rate_factor} over {d.rate_window_seconds}s, stale share > {d.stale_policy_share:g}")
    warnings: list[str] = []
    scopes = [("defaults", p.default_boundary)]
    scopes += [(f"workflows.{wf}", p.boundary_for(wf)) for wf in sorted(p.workflows)]
    for name, b in scopes:
        agents = "any" if b.agents is None else ", ".join(b.agents)
        lines.append(f"  {name}: agents {agents}; actions {_fmt(b.allowed_actions)}; "
                     f"systems {_fmt(b.allowed_systems)}; approval tiers {sorted(b.human_approval_tiers)}; "
                     f"max signals {b.max_signals or 'any'}")
        if b.allowed_actions is not None:
            for kind, actions in sorted(b.trigger_actions.items()):
                unused = actions - b.allowed_actions
                if unused:
                    warnings.append(f"{name}.lifecycle.trigger_actions.{kind}: "
                                    f"{', '.join(sorted(unused))} not in allowed_actions")
    lines += [f"  warning: {w}" for w in warnings]
    return "\n".join(lines)
