"""The Flask app in-process (real Redis, real model): rate limits, headers, cookies, errors, settings,
the OpenAPI description, and the server's configuration. Behaviour under gunicorn: test_web_gunicorn.py."""
from __future__ import annotations

import itertools
import json
import os
import re
import stat

import pytest

from ergo.chatbot import SETTINGS, WEB_CHOICES, WEB_STEPS, choices_of
from ergo.errors import ErgoError
from web.app import HERE, create_app, is_loopback, read_limit
from web.config import WebConfig, secret_key

READS = 8  # GETs a minute per client in these tests


@pytest.fixture(scope="module")
def app(tiny_bundle, redis_server):
    return create_app(tiny_bundle, redis_server.url, "k" * 40, WebConfig(rate_limit="4 per minute"),
                      reads=f"{READS} per minute")


ADDRESSES = itertools.count(2)


@pytest.fixture()
def client(app):
    """A client with an address of its own, so one test's rate limit does not spill into the next."""
    client = app.test_client()
    client.environ_base["REMOTE_ADDR"] = f"127.0.0.{next(ADDRESSES)}"
    return client


def test_too_many_requests_is_429_with_the_limit_stored_in_redis(client, redis_server):
    codes = [client.post("/api/chat", json={"message": "hi"}).status_code for _ in range(5)]
    assert codes == [200, 200, 200, 200, 429]
    r = client.post("/api/feedback", json={"turn": 2, "vote": "up"})  # writes share one limit
    assert r.status_code == 429
    assert "too many requests" in r.get_json()["error"] and r.headers["Retry-After"]
    assert client.get("/api/history").status_code == 200  # reads have a limit of their own
    from web.store import connect
    assert any(connect(redis_server.url).scan_iter("ergo:limits:*"))


def test_reads_have_a_limit_of_their_own_and_healthz_none(client):
    codes = [client.get(path).status_code for path in ["/api/settings", "/api/history", "/"] * 3]
    assert codes == [200] * READS + [429]
    assert "too many requests" in client.get("/api/openapi.json").get_json()["error"]
    assert client.get("/healthz").status_code == 200  # health checkers are never turned away
    assert client.post("/api/reset", json={}).status_code == 200  # writes count apart


def test_read_limit_comes_from_the_environment():
    assert read_limit({}) == "300 per minute;6000 per hour"
    assert read_limit({"ERGO_READ_LIMIT": " 5 per second "}) == "5 per second"
    with pytest.raises(ErgoError, match="ERGO_READ_LIMIT is not a rate limit"):
        read_limit({"ERGO_READ_LIMIT": "plenty"})


def test_metrics_are_served_to_loopback_clients_only(app, client):
    assert client.get("/metrics").status_code == 200
    outside = app.test_client()
    outside.environ_base["REMOTE_ADDR"] = "192.0.2.7"
    r = outside.get("/metrics")
    assert r.status_code == 403 and "loopback" in r.get_json()["error"]
    assert [is_loopback(a) for a in ("127.0.0.9", "::1", "::ffff:127.0.0.1", "10.0.0.1", "::ffff:10.0.0.1", "", None)] \
        == [True, True, True, False, False, False, False]


def test_the_worker_header_tells_workers_apart_without_their_pid(app, client):
    (worker,) = {client.get("/healthz").headers["X-Ergo-Worker"] for _ in range(3)}
    assert re.fullmatch(r"[0-9a-f]{12}", worker) and str(os.getpid()) not in worker


@pytest.mark.parametrize("settings, message", [
    ({"max_len": 25}, "setting 'max_len' must be one of 10, 20, 40 for web clients, not 25"),
    ({"beam_size": 16}, "setting 'beam_size' must be one of 3, 5, 10 for web clients, not 16"),
    ({"decoder": "sample", "top_k": 50}, "setting 'top_k' must be one of 0, 10, 40, 100 for web clients, not 50"),
    ({"beam_size": 10, "max_len": 40}, "beam_size 10 with max_len 40 is more than web clients may ask"),
    ({"decoder": "sample", "samples": 10, "max_len": 40}, "samples x max_len must be at most 200"),
])
def test_web_clients_get_a_few_values_of_what_shapes_a_search(client, settings, message):
    r = client.post("/api/chat", json={"message": "hi", "settings": settings})
    assert r.status_code == 400 and message in r.get_json()["error"]


def test_openapi_settings_are_what_web_clients_may_ask():
    schema = json.loads((HERE / "openapi.json").read_text())["components"]["schemas"]["Settings"]
    assert list(schema["properties"]) == list(SETTINGS)
    for name, spec in schema["properties"].items():
        assert spec["default"] == SETTINGS[name][1], name
        assert spec.get("enum") == (choices_of(name) or spec.get("enum")), name  # the catalogues' (ergo/choices.py)
    assert schema["properties"]["min_len"]["maximum"] == max(WEB_CHOICES["max_len"])
    refused = {(rule["not"]["properties"]["decoder"]["const"], rule["not"]["properties"][width]["const"],
                rule["not"]["properties"]["max_len"]["const"])
               for rule in schema["allOf"] if "not" in rule for width in ("beam_size", "samples")
               if width in rule["not"]["properties"]}
    assert refused == {(decoder, w, m) for decoder, width in (("beam", "beam_size"), ("sample", "samples"))
                       for w in WEB_CHOICES[width] for m in WEB_CHOICES["max_len"] if w * m > WEB_STEPS}


def test_security_headers_and_no_inline_script(client):
    r = client.get("/")
    csp = r.headers["Content-Security-Policy"]
    assert "script-src 'self'" in csp and "unsafe-inline" not in csp and "frame-ancestors 'none'" in csp
    assert r.headers["X-Content-Type-Options"] == "nosniff"
    html = r.get_data(as_text=True)
    assert re.findall(r"<script\b[^>]*>", html) and all("src=" in tag for tag in re.findall(r"<script\b[^>]*>", html))
    assert not re.search(r"\son\w+=", html)  # no inline event handlers either
    assert "http://" not in html and "https://" not in html  # no CDN: everything comes from the app
    assert client.get("/static/chat.js").status_code == 200
    assert "innerHTML" not in (HERE / "static" / "chat.js").read_text()


def test_cookie_is_signed_httponly_samesite(client):
    r = client.post("/api/chat", json={"message": "hello"})
    cookie = r.headers["Set-Cookie"]
    assert "HttpOnly" in cookie and "SameSite=Strict" in cookie
    cid = r.get_json()["conversation_id"]
    assert client.get("/api/history").get_json()["conversation_id"] == cid
    value = client.get_cookie("ergo_conversation").value
    client.set_cookie("ergo_conversation", value[:-3] + ("aaa" if not value.endswith("aaa") else "bbb"))
    assert client.get("/api/history").get_json()["conversation_id"] != cid  # a forged cookie is ignored


def test_no_stack_trace_reaches_the_client(app, client, monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("secret internals at /srv/ergo/model.py line 42")

    monkeypatch.setattr(app.extensions["ergo"].bundles.first.live.bot, "reply", broken)
    r = client.post("/api/chat", json={"message": "hi"})
    assert r.status_code == 500
    assert r.get_json() == {"error": "internal error; the server log has the details"}
    assert "Traceback" not in r.get_data(as_text=True)


def test_settings_catalogue_lists_every_setting(client):
    listed = client.get("/api/settings").get_json()["settings"]
    assert [s["name"] for s in listed] == list(SETTINGS)
    for s in listed:
        assert s["default"] == SETTINGS[s["name"]][1]
        if s["type"] == "str" or s["name"] in ("max_len", "beam_size", "top_k", "samples"):
            assert s["default"] in s["choices"]  # the page offers only what a web client may ask


def test_openapi_describes_every_route(app, client):
    spec = client.get("/api/openapi.json").get_json()
    assert spec["openapi"].startswith("3.")
    for rule in app.url_map.iter_rules():
        if rule.endpoint == "static":
            continue
        assert rule.rule in spec["paths"], rule.rule
        for method in rule.methods - {"HEAD", "OPTIONS"}:
            assert method.lower() in spec["paths"][rule.rule], (rule.rule, method)


def test_metrics_count_requests(client):
    client.get("/healthz")
    text = client.get("/metrics").get_data(as_text=True)
    assert 'ergo_http_requests_total{endpoint="healthz",method="GET",status="200"}' in text


def test_secret_key_is_generated_once_and_kept_private(tmp_path):
    key = secret_key(tmp_path, env={})
    assert len(key) >= 32 and secret_key(tmp_path, env={}) == key
    assert stat.S_IMODE((tmp_path / "secret.key").stat().st_mode) == 0o600
    assert secret_key(tmp_path, env={"ERGO_SECRET_KEY": "e" * 40}) == "e" * 40
    with pytest.raises(ErgoError, match="too short"):
        secret_key(tmp_path, env={"ERGO_SECRET_KEY": "short"})


def test_config_from_environment():
    cfg = WebConfig.from_env({"ERGO_HISTORY_CAP": "12", "ERGO_RATE_LIMIT": "2 per second", "ERGO_SECURE_COOKIE": "yes"})
    assert (cfg.history_cap, cfg.rate_limit, cfg.secure_cookie) == (12, "2 per second", True)
    with pytest.raises(ErgoError, match="ERGO_HISTORY_TTL must be a whole number"):
        WebConfig.from_env({"ERGO_HISTORY_TTL": "soon"})
    with pytest.raises(ErgoError, match="ERGO_MAX_MESSAGE_CHARS must be positive"):
        WebConfig.from_env({"ERGO_MAX_MESSAGE_CHARS": "0"})
    with pytest.raises(ErgoError, match="ERGO_RATE_LIMIT is not a rate limit"):
        WebConfig.from_env({"ERGO_RATE_LIMIT": "lots"})


def test_the_page_says_whether_conversations_may_be_used_for_training(client, tiny_bundle, redis_server):
    assert "the ones you rate may be used to train the bot" in client.get("/").get_data(as_text=True)
    off = create_app(tiny_bundle, redis_server.url, "k" * 40, WebConfig(keep_for_training=False, reload_seconds=0))
    visitor = off.test_client()
    assert "they are never used for training" in visitor.get("/").get_data(as_text=True)
    assert visitor.get("/api/settings").get_json()["keep_for_training"] is False
    cid = visitor.post("/api/chat", json={"message": "hello"}).get_json()["conversation_id"]
    from web.store import ConversationStore, connect
    _, meta = ConversationStore(connect(redis_server.url), cap=10, ttl=60).conversation(cid, touch=False)
    assert meta["train"] == "0" and meta["bundle"] == "run"  # marked: --export-conversations never writes it


def test_reload_and_keep_settings_come_from_the_environment():
    cfg = WebConfig.from_env({"ERGO_RELOAD_SECONDS": "0", "ERGO_KEEP_FOR_TRAINING": "no"})
    assert (cfg.reload_seconds, cfg.keep_for_training) == (0, False)
    with pytest.raises(ErgoError, match="ERGO_RELOAD_SECONDS must be 0 or more"):
        WebConfig.from_env({"ERGO_RELOAD_SECONDS": "-5"})
