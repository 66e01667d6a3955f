#!/usr/bin/env python3
"""Writes the real-traffic report of scripts/bench-traffic into docs/BENCHMARKS.md, between
the markers `<!-- traffic-report:begin -->` and `<!-- traffic-report:end -->` (appended when
absent). Usage: bench-traffic.py OUT_DIR BENCHMARKS_MD SETTINGS"""

import datetime
import importlib.util
import json
import os
import sys

BEGIN = "<!-- traffic-report:begin -->"
END = "<!-- traffic-report:end -->"

# The sweep report's helpers (ms, ceiling, machine, verdict, write_section), from its file.
_spec = importlib.util.spec_from_file_location(
    "bench_report", os.path.join(os.path.dirname(__file__), "bench-report.py")
)
report = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(report)
ms, verdict = report.ms, report.verdict


def level(out, name):
    """The single level of a closed-loop run, or every level of an open-loop one."""
    path = os.path.join(out, f"traffic-{name}.json")
    if not os.path.exists(path):
        return None
    with open(path) as f:
        run = json.load(f)
    return run["levels"]


def tok(x):
    return x["output_tokens_per_second"]


def p(x, key, q):
    s = x.get(key) or {}
    return s.get(q, float("nan"))


def main():
    out, doc, settings = sys.argv[1], sys.argv[2], sys.argv[3]
    ceil = report.ceiling(out).get(8)
    lines = [
        BEGIN,
        "## Real traffic: mixed and natural reply lengths, Poisson arrivals",
        "",
        f"`scripts/bench-traffic` ({settings}), {datetime.date.today().isoformat()}, "
        f"{report.machine()}, CPU runtime, default model, streaming chat, greedy. "
        "(a) rkserve as configured by default (continuous batching, `scheduler.reform = "
        "\"auto\"`); (a0) the same with static runs (`reform = \"off\"`, rkserve before "
        "continuous batching); (b) one request at a time (1 instance, n_batch 1); (c) the "
        "runtime's own decode ceiling at 8 sequences (`runtime_batch`, prefill excluded), "
        "all in one script run. **mixed**: long-form prompts that run to their limit, "
        "max_tokens drawn per request from a seeded log-normal (`--max-tokens-dist`); "
        "**natural**: the load tester's built-in prompts, replies end at EOS.",
        "",
        "| workload | (a) tok/s | (a0) tok/s | (b) tok/s | (a)/(b) | (a0)/(b) | (a)/(c) | (a) TTFT p50 / p99 | (a0) TTFT p99 | (b) TTFT p99 | tokens per reply | failed (a/a0/b) |",
        "|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|",
    ]
    results = {}
    for w in ["mixed", "natural"]:
        a, a0, b = (level(out, f"{w}-{c}") for c in ["batched", "static", "single"])
        if not (a and a0 and b):
            continue
        a, a0, b = a[0], a0[0], b[0]
        results[w] = (a, b)
        vs_c = f"{tok(a) / ceil:.0%}" if ceil else "-"
        lines.append(
            f"| {w} | {tok(a):.1f} | {tok(a0):.1f} | {tok(b):.1f} | {tok(a) / tok(b):.2f}x | "
            f"{tok(a0) / tok(b):.2f}x | {vs_c} | {ms(p(a, 'ttft_seconds', 'p50'))} / "
            f"{ms(p(a, 'ttft_seconds', 'p99'))} | {ms(p(a0, 'ttft_seconds', 'p99'))} | "
            f"{ms(p(b, 'ttft_seconds', 'p99'))} | {a['output_tokens'] / max(a['completed'], 1):.0f} | "
            f"{a['failed']}/{a0['failed']}/{b['failed']} |"
        )
    lines.append("")
    if ceil:
        lines += [f"(c) {ceil:.1f} tok/s at 8 sequences.", ""]

    pa, pa0, pb = (level(out, f"poisson-{c}") for c in ["batched", "static", "single"])
    if pa and pa0 and pb:
        slo = (pa[0].get("goodput") or {}).get("slo", {})
        lines += [
            "Open loop, Poisson arrivals, natural lengths. Goodput: the share of requests "
            f"meeting every SLO ({', '.join(f'{k} {v} s' for k, v in slo.items() if v)}).",
            "",
            "| arrivals/s | (a) goodput | (a0) goodput | (b) goodput | (a) TTFT p99 | (a0) TTFT p99 | (b) TTFT p99 | (a) tok/s | (b) tok/s |",
            "|--:|--:|--:|--:|--:|--:|--:|--:|--:|",
        ]
        for x, x0, y in zip(pa, pa0, pb):
            g = lambda v: f"{(v.get('goodput') or {}).get('fraction', float('nan')):.0%}"
            lines.append(
                f"| {x['rate']} | {g(x)} | {g(x0)} | {g(y)} | {ms(p(x, 'ttft_seconds', 'p99'))} | "
                f"{ms(p(x0, 'ttft_seconds', 'p99'))} | {ms(p(y, 'ttft_seconds', 'p99'))} | "
                f"{tok(x):.1f} | {tok(y):.1f} |"
            )
        lines.append("")

    proj = {}
    for profile, label in [
        ("qwen3-0.6b-rk3588", "prefix reuse off (assumed: cold prefill on every resume)"),
        ("qwen3-0.6b-rk3588-reuse", "prefix reuse on (assumed: the runtime keeps a slot's prefix)"),
    ]:
        x, y = level(out, f"proj-{profile}-batched"), level(out, f"proj-{profile}-single")
        if x and y:
            proj[profile] = (label, x[0], y[0])
    if proj:
        lines += [
            "### RK3588 projection, mixed lengths",
            "",
            "The synthetic Qwen3-0.6B/RK3588 profiles (timing from Rockchip's batch-1 figures, "
            "an **assumed** 15% step cost per extra sequence), for both board behaviours; "
            "each is an assumption until a board measures it.",
            "",
            "| board behaviour | batched tok/s | one at a time tok/s | ratio | batched TTFT p50 / p99 |",
            "|---|--:|--:|--:|--:|",
        ]
        for label, x, y in proj.values():
            lines.append(
                f"| {label} | {tok(x):.1f} | {tok(y):.1f} | {tok(x) / tok(y):.2f}x | "
                f"{ms(p(x, 'ttft_seconds', 'p50'))} / {ms(p(x, 'ttft_seconds', 'p99'))} |"
            )
        lines.append("")

    lines += ["Targets (issue #12):", ""]
    for w, ratio, ttft in [("mixed", 1.5, 2.0), ("natural", 1.5, 3.0)]:
        if w in results:
            a, b = results[w]
            r, t = tok(a) / tok(b), p(a, "ttft_seconds", "p99")
            lines.append(
                f"- {w}: (a) is {r:.2f}x (b) (target at least {ratio}x): {verdict(r >= ratio)}; "
                f"TTFT p99 {ms(t)} (target at most {ttft:.0f} s): {verdict(t <= ttft)}"
            )
    for profile, target in [("qwen3-0.6b-rk3588-reuse", 2.5), ("qwen3-0.6b-rk3588", 1.8)]:
        if profile in proj:
            label, x, y = proj[profile]
            r = tok(x) / tok(y)
            lines.append(
                f"- projection, {label.split(' (')[0]}: {r:.2f}x (target at least {target}x): "
                f"{verdict(r >= target)}"
            )
    lines += ["", END]
    report.write_section(doc, BEGIN, END, "\n".join(lines))


if __name__ == "__main__":
    main()
