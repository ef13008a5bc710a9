"""The ``agentgov`` command line."""

from __future__ import annotations

import json
import logging
import os
import signal
import sys
import threading
import traceback
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, NoReturn

import click

from .errors import AgentgovError, ConfigError
from .failures import Exit, explain
from .logs import configure_logging
from .settings import Settings, redact_urls

log = logging.getLogger("agentgov")


def _settings(**overrides: Any) -> Settings:
    settings = Settings.load(**overrides)
    configure_logging(settings.log_level, settings.log_format)
    return settings


def _fail(exc: AgentgovError) -> NoReturn:
    """Hand ``exc`` to the one error path (:meth:`AgentgovCli.invoke`)."""
    raise exc


def _debug(ctx: click.Context) -> bool:
    root = ctx.find_root()
    return bool(root.params.get("debug")) or os.environ.get("AGENTGOV_LOG_LEVEL", "").lower() == "debug"


class AgentgovCli(click.Group):
    """The one error path: any exception from a command becomes one or two lines on stderr and the exit code
    of its kind (:class:`pipeline.failures.Exit`); ``--debug`` or AGENTGOV_LOG_LEVEL=debug adds the traceback."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except (click.exceptions.ClickException, click.exceptions.Exit, click.exceptions.Abort):
            raise
        except (Exception, KeyboardInterrupt) as exc:
            failure = explain(exc)
            if _debug(ctx):
                traceback.print_exception(exc, file=sys.stderr)
            click.echo(failure.text(), err=True)
            ctx.exit(int(failure.code))


@click.group(cls=AgentgovCli)
@click.option("--debug", is_flag=True, help="Show the traceback when a command fails.")
def main(debug: bool) -> None:
    """agentgov: governance pipeline for AI agents that make IAM decisions.

    Exit codes: 0 ok, 1 not all done (rejected lines, no such run), 2 usage, 3 settings, 4 policy,
    5 no store, 6 store in use, 7 store error, 8 broker unreachable, 9 events undelivered, 70 internal error
    (README.md, "Exit codes")."""
    if not _asks_for_help(sys.argv[1:]):  # help works whatever the environment holds
        Settings.load()  # every command, even `rules`, rejects unknown or invalid AGENTGOV_* variables


def _asks_for_help(args: list[str]) -> bool:
    return "--help" in args


@main.command()
@click.option("--scorers", default=2, show_default=True, help="Scorer processes to run.")
def run(scorers: int) -> None:
    """Run the pipeline: broker (embedded unless AGENTGOV_KAFKA_BOOTSTRAP), scorers, writer, metrics."""
    from .broker import probe
    from .metrics import Metrics, serve
    from .runner import Pipeline
    from .scoring.policy import load_policy

    settings = _settings()
    load_policy(settings.policy_file)  # an invalid policy stops here, before anything starts
    if not settings.starts_embedded_broker:
        probe(settings)  # say "unreachable" in seconds, not after the topic admin's 30 s timeout
    metrics = Metrics()
    serve(metrics, settings.metrics_port, settings.metrics_addr,
          hint="is another `agentgov run` up? Stop it, or set AGENTGOV_METRICS_PORT (0 disables)")
    settings.state_dir.mkdir(parents=True, exist_ok=True)
    pipe = Pipeline(settings, scorers=scorers, metrics=metrics, log_dir=settings.state_dir)
    try:
        pipe.start()
    except BaseException:
        pipe.stop()  # no broker or scorer outlives a failed start
        raise
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    click.echo(f"agentgov running: kafka {pipe.settings.bootstrap()}, store {redact_urls(settings.clickhouse_dsn)}, "
               f"metrics :{settings.metrics_port} (scorers and correlators on the ports after it). Ctrl-C stops.",
               err=True)
    stop.wait()
    pipe.stop()


@main.command()
@click.option("--events", default=50_000, show_default=True, help="About how many events to stream.")
@click.option("--scorers", default=2, show_default=True, type=click.IntRange(1, 64))
@click.option("--keep", is_flag=True, help="Add to the previous demo's data instead of replacing it.")
def demo(events: int, scorers: int, keep: bool) -> None:
    """Stream a synthetic JML workload with planted violations into the audit store, then summarise it.

    Uses the same store as `agentgov run`, `trail` and `export` (AGENTGOV_CLICKHOUSE_DSN, default
    .agentgov/chdb); it replaces an earlier demo's data but never a store holding other data."""
    from .demo import prepare_store, render, run_demo

    signal.signal(signal.SIGTERM, signal.default_int_handler)  # unwind: stop the broker and scorers too
    settings = _settings()
    settings.state_dir.mkdir(parents=True, exist_ok=True)
    prepare_store(settings, keep=keep)
    result = run_demo(settings, events, scorers)
    click.echo(render(result, settings))


@main.command()
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
def publish(file: Path) -> None:
    """Publish events from a JSON-lines FILE (the schema's JSON form); reports accepted/rejected by line.

    Exits 1 if any line was rejected, 9 if any event was not delivered."""
    from .broker import probe
    from .errors import PublishError
    from .inert import inert  # every line below may quote the file's content: a key, a value, an event id
    from .progress import Counts, PipelineProbe, StreamProgress
    from .publisher import EventInvalid, TransitionPublisher, loads

    settings = _settings()
    probe(settings)
    size = file.stat().st_size
    lines = _count_lines(file) if size >= PROGRESS_MIN_BYTES else 0
    accepted, rejected = 0, 0
    line_of: dict[str, int] = {}
    pub = TransitionPublisher(settings)
    watch = PipelineProbe(settings) if lines else None
    display = (StreamProgress(lines, lambda: Counts(pub.delivered, watch.scored(), watch.stored()),
                              title=file.name).start() if watch is not None else None)
    undelivered = 0
    try:
        for lineno, line in _lines(file):
            try:
                line_of[pub.publish(loads(line))] = lineno
                accepted += 1
            except json.JSONDecodeError as exc:
                rejected += 1
                click.echo(inert(f"{file}:{lineno}: not JSON: {exc}"), err=True)
            except EventInvalid as exc:
                rejected += 1
                click.echo(inert(f"{file}:{lineno}: {exc}"), err=True)
            except PublishError as exc:
                # The producer refused this record (e.g. a topic it knows is missing), or failed and was replaced
                # (every event in flight is named): counted and named; the next line goes to the new producer.
                # A registry that stayed away is not per line: it ends the run, nothing more is sent.
                if exc.reason == "registry":
                    raise
                ids = exc.fields.get("event_ids") or []
                undelivered += len(ids) or 1
                if undelivered <= 20:
                    click.echo(inert(f"{file}:{lineno}: not delivered: {exc}"), err=True)
        try:
            pub.flush()
        except PublishError as exc:  # every undelivered event is named, by line
            ids = exc.fields.get("event_ids") or []
            undelivered += len(ids) or int(exc.fields.get("pending", 0)) or 1
            click.echo(inert(f"{file}: {exc}"), err=True)
            for event_id in ids[:20]:
                click.echo(inert(f"{file}:{line_of.get(event_id, '?')}: not delivered (event_id {event_id})"),
                           err=True)
    finally:
        if display is not None and watch is not None:
            display.stop()
            watch.close()
    click.echo(f"accepted {accepted}, rejected {rejected}" + (f", undelivered {undelivered}" if undelivered else ""))
    sys.exit(Exit.UNDELIVERED if undelivered else Exit.INCOMPLETE if rejected else Exit.OK)


PROGRESS_MIN_BYTES = 4 * 1024 * 1024  # a file this large takes seconds to publish: show progress


def _lines(file: Path) -> Iterator[tuple[int, str]]:
    with file.open() as f:
        for lineno, line in enumerate(f, 1):
            if line.strip():
                yield lineno, line


def _count_lines(file: Path) -> int:
    with file.open("rb") as f:
        return sum(1 for line in f if line.strip())


@main.group()
def dlq() -> None:
    """Dead letters: list, show, and re-publish after a fix (docs/runbooks/dead-letters.md)."""


@dlq.command("list")
@click.option("--reason", default=None, help="Only this reason (see docs/guarantees.md).")
def dlq_list(reason: str | None) -> None:
    """One line per dead letter: PARTITION:OFFSET, reason, field, source, size, error."""
    from .dlq import read

    try:
        letters = read(_settings(), reason=reason)
    except AgentgovError as exc:
        _fail(exc)
    for letter in letters:
        click.echo(letter.line())
    click.echo(f"{len(letters)} dead letters", err=True)


@dlq.command("show")
@click.argument("refs", nargs=-1, required=True)
def dlq_show(refs: tuple[str, ...]) -> None:
    """Headers and decoded payload of the dead letters REFS (PARTITION:OFFSET)."""
    from .dlq import DlqError, read

    try:
        letters = read(_settings(), refs=refs)
        missing = set(refs) - {x.ref for x in letters}
        if missing:
            raise DlqError(f"no dead letter at {', '.join(sorted(missing))}")
    except AgentgovError as exc:
        _fail(exc)
    click.echo("\n\n".join(letter.show() for letter in letters))


@dlq.command("republish")
@click.argument("refs", nargs=-1)
@click.option("--reason", default=None, help="Every dead letter with this reason (instead of REFS).")
@click.option("--dry-run", is_flag=True, help="Say what would be re-published; send nothing.")
def dlq_republish(refs: tuple[str, ...], reason: str | None, dry_run: bool) -> None:
    """Send dead letters (REFS, or all of --reason) back to the topic they came from, after a fix."""
    from .dlq import DlqError, read, refusal, republish

    try:
        if bool(refs) == bool(reason):
            raise DlqError("give dead-letter refs (PARTITION:OFFSET) or --reason, not both")
        settings = _settings()
        letters = read(settings, refs=refs, reason=reason)
        missing = set(refs) - {x.ref for x in letters}
        if missing:
            raise DlqError(f"no dead letter at {', '.join(sorted(missing))}")
        sendable = []
        refused = 0
        for letter in letters:
            why = refusal(settings, letter)
            if why is not None:  # one message per letter; the others still go
                click.echo(f"refusing {why}", err=True)
                refused += 1
                continue
            sendable.append(letter)
            click.echo(("would re-publish " if dry_run else "re-publishing ") + letter.line())
        sent = 0 if dry_run or not sendable else republish(settings, sendable)
    except AgentgovError as exc:
        _fail(exc)
    summary = f"re-published {sent} dead letters" if not dry_run else f"{len(sendable)} would be re-published"
    click.echo(summary + (f", {refused} refused" if refused else ""))
    if refused:
        sys.exit(1)


@main.command()
def topics() -> None:
    """Create agentgov's topics on the configured cluster (idempotent)."""
    from .broker import probe
    from .topics import ensure_topics

    settings = _settings()
    if settings.starts_embedded_broker:
        raise ConfigError("set AGENTGOV_KAFKA_BOOTSTRAP: `agentgov run` creates topics on the embedded broker")
    probe(settings)
    ensure_topics(settings)
    click.echo("topics ready")


@main.command()
def migrate() -> None:
    """Apply the ClickHouse DDL (idempotent)."""
    from .sinks.clickhouse import ClickHouseSink

    sink = ClickHouseSink.connect(_settings())
    applied = sink.migrate()
    click.echo(f"applied migrations: {applied or 'none (up to date)'}")


@main.command()
@click.argument("run_id")
@click.option("--json", "as_json", is_flag=True, help="JSON output.")
def trail(run_id: str, as_json: bool) -> None:
    """Reconstruct RUN_ID for an auditor: every step, inputs, policy, authority, approval, findings."""
    from .audit import render_trail, to_json
    from .audit import trail as load_trail
    from .review.store import ReviewStore, attach_decisions
    from .sinks.clickhouse import ClickHouseSink

    sink = ClickHouseSink.open_existing(_settings())
    steps = load_trail(sink, run_id)
    attach_decisions(steps, ReviewStore(sink).run_decisions(run_id))  # review history (migration 005)
    click.echo(to_json(steps) if as_json else render_trail(steps))
    sys.exit(Exit.OK if steps else Exit.INCOMPLETE)


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
    sink = ClickHouseSink.open_existing(_settings())
    n = 0
    for doc in load_export(sink, since=since, until=until, run_id=run_id, agent_id=agent_id, min_score=min_score):
        output.write(to_json(doc) + "\n")
        n += 1
    click.echo(f"exported {n} assessments", err=True)


@main.command()
@click.option("--format", "fmt", type=click.Choice(["text", "json", "markdown"]), default="text")
def rules(fmt: str) -> None:
    """Print the rule catalogue: code, severity, meaning, evidence fields, OWASP/NIST refs."""
    from .scoring import catalogue

    click.echo(catalogue.render_catalogue(fmt))


@main.group()
def policy() -> None:
    """Governance policy files."""


@policy.command("check")
@click.argument("file", type=click.Path(dir_okay=False, path_type=Path))
def policy_check(file: Path) -> None:
    """Validate a policy FILE; print its version and hash."""
    from .scoring.policy import check_policy

    click.echo(check_policy(file))  # an invalid file exits 4 (Exit.POLICY) through the one error path


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

    n, cursor = 0, None
    try:
        store = ReviewStore(ClickHouseSink.open_existing(_settings()))
        while True:  # page by page: the export of years of decisions never sits in memory whole
            rows, cursor = store.export(since, after=cursor)
            for row in rows:
                output.write(to_json(row) + "\n")
            n += len(rows)
            if cursor is None:
                break
            click.echo(f"exported {n} review records so far", err=True)
    except AgentgovError as exc:
        _fail(exc)
    click.echo(f"exported {n} review records", err=True)


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
