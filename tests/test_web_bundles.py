"""Bundles side by side and the hot swap: the checks --serve makes, the traffic split, a new best/ swapped in
(a broken one refused) in process; then two bundles under a real gunicorn with its own Redis: each
conversation keeps its bundle on every worker, replies and /healthz name it, /api/stats counts per bundle,
and a replaced best/ reaches every worker under chat load with no failed request."""
from __future__ import annotations

import functools
import logging
import re
import shutil
import sys
from collections import Counter

import pytest
import requests

from conftest import ROOT, WebServer
from ergo.chatbot import Chatbot
from ergo.errors import ErgoError
from web.bundles import Bundles, parse_traffic, specs

sys.path.insert(0, str(ROOT / "bench"))
from live_loop import everywhere, new_version, versions  # noqa: E402
from web_faults import Chatters, after, lost_turns  # noqa: E402


LOAD = functools.partial(Chatbot.load, xla=False)


@pytest.fixture(scope="module")
def runs(tiny_bundle, tmp_path_factory):
    """Two run folders, alpha and beta, each with a copy of the tiny bundle as its best/."""
    root = tmp_path_factory.mktemp("runs")
    for name in ("alpha", "beta"):
        shutil.copytree(tiny_bundle, root / name / "best")
    return root


def test_serve_checks_its_bundles_and_their_traffic_before_any_worker(runs, tiny_bundle, tmp_path):
    a, b = runs / "alpha" / "best", runs / "beta" / "best"
    assert [(s.name, s.share) for s in specs([a, b], "30,10")] == [("alpha", 0.75), ("beta", 0.25)]
    other = shutil.copytree(tiny_bundle, tmp_path / "run")  # a bundle named as tiny_bundle's run: run
    assert [s.name for s in specs([a, tiny_bundle, other])] == ["alpha", "run", "run-2"]
    assert parse_traffic(None, 4) == [0.25] * 4
    for traffic, message in [("50", "1 share(s) for 2 bundle(s)"), ("a,b", "numbers separated by commas"),
                             ("0,0", "not all 0"), ("-1,2", "0 or more"), ("nan,1", "0 or more")]:
        with pytest.raises(ErgoError, match=re.escape(message)):
            specs([a, b], traffic)
    with pytest.raises(ErgoError, match="given twice"):
        specs([a, a])
    with pytest.raises(ErgoError, match="not a model bundle"):
        specs([a, tmp_path / "nothing"])


def test_new_conversations_follow_the_traffic_shares_closely(runs):
    bundles = Bundles(specs([runs / "alpha" / "best", runs / "beta" / "best"], "70,30"), LOAD)
    counts = Counter(bundles.assign().name for _ in range(100))
    assert abs(counts["alpha"] - 70) <= 2 and counts["alpha"] + counts["beta"] == 100  # coins: ±9 as often as not
    none = Bundles(specs([runs / "alpha" / "best", runs / "beta" / "best"], "1,0"), LOAD)
    assert {none.assign().name for _ in range(50)} == {"alpha"}


def test_a_replaced_bundle_is_swapped_in_and_a_broken_one_refused(runs, tmp_path, caplog):
    best = tmp_path / "run" / "best"
    shutil.copytree(runs / "alpha" / "best", best)
    bundles = Bundles(specs([best]), LOAD)
    served = bundles.first
    old = served.live
    assert bundles.check() == []  # nothing changed
    version = new_version(best, best)  # as training replaces best/: a temp folder renamed into place
    assert bundles.check() == ["run"]
    assert served.live.version == version != old.version and served.live.bot is not old.bot
    assert served.live.bot.reply(["hello"]).text  # the new one answers

    caplog.set_level(logging.ERROR, logger="ergo.web.bundles")
    broken = tmp_path / "broken"
    shutil.copytree(best, broken)
    (broken / "model.weights.h5").write_bytes(b"not weights")
    shutil.rmtree(best)
    broken.rename(best)
    assert bundles.check() == [] and served.live.version == version  # the old one stays
    assert bundles.check() == []  # and the same broken files are not tried again
    assert len([r for r in caplog.records if "refused" in r.getMessage()]) == 1
    assert f"version {version} stays" in caplog.text


@pytest.fixture(scope="module")
def two_bundles(runs, tmp_path_factory):
    """alpha and beta side by side, 50/50, two workers, the server's own Redis in alpha's run folder, a
    worker looking for new bundles every second."""
    server = WebServer([runs / "alpha" / "best", runs / "beta" / "best"], runs / "alpha", workers=2,
                       traffic="50,50", env={"ERGO_RATE_LIMIT": "100000 per minute", "ERGO_RELOAD_SECONDS": "1",
                                                   "ERGO_HISTORY_CAP": "2000"})
    yield server
    server.stop()


def chat(session: requests.Session, url: str, message: str) -> dict:
    r = session.post(url + "/api/chat", json={"message": message}, timeout=30)
    assert r.status_code == 200, r.text
    return r.json()


def test_each_conversation_keeps_its_bundle_and_the_split_follows_the_traffic(two_bundles):
    url, first = two_bundles.url, {}
    health = two_bundles.get("/healthz").json()
    assert [(b["name"], b["traffic"]) for b in health["bundles"]] == [("alpha", 0.5), ("beta", 0.5)]
    assert (two_bundles.run_dir / "web" / "redis").is_dir()  # the web state is the first bundle's run folder's
    for k in range(20):
        s = requests.Session()
        replies = [chat(s, url, m) for m in ("hi!", "what do you like to eat?", "where do you live?")]
        assert len({r["bundle"] for r in replies}) == 1 and len({r["version"] for r in replies}) == 1
        first[k] = replies[0]["bundle"]
        assert s.get(url + "/api/history", timeout=30).json()["bundle"] == replies[0]["bundle"]
        if k == 0:
            s.post(url + "/api/feedback", json={"turn": 2, "vote": "up"}, timeout=30)
            s.post(url + "/api/feedback", json={"turn": 4, "vote": "down"}, timeout=30)
            s.post(url + "/api/feedback", json={"turn": 4, "vote": "up"}, timeout=30)  # changed: counted once
    split = Counter(first.values())
    assert set(split) == {"alpha", "beta"} and abs(split["alpha"] - 10) <= 3
    stats = {b["name"]: b for b in two_bundles.get("/api/stats").json()["bundles"]}
    assert {n: (b["conversations"], b["turns"]) for n, b in stats.items()} == {
        n: (split[n], 6 * split[n]) for n in ("alpha", "beta")}
    assert stats[first[0]]["votes"] == {"up": 2, "down": 0}
    assert sum(b["votes"]["up"] + b["votes"]["down"] for b in stats.values()) == 2
    metrics = two_bundles.get("/metrics").text
    assert f'ergo_conversations_total{{bundle="{first[0]}"}} {float(split[first[0]])}' in metrics


def test_a_new_best_reaches_every_worker_under_load_and_a_broken_one_is_refused(two_bundles, runs):
    address, best = two_bundles.url.split("//", 1)[1], runs / "alpha" / "best"
    before = versions(address, "alpha")
    assert len(before) == 2 and len(set(before.values())) == 1
    with Chatters(address, 2, seconds=120, most=900) as chatters:  # within the cap of 2,000 turns
        assert chatters.wait_for(4, timeout=30)
        version = new_version(best, best, seed=7)
        took = after(lambda: everywhere(address, "alpha", version), timeout=30)
        assert took is not None, two_bundles.log()[-3000:]
        assert chatters.wait_for(chatters.turns + 4, timeout=30)
        (best / "model.weights.h5").unlink()  # broken in place: refused, the old one kept
        assert after(lambda: two_bundles.log().count("are refused") == 2, timeout=30) is not None  # each worker
        assert chatters.wait_for(chatters.turns + 4, timeout=30)
    print(f"new version on every worker {took:.1f} s after best/ was replaced")
    assert set(chatters.outcomes) == {"ok"}, chatters.outcomes  # no failed request, none degraded
    assert lost_turns(address, chatters) == 0
    assert everywhere(address, "alpha", version)  # the broken files changed nothing
    assert two_bundles.log().count(f"version {version} swapped in") == 2  # once in each worker
