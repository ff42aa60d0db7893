"""`main.py --export-conversations OUT.jsonl`: the web chat's conversations back into training data.

OUT is in ErGo's own JSON-lines corpus format, one conversation a line, text only: {"turns": [...]}, no
ids, addresses, bundles or times. `rated` picks which: "up" (the default) those with an up-vote, each cut
before its first down-voted reply (that reply and what follows it), so that training learns no reply people
disliked; "down" those with a down-vote, whole; "any" every conversation kept, whole. A conversation held
while ERGO_KEEP_FOR_TRAINING was off is never written. `--train --corpus OUT.jsonl --init-from BUNDLE`
fine-tunes a bundle on it.

Conversations come from REDIS_URL (a cluster with ERGO_REDIS_CLUSTER, as the server reads them), or from
the run folder's embedded Redis: the server's own while it runs, else a redis-server of our own started on
its data and stopped after. Nothing is written there: reading does not even refresh a conversation's TTL.
OUT is written whole or not at all (a temp file, then a rename).
"""
from __future__ import annotations

import contextlib
import json
import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from tqdm import tqdm

from ergo.choices import RATED
from ergo.errors import ErgoError
from ergo.files import atomic_path

from .config import WebConfig
from .redis_server import LocalRedis
from .store import ERRORS, ConversationStore, StoreUnavailable, connect



@dataclass
class Exported:
    """What an export wrote, and why the others were left out."""

    path: Path
    rated: str
    written: int = 0
    turns: int = 0
    seen: int = 0
    left_out: Counter = field(default_factory=Counter)

    def summary(self) -> str:
        why = "; ".join(f"{n:,} {reason}" for reason, n in self.left_out.most_common())
        return (f"{self.written:,} conversation(s), {self.turns:,} turns, written to {self.path} (rated {self.rated}; "
                f"{self.seen:,} stored" + (f"; left out: {why}" if why else "") + ")")


def chosen(turns: list[dict], rated: str) -> tuple[list[str], str | None]:
    """(the texts to write, or why none): the conversation as `rated` picks it."""
    votes = [t.get("vote") for t in turns if t["role"] == "bot"]
    if rated != "any" and rated not in votes:
        return [], f"without a {rated}-vote"
    if rated == "up":
        cut = next((i for i, t in enumerate(turns) if t.get("vote") == "down"), len(turns))
        turns = turns[:cut]
    texts = [t["text"] for t in turns]
    return (texts, None) if len(texts) >= 2 else ([], "with fewer than two turns before a down-vote")


def export_conversations(run_dir: Path, out: Path, rated: str = "up", env=os.environ, progress: bool = True) -> Exported:
    """Write the chosen conversations of the web state in `run_dir` (or REDIS_URL) to `out`."""
    if rated not in RATED:
        raise ErgoError(f"rated must be one of {', '.join(RATED)}, not {rated!r}")
    report = Exported(Path(out), rated)
    with _client(Path(run_dir), env) as client:
        store = ConversationStore(client, cap=1, ttl=1)  # reads only: no cap or TTL applies
        try:
            with atomic_path(report.path) as tmp, open(tmp, "w", encoding="utf-8") as f:
                for cid in tqdm(store.ids(), desc="conversations", unit=" conv", disable=not progress):
                    report.seen += 1
                    turns, meta = store.conversation(cid, votes=True, touch=False)
                    if meta.get("train") == "0":
                        report.left_out["kept out of training (ERGO_KEEP_FOR_TRAINING was off)"] += 1
                        continue
                    texts, why = chosen(turns, rated)
                    if why:
                        report.left_out[why] += 1
                        continue
                    f.write(json.dumps({"turns": texts}, ensure_ascii=False) + "\n")
                    report.written, report.turns = report.written + 1, report.turns + len(texts)
        except StoreUnavailable as e:
            raise ErgoError(f"the conversations could not be read ({e}); nothing was written") from None
    return report


@contextlib.contextmanager
def _client(run_dir: Path, env):
    """A client of the Redis holding the conversations: REDIS_URL's, else the run folder's embedded one."""
    url = env.get("REDIS_URL", "").strip()
    if url:
        cluster = WebConfig.from_env(env).redis_cluster
        try:
            client = connect(url, cluster)
        except ERRORS as e:
            raise ErgoError(f"no Redis Cluster answers at REDIS_URL {url}: {e}") from None
        with contextlib.closing(client):
            yield client
        return
    data = run_dir / "web" / "redis"
    if not data.is_dir():
        raise ErgoError(f"{run_dir}/ holds no conversations (no {data}/): `--serve` keeps them there, or set "
                        f"REDIS_URL to the Redis it used")
    if (found := LocalRedis.running(data)) is not None:  # the server's: reading beside it is safe
        with contextlib.closing(connect(f"unix://{found[1] / 'redis.sock'}")) as client:
            yield client
        return
    local = LocalRedis(data, with_parent=True)  # an export killed outright leaves no redis-server behind
    local.start()
    try:
        with contextlib.closing(connect(local.url)) as client:
            yield client
    finally:
        local.stop()
