"""The live loop under a real server (`web.serve.run`, as `main.py --serve` runs it, its own Redis), over
loopback, in bounded loops:

  1. one bundle: each worker's memory once warm (RSS, and PSS: RSS with the pages shared between workers split);
  2. two bundles side by side (two copies of it in two run folders, `--traffic` SHARES): each worker's memory;
     then CONVERSATIONS new conversations of one exchange each, and how many each bundle got;
  3. hot swap under chat load: CONCURRENCY clients, each its own conversation, chat for SECONDS; a third of the
     way in, the first bundle's best/ is replaced by a new version, the way training replaces it (a temp folder
     renamed into place); the seconds until every worker answers with it (/healthz on new connections), the
     outcome of every request, and the acknowledged turns that /api/history does not give back.

    python bench/live_loop.py --model-dir checkpoints/chitchat-quick/best [--workers 2] [--traffic 50,50]
        [--conversations 100] [--concurrency 4] [--seconds 45]
"""
from __future__ import annotations

import argparse
import shutil
import signal
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from web_faults import Chatters, after, lost_turns, probe  # noqa: E402
from web_load import Client, memory, start_server, worker_pids  # noqa: E402


def new_version(bundle: Path, target: Path, seed: int = 1) -> str:
    """Write at `target` (a run's best/, replaced the way training replaces it) a copy of `bundle` whose
    weights are nudged by seeded noise: a new version of it. Returns that version."""
    import numpy as np

    from ergo.bundle import Bundle, save_bundle

    source = Bundle.load(bundle)
    model = source.build_model()
    rng = np.random.default_rng(seed)
    for w in model.weights:
        value = np.asarray(w.numpy())
        w.assign(value + rng.normal(0, 0.01, value.shape).astype(value.dtype))
    own = {"config.json", "vocab.json", "model.weights.h5", "card.json", "card.md"}
    save_bundle(target, model, source.data_config, source.model_config, source.vocab, source.card,
                carry=[p for p in sorted(Path(bundle).iterdir()) if p.name not in own])
    return Bundle.load(target).version()


def versions(address: str, name: str, workers: int = 2, tries: int = 60) -> dict[str, str]:
    """Each worker's version of bundle `name`, from /healthz on new connections until `workers` workers have
    answered (a probe lands on any; a busy worker takes fewer), or `tries` probes."""
    seen = {}
    for _ in range(tries):
        if (found := probe(address)) and found[0] == 200:
            seen[found[2]] = next(b["version"] for b in found[1]["bundles"] if b["name"] == name)
        if len(seen) == workers:
            break
    return seen


def everywhere(address: str, name: str, version: str, workers: int = 2) -> bool:
    """Whether every worker answers with `version` of bundle `name`."""
    seen = versions(address, name, workers)
    return len(seen) == workers and set(seen.values()) == {version}


def serve(bundles: list[Path], workers: int, run_dir: Path, traffic: str = ""):
    proc, address = start_server(bundles, workers, run_dir, traffic, env={"ERGO_HISTORY_CAP": "10000"})
    Client(address).request("POST", "/api/chat", {"message": "hi!"})  # one reply, as a visitor would
    return proc, address


def stop(proc) -> None:
    proc.send_signal(signal.SIGTERM)
    proc.wait(60)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model-dir", type=Path, required=True, help="a trained bundle (…/best)")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--traffic", default="50,50")
    p.add_argument("--conversations", type=int, default=100)
    p.add_argument("--concurrency", type=int, default=4)
    p.add_argument("--seconds", type=float, default=45)
    args = p.parse_args()

    with tempfile.TemporaryDirectory(prefix="ergo-live-loop-") as tmp:
        root = Path(tmp)
        runs = [root / "alpha", root / "beta"]
        for run in runs:
            shutil.copytree(args.model_dir.resolve(), run / "best")
        print(f"live loop: bundle {args.model_dir}, {args.workers} gunicorn workers")

        proc, _ = serve([runs[0] / "best"], args.workers, runs[0])
        try:
            print("one bundle, worker memory: " + "; ".join(memory(pid) for pid in sorted(worker_pids(proc.pid))))
        finally:
            stop(proc)

        proc, address = serve([run / "best" for run in runs], args.workers, runs[0], args.traffic)
        try:
            print("two bundles, worker memory: " + "; ".join(memory(pid) for pid in sorted(worker_pids(proc.pid))))
            split = Counter()
            for _ in range(args.conversations):
                status, body, _ = Client(address).request("POST", "/api/chat", {"message": "hi!"})
                split[body["bundle"] if status == 200 else f"HTTP {status}"] += 1
            shares = [float(v) for v in args.traffic.split(",")]
            wanted = {run.name: args.conversations * s / sum(shares) for run, s in zip(runs, shares)}
            print(f"A/B split over {args.conversations} new conversations (traffic {args.traffic}): " + ", ".join(
                f"{name} {split[name]} (configured {wanted[name]:.0f}, {split[name] / wanted[name] - 1:+.0%})"
                for name in wanted) + "".join(f", {k} {n}" for k, n in split.items() if k not in wanted))

            before = versions(address, "alpha", args.workers)
            with Chatters(address, args.concurrency, seconds=args.seconds) as chatters:
                time.sleep(args.seconds / 3)
                started = time.monotonic()
                version = new_version(runs[0] / "best", runs[0] / "best", seed=int(time.time()))
                written = time.monotonic() - started
                took = after(lambda: everywhere(address, "alpha", version, args.workers), timeout=args.seconds)
            outcomes = ", ".join(f"{kind} {n:,}" for kind, n in chatters.outcomes.most_common())
            print(f"hot swap under load ({args.concurrency} clients, {args.seconds:.0f} s): versions before "
                  f"{sorted(set(before.values()))}, new {version} written in {written:.1f} s; on every worker "
                  + (f"{took:.1f} s after it was in place" if took is not None else "NOT within the run")
                  + f"; requests: {outcomes}; acknowledged turns lost: {lost_turns(address, chatters)}")
            print("after the swap, worker memory: " + "; ".join(memory(pid) for pid in sorted(worker_pids(proc.pid))))
        finally:
            stop(proc)


if __name__ == "__main__":
    main()
