"""Training throughput (target tokens/s) of our real training step on synthetic batches.

The shapes match ../shared/reference/torch_seq2seq_bench.py (source and target length 20, embedding
size = hidden unless --embedding), so with --torch-python the reference runs in the same session
and the ratio is printed. Runs on whichever Keras backend is active (KERAS_BACKEND). Run it on an
otherwise idle machine: the torch reference in particular slows down many times over when other
processes compete for the cores.

    python bench/train_throughput.py --vocab 8000 --hidden 256 --layers 2 --batch 64 --length 20 \
        [--steps 10] [--jit|--no-jit] [--sampled 512] [--intra-op-threads N] \
        [--torch-python /tmp/torchenv/bin/python]
"""
from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

REFERENCE = ROOT.parent / "shared" / "reference" / "torch_seq2seq_bench.py"


def ours(args) -> list[float]:
    """Tokens/s of each timed round of `args.steps` train_on_batch calls, after a warm-up."""
    import keras
    import numpy as np

    from ergo.config import ModelConfig, TrainConfig
    from ergo.model import build_seq2seq, compile_for_training
    from ergo.training import configure_threads

    configure_threads()  # as the trainer does

    cfg = ModelConfig(hidden=args.hidden, layers=args.layers, dropout=args.dropout, attention=args.attention,
                      sampled_softmax=args.sampled)
    model = build_seq2seq(cfg, args.vocab, embedding_dim=args.embedding or args.hidden)
    compile_for_training(model, TrainConfig(), jit_compile="auto" if args.jit is None else args.jit)
    rng = np.random.default_rng(0)
    source = rng.integers(1, args.vocab, (args.batch, args.length), dtype=np.int32)
    target = rng.integers(1, args.vocab, (args.batch, args.length), dtype=np.int32)
    print(f"ours: backend={keras.backend.backend()} jit={model.jit_compile} sampled={args.sampled} "
          f"intra_op_threads={_intra_op_threads()} "
          f"dropout={args.dropout} embedding={args.embedding or args.hidden} "
          f"params={model.count_params() / 1e6:.1f}M", flush=True)
    for _ in range(3):
        model.train_on_batch((source, target), target)
    rates = []
    for _ in range(args.rounds):
        start = time.perf_counter()
        for _ in range(args.steps):
            loss = model.train_on_batch((source, target), target)
        rates.append(args.steps * args.batch * args.length / (time.perf_counter() - start))
    assert np.isfinite(loss), loss
    return rates


def _intra_op_threads() -> int:
    import tensorflow as tf
    return tf.config.threading.get_intra_op_parallelism_threads()  # 0: TensorFlow's own choice (all cores)


def torch_reference(args) -> float:
    cmd = [args.torch_python, str(REFERENCE), str(args.vocab), str(args.hidden), str(args.layers), str(args.batch)]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    print(out.strip(), flush=True)
    return float(re.search(r"tokens/s=(\d+)", out).group(1))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--vocab", type=int, default=8000)
    p.add_argument("--hidden", type=int, default=256)
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--length", type=int, default=20)
    p.add_argument("--embedding", type=int, default=0, help="embedding size (default: hidden, as the reference)")
    p.add_argument("--dropout", type=float, default=0.2)
    p.add_argument("--attention", default="dot")
    p.add_argument("--sampled", type=int, default=0, help="sampled-softmax classes (0: full softmax)")
    p.add_argument("--jit", action=argparse.BooleanOptionalAction, default=None,
                   help="XLA / jit compile (default: Keras 'auto', which is off on a CPU-only TensorFlow)")
    p.add_argument("--intra-op-threads", type=int,
                   help="TensorFlow threads inside one op (default: the trainer's choice, see "
                        "ergo.training.configure_threads; 0: TensorFlow's own, all cores)")
    p.add_argument("--steps", type=int, default=10, help="steps per timed round")
    p.add_argument("--rounds", type=int, default=5, help="timed rounds of ours")
    p.add_argument("--torch-python", help="a Python with torch: run the reference before and after ours")
    p.add_argument("--torch-runs", type=int, default=2, help="reference runs before and again after ours")
    args = p.parse_args()
    if args.length != 20 and args.torch_python:
        p.error("the torch reference uses length 20")
    if args.intra_op_threads is not None:
        os.environ["ERGO_INTRA_OP_THREADS"] = str(args.intra_op_threads)

    reference = [torch_reference(args) for _ in range(args.torch_runs if args.torch_python else 0)]
    rates = ours(args)
    reference += [torch_reference(args) for _ in range(args.torch_runs if args.torch_python else 0)]
    # Other processes can only slow a run down, so the best run is the nearest to the machine's speed.
    print(f"ours tokens/s: best {max(rates):.0f}, median {statistics.median(rates):.0f} "
          f"(rounds: {', '.join(f'{r:.0f}' for r in rates)})")
    if reference:
        print(f"torch tokens/s: best {max(reference):.0f}, median {statistics.median(reference):.0f}")
        print(f"ratio ours/torch: best/best {max(rates) / max(reference):.2f}, "
              f"median/median {statistics.median(rates) / statistics.median(reference):.2f}")


if __name__ == "__main__":
    main()
