"""Fit the seq2seq on preprocessed data: perplexity every epoch, checkpoints, early stop, curves.

A run folder (checkpoints/<corpus>-<preset>/ by default) holds one run and never mixes two:

    run.json       what the weights depend on (model settings, the data's key, sizes); checked on resume
    latest/        weights, optimizer state and position (epoch, batch) to resume from; saved each epoch
                   and when Ctrl-C stops training
    best/          the bundle with the best validation perplexity (ergo/bundle.py)
    metrics.csv    one row an epoch: training and validation perplexity, learning rate, tokens/s
    steps.csv      the training loss every `log_every` steps
    curves.png     the curves, redrawn every epoch;  logs/  TensorBoard (TensorFlow backend)

Keras `fit` runs each epoch, so progress bars, tf.distribute strategies (TensorFlow backend) and
XLA come from Keras itself; this module feeds it length-bucketed batches and keeps the books.
"""
from __future__ import annotations

import csv
import json
import math
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import keras
import numpy as np

from .batching import BatchIterator, make_batch
from .bundle import save_bundle
from .config import ModelConfig, TrainConfig, to_dict
from .dataset import PreparedData
from .errors import ErgoError
from .files import atomic_dir, atomic_path, atomic_write_text
from .model import build_seq2seq, compile_for_training, perplexity
from .retrieval import build_index


@dataclass
class TrainState:
    """Where a run stands; saved with every latest checkpoint."""

    epoch: int = 0                 # epochs finished
    position: int = 0              # batches finished within the current epoch
    epoch_loss_sum: float = 0.0    # their training loss times their pairs (the epoch's mean survives a resume)
    epoch_pairs: int = 0
    step: int = 0                  # optimizer steps in all
    best_valid_ppl: float = math.inf
    best_epoch: int = 0
    bad_epochs: int = 0            # epochs since the best one
    learning_rate: float = 0.0
    seconds: float = 0.0           # training time so far
    stopped_early: bool = False


@dataclass
class RunFolder:
    path: Path
    identity: dict = field(default_factory=dict)

    def file(self, name: str) -> Path:
        return self.path / name

    def claim(self, resume: bool) -> None:
        """Refuse to mix runs: an existing run continues only with --resume and the same settings."""
        saved = self.file("run.json")
        if not saved.is_file():
            if resume:
                raise ErgoError(f"nothing to resume in {self.path}/ (no run.json); train without --resume")
            if self.path.exists() and any(self.path.iterdir()):
                raise ErgoError(f"{self.path}/ is not empty and holds no ErGo run; choose another --model-dir")
            self.path.mkdir(parents=True, exist_ok=True)
            atomic_write_text(saved, json.dumps(self.identity, indent=2))
            return
        try:
            existing = json.loads(saved.read_text(encoding="utf-8"))
        except (ValueError, UnicodeDecodeError):
            raise ErgoError(f"{saved} is damaged; use another --model-dir, or delete the folder to start over") from None
        differ = _differences(existing, self.identity)
        if differ:
            raise ErgoError(f"{self.path}/ holds a run with other settings ({'; '.join(differ[:4])}); "
                            f"use another --model-dir, or the same settings to resume")
        has_latest = self.file("latest/state.json").is_file()
        if not resume and has_latest:
            raise ErgoError(f"{self.path}/ already holds this run: pass --resume to continue it, "
                            f"or --model-dir for a new one")
        if resume and not has_latest:
            raise ErgoError(f"{self.path}/ has no latest checkpoint to resume from (it stopped before its first); "
                            f"train again without --resume")


def _differences(old: dict, new: dict, prefix: str = "") -> list[str]:
    out = []
    for key in sorted(set(old) | set(new)):
        a, b = old.get(key), new.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            out += _differences(a, b, f"{prefix}{key}.")
        elif a != b:
            out.append(f"{prefix}{key}: {a} in the run, {b} now")
    return out


def save_latest(run: RunFolder, model, state: TrainState) -> None:
    """Weights with the optimizer's state (Keras saves both for a compiled model) and the position,
    replaced as one folder."""
    with atomic_dir(run.file("latest")) as tmp:
        model.save_weights(tmp / "model.weights.h5")
        (tmp / "state.json").write_text(json.dumps(asdict(state), indent=2), encoding="utf-8")


def load_latest(run: RunFolder, model) -> TrainState:
    latest = run.file("latest")
    model.optimizer.build(model.trainable_variables)  # so that load_weights restores its moments too
    try:
        state = TrainState(**json.loads((latest / "state.json").read_text(encoding="utf-8")))
        model.load_weights(latest / "model.weights.h5")
    except (OSError, ValueError, TypeError, KeyError) as e:
        raise ErgoError(f"cannot resume from {latest}/: {e}") from None
    return state


class _EpochBatches(keras.utils.PyDataset):
    """One epoch's batches from `start` on, as Keras inputs ((encoder_in, decoder_in), target)."""

    def __init__(self, batches: BatchIterator):
        super().__init__()
        self.batches, self.start = batches, batches.position

    def __len__(self) -> int:
        return len(self.batches) - self.start

    def __getitem__(self, i):
        enc, dec_in, target = make_batch(self.batches.split, self.batches.order[self.start + i],
                                         self.batches.width_multiple)
        return (enc, dec_in), target


def _as_keras_data(batches: _EpochBatches):
    """On TensorFlow a tf.data pipeline with open widths (a PyDataset would pin them to the widths
    of its first two batches); other backends take the PyDataset as it is."""
    if keras.backend.backend() != "tensorflow":
        return batches
    import tensorflow as tf
    spec = tf.TensorSpec([None, None], tf.int32)
    data = tf.data.Dataset.from_generator(lambda: (batches[i] for i in range(len(batches))),
                                          output_signature=((spec, spec), spec))
    return data.apply(tf.data.experimental.assert_cardinality(len(batches))).prefetch(2)


class _Books(keras.callbacks.Callback):
    """Counts batches (for resume) and writes the mean training loss of every `log_every` steps.

    Keras reports a running mean over the epoch, weighted by batch size; each batch's own loss is
    recovered from two consecutive means and the batch's size, which the batch order knows.
    """

    def __init__(self, run: RunFolder, state: TrainState, log_every: int, writer):
        super().__init__()
        self.run, self.state, self.log_every, self.writer = run, state, log_every, writer
        self.batches: BatchIterator | None = None

    def on_epoch_begin(self, epoch, logs=None):
        self.seen, self.mean, self.window = 0, 0.0, []

    def on_train_batch_end(self, batch, logs=None):
        size = len(self.batches.order[self.state.position])
        mean = float(logs["loss"])
        loss = (mean * (self.seen + size) - self.mean * self.seen) / size
        self.window.append(loss)
        self.seen, self.mean = self.seen + size, mean
        self.state.epoch_loss_sum += loss * size
        self.state.epoch_pairs += size
        self.state.position += 1
        self.state.step += 1
        if self.state.step % self.log_every == 0:
            loss = sum(self.window) / len(self.window)
            self.window = []
            _append_csv(self.run.file("steps.csv"), {"step": self.state.step, "epoch": self.state.epoch + 1,
                                                     "loss": round(loss, 5)})
            if self.writer is not None:
                self.writer.scalar("train/loss", loss, self.state.step)


class _TensorBoard:
    """Scalars for TensorBoard; only the TensorFlow backend has the writer, elsewhere it is a no-op."""

    def __init__(self, logdir: Path):
        import tensorflow as tf
        self.tf, self.writer = tf, tf.summary.create_file_writer(str(logdir))

    def scalar(self, name, value, step):
        with self.writer.as_default():
            self.tf.summary.scalar(name, value, step=step)
        self.writer.flush()

    @classmethod
    def create(cls, logdir: Path):
        return cls(logdir) if keras.backend.backend() == "tensorflow" else None


def _append_csv(path: Path, row: dict) -> None:
    new = not path.exists()
    with open(path, "a", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(row))
        if new:
            writer.writeheader()
        writer.writerow(row)


def plot_curves(run: RunFolder) -> None:
    """curves.png: perplexities per epoch and the step loss, for a person to look at."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    def rows(name):
        path = run.file(name)
        if not path.exists():
            return []
        with open(path, newline="") as f:
            return list(csv.DictReader(f))

    epochs, steps = rows("metrics.csv"), rows("steps.csv")
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    if epochs:
        x = [int(r["epoch"]) for r in epochs]
        left.plot(x, [float(r["train_ppl"]) for r in epochs], "o-", label="training")
        left.plot(x, [float(r["valid_ppl"]) for r in epochs], "o-", label="validation")
        left.set_yscale("log")
        left.legend()
    left.set(title="perplexity by epoch", xlabel="epoch", ylabel="perplexity (log scale)")
    if steps:
        right.plot([int(r["step"]) for r in steps], [float(r["loss"]) for r in steps])
    left.xaxis.get_major_locator().set_params(integer=True)
    right.set(title="training loss", xlabel="step", ylabel="cross-entropy per token")
    fig.tight_layout()
    with atomic_path(run.file("curves.png")) as tmp:
        fig.savefig(tmp, format="png", dpi=90)
    plt.close(fig)


def _distribution_scope():
    """The TF backend's own multi-device engine: MirroredStrategy over several GPUs, or
    MultiWorkerMirroredStrategy where TF_CONFIG names several machines. One device: no strategy."""
    import contextlib
    import os
    if keras.backend.backend() != "tensorflow":
        return contextlib.nullcontext(), 1
    import tensorflow as tf
    if os.environ.get("TF_CONFIG"):
        strategy = tf.distribute.MultiWorkerMirroredStrategy()
    elif len(tf.config.list_logical_devices("GPU")) > 1:
        strategy = tf.distribute.MirroredStrategy()
    else:
        return contextlib.nullcontext(), 1
    return strategy.scope(), strategy.num_replicas_in_sync


def train(data: PreparedData, model_cfg: ModelConfig, train_cfg: TrainConfig, model_dir: Path, *,
          resume: bool = False, progress: bool = True, init_embeddings: bool = True, callbacks: tuple = (),
          strategy_scope=None, log=print) -> TrainState:
    """Train until `train_cfg.epochs` or early stopping; returns the final state.

    `init_embeddings`: start the embeddings from the word2vec matrix (False: at random, to compare).
    `strategy_scope`: a tf.distribute scope to build the model in (default: picked from the devices).
    """
    vocab, matrix = data.vocab(), data.embeddings()
    run = RunFolder(Path(model_dir), {
        "model_config": to_dict(model_cfg), "data_key": data.manifest["key"],
        "vocab_size": len(vocab), "embedding_dim": int(matrix.shape[1]),
        "corpus": data.manifest["corpus"]["name"], "word2vec_init": init_embeddings})
    run.claim(resume)
    train_split, valid_split = data.split("train"), data.split("valid")
    if not valid_split["reply"]:
        raise ErgoError("the validation split is empty: preprocess a corpus with more conversations")

    if train_cfg.mixed_precision:
        _mixed_precision(log)
    keras.utils.set_random_seed(data.data_config.seed)
    scope, replicas = (strategy_scope, None) if strategy_scope is not None else _distribution_scope()
    with scope:
        model = (build_seq2seq(model_cfg, len(vocab), matrix) if init_embeddings else
                 build_seq2seq(model_cfg, len(vocab), embedding_dim=matrix.shape[1]))
        compile_for_training(model, train_cfg)
        # the optimizer's variables, built on resume, must be made under the strategy too
        state = load_latest(run, model) if resume else TrainState(learning_rate=train_cfg.learning_rate)
    if resume:
        log(f"resuming {run.path}/ after epoch {state.epoch}, batch {state.position} "
            f"(best validation perplexity so far {state.best_valid_ppl:.2f})")
    model.optimizer.learning_rate.assign(state.learning_rate)
    writer = _TensorBoard.create(run.file("logs"))
    books = _Books(run, state, train_cfg.log_every, writer)
    valid_batches = list(BatchIterator(valid_split, train_cfg.batch_size, seed=0))
    reply_tokens = np.array([len(r) + 1 for r in train_split["reply"]])  # + <eos>: the target tokens
    params = model.count_params()
    log(f"model: {params:,} parameters, {model_cfg.layers}x{model_cfg.hidden} LSTM, {model_cfg.attention} "
        f"attention; {len(train_split['reply']):,} training pairs, batch {train_cfg.batch_size}"
        + (f", {replicas} replicas" if replicas and replicas > 1 else ""))

    try:
        while state.epoch < train_cfg.epochs and not state.stopped_early:
            batches = BatchIterator(train_split, train_cfg.batch_size, seed=data.data_config.seed,
                                    epoch=state.epoch, start=state.position)
            epoch_data = _EpochBatches(batches)
            books.batches = batches
            log(f"epoch {state.epoch + 1}/{train_cfg.epochs}")
            started = time.perf_counter()
            if len(epoch_data):  # none left when a run stopped during the epoch's validation
                model.fit(_as_keras_data(epoch_data), epochs=1, shuffle=False, verbose=1 if progress else 0,
                          callbacks=[books, *callbacks])
            seconds = time.perf_counter() - started
            state.seconds += seconds
            done = batches.order[epoch_data.start:]
            tokens = int(reply_tokens[np.concatenate(done)].sum()) if done else 0
            train_loss = state.epoch_loss_sum / max(state.epoch_pairs, 1)
            _finish_epoch(run, model, state, train_cfg, data, vocab, train_loss, perplexity(model, valid_batches),
                          tokens / seconds if done else 0.0, writer, log)
    except KeyboardInterrupt:
        save_latest(run, model, state)
        raise ErgoError(f"interrupted: saved the latest checkpoint in {run.path}/latest/ "
                        f"(epoch {state.epoch + 1}, batch {state.position}); continue with --resume") from None
    return state


def _finish_epoch(run, model, state, train_cfg, data, vocab, train_loss, valid_ppl, tokens_per_s, writer, log):
    """Records, best/, then latest/ of the epoch just trained. `state` moves on only once latest/ is
    saved: a Ctrl-C before that saves the epoch as trained but not finished, and a resume validates it
    again (and writes best/ and its retrieval index again, if it was the best)."""
    done, state = state, replace(state)
    state.epoch += 1
    state.position, state.epoch_loss_sum, state.epoch_pairs = 0, 0.0, 0
    train_ppl = math.exp(min(train_loss, 50.0))
    improved = valid_ppl < state.best_valid_ppl
    if improved:
        state.best_valid_ppl, state.best_epoch, state.bad_epochs = valid_ppl, state.epoch, 0
    else:
        state.bad_epochs += 1
    _append_csv(run.file("metrics.csv"), {
        "epoch": state.epoch, "step": state.step, "train_loss": round(train_loss, 5),
        "train_ppl": round(train_ppl, 3), "valid_ppl": round(valid_ppl, 3),
        "learning_rate": f"{state.learning_rate:.6g}", "tokens_per_s": round(tokens_per_s), "seconds": round(state.seconds, 1)})
    if writer is not None:
        writer.scalar("epoch/train_ppl", train_ppl, state.epoch)
        writer.scalar("epoch/valid_ppl", valid_ppl, state.epoch)
    if improved:
        save_bundle(run.file("best"), model, data.data_config, model.cfg, vocab, {
            "corpus": data.manifest["corpus"]["name"], "epoch": state.epoch, "step": state.step,
            "valid_perplexity": round(valid_ppl, 3), "train_perplexity": round(train_ppl, 3),
            "parameters": model.count_params(), "training_seconds": round(state.seconds, 1),
            "backend": keras.backend.backend(), "data_dir": str(data.path.resolve()), "data": data.stats["pairs"]})
        build_index(data, run.file("best"))
    if state.bad_epochs >= train_cfg.patience:
        state.stopped_early = True
    state.learning_rate *= train_cfg.lr_decay
    model.optimizer.learning_rate.assign(state.learning_rate)
    save_latest(run, model, state)
    done.__dict__.update(asdict(state))
    plot_curves(run)
    mark = " (best, saved to best/)" if improved else ""
    log(f"epoch {state.epoch}: training perplexity {train_ppl:.2f}, validation perplexity {valid_ppl:.2f}{mark}, "
        f"{tokens_per_s:,.0f} target tokens/s")
    if state.stopped_early:
        log(f"early stop: no better validation perplexity for {train_cfg.patience} epochs "
            f"(best {state.best_valid_ppl:.2f} at epoch {state.best_epoch})")


def _mixed_precision(log) -> None:
    """float16 compute on a GPU; on a CPU it would only be slower, so it is skipped with a note."""
    if keras.backend.backend() == "tensorflow":
        import tensorflow as tf
        if not tf.config.list_physical_devices("GPU"):
            log("note: --mixed-precision needs a GPU; training in float32")
            return
    keras.mixed_precision.set_global_policy("mixed_float16")
