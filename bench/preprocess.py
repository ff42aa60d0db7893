"""Time preprocessing of the whole default corpus (chitchat, word2vec included) and its peak memory.

    python bench/preprocess.py [--preset quick] [--workers N]

Prints wall seconds per step and in total, and the peak resident memory of the main process and of
the largest tokenising worker. Writes into a temp folder, so the real data/ is untouched.
"""
import argparse
import resource
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ergo import corpora  # noqa: E402
from ergo.config import get_preset  # noqa: E402
from ergo.dataset import preprocess  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--preset", default="quick")
    p.add_argument("--workers", type=int)
    args = p.parse_args()
    corpus = corpora.resolve("chitchat")
    with tempfile.TemporaryDirectory() as tmp:
        t = time.perf_counter()
        data, _ = preprocess(corpus, get_preset(args.preset).data, Path(tmp) / "out", workers=args.workers,
                             progress=False, force=True)
        wall = time.perf_counter() - t
        s = data.stats
    peak_main = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    peak_child = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    steps = ", ".join(f"{k} {v:.1f}s" for k, v in s["seconds"].items() if k != "total")
    print(f"preprocess chitchat preset={args.preset} workers={args.workers or 'all'}: "
          f"{s['utterances']:,} utterances, {sum(s['pairs'].values()):,} pairs, vocab {s['vocab_size']:,}")
    print(f"wall {wall:.1f}s ({steps}); peak RSS main {peak_main:.0f} MB, largest worker {peak_child:.0f} MB")


if __name__ == "__main__":
    main()
