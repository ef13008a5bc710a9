"""PromQL and alerting-rule helpers shared by the alerting, dashboard and metrics-doc tests.

``exposed_names`` is what ``pipeline.metrics.Metrics`` can put on ``/metrics``; ``metric_names`` pulls the
metric names out of a PromQL expression; ``promtool_check`` has promtool 2.42 parse expressions by wrapping
each in a recording rule (promtool has no parse-only command).
"""

from __future__ import annotations

import re
import shutil
import subprocess
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path

import pytest
import yaml
from prometheus_client import CollectorRegistry

from pipeline.metrics import Metrics, RecertMetrics, ReviewMetrics
from tests.support import ROOT

RULES_DIR = ROOT / "compose" / "prometheus" / "rules"

# Series Prometheus itself synthesises, which every rule and panel may use.
PROMETHEUS_NAMES = frozenset({"up", "ALERTS", "ALERTS_FOR_STATE", "scrape_duration_seconds"})

_SUFFIXES = {
    "counter": ("_total", "_created"),
    "histogram": ("_bucket", "_sum", "_count", "_created"),
    "summary": ("", "_sum", "_count", "_created"),
    "info": ("_info",),
}
_KEYWORDS = frozenset({"and", "or", "unless", "bool", "inf", "nan", "offset", "by", "without", "on",
                       "ignoring", "group_left", "group_right"})


def families() -> dict[str, tuple[str, str, tuple[str, ...]]]:
    """name -> (type, help, label names) for every family the catalogue builds."""
    out: dict[str, tuple[str, str, tuple[str, ...]]] = {}
    attrs = [*vars(Metrics(CollectorRegistry())).values(), *vars(ReviewMetrics(CollectorRegistry())).values(),
             *vars(RecertMetrics(CollectorRegistry())).values()]
    for attr in attrs:
        name = getattr(attr, "_name", None)
        if name is None:
            continue
        kind = getattr(attr, "_type", "")
        out[name] = (kind, getattr(attr, "_documentation", ""), tuple(getattr(attr, "_labelnames", ())))
    return out


def exposed_names(registry: CollectorRegistry | None = None) -> frozenset[str]:
    """Every sample name ``Metrics`` can expose, with the suffixes the exposition format adds."""
    registry = registry or CollectorRegistry()
    Metrics(registry)
    ReviewMetrics(registry)
    RecertMetrics(registry)
    names: set[str] = set()
    for fam in registry.collect():
        suffixes = _SUFFIXES.get(fam.type, ("",))
        names.update(fam.name + s for s in suffixes)
    return frozenset(names)


def metric_names(expr: str) -> set[str]:
    """Metric (and recording-rule) names an expression selects. Good for the expressions we write:
    strings, label matchers, ranges, grouping clauses and offsets are stripped, function calls skipped."""
    s = re.sub(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`', '""', expr)
    s = re.sub(r"\{[^}]*\}", " ", s)
    s = re.sub(r"\[[^\]]*\]", " ", s)
    s = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", s)
    s = re.sub(r"\boffset\s+-?\w+", " ", s)
    names: set[str] = set()
    for m in re.finditer(r"(?<![\w.$])[A-Za-z_:][A-Za-z0-9_:]*", s):
        token = m.group(0)
        if s[m.end():].lstrip().startswith("(") or token.lower() in _KEYWORDS:
            continue
        names.add(token)
    return names


def rule_docs() -> Iterator[tuple[Path, dict]]:
    for path in sorted(RULES_DIR.glob("*.yml")):
        yield path, yaml.safe_load(path.read_text())


def all_rules() -> list[dict]:
    return [rule for _, doc in rule_docs() for group in doc["groups"] for rule in group["rules"]]


def recorded_names() -> frozenset[str]:
    return frozenset(rule["record"] for rule in all_rules() if "record" in rule)


def promtool() -> str:
    exe = shutil.which("promtool")
    if exe is None:
        pytest.skip("promtool not installed (ci/system-deps.sh installs it)")
    return exe


def promtool_check(exprs: Iterable[str]) -> subprocess.CompletedProcess[str]:
    """Parse every expression with promtool by wrapping each in a recording rule."""
    rules = [{"record": f"agentgov_check:expr_{i}", "expr": e} for i, e in enumerate(exprs)]
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "exprs.yml"
        path.write_text(yaml.safe_dump({"groups": [{"name": "check", "rules": rules}]}))
        return subprocess.run([promtool(), "check", "rules", str(path)], capture_output=True, text=True,
                              check=False)
