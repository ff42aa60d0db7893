"""Time preprocessing and sample the peak memory of all its processes together.

    python bench/preprocess.py                       # the whole chitchat corpus, word2vec included
    python bench/preprocess.py --cornell 16          # 16 copies of 4,000 conversations, Cornell's format
    python bench/preprocess.py --cornell 16 --keep /tmp/c16   # and keep the corpus and data folder there

`--cornell N` writes a corpus in the real Cornell Movie-Dialogs format (movie_lines.txt and
movie_conversations.txt, ISO-8859-1, ' +++$+++ ' fields): N copies of the first 4,000 chitchat
conversations, each copy with new line ids, one turn a line. Memory is the sum of the proportional set
size (PSS: a page shared by k processes counts 1/k in each) of this process and all its children,
sampled every 0.1 s; peak RSS of the main process is printed beside it. Writes into a temp folder
(or into --keep DIR).
"""
import argparse
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ergo import corpora  # noqa: E402
from ergo.config import get_preset  # noqa: E402
from ergo.corpora.base import ReadLog  # noqa: E402
from ergo.dataset import preprocess  # noqa: E402

SEP = " +++$+++ "
BASE_CONVERSATIONS = 4000


def write_cornell_copies(folder: Path, copies: int) -> int:
    """N copies of 4,000 chitchat conversations in Cornell's two files; returns the utterances written."""
    base = []
    for turns in corpora.read(corpora.resolve("chitchat"), ReadLog()):
        clean = [" ".join(t.split()) for t in turns]  # Cornell's files hold one line per utterance
        if len(clean) >= 2:
            base.append(clean)
        if len(base) == BASE_CONVERSATIONS:
            break
    folder.mkdir(parents=True, exist_ok=True)
    n = 0
    with open(folder / "movie_lines.txt", "w", encoding="iso-8859-1", errors="replace") as lines, \
            open(folder / "movie_conversations.txt", "w", encoding="iso-8859-1") as conversations:
        for copy in range(copies):
            for c, turns in enumerate(base):
                ids = []
                for i, text in enumerate(turns):
                    n += 1
                    ids.append(f"L{n}")
                    speaker = f"u{copy * 2 * BASE_CONVERSATIONS + 2 * c + i % 2}"
                    lines.write(SEP.join((f"L{n}", speaker, f"m{copy}", "NAME", text)) + "\n")
                conversations.write(SEP.join(("u0", "u1", f"m{copy}", str(ids))) + "\n")
    return n


def pss_mb(pid: int) -> float:
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            return next(int(line.split()[1]) for line in f if line.startswith("Pss:")) / 1024
    except (OSError, StopIteration):
        return 0.0


def tree(pid: int) -> list[int]:
    pids, todo = [], [pid]
    while todo:
        p = todo.pop()
        pids.append(p)
        for task in Path(f"/proc/{p}/task").glob("*"):
            try:
                todo.extend(int(c) for c in (task / "children").read_text().split())
            except OSError:
                pass
    return pids


class PeakMemory(threading.Thread):
    """The largest sum of PSS over this process's tree, sampled in the background."""

    def __init__(self, pid: int, every: float = 0.1):
        super().__init__(daemon=True)
        self.pid, self.every, self.peak, self.peak_processes, self.done = pid, every, 0.0, 0, threading.Event()

    def run(self):
        while not self.done.wait(self.every):
            pids = tree(self.pid)
            total = sum(pss_mb(p) for p in pids)
            if total > self.peak:
                self.peak, self.peak_processes = total, len(pids)


def main() -> None:
    import os
    import resource
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--preset", default="quick")
    p.add_argument("--workers", type=int)
    p.add_argument("--cornell", type=int, metavar="N", help="N copies of 4,000 conversations in Cornell's format")
    p.add_argument("--keep", type=Path, metavar="DIR", help="keep the corpus and the data folder in DIR")
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = args.keep or tmp
        if args.cornell:
            t = time.perf_counter()
            written = write_cornell_copies(Path(tmp) / "cornell", args.cornell)
            print(f"wrote {args.cornell} x {BASE_CONVERSATIONS:,} conversations, {written:,} utterances "
                  f"in Cornell's format ({time.perf_counter() - t:.0f}s)")
            corpus = corpora.resolve(str(Path(tmp) / "cornell"), "cornell")
        else:
            corpus = corpora.resolve("chitchat")
        memory = PeakMemory(os.getpid())
        memory.start()
        t = time.perf_counter()
        data, _ = preprocess(corpus, get_preset(args.preset).data, Path(tmp) / "out", workers=args.workers,
                             progress=False, force=True)
        wall = time.perf_counter() - t
        memory.done.set()
        memory.join()
        s = data.stats
        size = sum(f.stat().st_size for f in data.path.iterdir()) / 2**20
    peak_main = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    steps = ", ".join(f"{k} {v:.1f}s" for k, v in s["seconds"].items() if k != "total")
    print(f"preprocess {corpus.name} preset={args.preset} workers={args.workers or 'all'}: "
          f"{s['utterances']:,} utterances, {sum(s['pairs'].values()):,} pairs, vocab {s['vocab_size']:,}, "
          f"data folder {size:,.0f} MB")
    print(f"wall {wall:.1f}s ({steps}); peak PSS of all processes {memory.peak:,.0f} MB "
          f"({memory.peak_processes} processes then); peak RSS of the main process {peak_main:,.0f} MB")


if __name__ == "__main__":
    main()
