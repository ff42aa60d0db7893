"""Which output columns a reply may use: vocabulary selection for large vocabularies.

A step's cost is mostly reading the output projection (hidden x vocabulary). With a shortlist, a reply is
chosen among the `size` most frequent words (ids run by falling frequency), <eos>, the context's words and
the words of any other candidate that must be scored on the same terms: the projection shrinks to those
columns and the softmax is over them. A shortlist is sorted, so it starts with the frequent words: their
columns are one slice of the kernel, and only the few others are gathered.

The rule serves a reply in Python (`Shortlist.of`, numpy) and inside a graph (`Shortlist.in_graph`, which
the TF Serving export traces); a test checks that both choose the same words.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
from keras import ops

from .vocab import EOS_ID

SHORTLIST = 4000         # frequent words every reply may use when the vocabulary is shortlisted
SHORTLIST_BUCKET = 256   # a compiled search's shortlist is filled to a multiple of this (few shapes)


def round_up(n: int, bucket: int) -> int:
    return -(-n // bucket) * bucket


class Shortlist:
    """The shortlist rule for a vocabulary of `vocab_size` words. `size`: the number of frequent words;
    None picks SHORTLIST for a vocabulary over 2 x SHORTLIST words and no shortlist otherwise; 0 never
    shortlists. `size` 0 after that means replies use the whole vocabulary."""

    def __init__(self, vocab_size: int, size: int | None = None):
        self.vocab_size = int(vocab_size)
        if size is None:
            size = SHORTLIST if self.vocab_size > 2 * SHORTLIST else 0
        self.size = size if 0 < size < self.vocab_size else 0

    def frequent(self) -> np.ndarray:
        return np.arange(self.size, dtype=np.int32)

    def in_graph(self, context, *others):
        """The sorted ids a reply to `context` may use, in keras.ops (a tensor; it runs inside a traced graph
        too), or None without a shortlist. `others`: id sequences whose words must be in it too."""
        if not self.size:
            return None
        words = ops.concatenate([ops.convert_to_tensor([EOS_ID], "int32"), ops.cast(context, "int32"),
                                 *(ops.cast(o, "int32") for o in others)], 0)
        chosen = ops.scatter(words[:, None], ops.ones_like(words, "int32"), (self.vocab_size,)) > 0
        chosen = ops.logical_or(chosen, ops.arange(self.vocab_size) < self.size)
        return ops.cast(ops.nonzero(chosen)[0], "int32")

    def of(self, context: np.ndarray, *others: Sequence[int]) -> np.ndarray | None:
        """`in_graph` in numpy, for a reply in Python (eager ops would add most of a millisecond to each
        reply); tests/test_searches.py checks that the two choose alike."""
        if not self.size:
            return None
        chosen = np.arange(self.vocab_size) < self.size
        chosen[np.concatenate([[EOS_ID], np.asarray(context), *(np.asarray(o) for o in others)]).astype(np.intp)] = True
        return np.flatnonzero(chosen).astype(np.int32)

    def check(self, ids) -> np.ndarray:
        """`ids` as int32, or a ValueError when they do not start with the frequent words (their columns are
        read as one slice of the kernel)."""
        ids = np.asarray(ids, np.int32)
        if not np.array_equal(ids[:self.size], self.frequent()):
            raise ValueError(f"a shortlist starts with the {self.size} most frequent ids, as Shortlist.of makes it")
        return ids

    def filled(self, ids: np.ndarray | None) -> np.ndarray | None:
        """A shortlist grown to a multiple of SHORTLIST_BUCKET with the next most frequent words it lacks (a
        search over a few more words, for few shapes to compile); small ones stay as they are."""
        if ids is None or self.size < SHORTLIST_BUCKET:
            return ids
        ids = np.asarray(ids, np.int32)
        missing = min(round_up(len(ids), SHORTLIST_BUCKET), self.vocab_size) - len(ids)
        extra = ids[self.size:]  # the words past the frequent ones, sorted
        window = np.arange(self.size, min(self.vocab_size, self.size + len(extra) + missing), dtype=np.int32)
        fill = np.setdiff1d(window, extra, assume_unique=True)[:missing]
        return np.concatenate([self.frequent(), np.union1d(extra, fill).astype(np.int32)])

    def columns(self, ids):
        """[V]: each word id's column in the shortlist `ids` (0 for words not in it)."""
        return ops.scatter(ids[:, None], ops.arange(ops.shape(ids)[0]), (self.vocab_size,))
