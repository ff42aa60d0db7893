"""The web chat as it runs for real: gunicorn (gthread workers, the model loaded in each), a real Redis,
HTTP over loopback. Conversations across requests and workers, restarts, bad input, Redis going away."""
from __future__ import annotations

import stat
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import requests

from conftest import WebServer
from ergo.chatbot import SETTINGS, Chatbot


def chat(session: requests.Session, url: str, message: str, **settings) -> requests.Response:
    body = {"message": message, **({"settings": settings} if settings else {})}
    return session.post(url + "/api/chat", json=body, timeout=30)


def history(session: requests.Session, url: str) -> list[dict]:
    return session.get(url + "/api/history", timeout=30).json()["turns"]


def sessions_on_two_workers(url: str, tries: int = 60) -> list[requests.Session]:
    """Two kept-alive connections answered by different workers, sharing one cookie jar."""
    jar, by_worker = requests.cookies.RequestsCookieJar(), {}
    for _ in range(tries):
        s = requests.Session()
        s.cookies = jar
        by_worker.setdefault(s.get(url + "/healthz", timeout=30).headers["X-Ergo-Worker"], s)
        if len(by_worker) == 2:
            return list(by_worker.values())
    pytest.fail(f"{tries} connections all went to one worker")


def test_a_conversation_keeps_its_turns_in_order(web_server):
    s = requests.Session()
    messages = ["hi!", "what do you like to eat?", "where do you live?"]
    answers = [chat(s, web_server.url, m) for m in messages]
    assert [a.status_code for a in answers] == [200, 200, 200]
    data = [a.json() for a in answers]
    assert [d["turn"] for d in data] == [2, 4, 6]
    assert len({d["conversation_id"] for d in data}) == 1 and not any(d["degraded"] for d in data)
    turns = history(s, web_server.url)
    assert [(t["turn"], t["role"]) for t in turns] == [(n, "user" if n % 2 else "bot") for n in range(1, 7)]
    assert [t["text"] for t in turns[::2]] == messages
    assert [t["text"] for t in turns[1::2]] == [d["reply"] for d in data]


def test_a_second_worker_answers_the_next_turn_with_the_same_context(web_server, tiny_bundle):
    first, second = sessions_on_two_workers(web_server.url)
    a = chat(first, web_server.url, "hello!")
    b = chat(second, web_server.url, "what do you like to eat?")
    assert a.headers["X-Ergo-Worker"] != b.headers["X-Ergo-Worker"]
    assert (a.json()["turn"], b.json()["turn"]) == (2, 4)
    assert a.json()["conversation_id"] == b.json()["conversation_id"]
    bot = Chatbot.load(tiny_bundle)  # the reply the second worker must give to the whole conversation
    assert b.json()["reply"] == bot.reply(["hello!", a.json()["reply"], "what do you like to eat?"]).text
    assert [t["text"] for t in history(first, web_server.url)] == [
        "hello!", a.json()["reply"], "what do you like to eat?", b.json()["reply"]]


def test_concurrent_turns_from_two_workers_lose_nothing(web_server):
    first = requests.Session()
    chat(first, web_server.url, "start")
    messages = [f"message number {i}" for i in range(16)]

    def send(message):
        s = requests.Session()
        s.cookies.update(first.cookies)
        r = chat(s, web_server.url, message)
        return r.status_code, r.headers["X-Ergo-Worker"]

    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(send, messages))
    assert {code for code, _ in results} == {200}
    assert len({worker for _, worker in results}) == 2
    turns = history(first, web_server.url)
    assert [t["turn"] for t in turns] == list(range(1, 35))
    assert sorted(t["text"] for t in turns[2::2]) == sorted(messages)
    assert all(u["role"] == "user" and b["role"] == "bot" for u, b in zip(turns[::2], turns[1::2]))


FIRST_SETTING = next(iter(SETTINGS))
BAD_CHATS = [
    ({"json": {"message": ""}}, 400, "message is empty"),
    ({"json": {"message": "  \n\t "}}, 400, "message is empty"),
    ({"json": {"message": "x" * 201}}, 400, "message is too long: 201 characters, at most 200"),
    ({"json": {}}, 400, "message is required"),
    ({"json": {"message": 42}}, 400, "message must be a string"),
    ({"json": ["hi"]}, 400, "must be a JSON object"),
    ({"json": {"message": "hi", "mood": "happy"}}, 400, "unknown field 'mood'"),
    ({"data": "{not json", "headers": {"Content-Type": "application/json"}}, 400, "not valid JSON"),
    ({"data": "[" * 5000, "headers": {"Content-Type": "application/json"}}, 400, "not valid JSON"),  # too deep
    ({"data": "message=hi"}, 400, "Content-Type: application/json"),
    ({"json": {"message": "hi", "settings": ["greedy"]}}, 400, "settings must be a JSON object"),
    ({"json": {"message": "hi", "settings": {"loudness": 11}}}, 400, "unknown setting 'loudness'"),
    ({"json": {"message": "hi", "settings": {FIRST_SETTING: [1]}}}, 400, f"setting {FIRST_SETTING!r} must be"),
    ({"data": "{" + " " * 20000 + "}", "headers": {"Content-Type": "application/json"}}, 413, "too large"),
]


@pytest.mark.parametrize("request_kw, status, message", BAD_CHATS, ids=[m for _, _, m in BAD_CHATS])
def test_bad_chat_input_gets_its_status_and_says_why(web_server, request_kw, status, message):
    r = requests.post(web_server.url + "/api/chat", timeout=30, **request_kw)
    assert r.status_code == status
    assert message in r.json()["error"]


@pytest.mark.parametrize("method, path, body, status, message", [
    ("post", "/api/feedback", {"turn": "two", "vote": "up"}, 400, "turn must be a positive integer"),
    ("post", "/api/feedback", {"turn": 2, "vote": "meh"}, 400, 'vote must be "up" or "down"'),
    ("post", "/api/feedback", {"turn": 99, "vote": "up"}, 404, "no reply numbered 99"),
    ("post", "/api/regenerate", {}, 409, "no reply to regenerate"),
    ("post", "/api/reset", {"why": 1}, 400, "unknown field 'why'"),
    ("get", "/api/chat", None, 405, "GET is not allowed"),
    ("get", "/api/nothing", None, 404, "not found"),
])
def test_other_bad_requests(web_server, method, path, body, status, message):
    r = getattr(requests, method)(web_server.url + path, json=body, timeout=30)
    assert r.status_code == status
    assert message in r.json()["error"]
    assert "Traceback" not in r.text


def test_feedback_regenerate_and_reset(web_server):
    s = requests.Session()
    turn = chat(s, web_server.url, "hi!").json()["turn"]
    assert s.post(web_server.url + "/api/feedback", json={"turn": turn, "vote": "up"}).json() == {
        "turn": turn, "vote": "up"}
    assert history(s, web_server.url)[-1]["vote"] == "up"
    assert s.post(web_server.url + "/api/feedback", json={"turn": turn - 1, "vote": "up"}).status_code == 404
    again = s.post(web_server.url + "/api/regenerate", json={}).json()
    assert again["turn"] == turn and again["degraded"] is False
    assert "vote" not in history(s, web_server.url)[-1] and len(history(s, web_server.url)) == 2
    old = again["conversation_id"]
    assert s.post(web_server.url + "/api/reset", json={}).json()["conversation_id"] != old
    assert history(s, web_server.url) == []


def test_ttl_is_set_and_refreshed_on_use(web_server, redis_server):
    from web.store import ConversationStore, connect

    s = requests.Session()
    cid = chat(s, web_server.url, "hi!").json()["conversation_id"]
    client = connect(redis_server.url)
    turns_key = ConversationStore.keys(cid)[0]
    assert 290 < client.ttl(turns_key) <= 300
    client.expire(turns_key, 10)
    history(s, web_server.url)
    assert client.ttl(turns_key) > 290


def test_healthz_and_metrics(web_server):
    health = web_server.get("/healthz").json()
    assert health == {"status": "ok", "model_loaded": True, "model": "run", "redis": True}
    metrics = web_server.get("/metrics").text
    assert 'ergo_replies_total{degraded="false"}' in metrics
    assert "ergo_reply_seconds_bucket" in metrics


@pytest.mark.skipif(not Path("/proc/self/maps").is_file(), reason="needs Linux's /proc")
def test_a_worker_runs_tensorflow_without_what_it_never_uses(web_server):
    pid = web_server.get("/healthz").headers["X-Ergo-Worker"]
    mapped = Path(f"/proc/{pid}/maps").read_text()
    assert "/tensorflow/" in mapped
    for unused in ("/matplotlib/", "/scipy/stats/", "/gensim/"):  # ~90 MB a worker, imported by keras, nltk, ergo
        assert unused not in mapped


def test_restart_keeps_history_and_the_cap_holds(tiny_bundle, tmp_path):
    """No REDIS_URL: the server runs its own redis-server with the data in the run folder."""
    env = {"ERGO_HISTORY_CAP": "4"}
    server = WebServer(tiny_bundle, tmp_path / "run", workers=1, env=env)
    s = requests.Session()
    try:
        assert "Redis: started redis-server" in server.log()
        for m in ["one", "two", "three"]:
            chat(s, server.url, m)
        before = history(s, server.url)
        assert [t["turn"] for t in before] == [3, 4, 5, 6] and before[0]["text"] == "two"
    finally:
        log = server.stop()
    assert "Redis stopped; conversations kept in" in log
    assert stat.S_IMODE((tmp_path / "run" / "web" / "secret.key").stat().st_mode) == 0o600

    server = WebServer(tiny_bundle, tmp_path / "run", workers=1, env=env)
    try:
        assert history(s, server.url) == before
        assert chat(s, server.url, "four").json()["turn"] == 8
    finally:
        server.stop()


def test_redis_stopped_mid_conversation_degrades_then_recovers(web_server, redis_server):
    s = requests.Session()
    first = chat(s, web_server.url, "hi!").json()
    redis_server.stop(keep_address=True)
    try:
        down = chat(s, web_server.url, "are you there?")
        assert down.status_code == 200
        assert down.json()["degraded"] is True and down.json()["turn"] is None and "reply" in down.json()
        health = web_server.get("/healthz").json()
        assert health["status"] == "degraded" and health["redis"] is False and health["model_loaded"] is True
        assert s.get(web_server.url + "/api/history").json() == {
            "conversation_id": first["conversation_id"], "turns": [], "degraded": True}
        assert s.post(web_server.url + "/api/feedback", json={"turn": 2, "vote": "up"}).status_code == 503
    finally:
        redis_server.start()
    deadline = time.monotonic() + 20
    while web_server.get("/healthz").json()["status"] != "ok" and time.monotonic() < deadline:
        time.sleep(0.2)
    back = chat(s, web_server.url, "and now?").json()
    assert back["degraded"] is False and back["turn"] == 4
    assert [t["text"] for t in history(s, web_server.url)][::2] == ["hi!", "and now?"]
    assert "Redis unreachable" in web_server.log()
