"""The TF SavedModel: loads back with tf.saved_model.load and replies as Chatbot does."""
import json

import keras
import numpy as np
import pytest

from ergo.chatbot import Chatbot
from reply_bundle import reply_bundle, shared_bot

pytestmark = pytest.mark.skipif(keras.backend.backend() != "tensorflow", reason="SavedModel is TensorFlow's")

HISTORIES = [["hi!"], ["hello!", "hello, i am anna."], ["where do you live?"], ["thanks, bye!"]]


def test_saved_model_gives_the_same_reply_as_the_chatbot(tiny_bundle, tmp_path_factory, tmp_path):
    import tensorflow as tf
    from ergo.export import export

    bundle, _ = reply_bundle(tiny_bundle, tmp_path_factory)
    bot = shared_bot(bundle)
    first = export(bundle, tmp_path / "served", settings={"beam_size": 4})
    assert first == tmp_path / "served" / "1"
    assert json.loads((first / "assets.extra" / "vocab.json").read_text())["words"] == bot.vocab.words
    loaded = tf.saved_model.load(str(first))
    assert {"serving_default", "greedy", "beam"} <= set(loaded.signatures)
    for history in HISTORIES:
        context = tf.constant(bot.context(history))
        for signature, settings in (("serving_default", dict(decoder="beam", beam_size=4)),
                                    ("beam", dict(decoder="beam", beam_size=4)), ("greedy", dict(decoder="greedy"))):
            out = loaded.signatures[signature](context_ids=context)
            reply = bot.reply(history, mode="generate", mmi=0.0, **settings)
            assert bot.vocab.decode(out["reply_ids"].numpy()) == reply.tokens
            n = len(reply.tokens)  # log_prob covers <eos> too, unless the reply was cut at max_len
            assert np.isclose(float(out["log_prob"]), reply.score * (n + 1), atol=1e-3) or \
                np.isclose(float(out["log_prob"]), reply.score * n, atol=1e-3)

    # a shortlisted vocabulary is shortlisted inside the graph as Chatbot does it
    second = export(bundle, tmp_path / "served", settings={"decoder": "greedy"}, shortlist=40)
    assert second.name == "2"
    short_bot, served = Chatbot.load(bundle, shortlist=40), tf.saved_model.load(str(second))
    for history in HISTORIES:
        out = served.signatures["serving_default"](context_ids=tf.constant(short_bot.context(history)))
        assert bot.vocab.decode(out["reply_ids"].numpy()) == short_bot.reply(history, mode="generate", mmi=0.0,
                                                                             decoder="greedy").tokens
