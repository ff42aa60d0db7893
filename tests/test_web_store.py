"""The Redis conversation store against a real redis-server: order, cap, TTL, atomic appends, votes."""
from __future__ import annotations

import secrets
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from web.redis_server import LocalRedis, alive
from web.store import ConversationStore, StoreUnavailable, connect


@pytest.fixture()
def store(redis_server):
    return ConversationStore(connect(redis_server.url), cap=1000, ttl=300)


def cid() -> str:
    return secrets.token_urlsafe(18)


def exchange(i: int) -> tuple[dict, dict]:
    return {"role": "user", "text": f"message {i}"}, {"role": "bot", "text": f"reply {i}"}


def test_turns_come_back_in_order_and_numbered(store):
    c = cid()
    assert store.turns(c) == []
    assert store.append(c, *exchange(1)) == 2
    assert store.append(c, *exchange(2)) == 4
    turns = store.turns(c)
    assert [(t["n"], t["role"], t["text"]) for t in turns] == [
        (1, "user", "message 1"), (2, "bot", "reply 1"), (3, "user", "message 2"), (4, "bot", "reply 2")]
    assert [t["n"] for t in store.turns(c, last=3)] == [2, 3, 4]  # what a reply's context reads


def test_cap_drops_the_oldest_and_numbering_goes_on(redis_server):
    capped = ConversationStore(connect(redis_server.url), cap=4, ttl=300)
    c = cid()
    for i in range(1, 5):
        capped.append(c, *exchange(i))
    assert [t["n"] for t in capped.turns(c)] == [5, 6, 7, 8]
    assert capped.turns(c)[0]["text"] == "message 3"


def test_ttl_is_set_refreshed_on_use_and_expires(redis_server, store):
    c = cid()
    store.append(c, *exchange(1))
    store.vote(c, 2, "up")
    keys = store.keys(c)
    assert all(250 < store.client.ttl(k) <= 300 for k in keys)
    for k in keys:
        store.client.expire(k, 5)
    store.turns(c)  # a read is a use
    assert all(store.client.ttl(k) > 250 for k in keys)

    short = ConversationStore(connect(redis_server.url), cap=10, ttl=1)
    c2 = cid()
    short.append(c2, *exchange(1))
    time.sleep(1.6)
    assert short.turns(c2) == []
    assert not any(short.client.exists(k) for k in short.keys(c2))


def test_concurrent_appends_lose_nothing(store):
    c, threads, each = cid(), 8, 25
    start = threading.Barrier(threads)

    def writer(t):
        start.wait()
        for i in range(each):
            store.append(c, *exchange(t * 1000 + i))

    workers = [threading.Thread(target=writer, args=(t,)) for t in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    turns = store.turns(c)
    assert [t["n"] for t in turns] == list(range(1, threads * each * 2 + 1))
    for user, bot in zip(turns[::2], turns[1::2]):  # each exchange landed whole, user then bot
        assert user["role"] == "user" and bot["role"] == "bot"
        assert user["text"].split()[1] == bot["text"].split()[1]
    assert len({t["text"] for t in turns[::2]}) == threads * each


def test_replace_last_only_while_it_is_last(store):
    c = cid()
    store.append(c, *exchange(1))
    store.vote(c, 2, "down")
    assert store.replace_last(c, 2, {"role": "bot", "text": "better"})
    assert store.turns(c, votes=True)[-1] == {**store.turns(c)[-1], "text": "better"}  # vote cleared
    store.append(c, *exchange(2))
    assert not store.replace_last(c, 2, {"role": "bot", "text": "too late"})
    assert [t["text"] for t in store.turns(c)] == ["message 1", "better", "message 2", "reply 2"]


def test_votes_only_on_kept_bot_turns(store):
    c = cid()
    store.append(c, *exchange(1))
    assert store.vote(c, 2, "up")
    assert not store.vote(c, 1, "up")  # a user turn
    assert not store.vote(c, 9, "up")  # no such turn
    assert [t.get("vote") for t in store.turns(c, votes=True)] == [None, "up"]


def test_unreachable_redis_is_store_unavailable(tmp_path):
    down = ConversationStore(connect(f"unix://{tmp_path}/no-redis.sock"), cap=10, ttl=10)
    assert not down.ping()
    with pytest.raises(StoreUnavailable):
        down.turns(cid())
    with pytest.raises(StoreUnavailable):
        down.append(cid(), *exchange(1))


def test_local_redis_keeps_data_across_restarts(tmp_path):
    server = LocalRedis(tmp_path / "redis")
    try:
        s = ConversationStore(connect(server.start()), cap=10, ttl=300)
        c = cid()
        s.append(c, *exchange(1))
        server.stop(keep_address=True)
        assert not s.ping()
        server.start()
        assert [t["text"] for t in s.turns(c)] == ["message 1", "reply 1"]
        assert (tmp_path / "redis" / "appendonly.aof").exists()
    finally:
        server.stop()


def test_a_redis_left_by_a_killed_server_is_stopped_first(tmp_path):
    code = ("import sys, time; from web.redis_server import LocalRedis; "
            "print(LocalRedis(sys.argv[1]).start(), flush=True); time.sleep(60)")
    parent = subprocess.Popen([sys.executable, "-c", code, str(tmp_path)], stdout=subprocess.PIPE, text=True)
    socket_dir = Path(parent.stdout.readline().strip()[len("unix://"):]).parent
    parent.kill()  # SIGKILL: no clean-up ran, its redis-server is still up
    parent.wait()
    leftover = int((tmp_path / "redis.pid").read_text())
    assert alive(leftover)
    server = LocalRedis(tmp_path)
    try:
        server.start()
        assert not alive(leftover) and not socket_dir.exists()
    finally:
        server.stop()
