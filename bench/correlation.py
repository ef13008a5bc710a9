"""The correlation stage's cost and its time to page: the pipeline with the stage (access facts, and
``CORRELATORS`` correlators in one group) beside the pipeline without it (no access facts, no correlator), in
the same benchmark run. Two correlators, as the scorers are two and as the compose stack deploys them
(``deploy.replicas: 2``): until session 11 the stage had one, whose last grace period of facts was judged by
one process on one core after the main path had ended (the correlator 1.3-1.4 s behind the writer).

For each of the two runs, one ``bench.agentgov_run`` child:

- throughput: ``count`` events at full speed, end to end: first scored to last stored, and with the stage
  to the later of that and the correlators having judged every fact (their fact counters, summed, still for
  1.5 s and no fact of the burst left waiting for the watermark). A pipeline in its steady state judges each fact one
  grace period after it arrived, so the judging belongs in the stage's cost; stamped "now", as a burst
  would be, the facts would be released after the grace (300 s), when the run is over, and the run would
  time the arrival half of the stage alone (the case until session 7: about half its CPU per fact). So the
  burst's event time advances at about the rate the pipeline processes it, as a live stream's does
  (:func:`burst_event_times`, 10,000 events/s), the stage's grace is ``BENCH_GRACE_S`` (2 s, not the 300 s
  default, which would hold a 5 s burst whole until its end), and the burst is followed in the log by
  :func:`tail_events`, later than the burst, one per source and fact partition: the stream going on, which
  moves every partition's watermark past the burst as soon as it arrives. Until session 8 the tail was one
  event per fact partition, produced once every assessment was stored: the judging of the burst's last
  grace period (about 40% of its facts) could not start before the main path was over, and, the watermark
  being per source partition since session 7, part of it waited a further second for the wall clock (an
  idle wait that is not the stage's cost). The judging cost of a fact does
  not depend on the grace, only when it is paid; facts arriving later than the grace are counted
  (``late_facts``) and judged too;
- time to page at ``rate`` events/s offered: benign events paced for ``seconds``, with a
  transient-privilege chain every ``chain_every`` events (a privileged grant, its revoke about a second
  later). With the correlator the two steps are in different runs on different partitions, so no scorer
  sees the chain whole and the correlator pages it; without it they are in one run, so the scorer does.
  The time to page is from the revoke being published (its ``occurred_at`` is its planned send time) to
  the log line of the process that set ``agentgov_escalation_chain_detected``: the correlator's
  ``cross-run escalation paged early`` or the scorer's ``hidden escalation detected``. The difference of
  the two p50s is what the stage adds to the time to page (issue 10's 300 ms budget).

The chain's finding is published at the watermark, ``correlation_grace_seconds`` (default 300 s) after
its last event: that wait is by design (docs/guarantees.md, "Early pages") and is not timed here.
"""

from __future__ import annotations

import json
import re
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from pipeline.broker import EmbeddedBroker, free_port
from pipeline.facts import partition_for
from pipeline.topics import ensure_topics
from pipeline.workload import run_step

from . import report
from .events import Message, _completer, drafts, produce_all, produce_paced, producer
from .procs import Child, RssSampler
from .spec import scenario_settings

PAGE_LINE = re.compile(r'^ts=(\S+) .*msg="cross-run escalation paged early".* event_id=(\S+)')
SCORER_PAGE_LINE = re.compile(r'^ts=(\S+) .*msg="hidden escalation detected".* chains="(.*)"')


def _runs(i: int) -> tuple[str, str]:
    """Two run ids of chain ``i`` on different partitions of the 6 (``partition_for``: librdkafka's default
    partitioner, consistent_random, hashes a key with crc32 too)."""
    grant = f"run-xb-{i}-g"
    for k in range(100):
        revoke = f"run-xb-{i}-r{k}"
        if partition_for(revoke, 6) != partition_for(grant, 6):
            return grant, revoke
    raise AssertionError("unreachable")


def paced_events(n: int, rate: int, start: float, chain_every: int, seed: int, cross_run: bool = True
                 ) -> tuple[list[Message], dict[str, float], dict[str, str]]:
    """``n`` events stamped ``start + k / rate``; every ``chain_every``-th pair of slots carries a
    transient-privilege chain (grant, and the revoke about 1 s later), over two runs on two partitions
    (``cross_run``) or inside one run. Returns the encoded messages, the event id of each revoke (the
    chain's last event) with its stamp (its planned send time), and each revoke's run id."""
    pub = _completer()
    base = drafts(n, seed)
    slots: dict[int, dict[str, Any]] = {}
    for c, k in enumerate(range(chain_every, n - rate, chain_every)):
        grant_run, revoke_run = _runs(c)
        if not cross_run:
            revoke_run = grant_run
        target = f"u-bench-xrun-{seed}-{c}"
        slots[k] = run_step(grant_run, 0, "agent-jml-04", "jml-provisioning", ("mover", f"HR-8{c:05d}"),
                            "grant_entitlement", target, "aws", "role/Admin", 3, resource__entitlement="aws-admin",
                            decision__approved_by="mgr-eng", attributes={"demo.scenario": "xrun_transient_privilege"})
        slots[k + rate + chain_every // 2] = run_step(  # between two grants' slots
            revoke_run, 0, "agent-jml-04", "jml-provisioning", ("mover", f"HR-9{c:05d}"), "revoke_entitlement",
            target, "aws", "role/Admin", 3, resource__entitlement="aws-admin",
            attributes={"demo.scenario": "xrun_transient_privilege"})
    messages: list[Message] = []
    last_ids: dict[str, float] = {}
    runs: dict[str, str] = {}
    for k in range(n):
        chain = k in slots
        draft = dict(slots.get(k, base[k]), occurred_at=datetime.fromtimestamp(start + k / rate, UTC))
        record = pub.complete(draft)
        if chain and draft["action"] == "revoke_entitlement":
            last_ids[record["event_id"]] = start + k / rate
            runs[record["event_id"]] = record["run_id"]
        messages.append((record["run_id"].encode(), pub.serde.encode(record)))
    return messages, last_ids, runs


def _ts(stamp: str) -> float:
    return datetime.strptime(stamp, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=UTC).timestamp()


def pages(logs: list[Path]) -> dict[str, float]:
    """event_id of a chain's last event -> unix time its page was set (first time), from the correlators' logs."""
    out: dict[str, float] = {}
    for log in logs:
        if not log.exists():
            continue
        for line in log.read_text(errors="replace").splitlines():
            m = PAGE_LINE.match(line)
            if m:
                at, eid = _ts(m.group(1)), m.group(2).strip('"')
                out[eid] = min(out.get(eid, at), at)
    return out


def scorer_pages(logs: list[Path], runs: dict[str, str]) -> dict[str, float]:
    """event_id of a chain's last event -> unix time a scorer paged its run (first time), from the scorers'
    ``hidden escalation detected`` lines (they name pattern, agent and run of every chain)."""
    by_run = {run: eid for eid, run in runs.items()}
    out: dict[str, float] = {}
    for log in logs:
        if not log.exists():
            continue
        for line in log.read_text(errors="replace").splitlines():
            m = SCORER_PAGE_LINE.match(line)
            if not m:
                continue
            for run in re.findall(r"'transient_privilege', '[^']*', '([^']*)'", m.group(2)):
                if run in by_run:
                    at = _ts(m.group(1))
                    out[by_run[run]] = min(out.get(by_run[run], at), at)
    return out


def run(bootstrap: str, source: list[Message], tail: tuple[list[Message], int], rate: int, seconds: float,
        chain_every: int, correlator: bool, work: Path, rss: RssSampler, per_event_gen: float) -> dict[str, Any]:
    """One run on a source topic of its own: ``source`` first (throughput), then ``tail`` (the messages of
    :func:`tail_events` and the facts they leave waiting), then the paced events."""
    name = "with_correlator" if correlator else "without_correlator"
    settings = scenario_settings(bootstrap, work, name, access_facts=correlator,
                                 correlation_grace_seconds=BENCH_GRACE_S)
    ensure_topics(settings)
    count = len(source) + len(tail[0])
    # The tail right behind the burst, as a live stream goes on: its facts move the burst past every
    # watermark as soon as they arrive. A tail fact cannot make a burst fact late: a fact partition's
    # watermark follows each source partition's own facts, which arrive in their source order.
    _, landed = produce_all(bootstrap, settings.topic_transitions, source + tail[0])
    if len(landed) < settings.topic_partitions:
        raise AssertionError(f"the burst and tail reached only partitions {sorted(landed)}")
    metrics_ports = [free_port() for _ in range(CORRELATORS)]
    child = Child("bench.agentgov_run", {"settings": report_settings(settings), "scorers": 2,
                                         "correlators": CORRELATORS if correlator else 0,
                                         "correlator_metrics_ports": metrics_ports}, work, name)
    rss.watch(child.pid)
    p = producer(bootstrap)
    try:
        phase = rss.window()  # CPU of the throughput phase alone (start-up included), apart from the paced run
        child.ask("start")
        first = child.ask(f"wait {count} 600")  # throughput: produced before the start
        # With the stage, the throughput run ends when the correlators have judged every fact too, not at the
        # last stored assessment: a correlator lagging behind the writer is the stage's cost, and the paced
        # run below must not start on its backlog (its pages would time the backlog, not the stage).
        caught_up = correlator_caught_up(metrics_ports, tail[1]) if correlator else None
        end = max(first["at"], caught_up["at"]) if caught_up else first["at"]
        throughput_cpu = phase.close()
        n = max(rate, int(rate * seconds))
        start = time.time() + n * per_event_gen * 1.5 + 1.0
        messages, last_ids, runs = paced_events(n, rate, start, chain_every, seed=300 + int(correlator),
                                                cross_run=correlator)
        if time.time() > start:
            start = time.time() + 0.5
            messages, last_ids, runs = paced_events(n, rate, start, chain_every, seed=300 + int(correlator),
                                                    cross_run=correlator)
        lat_topic = settings.topic_transitions
        worst = produce_paced(p, lat_topic, messages, rate, start)
        sent_for = time.time() - start
        stored = child.ask(f"wait {count + n} 600")
        log_paths = [settings.state_dir / f"correlator-{i}.log" for i in range(CORRELATORS)]
        scorer_logs = [settings.state_dir / f"scorer-{i}.log" for i in range(2)]
        paged: dict[str, float] = {}
        deadline = time.monotonic() + 120  # the last chain's page may trail the last event stored by a batch
        while time.monotonic() < deadline:
            paged = pages(log_paths) if correlator else scorer_pages(scorer_logs, runs)
            if all(i in paged for i in last_ids):
                break
            time.sleep(0.2)
        rep = child.ask("report")
    finally:
        child.close()
    span, main_span = end - rep["first_scored_at"], first["at"] - rep["first_scored_at"]
    samples = [lat for _, lat in rep["latency"]]
    to_page = [paged[i] - stamped for i, stamped in last_ids.items() if i in paged]
    return {
        # the burst's events (the tail's few are the stream going on, not the work timed)
        "throughput": {"events": len(source), "seconds": round(span, 3),
                       "events_per_s": round(len(source) / span, 1),
                       "to_last_stored_events_per_s": round(len(source) / main_span, 1),
                       "cpu_seconds": throughput_cpu,
                       **({"correlator_facts": caught_up["facts"], "late_facts": caught_up["late"],
                           "correlator_behind_writer_s": round(caught_up["at"] - first["at"], 3)}
                          if caught_up else {})},
        "latency": {"offered_per_s": rate, "achieved_per_s": round(n / sent_for, 1), "events": n,
                    "producer_max_lag_ms": round(worst * 1000, 1), **report.quantiles(samples[count:count + n])},
        "chains": len(last_ids), "chains_span_runs": correlator, "paged": len(to_page),
        "paged_by": "correlator" if correlator else "scorer", "to_page": report.quantiles(to_page),
        "stored": stored["stored"],
    }


FACTS_LINE = re.compile(r"^agentgov_correlator_facts_total (\S+)$", re.M)
PENDING_LINE = re.compile(r"^agentgov_correlator_pending_facts (\S+)$", re.M)
LATE_LINE = re.compile(r"^agentgov_correlator_late_facts_total (\S+)$", re.M)
BENCH_GRACE_S = 2.0
CORRELATORS = 2  # the stage's replicas (one consumer group over the 2 x 6 fact partitions)
BURST_EVENTS_PER_S = 10_000
TAIL_AFTER_S = 10.0  # past the grace: the tail releases the whole burst


def burst_event_times(count: int, now: float) -> list[int]:
    """Event times (ms) of the throughput events: ``BURST_EVENTS_PER_S`` apart, in order, the last a minute
    before ``now``."""
    start = now * 1000 - 60_000 - count * 1000 / BURST_EVENTS_PER_S
    return [int(start + i * 1000 / BURST_EVENTS_PER_S) for i in range(count)]


def tail_events(now: float, sources: int = 6, partitions: int = 6) -> tuple[list[Message], int]:
    """The stream going on after the burst: for every source partition (the scorers' input, where the
    producer puts the run) and every fact partition *j*, one benign grant stamped ``now``, its target on
    by-target partition *j* and its agent on by-agent partition *j*. A fact partition's watermark is the
    least over the source partitions it hears from (``KeyedState.watermark``), so each pair needs a later
    fact for the partition to release the burst. Returns the messages and the facts they make (two each),
    which stay waiting for the watermark at the end of the run."""
    pub = _completer()

    def on(prefix: str, j: int, n: int) -> str:
        """A key of ``prefix`` on partition ``j`` of ``n``: an entity key's fact partition, or a run's source
        partition (the producer's partitioner hashes the same way as ``partition_for``)."""
        return next(f"{prefix}-{i}" for i in range(100_000) if partition_for(f"{prefix}-{i}", n) == j)

    out: list[Message] = []
    for s in range(sources):
        run = on(f"run-bench-tail-{s}", s, sources)
        for j in range(partitions):
            draft = run_step(run, j, on("agent-bench-tail", j, partitions), "jml-provisioning",
                             ("joiner", f"HR-7{s:02d}{j:03d}"), "assign_role",
                             on(f"u-bench-tail-{s}", j, partitions), "okta", "role/Reader", 1)
            record = pub.complete(dict(draft, occurred_at=datetime.fromtimestamp(now, UTC)))
            out.append((record["run_id"].encode(), pub.serde.encode(record)))
    return out, 2 * sources * partitions


def correlator_caught_up(ports: list[int], waiting_allowed: int, quiet: float = 1.5, timeout: float = 600.0
                         ) -> dict[str, Any]:
    """Poll the correlators' metrics (one port each) until ``agentgov_correlator_facts_total``, summed, has not
    moved for ``quiet`` seconds (the scorers are done by then: every assessment is stored) with at most
    ``waiting_allowed`` facts waiting for the watermark (``agentgov_correlator_pending_facts``: the tail's);
    answers the count and when the correlators were done: the last fact consumed, or the burst's last fact
    judged if later."""
    import urllib.request

    facts, moved, judged_at = -1.0, time.time(), None
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = waiting = late_total = 0.0
        for port in ports:
            try:
                body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2).read().decode()
            except OSError:
                value = waiting = -1.0  # not serving yet
                break
            m, p, lt = FACTS_LINE.search(body), PENDING_LINE.search(body), LATE_LINE.search(body)
            if not (m and p):
                value = waiting = -1.0
                break
            value, waiting = value + float(m.group(1)), waiting + float(p.group(1))
            late_total += float(lt.group(1)) if lt else 0.0
        now = time.time()
        if value != facts:
            facts, moved, judged_at = value, now, None
        if judged_at is None and facts > 0 and 0 <= waiting <= waiting_allowed:
            judged_at = now
        if judged_at is not None and now - moved >= quiet:
            return {"facts": int(facts), "at": max(moved, judged_at), "late": int(late_total)}
        time.sleep(0.05)
    raise TimeoutError(f"correlator not caught up after {timeout:g}s: {facts} facts, {waiting} waiting")


def report_settings(settings: Any) -> dict[str, Any]:
    return dict(json.loads(settings.model_dump_json()))


def compare(source: list[Message], rate: int, seconds: float, chain_every: int, work: Path,
            rss: RssSampler, per_event_gen: float, rounds: int = 5, burst_end_ms: int | None = None
            ) -> dict[str, Any]:
    """Both runs over the same source events, ``rounds`` times in one benchmark run, the order alternating
    (without/with, with/without, ...), each run on a fresh embedded broker of its own (Tansu keeps its log
    in memory, and a broker holding earlier runs' records answers more slowly). On two shared, noisy cores
    one pair's ratio ranged 0.57-0.95 over four runs of the same commit, and the three rounds of one
    ``make bench`` 0.64-0.75 (session 11), so five rounds by default. Reported: each round's figures,
    the medians of the rounds' ratio and added time to page, and the full figures of the median round
    (``with_correlator``/``without_correlator``).

    The tail is stamped ``TAIL_AFTER_S`` after the burst's last event (``burst_end_ms``, when the burst was
    made by :func:`burst_event_times`), not at the time of this call: in ``make bench`` the burst is made
    minutes before this scenario runs, and a tail more than 5 minutes past the burst moves a fact partition's
    watermark floor (``KeyedState.floor``: 5 minutes behind the latest event time) past the whole burst as
    soon as one source's tail arrives, making the other sources' facts late (61,051 of 88,938 in the first
    ``make bench`` of session 8)."""
    pairs: list[dict[str, Any]] = []
    probe = scenario_settings("127.0.0.1:1", work, "probe")
    tail_at = burst_end_ms / 1000 + TAIL_AFTER_S if burst_end_ms is not None else time.time()
    tail = tail_events(tail_at, probe.topic_partitions, probe.facts_partitions)
    for r in range(rounds):
        pair: dict[str, Any] = {}
        for correlator in (False, True) if r % 2 == 0 else (True, False):
            key = "with_correlator" if correlator else "without_correlator"
            with EmbeddedBroker(free_port(), work / f"tansu-{key}-{r}.log") as broker:
                assert broker.proc is not None
                rss.watch(broker.proc.pid)
                w = rss.window()
                pair[key] = run(broker.bootstrap, source, tail, rate, seconds, chain_every, correlator, work,
                                rss, per_event_gen)
                pair[key]["cpu_seconds"] = w.close()
        a, b = pair["with_correlator"], pair["without_correlator"]
        pair["throughput_with_over_without"] = report._ratio(a["throughput"]["events_per_s"],
                                                             b["throughput"]["events_per_s"])
        pair["main_path_with_over_without"] = report._ratio(a["throughput"]["to_last_stored_events_per_s"],
                                                            b["throughput"]["to_last_stored_events_per_s"])
        pair["stored_p50_ms_added"] = round(a["latency"]["p50_ms"] - b["latency"]["p50_ms"], 1)
        if a["to_page"]["n"] and b["to_page"]["n"]:
            # the same chain paged by the correlator (split over runs) vs by a scorer (inside one run)
            pair["to_page_p50_ms_added"] = round(a["to_page"]["p50_ms"] - b["to_page"]["p50_ms"], 1)
        pairs.append(pair)
    ranked = sorted(range(rounds), key=lambda i: pairs[i]["throughput_with_over_without"] or 0.0)
    median = pairs[ranked[rounds // 2]]
    out: dict[str, Any] = {
        "rounds": [{"order": "without, with" if i % 2 == 0 else "with, without",
                    "events_per_s": {k: p[k]["throughput"]["events_per_s"]
                                     for k in ("without_correlator", "with_correlator")},
                    "to_page_p50_ms": {k: p[k]["to_page"].get("p50_ms")
                                       for k in ("without_correlator", "with_correlator")},
                    "late_facts": p["with_correlator"]["throughput"].get("late_facts"),
                    **{k: p.get(k) for k in ("throughput_with_over_without", "main_path_with_over_without",
                                             "stored_p50_ms_added", "to_page_p50_ms_added")}}
                   for i, p in enumerate(pairs)],
        "median_round": ranked[rounds // 2],
        "with_correlator": median["with_correlator"], "without_correlator": median["without_correlator"],
        "throughput_with_over_without": _median([p["throughput_with_over_without"] for p in pairs]),
        "main_path_with_over_without": _median([p["main_path_with_over_without"] for p in pairs]),
        "stored_p50_ms_added": _median([p["stored_p50_ms_added"] for p in pairs]),
    }
    added = [p["to_page_p50_ms_added"] for p in pairs if "to_page_p50_ms_added" in p]
    if added:
        out["to_page_p50_ms_added"] = _median(added)
    return out


def _median(values: list[float]) -> float:
    s = sorted(values)
    mid = len(s) // 2
    return round(s[mid] if len(s) % 2 else (s[mid - 1] + s[mid]) / 2, 3)
