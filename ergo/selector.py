"""The reply selector: a dual encoder that scores how well a reply fits a conversation.

Two towers map a context and a reply to unit vectors; the score of a reply is their dot product times
a learned scale. It is trained on the training pairs with in-batch negatives: each context against
every reply of its batch, and each reply against every context, a softmax both ways (the dual encoder
of the Ubuntu corpus's ranking task, Lowe et al. 2015, trained as Henderson et al. 2017 do). A reply
that occurs twice in a batch ("lol") is not taken as a negative of its own context.

Because a reply's vector does not depend on the context, every distinct training reply is encoded
once, into an index (past MAX_PAIRS of them, an even seeded sample, as ergo/retrieval.py caps its
own): retrieval then looks for the replies nearest the context's vector, replies that fit it, rather
than for the replies of similar contexts (ergo/retrieval.py's older index).

It is a folder, selector/, in a bundle (and in a run folder: it depends on the data alone, so a run
trains it once and carries it into every best/), written whole or not at all:

    config.json    settings, the vocabulary's digest, recall@k of 10 on the validation split
    model.weights.h5   the towers
    index.npz      the index: the distinct training replies (at most MAX_PAIRS), their ids and vectors
"""
from __future__ import annotations

import json
import math
import sys
import time
from pathlib import Path
from typing import Callable, Sequence

import keras
import numpy as np
from keras import ops

from .batching import as_keras_data, pad
from .config import SelectorConfig, from_dict, to_dict
from .dataset import PreparedData
from .errors import ErgoError
from .files import atomic_dir
from .model import _dense, _embedding, _lstm
from .retrieval import MAX_PAIRS, fixed_point, row_products, vocab_digest
from .splits import Ragged, even_sample
from .vocab import PAD_ID, SEP_ID, Vocab

FOLDER = "selector"
CONFIG_FILE, WEIGHTS_FILE, INDEX_FILE = "config.json", "model.weights.h5", "index.npz"
WIDTH_MULTIPLE = 8      # batch widths are rounded up to this: few shapes to trace
ENCODE_BATCH = 1024     # replies encoded at a time when the index is built
START_SCALE = 20.0      # the score's scale at the start: a softmax over cosines needs a sharp one


def _masked_mean(x, mask):
    """Mean of x [B, T, D] over the steps where mask [B, T] is true (zero for an empty row)."""
    m = ops.expand_dims(ops.cast(mask, x.dtype), -1)
    return ops.sum(x * m, 1) / ops.maximum(ops.sum(m, 1), 1.0)


class ReplySelector(keras.Model):
    """(context [B, Tc], reply [B, Tr]) -> scores [B, B] of every context against every reply."""

    def __init__(self, cfg: SelectorConfig, vocab_size: int, embedding_dim: int,
                 embedding_matrix: np.ndarray | None = None, **kwargs):
        super().__init__(**kwargs)
        self.cfg = cfg
        self.embedding = _embedding(vocab_size, embedding_dim, embedding_matrix, False, "selector")
        if cfg.encoder == "lstm":
            self.context_lstm, self.reply_lstm = _lstm(cfg.hidden, "context_lstm"), _lstm(cfg.hidden, "reply_lstm")
            fan_in = 2 * cfg.hidden
        else:  # bow: the context's last turn and the whole context, each averaged, under an MLP
            self.context_mlp = _dense(cfg.hidden, 2 * embedding_dim, "context_mlp", activation="relu")
            self.reply_mlp = _dense(cfg.hidden, embedding_dim, "reply_mlp", activation="relu")
            fan_in = cfg.hidden
        self.context_out = _dense(cfg.dim, fan_in, "context_out")
        self.reply_out = _dense(cfg.dim, fan_in, "reply_out")
        self.log_scale = self.add_weight(shape=(), initializer=keras.initializers.Constant(math.log(START_SCALE)),
                                         name="log_scale")

    @property
    def scale(self):
        return ops.exp(self.log_scale)

    def _tower(self, ids, lstm, mlp, out, last_turn: bool, training: bool):
        mask = ops.not_equal(ids, PAD_ID)
        x = self.embedding(ids)
        if self.cfg.encoder == "lstm":
            steps, h, _ = lstm(x, mask=mask, training=training)
            features = ops.concatenate([_masked_mean(steps, mask), h], -1)
        else:
            features = _masked_mean(x, mask)
            if last_turn:  # the words after the context's last <sep>
                sep = ops.cast(ops.equal(ids, SEP_ID), "int32")
                seps_after = ops.flip(ops.cumsum(ops.flip(sep, 1), 1), 1) - sep
                last = ops.logical_and(mask, ops.logical_and(ops.equal(seps_after, 0), ops.equal(sep, 0)))
                features = ops.concatenate([_masked_mean(x, last), features], -1)
            features = mlp(features)
        v = out(features)
        return v / ops.maximum(ops.norm(v, axis=-1, keepdims=True), 1e-6)

    def contexts(self, ids, training=False):
        """Context ids [B, T] -> unit vectors [B, dim]."""
        return self._tower(ids, getattr(self, "context_lstm", None), getattr(self, "context_mlp", None),
                           self.context_out, True, training)

    def replies(self, ids, training=False):
        """Reply ids [B, T] -> unit vectors [B, dim]."""
        return self._tower(ids, getattr(self, "reply_lstm", None), getattr(self, "reply_mlp", None),
                           self.reply_out, False, training)

    def call(self, inputs, training=False):
        contexts, replies = inputs
        return self.scale * ops.matmul(self.contexts(contexts, training), ops.transpose(self.replies(replies, training)))

    def compute_loss(self, x=None, y=None, y_pred=None, sample_weight=None, training=True):
        """y: each row's reply key [B] (equal keys: the same reply); a softmax over the batch both ways,
        with a context's other copies of its true reply taken out of its negatives."""
        same = ops.equal(ops.expand_dims(y, 1), ops.expand_dims(y, 0))
        others = ops.logical_and(same, ops.logical_not(ops.eye(ops.shape(y)[0], dtype="bool")))
        logits = ops.where(others, -1e9, y_pred)
        labels = ops.arange(ops.shape(y)[0])
        by_context = keras.losses.sparse_categorical_crossentropy(labels, logits, from_logits=True)
        by_reply = keras.losses.sparse_categorical_crossentropy(labels, ops.transpose(logits), from_logits=True)
        return ops.mean(by_context + by_reply) / 2.0


def build_selector(cfg: SelectorConfig, vocab_size: int, embedding_matrix: np.ndarray | None = None,
                   embedding_dim: int | None = None) -> ReplySelector:
    """A built selector (its weights exist), its embeddings started from the word2vec matrix if given."""
    dim = embedding_matrix.shape[1] if embedding_matrix is not None else embedding_dim
    model = ReplySelector(cfg, vocab_size, dim, None if embedding_matrix is None
                          else np.asarray(embedding_matrix, "float32"))
    ids = np.ones((1, 2), "int32")
    model((ids, ids))
    return model


def reply_keys(replies: Ragged) -> tuple[np.ndarray, Ragged]:
    """(key of each reply, the distinct replies in order of first appearance): equal replies share a key.
    Each reply becomes one row of bytes (its length, then its ids padded), and np.unique finds the equal
    rows: no Python object per reply, for millions of them."""
    lengths = replies.lengths()
    width = int(lengths.max(initial=0)) + 1
    table = np.full((len(replies), width), -1, np.int32)
    table[:, 0] = lengths
    rows = replies.rows()
    table[rows, np.arange(len(rows)) - replies.offsets[rows] + 1] = replies.ids
    as_bytes = table.view(np.dtype((np.void, 4 * width))).ravel()
    _, first, inverse = np.unique(as_bytes, return_index=True, return_inverse=True)
    order = np.argsort(first)  # np.unique sorts by bytes; keys go by first appearance
    rank = np.empty(len(order), np.int32)
    rank[order] = np.arange(len(order), dtype=np.int32)
    return rank[inverse.ravel()], replies.take(first[order])


class _Batches(keras.utils.PyDataset):
    """One epoch of random batches ((contexts, replies), reply keys): random, not length-bucketed, so
    that a context's negatives are replies of every length."""

    def __init__(self, split: dict, keys: np.ndarray, batch_size: int, seed: int, epoch: int):
        super().__init__()
        self.split, self.keys = split, keys
        order = np.random.default_rng([seed, epoch]).permutation(len(keys))
        self.batches = [order[i:i + batch_size] for i in range(0, len(order) - 1, batch_size)
                        if len(order[i:i + batch_size]) > 1]

    def __len__(self) -> int:
        return len(self.batches)

    def __getitem__(self, i):
        idx = self.batches[i]
        contexts = pad([self.split["context"][j] for j in idx], WIDTH_MULTIPLE)
        replies = pad([self.split["reply"][j] for j in idx], WIDTH_MULTIPLE)
        return (contexts, replies), self.keys[idx]


class _Deadline(keras.callbacks.Callback):
    def __init__(self, deadline: float):
        super().__init__()
        self.deadline = deadline

    def on_train_batch_end(self, batch, logs=None):
        if time.perf_counter() >= self.deadline:
            self.model.stop_training = True


def train_selector(data: PreparedData, cfg: SelectorConfig, out_dir: Path, *, minutes: float = 0.0,
                   progress: bool = True, log: Callable = print) -> dict:
    """Train a selector on `data`'s training pairs for `cfg.epochs` passes, or until `minutes` run out
    (0: no limit), and write it into the folder `out_dir` (replaced whole). Returns its config.json."""
    started = time.perf_counter()
    if cfg.encoder == "none":
        raise ErgoError("the selector is switched off (encoder 'none'): nothing to train")
    vocab, train = data.vocab(), data.split("train")
    if len(train["reply"]) < 2:
        raise ErgoError("the selector needs at least two training pairs")
    keys, distinct = reply_keys(train["reply"])
    seed = data.data_config.seed
    keras.utils.set_random_seed(seed)
    model = build_selector(cfg, len(vocab), data.embeddings())
    model.compile(optimizer=keras.optimizers.Adam(cfg.learning_rate, clipnorm=5.0), jit_compile=False)
    deadline = started + minutes * 60 if minutes else math.inf
    log(f"reply selector: {cfg.encoder} towers, {model.count_params():,} parameters; {len(keys):,} pairs, "
        f"{len(distinct):,} distinct replies" + (f"; training for {minutes:.2g} minutes" if minutes else ""))
    epochs = 0
    for epoch in range(cfg.epochs):
        if time.perf_counter() >= deadline:
            break
        model.fit(as_keras_data(_Batches(train, keys, cfg.batch_size, seed, epoch)), epochs=1, shuffle=False,
                  verbose=(1 if sys.stdout.isatty() else 2) if progress else 0, callbacks=[_Deadline(deadline)])
        epochs = epoch + 1
    info = {"corpus": data.manifest["corpus"]["name"], "epochs": epochs, "distinct_replies": len(distinct)}
    valid = data.split("valid")
    if len(reply_keys(valid["reply"])[1]) >= 10:
        from .ranking import recall, recall_rows
        pool, rows = recall_rows(valid["reply"], 500, np.random.default_rng(0))
        info["valid_recall"] = recall(pool_scores(model, [valid["context"][i] for i in pool],
                                                  [valid["reply"][i] for i in pool], rows))
    info["training_seconds"] = round(time.perf_counter() - started, 1)
    chosen = even_sample(len(distinct), MAX_PAIRS, seed)
    if chosen is not None:
        distinct = distinct.take(chosen)
    info = save_selector(model, vocab, distinct, out_dir, info)
    recall_text = "/".join(f"{v:.3f}" for v in info.get("valid_recall", {}).values())
    log(f"reply selector: {epochs} epochs in {info['training_seconds']:.0f} s"
        + (f"; validation recall@1/2/5 of 10 {recall_text}" if recall_text else ""))
    return info


def save_selector(model: ReplySelector, vocab: Vocab, replies: Ragged, out_dir: Path,
                  info: dict) -> dict:
    """Write the folder `out_dir` (replaced whole): the model, and the index of `replies` (distinct)
    encoded by its reply tower. `info` joins the settings in config.json, which is returned."""
    vectors = _encoded(model.replies, replies)
    info = {"selector_config": to_dict(model.cfg), "vocab_size": len(vocab),
            "embedding_dim": int(model.embedding.output_dim), "vocab_digest": vocab_digest(vocab),
            "replies": len(replies), **info}
    offsets, ids = replies.offsets, np.asarray(replies.ids, np.int32)
    from .bundle import save_weights_only
    with atomic_dir(Path(out_dir)) as tmp:
        save_weights_only(model, tmp / WEIGHTS_FILE)
        with open(tmp / INDEX_FILE, "wb") as f:
            np.savez(f, vectors=vectors.astype(np.float16), reply_ids=ids, reply_offsets=offsets,
                     vocab_digest=np.array(vocab_digest(vocab)))
        (tmp / CONFIG_FILE).write_text(json.dumps(info, indent=2), encoding="utf-8")
    return info


def pool_scores(model: ReplySelector, contexts: list, replies: list, rows: np.ndarray) -> np.ndarray:
    """Scores [n, k]: context a against the replies rows[a] (ergo/ranking.py's recall rows)."""
    c = _encoded(model.contexts, contexts)
    r = _encoded(model.replies, [np.asarray(x, np.int32) for x in replies])
    return np.einsum("nd,nkd->nk", c, r[rows]) * float(model.scale)


def _encoded(tower, seqs: Sequence) -> np.ndarray:
    """A tower's vectors of id sequences, ENCODE_BATCH at a time."""
    return np.concatenate([np.zeros((0, tower(pad([np.ones(1, np.int32)])).shape[-1]), np.float32)] + [
        np.asarray(tower(pad(seqs[i:i + ENCODE_BATCH], WIDTH_MULTIPLE))) for i in range(0, len(seqs), ENCODE_BATCH)])


class Selector:
    """A bundle's trained selector and its reply index, ready to score and to search."""

    def __init__(self, model: ReplySelector, vectors: np.ndarray, reply_ids: np.ndarray, reply_offsets: np.ndarray,
                 info: dict, xla: bool = False):
        """`xla`: see ergo.retrieval.row_products."""
        self.model, self.info = model, info
        self.scale = float(model.scale)
        rows, self.row_scale = fixed_point(vectors)
        self._products = row_products(rows, xla)
        self.reply_ids, self.reply_offsets = reply_ids, reply_offsets
        self._contexts = _compiled(model.contexts)
        self._replies = _compiled(model.replies)

    def __len__(self) -> int:
        return len(self.row_scale)

    @classmethod
    def load(cls, bundle_dir: Path, vocab: Vocab, xla: bool = False) -> "Selector | None":
        """The bundle's selector, or None when it has none; one of another vocabulary is refused."""
        path = Path(bundle_dir) / FOLDER
        if not (path / CONFIG_FILE).is_file():
            return None
        try:
            info = json.loads((path / CONFIG_FILE).read_text(encoding="utf-8"))
            cfg = from_dict(SelectorConfig, info["selector_config"])
            if info["vocab_digest"] != vocab_digest(vocab) or info["vocab_size"] != len(vocab):
                raise ErgoError(f"{path}: the selector was trained on another vocabulary; "
                                f"train it again with `python main.py --train-selector`")
            model = build_selector(cfg, len(vocab), embedding_dim=int(info["embedding_dim"]))
            model.load_weights(path / WEIGHTS_FILE)
            with np.load(path / INDEX_FILE) as z:
                if str(z["vocab_digest"]) != info["vocab_digest"]:
                    raise ErgoError(f"{path / INDEX_FILE} was built for another vocabulary")
                return cls(model, z["vectors"], z["reply_ids"], z["reply_offsets"], info, xla)
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise ErgoError(f"{path}: damaged reply selector ({e}); train it again with "
                            f"`python main.py --train-selector`") from None

    def reply(self, i: int) -> list[int]:
        return self.reply_ids[self.reply_offsets[i]:self.reply_offsets[i + 1]].tolist()

    def context_vector(self, context: np.ndarray) -> np.ndarray:
        return np.asarray(self._contexts(pad([np.asarray(context, np.int32)], WIDTH_MULTIPLE)))[0]

    def score(self, context: np.ndarray, replies: Sequence[Sequence[int]], vector: np.ndarray | None = None) -> np.ndarray:
        """The score of each reply given the context (its vector, if already computed)."""
        if not len(replies):
            return np.zeros(0, np.float32)
        vector = self.context_vector(context) if vector is None else vector
        found = np.asarray(self._replies(pad([np.asarray(r, np.int32) for r in replies], WIDTH_MULTIPLE)))
        return found @ vector * self.scale

    def search(self, vector: np.ndarray, k: int) -> list[tuple[list[int], float]]:
        """The k replies of the index nearest the context's vector: (reply ids, score), best first."""
        if not len(self):
            return []
        scores = self._products(vector) * self.row_scale
        k = min(k, len(scores))
        top = np.argpartition(-scores, k - 1)[:k]
        return [(self.reply(int(i)), float(scores[i]) * self.scale) for i in top[np.argsort(-scores[top], kind="stable")]]


def _compiled(tower):
    """A tower as one traced function on TensorFlow (an eager call of its few ops costs more than they do)."""
    if keras.backend.backend() != "tensorflow":
        return tower
    import tensorflow as tf
    return tf.function(tower, input_signature=[tf.TensorSpec([None, None], tf.int32)], reduce_retracing=True)


def has_selector(folder: Path) -> bool:
    """True when `folder` (a bundle or a run folder) holds a complete selector/."""
    return (Path(folder) / FOLDER / CONFIG_FILE).is_file()
