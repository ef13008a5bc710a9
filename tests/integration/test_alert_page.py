"""End to end on real components: benign traffic with one hidden-escalation chain in it pages the SOC
exactly once, through the project's Prometheus rules and Alertmanager routing, and nothing else pages."""

from __future__ import annotations

import runpy
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from pipeline.broker import free_port
from pipeline.metrics import Metrics, serve
from pipeline.publisher import TransitionPublisher
from pipeline.runner import Pipeline
from pipeline.settings import Settings
from pipeline.workload import Op, Workload
from tests.integration.alerting import Alertmanager, Prometheus, Webhook
from tests.support.helpers import wait_until

pytestmark = pytest.mark.integration
RULES = sorted(Path("compose/prometheus/rules").glob("*.yml"))
CHAIN = "esc_group_nesting"


def _firing(hook: Webhook, path: str) -> list[dict]:
    return [a for body in hook.on(path) for a in body["alerts"] if a["status"] == "firing"]


def test_hidden_escalation_pages_once(
    tmp_path: Path,
    settings_factory: Callable[..., Settings],
    publisher_factory: Callable[..., TransitionPublisher],
    pipeline_factory: Callable[..., Pipeline],
) -> None:
    settings = settings_factory()
    scorer_port, writer_port, correlator_port = free_port(), free_port(), free_port()
    metrics = Metrics(CollectorRegistry())
    served = serve(metrics, writer_port)
    assert served is not None
    # As deployed: a correlator too, scraped as agentgov-correlator (without one, AgentgovCorrelatorDown pages).
    pipe = pipeline_factory(settings, scorers=1, metrics=metrics, scorer_metrics_ports=[scorer_port],
                            correlators=1, correlator_metrics_ports=[correlator_port])
    render = runpy.run_path("compose/alertmanager/render.py")["render"]

    with Webhook() as hook:
        config = render(pager_url=hook.url + "/pager", ticket_url=hook.url + "/ticket", fast=True)
        with Alertmanager(tmp_path, config) as am, Prometheus(
            tmp_path,
            {"agentgov-scorer": [f"127.0.0.1:{scorer_port}"], "agentgov-writer": [f"127.0.0.1:{writer_port}"],
             "agentgov-correlator": [f"127.0.0.1:{correlator_port}"]},
            RULES, am.url,
        ) as prom:
            pub = publisher_factory(settings)
            ops = list(Workload(seed=11, planted=True, bad_inputs=False).ops(3000))
            benign = [op for op in ops if op.scenario == "benign"]
            chain: list[Op] = [op for op in ops if op.scenario == CHAIN]
            assert len(chain) >= 3
            for op in benign[:1500]:
                op.publish(pub)
            pub.flush()
            # let Prometheus see healthy, benign traffic for a while: nothing may page
            assert pipe.wait_stored(1500, timeout=90)
            time.sleep(6)
            assert _firing(hook, "/pager") == [], "benign traffic paged"

            for op in chain:
                op.publish(pub)
            for op in benign[1500:]:
                op.publish(pub)
            pub.flush()
            chain_sent = time.time()

            assert wait_until(lambda: bool(_firing(hook, "/pager")), 90, 0.1), (
                f"no page; alerts in Prometheus: {prom.alerts()}")
            paged_at = min(t for p, body, t in hook.received if p == "/pager")
            time.sleep(8)  # any duplicate page would arrive within a few group intervals

    pages = _firing(hook, "/pager")
    notifications = [(t, b["groupKey"], [(a["fingerprint"], a["startsAt"]) for a in b["alerts"]])
                     for _, b, t in hook.received]
    assert len(pages) == 1, notifications
    page = pages[0]
    labels, annotations = page["labels"], page["annotations"]
    assert labels["alertname"] == "AgentgovHiddenEscalation"
    assert labels["severity"] == "critical"
    assert labels["pattern"] == "group_nesting"
    assert labels["agent_id"] == chain[-1].payload["agent"]["agent_id"]
    assert labels["run_id"] == chain[-1].payload["run_id"]
    assert f"agentgov trail {labels['run_id']}" in annotations["description"]
    assert annotations["runbook_url"].endswith("hidden-escalation.md")
    print(f"\nchain's last event -> page: {paged_at - chain_sent:.1f}s")
    served[0].shutdown()
