"""Topic names and creation. Names carry the version (``agentgov.transitions.v1``)."""

from __future__ import annotations

import logging

from confluent_kafka import KafkaError, KafkaException
from confluent_kafka.admin import AdminClient, ConfigResource, NewTopic, ResourceType

from .settings import Settings

log = logging.getLogger(__name__)


def ensure_topics(settings: Settings, timeout: float = 30.0) -> None:
    """Create agentgov's topics if missing. Idempotent."""
    admin = AdminClient(settings.kafka_config())
    existing = set(admin.list_topics(timeout=timeout).topics)
    retention = str(7 * 24 * 3600 * 1000)
    wanted = [
        # The broker stamps each event's record with its own clock (LogAppendTime): the time an event reached
        # the log is evidence (backdating, exception coverage, the replay window), which a producer's own
        # timestamp (CreateTime, the default) lets any agent with a raw Kafka client set as it likes.
        NewTopic(settings.topic_transitions, settings.topic_partitions, settings.topic_replication,
                 config={"retention.ms": retention, "message.timestamp.type": "LogAppendTime"}),
        NewTopic(settings.topic_assessments, settings.topic_partitions, settings.topic_replication,
                 config={"retention.ms": retention}),
        NewTopic(settings.topic_dlq, settings.topic_partitions, settings.topic_replication,
                 config={"retention.ms": str(30 * 24 * 3600 * 1000)}),
        NewTopic(settings.topic_baselines, 1, settings.topic_replication, config={"cleanup.policy": "compact"}),
        # Review decisions are the audit record of people: keep them as long as the store keeps events.
        NewTopic(settings.topic_decisions, settings.topic_partitions, settings.topic_replication,
                 config={"retention.ms": str(settings.retention_days * 24 * 3600 * 1000)}),
        # Scorers read the latest version of every exception from the start, as they read baselines.
        NewTopic(settings.topic_exceptions, 1, settings.topic_replication, config={"cleanup.policy": "compact"}),
        NewTopic(settings.topic_remediations, settings.topic_partitions, settings.topic_replication,
                 config={"retention.ms": str(30 * 24 * 3600 * 1000)}),
        # The correlation stage (facts.py): entity-keyed facts, holdings of any age, the delegation graph.
        NewTopic(settings.topic_facts_by_target, settings.facts_partitions, settings.topic_replication,
                 config={"retention.ms": retention}),
        NewTopic(settings.topic_facts_by_agent, settings.facts_partitions, settings.topic_replication,
                 config={"retention.ms": retention}),
        NewTopic(settings.topic_holdings, settings.facts_partitions, settings.topic_replication,
                 config={"cleanup.policy": "compact"}),
        NewTopic(settings.topic_delegations, 1, settings.topic_replication, config={"cleanup.policy": "compact"}),
        NewTopic(settings.topic_correlations, settings.topic_partitions, settings.topic_replication,
                 config={"retention.ms": retention}),
    ]
    missing = [t for t in wanted if t.topic not in existing]
    created: set[str] = set()
    if missing:
        for topic, future in admin.create_topics(missing, request_timeout=timeout).items():
            try:
                future.result()
                created.add(topic)
                log.info("topic created", extra={"kv": {"topic": topic}})
            except KafkaException as exc:
                if exc.args[0].code() != KafkaError.TOPIC_ALREADY_EXISTS:
                    raise
    if settings.topic_transitions not in created:  # it was there before: made with whatever it was made with
        check_log_time(admin, settings.topic_transitions, timeout)


LOG_APPEND_FIX = ("kafka-configs.sh --bootstrap-server BROKER --alter --entity-type topics --entity-name {topic} "
                  "--add-config message.timestamp.type=LogAppendTime")


def check_log_time(admin: AdminClient, topic: str, timeout: float = 30.0) -> bool:
    """Whether ``topic`` stamps records with the broker's clock (LogAppendTime); warns when it does not.

    ``ensure_topics`` creates the transitions topic so, but changes no topic that exists: one created before
    (or by hand) keeps the producer's time, which a raw producer sets as it likes (docs/guarantees.md, "Log
    time"). Changing a topic's configuration is the operator's call (it needs AlterConfigs, which the
    pipeline's principals do not hold), so this says what to run instead. A broker that does not answer is
    logged and taken as unknown (True): the check must not stop a start."""
    resource = ConfigResource(ResourceType.TOPIC, topic)
    try:
        configs = admin.describe_configs([resource], request_timeout=timeout)[resource].result(timeout)
    except (KafkaException, KeyError) as exc:
        log.info("could not read the topic's timestamp type", extra={"kv": {"topic": topic, "error": str(exc)[:200]}})
        return True
    entry = configs.get("message.timestamp.type")
    kind = entry.value if entry is not None else None
    if kind == "LogAppendTime":
        return True
    log.warning("records of the transitions topic carry the producer's time, not the broker's: an agent can "
                "forge when an event reached the log", extra={"kv": {
                    "topic": topic, "message.timestamp.type": kind, "fix": LOG_APPEND_FIX.format(topic=topic)}})
    return False
