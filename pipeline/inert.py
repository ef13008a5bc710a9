"""Text a terminal shows and never interprets: the one definition of which characters agent-supplied text
may not carry to a person's screen, for every printer (``agentgov trail``/``export``/``publish``/``dlq``,
error messages, logs).

C0 controls, DEL, C1 controls (an 8-bit CSI is one byte), line and paragraph separators, bidirectional
marks, overrides and isolates (a reordered line can lie), and zero-width and other invisible characters
(:data:`INVISIBLE`) become visible ``\\xNN`` / ``\\uNNNN`` escapes,
so a value cannot move the cursor, set the window title, erase a line or forge one. Kept free of heavy
imports: the CLI's error path and the log formatters use it.

Example::

    click.echo(f"{file}:{lineno}: {inert(exc)}", err=True)
"""

from __future__ import annotations

import re
from typing import Any

INVISIBLE = "\u061c\u180e\u200b-\u200f\u2028-\u202e\u2060-\u2069\ufeff"
"""Character-class ranges of the format characters no person should be shown raw: bidi marks, embeddings,
overrides and isolates (a reordered line can lie), zero-width and other invisible characters (``7`` and
``7\\u200b`` look alike), line and paragraph separators. The CLI escapes them with C0, DEL and C1 (:data:`UNSAFE`);
the review pages with C0 but tab and newlines (``review.app.visible``)."""
UNSAFE = re.compile(f"[\x00-\x1f\x7f-\x9f{INVISIBLE}]")


def _escape(m: re.Match[str]) -> str:
    c = ord(m[0])
    return f"\\x{c:02x}" if c < 0x100 else f"\\u{c:04x}"


def inert(value: Any) -> str:
    """``value`` as text that a terminal shows and never interprets."""
    text = value if isinstance(value, str) else str(value)
    return UNSAFE.sub(_escape, text)


def json_inert(text: str) -> str:
    """Serialised JSON with every character :func:`inert` escapes written as ``\\uNNNN`` (JSON itself only
    escapes C0; the result is the same JSON value)."""
    return UNSAFE.sub(lambda m: f"\\u{ord(m[0]):04x}", text)
