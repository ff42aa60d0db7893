"""Settings for data, model and training, and the catalogue of named presets.

A preset is one complete, named setting of all three groups; any field can be overridden from the
command line. Keeping them in one catalogue (as OpenNMT-tf does) beats a pile of unrelated flags.
"""
from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field

from .errors import ErgoError

TRUE, FALSE = ("1", "true", "yes"), ("0", "false", "no")


def env_flag(name: str, default: bool, env=os.environ) -> bool:
    """A true/false setting from the environment (1/true/yes or 0/false/no); unset or empty: `default`."""
    raw = env.get(name, "").strip().lower()
    if not raw:
        return default
    if raw not in TRUE + FALSE:
        raise ErgoError(f"{name} must be true or false, not {raw!r}")
    return raw in TRUE


@dataclass(frozen=True)
class DataConfig:
    """How a corpus becomes (context ids, reply ids) pairs; changing any field rebuilds the data."""

    lowercase: bool = True          # fold case before tokenising (see ergo/text.py)
    context_turns: int = 2          # K: the last K turns before a reply form its context
    max_context_len: int = 40       # context tokens kept (the oldest are dropped first)
    max_reply_len: int = 20         # replies longer than this are skipped (a cut reply teaches cut replies)
    min_count: int = 2              # a word seen fewer times in training data becomes <unk>
    max_vocab: int = 8000           # vocabulary size, special tokens included
    valid_fraction: float = 0.05    # share of conversations held out for validation
    test_fraction: float = 0.05     # share of conversations held out for testing
    seed: int = 13                  # the split and word2vec are reproducible from this
    embedding_dim: int = 128        # word2vec size; the model's embedding size follows it
    w2v_epochs: int = 5             # fewer on a big corpus: at most 20M tokens seen (ergo.dataset.word2vec_epochs)
    w2v_window: int = 5

    def __post_init__(self):
        _check(self, at_least_1=("context_turns", "max_context_len", "max_reply_len", "min_count", "max_vocab",
                                 "embedding_dim", "w2v_epochs", "w2v_window"),
               fractions=("valid_fraction", "test_fraction"))


@dataclass(frozen=True)
class ModelConfig:
    """The shape of the LSTM encoder-decoder; a checkpoint only loads into the same shape."""

    hidden: int = 256               # LSTM units in every layer
    layers: int = 2                 # LSTM layers in the encoder and in the decoder
    bidirectional_encoder: bool = False  # first encoder layer reads both ways
    attention: str = "dot"          # dot | general | additive
    dropout: float = 0.2            # between layers and before the output projection
    share_embeddings: bool = True   # one embedding table for encoder and decoder
    freeze_embeddings: bool = False  # keep the word2vec vectors fixed
    sampled_softmax: int = 0        # >0: that many sampled classes in training (full softmax to validate)

    def __post_init__(self):
        _check(self, at_least_1=("hidden", "layers"), at_least_0=("sampled_softmax",), fractions=("dropout",))


@dataclass(frozen=True)
class TrainConfig:
    """How to fit: these can change between runs of the same model folder."""

    epochs: int = 10
    batch_size: int = 64
    learning_rate: float = 1e-3
    clipnorm: float = 5.0
    lr_decay: float = 1.0           # learning rate multiplied by this after every epoch
    patience: int = 3               # epochs without a better validation perplexity before stopping
    log_every: int = 100            # steps between training-loss lines in metrics and TensorBoard
    mixed_precision: bool = False
    minutes: float = 0.0            # >0: a wall-clock budget for the run, validation and saving included
    validate_every: float = 0.0     # >0: validate (and save) every this many minutes, within epochs too
    save_every: float = 10.0        # >0: save latest/ at least every this many minutes, within epochs too
    warmup: float = 0.0             # under a budget: its share over which the learning rate rises from 0
    final_lr: float = 1.0           # under a budget: the learning rate at its end, as a share of the start
    label_smoothing: float = 0.0    # share of the target spread over the vocabulary (full softmax only)

    def __post_init__(self):
        _check(self, at_least_1=("epochs", "batch_size", "patience", "log_every"),
               at_least_0=("minutes", "validate_every", "save_every"), positive=("learning_rate", "clipnorm", "lr_decay"),
               fractions=("warmup", "label_smoothing"))
        if not 0 <= self.final_lr <= 1:
            raise ErgoError(f"final-lr must be from 0 to 1, not {self.final_lr!r}")

    @property
    def validation_minutes(self) -> float:
        """Minutes between validations within epochs (0: at epoch ends only); a budget without a
        choice validates about ten times, and at least a minute apart."""
        if self.validate_every or not self.minutes:
            return self.validate_every
        return max(1.0, self.minutes / 10)


SELECTOR_ENCODERS = ("bow", "lstm", "none")


@dataclass(frozen=True)
class SelectorConfig:
    """The reply selector (ergo/selector.py): a dual encoder trained beside the seq2seq, in the bundle.

    `bow` towers average word vectors (the context's last turn apart from the whole) under a small MLP;
    `lstm` towers read the words in order, at about 10 times bow's cost a pair on a CPU, and ranked true
    replies no better for the minutes (docs/BENCHMARKS.md, "Reply selector"); `none` trains no selector
    (retrieval then finds replies by similar contexts, as bundles before the selector did)."""

    encoder: str = "bow"
    hidden: int = 512               # the MLP's width (bow) or the LSTM's units (lstm)
    dim: int = 256                  # the vectors a context and a reply are compared by
    batch_size: int = 256           # each context is ranked against the batch's replies
    learning_rate: float = 2e-3
    epochs: int = 8                 # at most this many passes over the training pairs
    share: float = 0.1              # under a --minutes budget: the share of it the selector trains for

    def __post_init__(self):
        if self.encoder not in SELECTOR_ENCODERS:
            raise ErgoError(f"unknown selector {self.encoder!r}; choose one of: {', '.join(SELECTOR_ENCODERS)}")
        _check(self, at_least_1=("hidden", "dim", "batch_size", "epochs"), positive=("learning_rate",),
               fractions=("share",))


def _check(settings, at_least_1=(), at_least_0=(), positive=(), fractions=()) -> None:
    """A clear ErgoError for a value that would only fail later, deep in training, as a traceback."""
    rules = [(at_least_1, lambda v: v >= 1, "at least 1"), (at_least_0, lambda v: v >= 0, "0 or more"),
             (positive, lambda v: v > 0, "above 0"), (fractions, lambda v: 0 <= v < 1, "from 0 up to (not including) 1")]
    for names, ok, what in rules:
        for name in names:
            value = getattr(settings, name)
            if not ok(value):
                raise ErgoError(f"{name.replace('_', '-')} must be {what}, not {value!r}")


@dataclass(frozen=True)
class Preset:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    selector: SelectorConfig = field(default_factory=SelectorConfig)


PRESETS: dict[str, Preset] = {
    # For tests: trains in seconds on a fixture corpus.
    "tiny": Preset(
        DataConfig(max_vocab=400, min_count=1, embedding_dim=16, max_context_len=24, max_reply_len=12,
                   w2v_epochs=2),
        ModelConfig(hidden=32, layers=2, dropout=0.1),
        TrainConfig(epochs=2, batch_size=16, patience=2, log_every=5),
        SelectorConfig(hidden=32, dim=32, batch_size=32, epochs=3),
    ),
    # For a 2-core CPU: a good bot of the default corpus in minutes (`--minutes 9`). Embeddings as wide
    # as the LSTM: 256-d word2vec learned 5 % more per step than 128-d, at the same speed. Sampled
    # softmax: 38 % more steps a minute than the full one, and a better model at 5 minutes (BENCHMARKS.md).
    "quick": Preset(
        DataConfig(max_vocab=8000, embedding_dim=256, max_context_len=30, max_reply_len=20),
        ModelConfig(hidden=256, layers=2, dropout=0.2, sampled_softmax=512),
        TrainConfig(epochs=5, batch_size=64),
    ),
    # The classic setting, for a GPU: 2x512 LSTM with attention, vocabulary ~20k.
    "base": Preset(
        DataConfig(max_vocab=20000, embedding_dim=256, max_context_len=40, max_reply_len=20),
        ModelConfig(hidden=512, layers=2, dropout=0.3),
        TrainConfig(epochs=20, batch_size=128),
    ),
    # A bigger GPU model for big corpora (Ubuntu, Cornell + your own).
    "large": Preset(
        DataConfig(max_vocab=40000, embedding_dim=300, context_turns=3, max_context_len=60,
                   max_reply_len=30),
        ModelConfig(hidden=1024, layers=3, bidirectional_encoder=True, dropout=0.3),
        TrainConfig(epochs=30, batch_size=128),
    ),
}

DEFAULT_PRESET = "quick"


def get_preset(name: str) -> Preset:
    try:
        return PRESETS[name]
    except KeyError:
        raise ErgoError(f"unknown preset {name!r}; choose one of: {', '.join(PRESETS)}") from None


def override(settings, **changes):
    """A copy of a settings dataclass with the fields in `changes` that are not None replaced."""
    known = {f.name for f in dataclasses.fields(settings)}
    unknown = sorted(set(changes) - known)
    if unknown:
        raise ErgoError(f"unknown setting(s) for {type(settings).__name__}: {', '.join(unknown)}")
    return dataclasses.replace(settings, **{k: v for k, v in changes.items() if v is not None})


def to_dict(settings) -> dict:
    return dataclasses.asdict(settings)


def from_dict(cls, values: dict):
    """Rebuild a settings dataclass from a saved dict, ignoring nothing silently."""
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ErgoError(f"saved {cls.__name__} has fields this version does not know: {', '.join(unknown)}")
    return cls(**values)
