"""The searches: deterministic, consistent with exact scoring, and the bans really hold.

Bans are tested on a model rigged by its output bias to want the forbidden thing (repeat one word,
stop at once, say <unk>), so a passing test shows the ban doing the work, not luck.
"""
import keras
import numpy as np
import pytest

from ergo.config import ModelConfig
from ergo.decoding import EMPTY_CONTEXT, NEVER, Candidate, Decoder
from ergo.model import build_seq2seq
from ergo.vocab import EOS_ID, SEP_ID, UNK_ID
from reply_bundle import reply_bundle, shared_bot

BANNED = 9  # the rigged decoder's banned word
CONTEXTS = [[5, 6, 7], [9, 10, 11, 12, SEP_ID, 13, 14], [20], list(range(5, 30))]


@pytest.fixture(scope="module")
def bot(tiny_bundle, tmp_path_factory):
    return shared_bot(reply_bundle(tiny_bundle, tmp_path_factory)[0])


@pytest.fixture(scope="module")
def xla(bot):
    """The bot's searches compiled with XLA, as the terminal chat runs them (the tests' bots run without it)."""
    return Decoder(bot.model, banned=bot.decoder.banned, xla=True)


@pytest.fixture(scope="module")
def rigged():
    """A random small model whose output bias the tests set so that the favoured tokens win by far;
    one Decoder for all of them, so each search shape is traced once (the bias is read at run time)."""
    keras.utils.set_random_seed(1)
    model = build_seq2seq(ModelConfig(hidden=16, layers=1), 40, embedding_dim=8)
    decoder = Decoder(model, banned=[BANNED])

    def rig(favour: dict[int, float]) -> Decoder:
        bias = np.zeros(40, np.float32)
        for token, value in favour.items():
            bias[token] = value
        model.output_layer.bias.assign(bias)
        return decoder
    return rig


def ngrams(ids, n):
    return [tuple(ids[i:i + n]) for i in range(len(ids) - n + 1)]


def test_searches_are_deterministic_and_their_scores_are_exact(xla):
    d = xla
    for ctx in CONTEXTS:
        ctx = np.array(ctx, np.int32)
        nbest = d.beam(ctx, beam_size=4, max_len=8, length_penalty=1.0)
        assert nbest == d.beam(ctx, beam_size=4, max_len=8, length_penalty=1.0) and 1 <= len(nbest) <= 4
        ranks = [c.logp / c.n_tokens for c in nbest]
        assert ranks == sorted(ranks, reverse=True)
        greedy = d.greedy(ctx, max_len=8)
        assert len(greedy) == 1 and greedy == d.greedy(ctx, max_len=8)
        found = nbest + greedy
        exact = d.score([ctx] * len(found), [c.ids for c in found], [c.ended for c in found])
        np.testing.assert_allclose([c.logp for c in found], exact, rtol=1e-4, atol=1e-4)


def test_sampling_is_seeded_and_top_k_1_is_greedy(xla):
    d, ctx = xla, np.array(CONTEXTS[1], np.int32)
    draw = dict(samples=6, max_len=10, temperature=1.5, top_k=0, top_p=1.0)
    first = d.sample(ctx, seed=3, **draw)
    assert first == d.sample(ctx, seed=3, **draw)
    assert [c.ids for c in first] != [c.ids for c in d.sample(ctx, seed=4, **draw)]
    assert len({tuple(c.ids) for c in first}) > 1  # independent draws, not one reply six times
    exact = d.score([ctx] * len(first), [c.ids for c in first], [c.ended for c in first])
    np.testing.assert_allclose([c.logp for c in first], exact, rtol=1e-4, atol=1e-4)
    argmax = d.sample(ctx, samples=2, max_len=10, top_k=1, seed=9)
    assert [c.ids for c in argmax] == [d.greedy(ctx, max_len=10)[0].ids] * 2


def test_one_call_also_scores_other_replies_and_the_anti_lm_exactly(bot, xla):
    ctx = np.array(CONTEXTS[1], np.int32)
    others = [Candidate([5, 6, 7], 0.0, True), Candidate([9, 10, 11, 12], 0.0, False), Candidate([13], 0.0, True)]
    for d in (xla, Decoder(bot.model, xla=False)):  # teacher-forced all at once, and by steps
        plain = d.beam(ctx, beam_size=3, max_len=8)
        for found in (d.beam(ctx, beam_size=3, max_len=8, anti_lm=True, also=others),
                      d.sample(ctx, samples=2, max_len=8, anti_lm=True, also=others, seed=1)):
            scored = found[-len(others):]
            assert [(c.ids, c.ended) for c in scored] == [(c.ids, c.ended) for c in others]
            exact = d.score([ctx] * len(others), [c.ids for c in others], [c.ended for c in others])
            np.testing.assert_allclose([c.logp for c in scored], exact, rtol=1e-4, atol=1e-4)
            empty = d.score([EMPTY_CONTEXT] * len(found), [c.ids for c in found], [c.ended for c in found])
            np.testing.assert_allclose([c.anti for c in found], empty, rtol=1e-4, atol=1e-4)
        assert all(c.anti < 0 for c in found)
        rescored = d.rescore(ctx, others, anti_lm=True)  # the same scores without a search
        np.testing.assert_allclose([c.logp for c in rescored], exact, rtol=1e-4, atol=1e-4)
        np.testing.assert_allclose([c.anti for c in rescored], [c.anti for c in scored], rtol=1e-4, atol=1e-4)
        nbest = d.beam(ctx, beam_size=3, max_len=8, anti_lm=True, also=others)[:-len(others)]
        assert [(c.ids, c.logp) for c in nbest] == [(c.ids, c.logp) for c in plain]  # riders change nothing


def test_the_search_is_traced_once_for_any_context_length(bot):
    import tensorflow as tf
    if keras.backend.backend() != "tensorflow":
        pytest.skip("tracing is TensorFlow's")
    d = Decoder(bot.model)
    for ctx in CONTEXTS:
        d.beam(np.array(ctx, np.int32), beam_size=3, max_len=6)
    (search,) = d._searches.values()
    assert isinstance(search, tf.types.experimental.GenericFunction)
    assert search.experimental_get_tracing_count() == 1


def test_only_the_pinned_and_the_most_recently_used_searches_are_kept(rigged):
    d = Decoder(rigged({}).model, searches=2)
    ctx = np.array([5, 6, 7], np.int32)
    d.greedy(ctx, max_len=4)
    d.pin()  # a server's defaults
    first = d.greedy(ctx, max_len=5)
    d.greedy(ctx, max_len=6)
    (five,) = [key for key in d._searches if key[2] == 5]  # the key's third field is max_len
    search = d._searches[five]
    assert d.greedy(ctx, max_len=5) == first  # used again: now the most recent
    d.greedy(ctx, max_len=7)
    d.greedy(ctx, max_len=4)
    assert [key[2] for key in d._searches] == [5, 7]  # max_len 6, the least recently used, was dropped
    assert d._searches[five] is search  # kept, not traced again
    assert [key[2] for key in d._pinned] == [4]  # never dropped, and not counted among the two


@pytest.mark.parametrize("n", [1, 3])
def test_no_repeated_ngram_within_the_reply(rigged, n):
    d = rigged({7: 30.0})
    ctx = np.array([5, 6], np.int32)
    assert d.greedy(ctx, max_len=10, no_repeat_ngram=0)[0].ids == [7] * 10  # what the ban fights
    for found in (d.greedy(ctx, max_len=10, no_repeat_ngram=n), d.beam(ctx, beam_size=4, max_len=10, no_repeat_ngram=n),
                  d.sample(ctx, samples=4, max_len=10, no_repeat_ngram=n, seed=0)):
        for c in found:
            assert 7 in c.ids
            assert len(set(ngrams(c.ids, n))) == len(ngrams(c.ids, n)), c.ids


def test_no_ngram_of_the_context_in_the_reply(rigged):
    d = rigged({7: 30.0, 8: 29.0})
    ctx = np.array([7, 8, 7, 7, SEP_ID, 8, 8], np.int32)
    for c in d.beam(ctx, beam_size=4, max_len=10, no_repeat_ngram=0, block_context_ngram=2):
        assert not set(ngrams(c.ids, 2)) & set(ngrams(ctx.tolist(), 2)), c.ids
        assert {7, 8} & set(c.ids)


def test_min_length_holds_and_eos_ends_the_reply(rigged):
    d = rigged({EOS_ID: 30.0})
    ctx = np.array([5, 6], np.int32)
    assert [c.ids for c in d.greedy(ctx, max_len=10, min_len=0)] == [[]]
    for min_len in (1, 4):
        for found in (d.greedy(ctx, max_len=10, min_len=min_len), d.beam(ctx, beam_size=4, max_len=10, min_len=min_len),
                      d.sample(ctx, samples=4, max_len=10, min_len=min_len, seed=1)):
            assert all(len(c.ids) == min_len and c.ended for c in found)


def test_unk_specials_and_banned_words_are_never_emitted(rigged):
    d = rigged({UNK_ID: 50.0, SEP_ID: 45.0, BANNED: 40.0})
    ctx = np.array([5, UNK_ID, 6], np.int32)
    found = (d.greedy(ctx, max_len=10) + d.beam(ctx, beam_size=4, max_len=10)
             + d.sample(ctx, samples=4, max_len=10, seed=2))
    assert found
    for c in found:
        assert not set(c.ids) & {*NEVER, BANNED}, c.ids


def test_decode_features_are_decode_step_before_its_output_projection(bot):
    from keras import ops
    memory, states = bot.model.encode(np.array([CONTEXTS[1]], np.int32))
    prev = np.array([5], np.int32)
    logits, new = bot.model.decode_step(prev, states, memory)
    features, same = bot.model.decode_features(prev, states, memory)
    np.testing.assert_allclose(ops.convert_to_numpy(bot.model.output_layer(features)), ops.convert_to_numpy(logits),
                               rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(ops.convert_to_numpy(same[-1][0]), ops.convert_to_numpy(new[-1][0]))


def test_a_shortlisted_search_uses_only_its_words_and_scores_over_them(bot, xla):
    full, short = xla, Decoder(bot.model, shortlist=12)
    ctx = np.array(CONTEXTS[1], np.int32)
    assert full.shortlist.of(ctx) is None and Decoder(bot.model, shortlist=10**6).shortlist.of(ctx) is None
    ids = short.shortlist.of(ctx, [40, 41])
    assert set(ids) == set(range(12)) | set(ctx.tolist()) | {40, 41}
    with_anti = short.beam(ctx, beam_size=3, max_len=8, shortlist=ids, anti_lm=True,
                           also=[Candidate([40, 41], 0, True)])
    found = with_anti + short.sample(ctx, samples=3, max_len=8, shortlist=ids, seed=0)
    assert all(set(c.ids) <= set(ids.tolist()) for c in found)
    exact = short.score([ctx] * len(found), [c.ids for c in found], [c.ended for c in found], shortlist=ids)
    np.testing.assert_allclose([c.logp for c in found], exact, rtol=1e-4, atol=1e-4)
    empty = short.score([EMPTY_CONTEXT] * len(with_anti), [c.ids for c in with_anti], [c.ended for c in with_anti],
                        shortlist=ids)
    np.testing.assert_allclose([c.anti for c in with_anti], empty, rtol=1e-4, atol=1e-4)
    with pytest.raises(ValueError, match="most frequent"):  # its frequent words are one slice of the kernel
        short.beam(ctx, beam_size=3, max_len=8, shortlist=ids[1:])
    everything = np.arange(full.vocab_size, dtype=np.int32)  # a shortlist of every word changes nothing
    assert short.beam(ctx, beam_size=3, max_len=8, shortlist=everything) == full.beam(ctx, beam_size=3, max_len=8)


def test_a_streamed_reply_is_the_greedy_or_the_single_sample_reply_word_by_word(bot, xla):
    for d in (xla, Decoder(bot.model, xla=False, shortlist=12)):
        for ctx in CONTEXTS:
            ctx = np.array(ctx, np.int32)
            ids = d.shortlist.of(ctx)
            common = dict(max_len=8, min_len=2, no_repeat_ngram=2, block_context_ngram=2, shortlist=ids)
            *words, done = d.stream(ctx, **common)
            (greedy,) = d.greedy(ctx, **common)
            assert words == greedy.ids == done.ids and done.ended == greedy.ended
            assert done.logp == pytest.approx(greedy.logp, abs=1e-4)
            drawn = dict(temperature=1.3, top_k=5, top_p=0.9, seed=3)
            *words, done = d.stream(ctx, sampling=drawn, **common)
            (sample,) = d.sample(ctx, samples=1, **drawn, **common)
            assert words == sample.ids == done.ids and done.logp == pytest.approx(sample.logp, abs=1e-4)
