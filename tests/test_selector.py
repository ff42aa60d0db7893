"""The reply selector: trained with the seq2seq, it ranks true replies first, retrieves by reply, never
echoes, and is recorded in the report; a bundle without one still replies; one can be added later."""
from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from ergo import corpora
from ergo.chatbot import Chatbot
from ergo.config import PRESETS, override
from ergo.dataset import preprocess
from ergo.evaluation import COMBINED_KEY, SELECTOR_KEY, evaluate
from ergo.ranking import RANKING_FILE, WEIGHTS
from ergo.retrieval import INDEX_FILE
from ergo.selector import FOLDER, has_selector
from ergo.training import add_selector, train
from fixtures import _PLACES, synthetic_conversations, write_text_corpus

TINY = PRESETS["tiny"]
QUIET = dict(progress=False, log=lambda *_: None)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A tiny run trained with its selector on patterned talk: "i live in X." is answered by "X is nice.",
    and in some conversations "X is nice." is answered by itself, an echo the selector learns to fit."""
    tmp = tmp_path_factory.mktemp("selector-run")
    echoes = [[f"{p} is nice.", f"{p} is nice.", "thanks, bye!"] for p in _PLACES for _ in range(6)]
    corpus = corpora.resolve(str(write_text_corpus(tmp / "talk.txt", synthetic_conversations(160) + echoes)))
    data, _ = preprocess(corpus, TINY.data, tmp / "data", progress=False)
    train(data, TINY.model, override(TINY.train, epochs=1), tmp / "run",
          selector_cfg=override(TINY.selector, epochs=25), **QUIET)
    return tmp / "run", data


@pytest.fixture(scope="module")
def bot(trained):
    return Chatbot.load(trained[0] / "best")


def test_training_puts_the_selector_and_its_ranking_weight_in_the_bundle(trained):
    run, _ = trained
    assert has_selector(run) and has_selector(run / "best") and not (run / "best" / INDEX_FILE).exists()
    ranking = json.loads((run / "best" / RANKING_FILE).read_text())
    assert ranking["selector_weight"] in WEIGHTS and ranking["chosen_on"] == "valid"
    assert set(ranking["recall_by_weight"]) == {f"{w:g}" for w in WEIGHTS}
    info = json.loads((run / "best" / FOLDER / "config.json").read_text())
    assert info["epochs"] == 25 and info["replies"] > 10 and set(info["valid_recall"]) == {"R@1", "R@2", "R@5"}


def test_the_selector_ranks_the_planted_true_reply_first(bot):
    replies = [f"{p} is nice." for p in _PLACES]
    first = 0
    for place in _PLACES:
        context = bot.context(["where do you live?", f"i live in {place}."])
        candidates = [bot.vocab.encode(_words(r)) for r in replies]
        scores = bot.selector.score(context, candidates)
        first += int(np.argmax(scores)) == _PLACES.index(place)
    assert first == len(_PLACES)


def test_the_index_returns_the_replies_whose_vectors_are_nearest(bot):
    selector = bot.selector
    with np.load(bot.bundle.path / FOLDER / "index.npz") as z:
        vectors = z["vectors"].astype(np.float32)
    for history in (["hi!"], ["where do you live?", "i live in oslo."], ["what do you like to eat?"]):
        vector = selector.context_vector(bot.context(history))
        exact = vectors @ vector * selector.scale
        nearest = np.argsort(-exact, kind="stable")[:5]
        found = selector.search(vector, 5)
        assert [r for r, _ in found] == [selector.reply(int(i)) for i in nearest]
        np.testing.assert_allclose([s for _, s in found], exact[nearest], rtol=1e-3, atol=1e-3)


def test_a_retrieved_echo_of_the_last_turn_is_not_chosen(bot):
    for place in _PLACES:
        said = f"{place} is nice."
        echo = bot.vocab.encode(_words(said))
        context = bot.context([said])
        nearest = [r for r, _ in bot.selector.search(bot.selector.context_vector(context), 5)]
        assert echo in nearest  # the echo is among what the selector would retrieve ...
        for mode in ("retrieve", "hybrid"):
            reply = bot.reply([said], mode=mode)
            assert reply.tokens != _words(said) and "selector" in reply.decoder  # ... and never chosen


def test_the_bots_own_earlier_reply_is_not_repeated(bot):
    first = bot.reply(["hi!"], mode="retrieve")
    again = bot.reply(["hi!", first.text, "hi!"], mode="retrieve")
    assert again.tokens != first.tokens


def test_the_report_names_the_default_ranking(trained, tmp_path):
    run, data = trained
    bundle = tmp_path / "bundle"
    shutil.copytree(run / "best", bundle)
    report = evaluate(bundle, data.path, "test", rank_pairs=40, generate_pairs=4, log=lambda *_: None)
    assert report["default"] == "retrieve" and report["default_ranking"] == COMBINED_KEY
    assert {SELECTOR_KEY, COMBINED_KEY} <= set(report["recall"]) and report["rankings"]["beam"] != COMBINED_KEY
    assert report["best_mode"] in report["rankings"]
    assert not (bundle / INDEX_FILE).exists()  # a bundle with a selector needs no context index
    saved = json.loads((bundle / "report.json").read_text())
    assert saved["default_ranking"] == COMBINED_KEY and "(default)" in (bundle / "report.md").read_text()


def test_a_selector_can_be_added_to_an_older_bundle(tiny_bundle, trained, tmp_path):
    """The session's tiny bundle was trained without a selector (as bundles before it were): it replies
    by its context index; --train-selector's call gives it a selector and a weight."""
    bundle = tmp_path / "old"
    shutil.copytree(tiny_bundle, bundle)
    old = Chatbot.load(bundle)
    assert old.selector is None and old.index is not None
    assert old.reply(["hi!"], mode="retrieve").decoder.startswith("retrieval")
    data_dir = json.loads((bundle / "card.json").read_text())["data_dir"]
    add_selector(bundle, data_dir, override(TINY.selector, epochs=2), **QUIET)
    new = Chatbot.load(bundle)
    assert new.selector is not None and new.index is None and (bundle / RANKING_FILE).is_file()
    assert "selector" in new.reply(["hi!"], mode="retrieve").decoder
    with pytest.raises(Exception, match="vocabularies differ"):
        add_selector(bundle, trained[1].path, TINY.selector, **QUIET)


def _words(text: str) -> list[str]:
    from ergo.text import tokenize
    return tokenize(text, lowercase=True)
