"""The Redis conversation store against a real redis-server: order, cap, TTL, atomic appends, votes, the
ids, older versions' keys renamed; and our own redis-server: private files, kept data, a memory limit,
restarts, and every way Redis refuses. On a Redis Cluster: test_web_cluster.py."""
from __future__ import annotations

import json
import os
import re
import secrets
import signal
import stat
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from web.config import WebConfig
from web.redis_server import LocalRedis, alive
from web.serve import _migrate
from web.store import PREFIX, ConversationStore, StoreUnavailable, connect


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


def test_a_conversation_of_one_exchange_has_the_short_ttl_until_its_second(redis_server):
    s = ConversationStore(connect(redis_server.url), cap=10, ttl=300, first_ttl=60)
    c = cid()
    s.append(c, *exchange(1))
    keys = s.keys(c)[:2]  # turns and meta: no vote, no feedback key
    assert all(50 < s.client.ttl(k) <= 60 for k in keys)
    s.turns(c)  # a read is a use, not a second exchange
    assert all(50 < s.client.ttl(k) <= 60 for k in keys)
    s.append(c, *exchange(2))
    assert all(290 < s.client.ttl(k) <= 300 for k in keys)
    s.turns(c)
    assert all(290 < s.client.ttl(k) <= 300 for k in keys)
    assert ConversationStore(s.client, cap=10, ttl=30, first_ttl=60).ttls == (30, 30)  # never longer than ttl


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


def test_ids_name_every_stored_conversation_once(store):
    made = {cid() for _ in range(30)}
    for c in made:
        store.append(c, *exchange(1))
    store.turns(cid())  # read, never written: not stored
    ids = list(store.ids())
    assert made <= set(ids) and len(ids) == len(set(ids))


def keep_the_old_way(client, c: str, ttl: int) -> list[str]:
    """A conversation as versions before the hash tags kept it: one exchange, a vote on the reply."""
    turns, meta, feedback = keys = [f"{PREFIX}{c}:{part}" for part in ("turns", "meta", "feedback")]
    client.rpush(turns, *(json.dumps({"n": n, **t, "time": 1.0}) for n, t in enumerate(exchange(1), 1)))
    client.hset(meta, "n", 2)
    client.hset(feedback, "2", json.dumps({"vote": "up", "text": "reply 1", "time": 1.0}))
    for k in keys:
        client.expire(k, ttl)
    return keys


def test_conversations_an_older_version_kept_are_renamed_once_with_their_ttl(store):
    old, continued = cid(), cid()
    old_keys = keep_the_old_way(store.client, old, ttl=200)
    keep_the_old_way(store.client, continued, ttl=200)
    store.append(continued, *exchange(2))  # continued under the new keys before any migration ran
    assert store.migrate() == 1
    assert not any(store.client.exists(k) for k in old_keys)
    assert all(150 < store.client.ttl(k) <= 200 for k in store.keys(old))  # kept (a read then refreshes it)
    assert [(t["n"], t["text"], t.get("vote")) for t in store.turns(old, votes=True)] == [
        (1, "message 1", None), (2, "reply 1", "up")]
    assert store.append(old, *exchange(2)) == 4  # the numbering goes on
    assert [t["text"] for t in store.turns(continued)] == ["message 2", "reply 2"]  # the new keys win
    assert store.migrate() == 0


def test_a_run_folders_redis_of_an_older_version_is_migrated_at_start(tmp_path, capsys):
    server = LocalRedis(tmp_path / "redis")
    try:
        c = cid()
        url = server.start()
        keep_the_old_way(connect(url), c, ttl=300)
        server.stop(keep_address=True)  # the upgrade: the same data, the new version's server
        server.start()
        _migrate(url, WebConfig())
        assert "1 conversation(s) of an older version renamed" in capsys.readouterr().out
        assert [t["text"] for t in ConversationStore(connect(url), cap=10, ttl=300).turns(c)] == [
            "message 1", "reply 1"]
        _migrate(url, WebConfig())
        assert capsys.readouterr().out == ""  # nothing left: nothing said
    finally:
        server.stop()
    _migrate(url, WebConfig())  # Redis away: the server starts all the same and says so
    assert "could not look for an older version's conversations now" in capsys.readouterr().out


def test_unreachable_redis_is_store_unavailable(tmp_path):
    down = ConversationStore(connect(f"unix://{tmp_path}/no-redis.sock"), cap=10, ttl=10)
    assert not down.ping()
    with pytest.raises(StoreUnavailable):
        down.turns(cid())
    with pytest.raises(StoreUnavailable):
        down.append(cid(), *exchange(1))
    with pytest.raises(StoreUnavailable):
        list(down.ids())


def modes(folder: Path) -> dict[str, int]:
    return {p.name: stat.S_IMODE(p.stat().st_mode) for p in [folder, *folder.iterdir()]}


def test_local_redis_keeps_data_across_restarts_in_private_files(tmp_path):
    data = tmp_path / "redis"
    server = LocalRedis(data)
    try:
        s = ConversationStore(connect(server.start()), cap=10, ttl=300)
        c = cid()
        s.append(c, *exchange(1))
        assert s.client.config_get("appendfsync") == {"appendfsync": "always"}  # no acknowledged turn lost
        private = {"redis": 0o700, "appendonly.aof": 0o600, "redis.log": 0o600, "redis.pid": 0o600}
        assert modes(data) == private
        server.stop(keep_address=True)
        assert not s.ping()
        data.chmod(0o755)  # as an older version left them
        (data / "appendonly.aof").chmod(0o644)
        server.start()
        assert [t["text"] for t in s.turns(c)] == ["message 1", "reply 1"]
        assert modes(data) == private
    finally:
        server.stop()


def refused(call) -> str:
    with pytest.raises(StoreUnavailable) as e:
        call()
    return e.value.kind


def test_every_refusal_of_redis_is_store_unavailable_and_says_which(tmp_path):
    server = LocalRedis(tmp_path / "redis")
    try:
        s = ConversationStore(connect(server.start()), cap=10, ttl=300)
        admin, c = s.client, cid()
        s.append(c, *exchange(1))

        admin.config_set("maxmemory-policy", "noeviction")  # full, and nothing it may evict
        admin.config_set("maxmemory", "1")
        assert refused(lambda: s.append(c, *exchange(2))) == "OOM"
        assert not s.ping()  # though PING itself would answer
        assert [t["n"] for t in s.turns(c)] == [1, 2]  # the context still reads
        admin.config_set("maxmemory", "0")

        admin.execute_command("REPLICAOF", "127.0.0.1", "1")  # a replica (of nothing there) refuses writes
        assert refused(lambda: s.vote(c, 2, "up")) == "READONLY"
        assert not s.ping()
        admin.execute_command("REPLICAOF", "NO", "ONE")
        assert s.ping()

        gone = tmp_path / "gone"  # a snapshot it cannot write (a full disk would do the same) stops writes
        gone.mkdir()
        admin.config_set("dir", str(gone))
        gone.rmdir()
        admin.config_set("save", "3600 1")
        admin.bgsave()
        deadline = time.monotonic() + 10
        while admin.info("persistence")["rdb_last_bgsave_status"] != "err" and time.monotonic() < deadline:
            time.sleep(0.02)
        assert refused(lambda: s.append(c, *exchange(3))) == "MISCONF"
        assert [t["n"] for t in s.turns(c)] == [1, 2]  # a read of a fresh TTL writes nothing
        assert not s.ping()
        admin.config_set("save", "")  # it need not snapshot: it writes again
        assert s.ping() and s.append(c, *exchange(3)) == 4
    finally:
        server.stop()


def test_a_full_redis_evicts_idle_conversations_not_a_live_one(tmp_path):
    server = LocalRedis(tmp_path / "redis", maxmemory_mb=2)  # about 1 MB over what an empty Redis uses
    try:
        s = ConversationStore(connect(server.start()), cap=10, ttl=300)
        big = {"role": "user", "text": "x" * 40_000}
        idle = [cid() for _ in range(24)]
        for c in idle:
            s.append(c, big)
        time.sleep(1.1)  # Redis knows a key's last use to the second
        live = cid()
        s.append(live, *exchange(1))
        for _ in range(8):  # past the limit: Redis must make room
            s.append(cid(), big)
            s.turns(live)
        assert s.client.info("stats")["evicted_keys"] > 0
        assert [t["text"] for t in s.turns(live)] == ["message 1", "reply 1"]
        assert any(not s.turns(c) for c in idle)
    finally:
        server.stop()


def test_a_killed_redis_is_restarted_and_one_that_keeps_dying_is_retried_less_often(tmp_path, caplog):
    server = LocalRedis(tmp_path / "redis", backoff=0.05, backoff_max=0.2)

    def until(condition, timeout: float = 20) -> bool:
        deadline = time.monotonic() + timeout
        while not condition() and time.monotonic() < deadline:
            time.sleep(0.02)
        return condition()

    try:
        s = ConversationStore(connect(server.start()), cap=10, ttl=300)
        server.supervise()
        c = cid()
        s.append(c, *exchange(1))
        os.kill(server.process.pid, signal.SIGKILL)
        assert until(lambda: "redis-server restarted" in caplog.text)
        assert s.ping() and [t["text"] for t in s.turns(c)] == ["message 1", "reply 1"]  # its AOF, replayed

        (tmp_path / "redis" / "appendonly.aof").write_text("not an append-only file\n")  # it dies at every start
        os.kill(server.process.pid, signal.SIGKILL)
        assert until(lambda: caplog.text.count("did not start") >= 3)
        (tmp_path / "redis" / "appendonly.aof").unlink()
        assert until(lambda: caplog.text.count("redis-server restarted") == 2)
        assert s.ping()

        server.process.terminate()  # shut down as asked (a Ctrl-C reaches it with the web server)
        assert until(lambda: "left stopped" in caplog.text)
        assert not s.ping()
    finally:
        server.stop()
    delays = [float(d) for d in re.findall(r"restarting it in ([\d.]+) s", caplog.text)]
    assert delays[:4] == [0.05, 0.1, 0.2, 0.2]  # doubled at each quick death in a row, up to backoff_max
    assert "Bad file format reading the append only file" in caplog.text  # why, from its log


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
