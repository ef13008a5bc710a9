"""Every Prometheus instrument agentgov exports, built against an injected ``CollectorRegistry``.

Labels come only from closed sets (enums of the schema, finding codes, severities, DLQ reasons,
partition numbers). No agent-supplied value ever becomes a label.

Example::

    registry = CollectorRegistry()
    metrics = Metrics(registry)
    metrics.dead_letters.labels(reason="bad_magic").inc()
"""

from __future__ import annotations

import logging
import threading
from wsgiref.simple_server import WSGIServer

from prometheus_client import (
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    Info,
    start_http_server,
)

from . import __version__
from .errors import ConfigError

log = logging.getLogger(__name__)

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
REBUILD_BUCKETS = (0.1, 0.5, 1.0, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0)
RISK_BUCKETS = (0, 10, 20, 30, 40, 50, 60, 70, 80, 90, 100)


class Metrics:
    """The metrics catalogue (see README, 'Metrics'). One instance per process."""

    def __init__(self, registry: CollectorRegistry = REGISTRY) -> None:
        self.registry = registry
        r = registry
        self.build_info = Info("agentgov_build", "agentgov build.", registry=r)
        self.build_info.info({"version": __version__})
        self.policy_info = Info(
            "agentgov_policy", "Governance policy file in force (version and SHA-256).", ["role"], registry=r
        )
        # -- throughput
        self.events_consumed = Counter(
            "agentgov_events_consumed_total", "Messages read from the transitions topic.", registry=r
        )
        self.transitions = Counter(
            "agentgov_transitions_total", "Transitions scored, by action and decision outcome.",
            ["action", "outcome"], registry=r,
        )
        self.assessments = Counter(
            "agentgov_assessments_total", "Assessments produced, by risk level.", ["risk_level"], registry=r
        )
        self.risk_score = Histogram(
            "agentgov_risk_score", "Distribution of risk scores (0-100).", buckets=RISK_BUCKETS, registry=r
        )
        # -- findings
        self.findings = Counter(
            "agentgov_findings_total", "Findings raised, by code, severity and category.",
            ["code", "severity", "category"], registry=r,
        )
        self.backdated = Counter(
            "agentgov_backdated_access_changes_total",
            "Access changes whose occurred_at is more than AGENTGOV_BACKDATED_HOURS before their record's timestamp "
            "on the transitions topic (scored and stored as usual).", registry=r,
        )
        self.findings_excepted = Counter(
            "agentgov_findings_excepted_total",
            "Findings covered by an approved risk exception: stored, kept out of the queue, never paged.",
            ["code", "severity"], registry=r,
        )
        self.exceptions_followed = Gauge(
            "agentgov_exceptions_followed", "Risk exceptions (any state) a scorer has read from the exceptions topic.",
            registry=r,
        )
        self.exceptions_approved = Gauge(
            "agentgov_exceptions_approved", "Risk exceptions a scorer holds in the approved (active) state, expired "
            "or not: what it can apply.", registry=r,
        )
        self.escalations = Counter(
            "agentgov_escalations_total", "Hidden-escalation chains detected, by pattern.", ["pattern"], registry=r
        )
        # -- pipeline health
        self.dead_letters = Counter(
            "agentgov_dead_letters_total", "Messages sent to the dead-letter topic, by reason.", ["reason"],
            registry=r,
        )
        self.poison = Counter(
            "agentgov_poison_records_total",
            "Records isolated so they could not stop a partition (dead-lettered), by role and reason "
            "(oversized, produce_failed, store_rejected).", ["role", "reason"], registry=r,
        )
        self.duplicates = Counter(
            "agentgov_duplicate_events_total",
            "Later copies of an already stored event_id, kept apart in the duplicates table (AG-EVD-005).",
            registry=r,
        )
        self.consumer_lag = Gauge(
            "agentgov_consumer_lag_messages", "Messages behind the high watermark, per partition.",
            ["role", "partition"], registry=r,
        )
        self.batches = Counter(
            "agentgov_batches_total", "Batches processed, by role and outcome.", ["role", "outcome"], registry=r
        )
        self.batch_duration = Histogram(
            "agentgov_batch_duration_seconds", "Wall time to process one batch.", ["role"],
            buckets=LATENCY_BUCKETS, registry=r,
        )
        self.rebuild_duration = Histogram(
            "agentgov_state_rebuild_duration_seconds",
            "Wall time to rebuild a stateful role's context from the log, on an assignment (a joining member "
            "waits for it) or a rewind (past AGENTGOV_MAX_POLL_INTERVAL_SECONDS it leaves the group).", ["role"],
            buckets=REBUILD_BUCKETS, registry=r,
        )
        self.paused = Gauge(
            "agentgov_consumer_paused", "1 while fetching is paused because the sink is failing.", ["role"],
            registry=r,
        )
        self.event_to_stored = Histogram(
            "agentgov_event_to_stored_latency_seconds",
            "From the event's occurred_at to its durable write in ClickHouse.", buckets=LATENCY_BUCKETS, registry=r,
        )
        self.event_to_scored = Histogram(
            "agentgov_event_to_scored_latency_seconds",
            "From the event's occurred_at to its assessment being produced.", buckets=LATENCY_BUCKETS, registry=r,
        )
        self.sink_insert_duration = Histogram(
            "agentgov_sink_insert_duration_seconds", "ClickHouse insert wall time.", ["table"],
            buckets=LATENCY_BUCKETS, registry=r,
        )
        self.sink_rows = Counter(
            "agentgov_sink_rows_total", "Rows written to ClickHouse, by table.", ["table"], registry=r
        )
        self.sink_errors = Counter(
            "agentgov_sink_errors_total", "Failed ClickHouse writes, by table and error kind.", ["table", "kind"],
            registry=r,
        )
        self.registry_errors = Counter(
            "agentgov_registry_errors_total",
            "Schema registry look-ups or registrations that got no answer; the batch was retried, not "
            "dead-lettered.", ["role"], registry=r,
        )
        self.publish_failures = Counter(
            "agentgov_publish_failures_total",
            "Events the SDK could not deliver, by reason (not_authorized, timed_out, other).", ["reason"],
            registry=r,
        )
        self.last_stored = Gauge(
            "agentgov_last_stored_timestamp_seconds", "Unix time of the last successful store write.", registry=r
        )
        self.baseline_age = Gauge(
            "agentgov_baseline_age_seconds", "Age of the drift baselines the scorer is using.", registry=r
        )
        # follower: baselines, exceptions, delegations (closed set: the compacted topics a role follows whole)
        self.follower_refused = Counter(
            "agentgov_follower_records_refused_total",
            "Records of a followed compacted topic (baselines, exceptions, delegations) refused: undecodable, "
            "invalid, out of range or from the future; logged and skipped, the follower went on.",
            ["follower"], registry=r,
        )
        self.follower_up = Gauge(
            "agentgov_follower_up",
            "1 while a follower thread of a compacted topic runs; 0 if it stopped (its data then freezes).",
            ["follower"], registry=r,
        )
        # -- correlator
        self.correlator_facts = Counter(
            "agentgov_correlator_facts_total", "Access facts the correlator consumed.", registry=r
        )
        self.correlator_late = Counter(
            "agentgov_correlator_late_facts_total",
            "Access facts that arrived after the grace period (judged; chains they complete with later facts are "
            "judged again, docs/guarantees.md).", registry=r
        )
        self.correlator_late_edges = Counter(
            "agentgov_correlator_late_edges_total",
            "Delegation edges read after grants they could complete (by the delegate or downstream of it) had "
            "been judged; those grants were judged again by delegation laundering (docs/guarantees.md).",
            registry=r
        )
        self.correlator_rejudge_cut = Counter(
            "agentgov_correlator_rejudge_truncated_total",
            "Late facts whose key's later facts were judged again only up to the limit (1,000): a chain completed "
            "further on may be missed.", registry=r
        )
        self.correlator_rule_errors = Counter(
            "agentgov_correlator_rule_errors_total",
            "Facts a cross-run rule raised on; the fact's judgement was skipped, the correlator went on (logged "
            "with the traceback).", registry=r
        )
        self.correlator_pending = Gauge(
            "agentgov_correlator_pending_facts", "Facts waiting for the event-time watermark.", registry=r
        )
        self.correlator_keys = Gauge(
            "agentgov_correlator_keys", "Entities (targets and agents) with judged facts in a correlator's retained "
            "window, over the partitions it owns; a key quiet for correlation_retain_seconds is forgotten.",
            registry=r,
        )
        self.up = Gauge("agentgov_process_up", "1 while the processing loop runs.", ["role"], registry=r)
        self.restarts = Counter(
            "agentgov_process_restarts_total",
            "What agentgov run's supervisor started again, by role (scorer, correlator, writer, broker) and why "
            "(stalled: a partition with records waiting delivered nothing for stall_seconds, and the scorer or "
            "correlator exited 75 or the writer rejoined its group; exited: the process died, or the writer's "
            "loop failed).",
            ["role", "reason"], registry=r,
        )
        # One series per recently detected chain, so a page can name the agent and run. Agent ids are
        # free text, so the set is a bounded ring (BoundedSeries): an agent cannot grow it past its cap.
        self.escalation_chain = Gauge(
            "agentgov_escalation_chain_detected",
            "Recently detected hidden-escalation chains (bounded ring; value is detection unix time).",
            ["pattern", "agent_id", "run_id"], registry=r,
        )
        self.escalation_ring = BoundedSeries(self.escalation_chain, capacity=64)


REVIEW_AGE_BUCKETS = (60.0, 300.0, 900.0, 1800.0, 3600.0, 4 * 3600.0, 8 * 3600.0, 24 * 3600.0, 72 * 3600.0,
                      7 * 86400.0, 30 * 86400.0)


class ReviewMetrics:
    """Instruments of the review app (``agentgov review``). Gauges are refreshed from the store by the app."""

    def __init__(self, registry: CollectorRegistry = REGISTRY) -> None:
        r = self.registry = registry
        self.open_findings = Gauge(
            "agentgov_review_open_findings", "Open findings in the review queue (new or acknowledged), by severity.",
            ["severity"], registry=r)
        self.sla_breaches = Gauge(
            "agentgov_review_sla_breaches",
            "Open findings past their triage SLA (policy review.sla_hours), by severity.",
            ["severity"], registry=r)
        self.time_to_acknowledge = Histogram(
            "agentgov_review_time_to_acknowledge_seconds", "From a finding's event to its acknowledgement.",
            ["severity"], buckets=REVIEW_AGE_BUCKETS, registry=r)
        self.time_to_close = Histogram(
            "agentgov_review_time_to_close_seconds", "From a finding's event to its closing.", ["severity"],
            buckets=REVIEW_AGE_BUCKETS, registry=r)
        self.exceptions = Gauge(
            "agentgov_review_exceptions", "Risk exceptions by state (requested, active, expired, rejected, revoked).",
            ["state"], registry=r)
        self.exceptions_expiring = Gauge(
            "agentgov_review_exceptions_expiring_7d", "Active risk exceptions that lapse within 7 days.", registry=r)
        self.decisions = Counter(
            "agentgov_review_decisions_total", "Review decisions published, by kind.", ["kind"], registry=r)
        self.refresh_errors = Counter(
            "agentgov_review_refresh_errors_total", "Failed refreshes of the review gauges from the store.",
            registry=r)
        self.login_failures = Counter(
            "agentgov_review_login_failures_total",
            "Failed logins (token mode): a wrong token at the login form or as a bearer token, by how it came.",
            ["via"], registry=r)
        for via in ("form", "bearer"):
            self.login_failures.labels(via=via)
        for sev in ("critical", "high", "medium"):
            self.open_findings.labels(severity=sev)
            self.sla_breaches.labels(severity=sev)
        for state in ("requested", "active", "expired", "rejected", "revoked"):
            self.exceptions.labels(state=state)


class RecertMetrics:
    """Recertification gauges of the review app, refreshed from the store by the scrape (campaigns.py)."""

    def __init__(self, registry: CollectorRegistry = REGISTRY) -> None:
        r = self.registry = registry
        self.campaigns = Gauge("agentgov_recert_campaigns", "Recertification campaigns by state (open, closed).",
                               ["state"], registry=r)
        self.items = Gauge(
            "agentgov_recert_items",
            "Items of open recertification campaigns by state (pending, certified, revoked): progress is "
            "decided/total.", ["state"], registry=r)
        self.overdue = Gauge("agentgov_recert_campaigns_overdue",
                             "Open recertification campaigns past their due date (nothing is auto-applied).",
                             registry=r)
        for state in ("open", "closed"):
            self.campaigns.labels(state=state)
        for state in ("pending", "certified", "revoked"):
            self.items.labels(state=state)


class BoundedSeries:
    """Keeps at most ``capacity`` label sets of a gauge alive, evicting the oldest.

    For the rare metrics whose labels must name an entity (the page has to say which agent), this is
    what keeps an adversarial agent from creating unbounded series."""

    def __init__(self, gauge: Gauge, capacity: int) -> None:
        self.gauge = gauge
        self.capacity = capacity
        self._order: list[tuple[str, ...]] = []
        self._lock = threading.Lock()

    def set(self, labels: tuple[str, ...], value: float) -> None:
        with self._lock:
            if labels in self._order:
                self._order.remove(labels)
            self._order.append(labels)
            self.gauge.labels(*labels).set(value)
            while len(self._order) > self.capacity:
                self.gauge.remove(*self._order.pop(0))

    def expire(self, older_than: float) -> None:
        """Drop series whose value (a unix time) is older than ``older_than``."""
        with self._lock:
            keep = []
            for labels in self._order:
                if self.gauge.labels(*labels)._value.get() < older_than:
                    self.gauge.remove(*labels)
                else:
                    keep.append(labels)
            self._order = keep


def serve(metrics: Metrics, port: int, addr: str = "127.0.0.1", *,
          hint: str = "set AGENTGOV_METRICS_PORT to a free port (0 disables)"
          ) -> tuple[WSGIServer, threading.Thread] | None:
    """Serve ``/metrics`` on ``addr:port`` (port 0 disables). Returns the server for shutdown. A port that
    cannot be served raises ConfigError with the address, the reason and ``hint``, not a traceback."""
    if port == 0:
        return None
    try:
        server, thread = start_http_server(port, addr=addr, registry=metrics.registry)
    except OSError as exc:
        raise ConfigError(f"cannot serve /metrics on {addr}:{port}: {exc.strerror}; {hint}") from exc
    log.info("metrics endpoint up", extra={"kv": {"addr": addr, "port": server.server_port}})
    return server, thread
