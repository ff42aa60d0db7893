"""The searches, as loops over a step function, in keras.ops: no model in here.

A step function `step(t, prev, states, tokens) -> (logp [W, S], states)` gives, for each of W rows,
log-probabilities over S output columns (the vocabulary, or a shortlist of it) after the row's previous
column `prev` [W]; `tokens` [W, max_len] holds each row's columns so far, and `states` is any nest of
[W, ...] tensors. A search returns columns; the caller maps them to words. This is the shape of
OpenNMT-tf's `dynamic_decode(symbols_to_logits_fn)` and keras-hub's samplers, so a search is tested
with scripted log-probabilities, and the Decoder (ergo/decoding.py) wires it to the model.

    beam_search    the n-best, with a buffer of finished hypotheses and an early stop
    draw_search    each row grown by a `pick`: greedy (argmax) or sampling (top-k, top-p, temperature)
    draw_step      one step of draw_search, for a reply streamed word by word
    constrained    a step with the bans: never-words, <eos> before min_len, repeated n-grams

Greedy picks each token by argmax, not as a beam of one: a top-k is a sort, and in XLA on a CPU sorting
the shortlist at every step costs more than the step. The loops are explicit while_loops, so one
compiled call runs a whole search (tf.function and XLA on TensorFlow; eagerly on the other backends).
"""
from __future__ import annotations

import keras
import numpy as np
from keras import ops

from .vocab import EOS_ID, GO_ID

NEG = float("-inf")


def length_penalty(n_tokens, alpha: float):
    """n ** alpha: alpha 0 ranks by total log-probability (short replies win), alpha 1 by the mean
    log-probability per token. Works on numbers and on tensors."""
    return n_tokens ** alpha


def reorder(states, index):
    """Every tensor of a nest of states, its rows taken at `index`."""
    return keras.tree.map_structure(lambda s: ops.take(s, index, axis=0), states)


def beam_search(step, states, *, width: int, max_len: int, alpha, go: int = GO_ID, eos: int = EOS_ID):
    """-> (tokens [W, max_len], lengths [W], logp [W], ended [W]) of the `width` best finished hypotheses,
    best first by log p / length_penalty(n_tokens, alpha); empty slots have logp -inf. A hypothesis
    reaching max_len counts as finished (cut, ended False). `states` are for `width` rows. Stops once the
    buffer is full and the best live hypothesis, scored at its current length, does not beat the worst
    finished one (exact for alpha 0; for alpha > 0 the usual heuristic: a bound at max_len would keep
    every search to max_len)."""
    positions = ops.arange(max_len)[None, :]
    neg = ops.full((width,), NEG, "float32")

    def body(t, prev, states, tokens, cum, f_tokens, f_len, f_logp, f_score, f_ended, done):
        logp, states = step(t, prev, states, tokens)
        size = ops.shape(logp)[-1]
        val, flat = ops.top_k(ops.reshape(cum[:, None] + logp, (-1,)), min(2 * width, logp.shape[-1] or 2 * width))
        src, tok = flat // size, flat % size
        is_eos = tok == eos
        grown = ops.take(tokens, src, axis=0)
        grown = ops.where(ops.logical_and(positions == t, ~is_eos[:, None]), tok[:, None], grown)
        ends = ops.logical_or(is_eos, t == max_len - 1)
        score = ops.where(ends, val / length_penalty(ops.cast(t + 1, "float32"), alpha), NEG)
        f_score, pick = ops.top_k(ops.concatenate([f_score, score], 0), width)
        f_tokens = ops.take(ops.concatenate([f_tokens, grown], 0), pick, axis=0)
        f_len = ops.take(ops.concatenate([f_len, ops.where(is_eos, t, t + 1)], 0), pick)
        f_logp = ops.take(ops.concatenate([f_logp, val], 0), pick)
        f_ended = ops.take(ops.concatenate([f_ended, is_eos], 0), pick)
        cum, keep = ops.top_k(ops.where(is_eos, NEG, val), width)
        states = reorder(states, ops.take(src, keep))
        best_now = ops.max(cum) / length_penalty(ops.cast(t + 1, "float32"), alpha)
        done = ops.logical_or(ops.max(cum) == NEG,
                              ops.logical_and(ops.min(f_score) > NEG, best_now <= ops.min(f_score)))
        return (t + 1, ops.take(tok, keep), states, ops.take(grown, keep, axis=0), cum,
                f_tokens, f_len, f_logp, f_score, f_ended, done)

    loop = (ops.convert_to_tensor(0, "int32"),
            ops.full((width,), go, "int32"),                                      # previous column
            states,
            ops.zeros((width, max_len), "int32"),                                 # live tokens
            ops.concatenate([ops.zeros((1,), "float32"), neg[1:]], 0),            # live log p: one row at first
            ops.zeros((width, max_len), "int32"), ops.zeros((width,), "int32"),   # finished: tokens, length
            neg, neg, ops.zeros((width,), "bool"),                                # log p, score, ended
            ops.convert_to_tensor(False))
    out = ops.while_loop(lambda t, *rest: ops.logical_and(t < max_len, ~rest[-1]), body, loop)
    return out[5], out[6], out[7], out[9]


def greedy_pick(logp, t):
    """The likeliest column of each row."""
    return ops.argmax(logp, axis=-1)


def sampling_pick(temperature, top_k: int, top_p, seed):
    """A pick that keeps the top_k columns (0: all), then the smallest set of them whose probability reaches
    top_p, and draws among them by the Gumbel-max trick, from noise seeded by (seed, t)."""
    def pick(logp, t):
        vals, idx = ops.top_k(logp / temperature, top_k or ops.shape(logp)[-1])
        probs = ops.exp(vals - ops.logsumexp(vals, axis=-1, keepdims=True))
        vals = ops.where(ops.cumsum(probs, axis=-1) - probs < top_p, vals, NEG)
        gumbel = -ops.log(-ops.log(uniform(ops.shape(vals), seed, t)))
        return ops.take_along_axis(idx, ops.argmax(vals + gumbel, axis=-1)[:, None], axis=1)[:, 0]
    return pick


def draw_start(states, *, width: int, max_len: int, go: int = GO_ID):
    """The loop state of a draw before its first step: (t, prev, states, tokens, logp, lengths, ended)."""
    return (ops.convert_to_tensor(0, "int32"), ops.full((width,), go, "int32"), states,
            ops.zeros((width, max_len), "int32"), ops.zeros((width,), "float32"),
            ops.zeros((width,), "int32"), ops.zeros((width,), "bool"))


def draw_step(step, pick, loop, *, eos: int = EOS_ID):
    """One step of every row of a draw: the loop state after it. A row that drew <eos> stays ended."""
    t, prev, states, tokens, total, length, ended = loop
    logp, states = step(t, prev, states, tokens)
    tok = ops.cast(pick(logp, t), "int32")
    total = total + ops.where(ended, 0.0, ops.take_along_axis(logp, tok[:, None], axis=1)[:, 0])
    is_eos = ops.logical_and(tok == eos, ~ended)
    writes = ops.logical_and(~ended, ~is_eos)
    at_t = ops.arange(ops.shape(tokens)[1])[None, :] == t
    tokens = ops.where(ops.logical_and(at_t, writes[:, None]), tok[:, None], tokens)
    return t + 1, tok, states, tokens, total, length + ops.cast(writes, "int32"), ops.logical_or(ended, is_eos)


def draw_search(step, states, *, width: int, max_len: int, pick, go: int = GO_ID, eos: int = EOS_ID):
    """-> (tokens [W, max_len], lengths, logp, ended): `width` rows, each grown by the column
    `pick(logp [W, S], t)` [W] chooses at every step until it draws <eos> or reaches max_len; logp is
    under `step`'s distribution, not the pick's (a tempered one, say)."""
    out = ops.while_loop(lambda t, *rest: ops.logical_and(t < max_len, ~ops.all(rest[-1])),
                         lambda *loop: draw_step(step, pick, loop, eos=eos),
                         draw_start(states, width=width, max_len=max_len, go=go))
    return out[3], out[5], out[4], out[6]


def constrained(step, *, blocked, min_len, n_rep: int = 0, context_grams=None, eos: int = EOS_ID):
    """`step` with its banned columns at -inf: `blocked` [S] (never), <eos> before `min_len`, a column
    that would repeat an n-gram of the reply (size `n_rep`) or complete one of `context_grams`
    (`context_ngrams` of the context's columns)."""
    at_eos = ops.arange(ops.shape(blocked)[0]) == eos

    def masked(t, prev, states, tokens):
        logp, states = step(t, prev, states, tokens)
        never = ops.logical_or(blocked, ops.logical_and(at_eos, t < min_len))[None, :]
        if n_rep or context_grams is not None:
            never = ops.logical_or(never, ngram_bans(tokens, t, n_rep, context_grams, ops.shape(logp)[-1]))
        return ops.where(never, NEG, logp), states
    return masked


def context_ngrams(ctx, n: int):
    """(windows [J, n-1], following column [J]) of every n-gram in the context `ctx` [C], or None."""
    if not n:
        return None
    starts = ops.arange(ops.maximum(ops.shape(ctx)[0] - n + 1, 0))
    return ops.take(ctx, starts[:, None] + np.arange(n - 1)[None, :]), ops.take(ctx, starts + n - 1)


def ngram_bans(tokens, t, n_rep: int, context_grams, size):
    """[W, size] True where the column would complete an n-gram already in the row's reply (size n_rep)
    or one of `context_grams`, at step t."""
    width, max_len = tokens.shape
    rows, cols, hits = [], [], []
    for n, grams in ((n_rep, None), (0, context_grams)):
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
    index = ops.stack([ops.concatenate([ops.reshape(r, (-1,)) for r in rows], 0),
                       ops.concatenate([ops.reshape(c, (-1,)) for c in cols], 0)], axis=1)
    counts = ops.scatter(index, ops.concatenate([ops.reshape(ops.cast(h, "float32"), (-1,)) for h in hits], 0),
                         (width, size))
    return counts > 0


def uniform(shape, seed, step):
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
