"""The retrieval index as a search keeps it: int16 rows, and the same neighbours as float32 products."""
from __future__ import annotations

import functools

import numpy as np

from ergo.retrieval import (EARLIER_TURN, SEARCH_BLOCK, RetrievalIndex, fixed_point, _sentence_vectors,
                            block_products, row_products)
from ergo.splits import Ragged
from ergo.vocab import SEP_ID


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
                           np.arange(rows + 1, dtype=np.int64), xla=True)
    return index, vectors.astype(np.float16).astype(np.float32)


def test_the_index_holds_int16_rows_at_half_the_memory_of_float32():
    _, exact = random_index(3000)
    rows, scale = fixed_point(exact.astype(np.float16))
    assert rows.dtype == np.int16 and rows.shape == exact.shape
    assert rows.nbytes + scale.nbytes < exact.nbytes * 0.55
    assert np.abs(rows.astype(np.float32) * scale[:, None] - exact).max() < 1e-5
    assert not rows[7].any()


def test_both_products_of_the_int16_rows_are_float32_products():
    rng = np.random.default_rng(3)
    rows = rng.integers(-32767, 32768, (2 * SEARCH_BLOCK + 123, 64), dtype=np.int16)  # a short last block
    query = rng.normal(size=64).astype(np.float32)
    exact = rows.astype(np.float64) @ query
    for products in (row_products(rows, xla=True), functools.partial(block_products, rows)):
        np.testing.assert_allclose(products(query) / 32767, exact / 32767, atol=1e-5)  # float32 sums of 64


def test_search_finds_the_neighbours_float32_products_of_the_file_find():
    index, exact = random_index(2 * SEARCH_BLOCK + 123)
    for context in ([5, 9, 12], [40], [3, 3, 8, 21, 33]):
        context = np.array(context, np.int32)
        query = _sentence_vectors(Ragged.from_rows([context]), index.word_vectors, index.word_weight)[0]
        sims = exact @ query
        nearest = np.argsort(-sims, kind="stable")[:10]
        found = index.search(context, 10)
        assert [ids for ids, _ in found] == [[int(i)] for i in nearest]
        np.testing.assert_allclose([s for _, s in found], sims[nearest], atol=1e-5)


def test_sentence_vectors_weigh_each_turn_by_its_distance_from_the_last_one():
    """Over a whole split at once (one cumulative count of separators), each row gets what it gets alone."""
    rng = np.random.default_rng(5)
    word_vectors = rng.normal(size=(30, 8)).astype(np.float32)
    word_weight = rng.uniform(0.1, 1.0, 30).astype(np.float32)
    word_weight[SEP_ID] = 0.0
    rows = [[7, 8, SEP_ID, 9], [], [SEP_ID, 11, SEP_ID, 12, 13, SEP_ID, 14], [15], [16, SEP_ID]]
    together = _sentence_vectors(Ragged.from_rows(rows), word_vectors, word_weight)
    for row, vector in zip(rows, together):
        ids = np.array(row, np.int64)
        after = np.array([np.sum(ids[i + 1:] == SEP_ID) for i in range(len(ids))])
        expected = (word_weight[ids] * EARLIER_TURN ** after) @ word_vectors[ids] if len(ids) else np.zeros(8)
        expected = expected / max(np.linalg.norm(expected), 1e-8)
        np.testing.assert_allclose(vector, expected, rtol=1e-5, atol=1e-6)
