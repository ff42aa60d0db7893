"""Conversations in Redis, so any worker (or replica) can answer any turn and a restart loses nothing.

Per conversation id (hash-tagged: a Redis Cluster keeps one conversation's keys in one slot, so its scripts
may touch all three):
    ergo:conv:{<id>}:turns     list of JSON turns, oldest first, capped at `cap` (the oldest dropped); a bot
                               turn names the bundle (and its version) that gave it
    ergo:conv:{<id>}:meta      hash: n = number of the last turn (numbering survives the cap); bundle = the
                               bundle answering it; train = 0 when it may not be exported for training
    ergo:conv:{<id>}:feedback  hash: turn number -> JSON {vote, text, time}
Versions before the tags named them ergo:conv:<id>:turns, ...: migrate() renames those once.
Per bundle name, counted as turns and votes are kept (in a slot of its own on a cluster, so after the
conversation's script, not in it):
    ergo:stats:<bundle>        hash: conversations, turns, up, down

Every read and write is one Lua script, so turns from two tabs or two workers land whole, never lost or
torn. Each refreshes the TTL of all three keys: `ttl` once the conversation has a second exchange,
`first_ttl` before, since most conversations opened never get one (a read only when the TTL has run down
by more than a hundredth: it then writes nothing). Whatever Redis fails with (unreachable,
loading, OOM, MISCONF, READONLY, ...) is StoreUnavailable, which the web degrades on.

`connect(url, cluster=True)` (ERGO_REDIS_CLUSTER=1) is a Redis Cluster client started from the node at url.
"""
from __future__ import annotations

import functools
import json
import re
import time

import redis
from redis.backoff import NoBackoff
from redis.cluster import RedisCluster
from redis.exceptions import RedisClusterException
from redis.retry import Retry

from .config import WebConfig

PREFIX = "ergo:conv:"
STATS = "ergo:stats:"
COUNTS = ("conversations", "turns", "up", "down")
HEALTH_KEY = "ergo:health"  # never made: ping() writes it only if it exists
PARTS = ("turns", "meta", "feedback")
OLD_KEYS = PREFIX + "[^{]*"  # the names before the hash tags (an id never holds a brace: api.CID)

# Every script: KEYS are turns, meta, feedback; ARGV[1], ARGV[2] the TTL and the first exchange's TTL.
# A read refreshes only a TTL run down by more than a hundredth: a reply's context is read right after the
# last turn was written, and each write is an fsync (appendfsync always).
_REFRESH = """
local function refresh(read)
  local ttl = tonumber((tonumber(redis.call('HGET', KEYS[2], 'n')) or 0) > 2 and ARGV[1] or ARGV[2])
  if read and redis.call('TTL', KEYS[1]) >= 0.99 * ttl then return end
  for i = 1, 3 do redis.call('EXPIRE', KEYS[i], ttl) end
end
"""

# ARGV[3]: the first turn to read (0, or -k for the last k); ARGV[4]: '1' to read the votes too; ARGV[5]: '1' to
# refresh the TTL as a use does ('0': an export reads without prolonging anything).
_READ = _REFRESH + """
local turns = redis.call('LRANGE', KEYS[1], ARGV[3], -1)
local feedback = ARGV[4] == '1' and redis.call('HGETALL', KEYS[3]) or {}
if ARGV[5] == '1' then refresh(true) end
return {turns, feedback, redis.call('HGETALL', KEYS[2])}
"""

# ARGV[3]: cap, ARGV[4]: the bundle answering ('' none), ARGV[5]: '0' when the conversation may not be exported
# for training (sticky: a conversation once kept out stays out), then the turns as JSON objects without "n".
# Returns the number of the last one.
_APPEND = _REFRESH + """
local k = #ARGV - 5
local last = redis.call('HINCRBY', KEYS[2], 'n', k)
if ARGV[4] ~= '' then redis.call('HSET', KEYS[2], 'bundle', ARGV[4]) end
if ARGV[5] == '0' then redis.call('HSET', KEYS[2], 'train', '0') end
for i = 6, #ARGV do
  redis.call('RPUSH', KEYS[1], '{"n":' .. (last - k + i - 5) .. ',' .. string.sub(ARGV[i], 2))
end
redis.call('LTRIM', KEYS[1], -tonumber(ARGV[3]), -1)
refresh()
return last
"""

# The vote a bot turn had ('' none) and the bundle that gave it ('' unknown): what the counts move by.
_VOTED = """
local function voted(n, raw)
  local old = redis.call('HGET', KEYS[3], n)
  return {1, old and cjson.decode(old)['vote'] or '', cjson.decode(raw)['bundle'] or ''}
end
"""

# ARGV[3]: n, ARGV[4]: turn JSON without "n". Replaces the last turn if it is n (its vote goes): {1, the vote it
# had, its bundle}, or {0}.
_REPLACE_LAST = _REFRESH + _VOTED + """
local last = redis.call('LINDEX', KEYS[1], -1)
if not last or cjson.decode(last)['n'] ~= tonumber(ARGV[3]) then return {0} end
local before = voted(ARGV[3], last)
redis.call('LSET', KEYS[1], -1, '{"n":' .. ARGV[3] .. ',' .. string.sub(ARGV[4], 2))
redis.call('HDEL', KEYS[3], ARGV[3])
refresh()
return before
"""

# ARGV[3]: n, ARGV[4]: vote, ARGV[5]: time. Records a vote on bot turn n if it is kept: {1, the vote it had,
# its bundle}, or {0}.
_VOTE = _REFRESH + _VOTED + """
for _, raw in ipairs(redis.call('LRANGE', KEYS[1], 0, -1)) do
  local turn = cjson.decode(raw)
  if turn['n'] == tonumber(ARGV[3]) and turn['role'] == 'bot' then
    local before = voted(ARGV[3], raw)
    redis.call('HSET', KEYS[3], ARGV[3], cjson.encode({vote = ARGV[4], text = turn['text'], time = tonumber(ARGV[5])}))
    refresh()
    return before
  end
end
return {0}
"""

# KEYS: a conversation's old turns, meta, feedback, then its new ones. Renames the old keys (RENAME keeps the
# TTL) unless the conversation has new ones already (continued while Redis was away at start: those win).
_MIGRATE = """
for i = 4, 6 do if redis.call('EXISTS', KEYS[i]) == 1 then return 0 end end
for i = 1, 3 do if redis.call('EXISTS', KEYS[i]) == 1 then redis.call('RENAME', KEYS[i], KEYS[i + 3]) end end
return 1
"""

# Redis's code for an error: at the start of its message (MISCONF ...) or, from a script, after the
# command's position (... @user_script: 3: -OOM command not allowed ...)
_CODE = re.compile(r"(?:^|: -)([A-Z]{2,}) ")


class StoreUnavailable(Exception):
    """Redis cannot give or keep the conversation now; `kind` says why (see failure_kind)."""

    def __init__(self, kind: str, detail: str):
        super().__init__(f"{kind}: {detail}")
        self.kind = kind

    @classmethod
    def of(cls, e: Exception) -> StoreUnavailable:
        return cls(failure_kind(e), str(e) or type(e).__name__)


def failure_kind(e: Exception) -> str:
    """'unreachable', 'timeout', or Redis's own code: LOADING, OOM, MISCONF (it cannot write its files),
    READONLY (a replica), CLUSTERDOWN, ..."""
    cause = e.__cause__ or e.__context__
    if isinstance(e, RedisClusterException) and isinstance(cause, redis.RedisError):
        return failure_kind(cause)  # no node of the cluster answered: why the last one did not
    if isinstance(e, redis.BusyLoadingError):
        return "LOADING"
    if isinstance(e, redis.ConnectionError):
        return "unreachable"
    if isinstance(e, redis.TimeoutError):
        return "timeout"
    found = _CODE.search(str(e))
    return found.group(1) if found else getattr(e, "status_code", None) or type(e).__name__


# What a cluster client raises beside RedisError: no node reachable, a slot no node serves
ERRORS = (redis.RedisError, RedisClusterException)


def connect(url: str, cluster: bool = False) -> redis.Redis | RedisCluster:
    """A client that fails fast (the chat degrades rather than hangs) and reconnects by itself.

    cluster: a Redis Cluster found from the node at url. Unlike a single Redis it connects now, and raises
    RedisClusterException when no node answers; a command is retried once, after a failover or a moved slot."""
    options = dict(decode_responses=True, socket_connect_timeout=0.5, socket_timeout=2.0,
                   retry=Retry(NoBackoff(), 1), health_check_interval=15)
    return RedisCluster.from_url(url, **options) if cluster else redis.Redis.from_url(url, **options)


def _unavailable(fn):
    """Any Redis error becomes StoreUnavailable: a full memory or disk degrades the chat like an outage."""
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except ERRORS as e:
            raise StoreUnavailable.of(e) from None
    return wrapper


class ConversationStore:
    def __init__(self, client: redis.Redis | RedisCluster, cap: int, ttl: int,
                 first_ttl: int = WebConfig.history_ttl_first):
        self.client, self.cap = client, cap
        self.ttls = (ttl, min(first_ttl, ttl))
        self._read = client.register_script(_READ)
        self._append = client.register_script(_APPEND)
        self._replace_last = client.register_script(_REPLACE_LAST)
        self._vote = client.register_script(_VOTE)

    @staticmethod
    def keys(cid: str) -> list[str]:
        return [f"{PREFIX}{{{cid}}}:{part}" for part in PARTS]

    def ping(self) -> bool:
        """Whether Redis would keep a turn now. PING answers while Redis refuses writes (OOM, READONLY):
        this is a write that changes nothing (SET XX of a key never made), refused for every reason a turn
        would be, and adding nothing to the append-only file. On a cluster it goes to the primary of the
        key's slot, which refuses too while the cluster is down (a slot without a primary)."""
        try:
            self.client.set(HEALTH_KEY, "1", xx=True)
            return True
        except ERRORS:
            return False

    def ids(self):
        """Every stored conversation's id, each once (SCAN, on every primary of a cluster: Redis keeps
        serving meanwhile; one made or expired during the scan may or may not come)."""
        seen = set()
        try:
            for key in self.client.scan_iter(match=f"{PREFIX}{{*}}:meta", count=1000):
                cid = key[len(PREFIX) + 1:-len("}:meta")]
                if cid not in seen:  # SCAN may give a key twice
                    seen.add(cid)
                    yield cid
        except ERRORS as e:
            raise StoreUnavailable.of(e) from None

    @_unavailable
    def migrate(self) -> int:
        """Rename the conversations an older version kept under untagged names (a run folder's Redis data
        outlives upgrades), each in one script; returns how many. One SCAN (Redis serves others meanwhile),
        nothing written when there are none. Not on a cluster: the older versions' scripts never ran there
        (their keys were in different slots)."""
        if isinstance(self.client, RedisCluster):
            return 0
        old = {key[len(PREFIX):].rsplit(":", 1)[0] for key in self.client.scan_iter(match=OLD_KEYS, count=1000)}
        migrate = self.client.register_script(_MIGRATE)
        return sum(migrate(keys=[*(f"{PREFIX}{cid}:{part}" for part in PARTS), *self.keys(cid)]) for cid in old)

    def turns(self, cid: str, votes: bool = False, last: int = 0) -> list[dict]:
        """The kept turns, oldest first ({n, role, text, time, ...}), or only the `last` ones (a reply's
        context needs a few); with votes, each bot turn's vote."""
        return self.conversation(cid, votes, last)[0]

    @_unavailable
    def conversation(self, cid: str, votes: bool = False, last: int = 0, touch: bool = True) -> tuple[list[dict], dict]:
        """(turns, as `turns` gives them; the meta hash: n, bundle, train). `touch`: refresh the TTL as a use
        does (False: read it as it is, as an export does)."""
        raw, feedback, meta = self._read(keys=self.keys(cid), args=[*self.ttls, -last if last else 0, int(votes),
                                                                     int(touch)])
        turns = [json.loads(t) for t in raw]
        if votes:
            feedback = dict(zip(feedback[::2], feedback[1::2]))
            for t in turns:
                if str(t["n"]) in feedback:
                    t["vote"] = json.loads(feedback[str(t["n"])])["vote"]
        return turns, dict(zip(meta[::2], meta[1::2]))

    @_unavailable
    def append(self, cid: str, *turns: dict, bundle: str = "", keep: bool = True) -> int:
        """Append turns atomically; returns the number of the last one. `bundle`: the bundle answering the
        conversation, whose counts go up; `keep` False: the conversation may never be exported for training."""
        entries = [json.dumps({**t, "time": round(time.time(), 3)}) for t in turns]
        last = int(self._append(keys=self.keys(cid), args=[*self.ttls, self.cap, bundle, int(keep), *entries]))
        if bundle:
            self._count(bundle, turns=len(turns), conversations=int(last == len(turns)))
        return last

    @_unavailable
    def replace_last(self, cid: str, n: int, turn: dict) -> bool:
        """Replace turn n with `turn` if n is still the last turn (for regenerate); its vote is cleared."""
        entry = json.dumps({**turn, "time": round(time.time(), 3)})
        found, *before = self._replace_last(keys=self.keys(cid), args=[*self.ttls, n, entry])
        if found and before[0] and before[1]:
            self._count(before[1], **{before[0]: -1})
        return bool(found)

    @_unavailable
    def vote(self, cid: str, n: int, vote: str) -> bool:
        """Record a vote on bot turn n; False when the conversation keeps no such bot turn."""
        found, *before = self._vote(keys=self.keys(cid), args=[*self.ttls, n, vote, round(time.time(), 3)])
        if found and before[1] and before[0] != vote:
            self._count(before[1], **{vote: 1, **({before[0]: -1} if before[0] else {})})
        return bool(found)

    def _count(self, bundle: str, **by: int) -> None:
        """Move a bundle's counts (one round trip: one fsync for all of them)."""
        pipe = self.client.pipeline(transaction=False)
        for name, k in by.items():
            if k:
                pipe.hincrby(STATS + bundle, name, k)
        pipe.execute()

    @_unavailable
    def stats(self, bundles: list[str]) -> dict[str, dict[str, int]]:
        """Each bundle's counts: conversations (with an exchange kept), turns kept, up and down votes."""
        pipe = self.client.pipeline(transaction=False)
        for name in bundles:
            pipe.hmget(STATS + name, COUNTS)
        return {name: {k: int(v or 0) for k, v in zip(COUNTS, values)} for name, values in zip(bundles, pipe.execute())}
