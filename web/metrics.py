"""Prometheus metrics. Under gunicorn each worker writes its own files in PROMETHEUS_MULTIPROC_DIR (set by
web.serve before the workers start) and /metrics adds them up, so a scrape sees the whole server."""
from __future__ import annotations

import os

from prometheus_client import (CONTENT_TYPE_LATEST, REGISTRY, CollectorRegistry, Counter, Histogram,
                               generate_latest, multiprocess)

REQUESTS = Counter("ergo_http_requests_total", "HTTP requests answered", ["endpoint", "method", "status"])
REPLY_SECONDS = Histogram("ergo_reply_seconds", "Time the model took to reply",
                          buckets=(0.01, 0.025, 0.05, 0.1, 0.2, 0.4, 0.8, 1.6, 3.2, 6.4))
REPLIES = Counter("ergo_replies_total", "Replies given", ["bundle", "degraded"])
CONVERSATIONS = Counter("ergo_conversations_total", "Conversations whose first exchange was kept", ["bundle"])
FEEDBACK = Counter("ergo_feedback_total", "Thumbs up/down received", ["bundle", "vote"])
REDIS_ERRORS = Counter("ergo_redis_errors_total", "Requests that found Redis unreachable")


def exposition() -> tuple[bytes, str]:
    """The metrics text and its content type."""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
    else:
        registry = REGISTRY
    return generate_latest(registry), CONTENT_TYPE_LATEST
