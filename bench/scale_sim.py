"""Capacity plan from measured per-process figures: ``python -m bench.scale_sim [--measure] [eps] [agents]``.

Inputs, all measured on this machine (docs/scaling.md says how):
- scorer events/s per process, 1 and 2 processes: ``tests/integration/test_scale_out.py``
  (``SCALE_OUT_REPORT=docs/scaling_measured.json``);
- ClickHouse insert rows/s through ``ingest`` and its three views (Avro containers, the writer's path),
  baseline query scan rows/s, message sizes: ``--measure`` (embedded engine, this machine's cores).

Everything else is arithmetic, printed with its formula. Assumptions are named where they are made.
"""

from __future__ import annotations

import json
import math
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

MEASURED = Path(__file__).resolve().parents[1] / "docs" / "scaling_measured.json"
UTILISATION = 0.6  # run processes at <= 60% of measured capacity: headroom for rebalances, replays, spikes
HISTOGRAM_BUCKETS_LATENCY = 13
HISTOGRAM_BUCKETS_RISK = 11


def measure_store(rows: int = 300_000) -> dict[str, Any]:
    """Writer-path insert rate, baseline scan rate, on the embedded engine."""

    from bench import clickhouse_keys as keys
    from pipeline.baselines import BASELINE_SQL
    from pipeline.sinks.clickhouse import ClickHouseSink, open_embedded
    sink = ClickHouseSink(open_embedded(tempfile.mkdtemp(prefix='sim-')), "sim",
                          ttl_days=100_000)
    sink.migrate()
    # One Avro container per 20,000 rows (the writer's batch), written by the engine in the ingest schema.
    sink.client.command("CREATE TABLE sim.src AS sim.ingest ENGINE = MergeTree ORDER BY tuple()")
    keys.fill(_Src(sink), rows)
    containers = [sink.client.raw_query(f"SELECT * FROM sim.src ORDER BY source_offset LIMIT 20000 OFFSET {s} "
                                        "FORMAT Avro") for s in range(0, rows, 20_000)]
    t0 = time.perf_counter()
    for i, c in enumerate(containers):
        sink.insert_assessments(c, token=f"sim-{i}")
    insert_rate = rows / (time.perf_counter() - t0)
    count = sink.count("transitions")
    window = 10 * 365 * 86_400  # the whole table
    t0 = time.perf_counter()
    out = sink.query(BASELINE_SQL, {"window": window, "approved": ["iam-policy@7"], "grants": ["grant_entitlement"]})
    scan = time.perf_counter() - t0
    return {"cores": os.cpu_count(), "avro_insert_rows_per_second": round(insert_rate),
            "transitions_rows": count, "avro_container_bytes_per_row": round(sum(map(len, containers)) / rows),
            "baseline_query_rows_per_second": round(count / scan), "baseline_agents": len(out)}


class _Src:
    """Points the key script's generator at the staging table ``src`` instead of ``ingest``."""

    def __init__(self, sink: Any) -> None:
        self.database = "sim"
        self.client = _Redirect(sink.client)


class _Redirect:
    def __init__(self, client: Any) -> None:
        self._client = client

    def command(self, sql: str, **kw: Any) -> Any:
        return self._client.command(sql.replace("INSERT INTO sim.ingest", "INSERT INTO sim.src"), **kw)


def measure_messages(n: int = 3000) -> dict[str, Any]:
    """Average wire size of a transition, from the demo workload through the SDK."""
    from pipeline.publisher import TransitionPublisher
    from pipeline.settings import Settings
    from pipeline.workload import Workload

    class Capture:
        sizes: list[int] = []

        def produce(self, topic: str, value: bytes, **_: Any) -> None:
            self.sizes.append(len(value))

        def poll(self, timeout: float = 0) -> int:
            return 0

    cap = Capture()
    pub = TransitionPublisher(Settings.load(kafka_bootstrap="127.0.0.1:1"), producer=cap)  # type: ignore[arg-type]
    for op in Workload(seed=3, planted=False, bad_inputs=False).ops(n):
        op.publish(pub)
    return {"transition_bytes": round(sum(cap.sizes) / len(cap.sizes))}


def series(partitions: int) -> dict[str, int]:
    """Prometheus series per scorer/writer process, from the closed label sets."""
    from pipeline.events import Action, Outcome
    from pipeline.scoring.catalogue import CATALOGUE
    from pipeline.scoring.findings import LEVELS
    from pipeline.workload import PLANTED

    dlq_reasons = 7  # bad_magic unknown_schema truncated invalid_value malformed oversized internal
    patterns = sum(1 for code in PLANTED.values() if code.startswith("AG-ESC"))
    hist = lambda buckets, combos: (buckets + 3) * combos  # noqa: E731 - +Inf bucket, _sum, _count
    per = {
        "transitions{action,outcome}": len(Action) * len(Outcome),
        "assessments{risk_level}": len(LEVELS),
        "findings{code,severity,category} (one severity+category per code)": len(CATALOGUE),
        "escalations{pattern}": patterns,
        "escalation_chain (bounded ring)": 64,
        "dead_letters{reason}": dlq_reasons,
        "consumer_lag{role,partition} (partitions this process owns; whole fleet: 2 x partitions)": 0,
        "batches{role,outcome}": 2 * 2,
        "histograms: risk_score, batch_duration{role}, event_to_scored, event_to_stored, sink_insert{table}":
            hist(HISTOGRAM_BUCKETS_RISK, 1) + hist(HISTOGRAM_BUCKETS_LATENCY, 2 + 1 + 1 + 1),
        "gauges/info/counters without free labels": 12,
    }
    per["total per process (excluding lag)"] = sum(per.values())
    per["consumer_lag, whole fleet"] = 2 * partitions
    return per


def plan(eps: float, agents: int, m: dict[str, Any], cores_per_node: int = 16) -> list[str]:
    one = m["scale_out"]["scorers_1"]["events_per_second"]
    two = m["scale_out"]["scorers_2"]["events_per_second"]
    store = m["store"]
    per_core_insert = store["avro_insert_rows_per_second"] / store["cores"]
    scorers = math.ceil(eps / (one * UTILISATION))
    partitions = 2 ** math.ceil(math.log2(scorers * 2))  # every scorer >= 1 partition, 2x room to scale out
    writers_rate = store["avro_insert_rows_per_second"]  # one writer process is bounded by its store insert
    node_rate = per_core_insert * cores_per_node
    shards = math.ceil(eps / (node_rate * UTILISATION))
    writers = max(shards, math.ceil(eps / (writers_rate * UTILISATION)))
    day_rows = eps * 86_400
    window_days = 7
    full_scan_s = day_rows * window_days / (store["baseline_query_rows_per_second"] / store["cores"] * cores_per_node
                                            * shards)
    hourly_rows = agents * 24 * window_days
    incremental_s = hourly_rows / (store["baseline_query_rows_per_second"] / store["cores"] * cores_per_node)
    msg = m["messages"]["transition_bytes"]
    s = series(partitions)
    lines = [
        f"target: {eps:,.0f} events/s, {agents:,} agents",
        f"measured: scorer {one:,} ev/s (1 process), {two:,} ev/s (2 processes, {m['scale_out']['cores']} cores, "
        f"ratio {two / one:.2f}); store insert {store['avro_insert_rows_per_second']:,} rows/s on "
        f"{store['cores']} cores = {per_core_insert:,.0f} rows/s/core; baseline scan "
        f"{store['baseline_query_rows_per_second']:,} rows/s; transition {msg} B",
        f"scorer processes = ceil(eps / ({one:,} x {UTILISATION})) = {scorers:,}  (1 core each)",
        f"partitions = next power of 2 >= 2 x scorers = {partitions:,}  "
        f"({eps / partitions:,.0f} ev/s and {eps / partitions * msg / 1e6:.2f} MB/s per partition)",
        f"broker ingress: transitions {eps * msg / 1e9:.2f} GB/s + assessments (about 1.3x) + replication x3",
        f"ClickHouse node ({cores_per_node} cores, assumed linear in cores from the measured per-core rate): "
        f"{node_rate:,.0f} rows/s",
        f"ClickHouse shards = ceil(eps / (node rate x {UTILISATION})) = {shards:,}  (x2 replicas = {2 * shards:,} "
        f"nodes); {day_rows / 1e9:,.1f} bn rows/day, {day_rows * store['avro_container_bytes_per_row'] / 1e12:.1f} "
        f"TB/day raw Avro before compression",
        f"writer processes = max(shards, ceil(eps / (writer rate x {UTILISATION}))) = {writers:,}",
        f"baseline refresh, today's full scan of {window_days} days: {day_rows * window_days / 1e12:.1f} trillion rows "
        f"= {full_scan_s:,.0f} s per refresh across all shards: NOT feasible every 60 s",
        f"baseline refresh, incremental (per-agent hourly aggregate, {agents:,} x {24 * window_days} rows = "
        f"{hourly_rows / 1e6:.1f} M rows): {incremental_s:,.1f} s on one node; publishes {agents:,} records "
        f"(each scorer reads all of them per refresh)",
        f"metric series per process: {s['total per process (excluding lag)']:,}; fleet "
        f"({scorers + writers:,} processes): {(scorers + writers) * s['total per process (excluding lag)']:,} "
        f"+ lag {s['consumer_lag, whole fleet']:,}; independent of the {agents:,} agents (closed label sets)",
    ]
    return lines


def main(argv: list[str]) -> None:
    args = [a for a in argv if not a.startswith("-")]
    eps = float(args[0]) if args else 1_000_000
    agents = int(args[1]) if len(args) > 1 else 100_000
    m = json.loads(MEASURED.read_text()) if MEASURED.exists() else {}
    if "--measure" in argv or "store" not in m:
        m["store"] = measure_store()
        m["messages"] = measure_messages()
        MEASURED.write_text(json.dumps(m, indent=1) + "\n")
    if "scale_out" not in m:
        sys.exit(f"no scorer figures in {MEASURED}: run SCALE_OUT_REPORT=... pytest tests/integration/"
                 "test_scale_out.py and put the report under 'scale_out'")
    print("\n".join(plan(eps, agents, m)))
    print("\nseries per process by metric:")
    for name, n in series(2 ** math.ceil(math.log2(eps / 1000))).items():
        print(f"  {n:>6,}  {name}")


if __name__ == "__main__":
    main(sys.argv[1:])
