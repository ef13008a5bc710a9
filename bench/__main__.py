"""``python -m bench``: the whole benchmark in one run. ``--smoke`` for tiny sizes (CI).

Writes one JSON document to stdout and to ``--out`` (default ``bench/results/latest.json``), and the
markdown table beside it (``.md``)."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from pydantic import SecretStr

from pipeline.broker import EmbeddedBroker, free_port
from pipeline.progress import Counts, PipelineProbe, StreamProgress
from pipeline.settings import revealed
from pipeline.topics import ensure_topics

from . import correlation, report
from .events import EventPool, produce_all, produce_paced, producer
from .procs import Child, RssSampler
from .spec import SCORER_BATCH, SCORER_BATCH_SECONDS, SINK_BATCH_ROWS, SINK_BATCH_SECONDS, scenario_settings

RESULTS = Path(__file__).resolve().parent / "results"


def log(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def settings_doc(settings: Any) -> dict[str, Any]:
    """The settings for a worker's spec file (in the run's private work directory). Secrets as they are, not
    masked as ``model_dump_json`` masks them: a worker given ``**********`` for a SASL password or an
    ``AGENTGOV_KAFKA_EXTRA`` value (``queued.max.messages.kbytes``) failed to build its clients."""
    doc = dict(json.loads(settings.model_dump_json()))
    for name in type(settings).model_fields:
        value = getattr(settings, name)
        if isinstance(value, SecretStr | dict):
            doc[name] = revealed(value)
    return doc


def ceiling(bootstrap: str, topic: str, counts: dict[int, int], procs: int, work: Path, rss: RssSampler
            ) -> dict[str, Any]:
    specs = []
    for i in range(procs):
        parts = [p for p in sorted(counts) if p % procs == i]
        spec = {"bootstrap": bootstrap, "topic": topic, "partitions": parts,
                "count": sum(counts[p] for p in parts), "out": str(work / f"ceiling-{procs}-{i}.out.json")}
        path = work / f"ceiling-{procs}-{i}.json"
        path.write_text(json.dumps(spec))
        specs.append(spec)
    children = [subprocess.Popen([sys.executable, "-m", "bench.ceiling", str(work / f"ceiling-{procs}-{i}.json")])
                for i in range(procs)]
    for c in children:
        rss.watch(c.pid)
    for c in children:
        if c.wait(600) != 0:
            raise RuntimeError("ceiling worker failed")
    results = [json.loads(Path(s["out"]).read_text()) for s in specs]
    decoded = sum(r["decoded"] for r in results)
    span = max(r["last"] for r in results) - min(r["first"] for r in results)
    return {"events": decoded, "seconds": round(span, 3), "events_per_s": round(decoded / span, 1),
            "processes": procs}


def agentgov(bootstrap: str, topic: str, count: int, scorers: int, work: Path, rss: RssSampler) -> dict[str, Any]:
    settings = scenario_settings(bootstrap, work, f"agentgov{scorers}", topic_transitions=topic)
    ensure_topics(settings)
    child = Child("bench.agentgov_run", {"settings": settings_doc(settings), "scorers": scorers}, work,
                  f"agentgov{scorers}")
    rss.watch(child.pid)
    stored = [0]
    try:
        child.ask("start")
        probe = PipelineProbe(settings)
        with StreamProgress(count, lambda: Counts(count, probe.scored(), stored[0]),
                            title=f"agentgov, {scorers} scorer{'s' if scorers > 1 else ''}"):
            done = child.ask(f"wait {count} 600", on_progress=lambda p: stored.__setitem__(0, p["stored"]))
            stored[0] = done["stored"]
        probe.close()
        rep = child.ask("report")
    finally:
        child.close()
    span = done["at"] - rep["first_scored_at"]
    return {"events": done["stored"], "seconds": round(span, 3), "events_per_s": round(done["stored"] / span, 1),
            "scorers": scorers, "rows": rep["rows"]}


ROOT = Path(__file__).resolve().parent.parent


def peer_python() -> str:
    """The interpreter of the Quix Streams peer: its own venv (``make peer-venv``), because quixstreams pins
    confluent-kafka below what the product is tested on; BENCH_PEER_PYTHON overrides."""
    override = os.environ.get("BENCH_PEER_PYTHON")
    if override:
        return override
    venv = ROOT / ".venv-peer" / "bin" / "python"
    if venv.exists():
        return str(venv)
    raise RuntimeError("no Quix Streams peer venv: run `make peer-venv` (or set BENCH_PEER_PYTHON)")


def quix(bootstrap: str, topic: str, count: int, work: Path, rss: RssSampler) -> dict[str, Any]:
    settings = scenario_settings(bootstrap, work, "quix", topic_transitions=topic)
    ensure_topics(settings)
    path = work / "quix.json"
    path.write_text(json.dumps({"settings": settings_doc(settings), "count": count}))
    with open(work / "quix.log", "ab") as err:
        proc = subprocess.Popen([peer_python(), "-m", "bench.quix_peer", str(path)], stdout=subprocess.PIPE,
                                stderr=err, text=True)
        rss.watch(proc.pid)
        out, _ = proc.communicate(timeout=900)
    if proc.returncode != 0:
        raise RuntimeError(f"quix peer failed; see {work / 'quix.log'}")
    r = json.loads(out.strip().splitlines()[-1])
    span = r["last"] - r["first"]
    return {"events": r["stored"], "seconds": round(span, 3), "events_per_s": round(r["stored"] / span, 1),
            "rows": r["rows"], "guarantee": r["guarantee"]}


def latency(bootstrap: str, rates: list[int], seconds: float, per_event_gen: float, work: Path, rss: RssSampler,
            scorers: int) -> list[dict[str, Any]]:
    settings = scenario_settings(bootstrap, work, "latency")
    ensure_topics(settings)
    child = Child("bench.agentgov_run", {"settings": settings_doc(settings), "scorers": scorers}, work, "latency")
    rss.watch(child.pid)
    p = producer(bootstrap)
    rows: list[dict[str, Any]] = []
    try:
        child.ask("start")
        warm = EventPool.build(500, seed=11)
        produce_all(bootstrap, settings.topic_transitions, warm.messages)
        total = len(warm.messages)
        child.ask(f"wait {total} 120")
        phases = []
        per_event_gen = max(per_event_gen, warm.seconds / len(warm.messages))
        for i, rate in enumerate(rates):
            n = max(1, int(rate * seconds))
            # Stamp each event with its planned send time, then send it at that time. The events must be
            # ready before the first is due: if building them overran, plan again with the cost seen.
            for _attempt in range(3):
                start = time.time() + n * per_event_gen * 1.5 + 1.0
                pool = EventPool.build(n, seed=100 + i,
                                       occurred_at_ms=[int((start + k / rate) * 1000) for k in range(n)])
                per_event_gen = max(per_event_gen, pool.seconds / n)
                if time.time() < start:
                    break
                log(f"latency {rate}/s: building the events overran the planned start; planning again")
            worst = produce_paced(p, settings.topic_transitions, pool.messages, rate, start)
            sent_for = time.time() - start
            total += n
            done = child.ask(f"wait {total} 600")
            phases.append((rate, n, worst, sent_for, done["stored"]))
            log(f"latency {rate}/s: {n} events sent, stored {done['stored']}/{total}")
        rep = child.ask("report")
    finally:
        child.close()
    samples = [lat for _, lat in rep["latency"]]
    scored = [ms / 1000 for _, ms in rep["to_scored"]]  # the first hop, occurred_at to scored_at
    at = len(warm.messages)
    for rate, n, worst, sent_for, _ in phases:
        q = report.quantiles(samples[at:at + n])
        hop = report.quantiles(scored[at:at + n])
        at += n
        rows.append({"offered_per_s": rate, "achieved_per_s": round(n / sent_for, 1), "events": n,
                     "producer_max_lag_ms": round(worst * 1000, 1), "scorers": scorers, **q,
                     "to_scored_p50_ms": hop["p50_ms"], "to_scored_p99_ms": hop["p99_ms"]})
    return rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    ap.add_argument("--smoke", action="store_true", help="tiny sizes; checks only that everything runs")
    ap.add_argument("--events", type=int, default=None, help="events per throughput scenario (default 200000)")
    ap.add_argument("--rates", default=None, help="latency offered rates, comma-separated (default 2000,10000,25000)")
    ap.add_argument("--latency-seconds", type=float, default=None, help="seconds per latency rate (default 6)")
    ap.add_argument("--only", default="ceiling,agentgov,quix,latency,correlation,review",
                    help="scenarios to run, comma-separated (default: all; ratios need all)")
    ap.add_argument("--out", type=Path, default=None)
    ap.add_argument("--correlation-rounds", type=int, default=5,
                    help="with/without-correlator pairs, order alternating, each on a fresh broker (default 5)")
    ap.add_argument("--correlation-events", type=int, default=None,
                    help="events of each correlation run's burst (default: --events, at most 50000)")
    args = ap.parse_args(argv)
    only = set(args.only.split(","))
    smoke = args.smoke
    count = args.events or (2000 if smoke else 200_000)
    rates = [int(r) for r in (args.rates or ("1000" if smoke else "2000,10000,25000")).split(",")]
    lat_seconds = args.latency_seconds or (2.0 if smoke else 6.0)
    out = args.out or RESULTS / ("smoke.json" if smoke else "latest.json")
    started = time.monotonic()

    work = Path(tempfile.mkdtemp(prefix="agentgov-bench-"))
    log(f"workdir {work}; building {count} events")
    pool = EventPool.build(count)
    log(f"{count} events completed by the SDK and encoded in {pool.seconds:.1f}s")
    rss = RssSampler().start()
    doc: dict[str, Any] = {
        "smoke": smoke, "machine": report.machine(), "events": count, "event_bytes": round(pool.mean_bytes, 1),
        "partitions": 6, "batch": {"scorer_messages": SCORER_BATCH, "scorer_seconds": SCORER_BATCH_SECONDS,
                                   "sink_rows": SINK_BATCH_ROWS, "sink_seconds": SINK_BATCH_SECONDS},
        "generation_seconds": round(pool.seconds, 1), "throughput": {}, "latency": [],
    }
    with EmbeddedBroker(free_port(), work / "tansu.log") as broker:
        assert broker.proc is not None
        rss.watch(broker.proc.pid)
        bootstrap = broker.bootstrap
        source = scenario_settings(bootstrap, work, "source")
        ensure_topics(source)
        topic = source.topic_transitions
        rate, counts = produce_all(bootstrap, topic, pool.messages)
        doc["throughput"]["producer_raw"] = {"events_per_s": round(rate, 1), "events": count}
        log(f"produced at {rate:,.0f}/s; partitions {counts}")
        per_event = pool.seconds / count  # to plan when paced events must be ready
        del pool
        # Each correlation run gets a topic of its own, with at most 50,000 events (keeps `make bench` short),
        # stamped as a live stream's (correlation.burst_event_times) so the correlator judges them within the run.
        corr_count = args.correlation_events or min(count, 50_000)
        corr_times = correlation.burst_event_times(corr_count, time.time())
        corr_source = EventPool.build(corr_count, occurred_at_ms=corr_times).messages if "correlation" in only else []
        t = doc["throughput"]
        for procs, name in ((1, "ceiling_1_process"), (2, "ceiling_2_processes")) if "ceiling" in only else ():
            w = rss.window()
            t[name] = ceiling(bootstrap, topic, counts, procs, work, rss)
            t[name]["cpu_seconds"] = w.close()
            log(f"{name}: {t[name]}")
        for scorers, name in ((1, "agentgov_1_scorer"), (2, "agentgov_2_scorers")) if "agentgov" in only else ():
            w = rss.window()
            t[name] = agentgov(bootstrap, topic, count, scorers, work, rss)
            t[name]["cpu_seconds"] = w.close()
            log(f"{name}: {t[name]}")
        if "quix" in only:
            w = rss.window()
            t["quix"] = quix(bootstrap, topic, count, work, rss)
            t["quix"]["cpu_seconds"] = w.close()
            log(f"quix: {t['quix']}")
        if "latency" in only:
            doc["latency"] = latency(bootstrap, rates, lat_seconds, per_event, work, rss, scorers=2)
        if "correlation" in only:
            doc["correlation"] = correlation.compare(
                corr_source, rate=1000 if smoke else 2000, seconds=lat_seconds,
                chain_every=100 if smoke else 200, work=work, rss=rss, per_event_gen=per_event,
                rounds=1 if smoke else args.correlation_rounds, burst_end_ms=corr_times[-1])
            log(f"correlation: {doc['correlation']}")
        rss.stop()
    if "review" in only:
        # The review queue's first page filtered by agent over 1,000,000 stored findings (target < 500 ms).
        out_json = subprocess.run(
            [sys.executable, "-m", "bench.review_queue", "--findings", str(10_000 if smoke else 1_000_000),
             "--path", str(work / "review-chdb")], capture_output=True, text=True, check=True).stdout
        doc["review_queue"] = json.loads(out_json.strip().splitlines()[-1])
        log(f"review queue: {doc['review_queue']}")
    doc["rss_peak_mb"] = {k: round(v / report.MB, 1) for k, v in sorted(rss.peaks.items())}
    doc["ratios"] = report.ratios(doc)
    doc["targets"] = report.verdicts(doc)
    doc["wall_seconds"] = round(time.monotonic() - started, 1)
    doc["workdir"] = str(work)
    text = json.dumps(doc, indent=2)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text + "\n")
    out.with_suffix(".md").write_text(report.markdown(doc))
    print(text)
    print(report.markdown(doc), file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
