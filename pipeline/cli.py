"""The ``agentgov`` command line."""

from __future__ import annotations

import json
import logging
import signal
import sys
import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import click

from .errors import AgentgovError, ConfigError
from .logs import configure_logging
from .settings import Settings

log = logging.getLogger("agentgov")


def _settings(**overrides: Any) -> Settings:
    settings = Settings.load(**overrides)
    configure_logging(settings.log_level, settings.log_format)
    return settings


def _fail(exc: AgentgovError) -> None:
    click.echo(f"agentgov: {exc}", err=True)
    sys.exit(2)


@click.group()
def main() -> None:
    """agentgov: governance pipeline for AI agents that make IAM decisions."""


@main.command()
@click.option("--scorers", default=2, show_default=True, help="Scorer processes to run.")
def run(scorers: int) -> None:
    """Run the pipeline: broker (embedded unless AGENTGOV_KAFKA_BOOTSTRAP), scorers, writer, metrics."""
    from .metrics import Metrics, serve
    from .runner import Pipeline

    try:
        settings = _settings()
        metrics = Metrics()
        serve(metrics, settings.metrics_port, settings.metrics_addr)
        settings.state_dir.mkdir(parents=True, exist_ok=True)
        pipe = Pipeline(settings, scorers=scorers, metrics=metrics, log_dir=settings.state_dir).start()
    except AgentgovError as exc:
        _fail(exc)
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    click.echo(f"agentgov running: kafka {pipe.settings.bootstrap()}, store {settings.clickhouse_dsn}, "
               f"metrics :{settings.metrics_port} (scorers :{settings.metrics_port + 1}..). Ctrl-C stops.", err=True)
    stop.wait()
    pipe.stop()


@main.command()
@click.option("--events", default=50_000, show_default=True, help="About how many events to stream.")
@click.option("--scorers", default=2, show_default=True)
@click.option("--keep", is_flag=True, help="Keep the demo store from a previous run.")
def demo(events: int, scorers: int, keep: bool) -> None:
    """Stream a synthetic JML workload with planted violations, then summarise from ClickHouse."""
    import shutil

    from .demo import render, run_demo

    try:
        base = Settings.load()
        store = base.state_dir / "demo-chdb"
        if not keep and store.exists():
            shutil.rmtree(store)
        settings = _settings(clickhouse_dsn=base.clickhouse_dsn if "AGENTGOV_CLICKHOUSE_DSN" in __import__("os").environ
                             else f"chdb://{store}")
        settings.state_dir.mkdir(parents=True, exist_ok=True)
        result = run_demo(settings, events, scorers)
    except AgentgovError as exc:
        _fail(exc)
    click.echo(render(result))


@main.command()
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
def publish(file: Path) -> None:
    """Publish events from a JSON-lines FILE (the schema's JSON form); reports accepted/rejected by line."""
    from .publisher import EventInvalid, TransitionPublisher

    try:
        settings = _settings()
        accepted, rejected = 0, 0
        with TransitionPublisher(settings) as pub:
            for lineno, line in enumerate(file.read_text().splitlines(), 1):
                if not line.strip():
                    continue
                try:
                    pub.publish(json.loads(line))
                    accepted += 1
                except json.JSONDecodeError as exc:
                    rejected += 1
                    click.echo(f"{file}:{lineno}: not JSON: {exc}", err=True)
                except EventInvalid as exc:
                    rejected += 1
                    click.echo(f"{file}:{lineno}: {exc}", err=True)
    except AgentgovError as exc:
        _fail(exc)
    click.echo(f"accepted {accepted}, rejected {rejected}")
    sys.exit(1 if rejected else 0)


@main.command()
def topics() -> None:
    """Create agentgov's topics on the configured cluster (idempotent)."""
    from .topics import ensure_topics

    try:
        settings = _settings()
        if settings.embedded_broker:
            raise ConfigError("set AGENTGOV_KAFKA_BOOTSTRAP: `agentgov run` creates topics on the embedded broker")
        ensure_topics(settings)
    except AgentgovError as exc:
        _fail(exc)
    click.echo("topics ready")


@main.command()
def migrate() -> None:
    """Apply the ClickHouse DDL (idempotent)."""
    from .sinks.clickhouse import ClickHouseSink

    try:
        sink = ClickHouseSink.connect(_settings())
        applied = sink.migrate()
    except AgentgovError as exc:
        _fail(exc)
    click.echo(f"applied migrations: {applied or 'none (up to date)'}")


@main.command()
@click.argument("run_id")
@click.option("--json", "as_json", is_flag=True, help="JSON output.")
def trail(run_id: str, as_json: bool) -> None:
    """Reconstruct RUN_ID for an auditor: every step, inputs, policy, authority, approval, findings."""
    from .audit import render_trail, to_json
    from .audit import trail as load_trail
    from .sinks.clickhouse import ClickHouseSink

    try:
        steps = load_trail(ClickHouseSink.connect(_settings()), run_id)
    except AgentgovError as exc:
        _fail(exc)
    click.echo(to_json(steps) if as_json else render_trail(steps))
    sys.exit(0 if steps else 1)


@main.command()
@click.option("--since", type=click.DateTime(), default=None, help="UTC start (default: 24h ago).")
@click.option("--until", type=click.DateTime(), default=None, help="UTC end (default: now).")
@click.option("--run", "run_id", default="")
@click.option("--agent", "agent_id", default="")
@click.option("--min-score", default=0, type=click.IntRange(0, 100))
@click.option("-o", "--output", type=click.File("w"), default="-")
def export(since: datetime | None, until: datetime | None, run_id: str, agent_id: str, min_score: int,
           output: Any) -> None:
    """Write assessments with their findings as JSON lines."""
    from .audit import export as load_export
    from .audit import to_json
    from .sinks.clickhouse import ClickHouseSink

    until = until or datetime.now(UTC).replace(tzinfo=None)
    since = since or until - timedelta(days=1)
    try:
        sink = ClickHouseSink.connect(_settings())
        n = 0
        for doc in load_export(sink, since=since, until=until, run_id=run_id, agent_id=agent_id,
                               min_score=min_score):
            output.write(to_json(doc) + "\n")
            n += 1
    except AgentgovError as exc:
        _fail(exc)
    click.echo(f"exported {n} assessments", err=True)


@main.command()
@click.option("--format", "fmt", type=click.Choice(["text", "json", "markdown"]), default="text")
def rules(fmt: str) -> None:
    """Print the rule catalogue: code, severity, meaning, evidence fields, OWASP/NIST refs."""
    from .scoring import catalogue

    render = getattr(catalogue, "render_catalogue", None)
    if render is None:
        for spec in catalogue.CATALOGUE.values():
            click.echo(f"{spec.code}  {spec.severity.value:<8} {spec.title}")
        return
    click.echo(render(fmt))


@main.group()
def policy() -> None:
    """Governance policy files."""


@policy.command("check")
@click.argument("file", type=click.Path(dir_okay=False, path_type=Path))
def policy_check(file: Path) -> None:
    """Validate a policy FILE; print its version and hash."""
    from .scoring.policy import check_policy

    try:
        summary = check_policy(file)
    except ConfigError as exc:
        click.echo(f"invalid: {exc}", err=True)
        sys.exit(1)
    click.echo(summary)


@main.group(invoke_without_command=True)
@click.pass_context
def review(ctx: click.Context) -> None:
    """The review workbench: `agentgov review` (= serve) and `agentgov review export`."""
    if ctx.invoked_subcommand is None:
        ctx.invoke(review_serve)


@review.command("serve")
@click.option("--scorers", default=1, show_default=True, help="With an embedded store: scorers of the pipeline.")
def review_serve(scorers: int) -> None:
    """Serve the workbench on AGENTGOV_REVIEW_ADDR:AGENTGOV_REVIEW_PORT.

    With an embedded store (chdb://, one process per path) the pipeline runs in this process too, as
    `agentgov run` does; with a ClickHouse server the app only reads it and publishes to Kafka."""
    from .review.serve import serve_review

    try:
        serve_review(_settings(), scorers=scorers)
    except AgentgovError as exc:
        _fail(exc)


@review.command("export")
@click.option("--since", type=click.DateTime(), required=True, help="UTC start.")
@click.option("-o", "--output", type=click.File("w"), default="-")
def review_export(since: datetime, output: Any) -> None:
    """Write review decisions and exception versions since --since as JSON lines (for auditors)."""
    from .audit import to_json
    from .review.store import ReviewStore
    from .sinks.clickhouse import ClickHouseSink

    try:
        rows = ReviewStore(ClickHouseSink.connect(_settings())).export(since)
    except AgentgovError as exc:
        _fail(exc)
    for row in rows:
        output.write(to_json(row) + "\n")
    click.echo(f"exported {len(rows)} review records", err=True)


@main.command()
def scorer() -> None:
    """Run one scoring consumer (same as python -m consumers.scorer)."""
    from consumers.scorer import main as scorer_main

    sys.exit(scorer_main())


@main.command()
def writer() -> None:
    """Run the ClickHouse writer (same as python -m consumers.writer)."""
    from consumers.writer import main as writer_main

    sys.exit(writer_main())


if __name__ == "__main__":
    main()
