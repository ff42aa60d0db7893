"""Training under kill -9: the same `--train --resume` command, killed at random moments, then run to its end.

    python bench/train_kills.py [--data-dir DIR | --corpus chitchat] [--preset tiny] [--minutes 2]
                                [--save-every 0.1] [--kills 10] [--seed 0] [--keep DIR]

Each attempt starts the one command a scheduler would retry (`python main.py --train --resume ...`,
`--resume` included from the first, since it starts a run that has nothing saved) and kills it with
SIGKILL after a random 4-45 s. Before the next attempt it checks what a start will find, as the start
itself reads it (a folder, or the previous one that a stop between two renames left beside it):

- corrupt: a JSON file that does not parse, a weights file that HDF5 cannot open, latest/'s weights
  against the checksum saved with them (each a file the next start could not use);
- lost: seconds from the last save of latest/ (or from the attempt's start) to the kill, the training
  the next attempt repeats; the target is at most --save-every minutes (plus the start-up);
- resumed: whether the next attempt found the position saved.

The last attempt runs to the budget's end unkilled: it must exit 0, with best/ loading as a bundle.
Prints one line an attempt and a summary. Loopback only, bounded: --kills attempts, each at most 45 s,
and the final one at most the budget plus 5 minutes.
"""
from __future__ import annotations

import argparse
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import h5py

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from ergo.files import previous_of, sha256_file  # noqa: E402

KILL_AFTER = (4.0, 45.0)  # seconds after an attempt starts: from Python's start-up to well into training


def command(args, data_dir: Path, run_dir: Path) -> list[str]:
    return [sys.executable, str(ROOT / "main.py"), "--train", "--resume", "--data-dir", str(data_dir),
            "--preset", args.preset, "--minutes", f"{args.minutes:g}", "--save-every", f"{args.save_every:g}",
            "--model-dir", str(run_dir), "--quiet"]


def corrupt_files(run_dir: Path) -> list[str]:
    """The files a start would read and could not use."""
    bad = []
    for name in ("run.json",):
        path = run_dir / name
        if path.exists() and not _parses(path):
            bad.append(str(path))
    for name in ("latest", "best"):
        folder = run_dir / name
        folder = folder if folder.is_dir() else previous_of(folder)
        if not folder.is_dir():
            continue
        for path in folder.glob("*.json"):
            if not _parses(path):
                bad.append(str(path))
        for path in folder.glob("*.h5"):
            try:
                h5py.File(path, "r").close()
            except OSError:
                bad.append(str(path))
        state = folder / "state.json"
        if name == "latest" and _parses(state):
            digest = json.loads(state.read_text()).get("weights_sha256")
            if digest and digest != sha256_file(folder / "model.weights.h5"):
                bad.append(f"{folder}/model.weights.h5 (checksum)")
    return bad


def _parses(path: Path) -> bool:
    try:
        json.loads(path.read_text(encoding="utf-8"))
        return True
    except (OSError, ValueError):
        return False


def last_save(run_dir: Path) -> float | None:
    """When latest/ (or the previous one a stop left) was last written, as a wall-clock time."""
    for folder in (run_dir / "latest", previous_of(run_dir / "latest")):
        if (folder / "state.json").is_file():
            return (folder / "state.json").stat().st_mtime
    return None


def saved_step(run_dir: Path) -> int:
    for folder in (run_dir / "latest", previous_of(run_dir / "latest")):
        if _parses(folder / "state.json"):
            return json.loads((folder / "state.json").read_text())["step"]
    return 0


def prepare(args, work: Path) -> Path:
    if args.data_dir:
        return args.data_dir
    data_dir = work / "data"
    cmd = [sys.executable, str(ROOT / "main.py"), "--preprocess", "--corpus", args.corpus, "--preset", args.preset,
           "--data-dir", str(data_dir), "--quiet"]
    print("$ " + " ".join(cmd), flush=True)
    subprocess.run(cmd, cwd=ROOT, check=True, stdout=subprocess.DEVNULL)
    return data_dir


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data-dir", type=Path, help="a preprocessed data folder (default: preprocess --corpus)")
    p.add_argument("--corpus", default="chitchat")
    p.add_argument("--preset", default="tiny")
    p.add_argument("--minutes", type=float, default=2.0, help="the run's budget")
    p.add_argument("--save-every", type=float, default=0.1, help="minutes between saves of latest/")
    p.add_argument("--kills", type=int, default=10)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--keep", type=Path, help="keep the run folder here (default: a temp folder, removed)")
    args = p.parse_args()
    rng = random.Random(args.seed)
    with tempfile.TemporaryDirectory(prefix="ergo-kills-") as tmp:
        work = Path(tmp)
        data_dir = prepare(args, work)
        run_dir = args.keep or work / "run"
        cmd = command(args, data_dir, run_dir)
        print("$ " + " ".join(cmd), flush=True)
        results = []
        for attempt in range(1, args.kills + 1):
            before = saved_step(run_dir)
            after = rng.uniform(*KILL_AFTER)
            started = time.time()
            proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
            try:
                proc.wait(after)
                ended = "exited " + str(proc.returncode)  # the budget ran out before the kill
            except subprocess.TimeoutExpired:
                os.kill(proc.pid, signal.SIGKILL)
                proc.wait()
                ended = "killed"
            killed_at = time.time()
            saved = last_save(run_dir)
            lost = killed_at - max(saved or started, started)
            bad = corrupt_files(run_dir)
            step = saved_step(run_dir)
            stderr = proc.stderr.read()
            proc.stderr.close()
            errors = [line for line in stderr.splitlines() if line.startswith("error:")]
            results.append({"attempt": attempt, "after": after, "lost": lost, "corrupt": bad, "errors": errors,
                            "steps": (before, step), "ended": ended})
            print(f"attempt {attempt:2d}: {ended} after {after:4.1f} s; saved step {before} -> {step}; "
                  f"lost {lost:4.1f} s; corrupt {len(bad)} {bad or ''} {errors or ''}", flush=True)
        final = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=args.minutes * 60 + 300)
        from ergo.bundle import Bundle
        bundle_ok = final.returncode == 0 and Bundle.load(run_dir / "best").build_model() is not None
        stale = [str(p) for p in run_dir.glob(".*.tmp")]
        lost = [r["lost"] for r in results if r["ended"] == "killed"]
        print(f"\n{len(lost)} kills; corrupt files: {sum(len(r['corrupt']) for r in results)}; "
              f"error lines: {sum(len(r['errors']) for r in results)}; lost seconds: max {max(lost, default=0):.1f}, "
              f"mean {sum(lost) / max(len(lost), 1):.1f} (--save-every {args.save_every * 60:.0f} s)")
        print(f"final run: exit {final.returncode}, best/ loads: {bundle_ok}, "
              f"steps {saved_step(run_dir)}, temp folders left: {len(stale)}")
        if final.returncode:
            print(final.stderr[-2000:])


if __name__ == "__main__":
    main()
