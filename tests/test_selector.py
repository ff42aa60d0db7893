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
from ergo.selector import FOLDER, has_selector, reply_keys
from ergo.splits import Ragged
from ergo.training import add_selector, train
from fixtures import _PLACES, synthetic_conversations, write_text_corpus

TINY = PRESETS["tiny"]
QUIET = dict(progress=False, log=lambda *_: None)


def test_reply_keys_give_equal_replies_one_key_in_order_of_first_appearance():
    rng = np.random.default_rng(2)
    pool = [[], [5], [5, 6], [6, 5], [5, 6, 7], [-1 + 8], [7, 7, 7, 7]]  # [] and prefixes must stay apart
    rows = [pool[i] for i in rng.integers(0, len(pool), 400)]
    keys, distinct = reply_keys(Ragged.from_rows(rows))
    seen: dict = {}
    expected = [seen.setdefault(tuple(r), len(seen)) for r in rows]
    assert keys.tolist() == expected
    assert [d.tolist() for d in distinct] == [list(t) for t in seen]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A tiny run trained with its selector on patterned talk: "i live in X." is answered by "X is nice.",
    and in some conversations "X is nice." is answered by itself, an echo the selector learns to fit."""
    tmp = tmp_path_factory.mktemp("selector-run")
    echoes = [[f"{p} is nice.", f"{p} is nice.", "thanks, bye!"] for p in _PLACES for _ in range(6)]
    corpus = corpora.resolve(str(write_text_corpus(tmp / "talk.txt", synthetic_conversations(160) + echoes)))
    data, _ = preprocess(corpus, TINY.data, tmp / "data", progress=False)
    train(data, TINY.model, override(TINY.train, epochs=1), tmp / "run",
          selector_cfg=override(TINY.selector, epochs=40), **QUIET)
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
    assert info["epochs"] == 40 and info["replies"] > 10 and set(info["valid_recall"]) == {"R@1", "R@2", "R@5"}


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
    report = evaluate(bundle, data.path, "test", rank_pairs=20, generate_pairs=2, prompts=("hi!",), log=lambda *_: None)
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


def test_the_ubuntu_v2_test_csv_is_ranked_with_its_own_candidates(bot, tmp_path):
    """Ubuntu v2's test.csv: Context, Ground Truth Utterance, Distractor_0..8 (the published 1-in-10 task)."""
    header = ["Context", "Ground Truth Utterance"] + [f"Distractor_{i}" for i in range(9)]
    rows = []
    for place in _PLACES:
        others = [f"{p} is nice . __eou__" for p in _PLACES if p != place] + ["thanks , bye ! __eou__", "hi ! __eou__"]
        rows.append([f"where do you live ? __eou__ __eot__ i live in {place} . __eou__ __eot__",
                     f"{place} is nice . __eou__", *others[:9]])
    rows.append(["too few columns"])  # skipped
    import csv
    with open(tmp_path / "test.csv", "w", newline="") as f:
        csv.writer(f).writerows([header, *rows])
    from ergo.corpora.ubuntu import test_candidates
    from ergo.evaluation import ubuntu_v2_recall
    parsed = list(test_candidates(tmp_path / "test.csv", 100))
    assert len(parsed) == len(_PLACES) and parsed[0][0] == ["where do you live ?", f"i live in {_PLACES[0]} ."]
    assert parsed[0][1][0] == f"{_PLACES[0]} is nice ." and len(parsed[0][1]) == 10
    found = ubuntu_v2_recall(bot, {"format": "ubuntu", "path": str(tmp_path)})
    assert found["pairs"] == len(_PLACES) and found["recall"][SELECTOR_KEY]["R@1"] == 1.0  # as planted
    assert ubuntu_v2_recall(bot, {"format": "chitchat", "path": "the chitchat corpus"}) is None


def test_lstm_towers_save_load_and_score(bot, tmp_path):
    from ergo.selector import Selector, build_selector, save_selector
    cfg = override(TINY.selector, encoder="lstm")
    model = build_selector(cfg, len(bot.vocab), embedding_dim=bot.selector.model.embedding.output_dim)
    replies = [np.array(bot.vocab.encode(_words(f"{p} is nice.")), np.int32) for p in _PLACES]
    save_selector(model, bot.vocab, Ragged.from_rows(replies), tmp_path / FOLDER, {"note": "untrained"})
    loaded = Selector.load(tmp_path, bot.vocab)
    context = bot.context(["i live in rome."])
    np.testing.assert_allclose(loaded.score(context, replies), np.asarray(model((context[None], _padded(replies))))[0],
                               rtol=1e-4, atol=1e-4)
    assert [r for r, _ in loaded.search(loaded.context_vector(context), 3)][0] in [r.tolist() for r in replies]


def _padded(replies):
    from ergo.batching import pad
    return pad(replies, 8)


def test_past_max_pairs_the_index_holds_an_even_sample_of_the_distinct_replies(trained, tmp_path, monkeypatch):
    from ergo import selector
    _, data = trained
    monkeypatch.setattr(selector, "MAX_PAIRS", 15)
    info = selector.train_selector(data, override(TINY.selector, epochs=1), tmp_path / FOLDER, **QUIET)
    _, distinct = reply_keys(data.split("train")["reply"])
    assert info["replies"] == 15 and info["distinct_replies"] == len(distinct) > 15
    with np.load(tmp_path / FOLDER / "index.npz") as z:
        assert len(z["vectors"]) == 15
        indexed = Ragged(z["reply_ids"], z["reply_offsets"])
    every = {tuple(distinct[i].tolist()) for i in range(len(distinct))}
    chosen = [tuple(indexed[i].tolist()) for i in range(len(indexed))]
    assert len(set(chosen)) == 15 and set(chosen) <= every
    assert chosen != [tuple(distinct[i].tolist()) for i in range(15)]  # a sample, not the first 15
