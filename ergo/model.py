"""The LSTM encoder-decoder with Luong attention, its masked loss and its training step.

keras.layers / keras.ops only, so the same code runs on the tensorflow, jax and torch backends.
Both LSTM stacks keep the fused (cuDNN) path: default activations, no recurrent dropout, right
padding; attention comes after the decoder LSTM, so teacher-forced training runs each stack as one
fused call. (Keras fuses masked LSTMs on TensorFlow only; on jax and torch the masked encoder runs
the generic loop and the unmasked decoder stays fused.) `Seq2Seq.encode` and `Seq2Seq.decode_step` share the layers and let a decoder run
one step at a time with the same arithmetic as the teacher-forced pass.
"""
from __future__ import annotations

import math
from typing import Iterable

import keras
import numpy as np
from keras import layers, ops

from .batching import count_target_tokens
from .choices import ATTENTION
from .config import ModelConfig, TrainConfig
from .errors import ErgoError
from .vocab import PAD_ID

ATTENTION_KINDS = tuple(ATTENTION)
_MASKED = -1e9  # score of a padded encoder position: exp() of it is 0, without inf-inf NaNs


def masked_loss(targets, logits, label_smoothing: float = 0.0, tokens_per_batch: float = 0.0):
    """Cross-entropy from logits averaged over real target tokens (padding counts for nothing).

    With `label_smoothing` e, the target is 1 - e on the true word and e spread evenly over the
    vocabulary: logsumexp(z) - (1 - e) z_true - e mean(z), without a one-hot [B, T, V] tensor.
    """
    logits = ops.cast(logits, "float32")  # a float16 softmax over the vocabulary loses too much
    losses = keras.losses.sparse_categorical_crossentropy(targets, logits, from_logits=True)
    if label_smoothing:
        uniform = ops.logsumexp(logits, axis=-1) - ops.mean(logits, axis=-1)  # cross-entropy to the uniform target
        losses = (1.0 - label_smoothing) * losses + label_smoothing * uniform
    return _masked_mean(losses, targets, tokens_per_batch)


def _per_replica(loss):
    """A replica's loss as Keras's TensorFlow trainer takes it under tf.distribute: divided by the replicas
    in sync, as its own losses are. The trainer sums the replicas' gradients and multiplies the logged loss
    back; undivided, gradients came out that many times too large and the logged perplexities squared (2 replicas)."""
    if keras.backend.backend() == "tensorflow":
        import tensorflow as tf
        replicas = tf.distribute.get_strategy().num_replicas_in_sync
        if replicas > 1:
            return loss / replicas
    return loss


def _masked_mean(losses, targets, tokens_per_batch: float = 0.0):
    """The loss of the real target tokens, over their number; or, given `tokens_per_batch`, over that
    constant instead, so that each token weighs the same in every batch (see Seq2Seq.tokens_per_batch)."""
    mask = ops.cast(ops.not_equal(targets, PAD_ID), losses.dtype)
    return ops.sum(losses * mask) / (tokens_per_batch or ops.maximum(ops.sum(mask), 1.0))


class Seq2Seq(keras.Model):
    """(encoder_in [B, Tc], decoder_in [B, Tr]) -> logits [B, Tr, V].

    With `sampled_softmax` > 0, a training call returns the features before the output projection
    instead, and `compute_loss` scores only the true class and the sampled ones.
    """

    def __init__(self, cfg: ModelConfig, vocab_size: int, embedding_dim: int,
                 embedding_matrix: np.ndarray | None = None, **kwargs):
        super().__init__(**kwargs)
        if cfg.attention not in ATTENTION_KINDS:
            raise ErgoError(f"unknown attention {cfg.attention!r}; choose one of: {', '.join(ATTENTION_KINDS)}")
        if cfg.bidirectional_encoder and cfg.hidden % 2:
            raise ErgoError("a bidirectional encoder needs an even hidden size (each direction gets half)")
        self.cfg, self.vocab_size = cfg, vocab_size
        self.enc_embedding = _embedding(vocab_size, embedding_dim, embedding_matrix, cfg.freeze_embeddings, "enc")
        self.dec_embedding = (self.enc_embedding if cfg.share_embeddings else
                              _embedding(vocab_size, embedding_dim, embedding_matrix, cfg.freeze_embeddings, "dec"))
        # A bidirectional first layer has hidden/2 units per direction: concatenated, its outputs and
        # states have the decoder's size, so no bridge layer is needed.
        first = (layers.Bidirectional(_lstm(cfg.hidden // 2, "encoder_0"), name="encoder_0_bi")
                 if cfg.bidirectional_encoder else _lstm(cfg.hidden, "encoder_0"))
        self.encoder = [first] + [_lstm(cfg.hidden, f"encoder_{i}") for i in range(1, cfg.layers)]
        self.decoder = [_lstm(cfg.hidden, f"decoder_{i}") for i in range(cfg.layers)]
        self.dropout = layers.Dropout(cfg.dropout)
        h = cfg.hidden
        if cfg.attention == "general":
            self.att_keys = _dense(h, h, "att_general", use_bias=False)
        elif cfg.attention == "additive":
            self.att_keys = _dense(h, h, "att_keys", use_bias=False)
            self.att_query = _dense(h, h, "att_query", use_bias=False)
            self.att_v = _dense(1, h, "att_v", use_bias=False)
        self.combine = _dense(h, 2 * h, "combine", activation="tanh")
        self.output_layer = _dense(vocab_size, h, "output")
        self.sample_seed = keras.random.SeedGenerator(0)

    # -- encoder ---------------------------------------------------------------------------------

    def encode(self, encoder_in, training=False):
        """-> (memory, states): memory = (values, keys, mask) for attention; states = ((h, c), ...) per layer."""
        mask = ops.not_equal(encoder_in, PAD_ID)
        x = self.enc_embedding(encoder_in)
        states = []
        for i, lstm in enumerate(self.encoder):
            if i:
                x = self.dropout(x, training=training)
            x, *s = lstm(x, mask=mask, training=training)
            if len(s) == 4:  # bidirectional: (h_fwd, c_fwd, h_bwd, c_bwd)
                s = [ops.concatenate([s[0], s[2]], -1), ops.concatenate([s[1], s[3]], -1)]
            states.append(tuple(s))
        keys = self.att_keys(x) if self.cfg.attention != "dot" else x
        return (x, keys, mask), tuple(states)

    def encode_left_padded(self, encoder_in):
        """`encode` for rows padded on the LEFT (a search pads its context to a few fixed lengths, so
        that one compiled search serves many contexts), in the same arithmetic: a padded step leaves
        the zero states as they are, so a row encodes as it would unpadded. The generic Keras loop
        multiplies each step's input by the input kernel apart; here one matrix product projects all
        steps, and the loop over steps reads only the recurrent kernel: at batch 1 on a CPU the steps
        are bound by reading weights."""
        mask = ops.not_equal(encoder_in, PAD_ID)
        x = self.enc_embedding(encoder_in)
        states = []
        for lstm in self.encoder:
            if isinstance(lstm, layers.Bidirectional):
                forward, (h_f, c_f) = _lstm_sequence(lstm.forward_layer.cell, x, mask)
                backward, (h_b, c_b) = _lstm_sequence(lstm.backward_layer.cell, ops.flip(x, 1), ops.flip(mask, 1))
                x = ops.concatenate([forward, ops.flip(backward, 1)], -1)
                states.append((ops.concatenate([h_f, h_b], -1), ops.concatenate([c_f, c_b], -1)))
            else:
                x, s = _lstm_sequence(lstm.cell, x, mask)
                states.append(s)
        keys = self.att_keys(x) if self.cfg.attention != "dot" else x
        return (x, keys, mask), tuple(states)

    # -- decoder ---------------------------------------------------------------------------------

    def _attend(self, query, memory, training):
        """Luong attention of decoder outputs [B, T, H] over the encoder, then the combined features."""
        values, keys, mask = memory
        if self.cfg.attention == "additive":
            hidden = ops.tanh(ops.expand_dims(self.att_query(query), 2) + ops.expand_dims(keys, 1))
            scores = ops.squeeze(self.att_v(hidden), -1)
        else:
            scores = ops.matmul(query, ops.transpose(keys, (0, 2, 1)))
        scores = ops.where(ops.expand_dims(mask, 1), scores, _MASKED)
        context = ops.matmul(ops.softmax(scores, axis=-1), values)
        features = self.combine(ops.concatenate([query, context], -1))
        return self.dropout(features, training=training)

    def features(self, encoder_in, decoder_in, training=False):
        """Teacher-forced pass up to the output projection: [B, Tr, hidden].

        The decoder LSTMs get no mask: with right padding, padded steps come after every real step
        and cannot change it, and the loss ignores them.
        """
        memory, states = self.encode(encoder_in, training=training)
        x = self.dec_embedding(decoder_in)
        for i, lstm in enumerate(self.decoder):
            if i:
                x = self.dropout(x, training=training)
            x, *_ = lstm(x, initial_state=list(states[i]), training=training)
        return self._attend(x, memory, training)

    def call(self, inputs, training=False):
        encoder_in, decoder_in = inputs
        features = self.features(encoder_in, decoder_in, training=training)
        if training and self.cfg.sampled_softmax:
            return features
        return self.output_layer(features)

    def decode_features(self, prev_token, states, memory):
        """One decoder step up to the output projection: (features [B, hidden], new states), so that a
        search can project onto a shortlist of the vocabulary instead of all of it."""
        x = self.dec_embedding(prev_token)
        new_states = []
        for lstm, (h, c) in zip(self.decoder, states):
            x, (h, c) = lstm.cell(x, [h, c])
            new_states.append((h, c))
        return self._attend(ops.expand_dims(x, 1), memory, training=False)[:, 0], tuple(new_states)

    def decode_sequence(self, decoder_in, states, memory):
        """Teacher-forced decoding from given states and memory (a search's encoded context, one row
        per target): decoder_in [B, T] -> features [B, T, hidden], as `features` computes them after
        `encode`. Each layer projects all steps' inputs in one matrix product and loops only over
        the recurrent one (see `_lstm_sequence`), so most of the work is in large products."""
        x = self.dec_embedding(decoder_in)
        for lstm, initial in zip(self.decoder, states):
            x, _ = _lstm_sequence(lstm.cell, x, initial=initial)
        return self._attend(x, memory, training=False)

    def decode_step(self, prev_token, states, memory):
        """One decoder step for a batch: prev_token [B] -> (logits [B, V], new states)."""
        features, new_states = self.decode_features(prev_token, states, memory)
        return self.output_layer(features), new_states

    # -- loss ------------------------------------------------------------------------------------

    label_smoothing = 0.0  # set by compile_for_training; training steps only (perplexity stays exact)
    # Training steps divide their summed loss by this constant (the mean target tokens of a batch) rather
    # than by the batch's own count, when it is set. Batches cut from length-sorted pairs hold few tokens
    # (short replies) or many; a mean per batch gives each of a short batch's tokens a larger share of a
    # step than a long batch's, a bias that random batches average out and bucketed ones do not.
    tokens_per_batch = 0.0

    def compute_loss(self, x=None, y=None, y_pred=None, sample_weight=None, training=True):
        if not training:
            return _per_replica(masked_loss(y, y_pred))
        if self.cfg.sampled_softmax:
            return _per_replica(_masked_mean(self._sampled_losses(y_pred, y), y, self.tokens_per_batch))
        return _per_replica(masked_loss(y, y_pred, self.label_smoothing, self.tokens_per_batch))

    def _sampled_losses(self, features, targets):
        """Per-token sampled-softmax loss: the true class against S log-uniform negatives shared by
        the batch. Each negative's logit is corrected by -log(its expected count) and accidental hits
        of the true class are removed, so the sum over candidates estimates the full softmax's
        denominator and the loss tends to the full cross-entropy as S grows.

        Log-uniform fits because word ids run by falling frequency (ergo/vocab.py).
        """
        n, v = self.cfg.sampled_softmax, self.vocab_size
        log_v1 = math.log(v + 1)
        u = keras.random.uniform((n,), seed=self.sample_seed)
        sampled = ops.clip(ops.cast(ops.floor(ops.exp(u * log_v1)), "int32") - 1, 0, v - 1)
        ids = ops.cast(sampled, "float32")
        log_expected = ops.log(n * (ops.log(ids + 2.0) - ops.log(ids + 1.0)) / log_v1)

        rows = ops.transpose(self.output_layer.kernel)  # [V, H]: one transpose, then cheap row gathers
        bias = self.output_layer.bias
        features = ops.cast(features, rows.dtype)
        true_logit = ops.sum(features * ops.take(rows, targets, axis=0), -1) + ops.take(bias, targets)  # [B, T]
        sampled_logits = (ops.matmul(features, ops.transpose(ops.take(rows, sampled, axis=0)))
                          + ops.take(bias, sampled) - log_expected)                                # [B, T, S]
        hits = ops.equal(ops.expand_dims(targets, -1), sampled)
        sampled_logits = ops.where(hits, _MASKED, sampled_logits)
        logits = ops.concatenate([ops.expand_dims(true_logit, -1), sampled_logits], -1)
        return ops.logsumexp(logits, axis=-1) - true_logit


# How weights start. Measured (docs/BENCHMARKS.md, "Why ErGo learned less per step"): with Keras's
# defaults (Glorot kernels, orthogonal recurrent kernels, forget bias 1) and word2vec's small vectors
# (standard deviation ~0.3), the quick model reached validation perplexity 300 in 500 steps; with inputs
# of unit scale and every LSTM and dense weight uniform in ±1/sqrt(fan-in) (PyTorch's start), 134.


def unit_scale(matrix: np.ndarray) -> np.ndarray:
    """Word vectors rescaled to standard deviation 1 (their directions and relative sizes kept)."""
    std = float(np.std(matrix))
    return matrix / std if std > 0 else matrix


def _uniform(fan_in: int):
    bound = 1.0 / math.sqrt(fan_in)
    return keras.initializers.RandomUniform(-bound, bound)


def _dense(units, fan_in, name, **kwargs):
    return layers.Dense(units, kernel_initializer=_uniform(fan_in), bias_initializer=_uniform(fan_in),
                        name=name, **kwargs)


def _embedding(vocab_size, dim, matrix, frozen, prefix):
    emb = layers.Embedding(vocab_size, dim, trainable=not frozen, name=f"{prefix}_embedding",
                           embeddings_initializer=keras.initializers.RandomNormal(0.0, 1.0))
    emb.build()
    if matrix is not None:
        emb.embeddings.assign(unit_scale(matrix))
    return emb


def _lstm_sequence(cell, x, mask=None, initial=None):
    """An LSTM cell run over x [B, T, in] from `initial` states (h, c) (default zeros) -> (outputs
    [B, T, H], (h, c)), with the input projection of all steps as one matrix product before the loop;
    where mask [B, T] is False the states stay as they were (no mask: every step is real)."""
    projected = ops.transpose(ops.matmul(x, cell.kernel) + cell.bias, (1, 0, 2))  # [T, B, 4H]
    zeros = ops.zeros((ops.shape(x)[0], cell.units), dtype=projected.dtype)
    initial = (zeros, zeros) if initial is None else initial

    def step(carry, inputs):
        (h, c), z = carry, inputs if mask is None else inputs[..., :-1]
        z_i, z_f, z_c, z_o = ops.split(z + ops.matmul(h, cell.recurrent_kernel), 4, axis=-1)
        new_c = cell.recurrent_activation(z_f) * c + cell.recurrent_activation(z_i) * cell.activation(z_c)
        new_h = cell.recurrent_activation(z_o) * cell.activation(new_c)
        if mask is not None:
            real = inputs[..., -1:] > 0
            new_h, new_c = ops.where(real, new_h, h), ops.where(real, new_c, c)
        return (new_h, new_c), (new_h, new_c)  # Keras's scan wants outputs shaped like the carry

    if mask is not None:
        # The mask rides along as one more column: Keras's scan on TensorFlow fails on two sequences of unknown length.
        real = ops.expand_dims(ops.cast(ops.transpose(mask), projected.dtype), -1)  # [T, B, 1]
        projected = ops.concatenate([projected, real], -1)
    (h, c), (outputs, _) = ops.scan(step, tuple(initial), projected)
    return ops.transpose(outputs, (1, 0, 2)), (h, c)


def _lstm(units, name):
    """An LSTM whose arguments all allow the fused cuDNN kernel; every weight starts in ±1/sqrt(units)."""
    start = _uniform(units)
    return layers.LSTM(units, return_sequences=True, return_state=True, name=name, kernel_initializer=start,
                       recurrent_initializer=start, bias_initializer=start, unit_forget_bias=False)


def build_seq2seq(model_cfg: ModelConfig, vocab_size: int, embedding_matrix: np.ndarray | None = None,
                  embedding_dim: int | None = None) -> Seq2Seq:
    """A built Seq2Seq (weights exist, so load_weights works); embeddings start from the matrix if given."""
    if embedding_matrix is not None:
        embedding_matrix = np.asarray(embedding_matrix, dtype="float32")
        if embedding_matrix.shape[0] != vocab_size:
            raise ErgoError(f"the embedding matrix has {embedding_matrix.shape[0]} rows, the vocabulary {vocab_size}")
        embedding_dim = embedding_matrix.shape[1]
    if embedding_dim is None:
        raise ErgoError("give build_seq2seq an embedding matrix or an embedding_dim")
    model = Seq2Seq(model_cfg, vocab_size, embedding_dim, embedding_matrix)
    ids = np.ones((1, 2), dtype="int32")
    model((ids, ids))
    return model


def compile_for_training(model: Seq2Seq, train_cfg: TrainConfig, jit_compile: bool | str = "auto") -> Seq2Seq:
    """Adam with gradient clipping; then `model.train_on_batch((enc, dec_in), target)` is one compiled
    step (forward, masked loss, gradients, update) on every backend, and returns the batch loss."""
    optimizer = keras.optimizers.Adam(train_cfg.learning_rate, clipnorm=train_cfg.clipnorm)
    model.label_smoothing = train_cfg.label_smoothing
    model.compile(optimizer=optimizer, jit_compile=jit_compile)
    return model


def perplexity(model: Seq2Seq, batches: Iterable) -> float:
    """exp(total loss over real target tokens / their number), always with the full softmax.

    Each batch's mean loss is weighted by its token count, so short and long batches count fairly.
    """
    if not model.compiled:
        model.compile(jit_compile=False)
    total = tokens = 0.0
    for encoder_in, decoder_in, decoder_target in batches:
        n = count_target_tokens(decoder_target)
        total += float(model.test_on_batch((encoder_in, decoder_in), decoder_target)) * n
        tokens += n
    return math.exp(total / tokens) if tokens else float("nan")
