"""The Flask app factory: the chat page, the JSON API, and the guards around both (rate limits, body size,
security headers, JSON errors that never carry a stack trace, metrics for loopback clients only)."""
from __future__ import annotations

import gc
import ipaddress
import logging
import os
import secrets
import time
from pathlib import Path
from typing import Sequence
from urllib.parse import urlsplit

from flask import Flask, abort, jsonify, render_template, request, send_file, session
from flask_limiter import Limiter
from flask_limiter.util import get_remote_address
from limits import parse_many
from werkzeug.exceptions import HTTPException
from werkzeug.middleware.proxy_fix import ProxyFix

from ergo.errors import ErgoError

from . import metrics
from .api import Services, api
from .bundles import Bundles, Spec, specs
from .config import WebConfig
from .store import ConversationStore, connect

log = logging.getLogger("ergo.web")
HERE = Path(__file__).parent
METHODS = {"GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS"}
CSP = ("default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
       "object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'")
# GETs per client, all routes together (/healthz and /metrics exempt): a page load makes six.
READ_LIMIT = "300 per minute;6000 per hour"
READS = ("GET", "HEAD")


def read_limit(env=os.environ) -> str:
    """ERGO_READ_LIMIT, else READ_LIMIT; checked now, since Flask-Limiter would fail open on a bad one."""
    raw = env.get("ERGO_READ_LIMIT", "").strip() or READ_LIMIT
    try:
        parse_many(raw)
    except ValueError:
        raise ErgoError(f"ERGO_READ_LIMIT is not a rate limit like '300 per minute;6000 per hour': {raw!r}") from None
    return raw


def is_loopback(address: str | None) -> bool:
    """Whether a client address (after ProxyFix: the client's, not the proxy's) is this machine's."""
    try:
        ip = ipaddress.ip_address(address or "")
    except ValueError:
        return False
    return (getattr(ip, "ipv4_mapped", None) or ip).is_loopback


def limits_storage(redis_url: str, cluster: bool = False) -> str:
    """Flask-Limiter spells a unix-socket Redis URL redis+unix://, and a cluster (found from the node at
    redis://[user:password@]host:port) redis+cluster://."""
    if cluster:
        return "redis+cluster://" + urlsplit(redis_url).netloc
    return "redis+unix://" + redis_url[len("unix://"):] if redis_url.startswith("unix://") else redis_url


def load_bot(path: Path, config: WebConfig):
    """A bundle's Chatbot as a web worker keeps it: it takes what web clients may ask, and the default
    settings' searches are traced now, not on a visitor's time, and kept whatever other settings come and
    go: retrieval's scoring, and generation for when retrieval finds nothing."""
    from ergo.chatbot import Chatbot  # here, not at import: the model loads in each worker, after fork

    bot = Chatbot.load(Path(path), xla=config.xla, web=True)
    bot.reply(["hello"])
    bot.reply(["hello"], mode="generate")
    bot.decoder.pin()
    return bot


def create_app(bundles: Sequence[Spec] | Path, redis_url: str, secret_key: str, config: WebConfig | None = None,
               reads: str | None = None, device: str | None = None) -> Flask:
    """Load the bundles (once per gunicorn worker; a bundle folder alone is served as the only one) and build
    the app around them and the Redis at redis_url; `reads`: the GET rate limit (default: read_limit());
    `device`: the line naming it, for the log."""
    started = time.perf_counter()
    config = config or WebConfig()
    reads = reads or read_limit()
    worker = secrets.token_hex(6)  # tells workers apart in X-Ergo-Worker without showing their pid
    app = Flask(__name__)
    app.config.update(SECRET_KEY=secret_key, MAX_CONTENT_LENGTH=config.max_body_bytes,
                      SESSION_COOKIE_NAME="ergo_conversation", SESSION_COOKIE_HTTPONLY=True,
                      SESSION_COOKIE_SAMESITE="Strict", SESSION_COOKIE_SECURE=config.secure_cookie,
                      PERMANENT_SESSION_LIFETIME=config.history_ttl)
    if config.trusted_proxies:
        n = config.trusted_proxies
        app.wsgi_app = ProxyFix(app.wsgi_app, x_for=n, x_proto=n, x_host=n)

    served = Bundles(specs([bundles]) if isinstance(bundles, (str, Path)) else bundles,
                     lambda path: load_bot(path, config))
    gc.collect()
    gc.freeze()  # the models and their libraries stay (until a swap): collections skip them (a dropped search calls one)
    served.watch(config.reload_seconds)
    store = ConversationStore(connect(redis_url, config.redis_cluster), config.history_cap, config.history_ttl,
                              config.history_ttl_first)
    limiter = Limiter(get_remote_address, app=app, storage_uri=limits_storage(redis_url, config.redis_cluster),
                      storage_options={"key_prefix": "ergo:limits", "socket_connect_timeout": 0.5,
                                       "socket_timeout": 2.0},
                      strategy="moving-window", headers_enabled=True,
                      application_limits=[reads], application_limits_exempt_when=lambda: request.method not in READS,
                      in_memory_fallback_enabled=True, swallow_errors=True)
    limiter.shared_limit(config.rate_limit, "writes", methods=["POST"])(api)  # every write counts alike
    app.register_blueprint(api)
    app.extensions["ergo"] = Services(served, store, config)

    @app.get("/")
    def index():
        # the bundle answering this visitor's conversation, where it has one yet (or where there is one only)
        mine = served.get(session.get("bundle")) or (served.first if len(served) == 1 else None)
        return render_template("index.html", bot_name=mine.name if mine else "", max_chars=config.max_message_chars,
                               keep_for_training=config.keep_for_training)

    @app.get("/healthz")
    @limiter.exempt
    def healthz():
        redis_ok = store.ping()
        return jsonify(status="ok" if redis_ok else "degraded", model_loaded=True, model=served.first.name,
                       redis=redis_ok, bundles=[s.describe() for s in served])

    @app.get("/metrics")
    @limiter.exempt
    def prometheus():
        if not is_loopback(request.remote_addr):
            abort(403, "the metrics are served to this machine's own clients only (loopback)")
        body, content_type = metrics.exposition()
        return body, 200, {"Content-Type": content_type}

    @app.get("/api/openapi.json")
    def openapi():
        return send_file(HERE / "openapi.json", mimetype="application/json")

    @app.after_request
    def guard(response):
        h = response.headers
        h["Content-Security-Policy"] = CSP
        h["X-Content-Type-Options"] = "nosniff"
        h["X-Frame-Options"] = "DENY"
        h["Referrer-Policy"] = "no-referrer"
        h["X-Ergo-Worker"] = worker  # which worker answered: shows the state is shared
        if request.path.startswith("/api/"):
            h["Cache-Control"] = "no-store"
        method = request.method if request.method in METHODS else "OTHER"
        metrics.REQUESTS.labels(request.endpoint or "none", method, response.status_code).inc()
        return response

    @app.errorhandler(HTTPException)
    def http_error(e: HTTPException):
        message = e.description
        if e.code == 429:
            message = f"too many requests (limit: {e.description}); wait a moment and try again"
        elif message == type(e).description:  # werkzeug's stock wording: say it in ours
            message = {404: f"not found: {request.path}", 405: f"{request.method} is not allowed on {request.path}",
                       413: f"request body too large: at most {config.max_body_bytes} bytes"}.get(e.code, message)
        headers = [(k, v) for k, v in e.get_headers() if k.lower() != "content-type"]  # e.g. Allow
        return jsonify(error=message), e.code, headers

    @app.errorhandler(Exception)
    def internal_error(e: Exception):
        log.exception("unhandled error on %s %s", request.method, request.path)
        return jsonify(error="internal error; the server log has the details"), 500

    log.info("worker ready: %s loaded in %.1f s%s; Redis %s",
             ", ".join(f"bundle {s.name} (version {s.live.version})" for s in served), time.perf_counter() - started,
             f" ({device})" if device else "",
             "reachable" if store.ping() else "unreachable (replying without context until it is back)")
    return app
