"""TensorFlow's start-up notes stay out of a user's terminal; real warnings and the device line show."""
import os
import subprocess
import sys
from pathlib import Path

from ergo.quiet import NOTES, without_notes

ROOT = Path(__file__).resolve().parents[1]


def test_only_the_known_notes_are_dropped(capfd):
    with without_notes():
        os.write(2, b"I0000 00:00:1 port.cc:153] oneDNN custom operations are on. You may see ...\n")
        os.write(2, b"E0000 00:00:2 cuda_platform.cc:52] failed call to cuInit: INTERNAL: CUDA error\n")
        os.write(2, b"W0000 00:00:3 something.cc:1] a real warning\n")
        print("from python", file=sys.stderr)
    err = capfd.readouterr().err
    assert "a real warning" in err and "from python" in err
    assert "oneDNN custom" not in err and "cuInit" not in err


def test_chat_on_a_cpu_says_its_device_once_and_nothing_of_cuda(tiny_bundle):
    env = {k: v for k, v in os.environ.items() if k not in ("TF_CPP_MIN_LOG_LEVEL", "CUDA_VISIBLE_DEVICES")}
    r = subprocess.run([sys.executable, str(ROOT / "main.py"), "--chat", "--model-dir", str(tiny_bundle)],
                       input="hi there!\n", capture_output=True, text=True, timeout=180, cwd=ROOT, env=env)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip()  # a reply
    lines = r.stderr.splitlines()
    assert lines.count("device: CPU (TensorFlow sees no GPU)") == 1, r.stderr
    assert not [line for line in lines if NOTES.search(line) or "cuda" in line.lower()], r.stderr



def test_a_mistake_in_a_command_that_computes_still_gets_one_line(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}
    r = subprocess.run([sys.executable, str(ROOT / "main.py"), "--chat", "--model-dir", str(tmp_path / "nope")],
                       input="hi\n", capture_output=True, text=True, timeout=180, cwd=ROOT, env=env)
    assert r.returncode == 2 and r.stderr.startswith("error: no trained model in ")
    assert len(r.stderr.strip().splitlines()) == 1, r.stderr
