import numpy as np
import pytest

from ergo.batching import BatchIterator, batch_order, count_target_tokens, make_batch, pad
from ergo.splits import Ragged
from ergo.vocab import EOS_ID, GO_ID, PAD_ID


def make_split(n=300, seed=0):
    """Pairs whose first token is their index + 5, so a batch row says which pair it holds."""
    rng = np.random.default_rng(seed)
    context = [np.concatenate([[i + 5], rng.integers(5, 99, rng.integers(0, 30))]).astype(np.int32) for i in range(n)]
    reply = [np.concatenate([[i + 5], rng.integers(5, 99, rng.integers(0, 15))]).astype(np.int32) for i in range(n)]
    return {"context": Ragged.from_rows(context), "reply": Ragged.from_rows(reply)}


def epoch(split, **kw):
    return list(BatchIterator(split, 16, seed=kw.pop("seed", 1), **kw))


def test_every_pair_once_per_epoch():
    split = make_split()
    seen = [int(i) - 5 for enc, _, _ in epoch(split) for i in enc[:, 0]]
    assert sorted(seen) == list(range(len(split["context"])))


def test_rows_are_the_pairs_right_padded():
    split = make_split()
    for enc, dec_in, target in epoch(split, width_multiple=4):
        assert enc.dtype == dec_in.dtype == target.dtype == np.int32
        assert enc.shape[1] % 4 == 0 and dec_in.shape[1] % 4 == 0 and dec_in.shape == target.shape
        for e, d, t in zip(enc, dec_in, target):
            i = e[0] - 5
            c, r = split["context"][i], split["reply"][i]
            assert list(e) == list(c) + [PAD_ID] * (len(e) - len(c))
            assert list(d) == [GO_ID] + list(r) + [PAD_ID] * (len(d) - len(r) - 1)
            assert list(t) == list(r) + [EOS_ID] + [PAD_ID] * (len(t) - len(r) - 1)


def test_order_depends_on_seed_and_epoch_only():
    split = make_split()
    first = [enc[:, 0].tolist() for enc, _, _ in epoch(split, seed=1, epoch=3)]
    assert first == [enc[:, 0].tolist() for enc, _, _ in epoch(split, seed=1, epoch=3)]
    assert first != [enc[:, 0].tolist() for enc, _, _ in epoch(split, seed=2, epoch=3)]
    assert first != [enc[:, 0].tolist() for enc, _, _ in epoch(split, seed=1, epoch=4)]


def test_resume_from_a_batch_index():
    split = make_split()
    full = BatchIterator(split, 16, seed=5, epoch=2)
    batches = list(full)
    assert full.position == len(full) == len(batches)
    resumed = BatchIterator(split, 16, seed=5, epoch=2, start=7)
    for expected, got in zip(batches[7:], resumed, strict=True):
        for a, b in zip(expected, got):
            np.testing.assert_array_equal(a, b)


def test_bucketing_pads_less_than_random_batches():
    split = make_split(2000)
    context_lens, reply_lens = split["context"].lengths(), split["reply"].lengths()

    def padding(order):
        total = 0
        for idx in order:
            enc, dec_in, _ = make_batch(split, idx, width_multiple=1)
            total += np.sum(enc == PAD_ID) + np.sum(dec_in == PAD_ID)
        return total

    bucketed = batch_order(context_lens, reply_lens, 32, seed=0, epoch=0)
    shuffled = np.array_split(np.random.default_rng(0).permutation(2000), len(bucketed))
    assert padding(bucketed) < 0.5 * padding(shuffled)


def test_count_target_tokens_and_pad():
    assert count_target_tokens(np.array([[5, 3, 0], [3, 0, 0]])) == 3
    padded = pad([np.array([1, 2, 3]), np.array([4])], width_multiple=4)
    np.testing.assert_array_equal(padded, [[1, 2, 3, 0], [4, 0, 0, 0]])
    assert pad([np.array([], np.int32)], width_multiple=4).shape == (1, 4)


@pytest.mark.parametrize("batch_size", [1, 7, 64, 1000])
def test_batch_sizes(batch_size):
    split = make_split(100)
    batches = list(BatchIterator(split, batch_size, seed=0))
    assert sum(len(enc) for enc, _, _ in batches) == 100
    assert all(len(enc) <= batch_size for enc, _, _ in batches)
