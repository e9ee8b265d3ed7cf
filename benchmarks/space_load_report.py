"""The page of a Space load test (benchmarks/space_load.py): its tables and the findings computed from them.

The findings state the goal's verdict two ways (against the Space before the work, one request at a time, when
the run measured it; against today's Space with one client) and the ceiling the machine puts on the second: when
one client alone keeps ``c`` of ``n`` logical CPUs busy, ``n / c`` is the most any number of clients can get over
it at the same CPU per request.
"""

from __future__ import annotations

import os
import statistics
from typing import Any, Dict, List, Optional, Sequence

GOAL_SPEEDUP, GOAL_P95_S = 3.0, 2.0


def at_level(levels: Sequence[Dict[str, Any]], clients: int) -> Optional[Dict[str, Any]]:
    """The level of ``levels`` run with ``clients`` clients (None when the run had none)."""
    return next((lv for lv in levels if lv["clients"] == clients), None)


def goal_met(speedup: Optional[float], at8: Optional[Dict[str, Any]]) -> Optional[bool]:
    """The goal for a throughput ratio measured at 8 clients: at least 3x, p95 <= 2 s, no error (None: no ratio)."""
    return None if speedup is None else bool(speedup >= GOAL_SPEEDUP and at8["errors"] == 0 and at8["p95_s"] <= GOAL_P95_S)


def _load(lv: Dict[str, Any]) -> str:
    return f"{lv['load_average_before'][0]:.2f} -> {lv['load_average_after'][0]:.2f}" if "load_average_before" in lv else "-"


def config_name(c: Dict[str, Any]) -> str:
    if c.get("label"):
        return f"{c['label']} (its own defaults)"

    def val(key: str, unit: str = "") -> str:
        return "default" if c.get(key) is None else f"{c[key]:g}{unit}"

    return (f"workers {val('workers')}, batch {val('max_batch_size')}, waiting {val('max_waiting')}, "
            f"poll {val('queue_poll_ms', ' ms')}")


def markdown(r: Dict[str, Any]) -> str:
    m = r["machine"]
    q = r["queue"]
    lines = [
        "# Space load test: concurrent clients on 127.0.0.1",
        "",
        f"- command: `{r['command']}`",
        f"- date: {r['date']}; load average before {', '.join(f'{x:.2f}' for x in r['load_average_before'])}, "
        f"after {', '.join(f'{x:.2f}' for x in r['load_average_after'])}",
        f"- machine: {m.get('cpu', '?')}, {m.get('logical_cpus', m.get('cpus', '?'))} logical CPUs (clients and server share them)",
        f"- model: {r['model']}; images: {r['images']}; target risk sent: {r['risk']}",
        f"- server settings: {config_name(q)} (\"default\": spaces_demo/app.py's own), {q['torch_threads']} torch "
        "thread per forward pass; beyond the waiting places the answer is \"The service is busy\"",
        f"- clients: gradio_client, one per thread of this process, TLS context {r.get('client_tls', 'per_call')} "
        "(see --client_tls)",
        f"- the analysis alone, in-process (decode, checks, forward, answer): median {r['analysis_in_process']['median_ms']:.0f} ms, "
        f"p95 {r['analysis_in_process']['p95_ms']:.0f} ms",
        "",
        "| clients | requests | errors | busy | p50 ms | p95 ms | throughput req/s | server RSS MB before -> after | "
        "CPU ms/request server + client | cores busy | 1-min load before -> after |",
        "|---:|---:|---:|---:|---:|---:|---:|---|---|---:|---|",
    ]
    for lv in r["levels"]:
        cpu = (f"{lv['server_cpu_ms_per_request']:.0f} + {lv['client_cpu_ms_per_request']:.0f}"
               if "server_cpu_ms_per_request" in lv else "-")
        lines.append(f"| {lv['clients']} | {lv['requests']} | {lv['errors']} | {lv['busy']} | {lv['p50_s'] * 1e3:.0f} | "
                     f"{lv['p95_s'] * 1e3:.0f} | {lv['throughput_rps']:.2f} | {lv['rss_before_mb']:.0f} -> {lv['rss_after_mb']:.0f} | "
                     f"{cpu} | {lv.get('cores_busy', float('nan')):.2f} | {_load(lv)} |")
    lines += ["", "## Findings (computed from the tables of this run)", ""] + [f"- {f}" for f in findings(r)]
    if len(r.get("configs") or []) > 1:
        lines += ["", "## Queue settings compared (each with its own server, same run)", "",
                  "| settings | clients | req/s | p50 ms | p95 ms | errors | busy (p95 of the busy answer) | RSS MB after | "
                  "8 / 1 clients | 1-min load before -> after |",
                  "|---|---:|---:|---:|---:|---:|---|---:|---:|---|"]
        for c in r["configs"]:
            for lv in c["levels"]:
                busy = f"{lv['busy']}" + (f" ({lv['busy_answer_p95_s'] * 1e3:.0f} ms)" if lv.get("busy_answer_p95_s") else "")
                ratio = f"{c['speedup_8_vs_1']:.2f}x" if lv["clients"] == 8 and c.get("speedup_8_vs_1") else ""
                lines.append(f"| {config_name(c)} | {lv['clients']} | {lv['throughput_rps']:.2f} | {lv['p50_s'] * 1e3:.0f} | "
                             f"{lv['p95_s'] * 1e3:.0f} | {lv['errors']} | {busy} | {lv['rss_after_mb']:.0f} | {ratio} | {_load(lv)} |")
    return "\n".join(lines) + "\n"



def _verdict(met: Optional[bool]) -> str:
    return "n/a" if met is None else ("**met**" if met else "**not met**")


def findings(r: Dict[str, Any]) -> List[str]:
    """The goal's verdicts and the ceiling that the machine puts on the ratio, as sentences from ``r``."""
    levels, runs = r["levels"], r.get("configs") or []
    one, at8 = at_level(levels, 1), at_level(levels, 8)
    if not (one and at8):
        return ["the run has no 1-client and 8-client levels to compare"]
    goal = f"at least {GOAL_SPEEDUP:.0f}x with p95 <= {GOAL_P95_S:.0f} s and no error"
    out = []
    before = runs[-1] if runs and runs[-1].get("label") else None
    if before and at_level(before["levels"], 1) and r.get("speedup_8_vs_baseline_1") is None:
        out.append(f"The Space before this work ({before['label']}) served no request with one client: no ratio "
                   f"against it (its errors: {at_level(before['levels'], 1).get('error_examples') or 'none recorded'}).")
    elif before and at_level(before["levels"], 1):
        b1, b8 = at_level(before["levels"], 1), at_level(before["levels"], 8)
        out.append(
            f"Against the Space before this work ({before['label']}), in the same run: 8 clients now get "
            f"{at8['throughput_rps']:.2f} req/s (p95 {at8['p95_s']:.2f} s, {at8['errors']} errors) against its "
            f"{b1['throughput_rps']:.2f} req/s one request at a time: {r['speedup_8_vs_baseline_1']:.2f}x ({goal}: "
            f"{_verdict(r['goal']['met_vs_baseline_1_client'])})"
            + (f"; that Space at 8 clients: {b8['throughput_rps']:.2f} req/s, p95 {b8['p95_s']:.2f} s, "
               f"server CPU {b8['server_cpu_ms_per_request']:.0f} ms per request against "
               f"{at8['server_cpu_ms_per_request']:.0f} ms now." if b8 else "."))
    out.append(f"Against today's Space with one client: {r['speedup_8_vs_1']:.2f}x "
               f"({one['throughput_rps']:.2f} -> {at8['throughput_rps']:.2f} req/s; {goal}: {_verdict(r['goal']['met_vs_1_client'])}).")
    if r.get("speedup_ceiling_8_vs_1"):
        n = r["machine"].get("logical_cpus") or os.cpu_count()
        out.append(
            f"One client alone kept {one['cores_busy']:.2f} of the {n} logical CPUs busy (server "
            f"{one['server_cpu_ms_per_request']:.0f} + client {one['client_cpu_ms_per_request']:.0f} ms of CPU per request, "
            f"sent back to back), so at the same CPU per request no number of clients can exceed {n} / "
            f"{one['cores_busy']:.2f} = {r['speedup_ceiling_8_vs_1']:.2f}x the one-client throughput on this machine; "
            f"8 clients kept {at8['cores_busy']:.2f} busy. Only a cheaper request raises both figures.")
    ours = [c for c in runs if not c.get("label") and at_level(c["levels"], 8)]
    if len(ours) > 1:
        by_name: Dict[str, List[float]] = {}
        for c in ours:  # a setting listed several times in --configs: one server each, in the order run
            by_name.setdefault(config_name(c), []).append(at_level(c["levels"], 8)["throughput_rps"])
        medians = {name: statistics.median(v) for name, v in by_name.items()}
        best = max(medians, key=medians.get)
        parts = [f"{name}: {medians[name]:.2f}" + (f" ({', '.join(f'{x:.2f}' for x in v)})" if len(v) > 1 else "")
                 for name, v in by_name.items()]
        out.append("8-client throughput of today's settings in this run, req/s (median of their servers; each in the "
                   f"order run): {'; '.join(parts)}. Highest: {best}.")
    return out
