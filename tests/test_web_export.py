"""--export-conversations: which conversations it writes and how (text only, cut before a down-voted reply,
never one kept out of training), from REDIS_URL or a run folder's Redis, running or not, changing nothing.
The whole loop through main.py (export, then a fine-tune on it): test_end_to_end.py."""
from __future__ import annotations

import json

import pytest

from ergo.errors import ErgoError
from web.export import export_conversations
from web.redis_server import LocalRedis
from web.store import ConversationStore, connect


def exchange(k: int) -> tuple[dict, dict]:
    return {"role": "user", "text": f"question {k}"}, {"role": "bot", "text": f"answer {k}", "bundle": "b"}


def fill(store: ConversationStore) -> None:
    """Five conversations of three exchanges: liked (up, then a down-voted reply), disliked, unrated, liked
    but kept out of training, and liked at its first reply only after a down-vote."""
    for cid, votes, keep in [("liked", {2: "up", 4: "down"}, True), ("disliked", {4: "down"}, True),
                             ("unrated", {}, True), ("private", {2: "up"}, False), ("late", {2: "down", 6: "up"}, True)]:
        for k in range(3):
            store.append(cid, *exchange(k), bundle="b", keep=keep)
        for n, vote in votes.items():
            assert store.vote(cid, n, vote)


def written(path) -> list[list[str]]:
    lines = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]
    assert all(list(line) == ["turns"] for line in lines)  # text only: no ids, bundles, votes or times
    return sorted(line["turns"] for line in lines)


@pytest.fixture()
def redis(tmp_path):
    server = LocalRedis(tmp_path / "redis")
    server.start()
    yield server
    server.stop()


def test_rated_picks_the_conversations_and_an_up_vote_cuts_before_the_first_down_vote(redis, tmp_path):
    store = ConversationStore(connect(redis.url), cap=100, ttl=3600)
    fill(store)
    ttls = {key: store.client.ttl(key) for key in store.client.keys("ergo:conv:*")}
    env = {"REDIS_URL": redis.url}
    whole = [f"{who} {k}" for k in range(3) for who in ("question", "answer")]

    up = export_conversations(tmp_path, tmp_path / "up.jsonl", "up", env=env, progress=False)
    assert written(tmp_path / "up.jsonl") == [whole[:3]]  # "liked", up to its down-voted reply; "late" cut to 1 turn
    assert (up.written, up.turns, up.seen) == (1, 3, 5)
    assert up.left_out == {"without a up-vote": 2, "kept out of training (ERGO_KEEP_FOR_TRAINING was off)": 1,
                           "with fewer than two turns before a down-vote": 1}
    assert "1 conversation(s), 3 turns, written to" in up.summary()
    export_conversations(tmp_path, tmp_path / "down.jsonl", "down", env=env, progress=False)
    assert written(tmp_path / "down.jsonl") == [whole] * 3  # liked, disliked, late: whole
    export_conversations(tmp_path, tmp_path / "any.jsonl", "any", env=env, progress=False)
    assert written(tmp_path / "any.jsonl") == [whole] * 4  # all but the private one
    assert {key: store.client.ttl(key) for key in ttls} == pytest.approx(ttls, abs=2)  # read, not renewed
    with pytest.raises(ErgoError, match="rated must be one of up, down, any"):
        export_conversations(tmp_path, tmp_path / "x.jsonl", "liked", env=env)


def test_a_run_folders_redis_is_read_beside_its_server_or_started_for_the_export(tmp_path):
    data = tmp_path / "run" / "web" / "redis"
    server = LocalRedis(data)  # as --serve runs it
    fill(ConversationStore(connect(server.start()), cap=100, ttl=3600))
    try:
        export_conversations(tmp_path / "run", tmp_path / "a.jsonl", "any", env={}, progress=False)
        assert LocalRedis.running(data)[0] == server.process.pid  # read beside it; still running
    finally:
        server.stop()
    assert LocalRedis.running(data) is None
    export_conversations(tmp_path / "run", tmp_path / "b.jsonl", "any", env={}, progress=False)
    assert LocalRedis.running(data) is None  # the one started to read is stopped again
    assert written(tmp_path / "a.jsonl") == written(tmp_path / "b.jsonl") and len(written(tmp_path / "b.jsonl")) == 4
    with pytest.raises(ErgoError, match="holds no conversations"):
        export_conversations(tmp_path / "elsewhere", tmp_path / "c.jsonl", env={})
    assert not (tmp_path / "c.jsonl").exists()


def test_an_unreachable_redis_writes_nothing(tmp_path):
    (tmp_path / "out.jsonl").write_text("kept\n")
    with pytest.raises(ErgoError, match="could not be read .*nothing was written"):
        export_conversations(tmp_path, tmp_path / "out.jsonl", env={"REDIS_URL": f"unix://{tmp_path}/none.sock"})
    assert (tmp_path / "out.jsonl").read_text() == "kept\n"
