"""The correlation stage's cost and its time to page: the pipeline with one correlator beside the pipeline
without it (no access facts, no correlator), in the same benchmark run.

For each of the two runs, one ``bench.agentgov_run`` child:

- throughput: ``count`` events at full speed, end to end (first scored to last stored);
- time to page at ``rate`` events/s offered: benign events paced for ``seconds``, with a cross-run
  transient-privilege chain every ``chain_every`` events (a privileged grant in one run, its revoke one
  second later in another run on another partition, so no scorer sees it whole). The time to page is
  from the revoke being published (its ``occurred_at`` is its planned send time) to the correlator's
  ``cross-run escalation paged early`` log line, the moment it set ``agentgov_escalation_chain_detected``.

The chain's finding is published at the watermark, ``correlation_grace_seconds`` (default 300 s) after
its last event: that wait is by design (docs/guarantees.md, "Early pages") and is not timed here.
"""

from __future__ import annotations

import json
import re
import time
import zlib
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from pipeline.topics import ensure_topics
from pipeline.workload import _draft

from . import report
from .events import Message, _completer, drafts, produce_all, produce_paced, producer
from .procs import Child, RssSampler
from .spec import scenario_settings

PAGE_LINE = re.compile(r'^ts=(\S+) .*msg="cross-run escalation paged early".* event_id=(\S+)')


def _runs(i: int) -> tuple[str, str]:
    """Two run ids of chain ``i`` on different partitions (crc32 mod 6, the producer's partitioner)."""
    grant = f"run-xb-{i}-g"
    for k in range(100):
        revoke = f"run-xb-{i}-r{k}"
        if zlib.crc32(revoke.encode()) % 6 != zlib.crc32(grant.encode()) % 6:
            return grant, revoke
    raise AssertionError("unreachable")


def paced_events(n: int, rate: int, start: float, chain_every: int, seed: int
                 ) -> tuple[list[Message], dict[str, float]]:
    """``n`` events stamped ``start + k / rate``; every ``chain_every``-th pair of slots carries a cross-run
    transient-privilege chain (grant, and the revoke about 1 s later). Returns the encoded messages and
    the event id of each revoke (the chain's last event) with its stamp (its planned send time)."""
    pub = _completer()
    base = drafts(n, seed)
    slots: dict[int, dict[str, Any]] = {}
    for c, k in enumerate(range(chain_every, n - rate, chain_every)):
        grant_run, revoke_run = _runs(c)
        target = f"u-bench-xrun-{seed}-{c}"
        slots[k] = _draft(grant_run, 0, "agent-jml-04", "jml-provisioning", ("mover", f"HR-8{c:05d}"),
                          "grant_entitlement", target, "aws", "role/Admin", 3, entitlement="aws-admin",
                          approved_by="mgr-eng", scenario="xrun_transient_privilege")
        slots[k + rate + chain_every // 2] = _draft(  # between two grants' slots
            revoke_run, 0, "agent-jml-04", "jml-provisioning", ("mover", f"HR-9{c:05d}"), "revoke_entitlement",
            target, "aws", "role/Admin", 3, entitlement="aws-admin", scenario="xrun_transient_privilege")
    messages: list[Message] = []
    last_ids: dict[str, float] = {}
    for k in range(n):
        chain = k in slots
        draft = dict(slots.get(k, base[k]), occurred_at=datetime.fromtimestamp(start + k / rate, UTC))
        record = pub.complete(draft)
        if chain and draft["action"] == "revoke_entitlement":
            last_ids[record["event_id"]] = start + k / rate
        messages.append((record["run_id"].encode(), pub.serde.encode(record)))
    return messages, last_ids


def pages(log: Path) -> dict[str, float]:
    """event_id of a chain's last event -> unix time its page was set (first time), from the correlator log."""
    out: dict[str, float] = {}
    if not log.exists():
        return out
    for line in log.read_text(errors="replace").splitlines():
        m = PAGE_LINE.match(line)
        if m:
            at = datetime.strptime(m.group(1), "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=UTC).timestamp()
            out.setdefault(m.group(2).strip('"'), at)
    return out


def run(bootstrap: str, source: list[Message], rate: int, seconds: float, chain_every: int, correlator: bool,
        work: Path, rss: RssSampler, per_event_gen: float) -> dict[str, Any]:
    """One run on a source topic of its own: ``source`` first (throughput), then the paced events."""
    name = "with_correlator" if correlator else "without_correlator"
    settings = scenario_settings(bootstrap, work, name, access_facts=correlator)
    ensure_topics(settings)
    count = len(source)
    produce_all(bootstrap, settings.topic_transitions, source)
    child = Child("bench.agentgov_run", {"settings": report_settings(settings), "scorers": 2,
                                         "correlators": 1 if correlator else 0}, work, name)
    rss.watch(child.pid)
    p = producer(bootstrap)
    try:
        child.ask("start")
        first = child.ask(f"wait {count} 600")  # throughput: produced before the start
        n = max(rate, int(rate * seconds))
        start = time.time() + n * per_event_gen * 1.5 + 1.0
        messages, last_ids = paced_events(n, rate, start, chain_every, seed=300 + int(correlator))
        if time.time() > start:
            start = time.time() + 0.5
            messages, last_ids = paced_events(n, rate, start, chain_every, seed=300 + int(correlator))
        lat_topic = settings.topic_transitions
        worst = produce_paced(p, lat_topic, messages, rate, start)
        sent_for = time.time() - start
        stored = child.ask(f"wait {count + n} 600")
        log_path = settings.state_dir / "correlator-0.log"
        paged: dict[str, float] = {}
        if correlator:  # the last chain's page may trail the last event stored by a batch
            deadline = time.monotonic() + 120
            while time.monotonic() < deadline:
                paged = pages(log_path)
                if all(i in paged for i in last_ids):
                    break
                time.sleep(0.2)
        rep = child.ask("report")
    finally:
        child.close()
    span = first["at"] - rep["first_scored_at"]
    samples = [lat for _, lat in rep["latency"]]
    to_page = [paged[i] - stamped for i, stamped in last_ids.items() if i in paged]
    return {
        "throughput": {"events": first["stored"], "seconds": round(span, 3),
                       "events_per_s": round(first["stored"] / span, 1)},
        "latency": {"offered_per_s": rate, "achieved_per_s": round(n / sent_for, 1), "events": n,
                    "producer_max_lag_ms": round(worst * 1000, 1), **report.quantiles(samples[count:count + n])},
        "chains": len(last_ids), "paged": len(to_page) if correlator else None,
        "to_page": report.quantiles(to_page) if correlator else None,
        "stored": stored["stored"],
    }


def report_settings(settings: Any) -> dict[str, Any]:
    return dict(json.loads(settings.model_dump_json()))


def compare(bootstrap: str, source: list[Message], rate: int, seconds: float, chain_every: int, work: Path,
            rss: RssSampler, per_event_gen: float) -> dict[str, Any]:
    """Both runs over the same source events, without first; ratios from this one run."""
    out: dict[str, Any] = {}
    for correlator in (False, True):
        key = "with_correlator" if correlator else "without_correlator"
        w = rss.window()
        out[key] = run(bootstrap, source, rate, seconds, chain_every, correlator, work, rss, per_event_gen)
        out[key]["cpu_seconds"] = w.close()
    a, b = out["with_correlator"], out["without_correlator"]
    out["throughput_with_over_without"] = report._ratio(a["throughput"]["events_per_s"],
                                                        b["throughput"]["events_per_s"])
    out["stored_p50_ms_added"] = round(a["latency"]["p50_ms"] - b["latency"]["p50_ms"], 1)
    return out
