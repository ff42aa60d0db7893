"""How soon `main.py --train` starts training on a big data folder, and the peak memory of the run.

    python bench/train_start.py --cornell 16              # 16 copies of 4,000 conversations, Cornell's format
    python bench/train_start.py --data-dir /tmp/c16/out   # a data folder made before (bench/preprocess.py --keep)

It runs `python main.py --train --data-dir D --preset quick --minutes M` as a user does and prints, from the
command's start, when each stage's first line came out: the reply selector starting to train, the seq2seq
starting to train, and the end. Memory is the peak sum of PSS over the command's process tree (see
bench/preprocess.py), sampled every 0.1 s.
"""
import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from preprocess import PeakMemory, write_cornell_copies  # noqa: E402

STAGES = {"reply selector:": "selector starts", "model:": "seq2seq starts", "best model:": "end"}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data-dir", type=Path)
    p.add_argument("--cornell", type=int, metavar="N")
    p.add_argument("--minutes", type=float, default=1.0)
    p.add_argument("--preset", default="quick")
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        data_dir = args.data_dir
        if data_dir is None:
            from ergo import corpora
            from ergo.config import get_preset
            from ergo.dataset import preprocess
            write_cornell_copies(Path(tmp) / "cornell", args.cornell or 16)
            data_dir = Path(tmp) / "data"
            preprocess(corpora.resolve(str(Path(tmp) / "cornell"), "cornell"), get_preset(args.preset).data,
                       data_dir, progress=False)
        command = [sys.executable, str(ROOT / "main.py"), "--train", "--data-dir", str(data_dir), "--preset",
                   args.preset, "--minutes", str(args.minutes), "--model-dir", str(Path(tmp) / "run"), "--quiet"]
        started = time.perf_counter()
        child = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                 env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})
        memory = PeakMemory(child.pid)
        memory.start()
        seen = {}
        for line in child.stdout:
            for prefix, stage in STAGES.items():
                if line.startswith(prefix) and stage not in seen:
                    seen[stage] = time.perf_counter() - started
                    print(f"{seen[stage]:6.1f} s  {line.rstrip()[:150]}")
        child.wait()
        memory.done.set()
        memory.join()
    print(f"exit {child.returncode}; " + ", ".join(f"{stage} at {t:.1f} s" for stage, t in seen.items())
          + f"; peak PSS of all processes {memory.peak:,.0f} MB")


if __name__ == "__main__":
    main()
