"""Streaming replies under gunicorn: the first token's latency, and throughput against /api/chat.

Starts the server as bench/web_load.py does (its own Redis, a temporary run folder), then:
  1. one client, REQUESTS requests each to /api/chat/stream and /api/chat, alternating: the time to the first
     `event: token` line, to `done`, and to /api/chat's whole reply (p50 and p95);
  2. CONCURRENCY clients for SECONDS on each route, in ROUNDS rounds taking turns: replies/s, and their ratio.
Greedy in the generate mode (the settings that stream word by word) unless --settings says otherwise.

    python bench/stream_latency.py --model-dir checkpoints/chitchat-quick/best [--requests 100]
        [--concurrency 4] [--seconds 30] [--rounds 6] [--settings '{"mode": "generate", "decoder": "greedy"}']
"""
from __future__ import annotations

import argparse
import http.client
import json
import signal
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from web_load import MESSAGES, start_server  # noqa: E402

GREEDY = {"mode": "generate", "decoder": "greedy"}
ROUTES = ("/api/chat", "/api/chat/stream")


def post(address: str, path: str, message: str, settings: dict) -> tuple[float, float | None, int]:
    """(seconds to the whole answer, seconds to the first token event or None, status) of one request, each
    on a new connection and so a new conversation."""
    host, port = address.split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=60)
    body = json.dumps({"message": message, "settings": settings})
    start = time.perf_counter()
    conn.request("POST", path, body, {"Content-Type": "application/json"})
    response, first = conn.getresponse(), None
    if path.endswith("/stream") and response.status == 200:
        while line := response.readline():
            if first is None and line.startswith(b"event: token"):
                first = time.perf_counter() - start
    else:
        response.read()
    conn.close()
    return time.perf_counter() - start, first, response.status


def percentile(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))]


def load(address: str, path: str, settings: dict, concurrency: int, seconds: float) -> tuple[int, int]:
    """(replies, errors) of `concurrency` clients sending back to back for `seconds`."""
    done, errors, lock = [0], [0], threading.Lock()
    deadline = time.monotonic() + seconds

    def client(k: int):
        i = k
        while time.monotonic() < deadline:
            _, _, status = post(address, path, MESSAGES[i % len(MESSAGES)], settings)
            with lock:
                (done if status == 200 else errors)[0] += 1
            i += 1

    threads = [threading.Thread(target=client, args=(k,)) for k in range(concurrency)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return done[0], errors[0]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model-dir", type=Path, required=True)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--requests", type=int, default=100)
    p.add_argument("--concurrency", type=int, default=4)
    p.add_argument("--seconds", type=float, default=30, help="each route's time under load, in all")
    p.add_argument("--rounds", type=int, default=6, help="alternate rounds of the two routes")
    p.add_argument("--settings", type=json.loads, default=GREEDY)
    args = p.parse_args()
    with tempfile.TemporaryDirectory(prefix="ergo-stream-bench-") as run_dir:
        proc, address = start_server(args.model_dir.resolve(), args.workers, Path(run_dir))
        try:
            for i in range(10):  # warm both routes on both workers
                post(address, "/api/chat/stream", MESSAGES[i % len(MESSAGES)], args.settings)
                post(address, "/api/chat", MESSAGES[i % len(MESSAGES)], args.settings)
            first, streamed, whole = [], [], []
            for i in range(args.requests):
                total, to_first, _ = post(address, "/api/chat/stream", MESSAGES[i % len(MESSAGES)], args.settings)
                first.append(to_first)
                streamed.append(total)
                whole.append(post(address, "/api/chat", MESSAGES[i % len(MESSAGES)], args.settings)[0])
            for name, values in (("stream: first token", first), ("stream: done", streamed),
                                 ("/api/chat: reply", whole)):
                print(f"{name:22s} p50 {percentile(values, 0.5) * 1000:6.1f} ms   p95 "
                      f"{percentile(values, 0.95) * 1000:6.1f} ms   ({len(values)} requests, one client)")
            # the two routes in alternate rounds, so that the machine's drift (this one's speed wanders by a
            # fifth within minutes) falls on both alike
            done, failed = {path: 0 for path in ROUTES}, {path: 0 for path in ROUTES}
            for _ in range(args.rounds):
                for path in ROUTES:
                    n, errors = load(address, path, args.settings, args.concurrency, args.seconds / args.rounds)
                    done[path], failed[path] = done[path] + n, failed[path] + errors
            rates = {path: done[path] / args.seconds for path in ROUTES}
            for path in ROUTES:
                print(f"{path:22s} {rates[path]:6.1f} replies/s at concurrency {args.concurrency} for {args.seconds:.0f} "
                      f"s in {args.rounds} rounds, {failed[path]} errors")
            print(f"throughput ratio (stream / chat): {rates['/api/chat/stream'] / rates['/api/chat']:.3f}")
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=60)


if __name__ == "__main__":
    main()
