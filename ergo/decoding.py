"""The Decoder: a trained Seq2Seq's compiled searches (ergo/searches.py) and scoring of given replies.

Searches: greedy, beam search and sampling (temperature, top-k, top-p, seeded), each ONE compiled function
with the whole loop inside (tf.function on TensorFlow, traced once per shape of search, and compiled by
XLA): the encoder runs once, each step is one batched decoder step for the whole beam, and the loop stops
as soon as the live hypotheses stop beating the finished ones. A Python-level predict() per step would
cost more than the step itself, and XLA's fused loop runs a search faster on a CPU than TensorFlow's
op-by-op one (docs/BENCHMARKS.md). `stream` is the exception: a reply drawn word by word, one compiled
step a call, so that a front end can show each word as it comes.

XLA compiles once per shape of its inputs (a second or two), so a search pads them to a few sizes: the
context on the left to a multiple of CONTEXT_BUCKET, a shortlist (ergo/shortlist.py) with the next
frequent words to a multiple of SHORTLIST_BUCKET, other candidates to multiples of TARGET_ROWS and
TARGET_LENGTH. The loops are written in keras.ops, so on the jax and torch backends the same code runs
eagerly.

Never emitted: <pad>, <unk>, <go>, <sep>, any `banned` id (the safety filter's words), <eos> before
`min_len`, a token that would repeat an n-gram of the reply (`no_repeat_ngram`) or of the context
(`block_context_ngram`).

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
from typing import Iterator, Sequence

import keras
import numpy as np
from keras import ops

from .batching import pad
from .searches import beam_search, constrained, context_ngrams, draw_search, draw_start, draw_step, \
    greedy_pick, length_penalty, sampling_pick
from .shortlist import SHORTLIST_BUCKET, Shortlist, round_up
from .vocab import EOS_ID, GO_ID, PAD_ID, SEP_ID, UNK_ID

__all__ = ["Candidate", "Decoder", "EMPTY_CONTEXT", "NEVER", "SEARCHES", "SHORTLIST_BUCKET", "length_penalty"]

NEVER = (PAD_ID, UNK_ID, GO_ID, SEP_ID)
EMPTY_CONTEXT = np.array([PAD_ID], dtype=np.int32)  # encodes to zero states: the decoder as a plain LM
CONTEXT_BUCKET = 8       # a search's context is left-padded to a multiple of this
TARGET_ROWS, TARGET_LENGTH = 4, 8   # ... and other candidates padded to multiples of these
# Compiled searches a Decoder keeps, the least recently used dropped first: each shape of search holds
# some of TensorFlow's memory (its graph and executor; docs/RELIABILITY.md) until it is dropped, and is
# traced again (a second or two) when asked for after that.
SEARCHES = 8
# Steps a streamed reply runs per compiled call after its first word: each call costs a few tenths of a ms
# on top of its steps, so one a word lost a third of the web's throughput (docs/BENCHMARKS.md).
STREAM_STEPS = 4
_MALLOC_TRIM = getattr(ctypes.CDLL(None), "malloc_trim", None)  # glibc's; None elsewhere


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


def _compile(fn, signature, jit: bool = False):
    """One trace per search shape on TensorFlow (no autograph: the loops are explicit while_loops), and
    with `jit` one XLA compile per shape of the inputs; the other backends run the loop eagerly.
    `signature`: [(shape, dtype)] of the arguments, or None for nests of tensors (traced per shape)."""
    if keras.backend.backend() == "tensorflow":
        import tensorflow as tf
        specs = None if signature is None else [tf.TensorSpec(shape, dtype) for shape, dtype in signature]
        return tf.function(fn, input_signature=specs, reduce_retracing=True, autograph=False, jit_compile=jit)
    return fn


def release() -> None:
    """Give what was dropped (a compiled search, a bot the web swapped out) back to the system: a graph sits in
    reference cycles that only a collection frees (quick where what was loaded before is frozen, gc.freeze,
    as the web app does), and glibc keeps freed pages for reuse until trimmed (docs/RELIABILITY.md measures
    both)."""
    gc.collect()
    if _MALLOC_TRIM is not None:
        _MALLOC_TRIM(0)


def _round_context(context: np.ndarray) -> np.ndarray:
    return np.pad(context, (round_up(len(context), CONTEXT_BUCKET) - len(context), 0))


class Decoder:
    """Compiled searches and scoring for one Seq2Seq; `banned` ids are never generated.

    `shortlist`: the number of frequent words of a reply's shortlist (Shortlist; None: its default).
    `xla`: compile the searches with XLA (faster once compiled; each new shape of inputs first costs a
    compile of a second or two and some memory). `searches`: how many compiled searches to keep (SEARCHES).
    """

    def __init__(self, model, banned: Sequence[int] = (), shortlist: int | None = None, xla: bool = True,
                 searches: int = SEARCHES):
        self.model = model
        self.vocab_size = int(model.vocab_size)
        self.banned = np.unique(np.asarray([*NEVER, *banned], dtype=np.int32))
        self.shortlist = Shortlist(self.vocab_size, shortlist)
        self.xla = xla
        # Compiled by XLA, a search reads the frequent words' output columns from a contiguous copy made
        # once, not sliced out of the kernel for every reply (faster greedy at base). A Decoder serves a
        # trained model, whose weights no longer change. (Not without XLA: the web's workers keep their memory.)
        self._frequent_kernel = None
        if xla and self.shortlist.size:
            kernel = ops.convert_to_numpy(model.output_layer.kernel)
            self._frequent_kernel = ops.convert_to_tensor(np.ascontiguousarray(kernel[:, :self.shortlist.size]))
        self._searches: OrderedDict = OrderedDict()  # key -> compiled search, the most recently used last
        self._streams: OrderedDict = OrderedDict()   # the same for streamed replies (Decoder.stream)
        self.max_searches = searches
        self._pinned: dict = {}  # key -> compiled search kept for good (pin)
        self._scores: dict = {}  # by shortlist or not: two at most

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
        fn = self._search("sample", samples, max_len, no_repeat_ngram, block_context_ngram, shortlist is not None,
                          anti_lm, bool(also), self._top_k(top_k, shortlist))
        ctx, targets, ids = self._inputs(context, also, shortlist)
        return self._run(fn, also, ctx, np.int32(min_len), np.float32(temperature), np.float32(top_p),
                         np.int32(seed % 2**31), self.banned, targets, *ids)

    def stream(self, context: np.ndarray, *, max_len: int = 20, min_len: int = 1, no_repeat_ngram: int = 3,
               block_context_ngram: int = 0, shortlist: np.ndarray | None = None,
               sampling: dict | None = None) -> Iterator[int | Candidate]:
        """One reply drawn word by word: yields each word id as it is chosen, then the Candidate, the same
        that `greedy` (or, with `sampling` = dict(temperature=, top_k=, top_p=, seed=), `sample` with one
        sample) returns. The first word comes from a compiled call of its own, then STREAM_STEPS words a
        call, instead of one call for the whole loop: words can be shown as they are chosen."""
        sampling = dict(sampling or {})
        top_k = self._top_k(sampling.pop("top_k", 0), shortlist) if sampling else 0
        key = ("stream", max_len, no_repeat_ngram, block_context_ngram, shortlist is not None, top_k, bool(sampling))
        fns = self._compiled(key, lambda: _Stream(*self._stream_fns(max_len, no_repeat_ngram, block_context_ngram,
                                                                    top_k, bool(sampling))))
        ctx, _, ids = self._inputs(context, (), shortlist)
        drawn = () if not sampling else (np.float32(sampling["temperature"]), np.float32(sampling["top_p"]),
                                         np.int32(sampling["seed"] % 2**31))
        ctx, min_len = ops.convert_to_tensor(ctx), ops.convert_to_tensor(np.int32(min_len))
        begin, advance = fns.graphs(ctx, ids, lambda memory, loop: (ctx, min_len, self.banned, memory, loop,
                                                                    np.int32(1), *drawn, *ids))
        memory, loop = begin(ctx, *ids)
        words, steps = [], 1  # the first word alone, as soon as it is chosen; then STREAM_STEPS a call
        while True:
            loop = advance(ctx, min_len, self.banned, memory, loop, np.int32(steps), *drawn, *ids)
            t, length, ended = int(loop[0]), int(ops.convert_to_numpy(loop[5])[0]), bool(ops.convert_to_numpy(loop[6])[0])
            for column in ops.convert_to_numpy(loop[3])[0, len(words):length].tolist():
                words.append(column if not ids else int(ids[0][column]))
                yield words[-1]
            if ended or t >= max_len:
                break
            steps = STREAM_STEPS
        yield Candidate(words, float(ops.convert_to_numpy(loop[4])[0]), ended)

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

    def pin(self) -> None:
        """Keep the compiled searches made so far for good (a server's defaults, traced at its start), so
        that others taking turns in the cache never make the usual reply wait for a trace."""
        for cache in (self._searches, self._streams):
            self._pinned.update(cache)
            cache.clear()

    # -- inputs and the cache of compiled searches -----------------------------------------------

    def _top_k(self, top_k: int, shortlist) -> int:
        return min(top_k, self.shortlist.size if shortlist is not None else self.vocab_size) if top_k > 0 else 0

    def _ids(self, shortlist) -> tuple:
        return () if shortlist is None else (self.shortlist.check(shortlist),)

    @staticmethod
    def _context(context: np.ndarray) -> np.ndarray:
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
        return (_round_context(context), _targets(replies, ended, TARGET_ROWS, TARGET_LENGTH),
                self._ids(self.shortlist.filled(shortlist)))

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

    def _compiled(self, key: tuple, build):
        """The compiled search for `key`, made by `build()` unless kept; besides the pinned ones, only the
        `max_searches` most recently used are kept, so settings that vary without end cannot grow the
        memory without end. Streamed replies keep as many of their own: a page that streams and then
        regenerates a whole reply (the same settings) would otherwise trace one of the two every time."""
        if key in self._pinned:
            return self._pinned[key]
        cache = self._streams if key[0] == "stream" else self._searches
        fn = cache.pop(key, None)
        if fn is None:
            fn = build()
        cache[key] = fn  # now the most recently used
        if len(cache) > self.max_searches:
            cache.popitem(last=False)
            release()
        return fn

    # -- the model's side of a search ------------------------------------------------------------

    def _projection(self, ids, one_row: bool = False):
        """(kernels, bias) of the output layer, restricted to the shortlist's columns if there is one:
        the columns of its frequent words (a slice, or the copy made once), then a gather of the rest
        (a gather of every column is slower, and a transposed copy of the kernel for row gathers would
        cost its size in memory). A search of one row multiplies by the two apart, side by side
        (`_logits`); wider ones by the two joined into one kernel, which costs a copy per reply but runs
        their products faster."""
        kernel, bias = self.model.output_layer.kernel, self.model.output_layer.bias
        if ids is None:
            return (kernel,), bias
        n = self.shortlist.size
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
        return keras.tree.map_structure(rows, memory), keras.tree.map_structure(rows, states)

    def _step(self, memory, projection, ids=None):
        """The model as a search's step function (ergo/searches.py): columns of the shortlist `ids` (None:
        word ids) in, log-probabilities over them out."""
        def step(t, prev, states, tokens):
            words = prev if ids is None else ops.take(ids, prev)
            features, states = self.model.decode_features(words, states, memory)
            return ops.log_softmax(self._logits(features, projection), axis=-1), states
        return step

    def _rules(self, step, ctx, min_len, banned, ids, n_rep, n_ctx):
        """`step` with the bans (searches.constrained), in the output's columns: the banned words, <eos>
        before min_len, the reply's and the context's n-grams."""
        blocked = ops.scatter(banned[:, None], ops.ones_like(banned, dtype="float32"), (self.vocab_size,)) > 0
        if ids is not None:
            blocked, ctx = ops.take(blocked, ids), ops.take(self.shortlist.columns(ids), ctx)
        return constrained(step, blocked=blocked, min_len=min_len, n_rep=n_rep, context_grams=context_ngrams(ctx, n_ctx))

    def _searched(self, ctx, min_len, banned, also, ids, search, *, width, n_rep, n_ctx, anti_lm, has_also):
        """Encode once, run `search(step, states)` -> (columns, lengths, logp, ended) of `width` candidates,
        then teacher-force in one more loop what the ranking needs: the `also` targets under the context,
        and with anti_lm the candidates and the `also` targets under an empty context. Returns the
        search's four (columns made word ids), then anti [width], also_logp, also_anti [M]."""
        memory, states = self.model.encode_left_padded(ctx[None, :])
        projection = self._projection(ids, one_row=width == 1)
        if width:
            rows_memory, rows_states = self._tile_rows(memory, states, width, 0)
            step = self._rules(self._step(rows_memory, projection, ids), ctx, min_len, banned, ids, n_rep, n_ctx)
            tokens, lengths, logp, ended = search(step, rows_states)
            tokens = tokens if ids is None else ops.take(ids, tokens)
        else:
            tokens, lengths, logp, ended = (ops.zeros((0, 1), "int32"), ops.zeros((0,), "int32"),
                                            ops.zeros((0,), "float32"), ops.zeros((0,), "bool"))
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
        multiply by every weight at each of them, in products too small to run at a CPU's speed. Without
        XLA, a step at a time up to the longest row: TensorFlow's op-by-op temporaries for all steps at
        once grew a web worker's memory."""
        real = targets != PAD_ID
        columns = targets if ids is None else ops.take(self.shortlist.columns(ids), targets)
        if self.xla:
            decoder_in = ops.concatenate([ops.full((ops.shape(targets)[0], 1), GO_ID, "int32"), targets[:, :-1]], 1)
            logits = self._logits(self.model.decode_sequence(decoder_in, states, memory), projection)
            picked = ops.take_along_axis(logits, columns[..., None], axis=-1)[..., 0] - ops.logsumexp(logits, axis=-1)
            return ops.sum(ops.where(real, picked, 0.0), axis=-1)

        steps = ops.max(ops.sum(ops.cast(real, "int32"), axis=1), initial=0)
        step = self._step(memory, projection)

        def body(t, prev, states, total):
            logp, states = step(t, prev, states, None)
            picked = ops.take_along_axis(logp, ops.take(columns, t, axis=1)[:, None], axis=1)[:, 0]
            return t + 1, ops.take(targets, t, axis=1), states, total + ops.where(ops.take(real, t, axis=1), picked, 0.0)

        n_rows = ops.shape(targets)[0]
        loop = (ops.convert_to_tensor(0, "int32"), ops.full((n_rows,), GO_ID, "int32"), states,
                ops.zeros((n_rows,), "float32"))
        return ops.while_loop(lambda t, *_: t < steps, body, loop)[3]

    # -- the compiled searches -------------------------------------------------------------------

    def _beam_graph(self, ctx, min_len, alpha, banned, also, ids=None, *, max_len, **shape):
        width = shape["width"]
        return self._searched(ctx, min_len, banned, also, ids, lambda step, states: beam_search(
            step, states, width=width, max_len=max_len, alpha=alpha), **shape)

    def _greedy_graph(self, ctx, min_len, banned, also, ids=None, *, max_len, **shape):
        return self._searched(ctx, min_len, banned, also, ids, lambda step, states: draw_search(
            step, states, width=shape["width"], max_len=max_len, pick=greedy_pick), **shape)

    def _sample_graph(self, ctx, min_len, temperature, top_p, seed, banned, also, ids=None, *, top_k, max_len,
                      **shape):
        pick = sampling_pick(temperature, top_k, top_p, seed)
        return self._searched(ctx, min_len, banned, also, ids, lambda step, states: draw_search(
            step, states, width=shape["width"], max_len=max_len, pick=pick), **shape)

    def _rescore_graph(self, ctx, banned, also, ids=None, *, anti_lm):
        return self._searched(ctx, 0, banned, also, ids, None, width=0, n_rep=0, n_ctx=0, anti_lm=anti_lm,
                              has_also=True)

    def _stream_fns(self, max_len: int, n_rep: int, n_ctx: int, top_k: int, sampling: bool):
        """(begin, advance) of a reply drawn a few compiled steps a call: begin(ctx[, ids]) -> (memory, loop
        state); advance(ctx, min_len, banned, memory, loop, steps[, temperature, top_p, seed][, ids]) -> the
        loop state after up to `steps` more steps (searches.draw_step)."""
        def begin(ctx, ids=None):
            memory, states = self.model.encode_left_padded(ctx[None, :])
            return memory, draw_start(states, width=1, max_len=max_len)

        def advance(ctx, min_len, banned, memory, loop, steps, *rest):
            drawn, ids = (rest[:3], rest[3:]) if sampling else ((), rest)
            ids = ids[0] if ids else None
            step = self._rules(self._step(memory, self._projection(ids, one_row=True), ids), ctx, min_len, banned,
                               ids, n_rep, n_ctx)
            pick = sampling_pick(*drawn[:1], top_k, *drawn[1:]) if sampling else greedy_pick
            until = ops.minimum(loop[0] + steps, max_len)
            return ops.while_loop(lambda t, *rest: ops.logical_and(t < until, ~ops.all(rest[-1])),
                                  lambda *loop: draw_step(step, pick, loop), loop)
        return _compile(begin, None), _compile(advance, None, jit=self.xla)

    def _score_graph(self, enc, dec_in, target, ids=None):
        logits = self._logits(self.model.features(enc, dec_in), self._projection(ids))
        real = target != PAD_ID
        if ids is not None:  # target ids -> their columns in the shortlist
            target = ops.take(self.shortlist.columns(ids), target)
        picked = ops.take_along_axis(logits, target[..., None], axis=-1)[..., 0]
        tok_logp = picked - ops.logsumexp(logits, axis=-1)
        return ops.sum(ops.where(real, tok_logp, 0.0), axis=-1)


class _Stream:
    """A streamed reply's compiled pair (Decoder._stream_fns), and the graphs each traced for a shape of context
    and shortlist, which a stream calls directly: finding its graph among a function's traces at every call
    cost a third of a streamed reply at the quick preset (a reply makes 3 or 4 calls)."""

    MAX_SHAPES = 64  # a big vocabulary's shortlists come in many lengths: keep the graphs of so many, then anew

    def __init__(self, begin, advance):
        self.begin, self.advance, self._graphs = begin, advance, {}

    def graphs(self, ctx, ids, advance_args):
        """(begin, advance) for these inputs; `advance_args(memory, loop)`: advance's arguments, to find its graph."""
        if not hasattr(self.begin, "get_concrete_function"):  # not TensorFlow: the functions run as they are
            return self.begin, self.advance
        shapes = (tuple(ctx.shape), *(tuple(np.shape(i)) for i in ids))
        if shapes not in self._graphs:
            if len(self._graphs) >= self.MAX_SHAPES:
                self._graphs.clear()
            begin = self.begin.get_concrete_function(ctx, *ids)
            self._graphs[shapes] = begin, self.advance.get_concrete_function(*advance_args(*begin(ctx, *ids)))
        return self._graphs[shapes]


def _targets(replies: Sequence[Sequence[int]], ended: Sequence[bool], rows: int = 1, length: int = 1) -> np.ndarray:
    """[M, T] teacher-forcing targets: each reply, then <eos> if it ended; <pad> after. Rows and
    columns of <pad> only round M up to a multiple of `rows` and T to one of `length`."""
    if not len(replies):
        return np.zeros((0, 1), np.int32)
    out = pad([np.asarray(list(r) + [EOS_ID] * bool(e), np.int32) for r, e in zip(replies, ended)])
    m, t = out.shape
    return np.pad(out, ((0, round_up(m, rows) - m), (0, round_up(t, length) - t)))
