"""The retrieval index as a search keeps it: int16 rows, and the same neighbours as float32 products."""
from __future__ import annotations

import numpy as np

from ergo.retrieval import SEARCH_BLOCK, RetrievalIndex, _sentence_vectors


def random_index(rows: int, dim: int = 64, words: int = 50, seed: int = 0):
    """An index as build_index writes it (float16 unit vectors), one distinct reply per context."""
    rng = np.random.default_rng(seed)
    vectors = rng.normal(size=(rows, dim)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    vectors[7] = 0.0  # a context of unknown words
    word_vectors = rng.normal(size=(words, dim)).astype(np.float32)
    word_weight = np.ones(words, np.float32)
    reply_ids = np.arange(rows, dtype=np.int32)
    index = RetrievalIndex(vectors.astype(np.float16), word_vectors, word_weight, reply_ids,
                           np.arange(rows + 1, dtype=np.int64))
    return index, vectors.astype(np.float16).astype(np.float32)


def test_the_index_holds_int16_rows_at_half_the_memory_of_float32():
    index, exact = random_index(3000)
    assert index.vectors.dtype == np.int16 and index.vectors.shape == exact.shape
    assert index.vectors.nbytes + index.row_scale.nbytes < exact.nbytes * 0.55
    assert np.abs(index.vectors.astype(np.float32) * index.row_scale[:, None] - exact).max() < 1e-5
    assert not index.vectors[7].any()


def test_search_finds_the_neighbours_float32_products_of_the_file_find():
    index, exact = random_index(2 * SEARCH_BLOCK + 123)  # a last block shorter than the others
    for context in ([5, 9, 12], [40], [3, 3, 8, 21, 33]):
        context = np.array(context, np.int32)
        query = _sentence_vectors([context], index.word_vectors, index.word_weight)[0]
        sims = exact @ query
        nearest = np.argsort(-sims, kind="stable")[:10]
        found = index.search(context, 10)
        assert [ids for ids, _ in found] == [[int(i)] for i in nearest]
        np.testing.assert_allclose([s for _, s in found], sims[nearest], atol=1e-5)
