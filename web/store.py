"""Conversations in Redis, so any worker (or replica) can answer any turn and a restart loses nothing.

Per conversation id:
    ergo:conv:<id>:turns     list of JSON turns, oldest first, capped at `cap` (the oldest dropped)
    ergo:conv:<id>:meta      hash: n = number of the last turn (numbering survives the cap)
    ergo:conv:<id>:feedback  hash: turn number -> JSON {vote, text, time}

Every write is one Lua script, so turns from two tabs or two workers land whole, never lost or torn;
every read and write refreshes the TTL of all three keys.
"""
from __future__ import annotations

import functools
import json
import time

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

PREFIX = "ergo:conv:"

# KEYS: turns, meta, feedback. ARGV: cap, ttl, then the turns as JSON objects without "n".
_APPEND = """
local k = #ARGV - 2
local last = redis.call('HINCRBY', KEYS[2], 'n', k)
for i = 3, #ARGV do
  redis.call('RPUSH', KEYS[1], '{"n":' .. (last - k + i - 2) .. ',' .. string.sub(ARGV[i], 2))
end
redis.call('LTRIM', KEYS[1], -tonumber(ARGV[1]), -1)
for i = 1, 3 do redis.call('EXPIRE', KEYS[i], ARGV[2]) end
return last
"""

# KEYS: turns, meta, feedback. ARGV: ttl, n, turn JSON without "n". Replaces the last turn if it is n.
_REPLACE_LAST = """
local last = redis.call('LINDEX', KEYS[1], -1)
if not last or cjson.decode(last)['n'] ~= tonumber(ARGV[2]) then return 0 end
redis.call('LSET', KEYS[1], -1, '{"n":' .. ARGV[2] .. ',' .. string.sub(ARGV[3], 2))
redis.call('HDEL', KEYS[3], ARGV[2])
for i = 1, 3 do redis.call('EXPIRE', KEYS[i], ARGV[1]) end
return 1
"""

# KEYS: turns, meta, feedback. ARGV: ttl, n, vote, time. Records a vote on bot turn n if it is kept.
_VOTE = """
for _, raw in ipairs(redis.call('LRANGE', KEYS[1], 0, -1)) do
  local turn = cjson.decode(raw)
  if turn['n'] == tonumber(ARGV[2]) and turn['role'] == 'bot' then
    redis.call('HSET', KEYS[3], ARGV[2], cjson.encode({vote = ARGV[3], text = turn['text'], time = tonumber(ARGV[4])}))
    for i = 1, 3 do redis.call('EXPIRE', KEYS[i], ARGV[1]) end
    return 1
  end
end
return 0
"""


class StoreUnavailable(Exception):
    """Redis cannot be reached (down, restarting, loading): the caller degrades instead of failing."""


def connect(url: str) -> redis.Redis:
    """A client that fails fast (the chat degrades rather than hangs) and reconnects by itself."""
    return redis.Redis.from_url(url, decode_responses=True, socket_connect_timeout=0.5, socket_timeout=2.0,
                                retry=Retry(NoBackoff(), 1), health_check_interval=15)


def _unavailable(fn):
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except (redis.ConnectionError, redis.TimeoutError) as e:
            raise StoreUnavailable(str(e) or type(e).__name__) from None
    return wrapper


class ConversationStore:
    def __init__(self, client: redis.Redis, cap: int, ttl: int):
        self.client, self.cap, self.ttl = client, cap, ttl
        self._append = client.register_script(_APPEND)
        self._replace_last = client.register_script(_REPLACE_LAST)
        self._vote = client.register_script(_VOTE)

    @staticmethod
    def keys(cid: str) -> list[str]:
        return [f"{PREFIX}{cid}:{part}" for part in ("turns", "meta", "feedback")]

    def ping(self) -> bool:
        try:
            return bool(self.client.ping())
        except redis.RedisError:
            return False

    @_unavailable
    def turns(self, cid: str, votes: bool = False, last: int = 0) -> list[dict]:
        """The kept turns, oldest first ({n, role, text, time, ...}), or only the `last` ones (a reply's
        context needs a few); with votes, each bot turn's vote."""
        keys = self.keys(cid)
        pipe = self.client.pipeline(transaction=True)
        pipe.lrange(keys[0], -last if last else 0, -1)
        if votes:
            pipe.hgetall(keys[2])
        for key in keys:
            pipe.expire(key, self.ttl)
        results = pipe.execute()
        turns = [json.loads(t) for t in results[0]]
        if votes:
            feedback = results[1]
            for t in turns:
                if str(t["n"]) in feedback:
                    t["vote"] = json.loads(feedback[str(t["n"])])["vote"]
        return turns

    @_unavailable
    def append(self, cid: str, *turns: dict) -> int:
        """Append turns atomically; returns the number of the last one."""
        entries = [json.dumps({**t, "time": round(time.time(), 3)}) for t in turns]
        return int(self._append(keys=self.keys(cid), args=[self.cap, self.ttl, *entries]))

    @_unavailable
    def replace_last(self, cid: str, n: int, turn: dict) -> bool:
        """Replace turn n with `turn` if n is still the last turn (for regenerate); its vote is cleared."""
        entry = json.dumps({**turn, "time": round(time.time(), 3)})
        return bool(self._replace_last(keys=self.keys(cid), args=[self.ttl, n, entry]))

    @_unavailable
    def vote(self, cid: str, n: int, vote: str) -> bool:
        """Record a vote on bot turn n; False when the conversation keeps no such bot turn."""
        return bool(self._vote(keys=self.keys(cid), args=[self.ttl, n, vote, round(time.time(), 3)]))
