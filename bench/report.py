"""Turns one run's measurements into ratios, target verdicts and a markdown table."""

from __future__ import annotations

import os
import platform
import subprocess
from datetime import UTC, datetime
from typing import Any

MB = 1024 * 1024
TARGETS = {
    "pipeline_over_ceiling": 0.7,
    "pipeline_over_quix": 2.0,
    "scaling_2_over_1": 1.7,
    "p99_ms_at_10k": 500.0,
    "peak_rss_mb": 600.0,
}


def machine() -> dict[str, Any]:
    model = ""
    try:
        with open("/proc/cpuinfo") as f:
            model = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), "")
    except OSError:
        pass
    ram = 0
    try:
        with open("/proc/meminfo") as f:
            ram = int(next(line.split()[1] for line in f if line.startswith("MemTotal"))) * 1024
    except (OSError, StopIteration):
        pass
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                                cwd=os.path.dirname(__file__), timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        commit = ""
    return {"date": datetime.now(UTC).isoformat(timespec="seconds"), "commit": commit,
            "load_average_1m_at_start": round(os.getloadavg()[0], 2), "nproc": os.cpu_count(), "cpu": model,
            "ram_gb": round(ram / 1024**3, 1), "python": platform.python_version(), "platform": platform.platform()}


def quantiles(values: list[float]) -> dict[str, float]:
    if not values:
        return {"n": 0, "p50_ms": float("nan"), "p95_ms": float("nan"), "p99_ms": float("nan"),
                "max_ms": float("nan")}
    s = sorted(values)

    def q(p: float) -> float:
        return round(s[min(len(s) - 1, int(p * len(s)))] * 1000, 1)

    return {"n": len(s), "p50_ms": q(0.50), "p95_ms": q(0.95), "p99_ms": q(0.99), "max_ms": round(s[-1] * 1000, 1)}


def _ratio(a: float | None, b: float | None) -> float | None:
    return round(a / b, 3) if a and b else None


def ratios(doc: dict[str, Any]) -> dict[str, Any]:
    t = doc["throughput"]
    ag1, ag2 = t.get("agentgov_1_scorer", {}).get("events_per_s"), t.get("agentgov_2_scorers", {}).get("events_per_s")
    c1, c2 = t.get("ceiling_1_process", {}).get("events_per_s"), t.get("ceiling_2_processes", {}).get("events_per_s")
    quix = t.get("quix", {}).get("events_per_s")
    best = max(x for x in (ag1, ag2, 0.0) if x is not None)
    return {
        "pipeline_over_ceiling": _ratio(best, c1),
        "pipeline_1_over_ceiling_1": _ratio(ag1, c1),
        "pipeline_2_over_ceiling_2": _ratio(ag2, c2),
        "pipeline_over_quix": _ratio(best, quix),
        "pipeline_1_over_quix": _ratio(ag1, quix),
        "scaling_2_over_1": _ratio(ag2, ag1),
        "ceiling_scaling_2_over_1": _ratio(c2, c1),
    }


def verdicts(doc: dict[str, Any]) -> dict[str, dict[str, Any]]:
    r = doc["ratios"]
    lat = {str(x["offered_per_s"]): x for x in doc.get("latency", [])}
    p99 = lat.get("10000", {}).get("p99_ms")
    # agentgov's own processes; the embedded broker holds every topic of the whole run, so it is reported
    # but not judged (a deployment runs Kafka apart).
    agentgov_rss = [v for k, v in doc["rss_peak_mb"].items() if k.startswith(("scorer", "agentgov"))]
    peak = max(agentgov_rss) if agentgov_rss else None
    out = {}
    for name, measured, target, higher in (
        ("pipeline_over_ceiling", r["pipeline_over_ceiling"], TARGETS["pipeline_over_ceiling"], True),
        ("pipeline_over_quix", r["pipeline_over_quix"], TARGETS["pipeline_over_quix"], True),
        ("scaling_2_over_1", r["scaling_2_over_1"], TARGETS["scaling_2_over_1"], True),
        ("p99_ms_at_10k", p99, TARGETS["p99_ms_at_10k"], False),
        ("peak_rss_mb", peak, TARGETS["peak_rss_mb"], False),
    ):
        met = None if measured is None else (measured >= target if higher else measured <= target)
        out[name] = {"measured": measured, "target": target, "met": met}
    review = doc.get("review_queue")
    if review:  # queue first page by agent over 1M findings; the max of the repeats is judged
        out["review_queue_first_page_ms"] = {"measured": review["first_page_ms_max"], "target": review["target_ms"],
                                             "met": review["first_page_ms_max"] < review["target_ms"]}
    return out


def markdown(doc: dict[str, Any]) -> str:
    m, t, r = doc["machine"], doc["throughput"], doc["ratios"]
    lines = [f"agentgov benchmark, {m['date']}: {m['nproc']} cores ({m['cpu']}), {m['ram_gb']} GB RAM, "
             f"{doc['events']} events of ~{doc['event_bytes']:.0f} B over {doc['partitions']} partitions"
             + (" (SMOKE: sizes too small to mean anything)" if doc["smoke"] else ""), "",
             "| what | events/s |", "| --- | ---: |"]
    for key, row in t.items():
        lines.append(f"| {key.replace('_', ' ')} | {row.get('events_per_s', 0):,.0f} |")
    lines += ["", "| latency: offered events/s | achieved | p50 ms | p95 ms | p99 ms | max ms |",
              "| ---: | ---: | ---: | ---: | ---: | ---: |"]
    for row in doc.get("latency", []):
        lines.append(f"| {row['offered_per_s']:,} | {row['achieved_per_s']:,.0f} | {row['p50_ms']} | {row['p95_ms']} "
                     f"| {row['p99_ms']} | {row['max_ms']} |")
    corr = doc.get("correlation")
    if corr:
        a, b = corr["with_correlator"], corr["without_correlator"]
        lines += ["", "| correlation stage (same run) | without correlator | with correlator |",
                  "| --- | ---: | ---: |",
                  f"| throughput end to end, events/s | {b['throughput']['events_per_s']:,.0f} "
                  f"| {a['throughput']['events_per_s']:,.0f} |",
                  f"| event to stored at {a['latency']['offered_per_s']:,}/s offered, p50 / p95 ms "
                  f"| {b['latency']['p50_ms']} / {b['latency']['p95_ms']} | {a['latency']['p50_ms']} / "
                  f"{a['latency']['p95_ms']} |",
                  f"| chain's last event to page, p50 / p95 ms (without: in one run, paged by a scorer; with: "
                  f"split over two runs, paged by the correlator) | {b['to_page']['p50_ms']} / "
                  f"{b['to_page']['p95_ms']} ({b['paged']}/{b['chains']}) | {a['to_page']['p50_ms']} / "
                  f"{a['to_page']['p95_ms']} ({a['paged']}/{a['chains']}) |",
                  f"| p50 to page added by the stage, ms | | {corr.get('to_page_p50_ms_added')} |",
                  f"| throughput with / without (with: until the correlator has judged every fact) | | "
                  f"{corr['throughput_with_over_without']} |",
                  f"| main path only (to the last stored assessment), with / without | | "
                  f"{corr.get('main_path_with_over_without')} |"]
        if "cpu_seconds" in a["throughput"] and "cpu_seconds" in b["throughput"]:
            by_a, by_b = _cpu_by_role(a["throughput"]["cpu_seconds"]), _cpu_by_role(b["throughput"]["cpu_seconds"])
            lines.append("| CPU-s over the throughput run (start-up included), by role | "
                         + ", ".join(f"{k} {v:.2f}" for k, v in by_b.items()) + f" (all {sum(by_b.values()):.2f}) | "
                         + ", ".join(f"{k} {v:.2f}" for k, v in by_a.items()) + f" (all {sum(by_a.values()):.2f}) |")
        rounds = corr.get("rounds", [])
        if len(rounds) > 1:  # the figures above are the median round's; the ratios the rounds' medians
            lines += ["", f"| correlation round (median: {corr['median_round']}) | order | events/s without / with "
                      "| ratio | main path ratio | p50 to page without / with, ms | added | late facts |",
                      "| ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: |"]
            for i, rnd in enumerate(rounds):
                eps, page = rnd["events_per_s"], rnd["to_page_p50_ms"]
                lines.append(f"| {i} | {rnd['order']} | {eps['without_correlator']:,.0f} / "
                             f"{eps['with_correlator']:,.0f} | {rnd['throughput_with_over_without']} | "
                             f"{rnd.get('main_path_with_over_without')} | "
                             f"{page['without_correlator']} / {page['with_correlator']} | "
                             f"{rnd.get('to_page_p50_ms_added')} | {rnd.get('late_facts')} |")
    lines += ["", "| peak RSS | MB |", "| --- | ---: |"]
    for key, mb in sorted(doc["rss_peak_mb"].items()):
        lines.append(f"| {key} | {mb:.0f} |")
    lines += ["", "| ratio (same run) | measured | target | met |", "| --- | ---: | ---: | --- |"]
    for name, v in doc["targets"].items():
        met = {True: "yes", False: "**no**", None: "n/a"}[v["met"]]
        lines.append(f"| {name.replace('_', ' ')} | {v['measured']} | {v['target']} | {met} |")
    lines.append(f"| pipeline 1 scorer / ceiling 1 process | {r['pipeline_1_over_ceiling_1']} | | |")
    lines.append(f"| pipeline 2 scorers / ceiling 2 processes | {r['pipeline_2_over_ceiling_2']} | | |")
    lines.append(f"| ceiling 2 processes / 1 process | {r['ceiling_scaling_2_over_1']} | | |")
    return "\n".join(lines) + "\n"


def _cpu_by_role(cpu: dict[str, float]) -> dict[str, float]:
    """CPU-seconds keyed "role[pid]" summed by role (two scorers, two correlators), largest first."""
    out: dict[str, float] = {}
    for key, seconds in cpu.items():
        role = key.split("[", 1)[0].replace("other_processes_on_the_machine", "other")
        out[role] = out.get(role, 0.0) + seconds
    return dict(sorted(out.items(), key=lambda kv: -kv[1]))
