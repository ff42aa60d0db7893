"""Reply latency of this checkout against another one (the code before a change), in ONE process with
their replies alternating, so that a machine whose speed drifts (other tenants) slows both alike.

    git worktree add /tmp/before <commit>
    python bench/reply_ab.py --before /tmp/before [--preset base] [--modes greedy hybrid] [--histories 40]
        [--no-xla]

The other checkout's `ergo` package is imported as `ergo_before`; both load the same random bundle of
`bench/reply_latency.py`, which holds a reply selector and the older context index (code from before
the selector retrieves by the index). Prints, per mode, how many replies are the same text, each side's p50/p99 in
ms, and the ratio of the p50s (below 1: this checkout is faster).
"""
from __future__ import annotations

import argparse
import importlib
import importlib.util
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from reply_latency import MODES, random_bundle  # noqa: E402


def import_before(checkout: Path):
    """The other checkout's ergo package, as ergo_before (its relative imports stay inside it)."""
    init = checkout / "ergo" / "__init__.py"
    if not init.is_file():
        sys.exit(f"{checkout} has no ergo/__init__.py: give --before a checkout of this project")
    spec = importlib.util.spec_from_file_location("ergo_before", init, submodule_search_locations=[str(init.parent)])
    package = importlib.util.module_from_spec(spec)
    sys.modules["ergo_before"] = package
    spec.loader.exec_module(package)
    return importlib.import_module("ergo_before.chatbot").Chatbot


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--before", type=Path, required=True, help="a checkout of the code to compare with")
    p.add_argument("--preset", default="base")
    p.add_argument("--modes", nargs="+", default=list(MODES), choices=list(MODES))
    p.add_argument("--histories", type=int, default=40)
    p.add_argument("--max-len", type=int, default=20)
    p.add_argument("--no-xla", action="store_true", help="both without XLA, as the web runs by default")
    args = p.parse_args()
    import numpy as np

    from ergo.chatbot import Chatbot

    Before = import_before(args.before.resolve())
    with tempfile.TemporaryDirectory() as tmp:
        vocab = random_bundle(args.preset, Path(tmp) / "bundle", context_index=True)  # each side retrieves its way
        xla = not args.no_xla
        bots = {"before": Before.load(Path(tmp) / "bundle", xla=xla), "this": Chatbot.load(Path(tmp) / "bundle", xla=xla)}
        rng = np.random.default_rng(1)
        histories = [[" ".join(rng.choice(vocab.words[5:], 12)) for _ in range(2)] for _ in range(args.histories)]
        print(f"{args.preset}, XLA {'on' if xla else 'off'}, {args.histories} histories; "
              f"load average {os.getloadavg()[0]:.1f}")
        for name in args.modes:
            settings = dict(MODES[name], max_len=args.max_len, min_len=args.max_len // 2)
            for bot in bots.values():  # warm-up: every shape traced and compiled
                for history in histories:
                    bot.reply(history, **settings)
            same = sum(bots["before"].reply(h, **settings).text == bots["this"].reply(h, **settings).text
                       for h in histories)
            times = {side: [] for side in bots}
            for history in histories * 2:
                for side, bot in bots.items():
                    start = time.perf_counter()
                    bot.reply(history, **settings)
                    times[side].append((time.perf_counter() - start) * 1000)
            cells = "  ".join(f"{side} {statistics.median(t):6.1f} / {np.percentile(t, 99):6.1f}"
                              for side, t in times.items())
            ratio = statistics.median(times["this"]) / statistics.median(times["before"])
            print(f"{name:10} same {same}/{len(histories)}  p50 / p99 ms: {cells}  ratio {ratio:.2f}", flush=True)


if __name__ == "__main__":
    main()
