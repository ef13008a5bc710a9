"""The decode ceiling: consume and fastavro-decode every event, nothing else.

Run as a worker process by ``python -m bench`` (``python -m bench.ceiling SPEC.json``), one per share of
the partitions, assigned manually so no group rebalance is timed. Writes its timings to ``out``.
"""

from __future__ import annotations

import gc
import io
import json
import sys
import time
from pathlib import Path

from confluent_kafka import Consumer, TopicPartition
from fastavro import schemaless_reader

from pipeline.schemas import SchemaSet
from pipeline.serde import SOE_HEADER


def run(bootstrap: str, topic: str, partitions: list[int], count: int, timeout: float = 300.0) -> dict[str, float]:
    """Decode ``count`` events from ``partitions``; returns first/last wall times and the count."""
    schemas = SchemaSet.load()
    consumer = Consumer({
        "bootstrap.servers": bootstrap, "group.id": f"bench-ceiling-{time.time_ns()}",
        "enable.auto.commit": False, "auto.offset.reset": "earliest", "isolation.level": "read_committed",
        "fetch.max.bytes": 52428800, "max.partition.fetch.bytes": 4194304, "session.timeout.ms": 6000,
    })
    consumer.assign([TopicPartition(topic, p, 0) for p in partitions])
    by_fp = {fp: sv.parsed for fp, sv in schemas.by_fingerprint.items()}
    gc.freeze()
    decoded, first = 0, 0.0
    deadline = time.monotonic() + timeout
    while decoded < count and time.monotonic() < deadline:
        msgs = consumer.consume(10_000, 0.5)
        if msgs and not first:
            first = time.time()
        for msg in msgs:
            if msg.error():
                continue
            value = msg.value()
            buf = io.BytesIO(value)
            buf.seek(SOE_HEADER)
            schemaless_reader(buf, by_fp[value[2:SOE_HEADER]], None)
            decoded += 1
    last = time.time()
    consumer.close()
    return {"first": first, "last": last, "decoded": decoded}


def main() -> int:
    spec = json.loads(Path(sys.argv[1]).read_text())
    result = run(spec["bootstrap"], spec["topic"], spec["partitions"], spec["count"])
    Path(spec["out"]).write_text(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
