"""The web chat as it runs for real: gunicorn (gthread workers, the model loaded in each), a real Redis,
HTTP over loopback. Conversations across requests and workers, restarts, bad input, Redis going away, full,
or killed under load."""
from __future__ import annotations

import json
import re
import stat
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import requests

from conftest import ROOT, WebServer
from ergo.chatbot import SETTINGS, Chatbot
from ergo.text import tokenize
from web.store import ConversationStore, connect

sys.path.insert(0, str(ROOT / "bench"))
from web_faults import Chatters, children, healthy_after, kill, lost_turns  # noqa: E402


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


def events(response: requests.Response) -> list[tuple[str, dict]]:
    """The (event, data) pairs of a server-sent event stream, as they come."""
    out, event = [], None
    for line in response.iter_lines(decode_unicode=True):
        if line.startswith("event: "):
            event = line[len("event: "):]
        elif line.startswith("data: "):
            out.append((event, json.loads(line[len("data: "):])))
    return out


def test_a_streamed_reply_comes_as_token_events_then_done_and_is_kept_once(web_server):
    s, url = requests.Session(), web_server.url
    greedy = {"mode": "generate", "decoder": "greedy"}
    r = s.post(url + "/api/chat/stream", json={"message": "hi!", "settings": greedy}, stream=True, timeout=30)
    assert r.status_code == 200 and r.headers["Content-Type"].startswith("text/event-stream")
    assert r.headers["Cache-Control"] == "no-store"
    got = events(r)
    kinds = [e for e, _ in got]
    done = got[-1][1]
    assert kinds[-1] == "done" and set(kinds[:-1]) == {"token"}
    assert len(kinds) - 1 == len(tokenize(done["reply"], True))  # word by word (one event a word)
    assert set(done) == {"reply", "conversation_id", "turn", "degraded", "bundle", "version"} and done["turn"] == 2
    assert "".join(d["text"] for _, d in got[:-1]).strip() == done["reply"]
    assert done["reply"] == chat(requests.Session(), url, "hi!", **greedy).json()["reply"]  # as /api/chat says it
    r = s.post(url + "/api/chat/stream", json={"message": "where do you live?"}, stream=True, timeout=30)
    got = events(r)  # the default mode ranks candidates: its reply comes whole, in one token event
    assert [e for e, _ in got] == ["token", "done"] and got[0][1]["text"] == got[1][1]["reply"]
    turns = history(s, url)
    assert [(t["turn"], t["role"]) for t in turns] == [(1, "user"), (2, "bot"), (3, "user"), (4, "bot")]
    assert turns[1]["text"] == done["reply"]
    bad = s.post(url + "/api/chat/stream", json={"message": ""}, timeout=30)
    assert bad.status_code == 400 and bad.json()["error"] == "message is empty"
    bad = s.post(url + "/api/chat/stream", json={"message": "hi", "settings": {"beam_size": 7}}, timeout=30)
    assert bad.status_code == 400 and "web clients" in bad.json()["error"]
    assert len(history(s, url)) == 4


def test_workers_start_without_tensorflows_notes_and_name_their_device(web_server):
    from ergo.quiet import NOTES
    log = web_server.log()
    assert log.count("(device: CPU (TensorFlow sees no GPU))") >= web_server.workers
    assert not [line for line in log.splitlines() if NOTES.search(line) or "cuda" in line.lower()], log


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
    (bundle,) = health.pop("bundles")
    assert health == {"status": "ok", "model_loaded": True, "model": "run", "redis": True}
    assert bundle["name"] == "run" and bundle["traffic"] == 1 and re.fullmatch(r"[0-9a-f]{12}", bundle["version"])
    metrics = web_server.get("/metrics").text
    assert 'ergo_replies_total{bundle="run",degraded="false"}' in metrics
    assert "ergo_reply_seconds_bucket" in metrics


@pytest.mark.skipif(not Path("/proc/self/maps").is_file(), reason="needs Linux's /proc")
def test_a_worker_runs_tensorflow_without_what_it_never_uses(web_server):
    pid = children(web_server.process.pid)[0]  # gunicorn's master: its children are the workers (REDIS_URL)
    mapped = Path(f"/proc/{pid}/maps").read_text()
    assert "/tensorflow/" in mapped
    # ~130 MB a worker, imported by keras, nltk, TensorFlow's legacy Keras, ergo
    for unused in ("/matplotlib/", "/scipy/stats/", "/scipy/sparse/", "/gensim/"):
        assert unused not in mapped


@pytest.fixture(scope="module")
def own_redis_server(tiny_bundle, tmp_path_factory):
    """No REDIS_URL: one worker and the server's own redis-server, supervised, with its data in run/web/.
    test_restart_keeps_history_... stops it and starts another on the same run folder."""
    server = WebServer(tiny_bundle, tmp_path_factory.mktemp("own-redis") / "run", workers=1,
                       env={"ERGO_RATE_LIMIT": "1000 per minute"})
    yield server
    server.stop()


def test_its_own_redis_killed_under_load_is_back_with_every_acknowledged_turn(own_redis_server):
    server, address = own_redis_server, own_redis_server.url.split("//", 1)[1]
    assert "Redis: started redis-server" in server.log()
    with Chatters(address, 2, seconds=120, most=40) as chatters:  # 40 exchanges: within the cap of 100 turns
        assert chatters.wait_for(4, timeout=30)
        kill(int((server.run_dir / "web" / "redis" / "redis.pid").read_text()))
        assert healthy_after(address, timeout=30) is not None
        assert chatters.wait_for(chatters.turns + 4, timeout=30)  # kept again
    assert set(chatters.outcomes) <= {"ok", "degraded"}  # never an error
    assert lost_turns(address, chatters) == 0
    assert "redis-server restarted" in server.log()


def test_restart_keeps_history_the_cap_holds_and_the_state_is_private(own_redis_server, tiny_bundle):
    s, run_dir = requests.Session(), own_redis_server.run_dir
    for m in ["one", "two", "three"]:
        chat(s, own_redis_server.url, m)
    before = history(s, own_redis_server.url)
    assert [t["turn"] for t in before] == [1, 2, 3, 4, 5, 6]
    assert "Redis stopped; conversations kept in" in own_redis_server.stop()

    state = run_dir / "web"
    private = [(state, 0o700), (state / "secret.key", 0o600), (state / "redis", 0o700),
               (state / "redis" / "appendonly.aof", 0o600), (state / "redis" / "redis.log", 0o600)]
    assert [(p, stat.S_IMODE(p.stat().st_mode)) for p, _ in private] == private
    for p, _ in private:  # as an older version left them: tightened at the next start
        p.chmod(0o755 if p.is_dir() else 0o644)

    server = WebServer(tiny_bundle, run_dir, workers=1, env={"ERGO_HISTORY_CAP": "4"})
    try:
        assert history(s, server.url) == before
        assert chat(s, server.url, "four").json()["turn"] == 8
        kept = history(s, server.url)
        assert [t["turn"] for t in kept] == [5, 6, 7, 8] and kept[0]["text"] == "three"
        assert [(p, stat.S_IMODE(p.stat().st_mode)) for p, _ in private] == private
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
            "conversation_id": first["conversation_id"], "bundle": "run", "turns": [], "degraded": True}
        assert s.post(web_server.url + "/api/feedback", json={"turn": 2, "vote": "up"}).status_code == 503
    finally:
        redis_server.start()
    deadline = time.monotonic() + 20
    while web_server.get("/healthz").json()["status"] != "ok" and time.monotonic() < deadline:
        time.sleep(0.2)
    back = chat(s, web_server.url, "and now?").json()
    assert back["degraded"] is False and back["turn"] == 4
    assert [t["text"] for t in history(s, web_server.url)][::2] == ["hi!", "and now?"]
    assert "Redis failed (unreachable" in web_server.log()


def test_a_full_redis_degrades_replies_and_healthz_instead_of_failing(web_server, redis_server):
    admin, s = connect(redis_server.url), requests.Session()
    saved = {**admin.config_get("maxmemory"), **admin.config_get("maxmemory-policy")}
    chat(s, web_server.url, "hi!")
    admin.config_set("maxmemory-policy", "noeviction")  # full, and nothing it may evict: every write is OOM
    admin.config_set("maxmemory", "1")
    try:
        full = chat(s, web_server.url, "still there?")
        assert full.status_code == 200 and full.json()["degraded"] is True and full.json()["turn"] is None
        assert web_server.get("/healthz").json()["status"] == "degraded"  # though Redis answers PING
        assert [t["turn"] for t in history(s, web_server.url)] == [1, 2]  # reads still work
        assert s.post(web_server.url + "/api/feedback", json={"turn": 2, "vote": "up"}).status_code == 503
    finally:
        for name, value in saved.items():
            admin.config_set(name, value)
    assert web_server.get("/healthz").json()["status"] == "ok"
    assert chat(s, web_server.url, "and now?").json()["turn"] == 4
    assert "Redis failed (OOM: " in web_server.log()
