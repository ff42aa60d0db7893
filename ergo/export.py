"""Export a bundle as a TensorFlow SavedModel that TF Serving loads: decoding included, so a client
sends context ids and gets reply ids back.

    OUT/<version>/saved_model.pb, variables/    the model and its searches, traced into the graph
    OUT/<version>/assets.extra/vocab.json       the vocabulary and config.json, to build context ids
                                                (tokenise, look up, join turns with <sep>) and read replies

Signatures (each takes `context_ids`: int32 [n], one conversation's context window):
    serving_default  the bundle's default decoder (beam search unless told otherwise)
    greedy, beam     each decoder explicitly
each returns `reply_ids` (int32 [m], without <eos>) and `log_prob` (log p(reply | context)).
The settings (beam size, length penalty, n-gram blocking, minimum length, the blocklist's words)
are fixed at export. MMI reranking, retrieval and the blocklist's phrases and patterns are Python
steps of `Chatbot` and are not in the SavedModel.
"""
from __future__ import annotations

import shutil
from pathlib import Path

import keras

from .chatbot import Chatbot, check_settings
from .errors import ErgoError
from .files import atomic_dir


def export(bundle_dir: Path, out_dir: Path, settings: dict | None = None, version: int | None = None,
           shortlist: int | None = None) -> Path:
    """Write the SavedModel to out_dir/<version>/ (default: one above the highest there) and return it.
    `settings` as for Chatbot.reply; `shortlist` as for Chatbot.load."""
    if keras.backend.backend() != "tensorflow":
        raise ErgoError("--export writes a TensorFlow SavedModel: run it with KERAS_BACKEND=tensorflow")
    import tensorflow as tf

    bot = Chatbot.load(Path(bundle_dir), shortlist=shortlist, xla=False)  # the graph reads only the model's weights
    s = check_settings(dict(settings or {}))
    default = "greedy" if s["decoder"] == "greedy" else "beam"
    module = _serving_module(bot, s)
    out_dir = Path(out_dir)
    if version is None:
        versions = [int(p.name) for p in out_dir.glob("*") if p.name.isdigit()] if out_dir.is_dir() else []
        version = max(versions, default=0) + 1
    target = out_dir / str(version)
    signatures = {"serving_default": getattr(module, default), "greedy": module.greedy, "beam": module.beam}
    with atomic_dir(target) as tmp:
        tf.saved_model.save(module, str(tmp), signatures=signatures)
        (tmp / "assets.extra").mkdir()
        for name in ("vocab.json", "config.json"):
            shutil.copy(bot.bundle.path / name, tmp / "assets.extra" / name)
    return target


def _serving_module(bot: Chatbot, s: dict):
    """A tf.Module holding the model's variables and one tf.function per decoder; a shortlisted
    vocabulary is shortlisted in the graph by the same rule as a reply in Python (Shortlist.in_graph)."""
    import tensorflow as tf

    decoder = bot.decoder
    spec = [tf.TensorSpec([None], tf.int32, name="context_ids")]
    shape = dict(max_len=s["max_len"], n_rep=s["no_repeat_ngram"], n_ctx=s["block_context_ngram"])

    def search(context_ids, width, alpha=None):
        """The greedy search (alpha None) or a beam of `width`, as Decoder.greedy and Decoder.beam run them."""
        context_ids = tf.cond(tf.size(context_ids) > 0, lambda: context_ids, lambda: tf.zeros([1], tf.int32))
        ids = decoder.shortlist.in_graph(context_ids)
        settings = [] if alpha is None else [tf.constant(alpha)]
        graph = decoder._greedy_graph if alpha is None else decoder._beam_graph
        tokens, lengths, logp, *_ = graph(context_ids, tf.constant(s["min_len"]), *settings, tf.constant(decoder.banned),
                                          tf.zeros([0, 1], tf.int32), ids, width=width, anti_lm=False,
                                          has_also=False, **shape)
        return {"reply_ids": tokens[0, :lengths[0]], "log_prob": logp[0]}

    module = tf.Module()
    module.model = bot.model
    module.greedy = tf.function(lambda context_ids: search(context_ids, 1), input_signature=spec, autograph=False)
    module.beam = tf.function(lambda context_ids: search(context_ids, s["beam_size"], s["length_penalty"]),
                              input_signature=spec, autograph=False)
    return module
