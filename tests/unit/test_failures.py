"""The CLI's one error path: every kind of failure maps to its exit code and a readable sentence; the
progress display's plain form when output is not a terminal."""

from __future__ import annotations

import io
import re

import pytest
from confluent_kafka import KafkaError, KafkaException

from pipeline.dlq import DlqError
from pipeline.errors import (
    BrokerError,
    ConfigError,
    DecodeError,
    PolicyError,
    PublishError,
    SinkError,
    StoreLocked,
    StoreMissing,
)
from pipeline.failures import Exit, explain, printable
from pipeline.progress import Counts, StreamProgress


@pytest.mark.parametrize(("exc", "code", "says"), [
    (StoreMissing("no audit store at /x"), Exit.STORE_MISSING, "no audit store at /x"),
    (StoreLocked("the audit store at /x is open in another process"), Exit.STORE_LOCKED, "another process"),
    (SinkError("insert failed"), Exit.STORE, "insert failed"),
    (PolicyError("p.yaml: invalid policy: x"), Exit.POLICY, "invalid policy"),
    (ConfigError("unknown setting in the environment: AGENTGOV_FOO"), Exit.CONFIG, "AGENTGOV_FOO"),
    (BrokerError("cannot reach the broker at h:1"), Exit.BROKER, "cannot reach the broker"),
    (KafkaException(KafkaError(KafkaError._TRANSPORT)), Exit.BROKER, "cannot reach the broker"),
    (KafkaException(KafkaError(KafkaError.TOPIC_AUTHORIZATION_FAILED)), Exit.BROKER, "refused"),
    (PublishError("2 events were not delivered"), Exit.UNDELIVERED, "not delivered"),
    (DecodeError("bad bytes"), Exit.INCOMPLETE, "bad bytes"),
    (DlqError("no dead letter at 3:17"), Exit.INCOMPLETE, "no dead letter at 3:17"),
    (RuntimeError("boom"), Exit.INTERNAL, "unexpected error: RuntimeError: boom"),
    (KeyboardInterrupt(), Exit.INTERRUPTED, "interrupted"),
])
def test_every_failure_has_its_code_and_one_or_two_lines(exc: BaseException, code: Exit, says: str) -> None:
    failure = explain(exc)
    assert failure.code == code
    text = failure.text()
    assert says in text and text.startswith("agentgov: ")
    assert 1 <= len(text.splitlines()) <= 2


def test_codes_are_distinct() -> None:
    assert len({int(e) for e in Exit}) == len(Exit)


def test_messages_are_escaped_and_one_line() -> None:
    assert printable("bad \x1b[31mred\x1b[0m\nsecond line") == "bad \\x1b[31mred\\x1b[0m"
    assert len(printable("x" * 1000)) == 401


class _Clock:
    def __init__(self) -> None:
        self.published, self.scored, self.stored = 0, 0, 0

    def counts(self) -> Counts:
        return Counts(self.published, self.scored, self.stored)


def test_progress_without_a_terminal_prints_plain_periodic_lines() -> None:
    out = io.StringIO()  # not a tty, as in CI
    clock = _Clock()
    progress = StreamProgress(1000, clock.counts, stored_total=990, out=out, interval=3600, every=0.0)
    progress.start()
    for step in range(1, 5):
        clock.published, clock.scored, clock.stored = 250 * step, 200 * step, 180 * step
        progress.poll()
    clock.published, clock.scored, clock.stored = 1000, 1000, 990
    progress.stop()
    lines = out.getvalue().splitlines()
    assert "\x1b" not in out.getvalue() and "\r" not in out.getvalue()  # no cursor tricks in a log
    assert len(lines) == 5  # start() draws nothing; four polls and the final line
    assert re.fullmatch(r"published 500/1,000 \([\d,]+/s\)  scored 400/1,000 \([\d,]+/s\)  "
                        r"stored 360/990 \([\d,]+/s\)  elapsed \d+s  eta \d+s", lines[1]), lines[1]
    assert lines[-1].startswith("published 1,000/1,000") and lines[-1].endswith("done")


def test_progress_lines_are_throttled_to_every_seconds() -> None:
    out = io.StringIO()
    clock = _Clock()
    progress = StreamProgress(100, clock.counts, out=out, interval=3600, every=3600)
    progress.start()
    for _ in range(10):
        clock.published += 10
        progress.poll()
    progress.stop()
    assert len(out.getvalue().splitlines()) == 2  # the first poll, then only the final line


def test_help_works_and_commands_refuse_with_an_unknown_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    import sys

    from click.testing import CliRunner

    from pipeline.cli import main

    monkeypatch.setenv("AGENTGOV_KAFKA_BOOTSTARP", "x:1")
    monkeypatch.setattr(sys, "argv", ["agentgov", "rules", "--help"])
    helped = CliRunner().invoke(main, ["rules", "--help"])
    assert helped.exit_code == 0 and "Usage: main rules" in helped.output
    monkeypatch.setattr(sys, "argv", ["agentgov", "rules"])
    refused = CliRunner().invoke(main, ["rules"])
    assert refused.exit_code == Exit.CONFIG
    assert "did you mean AGENTGOV_KAFKA_BOOTSTRAP?" in refused.output
