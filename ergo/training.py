"""Fit the seq2seq on preprocessed data: validation perplexity, checkpoints, early stop, a time
budget, curves.

A run folder (checkpoints/<corpus>-<preset>/ by default) holds one run and never mixes two:

    run.json       what the weights depend on (model settings, the data's key, sizes); checked on resume
    latest/        weights, optimizer state and position (epoch, batch, minutes) to resume from; saved at
                   every validation, every `save_every` minutes within epochs, and when Ctrl-C or SIGTERM
                   stops training; the one before it is kept (.latest.previous/) for when it is found damaged
    best/          the bundle with the best validation perplexity (ergo/bundle.py), with the reply selector
    selector/      the reply selector (ergo/selector.py), trained first (it depends on the data alone)
    metrics.csv    one row a validation (each epoch's end, and within epochs every `validate_every`
                   minutes): perplexities, learning rate, tokens/s, minutes
    steps.csv      the training loss every `log_every` steps
    curves.png     the curves, redrawn at every validation;  logs/  TensorBoard (TensorFlow backend)

A budget (`--minutes`) covers the whole run: the selector's share of it, the seq2seq, and at the end
the choice of the selector's weight in the ranking (ergo/ranking.py), made on the best bundle.

Keras `fit` runs the steps between two validations, so tf.distribute strategies (TensorFlow backend)
and XLA come from Keras itself; this module feeds it length-bucketed batches, keeps the clock and
keeps the books.
"""
from __future__ import annotations

import csv
import functools
import hashlib
import json
import math
import os
import shutil
import signal
import threading
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import NamedTuple

import keras
import numpy as np
from tqdm import tqdm

from .batching import BatchIterator, as_keras_data, make_batch
from .bundle import Bundle, link, save_bundle
from .cluster import Cluster
from .config import ModelConfig, SelectorConfig, TrainConfig, to_dict
from .dataset import FixedVocab, PreparedData
from .embeddings import keyed_vectors
from .errors import ErgoError
from .files import atomic_dir, atomic_path, atomic_write_text, previous_of, recover_dir, sha256_file
from .model import build_seq2seq, compile_for_training, perplexity
from .ranking import RANKING_FILE
from .retrieval import INDEX_FILE, build_index
from .selector import FOLDER as SELECTOR, has_selector, train_selector
from .splits import even_sample


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
    learning_rate: float = 0.0     # at the start of the current epoch (a budget's schedule scales it per step)
    seconds: float = 0.0           # training time so far (fitting only)
    stopped_early: bool = False
    elapsed: float = 0.0           # wall time of the run so far, validation and saving included: what a budget counts
    validated_step: int = -1       # the step the last validation saw
    spent_minutes: float = 0.0     # the budget this run last trained to the end of


@dataclass
class RunFolder:
    path: Path
    identity: dict = field(default_factory=dict)

    def file(self, name: str) -> Path:
        return self.path / name

    def claim(self, resume: bool, log=print) -> bool:
        """Refuse to mix runs: an existing run continues only with --resume and the same settings.
        Returns whether there is a checkpoint to resume from: --resume on a run that stopped before its
        first one (or on no run at all) starts it, and says so, so that a retry with --resume always works."""
        saved = self.file("run.json")
        for name in ("latest", "best", SELECTOR):  # what a stop between two renames or a SIGKILL left
            if recover_dir(self.file(name), keep_previous=name == "latest"):
                log(f"{self.file(name)}/ was being replaced when the run stopped: the previous one is back")
        if not saved.is_file():
            if resume:
                log(f"nothing to resume in {self.path}/ yet: starting the run")
            if self.path.exists() and any(self.path.iterdir()):
                raise ErgoError(f"{self.path}/ is not empty and holds no ErGo run; choose another --model-dir")
            self.path.mkdir(parents=True, exist_ok=True)
            atomic_write_text(saved, json.dumps(self.identity, indent=2))
            return False
        try:
            existing = json.loads(saved.read_text(encoding="utf-8"))
        except (ValueError, UnicodeDecodeError):
            raise ErgoError(f"{saved} is damaged; use another --model-dir, or delete the folder to start over") from None
        if "batch_size" not in existing:  # runs from before it was recorded: it becomes part of them now
            existing["batch_size"] = self.identity["batch_size"]
            atomic_write_text(saved, json.dumps(existing, indent=2))
        differ = _differences(existing, self.identity)
        if differ:
            raise ErgoError(f"{self.path}/ holds a run with other settings ({'; '.join(differ[:4])}); "
                            f"use another --model-dir, or the same settings to resume")
        has_latest = self.file("latest/state.json").is_file()
        if not resume and has_latest:
            raise ErgoError(f"{self.path}/ already holds this run: pass --resume to continue it, "
                            f"or --model-dir for a new one")
        if resume and not has_latest:
            log(f"{self.path}/ stopped before its first checkpoint: starting the run again")
        return resume and has_latest


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
    replaced as one folder; the weights' checksum goes with the position, so a damaged file is found."""
    with atomic_dir(run.file("latest"), keep_previous=True) as tmp:
        model.save_weights(tmp / "model.weights.h5")
        (tmp / "state.json").write_text(json.dumps({**asdict(state), "weights_sha256": sha256_file(
            tmp / "model.weights.h5")}, indent=2), encoding="utf-8")


def load_latest(run: RunFolder, model, log=print, repair: bool = True) -> TrainState:
    """The run's latest checkpoint; when it is damaged (a truncated or altered file), the one before it,
    which then takes its place (`repair` False: is only read, as by a worker that reads the chief's)."""
    latest = run.file("latest")
    model.optimizer.build(model.trainable_variables)  # so that load_weights restores its moments too
    problems = []
    for folder in (latest, previous_of(latest)):
        if not folder.is_dir():
            continue
        try:
            state = _load_checkpoint(folder, model)
        except ErgoError as e:
            problems.append(str(e))
            continue
        if problems:
            log(f"warning: {problems[0]}; resuming from the checkpoint before it (step {state.step:,})")
            if repair:
                shutil.rmtree(latest)
                os.replace(folder, latest)
        return state
    raise ErgoError(f"cannot resume from {latest}/: {'; '.join(problems) or 'no checkpoint'}; "
                    f"train again in a new --model-dir")


def _load_checkpoint(folder: Path, model) -> TrainState:
    try:
        saved = json.loads((folder / "state.json").read_text(encoding="utf-8"))
        digest = saved.pop("weights_sha256", None)
        if digest is not None and digest != sha256_file(folder / "model.weights.h5"):
            raise ErgoError(f"{folder}/model.weights.h5 is damaged (its checksum differs from the one saved with it)")
        state = TrainState(**saved)
        model.load_weights(folder / "model.weights.h5")
    except (OSError, ValueError, TypeError, KeyError) as e:
        raise ErgoError(f"{folder}/ is damaged ({type(e).__name__}: {e})") from None
    return state


class _Stopped(KeyboardInterrupt):
    """SIGTERM (docker stop, a scheduler) taken as Ctrl-C: training saves where it is and stops."""


def _raise_stopped(signum, frame):
    raise _Stopped()


class _StopOnSigterm:
    """While training: SIGTERM raises _Stopped (a KeyboardInterrupt), so that it saves as Ctrl-C does.
    Only the main thread can take signals; elsewhere (a notebook's worker thread) nothing changes."""

    def __enter__(self):
        self.active = threading.current_thread() is threading.main_thread()
        if self.active:
            self.before = signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)
            signal.signal(signal.SIGTERM, _raise_stopped)
        return self

    def __exit__(self, *exc):
        if self.active:
            signal.signal(signal.SIGTERM, self.before[0])
            signal.signal(signal.SIGINT, self.before[1])


def _hold_signals() -> None:
    """While a stop saves, a second SIGTERM or Ctrl-C is ignored, so that the save completes."""
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        signal.signal(signal.SIGINT, signal.SIG_IGN)


def _trim_csv(path: Path, step: int) -> None:
    """Drop the rows of steps after `step`: a resumed run trains them again, and would draw them twice."""
    if not path.exists():
        return
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    kept = [r for r in rows if r.get("step", "").isdigit() and int(r["step"]) <= step]
    if len(kept) == len(rows) or not rows:
        return
    with atomic_path(path) as tmp, open(tmp, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(kept)


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


class _Books(keras.callbacks.Callback):
    """Counts batches and target tokens (for resume and tokens/s) and writes the mean training loss of
    every `log_every` steps.

    Keras reports a running mean over the fit, weighted by batch size; each batch's own loss is
    recovered from two consecutive means and the batch's size, which the batch order knows.
    """

    def __init__(self, run: RunFolder, state: TrainState, log_every: int, writer, reply_tokens: np.ndarray,
                 batch_size: int):
        super().__init__()
        self.run, self.state, self.log_every, self.writer = run, state, log_every, writer
        self.reply_tokens = reply_tokens
        self.tokens_per_batch = float(reply_tokens.mean()) * batch_size
        self.batches: BatchIterator | None = None
        self.tokens = 0  # target tokens trained since the last validation

    def on_epoch_begin(self, epoch, logs=None):
        self.seen, self.mean, self.window = 0, 0.0, []

    def on_train_batch_end(self, batch, logs=None):
        indices = self.batches.order[self.state.position]
        size = len(indices)
        mean = float(logs["loss"])
        loss = (mean * (self.seen + size) - self.mean * self.seen) / size
        self.seen, self.mean = self.seen + size, mean
        tokens = int(self.reply_tokens[indices].sum())
        loss *= self.tokens_per_batch / tokens  # the step's loss is over a constant (Seq2Seq.tokens_per_batch)
        self.window.append(loss)
        self.tokens += tokens
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


MAX_VALIDATION_SHARE = 0.05
SAVE_SECONDS = 2.0  # a first guess at writing best/ and latest/, until a validation has been timed


class _Clock(keras.callbacks.Callback):
    """The run's wall clock: it ends a fit when a validation is due (every `validate_every` minutes), when
    latest/ is due to be saved (every `save_every` minutes), or when the budget (`minutes`) must stop
    training to leave time for the last validation and save.

    Under a budget with a schedule it also sets the learning rate of every step from the share of the
    budget spent: an optional warm-up, then a linear fall to `final_lr` times the epoch's rate. A run that knows when it
    ends spends its last minutes on small steps that settle the weights, instead of on steps as large
    as its first; this is the schedule of "budgeted training" (Li et al., 2020).

    On several workers every decision, the rate included, is taken together (ergo/cluster.py).
    """

    def __init__(self, state: TrainState, cfg: TrainConfig, bar=None, reserve: float = 0.0, tail: float = 0.0,
                 tail_seconds: float = 0.0, cluster: Cluster = Cluster()):
        """`reserve`: the expected seconds of a validation and its saves, until one has been timed;
        `tail` and `tail_seconds`: the work after the last one (the ranking's choice), as a share of a
        validation's scoring plus a fixed time."""
        super().__init__()
        self.cluster = cluster
        self.tail, self.tail_seconds = tail, tail_seconds
        self.state, self.cfg, self.bar = state, cfg, bar
        self.budget = cfg.minutes * 60.0
        self.scheduled = bool(self.budget) and (cfg.warmup > 0 or cfg.final_lr < 1)
        self.every = cfg.validation_minutes * 60.0
        self.origin = time.perf_counter() - state.elapsed  # elapsed() carries on from a resumed run's clock
        self.reserve = reserve  # kept free at the budget's end for the last validation and save
        self.next_validation = state.elapsed + self.every if self.every else math.inf
        self.save_every = cfg.save_every * 60.0
        self.saved()

    def elapsed(self) -> float:
        return time.perf_counter() - self.origin

    def validated(self, seconds: float, scoring: float) -> None:
        """A validation (and its saves) just ended after `seconds`, `scoring` of them spent on the
        validation split. Unless the user chose the interval, it stretches so that scoring takes at most
        MAX_VALIDATION_SHARE of the time: a big corpus's validation split would otherwise eat the budget."""
        self.reserve = seconds + self.tail * scoring + self.tail_seconds
        every = self.every if self.cfg.validate_every else max(self.every, scoring / MAX_VALIDATION_SHARE)
        self.next_validation = self.elapsed() + every if every else math.inf
        self.saved()

    def saved(self) -> None:
        """latest/ was just saved: the next save is due `save_every` from now."""
        self.next_save = self.elapsed() + self.save_every if self.save_every else math.inf

    def validation_at(self) -> float:
        end = self.budget - self.reserve if self.budget else math.inf
        return min(self.next_validation, end)

    def stop_at(self) -> float:
        """When the fit in progress must end."""
        return min(self.validation_at(), self.next_save)

    def due(self) -> "_Due":
        """What is due now, as all workers agree: the end of the fit, a validation, a save, the budget's end,
        and the learning rate of the next step (0 without a schedule)."""
        now = self.elapsed()
        *flags, rate = self.cluster.agree([
            now >= self.stop_at(), now >= self.validation_at(), now >= self.next_save,
            bool(self.budget) and now >= self.budget - self.reserve, self.rate() if self.scheduled else 0.0])
        return _Due(*(bool(f) for f in flags), float(rate))

    def rate(self) -> float:
        """The learning rate this step, from the epoch's rate and the share of the budget spent."""
        share = min(self.elapsed() / self.budget, 1.0)
        warm = min(1.0, share / self.cfg.warmup) if self.cfg.warmup else 1.0
        return self.state.learning_rate * warm * (1.0 - (1.0 - self.cfg.final_lr) * share)

    def _next_step(self, due: "_Due") -> None:
        if self.scheduled:  # the default (constant) rate costs the step nothing
            self.model.optimizer.learning_rate.assign(due.rate)

    def on_train_begin(self, logs=None):
        self._next_step(self.due())

    def on_train_batch_end(self, batch, logs=None):
        due = self.due()
        if self.bar is not None:
            self.bar.set_postfix_str(f"epoch {self.state.epoch + 1}, step {self.state.step:,}, "
                                     f"loss {float(logs['loss']):.3f}", refresh=False)
            self.bar.update(min(round(self.elapsed()), self.bar.total) - self.bar.n)  # redrawn at most once a second
        if due.stop:
            self.model.stop_training = True
        self._next_step(due)


class _Due(NamedTuple):
    stop: bool
    validation: bool
    save: bool
    spent: bool
    rate: float


class _TensorBoard:
    """Scalars for TensorBoard; only the TensorFlow backend has the writer, elsewhere it is a no-op."""

    def __init__(self, logdir: Path):
        import tensorflow as tf
        self.tf, self.writer = tf, tf.summary.create_file_writer(str(logdir))

    def scalar(self, name, value, step):
        with self.writer.as_default():
            self.tf.summary.scalar(name, value, step=step)
        self.writer.flush()

    def close(self) -> None:
        """The events file closed when training ends, not whenever the writer happens to be collected."""
        self.writer.close()

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
    """curves.png: perplexities against the run's minutes (every validation, within epochs too) and the
    step loss, for a person to look at."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    def rows(name):
        path = run.file(name)
        if not path.exists():
            return []
        with open(path, newline="") as f:
            return list(csv.DictReader(f))

    validations, steps = rows("metrics.csv"), rows("steps.csv")
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    if validations:
        x = [float(r["minutes"]) for r in validations]
        left.plot(x, [float(r["train_ppl"]) for r in validations], "o-", label="training (epoch so far)")
        left.plot(x, [float(r["valid_ppl"]) for r in validations], "o-", label="validation")
        left.set_yscale("log")
        left.legend()
    left.set(title="perplexity", xlabel="minutes (validation and saving included)", ylabel="perplexity (log scale)")
    if steps:
        right.plot([int(r["step"]) for r in steps], [float(r["loss"]) for r in steps])
    right.set(title="training loss", xlabel="step", ylabel="cross-entropy per token")
    fig.tight_layout()
    with atomic_path(run.file("curves.png")) as tmp:
        fig.savefig(tmp, format="png", dpi=90)
    plt.close(fig)


def _distribution_scope():
    """The TF backend's own multi-device engine: MirroredStrategy over several GPUs, or
    MultiWorkerMirroredStrategy where TF_CONFIG names several machines. One device: no strategy."""
    import contextlib
    if keras.backend.backend() != "tensorflow":
        return contextlib.nullcontext()
    import tensorflow as tf
    if os.environ.get("TF_CONFIG"):
        try:
            task = json.loads(os.environ["TF_CONFIG"])["task"]
            task["type"], int(task["index"])
        except (ValueError, TypeError, KeyError):
            raise ErgoError('TF_CONFIG must be JSON naming the cluster and this task, e.g. {"cluster": {"worker": '
                            '["host1:12345", "host2:12345"]}, "task": {"type": "worker", "index": 0}} '
                            '(README: "Training on several machines")') from None
        return tf.distribute.MultiWorkerMirroredStrategy().scope()
    if len(tf.config.list_logical_devices("GPU")) > 1:
        return tf.distribute.MirroredStrategy().scope()
    return contextlib.nullcontext()


def fine_tuning(bundle: Bundle) -> FixedVocab:
    """A bundle's vocabulary and word vectors (its encoder's embedding table), to encode the data that
    fine-tunes it (`train(init_from=bundle)`)."""
    matrix = keras.ops.convert_to_numpy(bundle.build_model().enc_embedding.embeddings)
    return FixedVocab(bundle.vocab, keyed_vectors(bundle.vocab.words, matrix),
                      f"the embeddings of {bundle.path} (version {bundle.version()})")


def train(data: PreparedData, model_cfg: ModelConfig, train_cfg: TrainConfig, model_dir: Path, *,
          selector_cfg: SelectorConfig | None = None, resume: bool = False, progress: bool = True,
          init_embeddings: bool = True, init_from: Bundle | None = None, callbacks: tuple = (),
          strategy_scope=None, log=print) -> TrainState:
    """Train until `train_cfg.epochs`, early stopping, or the end of the budget (`train_cfg.minutes`);
    returns the final state.

    `selector_cfg`: train a reply selector first (once a run), and choose its weight in the ranking at
    the end; None (or encoder "none"): no selector, and best/ gets the older retrieval index instead.
    `init_embeddings`: start the embeddings from the word2vec matrix (False: at random, to compare).
    `init_from`: fine-tune this bundle: start from its weights (its model_config is the one to give), on data
    encoded with its vocabulary (preprocess(fixed=fine_tuning(bundle))), keeping its reply selector.
    `strategy_scope`: a tf.distribute scope to build the model in (default: picked from the devices).
    """
    with _StopOnSigterm():
        return _train(data, model_cfg, train_cfg, model_dir, selector_cfg=selector_cfg, resume=resume,
                      progress=progress, init_embeddings=init_embeddings, init_from=init_from, callbacks=callbacks,
                      strategy_scope=strategy_scope, log=log)


def _train(data, model_cfg, train_cfg, model_dir, *, selector_cfg, resume, progress, init_embeddings, init_from,
           callbacks, strategy_scope, log) -> TrainState:
    vocab, matrix = data.vocab(), data.embeddings()
    train_split, valid_split = data.split("train"), data.split("valid")
    if not valid_split["reply"]:
        raise ErgoError("the validation split is empty: preprocess a corpus with more conversations")
    if init_from is not None and init_from.vocab.words != vocab.words:
        raise ErgoError(f"{data.path} is not encoded with the vocabulary of {init_from.path}, which fine-tuning "
                        f"keeps: preprocess the corpus again with --init-from (and a new --data-dir)")

    configure_threads()
    if train_cfg.mixed_precision:
        _mixed_precision(log)
    with strategy_scope if strategy_scope is not None else _distribution_scope():
        cluster = Cluster.current()
        run = RunFolder(cluster.run_dir(model_dir), {
            "model_config": to_dict(model_cfg), "data_key": data.manifest["key"],
            "vocab_size": len(vocab), "embedding_dim": int(matrix.shape[1]),
            "corpus": data.manifest["corpus"]["name"], "word2vec_init": init_embeddings,
            "batch_size": train_cfg.batch_size,  # a resume at batch k of another size would skip or repeat pairs
            **({"init_from": {"bundle": init_from.name, "version": init_from.version()}} if init_from else {})})
        source, resume = _resume_source(cluster, run, Path(model_dir), run.claim(resume, log), resume)
        keras.utils.set_random_seed(data.data_config.seed)
        model = (build_seq2seq(model_cfg, len(vocab), matrix) if init_embeddings else
                 build_seq2seq(model_cfg, len(vocab), embedding_dim=matrix.shape[1]))
        if init_from is not None and not resume:
            init_from.load_into(model)
        compile_for_training(model, train_cfg)
        cluster.prepare(model)
        replicas_in_sync = _replicas()
        # the optimizer's variables, built on resume, must be made under the strategy too
        state = (load_latest(source, model, log, repair=source is run) if resume
                 else TrainState(learning_rate=train_cfg.learning_rate))
    settings = hashlib.sha256(json.dumps([run.identity, to_dict(train_cfg)], sort_keys=True).encode()).digest()
    if not cluster.same([int.from_bytes(settings[:6], "big"), state.epoch, state.position, state.step]):
        raise ErgoError(f"the workers differ in their options or their latest checkpoints (this one: {source.path}/, "
                        f"step {state.step:,}): start every worker with the same options, and resume them from "
                        f"the chief's latest/ (on storage they all see, or copied into RUN.worker-K/latest/)")
    rank = functools.partial(_rank, run, data, log=log) if cluster.chief else lambda state, **_: state
    if resume:
        for name in ("steps.csv", "metrics.csv"):
            _trim_csv(run.file(name), state.step)
        log(f"resuming {run.path}/ after epoch {state.epoch}, batch {state.position} "
            f"(best validation perplexity so far {state.best_valid_ppl:.2f}, {state.elapsed / 60:.1f} min in)")
    budget = train_cfg.minutes * 60.0
    if budget and cluster.agree([state.elapsed >= budget or train_cfg.minutes <= state.spent_minutes])[0]:
        log(f"this run has used its {train_cfg.minutes:g} minutes: pass a larger --minutes to train on")
        return rank(state, only_missing=True)
    if state.stopped_early or state.epoch >= train_cfg.epochs:
        log(f"this run has ended ({'early stop' if state.stopped_early else f'{state.epoch} epochs'}): "
            f"nothing to train" + ("" if state.stopped_early else "; pass a larger --epochs to train on"))
        return rank(state, only_missing=True)
    if init_from is not None and cluster.chief and has_selector(init_from.path) and not has_selector(run.path):
        link(init_from.path / SELECTOR, run.file(SELECTOR))  # its index holds the replies of the data it knows
        log(f"reply selector: {init_from.path}'s, kept")
    wanted = (cluster.chief and selector_cfg is not None and selector_cfg.encoder != "none"
              and (selector_cfg.share or not budget))
    if wanted and not has_selector(run.path):
        started = time.perf_counter()
        left = max(budget - state.elapsed, 1.0) / 60 if budget else 0.0
        train_selector(data, selector_cfg, run.file(SELECTOR), minutes=min(train_cfg.minutes * selector_cfg.share, left)
                       if budget else 0.0, progress=progress, log=log)
        state.elapsed += time.perf_counter() - started  # the budget counts it
    elif wanted and _selector_encoder(run.path) != selector_cfg.encoder:
        log(f"note: this run's selector has {_selector_encoder(run.path)} towers and is kept; "
            f"`--train-selector --selector {selector_cfg.encoder}` replaces it")
    state.elapsed = float(cluster.agree([state.elapsed])[0])  # the others waited for the chief's selector
    model.optimizer.learning_rate.assign(state.learning_rate)
    writer = _TensorBoard.create(run.file("logs"))
    reply_tokens = train_split["reply"].lengths() + 1  # + <eos>: the target tokens
    books = _Books(run, state, train_cfg.log_every, writer, reply_tokens, train_cfg.batch_size)
    model.tokens_per_batch = books.tokens_per_batch / replicas_in_sync  # each replica's share of a batch,
    # over all workers: each keeps its slice of every batch (ergo/cluster.py)
    valid_sample = _validation_sample(valid_split)
    valid_batches = list(BatchIterator(valid_sample, VALID_BATCH, seed=0))
    params = model.count_params()
    log(f"model: {params:,} parameters, {model_cfg.layers}x{model_cfg.hidden} LSTM, {model_cfg.attention} "
        f"attention; {len(train_split['reply']):,} training pairs, batch {train_cfg.batch_size}"
        + (f", {replicas_in_sync} replicas" if replicas_in_sync > 1 else "")
        + (f" on {cluster.workers} workers (this is worker {cluster.index}"
           + (", the chief" if cluster.chief else f", writing to {run.path}/") + ")" if cluster.workers > 1 else "")
        + (f"; training for {train_cfg.minutes:g} minutes" if budget else ""))
    bar = (tqdm(total=round(budget), initial=min(round(state.elapsed), round(budget)), unit="s", desc="train",
                bar_format="{desc}: {percentage:3.0f}%|{bar}| {n}/{total} s [{postfix}]", mininterval=1.0)
           if budget and progress else None)
    tail = _ranking_share(len(valid_sample["reply"])) if has_selector(run.path) else 0.0
    tail_seconds = RANKING_LOAD_SECONDS if tail else 0.0
    reserve = _validation_seconds(model, valid_batches) * (1.0 + tail) + tail_seconds if budget else 0.0
    clock = _Clock(state, train_cfg, bar, reserve=reserve, tail=tail, tail_seconds=tail_seconds, cluster=cluster)
    fit_seconds = 0.0
    say = (lambda m: bar.write(m)) if bar is not None else log  # lines above the bar, not through it
    validate = functools.partial(_validate, run, model, state, train_cfg, data, vocab, valid_batches, books,
                                 clock, writer, say, chief=cluster.chief)
    try:
        while state.epoch < train_cfg.epochs and not state.stopped_early:
            batches = BatchIterator(train_split, train_cfg.batch_size, seed=data.data_config.seed,
                                    epoch=state.epoch, start=state.position)
            books.batches = batches
            if bar is None and state.position == 0:
                log(f"epoch {state.epoch + 1}" + ("" if budget else f"/{train_cfg.epochs}"))
            if state.position < len(batches):  # none left when a run stopped during the epoch's validation
                started = time.perf_counter()
                with cluster.fitting(model):
                    model.fit(as_keras_data(_EpochBatches(batches)), epochs=1, shuffle=False,
                              verbose=1 if progress and bar is None else 0, callbacks=[books, clock, *callbacks])
                fit_seconds += time.perf_counter() - started
                state.seconds += time.perf_counter() - started
            epoch_end, due = state.position >= len(batches), clock.due()
            if epoch_end or due.validation:
                validate(epoch_end=epoch_end, tokens_per_s=books.tokens / max(fit_seconds, 1e-9))
                books.tokens, fit_seconds = 0, 0.0
            elif due.save:  # between validations: only the position and weights, for a kill
                state.elapsed = clock.elapsed()
                save_latest(run, model, state)
                clock.saved()
            if clock.due().spent:
                state.spent_minutes, state.elapsed = train_cfg.minutes, clock.elapsed()
                save_latest(run, model, state)
                say(f"the {train_cfg.minutes:g}-minute budget is spent: stopped at epoch {state.epoch + 1}, "
                    f"batch {state.position} (resume with a larger --minutes to train on)")
                break
    except KeyboardInterrupt as e:
        _hold_signals()
        state.elapsed = clock.elapsed()
        save_latest(run, model, state)
        how = "stopped by SIGTERM" if isinstance(e, _Stopped) else "interrupted"
        raise ErgoError(f"{how}: saved the latest checkpoint in {run.path}/latest/ "
                        f"(epoch {state.epoch + 1}, batch {state.position}); continue with --resume") from None
    finally:
        if bar is not None:
            bar.close()
        if writer is not None:
            writer.close()
    return rank(state)


def _resume_source(cluster: Cluster, run: RunFolder, model_dir: Path, has_latest: bool, resume: bool):
    """(The run folder to resume from, whether to resume): this worker's own; but a worker other than the
    chief resumes from the chief's latest/ when it can see it (storage all workers share), so that every
    worker starts at the step the chief saved, however each was stopped."""
    chief = RunFolder(model_dir)
    if resume and not cluster.chief and chief.file("latest/state.json").is_file():
        return chief, True
    return run, has_latest


VALID_PAIRS = 20_000  # validation perplexity is measured on at most this many pairs (a seeded sample)


def _validation_sample(split: dict) -> dict:
    """The validation split, or past VALID_PAIRS an even seeded sample of it, the same at every validation
    and resume: a big corpus's split (90,000 pairs for 2M utterances) would make each validation minutes long,
    and 20,000 pairs measure perplexity to well under 1 %."""
    rows = even_sample(len(split["reply"]), VALID_PAIRS)
    if rows is None:
        return split
    return {"context": split["context"].take(rows), "reply": split["reply"].take(rows)}


def _rank(run: RunFolder, data: PreparedData, state: TrainState, log, only_missing: bool = False) -> TrainState:
    """The end of a run: the selector's weight in the ranking, chosen on the best bundle (`only_missing`:
    only where a stop during that choice left none); returns the state."""
    best = run.file("best")
    if has_selector(best) and not (only_missing and (best / RANKING_FILE).is_file()):
        from .evaluation import tune_ranking
        tune_ranking(best, data, log=log)
    return state


def add_selector(bundle_dir: Path, data_dir: Path, cfg: SelectorConfig, *, minutes: float = 0.0,
                 progress: bool = True, log=print) -> None:
    """Train a reply selector for an existing bundle (replacing any it has; `minutes` 0: its epochs), then
    choose its weight in the ranking. A run's best/ gets it through the run folder's selector/, so that
    the run's later bests carry it too."""
    from .evaluation import tune_ranking
    from .retrieval import vocab_digest
    bundle_dir = Path(bundle_dir)
    if minutes < 0:
        raise ErgoError(f"--minutes must be 0 or more, not {minutes:g}")
    bundle, data = Bundle.load(bundle_dir), PreparedData.open(Path(data_dir))
    if vocab_digest(data.vocab()) != vocab_digest(bundle.vocab):
        raise ErgoError(f"{data.path} was not the data {bundle_dir} was trained on (the vocabularies differ)")
    if cfg.encoder == "none":
        raise ErgoError("--selector none trains no selector; choose bow or lstm")
    run_dir = bundle_dir.parent if bundle_dir.name == "best" and (bundle_dir.parent / "run.json").is_file() else None
    trained = (run_dir or bundle_dir) / SELECTOR
    (bundle_dir / RANKING_FILE).unlink(missing_ok=True)  # the old selector's weight
    train_selector(data, cfg, trained, minutes=minutes, progress=progress, log=log)
    if run_dir is not None:
        with atomic_dir(bundle_dir / SELECTOR) as tmp:
            for file in trained.iterdir():
                link(file, tmp / file.name)
    tune_ranking(bundle_dir, data, log=log)


def _selector_encoder(folder: Path) -> str:
    """The towers of the selector in `folder` (a run or a bundle)."""
    try:
        return json.loads((folder / SELECTOR / "config.json").read_text(encoding="utf-8"))["selector_config"]["encoder"]
    except (OSError, ValueError, KeyError, TypeError):
        return "unknown"


def _ranking_share(valid_pairs: int) -> float:
    """The ranking's choice at a run's end as a share of a validation's scoring: it scores each of its
    pairs' 10 candidates and the anti-LM's one, where a validation scores each pair once."""
    from .evaluation import TUNE_PAIRS
    from .ranking import CANDIDATES
    return min(TUNE_PAIRS, valid_pairs) * (CANDIDATES + 1) / max(valid_pairs, 1)


VALID_BATCH = 256  # validation has no gradients to hold: wide batches, few calls
RANKING_LOAD_SECONDS = 3.0  # the ranking's choice loads the best bundle and traces its scoring first


def _validation_seconds(model, valid_batches) -> float:
    """A budget's first estimate of a validation and its saves: a few batches timed (after one that
    compiles the step), scaled to the split."""
    perplexity(model, valid_batches[:1])
    sample = valid_batches[1:4] or valid_batches[:1]
    started = time.perf_counter()
    perplexity(model, sample)
    return (time.perf_counter() - started) / len(sample) * len(valid_batches) + SAVE_SECONDS


def _validate(run, model, state, train_cfg, data, vocab, valid_batches, books, clock, writer, log, *,
              epoch_end: bool, tokens_per_s: float, chief: bool = True) -> None:
    """Validation perplexity, then records, best/ (when it improved, on the chief) and latest/, at an
    epoch's end or within one. `state` moves on only once latest/ is saved: a Ctrl-C before that saves the run as
    trained but not validated, and a resume validates again (and writes best/ again, if it was the best)."""
    started = time.perf_counter()
    if state.validated_step == state.step and not epoch_end:
        return  # nothing trained since the last validation
    valid_ppl = perplexity(model, valid_batches)
    scoring = time.perf_counter() - started
    done, state = state, replace(state)
    train_loss = state.epoch_loss_sum / max(state.epoch_pairs, 1)
    train_ppl = math.exp(min(train_loss, 50.0))
    epoch_share = state.position / max(len(books.batches), 1)
    state.validated_step = state.step
    improved = valid_ppl < state.best_valid_ppl
    if improved:
        state.best_valid_ppl, state.best_epoch = valid_ppl, state.epoch + 1
    minutes = clock.elapsed() / 60
    _append_csv(run.file("metrics.csv"), {
        "epoch": state.epoch + 1, "epoch_share": round(epoch_share, 4), "step": state.step,
        "minutes": round(minutes, 3), "train_loss": round(train_loss, 5), "train_ppl": round(train_ppl, 3),
        "valid_ppl": round(valid_ppl, 3), "learning_rate": f"{float(keras.ops.convert_to_numpy(model.optimizer.learning_rate)):.6g}",
        "tokens_per_s": round(tokens_per_s), "seconds": round(state.seconds, 1)})
    if writer is not None:
        writer.scalar("valid/ppl", valid_ppl, state.step)
        writer.scalar("train/epoch_ppl", train_ppl, state.step)
    if improved and chief:
        _save_best(run, model, data, vocab, {
            "corpus": data.manifest["corpus"]["name"], "epoch": state.epoch + 1,
            "epoch_share": round(epoch_share, 4), "step": state.step,
            "valid_perplexity": round(valid_ppl, 3), "train_perplexity": round(train_ppl, 3),
            "parameters": model.count_params(), "training_seconds": round(state.seconds, 1),
            "minutes": round(minutes, 2), "backend": keras.backend.backend(),
            "data_dir": str(data.path.resolve()), "data": data.stats["pairs"]})
    where = f"epoch {state.epoch + 1}" + ("" if epoch_end else f" at {epoch_share:.0%}")
    if epoch_end:
        state.bad_epochs = 0 if state.best_epoch == state.epoch + 1 else state.bad_epochs + 1
        state.epoch += 1
        state.position, state.epoch_loss_sum, state.epoch_pairs = 0, 0.0, 0
        if state.bad_epochs >= train_cfg.patience:
            state.stopped_early = True
        state.learning_rate *= train_cfg.lr_decay
        model.optimizer.learning_rate.assign(state.learning_rate)
    state.elapsed = clock.elapsed()
    save_latest(run, model, state)
    done.__dict__.update(asdict(state))
    plot_curves(run)
    clock.validated(time.perf_counter() - started, scoring)
    mark = (" (best, saved to best/)" if chief else " (best)") if improved else ""
    log(f"{where}, {minutes:.1f} min: training perplexity {train_ppl:.2f}, validation perplexity "
        f"{valid_ppl:.2f}{mark}, {tokens_per_s:,.0f} target tokens/s")
    if done.stopped_early:
        log(f"early stop: no better validation perplexity for {train_cfg.patience} epochs "
            f"(best {done.best_valid_ppl:.2f} in epoch {done.best_epoch})")


def _save_best(run: RunFolder, model, data: PreparedData, vocab, card: dict) -> None:
    """best/ as a bundle, with the run's reply selector (trained once, from the data alone) and the
    previous best's ranking weight until the run's end chooses it again. A run without a selector gets
    the older retrieval index instead: it too depends on the data alone, so it is built with the first
    best/ and carried into every later one."""
    best = run.file("best")
    if has_selector(run.path):
        carried = [run.file(SELECTOR)] + [f for f in (best / RANKING_FILE,) if f.is_file()]
    else:
        carried = [f for f in (best / INDEX_FILE,) if f.is_file()]
    save_bundle(best, model, data.data_config, model.cfg, vocab, card, carry=carried)
    if not carried:
        build_index(data, best)


def _replicas() -> int:
    """Replicas the distribution strategy in force splits each batch over (1 without one)."""
    if keras.backend.backend() != "tensorflow":
        return 1
    import tensorflow as tf
    return tf.distribute.get_strategy().num_replicas_in_sync


def configure_threads() -> None:
    """One TensorFlow thread inside each op, on a CPU of few cores: the steps' matrix products are small
    enough that splitting each over the cores costs more than it saves, while independent ops (a
    gradient's two products, the two directions of work in the backward pass) then run side by side.
    Set before TensorFlow starts its runtime; ERGO_INTRA_OP_THREADS overrides it, and a runtime that
    already started (a test, a notebook) keeps its own."""
    if keras.backend.backend() != "tensorflow":
        return
    import tensorflow as tf
    given = os.environ.get("ERGO_INTRA_OP_THREADS", "1" if (os.cpu_count() or 1) <= CPU_FEW_CORES else "0")
    if not given.isdigit():
        raise ErgoError(f"ERGO_INTRA_OP_THREADS must be a whole number (0: TensorFlow's choice), not {given!r}")
    wanted = int(given)
    if tf.config.list_physical_devices("GPU") or not wanted:
        return
    try:
        tf.config.threading.set_intra_op_parallelism_threads(wanted)
    except RuntimeError:
        pass  # the runtime has started: its setting stays


CPU_FEW_CORES = 4


def _mixed_precision(log) -> None:
    """float16 compute on a GPU; on a CPU it would only be slower, so it is skipped with a note."""
    if keras.backend.backend() == "tensorflow":
        import tensorflow as tf
        if not tf.config.list_physical_devices("GPU"):
            log("note: --mixed-precision needs a GPU; training in float32")
            return
    keras.mixed_precision.set_global_policy("mixed_float16")
