"""An agent cannot blow up Prometheus: 10,000 distinct agent ids, resources and free-text values leave the
number of series on /metrics bounded."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from pipeline.broker import free_port
from pipeline.drafts import draft
from pipeline.publisher import TransitionPublisher
from pipeline.runner import Pipeline
from pipeline.schemas import SchemaSet
from pipeline.serde import Serde
from pipeline.settings import Settings
from tests.support.helpers import scrape, wait_until

pytestmark = pytest.mark.integration

DISTINCT = 10_000


def _events(pub: TransitionPublisher, n: int, offset: int) -> list[bytes]:
    serde: Serde = pub.serde
    out = []
    for i in range(offset, offset + n):
        doc = draft(
            run_id=f"run-{i}",
            **{
                "agent.agent_id": f"agent-{i}",
                "agent.on_behalf_of": f"principal-{i}",
                "target.identity_id": f"user-{i}",
                "resource.system": f"system-{i}",
                "resource.resource_id": f"res-{i}",
                "resource.entitlement": f"ent-{i}",
                "resource.privilege_tier": i % 4,
                "decision.authority": ("model", "policy_engine")[i % 2],
                "attributes": {f"free-{i}": f"text {i} \N{SNOWMAN}"},
                "inputs_used": [{"name": f"attr-{i}", "source": f"src-{i}"}],
            },
        )
        out.append(serde.encode(pub.complete(doc)))
    return out


def test_series_count_stays_bounded(
    settings_factory: Callable[..., Settings],
    publisher_factory: Callable[..., TransitionPublisher],
    pipeline_factory: Callable[..., Pipeline],
) -> None:
    settings = settings_factory()
    port = free_port()
    pipe = pipeline_factory(settings, scorers=1, scorer_metrics_ports=[port])
    pub = publisher_factory(settings, serde=Serde(SchemaSet.load()))

    def series() -> int:
        return len(scrape(port))

    # a first, small wave fixes the label sets that legitimately exist
    for value in _events(pub, 200, 0):
        pub.producer.produce(settings.topic_transitions, value, key=b"k")
    pub.flush()
    assert pipe.wait_stored(200, timeout=90)
    assert wait_until(lambda: scrape(port).get(("agentgov_events_consumed_total", ()), 0) == 200, 20)
    before = series()

    for i, value in enumerate(_events(pub, DISTINCT, 200)):
        pub.producer.produce(settings.topic_transitions, value, key=str(i).encode())
        if i % 1000 == 0:
            pub.producer.poll(0)
    pub.flush()
    assert pipe.wait_stored(200 + DISTINCT, timeout=180)
    assert wait_until(lambda: scrape(port).get(("agentgov_events_consumed_total", ()), 0) == 200 + DISTINCT, 30)
    after = series()
    text_labels = {labels for (_, labels) in scrape(port)}
    assert not any("agent-" in v or "user-" in v or "free-" in v for labels in text_labels for _, v in labels)
    # growth is bounded by the closed sets (and the 64-series escalation ring), not by the 10,000 ids
    assert after - before <= 100, f"series grew from {before} to {after}"
    writer_series = len(list(pipe.metrics.registry.collect()))
    assert writer_series < 60
