"""``python -m bench.recert``: a recertification campaign over a large store (``make bench`` runs it).

Seeds ``HOLDINGS`` held access into ``access_changes`` (and their grant events into ``transitions``), of
which ``ITEMS`` are at tier >= 2, then times through the real components (embedded broker, the writer's
decision log, chdb): creating a campaign over tier >= 2 (query, snapshot, publish every item, stored), and
paging through all its items 100 at a time with the keyset the API uses. Prints one JSON document and
writes it to ``bench/results/recert.json``. ``--smoke`` for tiny sizes.
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import sys
import tempfile
import threading
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry

from pipeline.broker import EmbeddedBroker, free_port
from pipeline.decision_log import DecisionLog
from pipeline.logs import configure_logging
from pipeline.metrics import ReviewMetrics
from pipeline.review.model import Actor
from pipeline.review.recert import Scope
from pipeline.review.recert_service import RecertService
from pipeline.review.recert_store import RecertStore
from pipeline.review.service import ReviewService
from pipeline.review.store import ReviewStore
from pipeline.scoring.policy import load_policy
from pipeline.settings import Settings
from pipeline.sinks.clickhouse import ClickHouseSink
from pipeline.topics import ensure_topics

RESULTS = Path(__file__).resolve().parent / "results"
PAGE = 100

SEED_CHANGES = """
INSERT INTO {db}.access_changes (target_id, system, access, occurred_at, event_id, action, run_id, agent_id,
                                 privilege_tier, authority, approved_by, source_partition)
SELECT concat('u', toString(number % {identities:UInt64})) AS target_id,
       ['entra-id', 'salesforce', 'aws', 'github', 'sap'][1 + number % 5] AS system,
       concat('ent-', toString(intDiv(number, {identities:UInt64}))) AS access,
       toDateTime64('2026-06-01 00:00:00', 3, 'UTC') + toIntervalSecond(number) AS occurred_at,
       concat('evt-', toString(number)) AS event_id, 'grant_entitlement' AS action,
       concat('run-', toString(intDiv(number, 4))) AS run_id, concat('agent-', toString(number % 40)) AS agent_id,
       if(number % {every:UInt64} = 0, 2 + number % 2, number % 2) AS privilege_tier,
       'policy_engine' AS authority, if(number % 3 = 0, NULL, 'mgr') AS approved_by, 0 AS source_partition
FROM numbers({n:UInt64})
"""

SEED_TRANSITIONS = """
INSERT INTO {db}.transitions (event_id, occurred_at, workflow_id, workflow_version, run_id, step, agent_id,
                              action, target_id, system, resource_id, entitlement, privilege_tier, inputs_used,
                              outcome, authority, approved_by, policy_id, policy_version, event_hash)
SELECT concat('evt-', toString(number)), toDateTime64('2026-06-01 00:00:00', 3, 'UTC') + toIntervalSecond(number),
       'jml-provisioning', '3', concat('run-', toString(intDiv(number, 4))), 0,
       concat('agent-', toString(number % 40)), 'grant_entitlement',
       concat('u', toString(number % {identities:UInt64})), 'aws', 'res',
       concat('ent-', toString(intDiv(number, {identities:UInt64}))), 2,
       [('department', 'hris'), ('job_code', 'hris')], 'granted', 'policy_engine', 'mgr',
       'iga-access-policy', '7', 'h'
FROM numbers({n:UInt64}) WHERE number % {every:UInt64} = 0
"""


def log(msg: str) -> None:
    print(f"[bench.recert {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def run(holdings: int, items: int, work: Path) -> dict[str, Any]:
    every = max(1, holdings // items)
    with EmbeddedBroker(free_port(), work / "tansu.log") as broker:
        tag = uuid.uuid4().hex[:6]
        settings = Settings.load(
            kafka_bootstrap=broker.bootstrap, topic_decisions=f"bench.{tag}.decisions.v1",
            topic_exceptions=f"bench.{tag}.exceptions.v1", topic_remediations=f"bench.{tag}.remediations.v1",
            topic_transitions=f"bench.{tag}.transitions.v1", topic_assessments=f"bench.{tag}.assessments.v1",
            topic_dlq=f"bench.{tag}.dlq", topic_baselines=f"bench.{tag}.baselines.v1",
            writer_group=f"bench-writer-{tag}", clickhouse_dsn=f"chdb://{work / 'chdb'}",
            clickhouse_database="bench", state_dir=work / "state", log_level="WARNING",
            review_store_wait_seconds=120.0)
        ensure_topics(settings)
        sink = ClickHouseSink.connect(settings)
        sink.migrate()
        t0 = time.perf_counter()
        params = {"n": holdings, "identities": max(1, holdings // 20), "every": every}
        sink.client.command(SEED_CHANGES.replace("{db}", sink.database), parameters=params)
        sink.client.command(SEED_TRANSITIONS.replace("{db}", sink.database), parameters=params)
        seeded = sink.query("SELECT count() AS n, countIf(privilege_tier >= 2) AS t2 FROM {db}.access_changes")[0]
        log(f"seeded {seeded['n']} holdings ({seeded['t2']} at tier >= 2) in {time.perf_counter() - t0:.1f}s")

        store = ReviewStore(sink)
        service = ReviewService(settings, store, load_policy(), ReviewMetrics(CollectorRegistry()))
        recert = RecertService(service, RecertStore(store))
        decision_log = DecisionLog(settings, sink)  # the writer's decision log, polled as the writer loop does
        stop = threading.Event()

        def writer_loop() -> None:
            while not stop.is_set():
                with store._lock:
                    stored = decision_log.poll_once(0.2)
                if not stored:
                    time.sleep(0.05)

        thread = threading.Thread(target=writer_loop, daemon=True)
        thread.start()
        try:
            actor = Actor("bench", ("reviewer",))
            due = int((datetime.now(UTC) + timedelta(days=30)).timestamp() * 1000)
            t0 = time.perf_counter()
            created = recert.create(actor, name="bench", owner="bench", due_at_ms=due, scope=Scope(min_tier=2))
            create_s = time.perf_counter() - t0
            log(f"campaign of {created['items']} items created and stored in {create_s:.1f}s")
            cid, after, pages, seen = created["campaign_id"], "", [], 0
            while True:
                t0 = time.perf_counter()
                page = recert.store.items(cid, after=after, limit=PAGE)
                pages.append(time.perf_counter() - t0)
                seen += len(page)
                if len(page) < PAGE:
                    break
                after = page[-1]["item_id"]
            log(f"paged {seen} items in {len(pages)} pages: median {statistics.median(pages) * 1000:.0f} ms, "
                f"max {max(pages) * 1000:.0f} ms")
        finally:
            stop.set()
            thread.join(10)
            decision_log.close()
            service.close()
    ranked = sorted(pages)
    p99 = ranked[min(len(ranked) - 1, int(0.99 * len(ranked)))]  # nearest rank
    return {"holdings": int(seeded["n"]), "campaign_items": created["items"], "recommended": created["recommended"],
            "create_seconds": round(create_s, 2), "create_target_seconds": 30, "page_size": PAGE,
            "pages": len(pages), "items_paged": seen, "page_ms_median": round(statistics.median(pages) * 1000, 1),
            "page_ms_p99": round(p99 * 1000, 1), "page_ms_max": round(max(pages) * 1000, 1),
            "page_target_ms": 500}


def main() -> None:
    configure_logging("WARNING")
    logging.getLogger("pipeline.review.recert_service").setLevel(logging.INFO)  # the phase timings of create
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--smoke", action="store_true", help="20,000 holdings, 1,000 items")
    parser.add_argument("--out", type=Path, default=RESULTS / "recert.json")
    args = parser.parse_args()
    holdings, items = (20_000, 1_000) if args.smoke else (1_000_000, 50_000)
    with tempfile.TemporaryDirectory(prefix="agentgov-bench-recert-") as d:
        result = run(holdings, items, Path(d))
    result["measured_at"] = datetime.now(UTC).isoformat(timespec="seconds")
    doc = json.dumps(result, indent=2)
    print(doc)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(doc + "\n")


if __name__ == "__main__":
    main()
