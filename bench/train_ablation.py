"""Why does a model learn more or less per step? Validation perplexity after the same N training steps,
one variant changed at a time.

    python bench/train_ablation.py [--data-dir data/chitchat-quick] [--steps 500] [--variants a,b,...]
                                   [--preset quick]

Every variant trains ErGo's own model (ergo/model.py, built from the preset) with its own optimizer
and loss, on the same batches in the same order from the same seed, and is scored by ErGo's own
validation perplexity (the full validation split). A variant changes one thing: how some weights
start, the batch order, or a setting. `--list` names them. Prints one line a variant: perplexity,
seconds of training, and what was changed.
"""
from __future__ import annotations

import argparse
import math
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import keras  # noqa: E402
import numpy as np  # noqa: E402

from ergo.batching import BatchIterator, make_batch  # noqa: E402
from ergo.config import get_preset, override  # noqa: E402
from ergo.dataset import PreparedData  # noqa: E402
from ergo.model import build_seq2seq, compile_for_training, perplexity  # noqa: E402
from ergo.batching import as_keras_data  # noqa: E402


def _uniform(rng, shape, bound):
    return rng.uniform(-bound, bound, shape).astype("float32")


def torch_lstms(model, rng):
    """PyTorch's LSTM start: kernel, recurrent kernel and bias all U(±1/√H)."""
    for lstm in model.encoder + model.decoder:
        cells = ([lstm.forward_layer.cell, lstm.backward_layer.cell] if hasattr(lstm, "forward_layer")
                 else [lstm.cell])
        for cell in cells:
            for w in (cell.kernel, cell.recurrent_kernel, cell.bias):
                w.assign(_uniform(rng, w.shape, 1 / math.sqrt(cell.units)))


def torch_dense(model, rng, layers=("combine", "output_layer")):
    """PyTorch's Linear start: kernel and bias U(±1/√fan_in)."""
    for name in layers:
        layer = getattr(model, name)
        bound = 1 / math.sqrt(layer.kernel.shape[0])
        layer.kernel.assign(_uniform(rng, layer.kernel.shape, bound))
        if layer.bias is not None:
            layer.bias.assign(_uniform(rng, layer.bias.shape, bound))


def embeddings_scaled(model, rng, std=1.0):
    """The word2vec rows rescaled to standard deviation `std` (their structure kept)."""
    e = model.enc_embedding.embeddings
    m = keras.ops.convert_to_numpy(e)
    e.assign(m * (std / m.std()))


def embeddings_normal(model, rng):
    """Random N(0, 1) rows instead of word2vec (PyTorch's nn.Embedding start)."""
    e = model.enc_embedding.embeddings
    e.assign(rng.normal(0, 1, e.shape).astype("float32"))


def keras_defaults(model, rng):
    """ErGo's start before the change: Keras's defaults (Glorot uniform kernels, orthogonal recurrent
    kernels, LSTM forget bias 1, zero dense biases) and the word2vec vectors as they are."""
    glorot, orthogonal = keras.initializers.GlorotUniform(int(rng.integers(1 << 30))), \
        keras.initializers.Orthogonal(seed=int(rng.integers(1 << 30)))
    for lstm in model.encoder + model.decoder:
        cells = ([lstm.forward_layer.cell, lstm.backward_layer.cell] if hasattr(lstm, "forward_layer")
                 else [lstm.cell])
        for cell in cells:
            cell.kernel.assign(glorot(cell.kernel.shape))
            cell.recurrent_kernel.assign(orthogonal(cell.recurrent_kernel.shape))
            u = cell.units
            cell.bias.assign(np.concatenate([np.zeros(u), np.ones(u), np.zeros(2 * u)]).astype("float32"))
    for layer in (model.combine, model.output_layer):
        layer.kernel.assign(glorot(layer.kernel.shape))
        layer.bias.assign(np.zeros(layer.bias.shape, "float32"))
    model.enc_embedding.embeddings.assign(model.raw_matrix)


VARIANTS = {
    "ergo": ("ErGo as it is", []),
    "keras_defaults": ("Keras's default init, word2vec as it is (ErGo before this change)", [keras_defaults]),
    "w2v_std1": ("word2vec scaled to std 1", [embeddings_scaled]),
    "torch_all": ("PyTorch's init everywhere (embeddings N(0,1), no word2vec)",
                  [embeddings_normal, torch_lstms, torch_dense]),
    "torch_lstm": ("PyTorch's init for the LSTMs alone", [torch_lstms]),
    "torch_dense": ("PyTorch's init for the dense layers alone (combine, output)", [torch_dense]),
    "torch_output": ("PyTorch's init for the output layer alone", [lambda m, r: torch_dense(m, r, ("output_layer",))]),
    "torch_combine": ("PyTorch's init for the combine layer alone", [lambda m, r: torch_dense(m, r, ("combine",))]),
    "torch_nets_w2v": ("PyTorch's init for LSTMs and dense layers, word2vec kept", [torch_lstms, torch_dense]),
    "torch_nets_w2v_std1": ("PyTorch's init for LSTMs and dense layers, word2vec scaled to std 1",
                            [embeddings_scaled, torch_lstms, torch_dense]),
    "w2v_std1_dense": ("word2vec scaled to std 1, PyTorch's init for the dense layers",
                       [embeddings_scaled, torch_dense]),
}


class _Feed(keras.utils.PyDataset):
    """The given batches as ((encoder_in, decoder_in), target), in the shape ergo.training's feed has."""

    def __init__(self, split, order):
        super().__init__()
        self.split, self.order = split, order

    def __len__(self):
        return len(self.order)

    def __getitem__(self, i):
        enc, dec_in, target = make_batch(self.split, self.order[i])
        return (enc, dec_in), target


def run(data, preset, variant: str, steps: int, seed: int, changes: dict) -> tuple[float, float]:
    model_cfg = override(preset.model, **changes.get("model", {}))
    train_cfg = override(preset.train, **changes.get("train", {}))
    keras.utils.set_random_seed(seed)
    model = build_seq2seq(model_cfg, data.manifest["vocab_size"], data.embeddings())
    model.raw_matrix = data.embeddings()
    rng = np.random.default_rng(seed)
    for change in VARIANTS[variant][1]:
        change(model, rng)
    compile_for_training(model, train_cfg)
    train_split = data.split("train")
    if not changes.get("per_batch_mean"):  # as ergo.training does
        model.tokens_per_batch = float(np.mean([len(r) + 1 for r in train_split["reply"]])) * train_cfg.batch_size
    order = BatchIterator(train_split, train_cfg.batch_size, seed=data.data_config.seed).order
    if changes.get("random_batches"):
        perm = np.random.default_rng(seed).permutation(len(train_split["reply"]))
        order = [perm[i:i + train_cfg.batch_size] for i in range(0, len(perm), train_cfg.batch_size)]
    batches = [order[i % len(order)] for i in range(steps)]
    feed = _Feed(train_split, batches)
    started = time.perf_counter()
    model.fit(as_keras_data(feed), epochs=1, shuffle=False, verbose=0)  # as ergo.training feeds it
    seconds = time.perf_counter() - started
    valid = list(BatchIterator(data.split("valid"), 256, seed=0))
    return perplexity(model, valid), seconds


SETTINGS = {  # variants that change a setting rather than a start
    "dropout_0.1": {"model": {"dropout": 0.1}},
    "dropout_0": {"model": {"dropout": 0.0}},
    "lr_2e-3": {"train": {"learning_rate": 2e-3}},
    "random_batches": {"random_batches": True},
    "per_batch_mean": {"per_batch_mean": True},
    "sampled_512": {"model": {"sampled_softmax": 512}},  # each batch's loss a mean over its own tokens (ErGo before)
    "label_smoothing_0.1": {"train": {"label_smoothing": 0.1}},
}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data-dir", type=Path, default=Path("data/chitchat-quick"))
    p.add_argument("--preset", default="quick")
    p.add_argument("--steps", type=int, default=500)
    p.add_argument("--seed", type=int, default=13)
    p.add_argument("--variants", default="ergo")
    p.add_argument("--list", action="store_true")
    args = p.parse_args()
    if args.list:
        for name, (what, _) in VARIANTS.items():
            print(f"{name}: {what}")
        for name in SETTINGS:
            print(f"{name} (a setting; may be joined to a start with '+', e.g. torch_all+dropout_0)")
        return
    data = PreparedData.open(args.data_dir)
    preset = get_preset(args.preset)
    for name in args.variants.split(","):
        start, *settings = name.split("+")
        if start in SETTINGS:
            start, settings = "ergo", [start] + settings
        changes: dict = {}
        for s in settings:
            for k, v in SETTINGS[s].items():
                changes[k] = {**changes.get(k, {}), **v} if isinstance(v, dict) else v
        ppl, seconds = run(data, preset, start, args.steps, args.seed, changes)
        print(f"{name}: validation perplexity {ppl:.1f} after {args.steps} steps ({seconds:.0f} s of training) "
              f"- {VARIANTS[start][0]}{' + ' + ', '.join(settings) if settings else ''}", flush=True)


if __name__ == "__main__":
    main()
