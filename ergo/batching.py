"""Length-bucketed, shuffled numpy batches of (encoder_in, decoder_in, decoder_target), and the
pipeline that feeds numpy batches to Keras.

Pairs of similar length go together, so little of a batch is padding; batch widths are rounded up
to a multiple of `width_multiple`, so a compiled training step sees only a handful of shapes.
The order depends only on (seed, epoch): a resumed run replays the same epoch from any batch.
"""
from __future__ import annotations

from typing import Iterator, Sequence

import numpy as np

from .vocab import EOS_ID, GO_ID, PAD_ID

Batch = tuple[np.ndarray, np.ndarray, np.ndarray]


def pad(seqs: Sequence[np.ndarray], width_multiple: int = 1, width: int | None = None) -> np.ndarray:
    """Right-pad id sequences with PAD_ID to one width (the longest, rounded up to the multiple)."""
    if width is None:
        longest = max((len(s) for s in seqs), default=0)
        width = max(width_multiple, -(-longest // width_multiple) * width_multiple)
    out = np.full((len(seqs), width), PAD_ID, dtype=np.int32)
    for row, s in zip(out, seqs):
        row[: len(s)] = s
    return out


def make_batch(split: dict, indices: Sequence[int], width_multiple: int = 4) -> Batch:
    """encoder_in [B, Tc]; decoder_in = <go> + reply and decoder_target = reply + <eos>, both [B, Tr+1]."""
    contexts = [split["context"][i] for i in indices]
    replies = [split["reply"][i] for i in indices]
    go, eos = np.array([GO_ID], np.int32), np.array([EOS_ID], np.int32)
    decoder_in = pad([np.concatenate([go, r]) for r in replies], width_multiple)
    decoder_target = pad([np.concatenate([r, eos]) for r in replies], width_multiple)
    return pad(contexts, width_multiple), decoder_in, decoder_target


def count_target_tokens(decoder_target: np.ndarray) -> int:
    """Real (non-padding) target tokens: the denominator of a per-token loss and of tokens/s."""
    return int(np.count_nonzero(np.asarray(decoder_target) != PAD_ID))


def batch_order(context_lens: np.ndarray, reply_lens: np.ndarray, batch_size: int, seed: int, epoch: int,
                width_multiple: int = 4, chunk_batches: int = 100) -> list[np.ndarray]:
    """Index arrays, one per batch: shuffle, sort by length within chunks, cut, shuffle the batches.

    Within a chunk, pairs are sorted by rounded reply width first (so a batch has one decoder width),
    then by context length; a stable sort keeps the shuffled order among equals.
    """
    rng = np.random.default_rng([seed, epoch])
    perm = rng.permutation(len(context_lens))
    chunk = batch_size * chunk_batches
    batches = []
    for start in range(0, len(perm), chunk):
        idx = perm[start:start + chunk]
        reply_width = -(-(reply_lens[idx] + 1) // width_multiple)
        idx = idx[np.lexsort((reply_lens[idx], context_lens[idx], reply_width))]
        batches.extend(idx[i:i + batch_size] for i in range(0, len(idx), batch_size))
    rng.shuffle(batches)
    return batches


class BatchIterator:
    """One epoch's batches in the (seed, epoch) order, starting at batch `start`.

    `position` is the index of the next batch: store it in a checkpoint and pass it back as `start`.
    """

    def __init__(self, split: dict, batch_size: int, *, seed: int, epoch: int = 0, start: int = 0,
                 width_multiple: int = 4, chunk_batches: int = 100):
        self.split = split
        self.width_multiple = width_multiple
        self.order = batch_order(split["context"].lengths(), split["reply"].lengths(), batch_size, seed, epoch,
                                 width_multiple, chunk_batches)
        self.position = start

    def __len__(self) -> int:
        return len(self.order)

    def __iter__(self) -> Iterator[Batch]:
        return self

    def __next__(self) -> Batch:
        if self.position >= len(self.order):
            raise StopIteration
        batch = make_batch(self.split, self.order[self.position], self.width_multiple)
        self.position += 1
        return batch


def as_keras_data(batches):
    """A keras.utils.PyDataset of numpy batches as `fit` input: on TensorFlow a tf.data pipeline with
    open widths (a PyDataset would pin them to the widths of its first two batches; the spec is read
    from the first batch), on other backends the PyDataset as it is.

    Under several workers each keeps its slice of every batch (DATA sharding: see ergo/cluster.py); said
    outright, tf.data would first try to shard by files, which a generator has none of, and warn."""
    import keras
    if keras.backend.backend() != "tensorflow":
        return batches
    import tensorflow as tf
    spec = tf.nest.map_structure(lambda a: tf.TensorSpec([None] * np.ndim(a), tf.as_dtype(np.asarray(a).dtype)),
                                 batches[0])
    data = tf.data.Dataset.from_generator(lambda: (batches[i] for i in range(len(batches))), output_signature=spec)
    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
    return data.apply(tf.data.experimental.assert_cardinality(len(batches))).prefetch(2).with_options(options)
