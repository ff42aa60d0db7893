"""Retrieval of candidate replies from the training corpus, for the retrieve and hybrid modes.

Each training context becomes a sentence vector: the mean of its words' word2vec vectors, weighted
by SIF (a / (a + p(word)): frequent words count for little) and by turn (the last turn counts most),
then unit length. A new context's vector finds its nearest training contexts by cosine (one
matrix-vector product over the index, see `row_products`); their replies are the candidates, which
the chatbot then ranks with the model's log p(reply | context) and the MMI penalty.

The index is one file in the bundle, retrieval.npz, so a bundle still carries everything a reply
needs: `build_index(data, bundle_dir)` writes it (training calls it when it saves a best bundle),
and it is checked against the bundle's vocabulary when loaded.
"""
from __future__ import annotations

import functools
import hashlib
from pathlib import Path

import numpy as np

from .dataset import PreparedData
from .errors import ErgoError
from .files import atomic_path
from .splits import Ragged, even_sample
from .vocab import SEP_ID, SPECIALS, Vocab

INDEX_FILE = "retrieval.npz"
SIF_A = 1e-3             # SIF's smoothing: a word as frequent as 1 in 1000 tokens gets half weight
EARLIER_TURN = 0.5       # weight of each earlier turn relative to the one after it
SEARCH_BLOCK = 1024      # index rows numpy widens to float32 at a time (not a float32 copy of it all)
MAX_PAIRS = 500_000      # training pairs an index holds at most (256 MB of int16 vectors at 256 dims)


def vocab_digest(vocab: Vocab) -> str:
    return hashlib.sha256("\n".join(vocab.words).encode("utf-8")).hexdigest()


def _token_weights(contexts: Ragged, word_weight: np.ndarray) -> np.ndarray:
    """Each token's weight: its word's SIF weight, halved for every turn between it and its context's last turn."""
    ids = contexts.ids
    seps = np.cumsum(ids == SEP_ID)
    last = contexts.offsets[1:] - 1                       # each row's last position (unused for empty rows)
    turns_after = seps[last[contexts.rows()]] - seps      # separators after each token, in its own row
    return (word_weight[ids] * EARLIER_TURN ** turns_after).astype(np.float32)


def _unit(vectors: np.ndarray) -> np.ndarray:
    return vectors / np.maximum(np.linalg.norm(vectors, axis=-1, keepdims=True), 1e-8)


def _sentence_vectors(contexts: Ragged, word_vectors: np.ndarray, word_weight: np.ndarray) -> np.ndarray:
    """Unit-length weighted mean vectors [N, D] of many contexts, through one sparse [N, V] x [V, D] product
    (scipy's, imported here: a web worker, which looks up one context at a time, never holds its 23 MB)."""
    import scipy.sparse
    rows = scipy.sparse.csr_matrix((_token_weights(contexts, word_weight), contexts.ids, contexts.offsets),
                                   shape=(len(contexts), len(word_vectors)))
    return _unit(np.asarray(rows @ word_vectors, dtype=np.float32))


def _sentence_vector(context: np.ndarray, word_vectors: np.ndarray, word_weight: np.ndarray) -> np.ndarray:
    """One context's vector, as _sentence_vectors makes it, from its few words' rows."""
    row = Ragged.from_rows([np.asarray(context)])
    return _unit(_token_weights(row, word_weight) @ word_vectors[row.ids])


def build_index(data: PreparedData, bundle_dir: Path) -> Path:
    """Write bundle_dir/retrieval.npz from the training split of `data` (a few seconds for 100k pairs).
    Past MAX_PAIRS it indexes an even, seeded sample of them: candidates from half a million contexts are
    as good as from millions, and the index stays a size each web worker can hold."""
    vocab, split = data.vocab(), data.split("train")
    word_vectors = data.embeddings().astype(np.float32)
    counts = (np.bincount(split["context"].ids, minlength=len(vocab))
              + np.bincount(split["reply"].ids, minlength=len(vocab))).astype(np.float64)
    word_weight = (SIF_A / (SIF_A + counts / max(counts.sum(), 1.0))).astype(np.float32)
    word_weight[: len(SPECIALS)] = 0.0
    contexts, replies = split["context"], split["reply"]
    chosen = even_sample(len(replies), MAX_PAIRS)
    if chosen is not None:
        contexts, replies = contexts.take(chosen), replies.take(chosen)
    path = Path(bundle_dir) / INDEX_FILE
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            np.savez(f, vectors=_sentence_vectors(contexts, word_vectors, word_weight).astype(np.float16),
                     word_vectors=word_vectors, word_weight=word_weight,
                     reply_ids=np.asarray(replies.ids, np.int32), reply_offsets=replies.offsets,
                     vocab_digest=np.array(vocab_digest(vocab)))
    return path


def fixed_point(vectors: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(int16 rows, float32 scale of each row): the index as a search keeps it, in half of float32's memory
    (51 MB, not 102, for 100k contexts of 256 dims). Each row's largest component spans the int16 range,
    so rounding adds at most 1/65534 of it to the file's float16 rounding (1/2048 of each component).
    int16 widens to float32 about 5 times faster than float16, as a search does for every row."""
    rows = np.array(vectors, np.float32)
    scale = np.maximum(rows.max(axis=1, initial=0.0), -rows.min(axis=1, initial=0.0)) / np.iinfo(np.int16).max
    scale[scale == 0] = 1.0  # an all-zero row (a context of unknown words) stays zero
    rows /= scale[:, None]
    return np.rint(rows, out=rows).astype(np.int16), scale


def row_products(rows: np.ndarray, xla: bool):
    """query [D] -> rows [N, D] int16 times query, in float32. With `xla` on TensorFlow the rows move
    into a tensor (no numpy copy is kept) and one XLA-compiled product widens each row as it reads it:
    2.7 ms for 100k rows of 256, against 11.6 ms for numpy, which must widen rows into memory (a block
    at a time) before multiplying. Without it (the web's workers: XLA's compiler would cost each
    ~60 MB), and on other backends, numpy does."""
    import keras
    if not xla or keras.backend.backend() != "tensorflow":
        return functools.partial(block_products, rows)
    import tensorflow as tf
    table = tf.constant(rows)
    product = tf.function(lambda table, query: tf.linalg.matvec(tf.cast(table, tf.float32), query),
                          jit_compile=True, autograph=False)
    return lambda query: product(table, tf.constant(query, tf.float32)).numpy()


def block_products(rows: np.ndarray, query: np.ndarray) -> np.ndarray:
    """rows [N, D] int16 times query, in float32 by numpy, widening SEARCH_BLOCK rows at a time."""
    return np.concatenate([np.matmul(rows[i:i + SEARCH_BLOCK], query, dtype=np.float32)
                           for i in range(0, len(rows), SEARCH_BLOCK)])


class RetrievalIndex:
    def __init__(self, vectors: np.ndarray, word_vectors: np.ndarray, word_weight: np.ndarray,
                 reply_ids: np.ndarray, reply_offsets: np.ndarray, xla: bool = False):
        """`xla`: see `row_products`."""
        rows, self.row_scale = fixed_point(vectors)
        self._products = row_products(rows, xla)
        self.word_vectors, self.word_weight = word_vectors, word_weight
        self.reply_ids, self.reply_offsets = reply_ids, reply_offsets

    def __len__(self) -> int:
        return len(self.row_scale)

    @classmethod
    def load(cls, bundle_dir: Path, vocab: Vocab, xla: bool = False) -> "RetrievalIndex | None":
        """The bundle's index, or None when it has none; an index of another vocabulary is refused."""
        path = Path(bundle_dir) / INDEX_FILE
        if not path.is_file():
            return None
        try:
            with np.load(path) as z:
                if str(z["vocab_digest"]) != vocab_digest(vocab):
                    raise ErgoError(f"{path} was built for another vocabulary; rebuild it with "
                                    f"ergo.retrieval.build_index")
                return cls(z["vectors"], z["word_vectors"], z["word_weight"], z["reply_ids"], z["reply_offsets"], xla)
        except (OSError, ValueError, KeyError) as e:
            raise ErgoError(f"{path}: damaged retrieval index ({e})") from None

    def reply(self, i: int) -> list[int]:
        return self.reply_ids[self.reply_offsets[i]:self.reply_offsets[i + 1]].tolist()

    def search(self, context: np.ndarray, k: int) -> list[tuple[list[int], float]]:
        """Up to k distinct replies of the nearest training contexts: (reply ids, cosine), nearest first."""
        query = _sentence_vector(context, self.word_vectors, self.word_weight)
        if not np.any(query) or not len(self):
            return []
        sims = self._products(query) * self.row_scale  # every training context's cosine
        pool = min(len(sims), 4 * k)  # room for duplicates ("lol", "yes") among the nearest
        top = np.argpartition(-sims, pool - 1)[:pool]
        out, seen = [], set()
        for i in top[np.argsort(-sims[top], kind="stable")]:
            reply = self.reply(int(i))
            if reply and tuple(reply) not in seen:
                seen.add(tuple(reply))
                out.append((reply, float(sims[i])))
                if len(out) == k:
                    break
        return out
