"""Who may write where: the Kafka ACLs of each agentgov principal, derived from one Settings object.

- ``agent``: writes the transitions topic, nothing else.
- ``scorer``: reads transitions (and the baselines/delegations it follows); alone writes assessments, dead
  letters and the fact topics it owns; its transactional ids and consumer groups.
- ``correlator``: reads the fact topics; writes holdings and correlations.
- ``store``: the writer (store owner) reads assessments, correlations and review decisions; alone writes
  baselines; writes dead letters for rows the store refuses.
- ``review``: the review app writes decisions, exceptions and remediation requests, and reads them back.
- ``reader``: reads every topic (consumer groups ``reader-*``), writes nothing.

The schema registry has no Kafka principal: compose's Apicurio keeps its schemas in PostgreSQL.

:func:`create_users` sets each principal's SCRAM-SHA-512 credential; ``python -m consumers.kafka_access``
(compose's one-shot ``kafka-access`` service) runs both before the pipeline starts.

Used by the Kafka test tier (``tests/integration/test_acls.py``) and by compose's ``kafka-access``
service. Example::

    apply_acls(AdminClient(admin_conf), settings, {"agent": "agent-1", "scorer": "scorer", ...})
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping

from confluent_kafka.admin import (
    AclBinding,
    AclBindingFilter,
    AclOperation,
    AclPermissionType,
    AdminClient,
    ResourcePatternType,
    ResourceType,
    ScramCredentialInfo,
    ScramMechanism,
    UserScramCredentialUpsertion,
)

from .errors import BrokerError, ConfigError
from .settings import Settings

log = logging.getLogger(__name__)

ROLES = ("agent", "scorer", "correlator", "store", "review", "reader")
READ, WRITE = AclOperation.READ, AclOperation.WRITE


def _topic(principal: str, name: str, op: AclOperation) -> AclBinding:
    return AclBinding(ResourceType.TOPIC, name, ResourcePatternType.LITERAL, f"User:{principal}", "*", op,
                      AclPermissionType.ALLOW)


def _prefixed(principal: str, kind: ResourceType, prefix: str, op: AclOperation) -> AclBinding:
    return AclBinding(kind, prefix, ResourcePatternType.PREFIXED, f"User:{principal}", "*", op,
                      AclPermissionType.ALLOW)


def bindings(settings: Settings, principals: Mapping[str, str]) -> list[AclBinding]:
    """Every ACL for the roles named in ``principals`` (role -> Kafka user name)."""
    s = settings
    facts = [s.topic_facts_by_target, s.topic_facts_by_agent, s.topic_holdings, s.topic_delegations]
    review = [s.topic_decisions, s.topic_exceptions, s.topic_remediations]
    everything = [s.topic_transitions, s.topic_assessments, s.topic_dlq, s.topic_baselines, *facts,
                  s.topic_correlations, *review]
    out: list[AclBinding] = []
    group, txn = ResourceType.GROUP, ResourceType.TRANSACTIONAL_ID
    if "agent" in principals:
        out.append(_topic(principals["agent"], s.topic_transitions, WRITE))
    if "scorer" in principals:
        p = principals["scorer"]
        out += [_topic(p, t, READ) for t in (s.topic_transitions, s.topic_baselines, s.topic_delegations,
                                                    s.topic_exceptions)]
        out += [_topic(p, t, WRITE) for t in (s.topic_assessments, s.topic_dlq, *facts)]
        out += [_prefixed(p, group, s.scorer_group, READ), _prefixed(p, group, "agentgov-", READ),
                _prefixed(p, txn, "agentgov-scorer-", WRITE)]
    if "correlator" in principals:
        p = principals["correlator"]
        out += [_topic(p, t, READ) for t in facts]
        out += [_topic(p, t, WRITE) for t in (s.topic_holdings, s.topic_correlations)]
        out += [_prefixed(p, group, s.correlator_group, READ), _prefixed(p, group, "agentgov-", READ),
                _prefixed(p, txn, "agentgov-correlator-", WRITE)]
    if "store" in principals:
        p = principals["store"]
        out += [_topic(p, t, READ) for t in (s.topic_assessments, s.topic_correlations, s.topic_baselines,
                                             s.topic_decisions, s.topic_exceptions)]
        out += [_topic(p, t, WRITE) for t in (s.topic_baselines, s.topic_dlq)]
        out += [_prefixed(p, group, s.writer_group, READ), _prefixed(p, group, "agentgov-", READ)]
    if "review" in principals:
        p = principals["review"]
        out += [_topic(p, t, op) for t in review for op in (READ, WRITE)]
        out.append(_prefixed(p, group, "agentgov-review", READ))
    if "reader" in principals:
        p = principals["reader"]
        out += [_topic(p, t, READ) for t in everything]
        out.append(_prefixed(p, group, "reader-", READ))
    return out


def passwords_from_env(env: Mapping[str, str], roles: tuple[str, ...] = ROLES) -> dict[str, str]:
    """role -> SCRAM password from ``SCRAM_PASSWORD_<ROLE>`` (compose's names; not AGENTGOV_*, which the
    settings would reject). Every role in ``ROLES`` must have one."""
    out = {role: env[f"SCRAM_PASSWORD_{role.upper()}"] for role in roles if env.get(f"SCRAM_PASSWORD_{role.upper()}")}
    missing = [f"SCRAM_PASSWORD_{r.upper()}" for r in ROLES if r not in out]
    if missing:
        raise ConfigError(f"missing SCRAM passwords: {', '.join(missing)}", missing=missing)
    return out


def create_users(admin: AdminClient, passwords: Mapping[str, str], timeout: float = 30.0,
                 iterations: int = 8192) -> None:
    """Create or reset the SCRAM-SHA-512 credential of each user (idempotent). Passwords never reach a log."""
    info = ScramCredentialInfo(ScramMechanism.SCRAM_SHA_512, iterations)
    upserts = [UserScramCredentialUpsertion(user, info, password.encode()) for user, password in passwords.items()]
    for user, future in admin.alter_user_scram_credentials(upserts, request_timeout=timeout).items():
        try:
            future.result()
        except Exception as exc:  # KafkaException: not authorized, or the controller is not ready
            raise BrokerError(f"could not set the SCRAM credential of {user}: {type(exc).__name__}",
                              user=user) from None
    log.info("scram users set", extra={"kv": {"users": ",".join(sorted(passwords))}})


def apply_acls(admin: AdminClient, settings: Settings, principals: Mapping[str, str], timeout: float = 30.0) -> int:
    """Create the ACLs (idempotent: the broker keeps one copy of each) and wait until the brokers serve
    them (the controller commits them first; brokers apply metadata a moment later). Returns the count."""
    wanted = bindings(settings, principals)
    for future in admin.create_acls(wanted, request_timeout=timeout).values():
        future.result()
    every = AclBindingFilter(ResourceType.ANY, None, ResourcePatternType.ANY, None, None, AclOperation.ANY,
                             AclPermissionType.ANY)
    deadline = time.monotonic() + timeout
    while not set(wanted) <= set(admin.describe_acls(every, request_timeout=timeout).result()):
        if time.monotonic() > deadline:
            raise BrokerError(f"ACLs not served by the brokers after {timeout}s")
        time.sleep(0.2)
    log.info("acls applied", extra={"kv": {"bindings": len(wanted), "roles": ",".join(sorted(principals))}})
    return len(wanted)
