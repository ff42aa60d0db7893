"""The searches and the shortlist with scripted log-probabilities: no model, so each test states the
distribution and the one right answer under it."""
import numpy as np
import pytest
from keras import ops

from ergo.searches import (beam_search, constrained, context_ngrams, draw_search, greedy_pick, ngram_bans,
                           sampling_pick)
from ergo.shortlist import SHORTLIST_BUCKET, Shortlist

GO, EOS = 2, 3
S = 8  # columns


def scripted(table):
    """A step whose log-probabilities depend only on the previous column: table[prev] (rows normalised)."""
    table = np.asarray(table, np.float64)
    logp = np.log(table / table.sum(axis=1, keepdims=True)).astype(np.float32)

    def step(t, prev, states, tokens):
        return ops.take(ops.convert_to_tensor(logp), prev, axis=0), states
    return step


def states(width):
    return (ops.zeros((width, 1)),)


def run(search, **kw):
    return [ops.convert_to_numpy(x) for x in search(states(kw["width"]), **kw)]


def table(rows: dict):
    """S x S probabilities: every previous column spreads evenly, except the rows given."""
    t = np.full((S, S), 1.0)
    for prev, probs in rows.items():
        t[prev] = probs
    return t


def reply(tokens, length):
    return tokens[:length].tolist()


def test_beam_finds_the_likelier_reply_that_greedy_misses():
    # After <go>: 4 at 0.5, 5 at 0.4. After 4 all is even (0.125 each, <eos> too); after 5, <eos> at 0.9.
    # Greedy takes 4 then is stuck: 0.5 x 0.125. The beam keeps 5: 0.4 x 0.9 = 0.36.
    t = table({GO: [0.01, 0.01, 0.01, 0.01, 0.5, 0.4, 0.03, 0.03], 5: [0.01, 0.01, 0.01, 0.9, 0.02, 0.02, 0.02, 0.01]})
    step = scripted(t)
    tokens, lengths, logp, ended = run(lambda s, **kw: draw_search(scripted(t), s, pick=greedy_pick, **kw),
                                       width=1, max_len=2)
    assert tokens[0][0] == 4  # greedy: the likelier first word
    tokens, lengths, logp, ended = run(lambda s, **kw: beam_search(step, s, alpha=0.0, **kw), width=2, max_len=4)
    assert reply(tokens[0], lengths[0]) == [5] and ended[0]
    np.testing.assert_allclose(logp[0], np.log(0.4 / np.sum(t[GO])) + np.log(0.9 / np.sum(t[5])), rtol=1e-5)
    assert list(logp) == sorted(logp, reverse=True)


def test_draw_stops_at_eos_and_scores_by_the_step_not_the_pick():
    t = table({GO: [0, 0, 0, 0, 0, 0, 1, 0], 6: [0, 0, 0, 1, 0, 0, 0, 0]})
    t[t == 0] = 1e-6
    tokens, lengths, logp, ended = run(lambda s, **kw: draw_search(scripted(t), s, pick=greedy_pick, **kw),
                                       width=3, max_len=5)
    assert [reply(r, n) for r, n in zip(tokens, lengths)] == [[6]] * 3 and ended.all()
    cold = sampling_pick(np.float32(0.05), 0, np.float32(1.0), np.int32(0))  # tempered picks, same logp
    again = run(lambda s, **kw: draw_search(scripted(t), s, pick=cold, **kw), width=3, max_len=5)
    np.testing.assert_allclose(again[2], logp, rtol=1e-6)


def test_sampling_is_seeded_and_its_cut_offs_hold():
    t = table({})
    step = scripted(t)

    def draw(pick):
        tokens, lengths, _, _ = run(lambda s, **kw: draw_search(step, s, pick=pick, **kw), width=16, max_len=6)
        return tokens

    one = draw(sampling_pick(np.float32(1.0), 0, np.float32(1.0), np.int32(7)))
    assert (one == draw(sampling_pick(np.float32(1.0), 0, np.float32(1.0), np.int32(7)))).all()
    assert not (one == draw(sampling_pick(np.float32(1.0), 0, np.float32(1.0), np.int32(8)))).all()
    skewed = table({c: [1, 1, 1, 1, 50, 40, 1, 1] for c in range(S)})
    step = scripted(skewed)
    top2 = draw(sampling_pick(np.float32(1.0), 2, np.float32(1.0), np.int32(1)))
    assert set(top2.ravel().tolist()) <= {4, 5, 0} and {4, 5} <= set(top2.ravel().tolist())
    nucleus = draw(sampling_pick(np.float32(1.0), 0, np.float32(0.1), np.int32(1)))  # 4 alone holds 0.1
    assert set(nucleus.ravel().tolist()) == {4}


def test_constraints_ban_words_early_eos_and_repeated_ngrams():
    t = table({c: [1, 1, 1, 90, 5, 1, 1, 1] for c in range(S)})  # wants <eos> at once, else 4 for ever
    blocked = ops.convert_to_tensor(np.isin(np.arange(S), [0, 1, GO]))
    step = constrained(scripted(t), blocked=blocked, min_len=3, n_rep=1, eos=EOS)
    tokens, lengths, _, ended = run(lambda s, **kw: draw_search(step, s, pick=greedy_pick, **kw), width=1, max_len=8)
    words = reply(tokens[0], lengths[0])
    assert len(words) == 3 and ended[0] and len(set(words)) == 3 and not set(words) & {0, 1, GO, EOS}
    ctx = ops.convert_to_tensor(np.array([4, 5], np.int32))  # the context's 2-gram 4 5 is banned
    t = table({GO: [1, 1, 1, 1, 90, 1, 1, 1], 4: [1, 1, 1, 1, 1, 90, 8, 1]})
    step = constrained(scripted(t), blocked=ops.zeros((S,), "bool"), min_len=0, context_grams=context_ngrams(ctx, 2))
    tokens, lengths, _, _ = run(lambda s, **kw: draw_search(step, s, pick=greedy_pick, **kw), width=1, max_len=2)
    assert reply(tokens[0], lengths[0]) == [4, 6]


def test_ngram_bans_mark_the_word_that_would_repeat():
    tokens = ops.convert_to_tensor(np.array([[4, 5, 6, 4, 0, 0]], np.int32))
    bans = ops.convert_to_numpy(ngram_bans(tokens, 4, 2, None, S))[0]  # after "... 4": 5 would repeat "4 5"
    assert np.flatnonzero(bans).tolist() == [5]
    assert not ops.convert_to_numpy(ngram_bans(tokens, 1, 2, None, S)).any()  # too early for a repeat


def test_a_shortlist_holds_the_frequent_words_eos_and_the_context_sorted_alike_in_a_graph():
    lists = Shortlist(1000, 12)
    ids = lists.of(np.array([5, 700, 40, 700], np.int32), [999, 3])
    assert ids.tolist() == list(range(12)) + [40, 700, 999]
    graph = lists.in_graph(ops.convert_to_tensor(np.array([5, 700, 40, 700], np.int32)), np.array([999, 3]))
    assert ops.convert_to_numpy(graph).tolist() == ids.tolist()
    assert Shortlist(1000, 0).of(np.array([5])) is None and Shortlist(100, None).size == 0
    with pytest.raises(ValueError, match="most frequent"):
        lists.check(ids[1:])
    columns = ops.convert_to_numpy(lists.columns(ops.convert_to_tensor(ids)))
    assert [columns[w] for w in (0, 11, 40, 700, 999)] == [0, 11, 12, 13, 14]


def test_a_shortlist_is_filled_with_the_next_frequent_words_to_few_sizes():
    lists = Shortlist(3 * SHORTLIST_BUCKET, SHORTLIST_BUCKET)
    ids = np.concatenate([np.arange(SHORTLIST_BUCKET), [300, 302, 700]]).astype(np.int32)
    filled = lists.filled(ids)
    assert len(filled) == 2 * SHORTLIST_BUCKET and set(ids) <= set(filled.tolist())
    assert list(filled) == sorted(set(filled.tolist()))  # sorted, no word twice
    assert set(filled.tolist()) - set(ids.tolist()) == set(range(SHORTLIST_BUCKET, 300)) | {301} | set(range(303, 511))
