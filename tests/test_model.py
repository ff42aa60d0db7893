import importlib.util
import math
import os
import subprocess
import sys
from pathlib import Path

import keras
import numpy as np
import pytest

from ergo.config import ModelConfig, TrainConfig
from ergo.errors import ErgoError
from ergo.model import build_seq2seq, compile_for_training, masked_loss, perplexity, unit_scale
from ergo.vocab import EOS_ID, GO_ID, PAD_ID

V, E = 40, 8
ROOT = Path(__file__).resolve().parents[1]


def tiny(**changes):
    return ModelConfig(**{"hidden": 16, "layers": 2, "dropout": 0.1, **changes})


def matrix(seed=0):
    return np.random.default_rng(seed).normal(size=(V, E)).astype("float32")


def batch(seed=0, b=6, tc=7, tr=5):
    """Random right-padded batch; row 0 has no padding, the others random lengths >= 1."""
    rng = np.random.default_rng(seed)
    enc = rng.integers(5, V, (b, tc)).astype("int32")
    dec = rng.integers(5, V, (b, tr)).astype("int32")
    for row in range(1, b):
        enc[row, rng.integers(1, tc):] = PAD_ID
        dec[row, rng.integers(1, tr):] = PAD_ID
    return enc, dec


def test_output_shapes():
    model = build_seq2seq(tiny(sampled_softmax=8), V, matrix())
    enc, dec = batch()
    assert model((enc, dec)).shape == (6, 5, V)
    assert model((enc, dec), training=True).shape == (6, 5, 16)  # features for the sampled loss


def test_loss_ignores_padding():
    rng = np.random.default_rng(1)
    targets = rng.integers(1, V, (3, 4)).astype("int32")
    logits = rng.normal(size=(3, 4, V)).astype("float32")
    padded_targets = np.concatenate([targets, np.zeros((3, 3), "int32")], 1)
    padded_logits = np.concatenate([logits, 100 * rng.normal(size=(3, 3, V)).astype("float32")], 1)
    np.testing.assert_allclose(float(masked_loss(targets, logits)),
                               float(masked_loss(padded_targets, padded_logits)), rtol=1e-6)


@pytest.mark.parametrize("attention", ["dot", "general", "additive"])
def test_padding_does_not_change_the_output(attention):
    model = build_seq2seq(tiny(attention=attention, bidirectional_encoder=True), V, matrix())
    enc, dec = batch()
    more_padding = np.concatenate([enc, np.zeros((6, 5), "int32")], 1)
    np.testing.assert_allclose(model((enc, dec)), model((more_padding, dec)), atol=1e-5)
    # encoder outputs at masked positions are never read
    memory, states = model.encode(enc)
    values, keys, mask = memory
    noisy = keras.ops.where(keras.ops.expand_dims(mask, -1), values, 1e3)
    noisy_keys = keras.ops.where(keras.ops.expand_dims(mask, -1), keys, -1e3)
    tokens = dec[:, 0]
    np.testing.assert_allclose(model.decode_step(tokens, states, memory)[0],
                               model.decode_step(tokens, states, (noisy, noisy_keys, mask))[0], atol=1e-5)


@pytest.mark.parametrize("cfg", [tiny(attention="dot"), tiny(attention="general", bidirectional_encoder=True),
                                 tiny(attention="additive", layers=1, share_embeddings=False)])
def test_step_by_step_decoding_matches_teacher_forcing(cfg):
    model = build_seq2seq(cfg, V, matrix())
    enc, dec = batch(seed=3)
    full = keras.ops.convert_to_numpy(model((enc, dec)))
    memory, states = model.encode(enc)
    for t in range(dec.shape[1]):
        logits, states = model.decode_step(dec[:, t], states, memory)
        np.testing.assert_allclose(keras.ops.convert_to_numpy(logits), full[:, t], atol=1e-4)


@pytest.mark.parametrize("cfg", [tiny(), tiny(attention="general", bidirectional_encoder=True), tiny(layers=1)])
def test_a_left_padded_row_encodes_as_it_would_unpadded(cfg):
    model = build_seq2seq(cfg, V, matrix())
    enc = batch(seed=4, b=1)[0]  # row 0 has no padding
    padded = np.concatenate([np.full((1, 3), PAD_ID, "int32"), enc], 1)
    (values, keys, mask), states = model.encode(enc)
    (fast_values, fast_keys, fast_mask), fast_states = model.encode_left_padded(padded)
    real = slice(3, None)
    for ours, theirs in [(fast_values[:, real], values), (fast_keys[:, real], keys), *zip(
            [s for layer in fast_states for s in layer], [s for layer in states for s in layer])]:
        np.testing.assert_allclose(keras.ops.convert_to_numpy(ours), keras.ops.convert_to_numpy(theirs), atol=1e-5)
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(fast_mask), padded != PAD_ID)


def copy_task(n=32, length=5, seed=0):
    rng = np.random.default_rng(seed)
    src = rng.integers(5, 15, (n, length)).astype("int32")
    dec_in = np.concatenate([np.full((n, 1), GO_ID, "int32"), src], 1)
    target = np.concatenate([src, np.full((n, 1), EOS_ID, "int32")], 1)
    return src, dec_in, target


@pytest.mark.parametrize("cfg", [tiny(layers=1, attention="dot"),
                                 tiny(layers=1, attention="general", freeze_embeddings=True),
                                 tiny(layers=1, attention="additive", sampled_softmax=8)])
def test_trains_on_a_copy_task(cfg):
    """Loss falls for every attention kind and with sampled softmax; frozen embeddings stay as given."""
    keras.utils.set_random_seed(0)
    m = matrix(2)
    model = compile_for_training(build_seq2seq(cfg, V, m), TrainConfig(learning_rate=0.02))
    src, dec_in, target = copy_task()
    losses = [model.train_on_batch((src, dec_in), target) for _ in range(25)]
    assert all(math.isfinite(x) for x in losses)
    assert np.mean(losses[-5:]) < 0.75 * np.mean(losses[:5])  # windows: a sampled loss is noisy step to step
    unchanged = np.array_equal(keras.ops.convert_to_numpy(model.enc_embedding.embeddings), unit_scale(m))
    assert unchanged == cfg.freeze_embeddings


def test_sampled_softmax_approaches_the_full_loss_with_many_samples():
    model = build_seq2seq(tiny(dropout=0.0, sampled_softmax=20000), V, matrix())
    enc, reply = batch(seed=4)
    dec_in, target = _teacher(reply)
    features = model((enc, dec_in), training=True)
    sampled = float(model.compute_loss(y=target, y_pred=features, training=True))
    assert sampled == pytest.approx(float(masked_loss(target, model((enc, dec_in)))), rel=0.02)


def test_perplexity_uses_the_full_softmax_and_weights_batches_by_tokens():
    model = compile_for_training(build_seq2seq(tiny(sampled_softmax=8), V, matrix()), TrainConfig())
    batches = [(enc, *_teacher(reply)) for enc, reply in (batch(seed=s, tr=s + 3) for s in range(3))]
    total = tokens = 0.0
    for enc, dec_in, target in batches:
        n = np.count_nonzero(target)
        total += float(masked_loss(target, model((enc, dec_in)))) * n
        tokens += n
    assert perplexity(model, batches) == pytest.approx(math.exp(total / tokens), rel=1e-5)


def _teacher(reply):
    """(decoder_in, decoder_target) from right-padded replies, as ergo.batching builds them."""
    lens = np.count_nonzero(reply, axis=1)
    dec_in = np.concatenate([np.full((len(reply), 1), GO_ID, "int32"), reply], 1)
    target = np.concatenate([reply, np.zeros((len(reply), 1), "int32")], 1)
    target[np.arange(len(reply)), lens] = EOS_ID
    return dec_in, target


def test_embeddings_start_from_the_matrix_at_unit_scale():
    m = matrix(7) * 0.3
    model = build_seq2seq(tiny(share_embeddings=False), V, m)
    for emb in (model.enc_embedding, model.dec_embedding):
        start = keras.ops.convert_to_numpy(emb.embeddings)
        np.testing.assert_allclose(start, m / m.std(), rtol=1e-5)
        assert start.std() == pytest.approx(1.0, rel=1e-4)
    shared = build_seq2seq(tiny(), V, m)
    assert shared.enc_embedding is shared.dec_embedding


def test_save_and_load_weights(tmp_path):
    cfg = tiny(attention="additive", bidirectional_encoder=True)
    model = build_seq2seq(cfg, V, matrix())
    enc, dec = batch()
    path = tmp_path / "model.weights.h5"
    model.save_weights(path)
    other = build_seq2seq(cfg, V, matrix(9))
    other.load_weights(path)
    np.testing.assert_allclose(other((enc, dec)), model((enc, dec)), atol=1e-6)


def test_bad_settings_are_refused():
    with pytest.raises(ErgoError, match="attention"):
        build_seq2seq(tiny(attention="cosine"), V, matrix())
    with pytest.raises(ErgoError, match="even"):
        build_seq2seq(tiny(hidden=15, bidirectional_encoder=True), V, matrix())
    with pytest.raises(ErgoError, match="rows"):
        build_seq2seq(tiny(), V + 1, matrix())
    for cfg, message in [(lambda: tiny(dropout=1.0), "dropout must be from 0 up to"),
                         (lambda: tiny(layers=0), "layers must be at least 1, not 0"),
                         (lambda: TrainConfig(batch_size=0), "batch-size must be at least 1, not 0"),
                         (lambda: TrainConfig(learning_rate=-1e-3), "learning-rate must be above 0")]:
        with pytest.raises(ErgoError, match=message):  # at once, not as a traceback deep in training
            cfg()


OTHER_BACKEND = """
import numpy as np, keras
from ergo.config import ModelConfig, TrainConfig
from ergo.model import build_seq2seq, compile_for_training
assert keras.backend.backend() == {backend!r}
model = build_seq2seq(ModelConfig(hidden=16, layers=2, sampled_softmax=8), 40, embedding_dim=8)
compile_for_training(model, TrainConfig())
enc = np.array([[5, 6, 7, 0], [8, 9, 0, 0]], "int32"); dec = np.array([[2, 5, 6], [2, 8, 0]], "int32")
tgt = np.array([[5, 6, 3], [8, 3, 0]], "int32")
assert np.isfinite(model.train_on_batch((enc, dec), tgt))  # sampled softmax
assert np.isfinite(model.test_on_batch((enc, dec), tgt))   # full softmax
full = keras.ops.convert_to_numpy(model((enc, dec)))
memory, states = model.encode(enc)
for t in range(3):
    logits, states = model.decode_step(dec[:, t], states, memory)
    np.testing.assert_allclose(keras.ops.convert_to_numpy(logits), full[:, t], atol=1e-4)
print("ok")
"""


@pytest.mark.parametrize("backend", ["jax", "torch"])
def test_other_backends(backend):
    if importlib.util.find_spec(backend) is None:
        pytest.skip(f"{backend} is not installed")
    env = {**os.environ, "KERAS_BACKEND": backend, "PYTHONPATH": str(ROOT)}
    done = subprocess.run([sys.executable, "-c", OTHER_BACKEND.format(backend=backend)], env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0 and "ok" in done.stdout, done.stderr[-3000:]
