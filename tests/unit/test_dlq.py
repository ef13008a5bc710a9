"""Which dead letters ``agentgov dlq republish`` sends, and where (audit P6)."""

from __future__ import annotations

import pytest

from pipeline.dlq import DlqError, Letter, refusal, replay_topics, republish
from pipeline.settings import Settings


def _letter(topic: str | None) -> Letter:
    headers = (("agentgov.error.reason", b"invalid_value"),)
    if topic is not None:
        headers += (("agentgov.source.topic", topic.encode()),)
    return Letter(0, 7, b"k", b"payload", headers)


def test_only_the_input_topics_are_replayed_to_and_every_other_letter_is_refused_by_name() -> None:
    s = Settings()
    assert replay_topics(s) == (s.topic_transitions, s.topic_assessments)
    for topic in replay_topics(s):
        assert refusal(s, _letter(topic)) is None
    for topic in (s.topic_baselines, s.topic_exceptions, s.topic_decisions, s.topic_delegations,
                  s.topic_facts_by_target, s.topic_dlq, "elsewhere\x1b[2J"):
        why = refusal(s, _letter(topic))
        assert why is not None and why.startswith("dead letter 0:7 names source topic") and "\x1b" not in why
    assert refusal(s, _letter(None)) == "dead letter 0:7 names no source topic"


def test_republish_refuses_a_letter_naming_another_topic_before_sending_anything() -> None:
    s = Settings.load(kafka_bootstrap="127.0.0.1:1")
    with pytest.raises(DlqError, match="not one dead letters are re-published to"):
        republish(s, [_letter(s.topic_transitions), _letter(s.topic_baselines)])
