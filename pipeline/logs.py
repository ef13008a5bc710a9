"""Structured logging: ``key="value"`` pairs (logfmt) or JSON lines, through the stdlib ``logging``.

Call :func:`configure_logging` once in ``main()``. Pass fields with ``extra={"kv": {...}}``::

    log.info("stored", extra={"kv": {"rows": 10}})

A line is inert on a terminal: JSON escapes C0 controls, and :func:`~pipeline.inert.json_inert` the rest
(DEL, C1, bidi overrides), since messages and fields may quote events. The user info of any URL in a
line is replaced by ``***`` (:func:`~pipeline.settings.redact_urls`).
"""

from __future__ import annotations

import json
import logging
import sys
import time
from typing import Any

from .inert import json_inert
from .settings import redact_urls

VALUE_MAX_CHARS = 16_384
"""A logged value (message, field, traceback) is cut to this many characters, with the count of the rest: a
field may quote an event, and a forged record's 300 KB id copied into every line about it flooded the log
(the cut comes after :func:`~pipeline.settings.redact_urls`, so it never splits a URL's user info out of
reach of the redaction)."""


def _cut(text: str) -> str:
    if len(text) <= VALUE_MAX_CHARS:
        return text
    return f"{text[:VALUE_MAX_CHARS]}…(+{len(text) - VALUE_MAX_CHARS} chars)"


def _cut_field(value: Any) -> Any:
    """A JSON line's field: a string cut (:func:`_cut`), and so each string of a list (run ids, codes)."""
    if isinstance(value, str):
        return _cut(redact_urls(value))
    if isinstance(value, list | tuple):
        return [_cut(redact_urls(v)) if isinstance(v, str) else v for v in value]
    return value


def _quote(value: Any) -> str:
    text = _cut(redact_urls(str(value)))
    return json_inert(json.dumps(text, ensure_ascii=False))


class LogfmtFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        ts = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z"
        parts = [f"ts={ts}", f"level={record.levelname.lower()}", f"logger={record.name}",
                 f"msg={_quote(record.getMessage())}"]
        for key, value in getattr(record, "kv", {}).items():
            parts.append(f"{key}={_quote(value)}")
        if record.exc_info:
            parts.append(f"exc={_quote(self.formatException(record.exc_info))}")
        return " ".join(parts)


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        doc: dict[str, Any] = {
            "ts": record.created,
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": _cut(redact_urls(record.getMessage())),
        }
        for key, value in getattr(record, "kv", {}).items():
            doc[key] = _cut_field(value)
        if record.exc_info:
            doc["exc"] = _cut(redact_urls(self.formatException(record.exc_info)))
        return json_inert(redact_urls(json.dumps(doc, default=str, ensure_ascii=False)))


def configure_logging(level: str = "INFO", fmt: str = "logfmt") -> None:
    """Install one stderr handler on the root logger unless one is already there."""
    root = logging.getLogger()
    root.setLevel(level)
    if root.handlers:
        return
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else LogfmtFormatter())
    root.addHandler(handler)
    logging.getLogger("kafka").setLevel(logging.WARNING)
