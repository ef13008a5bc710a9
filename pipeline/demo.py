"""``agentgov demo``: stream the synthetic workload through the whole pipeline and summarise from ClickHouse."""

from __future__ import annotations

import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, TextIO

from confluent_kafka import Consumer

from .errors import ConfigError
from .progress import Counts, PipelineProbe, StreamProgress
from .publisher import TransitionPublisher
from .runner import Pipeline
from .settings import Settings, redact_urls
from .sinks.clickhouse import ClickHouseSink
from .workload import BAD_INPUTS, PLANTED, PLANTED_CROSS_RUN, Workload


@dataclass
class DemoResult:
    published: int = 0
    stored: int = 0
    dead_letters: Counter[str] = field(default_factory=Counter)
    seconds: float = 0.0
    findings_by_code: dict[str, int] = field(default_factory=dict)
    caught: dict[str, bool] = field(default_factory=dict)
    benign_findings: int = 0
    benign_events: int = 0
    escalation_chains: list[dict[str, Any]] = field(default_factory=list)

    @property
    def events_per_second(self) -> float:
        return self.stored / self.seconds if self.seconds else 0.0


def count_dead_letters(settings: Settings, expected: int, timeout: float = 30.0) -> Counter[str]:
    consumer = Consumer(settings.consumer_config(f"agentgov-demo-dlq-{uuid.uuid4()}"))
    consumer.subscribe([settings.topic_dlq])
    reasons: Counter[str] = Counter()
    deadline = time.monotonic() + timeout
    try:
        while sum(reasons.values()) < expected and time.monotonic() < deadline:
            for msg in consumer.consume(500, 0.5):
                if msg.error():
                    continue
                headers = dict(msg.headers() or [])
                reasons[headers.get("agentgov.error.reason", b"?").decode()] += 1
    finally:
        consumer.close()
    return reasons


def summarise(sink: ClickHouseSink, result: DemoResult) -> None:
    # findings holds the cross-run ones too (migration 006): one read, each finding once
    rows = sink.query("SELECT code, count() AS n FROM {db}.findings FINAL GROUP BY code ORDER BY code")
    result.findings_by_code = {r["code"]: int(r["n"]) for r in rows}
    per_scenario = sink.query(
        "SELECT t.attributes['demo.scenario'] AS scenario, groupUniqArray(f.code) AS codes, "
        "uniqExact(t.event_id) AS events, countIf(f.code != '') AS findings "
        "FROM {db}.transitions AS t FINAL LEFT JOIN (SELECT event_id, code FROM {db}.findings FINAL "
        "UNION ALL SELECT event_id, arrayJoin(finding_codes) AS code FROM {db}.duplicates) AS f "
        "ON f.event_id = t.event_id GROUP BY scenario")
    codes = {r["scenario"]: set(r["codes"]) - {""} for r in per_scenario}
    for r in per_scenario:
        if r["scenario"] == "benign":
            result.benign_findings = int(r["findings"])
            result.benign_events = int(r["events"])
    result.caught = {scenario: code in codes.get(scenario, set())
                     for scenario, code in (PLANTED | PLANTED_CROSS_RUN).items()}
    result.escalation_chains = sink.query(
        "SELECT code, agent_id, run_id, length(related_event_ids) AS steps FROM {db}.findings FINAL "
        "WHERE category = 'escalation' ORDER BY code")


def prepare_store(settings: Settings, keep: bool = False) -> None:
    """Make the configured store ready for a demo: an earlier demo's data is replaced (unless ``keep``);
    a store holding anything a demo did not write is left alone and the demo refuses to run on it."""
    from .sinks.clickhouse import chdb_path

    path = chdb_path(settings.clickhouse_dsn)
    if path is not None and not (path / "metadata").is_dir():
        return  # a fresh store
    sink = ClickHouseSink.connect(settings)
    try:
        tables = sink.query("SELECT name FROM system.tables WHERE database = {d:String}",
                            {"d": sink.database})
        if not any(t["name"] == "transitions" for t in tables):
            return
        foreign = sink.query("SELECT count() AS n FROM {db}.transitions WHERE attributes['demo.scenario'] = ''")
        if foreign and int(foreign[0]["n"]):
            shown = redact_urls(settings.clickhouse_dsn)
            raise ConfigError(
                f"the audit store at {shown} holds {int(foreign[0]['n']):,} events that no demo "
                "wrote; the demo will not mix with or replace them: point AGENTGOV_CLICKHOUSE_DSN at another "
                "store, e.g. AGENTGOV_CLICKHOUSE_DSN=chdb://.agentgov/demo-chdb", dsn=shown)
        if not keep:
            sink.client.command(f"DROP DATABASE IF EXISTS {sink.database} SYNC")
    finally:
        sink.close()


def run_demo(settings: Settings, events: int, scorers: int, out: TextIO | None = None,
             every: float = 5.0) -> DemoResult:
    result = DemoResult()
    ops = list(Workload(cross_run=True).ops(events))
    bad = sum(1 for op in ops if op.scenario in BAD_INPUTS)
    skipped = sum(1 for op in ops if op.kind == "record" and op.send == "skip")
    with Pipeline(settings, scorers=scorers, log_dir=settings.state_dir) as pipe:
        pub = TransitionPublisher(pipe.settings)
        probe = PipelineProbe(pipe.settings)
        result.published = len(ops) - skipped
        want = result.published - bad
        sent = 0

        def counts() -> Counts:
            return Counts(published=sent, scored=probe.scored(), stored=pipe.writer.stored if pipe.writer else 0)

        started = time.monotonic()
        with StreamProgress(result.published, counts, stored_total=want, out=out, every=every):
            for op in ops:
                op.publish(pub)
                if not (op.kind == "record" and op.send == "skip"):
                    sent += 1
            pub.flush()
            while pipe.writer is not None and pipe.writer.stored < want and time.monotonic() - started < 600:
                time.sleep(0.1)
        result.seconds = time.monotonic() - started
        # Cross-run chains are judged by the correlators and stored beside the assessments.
        store, deadline = pipe.correlation_store, time.monotonic() + 60
        while store is not None and store.stored < len(PLANTED_CROSS_RUN) and time.monotonic() < deadline:
            time.sleep(0.2)
        result.stored = pipe.writer.stored if pipe.writer else 0
        probe.close()
        result.dead_letters = count_dead_letters(pipe.settings, bad)
    assert pipe.sink is not None  # the writer has stopped: this process may read the store now
    summarise(pipe.sink, result)
    return result


def next_steps(result: DemoResult, settings: Settings) -> list[str]:
    """The commands worth trying after the demo, each runnable as printed (a test runs them)."""
    chains = sorted(result.escalation_chains, key=lambda c: c["code"])
    steps = []
    if chains:
        steps.append((f"agentgov trail {chains[0]['run_id']}", f"the planted {chains[0]['code']} chain, step by step"))
    steps.append(("agentgov export --min-score 50 -o risky.jsonl", "the risky assessments, as JSON lines"))
    if settings.metrics_port:
        steps.append(("agentgov run", f"then http://{settings.metrics_addr}:{settings.metrics_port}/metrics "
                                      "(Ctrl-C stops)"))
    return [f"{cmd:<46} # {why}" for cmd, why in steps]


def render(result: DemoResult, settings: Settings | None = None) -> str:
    lines = [
        f"events published   {result.published:,}",
        f"assessments stored {result.stored:,} in {result.seconds:.1f}s ({result.events_per_second:,.0f} events/s)",
        "dead letters       " + (", ".join(f"{k}={v}" for k, v in sorted(result.dead_letters.items())) or "none"),
        "",
        "planted violations:",
    ]
    for scenario, code in (PLANTED | PLANTED_CROSS_RUN).items():
        mark = "caught " if result.caught.get(scenario) else "MISSED "
        lines.append(f"  {mark} {scenario:<28} {code}")
    lines += ["", f"benign events {result.benign_events:,}, findings on them (false positives): "
              f"{result.benign_findings}", "", "findings by code:"]
    lines += [f"  {code:<12} {n:,}" for code, n in result.findings_by_code.items()]
    if result.escalation_chains:
        lines += ["", "hidden escalation chains (these page the SOC):"]
        lines += [f"  {c['code']} agent={c['agent_id']} run={c['run_id']} steps={c['steps']}"
                  for c in result.escalation_chains]
    if settings is not None:
        lines += ["", f"stored in {redact_urls(settings.clickhouse_dsn)}. Try next:"]
        lines += [f"  {step}" for step in next_steps(result, settings)]
    return "\n".join(lines)
