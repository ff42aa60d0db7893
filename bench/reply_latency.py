"""Reply latency of `Chatbot.reply` (p50/p99 after warm-up): greedy, beam 5, beam 5 + MMI, retrieve, hybrid.

The warm-up replies to every history once, so that the figures are steady-state ones; the first
reply's time ("first ms": tracing, and XLA compiling the searches) is printed beside them.

Timing needs no training: the bundle has a preset's shape with random weights, and its reply selector
(the preset's, `--selector none`: the older context index instead) indexes 100,000 random training
replies of 10 words (about the size of the default corpus, and its mean reply length). Random weights
almost never emit <eos>, so every reply runs the full max_len steps: the worst case. Each history
is two turns of 12 random words (a context of about 25 tokens).

    python bench/reply_latency.py [--preset base quick] [--replies 100] [--max-len 20] [--shortlist N]
        [--selector bow|lstm|none]

Figures depend on what else the machine runs: the load average is printed with them.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

MODES = {
    "greedy": dict(mode="generate", decoder="greedy", mmi=0.0),
    "beam5": dict(mode="generate", decoder="beam", beam_size=5, mmi=0.0),
    "beam5+mmi": dict(mode="generate", decoder="beam", beam_size=5, mmi=1.0),
    "retrieve": dict(mode="retrieve", mmi=1.0, candidates=10),
    "hybrid": dict(mode="hybrid", decoder="beam", beam_size=5, mmi=1.0, candidates=10),
}
INDEX_PAIRS = 100_000
# Every indexed reply has this many words: a retrieved reply's cost is mostly its rescoring, which grows with
# its length, and which replies random weights retrieve (long or short) says nothing about a trained bundle.
REPLY_WORDS = 10


def random_bundle(preset_name: str, folder: Path, seed: int = 0, selector: str | None = None,
                  context_index: bool = False):
    """A bundle of the preset's shape with random weights and a random reply selector (`selector`: its
    towers, default the preset's; "none": a random context index instead). `context_index`: the older
    index too (which code from before the selector reads)."""
    import keras
    import numpy as np

    from ergo.bundle import save_bundle
    from ergo.config import get_preset, override
    from ergo.model import build_seq2seq
    from ergo.retrieval import build_index
    from ergo.selector import FOLDER, build_selector, save_selector
    from ergo.splits import Ragged
    from ergo.vocab import SPECIALS, Vocab

    preset = get_preset(preset_name)
    keras.utils.set_random_seed(seed)
    vocab = Vocab(list(SPECIALS) + [f"w{i}" for i in range(preset.data.max_vocab - len(SPECIALS))])
    model = build_seq2seq(preset.model, len(vocab), embedding_dim=preset.data.embedding_dim)
    save_bundle(folder, model, preset.data, preset.model, vocab, {"note": "random weights, for timing"})
    rng = np.random.default_rng(seed)
    n_words = len(vocab)
    split = {"context": Ragged.from_rows([rng.integers(len(SPECIALS), n_words, rng.integers(5, preset.data.max_context_len),
                                                       dtype=np.int32) for _ in range(INDEX_PAIRS)]),
             "reply": Ragged.from_rows([rng.integers(len(SPECIALS), n_words, REPLY_WORDS, dtype=np.int32)
                                        for _ in range(INDEX_PAIRS)])}
    cfg = override(preset.selector, encoder=selector)
    if cfg.encoder == "none" or context_index:
        embeddings = rng.normal(size=(n_words, preset.data.embedding_dim)).astype(np.float32)
        build_index(SimpleNamespace(vocab=lambda: vocab, split=lambda _: split, embeddings=lambda: embeddings), folder)
    if cfg.encoder != "none":
        model = build_selector(cfg, n_words, embedding_dim=preset.data.embedding_dim)
        save_selector(model, vocab, split["reply"], folder / FOLDER, {"note": "random weights, for timing"})
    return vocab


def weight_floor(bot, steps: int) -> tuple[float, float]:
    """(MB of weights one decoder step multiplies by, ms for `steps` such steps at batch 1): the decoder's
    matrix products alone, in one compiled loop. At batch 1 they are bound by reading the weights, so this
    is the floor under a greedy reply's steps whatever the bookkeeping around them costs."""
    import keras
    import numpy as np
    import tensorflow as tf

    model, size = bot.model, bot.decoder.shortlist.size or bot.decoder.vocab_size
    mats = [w for lstm in model.decoder for w in (lstm.cell.kernel, lstm.cell.recurrent_kernel)]
    mats += [model.combine.kernel, model.output_layer.kernel[:, :size]]
    mats = [tf.constant(keras.ops.convert_to_numpy(w)) for w in mats]

    @tf.function(autograph=False)
    def loop():
        def body(i, total):  # each product's input depends on the last total, so none is hoisted out
            return i + 1, total + sum(tf.reduce_sum(tf.matmul(tf.fill([1, w.shape[0]], total * 1e-9), w)) for w in mats)
        return tf.while_loop(lambda i, _: i < steps, body, (tf.constant(0), tf.constant(0.0)))[1]

    loop()
    times = []
    for _ in range(30):
        start = time.perf_counter()
        loop()
        times.append((time.perf_counter() - start) * 1000)
    return sum(int(np.prod(w.shape)) for w in mats) * 4 / 1e6, statistics.median(times)


def measure(preset: str, replies: int, max_len: int, shortlist: int | None, selector: str | None) -> None:
    import numpy as np

    from ergo.chatbot import Chatbot

    with tempfile.TemporaryDirectory() as tmp:
        vocab = random_bundle(preset, Path(tmp) / "bundle", selector=selector)
        bot = Chatbot.load(Path(tmp) / "bundle", shortlist=shortlist)
        rng = np.random.default_rng(1)
        histories = [[" ".join(rng.choice(vocab.words[5:], 12)) for _ in range(2)] for _ in range(replies)]
        sl = bot.decoder.shortlist.size
        print(f"\n{preset}: {bot.model.cfg.layers}x{bot.model.cfg.hidden} LSTM, vocabulary {len(vocab):,}, "
              f"shortlist {sl or 'none (full softmax)'}; selector {bot.selector.model.cfg.encoder if bot.selector else 'none'}; "
              f"{replies} replies of {max_len} tokens each; "
              f"load average {os.getloadavg()[0]:.1f}")
        megabytes, floor = weight_floor(bot, max_len)
        print(f"decoder weights {megabytes:.1f} MB a step; their products alone, {max_len} steps at batch 1: "
              f"{floor:.1f} ms ({megabytes * max_len / floor:.0f} GB/s)")
        print(f"{'mode':10} {'p50 ms':>8} {'p99 ms':>8} {'mean ms':>8} {'tokens':>7} {'first ms':>9}")
        for name, settings in MODES.items():
            settings = dict(settings, max_len=max_len, min_len=max_len // 2)
            start = time.perf_counter()
            bot.reply(histories[0], **settings)
            first = (time.perf_counter() - start) * 1000
            for history in histories:  # warm-up: traces the searches, and XLA compiles each shape they meet
                bot.reply(history, **settings)
            times, lengths = [], []
            for history in histories:
                start = time.perf_counter()
                reply = bot.reply(history, **settings)
                times.append((time.perf_counter() - start) * 1000)
                lengths.append(len(reply.tokens))
            p99 = float(np.percentile(times, 99))
            print(f"{name:10} {statistics.median(times):8.1f} {p99:8.1f} {statistics.fmean(times):8.1f} "
                  f"{statistics.fmean(lengths):7.1f} {first:9.0f}", flush=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--preset", nargs="+", default=["base", "quick"])
    p.add_argument("--replies", type=int, default=100)
    p.add_argument("--max-len", type=int, default=20)
    p.add_argument("--shortlist", type=int, help="words in a reply's shortlist (0: full softmax; "
                                                  "default: ergo.decoding's rule)")
    p.add_argument("--selector", choices=("bow", "lstm", "none"),
                   help="the reply selector's towers (default: the preset's); none: the older context index")
    args = p.parse_args()
    import keras
    print(f"backend {keras.backend.backend()}, {os.cpu_count()} CPUs")
    for preset in args.preset:
        measure(preset, args.replies, args.max_len, args.shortlist, args.selector)


if __name__ == "__main__":
    main()
