"""main.py as a user runs it: what it prints, its exit status, and no traceback for a user's mistake."""
import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from fixtures import synthetic_conversations, write_text_corpus

ROOT = Path(__file__).resolve().parents[1]


def run(*args, cwd):
    return subprocess.run([sys.executable, str(ROOT / "main.py"), *args], cwd=cwd, capture_output=True,
                          text=True, timeout=300)


def test_preprocess_prints_where_it_wrote_what(tmp_path):
    corpus = write_text_corpus(tmp_path / "talk.txt", synthetic_conversations(40))
    r = run("--preprocess", "--corpus", str(corpus), "--preset", "tiny", "--quiet", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "data/talk-tiny/ written: 40 conversations" in r.stdout
    assert "warning: tiny corpus" in r.stderr
    assert (tmp_path / "data" / "talk-tiny" / "manifest.json").is_file()
    r = run("--preprocess", "--corpus", str(corpus), "--preset", "tiny", "--quiet", cwd=tmp_path)
    assert "up to date, reused" in r.stdout


@pytest.mark.parametrize("args,message", [
    (["--preprocess", "--corpus", "nope.txt"], "error: no such corpus file or folder: nope.txt"),
    (["--preprocess", "--corpus", "latin.txt"], "error: latin.txt:2: not valid utf-8"),
    (["--preprocess", "--corpus", "cornell"], "error: corpus 'cornell' is not in corpora/cornell/"),
    (["--preprocess", "--corpus", "talk.txt", "--embeddings", "nope.vec"], "error: no such embeddings file"),
])
def test_user_mistakes_get_one_line_and_exit_2(tmp_path, args, message):
    (tmp_path / "latin.txt").write_bytes("hi\nça va\n".encode("iso-8859-1"))
    write_text_corpus(tmp_path / "talk.txt", synthetic_conversations(5))
    r = run(*args, "--quiet", cwd=tmp_path)
    assert r.returncode == 2
    assert r.stderr.startswith(message) and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert "Traceback" not in r.stderr
    assert not (tmp_path / "data").exists() or not any((tmp_path / "data").iterdir())


def test_nothing_to_do_says_so():
    r = subprocess.run([sys.executable, str(ROOT / "main.py")], capture_output=True, text=True)
    assert r.returncode == 2 and "nothing to do" in r.stderr


def test_train_for_minutes_on_a_prepared_data_folder(tmp_path):
    corpus = write_text_corpus(tmp_path / "talk.txt", synthetic_conversations(60))
    assert run("--preprocess", "--corpus", str(corpus), "--preset", "tiny", "--data-dir", "prepared", "--quiet",
               cwd=tmp_path).returncode == 0
    # the command a scheduler retries, killed with SIGKILL once a save within the epoch is on disk
    train = ["--train", "--data-dir", "prepared", "--preset", "tiny", "--minutes", "0.25", "--validate-every", "0.1",
             "--save-every", "0.01", "--resume", "--quiet"]
    latest = tmp_path / "checkpoints" / "talk-tiny" / "latest" / "state.json"
    first = subprocess.Popen([sys.executable, str(ROOT / "main.py"), *train], cwd=tmp_path, stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 240
    while not latest.is_file() and first.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    first.send_signal(signal.SIGKILL)
    first.wait()
    assert first.returncode == -signal.SIGKILL, "the run ended before it could be killed"
    saved = json.loads(latest.read_text())
    r = run(*train, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert f"resuming checkpoints/talk-tiny/ after epoch {saved['epoch']}, batch {saved['position']}" in r.stdout
    assert "prepared/ up to date, reused" in r.stdout
    assert "0.25-minute budget is spent" in r.stdout or "has used its 0.25 minutes" in r.stdout  # on a slow machine
    assert not list(latest.parent.parent.glob(".*.tmp"))  # what the kill left was cleared
    assert "best model: checkpoints/talk-tiny/best/" in r.stdout
    best = tmp_path / "checkpoints" / "talk-tiny" / "best"
    assert (best / "selector" / "config.json").is_file() and (best / "ranking.json").is_file()

