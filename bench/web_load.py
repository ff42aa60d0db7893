"""Load on the web chat under gunicorn, over loopback only, in bounded loops.

Starts `web.serve.run` (as `main.py --serve` does) with its own Redis in a temporary run folder, then:
  1. chat: CONCURRENCY clients, each its own conversation, send messages back to back for SECONDS;
  2. healthz: the same clients GET /healthz for HEALTHZ_SECONDS.
Prints replies/s, p50/p99 latency, errors, /healthz requests/s, the workers' CPU time per request and each
worker's memory (RSS and PSS). The client runs on the same cores as the server, so the rates are a floor for a
separate client machine; CPU per request does not depend on what else the machine is doing.

    python bench/web_load.py --model-dir checkpoints/chitchat-quick/best [--workers 2] [--concurrency 8]
        [--seconds 60] [--healthz-seconds 10] [--settings '{"decoder": "greedy"}']
"""
from __future__ import annotations

import argparse
import http.client
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
MESSAGES = ["hi!", "how are you?", "what do you like to eat?", "where do you live?", "do you like movies?",
            "what are you doing this weekend?", "tell me about your family.", "thanks, bye!"]


def start_server(bundle: Path | list[Path], workers: int, run_dir: Path, traffic: str = "",
                 env: dict | None = None) -> tuple[subprocess.Popen, str]:
    """`web.serve.run` as `main.py --serve` runs it, on one bundle or several side by side; (process, host:port)."""
    log_path = run_dir / "server.log"
    code = ("import json, sys; from pathlib import Path; from web.serve import run; "
            "run([Path(p) for p in json.loads(sys.argv[1])], '127.0.0.1', 0, int(sys.argv[2]), Path(sys.argv[3]), "
            "traffic=sys.argv[4] or None)")
    bundles = json.dumps([str(b) for b in (bundle if isinstance(bundle, list) else [bundle])])
    environ = {k: v for k, v in os.environ.items() if k != "REDIS_URL"}
    environ.update(ERGO_RATE_LIMIT="1000000 per minute", TF_CPP_MIN_LOG_LEVEL="3", PYTHONUNBUFFERED="1", **(env or {}))
    with open(log_path, "wb") as log:
        proc = subprocess.Popen([sys.executable, "-c", code, bundles, str(workers), str(run_dir), traffic],
                                cwd=ROOT, env=environ, stdout=log, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and proc.poll() is None:
        text = log_path.read_text(errors="replace")
        found = re.search(r"ErGo chat at http://([\d.]+):(\d+)/ ", text)
        if found and text.count("worker ready") >= workers:
            return proc, f"{found.group(1)}:{found.group(2)}"
        time.sleep(0.2)
    proc.kill()
    sys.exit(f"the server did not start:\n{log_path.read_text(errors='replace')[-3000:]}")


class Client:
    """One kept-alive connection with its own conversation cookie."""

    def __init__(self, address: str):
        host, port = address.split(":")
        self.conn = http.client.HTTPConnection(host, int(port), timeout=60)
        self.cookie = None

    def request(self, method: str, path: str, body: dict | None = None) -> tuple[int, dict, str]:
        headers = {"Content-Type": "application/json"} if body is not None else {}
        if self.cookie:
            headers["Cookie"] = self.cookie
        self.conn.request(method, path, json.dumps(body) if body is not None else None, headers)
        response = self.conn.getresponse()
        data = response.read()
        if cookie := response.getheader("Set-Cookie"):
            self.cookie = cookie.split(";", 1)[0]
        return response.status, json.loads(data or b"{}"), response.getheader("X-Ergo-Worker", "")


def load(address: str, concurrency: int, seconds: float, job) -> tuple[list[float], int, set[str]]:
    """Run `job(client, i)` in `concurrency` threads until `seconds` pass: latencies, errors, workers."""
    latencies, errors, workers, lock = [], [0], set(), threading.Lock()
    deadline = time.monotonic() + seconds

    def worker(k):
        client, i = Client(address), 0
        while time.monotonic() < deadline:
            t = time.perf_counter()
            try:
                status, _, pid = job(client, k + i)
                ok = status == 200
            except (OSError, http.client.HTTPException, ValueError):
                client, ok, pid = Client(address), False, ""
            with lock:
                if ok:
                    latencies.append(time.perf_counter() - t)
                errors[0] += not ok
                workers.add(pid)
            i += 1

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(concurrency)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return latencies, errors[0], workers - {""}


def percentile(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))] if values else float("nan")


def worker_pids(server_pid: int) -> set[str]:
    """The server's gunicorn workers: the children of its master but its redis-server (X-Ergo-Worker names a
    worker by a random id, not by its pid)."""
    from web_faults import children  # it builds on this module: imported here, not at the top
    return {str(pid) for pid in children(server_pid) if Path(f"/proc/{pid}/comm").read_text().strip() != "redis-server"}


def cpu_seconds(pids: set[str]) -> float:
    """User + system CPU time the worker processes have used so far."""
    total = 0
    for pid in pids:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        total += int(fields[11]) + int(fields[12])  # utime, stime (fields 14 and 15 of stat)
    return total / os.sysconf("SC_CLK_TCK")


def rss_pss(pid: str) -> tuple[float, float]:
    """RSS and PSS in MB; PSS is RSS with the pages shared with the other workers (TensorFlow's library)
    split among them."""
    rss = int(re.search(r"VmRSS:\s+(\d+) kB", Path(f"/proc/{pid}/status").read_text()).group(1))
    pss = int(re.search(r"Pss:\s+(\d+) kB", Path(f"/proc/{pid}/smaps_rollup").read_text()).group(1))
    return rss / 1024, pss / 1024


def memory(pid: str) -> str:
    rss, pss = rss_pss(pid)
    return f"RSS {rss:.0f} MB, PSS {pss:.0f} MB (pid {pid})"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model-dir", type=Path, required=True, help="a trained bundle (…/best)")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--concurrency", type=int, default=8)
    p.add_argument("--seconds", type=float, default=60)
    p.add_argument("--healthz-seconds", type=float, default=10)
    p.add_argument("--settings", type=json.loads, default={}, help="reply settings as JSON")
    args = p.parse_args()

    with tempfile.TemporaryDirectory(prefix="ergo-web-bench-") as run_dir:
        proc, address = start_server(args.model_dir.resolve(), args.workers, Path(run_dir))
        try:
            body = {"settings": args.settings} if args.settings else {}

            def chat(client, i):
                return client.request("POST", "/api/chat", {"message": MESSAGES[i % len(MESSAGES)], **body})

            load(address, args.concurrency, 3, chat)  # warm-up
            workers = worker_pids(proc.pid)
            cpu = cpu_seconds(workers)
            lat, errors, _ = load(address, args.concurrency, args.seconds, chat)
            chat_cpu, cpu = cpu_seconds(workers) - cpu, cpu_seconds(workers)
            print(f"web load: bundle {args.model_dir}, {args.workers} gunicorn workers, concurrency "
                  f"{args.concurrency}, settings {args.settings or 'defaults'}")
            print(f"chat:    {len(lat)} replies in {args.seconds:.0f} s = {len(lat) / args.seconds:.1f} replies/s; "
                  f"latency p50 {percentile(lat, 0.5) * 1000:.0f} ms, p99 {percentile(lat, 0.99) * 1000:.0f} ms; "
                  f"errors {errors}; server CPU {chat_cpu / max(len(lat), 1) * 1000:.1f} ms a reply")
            hlat, herrors, _ = load(address, args.concurrency, args.healthz_seconds,
                                    lambda c, i: c.request("GET", "/healthz"))
            health_cpu = cpu_seconds(workers) - cpu
            print(f"healthz: {len(hlat)} requests in {args.healthz_seconds:.0f} s = "
                  f"{len(hlat) / args.healthz_seconds:.0f} requests/s; p99 {percentile(hlat, 0.99) * 1000:.1f} ms; "
                  f"errors {herrors}; server CPU {health_cpu / max(len(hlat), 1) * 1000:.2f} ms a request")
            print("worker memory: " + "; ".join(memory(pid) for pid in sorted(workers)))
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(60)


if __name__ == "__main__":
    main()
