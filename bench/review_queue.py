"""``python -m bench.review_queue``: the review queue's first page, filtered by agent, over N stored findings.

Fills a fresh chdb store (migrations applied, as the writer leaves it) with N synthetic findings spread
over 2,000 agents and 30 days, plus decisions for 10% of them, then times what the queue page runs
(``ReviewStore.queue``: first page of 50 and the total) for agents picked at random. Prints one JSON line.
The rows are generated in SQL (``numbers()``): this measures the read, not the pipeline.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

from pipeline.review.service import now_ms
from pipeline.review.store import QueueFilter, ReviewStore
from pipeline.sinks.clickhouse import ClickHouseSink, open_embedded

AGENTS = 2000

FILL_FINDINGS = """
INSERT INTO {db}.findings (event_id, finding_idx, run_id, agent_id, target_id, action, occurred_at, scored_at,
    code, severity, category, message, evidence_fields, refs, related_event_ids, governance_policy_version)
SELECT toString(generateUUIDv4(number)), 0, concat('run-', toString(intDiv(number, 4))),
       concat('agent-', toString(cityHash64(number) % {agents})), concat('u', toString(number % 50000)),
       'grant_entitlement', now64(3) - toIntervalSecond(number % (30 * 86400)), now64(3),
       arrayElement(['AG-AUTH-001', 'AG-ESC-003', 'AG-BND-004', 'AG-LCM-001', 'AG-POL-001'], 1 + number % 5),
       arrayElement(['critical', 'high', 'medium', 'low'], 1 + intDiv(number, 5) % 4), 'risk',
       'synthetic finding for the queue benchmark', [], [], [], '2026.11.0'
FROM numbers({n})
"""

FILL_DECISIONS = """
INSERT INTO {db}.decisions (decision_id, kind, subject_kind, subject_id, subject_version, actor, actor_roles,
    decided_at, from_state, to_state, payload)
SELECT toString(generateUUIDv4(number)), 'finding.acknowledge', 'finding', concat(event_id, '/', code), 1, 'bench',
       ['reviewer'], now64(3), 'new', 'acknowledged', map('assignee', 'bench', 'run_id', run_id, 'agent_id', agent_id)
FROM (SELECT event_id, code, run_id, agent_id, rowNumberInAllBlocks() AS number FROM {db}.findings)
WHERE number % 10 = 0
"""


def run(n: int, repeats: int, path: Path) -> dict[str, object]:
    sink = ClickHouseSink(open_embedded(path), "bench_review")
    sink.migrate()
    t0 = time.perf_counter()
    sink.client.command(FILL_FINDINGS.replace("{db}", sink.database).replace("{agents}", str(AGENTS))
                        .replace("{n}", str(n)))
    sink.client.command(FILL_DECISIONS.replace("{db}", sink.database))
    fill = time.perf_counter() - t0
    store = ReviewStore(sink)
    rng = random.Random(13)
    timings, rows_seen = [], []
    store.queue(QueueFilter(agent="agent-0"), now_ms())  # first query loads marks; not timed
    for _ in range(repeats):
        agent = f"agent-{rng.randrange(AGENTS)}"
        t = time.perf_counter()
        rows, total = store.queue(QueueFilter(agent=agent), now_ms())
        timings.append(time.perf_counter() - t)
        rows_seen.append((len(rows), total))
    stored = sink.count("findings")
    return {"findings": stored, "agents": AGENTS, "fill_seconds": round(fill, 1), "repeats": repeats,
            "page_rows_min": min(r for r, _ in rows_seen), "total_median": statistics.median(t for _, t in rows_seen),
            "first_page_ms_p50": round(statistics.median(timings) * 1000, 1),
            "first_page_ms_max": round(max(timings) * 1000, 1), "target_ms": 500,
            "meets_target": max(timings) < 0.5}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.review_queue", description=__doc__)
    ap.add_argument("--findings", type=int, default=1_000_000)
    ap.add_argument("--repeats", type=int, default=20)
    ap.add_argument("--path", type=Path, default=None, help="chdb data path (default: a fresh temp dir)")
    args = ap.parse_args(argv)
    path = args.path or Path(tempfile.mkdtemp(prefix="agentgov-bench-review-"))
    print(json.dumps(run(args.findings, args.repeats, path)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
