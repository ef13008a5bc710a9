"""Who may write where, on real Kafka with SASL/SCRAM and ACLs (``pipeline/acls.py``).

The scorer and the writer run under their own least-privilege principals and the pipeline works end to
end; an agent's credentials are refused on the assessments and baselines topics. Each refusal is logged
and counted by the SDK (``agentgov_publish_failures_total``) and logged by the broker's authorizer,
naming the principal and the topic.
"""

from __future__ import annotations

import logging
import os
import secrets
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from confluent_kafka import Producer
from confluent_kafka.admin import AdminClient
from prometheus_client import CollectorRegistry
from pydantic import SecretStr

from pipeline.acls import ROLES, apply_acls
from pipeline.drafts import draft
from pipeline.errors import PublishError
from pipeline.kraft import KraftCluster
from pipeline.metrics import Metrics
from pipeline.publisher import TransitionPublisher
from pipeline.runner import settings_env
from pipeline.settings import Settings
from tests.support.chaos import Slot, read_store
from tests.support.helpers import committed, wait_until

pytestmark = [pytest.mark.integration, pytest.mark.kafka]


@pytest.fixture(scope="module")
def secured(tmp_path_factory: pytest.TempPathFactory) -> Iterator[KraftCluster]:
    users = {name: secrets.token_urlsafe(16) for name in ("admin", *ROLES)}
    with KraftCluster(tmp_path_factory.mktemp("kafka-acl"), nodes=1, users=users) as cluster:
        yield cluster


def as_user(settings: Settings, cluster: KraftCluster, user: str, **overrides: object) -> Settings:
    assert cluster.users is not None
    return settings.model_copy(update={"kafka_sasl_username": user,
                                       "kafka_sasl_password": SecretStr(cluster.users[user]), **overrides})


def refused(settings: Settings, topic: str, metrics: Metrics) -> PublishError:
    """Publish one event to ``topic`` with the SDK; return the PublishError it must raise."""
    pub = TransitionPublisher(settings.model_copy(update={"topic_transitions": topic}), metrics=metrics)
    pub.publish(draft(run_id=f"run-acl-{secrets.token_hex(3)}"))
    with pytest.raises(PublishError) as caught:
        pub.flush(30)
    return caught.value


def test_least_privilege_pipeline_and_refused_writes(
    secured: KraftCluster, settings_factory: Callable[..., Settings], tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    assert secured.users is not None
    admin = settings_factory(
        kafka_bootstrap=secured.bootstrap, kafka_security_protocol="SASL_PLAINTEXT",
        kafka_sasl_mechanism="SCRAM-SHA-512", kafka_sasl_username="admin",
        kafka_sasl_password=SecretStr(secured.users["admin"]), clickhouse_dsn=f"chdb://{tmp_path / 'store'}",
        baseline_refresh_seconds=2.0)
    applied = apply_acls(AdminClient(admin.kafka_config()), admin, {role: role for role in ROLES})
    assert applied > 20

    # the pipeline under its own principals: scorer and store owner
    logs = tmp_path / "logs"
    logs.mkdir()
    scorer = Slot("scorer-0", "consumers.scorer",
                  {**settings_env(as_user(admin, secured, "scorer")), "AGENTGOV_INSTANCE_ID": "scorer-0"}, logs).start()
    writer = Slot("writer", "consumers.writer", settings_env(as_user(admin, secured, "store")), logs).start()
    agent = as_user(admin, secured, "agent")
    metrics = Metrics(CollectorRegistry())
    try:
        pub = TransitionPublisher(agent, metrics=metrics)
        ids = [pub.publish(draft(run_id=f"run-ok-{i % 3}", step=i)) for i in range(20)]
        pub.flush(60)
        assert pub.delivered == 20

        # an agent writing an assessment or a baseline: refused, logged and counted
        caplog.set_level(logging.ERROR, logger="pipeline.publisher")
        for topic in (admin.topic_assessments, admin.topic_baselines):
            err = refused(agent, topic, metrics)
            assert "authorization failed" in str(err).lower(), err
        assert metrics.registry.get_sample_value("agentgov_publish_failures_total",
                                                 {"reason": "not_authorized"}) == 2
        denials = [r for r in caplog.records if r.getMessage() == "delivery failed"]
        assert len(denials) == 2 and all(r.kv["reason"] == "not_authorized" for r in denials)  # type: ignore[attr-defined]

        def broker_logged() -> bool:
            text = (secured.nodes[0].root / "server.log").read_text(errors="replace")
            lines = [line for line in text.splitlines() if "User:agent is Denied" in line]
            return all(any(f"Topic:LITERAL:{t} " in line for line in lines)
                       for t in (admin.topic_assessments, admin.topic_baselines))

        assert wait_until(broker_logged, 10), "the broker's authorizer did not log the refusals"

        # the events the agent was allowed to publish go all the way through, under least privilege
        assert wait_until(lambda: committed(admin, admin.scorer_group, admin.topic_transitions) == 20, 120), \
            f"scorer log: {(logs / 'scorer-0.log').read_text()[-2000:]}"
        seen: list[int] = []

        def writer_settled() -> bool:  # committed past all 20 (plus transaction markers), then still
            seen.append(committed(admin, admin.writer_group, admin.topic_assessments))
            return len(seen) > 6 and seen[-1] >= 20 and len(set(seen[-6:])) == 1

        assert wait_until(writer_settled, 90, interval=0.5), \
            f"writer log: {(logs / 'writer.log').read_text()[-2000:]}"
    finally:
        codes = [slot.terminate(30) for slot in (scorer, writer)]
    assert codes == [0, 0], codes
    got = read_store(admin)
    assert got["event_ids"] == set(ids)
    for name in ("scorer-0.log", "writer.log"):
        assert "AUTHORIZATION_FAILED" not in (logs / name).read_text(), f"{name} was refused something it needs"


def test_kafka_access_one_shot_sets_each_principals_password_and_acls(
    secured: KraftCluster, settings_factory: Callable[..., Settings], tmp_path: Path,
) -> None:
    """compose's ``kafka-access`` service: run as the super user, it (re)sets every principal's SCRAM
    credential from SCRAM_PASSWORD_<ROLE> and applies the ACLs; the agent then writes transitions with
    its new password, and its old password no longer authenticates."""
    assert secured.users is not None
    admin = settings_factory(
        kafka_bootstrap=secured.bootstrap, kafka_security_protocol="SASL_PLAINTEXT",
        kafka_sasl_mechanism="SCRAM-SHA-512", kafka_sasl_username="admin",
        kafka_sasl_password=SecretStr(secured.users["admin"]))
    fresh = {role: secrets.token_urlsafe(16) for role in ROLES}
    env = {**os.environ, **settings_env(admin), "AGENTGOV_METRICS_PORT": "0",
           **{f"SCRAM_PASSWORD_{role.upper()}": pw for role, pw in fresh.items()}}
    done = subprocess.run([sys.executable, "-m", "consumers.kafka_access"], env=env, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    for pw in fresh.values():  # the passwords never reach a log line
        assert pw not in done.stdout + done.stderr
    old = secured.users["agent"]
    secured.users.update(fresh)  # later tests in this module use the new credentials

    agent = as_user(admin, secured, "agent")
    pub = TransitionPublisher(agent)
    pub.publish(draft(run_id="run-access"))
    pub.flush(30)
    assert pub.delivered == 1
    stale = TransitionPublisher(agent.model_copy(update={"kafka_sasl_password": SecretStr(old)}),
                                producer=Producer(agent.model_copy(update={"kafka_sasl_password": SecretStr(old)})
                                                  .kafka_config(**{"message.timeout.ms": 5000})))
    stale.publish(draft(run_id="run-stale"))
    with pytest.raises(PublishError):
        stale.flush(20)
    # missing a principal's password is a clear configuration error, not a half-applied cluster
    partial = {k: v for k, v in env.items() if k != "SCRAM_PASSWORD_READER"}
    done = subprocess.run([sys.executable, "-m", "consumers.kafka_access"], env=partial, capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 1 and "SCRAM_PASSWORD_READER" in done.stdout + done.stderr
