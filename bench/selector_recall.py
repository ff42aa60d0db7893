"""Recall@1/2/5 of 10 of the reply selector alone, after a few minutes of training, per kind of tower.

Trains `ergo.selector.train_selector` on a prepared data folder for each (towers, minutes) asked for, one
after the other (into a temporary folder), and scores the test split's pairs the way `--evaluate` does
(the true reply against 9 random replies of the split, ergo/ranking.py):

    python bench/selector_recall.py data/chitchat-quick [--encoder bow lstm] [--minutes 1 2.5] [--pairs 2000]

Run it alone on the machine: the minutes are wall-clock minutes.
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("data_dir", type=Path)
    p.add_argument("--encoder", nargs="+", default=["bow", "lstm"])
    p.add_argument("--minutes", nargs="+", type=float, default=[1.0, 2.5])
    p.add_argument("--epochs", type=int, default=100, help="at most this many epochs (the minutes end it first)")
    p.add_argument("--pairs", type=int, default=2000, help="test pairs scored")
    args = p.parse_args()

    import numpy as np

    from ergo.config import PRESETS, override
    from ergo.dataset import PreparedData
    from ergo.ranking import recall, recall_rows
    from ergo.selector import build_selector, pool_scores, train_selector
    from ergo.training import configure_threads

    configure_threads()
    data = PreparedData.open(args.data_dir)
    test, vocab = data.split("test"), data.vocab()
    pool, rows = recall_rows(test["reply"], args.pairs, np.random.default_rng(0))
    print(f"{data.path}: {data.stats['pairs']['train']:,} training pairs; {len(pool)} test pairs; {os.cpu_count()} CPUs, "
          f"load average {os.getloadavg()[0]:.1f}")
    print(f"{'towers':7} {'minutes':>7} {'epochs':>6} {'seconds':>7}  test R@1/2/5")
    for encoder in args.encoder:
        for minutes in args.minutes:
            cfg = override(PRESETS["quick"].selector, encoder=encoder, epochs=args.epochs)
            with tempfile.TemporaryDirectory() as tmp:
                started = time.perf_counter()
                info = train_selector(data, cfg, Path(tmp) / "selector", minutes=minutes, progress=False,
                                      log=lambda *_: None)
                seconds = time.perf_counter() - started
                model = build_selector(cfg, len(vocab), embedding_dim=int(info["embedding_dim"]))
                model.load_weights(Path(tmp) / "selector" / "model.weights.h5")
            scores = pool_scores(model, [test["context"][i] for i in pool], [test["reply"][i] for i in pool], rows)
            figures = "/".join(f"{v:.3f}" for v in recall(scores).values())
            print(f"{encoder:7} {minutes:7.2f} {info['epochs']:6d} {seconds:7.0f}  {figures}", flush=True)


if __name__ == "__main__":
    main()
