"""Chatbot.reply across modes, MMI reranking, the safety filter and the terminal chat."""
import io
import re

import numpy as np
import pytest

from ergo.chatbot import SETTINGS, WEB_CHOICES, Chatbot, check_settings
from ergo.decoding import EMPTY_CONTEXT
from ergo.errors import ErgoError
from ergo.safety import FALLBACK_REPLY, SafetyFilter
from ergo.terminal import chat
from ergo.text import detokenize, tokenize
from reply_bundle import reply_bundle, shared_bot

HISTORIES = [["hi!"], ["hello!", "hello, i am anna."], ["what do you like to eat?"], ["where do you live?"],
             ["i live in paris."], ["i like cake."], ["thanks, bye!"], ["good morning, i am gus."]]
PLAIN_BEAM = dict(mode="generate", decoder="beam", mmi=0.0)


@pytest.fixture(scope="module")
def bundle(tiny_bundle, tmp_path_factory):
    return reply_bundle(tiny_bundle, tmp_path_factory)[0]


@pytest.fixture(scope="module")
def bot(bundle):
    return shared_bot(bundle)


def test_settings_are_checked_and_every_default_is_valid():
    full = check_settings({})
    assert list(full) == list(SETTINGS) and all(SETTINGS[k][2](v) for k, v in full.items())
    assert check_settings({"temperature": 1})["temperature"] == 1.0
    for bad, match in [({"decoder": "top"}, "decoder"), ({"beam_size": 0}, "beam_size"), ({"mmi": "a"}, "mmi"),
                       ({"max_len": True}, "max_len"), ({"colour": 1}, "unknown setting"),
                       ({"min_len": 9, "max_len": 5}, "at most max_len")]:
        with pytest.raises(ErgoError, match=match):
            check_settings(bad)


def test_web_clients_get_a_few_values_of_what_shapes_a_search_and_the_terminal_all():
    assert check_settings({"max_len": 25, "beam_size": 16})["max_len"] == 25  # the terminal and the library
    assert all(check_settings({}, web=True)[name] in allowed for name, allowed in WEB_CHOICES.items())
    assert check_settings({"beam_size": 5, "max_len": 40}, web=True)["max_len"] == 40
    assert check_settings({"decoder": "greedy", "beam_size": 10, "max_len": 40}, web=True)["beam_size"] == 10
    for bad, match in [({"max_len": 25}, "'max_len' must be one of 10, 20, 40 for web clients, not 25"),
                       ({"samples": 32}, "'samples' must be one of 1, 5, 10 for web clients"),
                       ({"beam_size": 10, "max_len": 40}, "beam_size 10 with max_len 40 is more than web clients"),
                       ({"decoder": "sample", "samples": 10, "max_len": 40}, "samples x max_len must be at most 200")]:
        with pytest.raises(ErgoError, match=re.escape(match)):
            check_settings(bad, web=True)
    whole = check_settings({"min_len": 2.0, "seed": 7.0})  # JSON has one kind of number
    assert (whole["min_len"], whole["seed"]) == (2, 7) and isinstance(whole["min_len"], int)
    with pytest.raises(ErgoError, match="'min_len' must be"):
        check_settings({"min_len": 2.5})


def test_every_mode_and_decoder_replies(bot, monkeypatch):
    for mode in ("generate", "retrieve", "hybrid"):
        for decoder in ("greedy", "beam", "sample"):
            reply = bot.reply(["where do you live?"], mode=mode, decoder=decoder, seed=1)
            assert reply.text and reply.tokens and np.isfinite(reply.score) and reply.score <= 0
            assert reply.settings["mode"] == mode and reply.seconds > 0
            assert reply.decoder.split("+")[0] in (("retrieval",) if mode == "retrieve" else
                                                   (decoder, "retrieval") if mode == "hybrid" else (decoder,))
    first = bot.reply(["hi!"], decoder="sample", seed=5, mode="generate")
    assert bot.reply(["hi!"], decoder="sample", seed=5, mode="generate").tokens == first.tokens
    for no_words in ("  ", "\x07"):
        with pytest.raises(ErgoError, match="nothing to reply to"):
            bot.reply(["hi", no_words])
    assert bot.context(["hi", "\x07", "you?"]).tolist() == bot.context(["hi", "you?"]).tolist()
    # a context of unknown words retrieves nothing (its sentence vector is zero): answered by generation
    assert bot.reply(["qwertyzxq"], mode="retrieve", decoder="greedy").decoder == "greedy+mmi"
    monkeypatch.setattr(bot, "index", None)  # a bundle without a retrieval index answers by generation
    assert bot.reply(["hi!"], mode="retrieve", decoder="greedy").decoder == "greedy+mmi"


def test_retrieve_answers_with_the_reply_of_the_nearest_training_context(bot, tiny_bundle, tmp_path_factory):
    train = reply_bundle(tiny_bundle, tmp_path_factory)[1].split("train")
    train_replies = {tuple(r) for r in train["reply"]}
    for history in HISTORIES:
        reply = bot.reply(history, mode="retrieve")
        assert tuple(bot.vocab.encode(reply.tokens)) in train_replies
    for i in (0, 7, 30):
        same_context = {tuple(r) for c, r in zip(train["context"], train["reply"]) if np.array_equal(c, train["context"][i])}
        nearest = bot.index.search(train["context"][i], 5)
        assert len(nearest) == 5 and len({tuple(r) for r, _ in nearest}) == 5
        assert [s for _, s in nearest] == sorted((s for _, s in nearest), reverse=True)
        assert nearest[0][1] > 0.999 and tuple(nearest[0][0]) in same_context


def test_mmi_reranks_by_the_anti_language_model_and_changes_the_choice(bot):
    changed = 0
    for history in HISTORIES:
        context = bot.context(history)
        settings = check_settings(dict(PLAIN_BEAM, mmi=1.0))
        nbest = bot.decoder.beam(context, beam_size=5, length_penalty=1.0, max_len=20, no_repeat_ngram=3,
                                 block_context_ngram=4)
        anti = bot.decoder.score([EMPTY_CONTEXT] * len(nbest), [c.ids for c in nbest], [c.ended for c in nbest])
        mmi = [(c.logp - a) / c.n_tokens for c, a in zip(nbest, anti)]
        expected = nbest[int(np.argmax(mmi))]
        assert bot.reply(history, **settings).tokens == bot.vocab.decode(expected.ids)
        changed += bot.reply(history, **settings).tokens != bot.reply(history, **PLAIN_BEAM).tokens
    assert changed, "an anti-LM weight of 1 should change at least one choice of a weak model"


def test_a_blocked_reply_is_replaced_by_the_next_best(bot, tmp_path, monkeypatch):
    history = ["what do you like to eat?"]
    shown = []  # the texts the ranked candidates would show, best first
    for r in bot.candidates(bot.context(history), check_settings(PLAIN_BEAM)):
        text = detokenize(bot.vocab.decode(r.candidate.ids))
        if text and text not in shown:
            shown.append(text)
    assert len(shown) >= 2 and bot.reply(history, **PLAIN_BEAM).text == shown[0]
    blocklist = tmp_path / "block.txt"
    blocklist.write_text(f"# the model's favourite reply\nre:^{re.escape(shown[0])}$\n", encoding="utf-8")
    monkeypatch.setattr(bot, "safety", SafetyFilter.load(blocklist))  # patterns act after the search
    assert bot.reply(history, **PLAIN_BEAM).text == shown[1]
    monkeypatch.setattr(bot, "safety", SafetyFilter([], [re.compile(".")]))  # blocks everything
    assert bot.reply(history).text == FALLBACK_REPLY


def test_a_blocklist_is_loaded_with_the_chatbot(bundle, tmp_path):
    (tmp_path / "list.txt").write_text("# words are never generated\nlike\n", encoding="utf-8")
    guarded = Chatbot.load(bundle, blocklist=tmp_path / "list.txt")
    assert guarded.decoder.banned.tolist().count(guarded.vocab.index["like"]) == 1
    for history in HISTORIES[:4]:
        assert "like" not in guarded.reply(history, mode="generate", decoder="greedy").tokens


def test_safety_filter_words_phrases_and_patterns(tmp_path, bot):
    f = SafetyFilter.load()
    assert f.blocks(tokenize("oh shit, really?"), "Oh shit, really?")
    assert f.blocks(tokenize("just kill yourself"), "Just kill yourself")
    assert not f.blocks(tokenize("the shitake mushrooms"), "The shitake mushrooms")
    assert not f.blocks(tokenize("i will kill the process"), "I will kill the process")
    custom = tmp_path / "list.txt"
    custom.write_text("pizza\nre:\\bparis\\b\n", encoding="utf-8")
    f = SafetyFilter.load(custom)
    assert f.banned_ids(bot.vocab) == [bot.vocab.index["pizza"]]
    assert f.blocks(["i", "live", "in", "paris"], "I live in paris") and not f.blocks(["rome"], "Rome")
    custom.write_text("re:(unclosed\n", encoding="utf-8")
    with pytest.raises(ErgoError, match="bad regular expression"):
        SafetyFilter.load(custom)


def test_terminal_chat_answers_piped_input_one_line_each(bot):
    lines = ["hi!", "/set decoder=greedy", "", "where do you live?", "/set beam_size=0", "/set mode",
             "/reset", "/settings", "thanks, bye!", "/quit", "never read"]
    out, err = io.StringIO(), io.StringIO()
    assert chat(bot, io.StringIO("\n".join(lines) + "\n"), out, err, settings={"mode": "generate"}) == 0
    replies = out.getvalue().splitlines()
    assert len(replies) == 3 and all(replies)
    assert replies[1] == bot.reply(["hi!", replies[0], "where do you live?"], mode="generate",
                                   decoder="greedy").text
    assert replies[2] == bot.reply(["thanks, bye!"], mode="generate", decoder="greedy").text
    notes = err.getvalue()
    assert "(decoder = greedy)" in notes and "beam_size" in notes and "use /set NAME=VALUE" in notes
    assert "(new conversation)" in notes and "mode = generate" in notes


def test_a_streamed_reply_comes_word_by_word_and_ends_as_reply_gives_it(bot):
    for settings in (dict(mode="generate", decoder="greedy"), dict(mode="generate", decoder="sample", samples=1, seed=4)):
        for history in HISTORIES[:4]:
            *pieces, reply = bot.reply_stream(history, **settings)
            whole = bot.reply(history, **settings)
            assert (reply.text, reply.tokens, reply.decoder) == (whole.text, whole.tokens, whole.decoder)
            assert len(pieces) == len(reply.tokens) and "".join(pieces).strip() == reply.text  # not replaced here
    pieces = list(bot.reply_stream(HISTORIES[0], mode="retrieve"))  # chosen among candidates: whole, at once
    assert len(pieces) == 2 and pieces[0] == pieces[1].text == bot.reply(HISTORIES[0], mode="retrieve").text
    with pytest.raises(ErgoError, match="nothing to reply to"):  # before anything is yielded
        bot.reply_stream(["..."] if not tokenize("...", True) else [" "])
