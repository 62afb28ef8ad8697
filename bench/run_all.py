"""`make bench`: every bench in turn (each alone on the machine), then a summary.

Results land in bench/results/*.json; the summary in bench/results/summary.md.
"""

from __future__ import annotations

import json
import subprocess
import sys

from bench._harness import RESULTS

BENCHES = [
    "bench.backend_rtf",
    "bench.gateway_vs_direct",
    "bench.failover",
    "bench.reconciler_push",
    "bench.formats",
    "bench.crash",
]


def summary() -> str:
    lines = ["# Bench summary", ""]
    gw = json.loads((RESULTS / "gateway_vs_direct.json").read_text())
    d, g = gw["direct"], gw["gateway"]
    lines += [
        f"Gateway vs direct ({gw['load']}, same fake backend, same run):",
        "",
        "| path | req/s | p50 ms | p99 ms |",
        "|---|---|---|---|",
        f"| direct | {d['rps']:.0f} | {d['p50_ms']:.2f} | {d['p99_ms']:.2f} |",
        f"| gateway | {g['rps']:.0f} | {g['p50_ms']:.2f} | {g['p99_ms']:.2f} |",
        "",
        f"Throughput ratio {gw['throughput_ratio']:.2f}x (reference router 0.42x), "
        f"p99 ratio {gw['p99_ratio']:.2f}x. Envoy RSS "
        f"{gw['memory']['envoy_rss_before_mb']:.0f} MB -> peak "
        f"{gw['memory']['envoy_rss_peak_mb']:.0f} MB for 16 concurrent 25 MB uploads.",
        "",
    ]
    fo = json.loads((RESULTS / "failover.json").read_text())
    m = fo["median"]
    lines += [
        f"Failover (median of {len(fo['runs'])} runs):",
        "",
        "| figure | whisper-gateway | reference router |",
        "|---|---|---|",
        f"| killed backend: last request sent to it | {m['kill_to_last_request_sent_s']:.2f} s"
        " | 5.2 s |",
        f"| killed backend: probes' verdict | {m['kill_to_probe_verdict_s']:.2f} s | 5.2 s |",
        f"| client failures during a kill under load | {fo['client_failures_during_kill_total']}"
        f" of {fo['requests_during_kill_total']} (in flight on the dead backend) | n/a |",
        f"| health decision -> Envoy ACK of EDS | {m['decision_to_eds_ack_ms']:.1f} ms | n/a |",
        f"| restarted backend ready -> first request | "
        f"{m['backend_ready_to_first_served_s']:.1f} s | 4.3 s |",
        "",
    ]
    rp = json.loads((RESULTS / "reconciler_push.json").read_text())
    lines += [
        f"Reconciler debounce ({rp['endpoints']} endpoints, real Envoy, same run):",
        "",
        "| debounce | verdict -> EDS ACK median / p99 | burst of 50 verdicts over 50 ms: "
        "pushes, to last ACK |",
        "|---|---|---|",
    ]
    for key in ("no_debounce", "debounced"):
        r = rp[key]
        v, b = r["verdict_to_eds_ack_ms"], r["burst_of_50_over_50ms"]
        lines.append(
            f"| {r['debounce_ms']:.0f} ms | {v['median']:.1f} / {v['p99']:.1f} ms "
            f"| {b['pushes_median']:.0f}, {b['to_last_ack_ms_median']:.0f} ms |"
        )
    fm = json.loads((RESULTS / "formats.json").read_text())
    ev, rd = fm["events"], fm["render_10min"]
    lines += [
        "",
        f"Streamed events ({ev['direct']['n']} per path, same run), latency per event:",
        "",
        "| path | p50 ms | p99 ms |",
        "|---|---|---|",
    ]
    for key in ("direct", "gateway_pass_through", "gateway_openai_conversion"):
        lines.append(f"| {key} | {ev[key]['p50_ms']:.2f} | {ev[key]['p99_ms']:.2f} |")
    met = "met" if ev["target_met"] else "missed"
    lines += [
        "",
        f"Conversion adds {ev['conversion_added_p50_ms']:.2f} ms at p50 and "
        f"{ev['conversion_added_p99_ms']:.2f} ms at p99 (target < 1 ms at p99: {met}). "
        f"srt of a 10-minute file ({rd['segments']} segments): {rd['srt_median_ms']:.1f} ms "
        f"vs {rd['verbose_json_median_ms']:.1f} ms for verbose_json passed through "
        f"(+{rd['srt_added_ms']:.1f} ms).",
    ]
    return "\n".join(lines)


def main() -> None:
    for name in BENCHES:
        print(f"== {name}", flush=True)
        subprocess.run([sys.executable, "-m", name], check=True)
    text = summary()
    (RESULTS / "summary.md").write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
