"""A soak of the web chat: chat load for MINUTES against a real server over loopback, reporting each worker's
memory over time and the latency at the start and at the end.

Starts `web.serve.run` (as `main.py --serve` does) with its own Redis in a temporary run folder; CONCURRENCY
clients, each its own conversation, chat back to back: first for WARMUP seconds (every search the load uses
is traced, the allocators reach their working size), then in windows of SAMPLE seconds until MINUTES are
spent. Each window prints replies/s, p50/p99 latency, errors, the workers' CPU time per reply and every
worker's RSS; the end compares the last fifth of the windows with the first (p50, p99, CPU per reply: the
one figure that other jobs on the machine do not move) and each worker's RSS with its RSS after the warm-up.
Targets: RSS growth at most 50 MB a worker, p99 at the end within 1.2x of the start. With --vary the
clients cycle through more settings than a worker keeps compiled searches (chatbot.WEB_SEARCHES besides the
defaults'), so searches are dropped and traced again all along: memory must still level off. With --distinct N, N chats right after the warm-up each ask for other
settings web clients may ask, every one a compiled search of its own, and the workers' RSS growth they caused
is printed (target: at most 80 MB in all for 40).

    python bench/web_soak.py --model-dir checkpoints/chitchat-quick/best [--minutes 10] [--workers 2]
        [--concurrency 4] [--warmup 60] [--sample 30] [--vary] [--distinct 40]
"""
from __future__ import annotations

import argparse
import itertools
import signal
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from ergo.chatbot import WEB_CHOICES, WEB_STEPS  # noqa: E402
from web_load import MESSAGES, Client, cpu_seconds, load, percentile, rss_pss, start_server, worker_pids  # noqa: E402

GROWTH_MB, P99_RATIO = 50, 1.2
# Web-allowed settings that need six different compiled searches: the defaults' two and four others.
VARIED = [{}, {"mode": "generate", "decoder": "greedy"}, {"mode": "generate"}, {"mode": "hybrid", "max_len": 10},
          {"mode": "generate", "decoder": "sample", "top_k": 10}, {"mode": "generate", "beam_size": 3, "mmi": 0.0}]


def distinct_settings(n: int) -> list[dict]:
    """n settings web clients may ask, each a compiled search of its own (generate mode: always a search)."""
    decoders = [{"decoder": "greedy"}] + [{"decoder": "beam", "beam_size": w} for w in WEB_CHOICES["beam_size"]] + [
        {"decoder": "sample", "samples": w, "top_k": k} for w in WEB_CHOICES["samples"] for k in WEB_CHOICES["top_k"]]
    found = []
    for n_rep, max_len, decoder in itertools.product(range(7), WEB_CHOICES["max_len"], decoders):
        width = decoder.get("beam_size", decoder.get("samples", 1))
        if width * max_len <= WEB_STEPS:
            found.append({"mode": "generate", "max_len": max_len, "no_repeat_ngram": n_rep, **decoder})
    return found[:n]


def sweep(address: str, server_pid: int, n: int) -> None:
    """One chat for each of n distinct settings, each on a new connection (so on either worker)."""
    workers = sorted(worker_pids(server_pid))
    before = {pid: rss_pss(pid)[0] for pid in workers}
    codes = [Client(address).request("POST", "/api/chat", {"message": MESSAGES[i % len(MESSAGES)], "settings": s})[0]
             for i, s in enumerate(distinct_settings(n))]
    growth = [rss_pss(pid)[0] - before[pid] for pid in workers]
    print(f"{n} chats, each with other settings (statuses {sorted(set(codes))}): RSS growth "
          + ", ".join(f"{g:+.0f} MB" for g in growth) + f", {sum(growth):+.0f} MB in all", flush=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model-dir", type=Path, required=True, help="a trained bundle (…/best)")
    p.add_argument("--minutes", type=float, default=10, help="the soak after the warm-up (2 for a quick run)")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--concurrency", type=int, default=4)
    p.add_argument("--warmup", type=float, default=60, help="seconds of load before the first window")
    p.add_argument("--sample", type=float, default=30, help="seconds in a window")
    p.add_argument("--vary", action="store_true", help="cycle through settings that need more searches than kept")
    p.add_argument("--distinct", type=int, default=0, help="after the warm-up, this many chats of distinct settings")
    args = p.parse_args()
    variants = VARIED if args.vary else [{}]

    def chat(client, i):
        settings = variants[i % len(variants)]
        return client.request("POST", "/api/chat", {"message": MESSAGES[i % len(MESSAGES)],
                                                    **({"settings": settings} if settings else {})})

    with tempfile.TemporaryDirectory(prefix="ergo-web-soak-") as run_dir:
        proc, address = start_server(args.model_dir.resolve(), args.workers, Path(run_dir))
        try:
            load(address, args.concurrency, args.warmup, chat)
            if args.distinct:
                sweep(address, proc.pid, args.distinct)
            workers = sorted(worker_pids(proc.pid))
            start = {pid: rss_pss(pid)[0] for pid in workers}
            print(f"web soak: bundle {args.model_dir}, {args.workers} workers, concurrency {args.concurrency}, "
                  f"{'varied settings' if args.vary else 'default settings'}; {args.minutes:g} min after a "
                  f"{args.warmup:g} s warm-up; RSS after it: " + ", ".join(f"{start[p]:.0f} MB" for p in workers))
            windows, began = [], time.monotonic()
            while time.monotonic() - began < args.minutes * 60:
                cpu = cpu_seconds(set(workers))
                lat, errors, _ = load(address, args.concurrency, args.sample, chat)
                now = sorted(worker_pids(proc.pid))
                if now != workers:
                    print(f"workers were replaced during the soak ({workers} -> {now}): RSS is not comparable")
                    return
                per_reply = (cpu_seconds(set(workers)) - cpu) / max(len(lat), 1)
                rss = [rss_pss(pid)[0] for pid in now]
                windows.append((lat, per_reply, rss))
                print(f"{(time.monotonic() - began) / 60:5.1f} min: {len(lat) / args.sample:5.1f} replies/s, "
                      f"p50 {percentile(lat, 0.5) * 1000:4.0f} ms, p99 {percentile(lat, 0.99) * 1000:5.0f} ms, "
                      f"errors {errors}, CPU {per_reply * 1000:3.0f} ms a reply; RSS "
                      + ", ".join(f"{r:.0f} MB" for r in rss), flush=True)
            if not windows:  # --minutes 0: the sweep alone
                return
            k = max(1, len(windows) // 5)
            first, last = ([x for w in part for x in w[0]] for part in (windows[:k], windows[-k:]))
            cpu_first, cpu_last = (sum(w[1] for w in part) / k for part in (windows[:k], windows[-k:]))
            ratio = percentile(last, 0.99) / percentile(first, 0.99)
            growth = [r - start[pid] for pid, r in zip(workers, windows[-1][2])]
            print(f"first {k} window(s) -> last {k}: p50 {percentile(first, 0.5) * 1000:.0f} -> "
                  f"{percentile(last, 0.5) * 1000:.0f} ms, CPU {cpu_first * 1000:.0f} -> {cpu_last * 1000:.0f} ms a "
                  f"reply, p99 {percentile(first, 0.99) * 1000:.0f} -> {percentile(last, 0.99) * 1000:.0f} ms: "
                  f"{ratio:.2f}x (target at most {P99_RATIO}x: {'met' if ratio <= P99_RATIO else 'MISSED'})")
            print("RSS growth after the warm-up: " + ", ".join(f"{g:+.0f} MB" for g in growth) +
                  f" (target at most {GROWTH_MB} MB a worker: {'met' if max(growth) <= GROWTH_MB else 'MISSED'})")
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(60)


if __name__ == "__main__":
    main()
