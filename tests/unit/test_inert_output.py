"""Text from events reaches people inert: `agentgov publish`'s per-line messages, the CLI's error line and
the service logs escape terminal controls (ESC/OSC/CSI, C1, DEL) and bidi overrides (review #5)."""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path

import pytest

from pipeline.drafts import draft
from pipeline.failures import printable
from pipeline.logs import JsonFormatter, LogfmtFormatter

RAW = ("\x1b", "\x07", "\x9b", "\x7f", "\u202e")
HOSTILE = "\x1b]0;owned\x07\x1b[2J\x1b[Haccepted 9, rejected 0\x1b[8m\x9b2J\u202e"


def test_publish_prints_what_an_event_file_holds_inert(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from click.testing import CliRunner

    import pipeline.broker
    from pipeline.cli import main

    monkeypatch.setattr(pipeline.broker, "probe", lambda *a, **k: None)  # rejected before anything is sent
    monkeypatch.setattr(sys, "argv", ["agentgov", "publish"])
    unknown_key = draft()
    unknown_key["agent"][HOSTILE] = "x"
    bad_input = draft(inputs_used=[{"name": "dept" + HOSTILE, "source": "hr"}])
    path = tmp_path / "events.jsonl"
    path.write_text("\n".join(json.dumps(d, default=str) for d in (unknown_key, bad_input)) + "\n")
    result = CliRunner().invoke(main, ["publish", str(path)], color=True,  # as on a terminal
                                env={"AGENTGOV_KAFKA_BOOTSTRAP": "127.0.0.1:1"})
    assert not any(c in result.output for c in RAW), repr(result.output)
    assert "agent.\\x1b]0;owned\\x07" in result.output and "\\u202e" in result.output
    assert len(result.output.splitlines()) == 3  # two rejected lines and the summary: nothing forged
    assert "inputs_used.name" in result.output and "accepted 0, rejected 2" in result.output


def test_an_error_line_is_inert() -> None:
    assert printable("no such run run-\u202egpj.exe\x9b2J") == "no such run run-\\u202egpj.exe\\x9b2J"


@pytest.mark.parametrize("formatter", [LogfmtFormatter(), JsonFormatter()])
def test_log_lines_are_inert_and_stay_valid(formatter: logging.Formatter) -> None:
    record = logging.LogRecord("t", logging.ERROR, __file__, 1, f"dead letter {HOSTILE}", None, None)
    record.kv = {"error": HOSTILE}
    line = formatter.format(record)
    assert not any(c in line for c in RAW), repr(line)
    if isinstance(formatter, JsonFormatter):
        assert json.loads(line)["error"] == HOSTILE  # the same value, escaped


@pytest.mark.parametrize("char", ["\u061c", "\u180e", "\u200b", "\u200c", "\u200d", "\u200e", "\u2060", "\u2064",
                                  "\u2066", "\u202e", "\u2028", "\ufeff"])
def test_the_cli_and_the_review_pages_escape_the_same_invisible_characters(char: str) -> None:
    """`agentgov trail` printed policy_version "7\\u200b" exactly like an approved "7" while the review pages
    escaped it: both now take their set from pipeline.inert.INVISIBLE."""
    from pipeline.inert import inert
    from pipeline.review.app import visible

    escaped = f"7\\u{ord(char):04x}"
    assert inert("7" + char) == escaped and visible("7" + char) == escaped
