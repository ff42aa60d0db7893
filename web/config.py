"""The web app's limits and its secret key, read from the environment so a deployment (docker-compose,
tests) sets them without code changes. A bad value stops the server at start with a clear message.

The server's state (the key, the embedded Redis's data) holds every conversation: it is kept in folders
only this user may open (private_dir)."""
from __future__ import annotations

import dataclasses
import os
import secrets
import tempfile
from dataclasses import dataclass
from pathlib import Path

from limits import parse_many

from ergo.config import env_flag
from ergo.errors import ErgoError

ENV_PREFIX = "ERGO_"
ZERO_ALLOWED = ("trusted_proxies", "reload_seconds")


@dataclass(frozen=True)
class WebConfig:
    max_message_chars: int = 1000    # ERGO_MAX_MESSAGE_CHARS: a longer message is a 400
    max_body_bytes: int = 16384      # ERGO_MAX_BODY_BYTES: a bigger request body is a 413, never read
    history_cap: int = 100           # ERGO_HISTORY_CAP: turns kept per conversation, the oldest dropped
    history_ttl: int = 30 * 86400    # ERGO_HISTORY_TTL: seconds a conversation lives after its last use
    # ERGO_HISTORY_TTL_FIRST: the same for a conversation of one exchange (at most ERGO_HISTORY_TTL), so the
    # many that never get a second turn (a bot, a page opened once) do not fill Redis for a month
    history_ttl_first: int = 86400
    redis_maxmemory_mb: int = 256    # ERGO_REDIS_MAXMEMORY_MB: the embedded Redis's memory, then it evicts
    redis_cluster: bool = False      # ERGO_REDIS_CLUSTER: REDIS_URL is a node of a Redis Cluster
    max_requests: int = 50000        # ERGO_MAX_REQUESTS: a worker answers about this many (±10 %), then is replaced
    rate_limit: str = "30 per 10 seconds;600 per hour"  # ERGO_RATE_LIMIT: writes per client (Flask-Limiter)
    trusted_proxies: int = 0         # ERGO_TRUSTED_PROXIES: X-Forwarded-* hops to trust (behind nginx: 1)
    secure_cookie: bool = False      # ERGO_SECURE_COOKIE: send the cookie over HTTPS only
    # ERGO_XLA: compile the searches and the retrieval index's product with XLA. Off: each new shape of
    # inputs would stall the reply that meets it for a compile of 1-3 s and add to the worker's memory
    # (~130 MB at base).
    xla: bool = False
    # ERGO_RELOAD_SECONDS: how often a worker looks whether a bundle's folder was replaced (training's new
    # best/), to load it and swap it in between requests; 0: never
    reload_seconds: int = 5
    # ERGO_KEEP_FOR_TRAINING: whether conversations held now may be exported for training (main.py
    # --export-conversations); off, they are still kept for their context, and marked never to be exported
    keep_for_training: bool = True

    @classmethod
    def from_env(cls, env=os.environ) -> WebConfig:
        values = {}
        for f in dataclasses.fields(cls):
            name = ENV_PREFIX + f.name.upper()
            raw = env.get(name, "").strip()
            if not raw:
                continue
            if f.name == "rate_limit":
                try:
                    parse_many(raw)  # Flask-Limiter reads it only at the first request, and then fails open
                except ValueError:
                    raise ErgoError(f"{name} is not a rate limit like '30 per 10 seconds;600 per hour': {raw!r}") from None
                values[f.name] = raw
            elif f.type == "str":
                values[f.name] = raw
            elif f.type == "bool":
                values[f.name] = env_flag(name, f.default, env)
            else:
                try:
                    values[f.name] = int(raw)
                except ValueError:
                    raise ErgoError(f"{name} must be a whole number, not {raw!r}") from None
                if values[f.name] < (0 if f.name in ZERO_ALLOWED else 1):
                    raise ErgoError(f"{name} must be {'0 or more' if f.name in ZERO_ALLOWED else 'positive'}, "
                                    f"not {raw!r}")
        if values.get("redis_cluster") and not env.get("REDIS_URL", "").strip():
            raise ErgoError("ERGO_REDIS_CLUSTER is set but REDIS_URL is not: set it to a node of the cluster "
                            "(the embedded Redis is a single server)")
        return cls(**values)


def secret_key(state_dir: Path, env=os.environ) -> str:
    """ERGO_SECRET_KEY, or a random key generated once and kept in `state_dir/secret.key` (mode 0600).

    The key signs the conversation cookie, so it must outlive restarts and be the same in every worker
    and replica; it is created atomically (link of a complete temp file) so racing processes agree.
    """
    if key := env.get("ERGO_SECRET_KEY", "").strip():
        if len(key) < 32:
            raise ErgoError("ERGO_SECRET_KEY is too short: use at least 32 random characters "
                            "(e.g. `python -c 'import secrets; print(secrets.token_hex(32))'`)")
        return key
    path = Path(state_dir) / "secret.key"
    if not path.exists():
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".secret.")  # mkstemp creates it 0600
        try:
            with os.fdopen(fd, "w") as f:
                f.write(secrets.token_hex(32) + "\n")
            os.link(tmp, path)
        except FileExistsError:
            pass
        finally:
            os.unlink(tmp)
    os.chmod(path, 0o600)
    key = path.read_text().strip()
    if len(key) < 32:
        raise ErgoError(f"{path} holds no usable key; delete it to have a new one made")
    return key


def private_dir(path: Path) -> Path:
    """Make `path` a folder only this user may open (0700), made if missing, and tighten what it holds already
    (folders 0700, files 0600; links are left alone): state an older version made, or copied in, was readable
    by everyone."""
    path = Path(path)
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    for folder, _, files in os.walk(path):
        os.chmod(folder, 0o700)
        for name in files:
            if not os.path.islink(file := os.path.join(folder, name)):
                os.chmod(file, 0o600)
    return path
