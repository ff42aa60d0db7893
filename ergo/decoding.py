"""Turning a context into candidate replies with a trained Seq2Seq, and scoring given replies.

Searches: greedy, beam search and sampling (temperature, top-k, top-p, seeded). Each search is ONE
compiled function with the whole loop inside (tf.function on TensorFlow, traced once per shape of
search, and compiled by XLA): the encoder runs once, each step is one batched decoder step for the
whole beam, and the loop stops as soon as the live hypotheses stop beating the finished ones. A
Python-level predict() per step would cost more than the step itself, and XLA's fused loop runs a
search up to twice as fast on a CPU as TensorFlow's op-by-op one (its products of one row by a matrix
also read weights faster here: 43 GB/s against 20-27). Greedy picks each token by argmax, not as a
beam of one: a top-k is a sort in XLA on a CPU, and sorting the shortlist at every step costs more
than the step.
XLA compiles once per shape of its inputs (a second or two), so a search pads them to a few sizes:
the context on the left to a multiple of CONTEXT_BUCKET, a shortlist with the next frequent words to
a multiple of SHORTLIST_BUCKET, other candidates to multiples of TARGET_ROWS and TARGET_LENGTH. The
loop is written in keras.ops, so on the jax and torch backends the same code runs eagerly.

Never emitted: <pad>, <unk>, <go>, <sep>, any `banned` id (the safety filter's words), <eos> before
`min_len`, a token that would repeat an n-gram of the reply (`no_repeat_ngram`) or of the context
(`block_context_ngram`).

A step's cost is mostly reading the output projection (hidden x vocabulary). With a `shortlist`
(vocabulary selection, for vocabularies over 2 x SHORTLIST words), a reply is chosen among the
SHORTLIST most frequent words (ids run by falling frequency), the context's words and the words of
any other candidate: the projection shrinks to those columns and the softmax is over them. A
shortlist is sorted, so it starts with the frequent words: their columns are one slice of the
kernel, and only the few others are gathered.

Ranking needs more than the search: log p(reply | context) of replies found elsewhere (retrieval)
and, for MMI-antiLM reranking (Li et al. 2016), log p(reply | empty context) of every candidate.
A search computes both in the same compiled call (`also=`, `anti_lm=`): after the search loop, one
teacher-forced loop over all of them, so the context is encoded once per reply. `score` does the
same for batches of any contexts (evaluation: recall@k, always over the full vocabulary).
"""
from __future__ import annotations

import ctypes
import functools
import gc
from collections import OrderedDict
from dataclasses import dataclass
from typing import Sequence

import keras
import numpy as np
from keras import ops

from .batching import pad
from .vocab import EOS_ID, GO_ID, PAD_ID, SEP_ID, UNK_ID

NEVER = (PAD_ID, UNK_ID, GO_ID, SEP_ID)
EMPTY_CONTEXT = np.array([PAD_ID], dtype=np.int32)  # encodes to zero states: the decoder as a plain LM
SHORTLIST = 4000   # frequent words every reply may use when the vocabulary is shortlisted
CONTEXT_BUCKET = 8       # a search's context is left-padded to a multiple of this
SHORTLIST_BUCKET = 256   # ... its shortlist (of SHORTLIST_BUCKET frequent words or more) filled to one of this
TARGET_ROWS, TARGET_LENGTH = 4, 8   # ... and other candidates padded to multiples of these
# Compiled searches a Decoder keeps, the least recently used dropped first: each shape of search holds
# 15-25 MB of TensorFlow's memory (its graph and executor, the same at every preset) until it is dropped,
# and is traced again (a second or two) when asked for after that.
SEARCHES = 8
_MALLOC_TRIM = getattr(ctypes.CDLL(None), "malloc_trim", None)  # glibc's; None elsewhere
_NEG = float("-inf")


@dataclass
class Candidate:
    ids: list[int]      # reply ids, without <eos>
    logp: float         # log p(ids [+ <eos>] | context) under the model
    ended: bool         # True: the reply ended with <eos> (False: cut at max_len)
    anti: float = 0.0   # log p(ids [+ <eos>] | empty context), when asked for (MMI's anti-LM)

    @property
    def n_tokens(self) -> int:
        """Target tokens the log-probability covers (the reply, and <eos> when it ended)."""
        return len(self.ids) + int(self.ended)


def length_penalty(n_tokens, alpha: float):
    """n ** alpha: alpha 0 ranks by total log-probability (short replies win), alpha 1 by the mean
    log-probability per token. Works on numbers and on tensors."""
    return n_tokens ** alpha


def _compile(fn, signature, jit: bool = False):
    """One trace per search shape on TensorFlow (no autograph: the loops are explicit while_loops), and
    with `jit` one XLA compile per shape of the inputs; the other backends run the loop eagerly."""
    if keras.backend.backend() == "tensorflow":
        import tensorflow as tf
        specs = [tf.TensorSpec(shape, dtype) for shape, dtype in signature]
        return tf.function(fn, input_signature=specs, reduce_retracing=True, autograph=False, jit_compile=jit)
    return fn


def _release() -> None:
    """Give a dropped search's memory back to the system: its graph sits in reference cycles that only a
    collection frees (quick where what was loaded before is frozen, gc.freeze, as the web app does), and
    glibc keeps freed pages for reuse until trimmed (half of them, else: a worker grew 100 MB, not 35)."""
    gc.collect()
    if _MALLOC_TRIM is not None:
        _MALLOC_TRIM(0)


def _round_up(n: int, bucket: int) -> int:
    return -(-n // bucket) * bucket


def _uniform(shape, seed, step):
    """Uniform noise in (0, 1) from a (seed, step) pair: the same seed gives the same samples."""
    backend = keras.backend.backend()
    if backend == "tensorflow":
        import tensorflow as tf
        return tf.random.stateless_uniform(shape, seed=ops.stack([seed, step]), minval=1e-7, maxval=1.0)
    if backend == "jax":
        import jax
        key = jax.random.fold_in(jax.random.PRNGKey(seed), step)
        return jax.random.uniform(key, shape, minval=1e-7, maxval=1.0)
    rng = np.random.default_rng([int(seed), int(step)])
    return ops.convert_to_tensor(rng.uniform(1e-7, 1.0, size=tuple(int(s) for s in shape)).astype("float32"))


def _map_states(states, fn):
    return tuple(tuple(fn(s) for s in layer) for layer in states)


class Decoder:
    """Compiled searches and scoring for one Seq2Seq; `banned` ids are never generated.

    `shortlist`: the number of frequent words of a reply's shortlist; None picks SHORTLIST for a
    vocabulary over 2 x SHORTLIST words and the full vocabulary otherwise; 0 never shortlists.
    `xla`: compile the searches with XLA (faster once compiled; each new shape of inputs first costs a
    compile of a second or two and some memory). `searches`: how many compiled searches to keep (SEARCHES).
    """

    def __init__(self, model, banned: Sequence[int] = (), shortlist: int | None = None, xla: bool = True,
                 searches: int = SEARCHES):
        self.model = model
        self.vocab_size = int(model.vocab_size)
        self.banned = np.unique(np.asarray([*NEVER, *banned], dtype=np.int32))
        if shortlist is None:
            shortlist = SHORTLIST if self.vocab_size > 2 * SHORTLIST else 0
        self.shortlist_size = shortlist if 0 < shortlist < self.vocab_size else 0
        self.xla = xla
        # Compiled by XLA, a search reads the frequent words' output columns from a contiguous copy made
        # once (8 MB at base), not sliced out of the kernel for every reply: greedy ~15 % faster at base.
        # A Decoder serves a trained model, whose weights no longer change. (Not without XLA: the web's
        # workers keep their memory.)
        self._frequent_kernel = None
        if xla and self.shortlist_size:
            kernel = ops.convert_to_numpy(model.output_layer.kernel)
            self._frequent_kernel = ops.convert_to_tensor(np.ascontiguousarray(kernel[:, :self.shortlist_size]))
        self._searches: OrderedDict = OrderedDict()  # key -> compiled search, the most recently used last
        self.max_searches = searches
        self._pinned: dict = {}  # key -> compiled search kept for good (pin)
        self._scores: dict = {}  # by shortlist or not: two at most

    def _frequent(self) -> np.ndarray:
        return np.arange(self.shortlist_size, dtype=np.int32)

    def shortlist(self, context: np.ndarray, *others: Sequence[int]) -> np.ndarray | None:
        """The ids a reply to `context` may use (None: all), sorted: the frequent words, <eos>, the
        context's words and those of `others` (candidates that must be scored on the same terms)."""
        if not self.shortlist_size:
            return None
        extra = np.concatenate([[EOS_ID], np.asarray(context, np.int32), *(np.asarray(o, np.int32) for o in others)])
        return np.concatenate([self._frequent(), np.unique(extra[extra >= self.shortlist_size]).astype(np.int32)])

    # -- public searches -------------------------------------------------------------------------
    # Each returns the search's candidates, then the `also` candidates (replies found elsewhere, e.g.
    # retrieved) with their log p(reply | context) filled in, in their order: one compiled call
    # encodes the context once for both. With anti_lm, every candidate's `anti` (log p(reply | empty
    # context)) is filled in by the same call.

    def beam(self, context: np.ndarray, *, beam_size: int = 5, max_len: int = 20, min_len: int = 1,
             length_penalty: float = 1.0, no_repeat_ngram: int = 3, block_context_ngram: int = 0,
             shortlist: np.ndarray | None = None, anti_lm: bool = False,
             also: Sequence[Candidate] = ()) -> list[Candidate]:
        """The n-best (up to `beam_size`), best first by log p / length_penalty(n_tokens)."""
        fn = self._search("beam", beam_size, max_len, no_repeat_ngram, block_context_ngram, shortlist is not None,
                          anti_lm, bool(also))
        ctx, targets, ids = self._inputs(context, also, shortlist)
        return self._run(fn, also, ctx, np.int32(min_len), np.float32(length_penalty), self.banned, targets, *ids)

    def greedy(self, context: np.ndarray, *, max_len: int = 20, min_len: int = 1, no_repeat_ngram: int = 3,
               block_context_ngram: int = 0, shortlist: np.ndarray | None = None, anti_lm: bool = False,
               also: Sequence[Candidate] = ()) -> list[Candidate]:
        """One reply: the most likely token at each step, until <eos> or max_len."""
        fn = self._search("greedy", 1, max_len, no_repeat_ngram, block_context_ngram, shortlist is not None,
                          anti_lm, bool(also))
        ctx, targets, ids = self._inputs(context, also, shortlist)
        return self._run(fn, also, ctx, np.int32(min_len), self.banned, targets, *ids)

    def sample(self, context: np.ndarray, *, samples: int = 1, max_len: int = 20, min_len: int = 1,
               temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0, seed: int = 0,
               no_repeat_ngram: int = 3, block_context_ngram: int = 0, shortlist: np.ndarray | None = None,
               anti_lm: bool = False, also: Sequence[Candidate] = ()) -> list[Candidate]:
        """`samples` independent replies, in the order drawn; top_k 0 and top_p 1 mean no cut-off.
        Each candidate's logp is under the model itself, not the tempered distribution."""
        k = min(top_k, self.shortlist_size if shortlist is not None else self.vocab_size) if top_k > 0 else 0
        fn = self._search("sample", samples, max_len, no_repeat_ngram, block_context_ngram, shortlist is not None,
                          anti_lm, bool(also), k)
        ctx, targets, ids = self._inputs(context, also, shortlist)
        return self._run(fn, also, ctx, np.int32(min_len), np.float32(temperature), np.float32(top_p),
                         np.int32(seed % 2**31), self.banned, targets, *ids)

    def rescore(self, context: np.ndarray, candidates: Sequence[Candidate], *, shortlist: np.ndarray | None = None,
                anti_lm: bool = False) -> list[Candidate]:
        """The candidates with log p(reply | context) (and with anti_lm their `anti`) filled in, by one
        compiled call that encodes the context once (no search)."""
        if not candidates:
            return []
        short = shortlist is not None
        sig = [([None], "int32"), ([None], "int32"), ([None, None], "int32")] + [([None], "int32")] * short
        fn = self._compiled(("rescore", short, anti_lm),
                            lambda: _compile(functools.partial(self._rescore_graph, anti_lm=anti_lm), sig))
        return self._run(fn, candidates, self._context(context), self.banned,
                         _targets([c.ids for c in candidates], [c.ended for c in candidates]), *self._ids(shortlist))

    def score(self, contexts: Sequence[np.ndarray], replies: Sequence[Sequence[int]],
              ended: Sequence[bool] | None = None, shortlist: np.ndarray | None = None) -> np.ndarray:
        """log p(reply [+ <eos>] | context) for each (context, reply) pair, in batches of any contexts
        (evaluation); with a shortlist (which must hold every reply's words), the softmax is over it."""
        if not len(replies):
            return np.zeros(0)
        ended = [True] * len(replies) if ended is None else ended
        go, eos = np.array([GO_ID], np.int32), np.array([EOS_ID], np.int32)
        replies = [np.asarray(r, dtype=np.int32) for r in replies]
        dec_in = pad([np.concatenate([go, r if e else r[:-1]]) for r, e in zip(replies, ended)])
        target = pad([np.concatenate([r, eos]) if e else r for r, e in zip(replies, ended)], width=dec_in.shape[1])
        enc = pad([c if len(c) else EMPTY_CONTEXT for c in contexts])
        short = shortlist is not None
        if short not in self._scores:
            sig = [([None, None], "int32")] * 3 + [([None], "int32")] * short
            self._scores[short] = _compile(self._score_graph, sig)
        return ops.convert_to_numpy(self._scores[short](enc, dec_in, target, *self._ids(shortlist))).astype(np.float64)

    # -- compiled pieces -------------------------------------------------------------------------

    def _ids(self, shortlist) -> tuple:
        if shortlist is None:
            return ()
        ids = np.asarray(shortlist, np.int32)
        if not np.array_equal(ids[:self.shortlist_size], self._frequent()):
            raise ValueError(f"a shortlist starts with the {self.shortlist_size} most frequent ids, as "
                             f"Decoder.shortlist makes it")
        return (ids,)

    def _context(self, context: np.ndarray) -> np.ndarray:
        context = np.asarray(context, dtype=np.int32)
        return context if len(context) else EMPTY_CONTEXT

    def _inputs(self, context, also: Sequence[Candidate], shortlist) -> tuple:
        """(context, `also` targets, shortlist as a tuple) for a search; padded to few shapes when XLA
        compiles it. A context left-padded encodes the same (see Seq2Seq.encode_left_padded), and
        <pad> is in no n-gram a reply can repeat."""
        context = self._context(context)
        replies, ended = [c.ids for c in also], [c.ended for c in also]
        if not self.xla:
            return context, _targets(replies, ended), self._ids(shortlist)
        context = np.pad(context, (_round_up(len(context), CONTEXT_BUCKET) - len(context), 0))
        return context, _targets(replies, ended, TARGET_ROWS, TARGET_LENGTH), self._ids(self._filled(shortlist))

    def _filled(self, shortlist: np.ndarray | None) -> np.ndarray | None:
        """A shortlist grown to a multiple of SHORTLIST_BUCKET with the next most frequent words it
        lacks (a search over a few more words, for few shapes to compile); small ones stay as they are."""
        if shortlist is None or self.shortlist_size < SHORTLIST_BUCKET:
            return shortlist
        ids = np.asarray(shortlist, np.int32)
        missing = min(_round_up(len(ids), SHORTLIST_BUCKET), self.vocab_size) - len(ids)
        extra = ids[self.shortlist_size:]  # the words past the frequent ones, sorted
        window = np.arange(self.shortlist_size, min(self.vocab_size, self.shortlist_size + len(extra) + missing),
                           dtype=np.int32)
        fill = np.setdiff1d(window, extra, assume_unique=True)[:missing]
        return np.concatenate([self._frequent(), np.union1d(extra, fill).astype(np.int32)])

    @staticmethod
    def _run(fn, also, *args) -> list[Candidate]:
        """Call a compiled search: its candidates (empty slots left out), then `also` with scores."""
        tokens, lengths, logp, ended, anti, also_logp, also_anti = (ops.convert_to_numpy(x) for x in fn(*args))
        found = [Candidate([int(i) for i in row[:n]], float(lp), bool(e), float(a))
                 for row, n, lp, e, a in zip(tokens, lengths, logp, ended, anti) if np.isfinite(lp)]
        return found + [Candidate(c.ids, float(lp), c.ended, float(a)) for c, lp, a in zip(also, also_logp, also_anti)]

    def _search(self, kind: str, width: int, max_len: int, n_rep: int, n_ctx: int, short: bool, anti_lm: bool,
                has_also: bool, top_k: int = 0):
        """The compiled search for one static shape (a partial, so that TensorFlow's retracing
        warning counts each shape apart instead of all of them as one function)."""
        def build():
            shape = dict(width=width, max_len=max_len, n_rep=n_rep, n_ctx=n_ctx, anti_lm=anti_lm, has_also=has_also)
            if kind == "beam":
                fn = functools.partial(self._beam_graph, **shape)
                sig = [([None], "int32"), ([], "int32"), ([], "float32")]
            elif kind == "greedy":
                fn = functools.partial(self._greedy_graph, **shape)
                sig = [([None], "int32"), ([], "int32")]
            else:
                fn = functools.partial(self._sample_graph, top_k=top_k, **shape)
                sig = [([None], "int32"), ([], "int32"), ([], "float32"), ([], "float32"), ([], "int32")]
            sig += [([None], "int32"), ([None, None], "int32")] + [([None], "int32")] * short
            return _compile(fn, sig, jit=self.xla)
        return self._compiled((kind, width, max_len, n_rep, n_ctx, short, anti_lm, has_also, top_k), build)

    def pin(self) -> None:
        """Keep the compiled searches made so far for good (a server's defaults, traced at its start), so
        that others taking turns in the cache never make the usual reply wait for a trace."""
        self._pinned.update(self._searches)
        self._searches.clear()

    def _compiled(self, key: tuple, build):
        """The compiled search for `key`, made by `build()` unless kept; besides the pinned ones, only the
        `max_searches` most recently used are kept, so settings that vary without end cannot grow the
        memory without end."""
        if key in self._pinned:
            return self._pinned[key]
        fn = self._searches.pop(key, None)
        if fn is None:
            fn = build()
        self._searches[key] = fn  # now the most recently used
        if len(self._searches) > self.max_searches:
            self._searches.popitem(last=False)
            _release()
        return fn

    def _projection(self, ids, one_row: bool = False):
        """(kernels, bias) of the output layer, restricted to the shortlist's columns if there is one:
        the columns of its frequent words (a slice, or the copy made once), then a gather of the rest
        (a gather of every column is 3 times slower, and a transposed copy of the kernel for row
        gathers would cost its size in memory). A search of one row multiplies by the two apart, side
        by side (`_logits`); wider ones by the two joined into one kernel, which costs a copy per reply
        but runs their products 10 % faster."""
        kernel, bias = self.model.output_layer.kernel, self.model.output_layer.bias
        if ids is None:
            return (kernel,), bias
        n = self.shortlist_size
        frequent = kernel[:, :n] if self._frequent_kernel is None else self._frequent_kernel
        kernels = (frequent, ops.take(kernel, ids[n:], axis=1))
        return (kernels if one_row else (ops.concatenate(kernels, 1),)), ops.take(bias, ids)

    @staticmethod
    def _logits(features, projection):
        """features [..., H] -> float32 logits [..., S]: one product per kernel of `_projection`, side by side."""
        kernels, bias = projection
        logits = [ops.matmul(features, ops.cast(k, features.dtype)) for k in kernels]
        logits = logits[0] if len(logits) == 1 else ops.concatenate(logits, -1)
        return ops.cast(logits + ops.cast(bias, features.dtype), "float32")

    def _tile_rows(self, memory, states, n_context, n_empty):
        """Memory and states for n_context rows of the encoded context, then n_empty rows of an empty
        one: a context of padding only encodes to zeros (zero states, outputs and mask)."""
        def rows(x):
            return ops.concatenate([ops.repeat(x, n_context, axis=0), ops.repeat(ops.zeros_like(x), n_empty, axis=0)], 0)
        return tuple(rows(m) for m in memory), _map_states(states, rows)

    def _step_logp(self, prev, states, memory, projection, space, tokens, t, min_len, ctx_ngrams, n_rep):
        """One decoder step for every hypothesis -> (log-probabilities [W, S] over the shortlist, or
        [W, V], with the forbidden tokens at -inf; new states). `space` holds what `_space` made."""
        logp, states = self._step(prev, states, memory, projection)
        blocked, eos, position = space
        never = ops.logical_or(blocked, ops.logical_and(eos, t < min_len))[None, :]
        if n_rep or ctx_ngrams is not None:
            never = ops.logical_or(never, self._ngram_bans(tokens, t, n_rep, ctx_ngrams, position,
                                                           ops.shape(logp)[-1]))
        return ops.where(never, _NEG, logp), states

    def _space(self, banned, ids):
        """What the steps' masks need once per reply, in the output's space (shortlist or vocabulary):
        the banned tokens, where <eos> is, and the map from word id to column (None: the identity)."""
        blocked = ops.scatter(banned[:, None], ops.ones_like(banned, dtype="float32"), (self.vocab_size,)) > 0
        if ids is None:
            return blocked, ops.arange(self.vocab_size) == EOS_ID, None
        return ops.take(blocked, ids), ids == EOS_ID, self._column_of(ids)

    def _column_of(self, ids):
        """[V]: each word id's column in the shortlist `ids` (0 for words not in it)."""
        return ops.scatter(ids[:, None], ops.arange(ops.shape(ids)[0]), (self.vocab_size,))

    def _step(self, prev, states, memory, projection):
        features, states = self.model.decode_features(prev, states, memory)
        return ops.log_softmax(self._logits(features, projection), axis=-1), states

    def _ngram_bans(self, tokens, t, n_rep, ctx_ngrams, position, size):
        """[W, size] True where the token would complete an n-gram already in the reply (size n_rep)
        or in the context (windows precomputed by `_context_ngrams`); `position` maps word ids to
        columns of a shortlist (None: columns are word ids)."""
        width, max_len = tokens.shape
        rows, cols, hits = [], [], []
        for n, grams in ((n_rep, None), (0, ctx_ngrams)):
            if grams is None and (not n or max_len < n):
                continue
            if grams is None:  # windows of the reply so far: starts j with j + n - 1 <= t - 1
                starts = np.arange(max_len - n + 1)
                windows = ops.take(tokens, starts[:, None] + np.arange(n - 1)[None, :], axis=1)  # [W, J, n-1]
                follow = ops.take(tokens, starts + n - 1, axis=1)                                # [W, J]
                valid = (ops.arange(len(starts)) <= t - n)[None, :]
            else:
                windows, follow = grams
                n = windows.shape[-1] + 1
                windows, follow = windows[None], ops.repeat(follow[None], width, axis=0)
                valid = t >= n - 1
            prefix = ops.take(tokens, ops.clip(t - n + 1 + np.arange(n - 1), 0, max_len - 1), axis=1)  # [W, n-1]
            match = ops.logical_and(ops.all(windows == prefix[:, None, :], axis=-1), valid)            # [W, J]
            rows.append(ops.broadcast_to(ops.arange(width)[:, None], ops.shape(follow)))
            cols.append(follow)
            hits.append(match)
        if not rows:
            return ops.zeros((width, size), dtype="bool")
        cols = ops.concatenate([ops.reshape(c, (-1,)) for c in cols], 0)
        index = ops.stack([ops.concatenate([ops.reshape(r, (-1,)) for r in rows], 0),
                           cols if position is None else ops.take(position, cols)], axis=1)
        counts = ops.scatter(index, ops.concatenate([ops.reshape(ops.cast(h, "float32"), (-1,)) for h in hits], 0),
                             (width, size))
        return counts > 0

    def _context_ngrams(self, ctx, n):
        """(windows [J, n-1], following token [J]) of every n-gram in the context, or None."""
        if not n:
            return None
        starts = ops.arange(ops.maximum(ops.shape(ctx)[0] - n + 1, 0))
        return ops.take(ctx, starts[:, None] + np.arange(n - 1)[None, :]), ops.take(ctx, starts + n - 1)

    def _searched(self, ctx, banned, also, ids, width, anti_lm, has_also, search):
        """Encode once, run `search(memory, states, space, projection)` -> (tokens, lengths, logp,
        ended) of `width` candidates, then teacher-force in one more loop what the ranking needs: the
        `also` targets under the context, and with anti_lm the candidates and the `also` targets under
        an empty context. Returns the search's four, then anti [width], also_logp, also_anti [M]."""
        memory, states = self.model.encode_left_padded(ctx[None, :])
        projection = self._projection(ids, one_row=width == 1)
        tokens, lengths, logp, ended = search(*self._tile_rows(memory, states, width, 0), self._space(banned, ids),
                                              projection)
        none = ops.zeros((0,), "float32")
        anti, also_logp, also_anti = ops.zeros((width,), "float32"), none, none
        if not (anti_lm or has_also):
            return tokens, lengths, logp, ended, anti, also_logp, also_anti
        n_also = ops.shape(also)[0] if has_also else 0
        under_context = [also] if has_also else []
        under_empty = []
        if anti_lm:  # the candidates, with <eos> where they ended
            eos_at = ops.logical_and(ops.arange(tokens.shape[1] + 1)[None, :] == lengths[:, None], ended[:, None])
            under_empty = [ops.where(eos_at, EOS_ID, ops.pad(tokens, [(0, 0), (0, 1)]))] + under_context
        targets = under_context + under_empty
        longest = ops.max(ops.stack([ops.shape(t)[1] for t in targets]))
        targets = ops.concatenate([ops.pad(t, [(0, 0), (0, longest - ops.shape(t)[1])]) for t in targets], 0)
        n_empty = (width + n_also) if anti_lm else 0
        sums = self._forced(*self._tile_rows(memory, states, n_also, n_empty), targets, projection, ids)
        if has_also:
            also_logp = sums[:n_also]
        if anti_lm:
            anti = sums[n_also:n_also + width]
            if has_also:
                also_anti = sums[n_also + width:]
        return tokens, lengths, logp, ended, anti, also_logp, also_anti

    def _forced(self, memory, states, targets, projection, ids):
        """Sum of log p(target) of each row [R, T] (<pad> targets count for nothing), teacher-forced.
        Compiled by XLA, all steps at once (Seq2Seq.decode_sequence): a loop of single steps would
        multiply by every weight at each of them, in products too small to run at a CPU's speed (the
        hybrid mode 14 % faster at base). Without XLA, a step at a time up to the longest row:
        TensorFlow's op-by-op temporaries for all steps at once grew a web worker by 40-70 MB."""
        real = targets != PAD_ID
        columns = targets if ids is None else ops.take(self._column_of(ids), targets)
        if self.xla:
            decoder_in = ops.concatenate([ops.full((ops.shape(targets)[0], 1), GO_ID, "int32"), targets[:, :-1]], 1)
            logits = self._logits(self.model.decode_sequence(decoder_in, states, memory), projection)
            picked = ops.take_along_axis(logits, columns[..., None], axis=-1)[..., 0] - ops.logsumexp(logits, axis=-1)
            return ops.sum(ops.where(real, picked, 0.0), axis=-1)

        steps = ops.max(ops.sum(ops.cast(real, "int32"), axis=1), initial=0)

        def body(t, prev, states, total):
            logp, states = self._step(prev, states, memory, projection)
            picked = ops.take_along_axis(logp, ops.take(columns, t, axis=1)[:, None], axis=1)[:, 0]
            return t + 1, ops.take(targets, t, axis=1), states, total + ops.where(ops.take(real, t, axis=1), picked, 0.0)

        n_rows = ops.shape(targets)[0]
        loop = (ops.convert_to_tensor(0, "int32"), ops.full((n_rows,), GO_ID, "int32"), states,
                ops.zeros((n_rows,), "float32"))
        return ops.while_loop(lambda t, *_: t < steps, body, loop)[3]

    def _beam_graph(self, ctx, min_len, alpha, banned, also, ids=None, *, width, max_len, n_rep, n_ctx,
                    anti_lm, has_also):
        """Beam search with a buffer of the `width` best finished hypotheses; a hypothesis reaching
        max_len counts as finished (cut). Stops once the buffer is full and the best live hypothesis,
        scored at its current length, does not beat the worst finished one (exact for alpha 0; for
        alpha > 0 the usual heuristic: a bound at max_len would keep every search to max_len)."""
        ctx_ngrams = self._context_ngrams(ctx, n_ctx)
        v = self.vocab_size if ids is None else ops.shape(ids)[0]
        k2 = min(2 * width, self.vocab_size)
        positions = ops.arange(max_len)[None, :]
        neg = ops.full((width,), _NEG, "float32")

        def search(memory, states, space, projection):
            def body(t, prev, states, tokens, cum, f_tokens, f_len, f_logp, f_score, f_ended, done):
                logp, states = self._step_logp(prev, states, memory, projection, space, tokens, t, min_len,
                                               ctx_ngrams, n_rep)
                val, flat = ops.top_k(ops.reshape(cum[:, None] + logp, (-1,)), k2)
                src, tok = flat // v, flat % v
                if ids is not None:
                    tok = ops.take(ids, tok)
                is_eos = tok == EOS_ID
                grown = ops.take(tokens, src, axis=0)
                grown = ops.where(ops.logical_and(positions == t, ~is_eos[:, None]), tok[:, None], grown)
                ends = ops.logical_or(is_eos, t == max_len - 1)
                score = ops.where(ends, val / length_penalty(ops.cast(t + 1, "float32"), alpha), _NEG)
                f_score, pick = ops.top_k(ops.concatenate([f_score, score], 0), width)
                f_tokens = ops.take(ops.concatenate([f_tokens, grown], 0), pick, axis=0)
                f_len = ops.take(ops.concatenate([f_len, ops.where(is_eos, t, t + 1)], 0), pick)
                f_logp = ops.take(ops.concatenate([f_logp, val], 0), pick)
                f_ended = ops.take(ops.concatenate([f_ended, is_eos], 0), pick)
                cum, keep = ops.top_k(ops.where(is_eos, _NEG, val), width)
                states = _map_states(states, lambda s: ops.take(s, ops.take(src, keep), axis=0))
                best_now = ops.max(cum) / length_penalty(ops.cast(t + 1, "float32"), alpha)
                done = ops.logical_or(ops.max(cum) == _NEG, ops.logical_and(ops.min(f_score) > _NEG,
                                                                             best_now <= ops.min(f_score)))
                return (t + 1, ops.take(tok, keep), states, ops.take(grown, keep, axis=0), cum,
                        f_tokens, f_len, f_logp, f_score, f_ended, done)

            loop = (ops.convert_to_tensor(0, "int32"),
                    ops.full((width,), GO_ID, "int32"),                                   # previous token
                    states,
                    ops.zeros((width, max_len), "int32"),                                 # live tokens
                    ops.concatenate([ops.zeros((1,), "float32"), neg[1:]], 0),            # live log p
                    ops.zeros((width, max_len), "int32"), ops.zeros((width,), "int32"),   # finished: tokens, length
                    neg, neg, ops.zeros((width,), "bool"),                                # log p, score, ended
                    ops.convert_to_tensor(False))
            out = ops.while_loop(lambda t, *rest: ops.logical_and(t < max_len, ~rest[-1]), body, loop)
            return out[5], out[6], out[7], out[9]

        return self._searched(ctx, banned, also, ids, width, anti_lm, has_also, search)

    def _greedy_graph(self, ctx, min_len, banned, also, ids=None, **shape):
        """The likeliest token at each step, by argmax (see the module's docstring)."""
        return self._drawn(ctx, min_len, banned, also, ids, lambda logp, t: ops.argmax(logp, axis=-1), **shape)

    def _sample_graph(self, ctx, min_len, temperature, top_p, seed, banned, also, ids=None, *, top_k, **shape):
        """`width` independent samples: at each step keep the top_k tokens (0: all), then the smallest
        set of them whose probability reaches top_p, and draw by the Gumbel-max trick."""
        def pick(logp, t):
            vals, idx = ops.top_k(logp / temperature, top_k or ops.shape(logp)[-1])
            probs = ops.exp(vals - ops.logsumexp(vals, axis=-1, keepdims=True))
            vals = ops.where(ops.cumsum(probs, axis=-1) - probs < top_p, vals, _NEG)
            gumbel = -ops.log(-ops.log(_uniform(ops.shape(vals), seed, t)))
            return ops.take_along_axis(idx, ops.argmax(vals + gumbel, axis=-1)[:, None], axis=1)[:, 0]

        return self._drawn(ctx, min_len, banned, also, ids, pick, **shape)

    def _drawn(self, ctx, min_len, banned, also, ids, pick, *, width, max_len, n_rep, n_ctx, anti_lm, has_also):
        """`width` rows, each grown by the column `pick(logp [W, S], t)` [W] chooses at every step until
        it draws <eos> or reaches max_len."""
        ctx_ngrams = self._context_ngrams(ctx, n_ctx)
        positions = ops.arange(max_len)[None, :]

        def search(memory, states, space, projection):
            def body(t, prev, states, tokens, total, length, ended):
                logp, states = self._step_logp(prev, states, memory, projection, space, tokens, t, min_len,
                                               ctx_ngrams, n_rep)
                pos = ops.cast(pick(logp, t), "int32")
                tok_logp = ops.take_along_axis(logp, pos[:, None], axis=1)[:, 0]
                tok = pos if ids is None else ops.take(ids, pos)
                total = total + ops.where(ended, 0.0, tok_logp)
                is_eos = ops.logical_and(tok == EOS_ID, ~ended)
                writes = ops.logical_and(~ended, ~is_eos)
                tokens = ops.where(ops.logical_and(positions == t, writes[:, None]), tok[:, None], tokens)
                length = length + ops.cast(writes, "int32")
                ended = ops.logical_or(ended, is_eos)
                return t + 1, tok, states, tokens, total, length, ended

            loop = (ops.convert_to_tensor(0, "int32"), ops.full((width,), GO_ID, "int32"), states,
                    ops.zeros((width, max_len), "int32"), ops.zeros((width,), "float32"),
                    ops.zeros((width,), "int32"), ops.zeros((width,), "bool"))
            out = ops.while_loop(lambda t, *rest: ops.logical_and(t < max_len, ~ops.all(rest[-1])), body, loop)
            return out[3], out[5], out[4], out[6]

        return self._searched(ctx, banned, also, ids, width, anti_lm, has_also, search)

    def _rescore_graph(self, ctx, banned, also, ids=None, *, anti_lm):
        def no_search(memory, states, space, projection):
            return (ops.zeros((0, 1), "int32"), ops.zeros((0,), "int32"), ops.zeros((0,), "float32"),
                    ops.zeros((0,), "bool"))
        return self._searched(ctx, banned, also, ids, 0, anti_lm, True, no_search)

    def _score_graph(self, enc, dec_in, target, ids=None):
        logits = self._logits(self.model.features(enc, dec_in), self._projection(ids))
        real = target != PAD_ID
        if ids is not None:  # target ids -> their columns in the shortlist
            target = ops.take(self._column_of(ids), target)
        picked = ops.take_along_axis(logits, target[..., None], axis=-1)[..., 0]
        tok_logp = picked - ops.logsumexp(logits, axis=-1)
        return ops.sum(ops.where(real, tok_logp, 0.0), axis=-1)


def _targets(replies: Sequence[Sequence[int]], ended: Sequence[bool], rows: int = 1, length: int = 1) -> np.ndarray:
    """[M, T] teacher-forcing targets: each reply, then <eos> if it ended; <pad> after. Rows and
    columns of <pad> only round M up to a multiple of `rows` and T to one of `length`."""
    if not len(replies):
        return np.zeros((0, 1), np.int32)
    out = pad([np.asarray(list(r) + [EOS_ID] * bool(e), np.int32) for r, e in zip(replies, ended)])
    m, t = out.shape
    return np.pad(out, ((0, _round_up(m, rows) - m), (0, _round_up(t, length) - t)))
