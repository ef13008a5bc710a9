"""docs/metrics.md lists every metric of pipeline/metrics.py, with its type and labels, and every recording rule."""

from __future__ import annotations

import re

from tests.support import ROOT
from tests.support.promql import families, recorded_names

DOC = (ROOT / "docs" / "metrics.md").read_text()
ROW = re.compile(r"^\| `(agentgov_\w+)` \| (\w+) \| [^|]+ \| ([^|]+) \|", re.M)


def _rows() -> dict[str, tuple[str, tuple[str, ...]]]:
    return {name: (kind, tuple(re.findall(r"`(\w+)`", labels))) for name, kind, labels in ROW.findall(DOC)}


def test_every_metric_is_documented() -> None:
    rows = _rows()
    catalogue = families()
    assert set(rows) == set(catalogue), (
        f"missing: {sorted(set(catalogue) - set(rows))}, stale: {sorted(set(rows) - set(catalogue))}")
    for name, (kind, _help, labels) in catalogue.items():
        assert rows[name] == (kind, labels), name


def test_every_recording_rule_is_documented() -> None:
    for name in recorded_names():
        assert f"`{name}`" in DOC, name
