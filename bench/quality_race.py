"""Quality per minute: ErGo's `--train --minutes M` against the plain-PyTorch peer on the same data folder.

    python bench/quality_race.py DATA_DIR --minutes 5[,10,20] --torch-python PY [--preset quick]
                                 [--png race.png] [--keep DIR] [-- extra main.py --train options]

For each budget M, ErGo's whole command (`python main.py --train --data-dir DATA_DIR --minutes M`, start
of Python to exit) runs in a fresh run folder and is timed: W seconds. Then the reference
(../shared/reference/torch_train_reference.py DATA_DIR T, in the Python given by --torch-python) trains
once, for the longest W at least, validating every 30 s of its training time (its own validation and
start-up are not counted in its clock). The two run one after the other, never side by side.

ErGo's curve is its metrics.csv, each validation placed on the command's clock (its start-up before
training included). For a budget, the reference's best counts every validation up to the first one
at or after W, so the reference always gets at least as much time as the whole ErGo command took.
Prints both curves as (minutes, perplexity), the best of each, their ratio (below 1: ErGo is better),
and writes a PNG of the curves.
"""
from __future__ import annotations

import argparse
import csv
import json
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
REFERENCE = ROOT.parent / "shared" / "reference" / "torch_train_reference.py"
REFERENCE_EVERY = 30.0  # seconds of the reference's training between its validations


def run_ergo(data_dir: Path, minutes: float, preset: str, run_dir: Path, extra: list[str]) -> dict:
    cmd = [sys.executable, str(ROOT / "main.py"), "--train", "--data-dir", str(data_dir), "--preset", preset,
           "--minutes", f"{minutes:g}", "--model-dir", str(run_dir), "--quiet", *extra]
    print("$ " + " ".join(cmd), flush=True)
    started = time.perf_counter()
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    wall = time.perf_counter() - started
    if done.returncode:
        sys.exit(f"ErGo's --train failed ({done.returncode}):\n{done.stderr[-3000:]}")
    with open(run_dir / "metrics.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    elapsed = json.loads((run_dir / "latest" / "state.json").read_text())["elapsed"]
    offset = wall - elapsed  # the command's start-up before the training clock began, and its exit
    curve = [((offset + float(r["minutes"]) * 60) / 60, float(r["valid_ppl"])) for r in rows]
    steps = int(rows[-1]["step"])
    print(f"ErGo {minutes:g} min: command {wall / 60:.2f} min, {steps} steps, best {min(p for _, p in curve):.2f}",
          flush=True)
    return {"minutes": minutes, "wall": wall, "curve": curve, "steps": steps}


def run_reference(torch_python: str, data_dir: Path, minutes: float) -> dict:
    cmd = [torch_python, str(REFERENCE), str(data_dir), f"{minutes:.2f}", "--every", str(REFERENCE_EVERY)]
    print("$ " + " ".join(cmd), flush=True)
    started = time.perf_counter()
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode:
        sys.exit(f"the reference failed ({done.returncode}):\n{done.stderr[-3000:]}")
    curve, steps = [], []
    for m in re.finditer(r"t=(\d+) step=(\d+) tok/s=(\d+) valid_ppl=([\d.]+)", done.stdout):
        curve.append((int(m.group(1)) / 60, float(m.group(4))))
        steps.append(int(m.group(2)))
    print(f"reference: {minutes:.2f} min of training ({(time.perf_counter() - started) / 60:.2f} min with its "
          f"validations), {steps[-1]} steps, best {min(p for _, p in curve):.2f}", flush=True)
    return {"curve": curve, "steps": steps}


def reference_best(reference: dict, wall_minutes: float) -> tuple[float, float]:
    """(best perplexity, minutes it had): every validation up to the first at or after `wall_minutes`."""
    best, had = float("inf"), 0.0
    for t, ppl in reference["curve"]:
        best, had = min(best, ppl), t
        if t >= wall_minutes:
            break
    return best, had


def plot(ergo_runs: list[dict], reference: dict, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(8, 5))
    ax.plot(*zip(*reference["curve"]), "k.-", label="PyTorch reference")
    for r in ergo_runs:
        ax.plot(*zip(*r["curve"]), "o-", label=f"ErGo --minutes {r['minutes']:g}")
    ax.set(xlabel="minutes (ErGo: whole command; reference: its training)", ylabel="validation perplexity",
           yscale="log", title="quality per minute")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=90)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("data_dir", type=Path)
    p.add_argument("--minutes", default="5", help="budgets, comma-separated (e.g. 5,10,20)")
    p.add_argument("--torch-python", required=True, help="a Python with torch (its own virtual environment)")
    p.add_argument("--preset", default="quick")
    p.add_argument("--png", type=Path, default=Path("quality_race.png"))
    p.add_argument("--keep", type=Path, help="keep ErGo's run folders here (default: a temp folder)")
    p.add_argument("extra", nargs="*", help="more main.py --train options, after --")
    args = p.parse_args()
    budgets = [float(m) for m in args.minutes.split(",")]
    data_dir = args.data_dir.resolve()
    with tempfile.TemporaryDirectory() as tmp:
        runs_root = args.keep or Path(tmp)
        ergo_runs = [run_ergo(data_dir, m, args.preset, runs_root / f"ergo-{m:g}min", args.extra) for m in budgets]
        longest = max(r["wall"] for r in ergo_runs) / 60
        reference = run_reference(args.torch_python, data_dir, longest + REFERENCE_EVERY / 60)
    print("\nErGo validation curves (minutes on the command's clock, perplexity):")
    for r in ergo_runs:
        print(f"  --minutes {r['minutes']:g}: " + ", ".join(f"({t:.2f}, {p:.2f})" for t, p in r["curve"]))
    print("reference validation curve (minutes of its training, perplexity):")
    print("  " + ", ".join(f"({t:.2f}, {p:.2f})" for t, p in reference["curve"]))
    print("\n| budget | ErGo command | ErGo steps | ErGo best | reference minutes | reference best | ratio |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for r in ergo_runs:
        ours = min(p for _, p in r["curve"])
        theirs, had = reference_best(reference, r["wall"] / 60)
        print(f"| {r['minutes']:g} min | {r['wall'] / 60:.2f} min | {r['steps']:,} | {ours:.2f} | {had:.2f} | "
              f"{theirs:.2f} | **{ours / theirs:.3f}** |")
    plot(ergo_runs, reference, args.png)
    print(f"\ncurves: {args.png}")


if __name__ == "__main__":
    main()
