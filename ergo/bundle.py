"""A trained model as one folder: everything a reply needs, and nothing to copy by hand.

    config.json        data, model and tokenizer settings, vocabulary size, embedding size
    vocab.json         the vocabulary the weights were trained with
    model.weights.h5   the weights
    card.json/card.md  the metrics card: which epoch, validation perplexity, training time, corpus
    selector/          the reply selector (ergo/selector.py) and ranking.json, its weight in the
                       ranking (ergo/ranking.py); retrieval.npz instead in a bundle without one

A bundle is written into a temp folder and renamed into place. Loading checks the pieces against each
other (vocabulary size, weight shapes) and refuses a bundle that does not add up.
"""
from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from . import __version__
from .config import DataConfig, ModelConfig, from_dict, to_dict
from .errors import ErgoError
from .files import atomic_dir, sha256_file
from .vocab import Vocab

VERSION_CHARS = 12
TOKENIZER = {"name": "nltk.TweetTokenizer", "reduce_len": True, "normalise": "NFKC, plain quotes"}


@dataclass
class Bundle:
    path: Path
    data_config: DataConfig
    model_config: ModelConfig
    vocab: Vocab
    embedding_dim: int
    card: dict

    @property
    def weights(self) -> Path:
        return self.path / "model.weights.h5"

    @property
    def name(self) -> str:
        return bundle_name(self.path)

    def version(self) -> str:
        """A short digest of the weights: tells two bundles of one run apart (the web names it)."""
        return sha256_file(self.weights)[:VERSION_CHARS]

    @classmethod
    def load(cls, path: Path) -> "Bundle":
        path = Path(path)
        if not (path / "config.json").is_file():
            raise ErgoError(f"{path} is not a model bundle (no config.json); train one with `python main.py --train`")
        try:
            config = json.loads((path / "config.json").read_text(encoding="utf-8"))
            card = json.loads((path / "card.json").read_text(encoding="utf-8"))
            data_cfg = from_dict(DataConfig, config["data_config"])
            model_cfg = from_dict(ModelConfig, config["model_config"])
            vocab_size, dim = int(config["vocab_size"]), int(config["embedding_dim"])
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise ErgoError(f"{path}: damaged bundle ({e})") from None
        vocab = Vocab.load(path / "vocab.json")
        if len(vocab) != vocab_size:
            raise ErgoError(f"{path}: vocab.json has {len(vocab)} words but the model was built for {vocab_size}")
        if not (path / "model.weights.h5").is_file():
            raise ErgoError(f"{path}: model.weights.h5 is missing")
        return cls(path, data_cfg, model_cfg, vocab, dim, card)

    def build_model(self):
        """The Seq2Seq with this bundle's weights; a shape mismatch is a clear error, not a traceback."""
        from .model import build_seq2seq
        model = build_seq2seq(self.model_config, len(self.vocab), embedding_dim=self.embedding_dim)
        self.load_into(model)
        return model

    def load_into(self, model) -> None:
        """This bundle's weights into a built model of its shape; a mismatch is a clear error."""
        try:
            model.load_weights(self.weights)
        except (ValueError, OSError) as e:
            raise ErgoError(f"{self.weights} does not fit the model its config.json describes: {e}") from None


def home(path: Path) -> Path:
    """The folder a bundle belongs to: its run folder for a run's best/, else the bundle folder itself (where
    the web keeps its state, and what names the bundle)."""
    path = Path(path)
    return path.parent if path.name == "best" else path


def bundle_name(path: Path) -> str:
    """What a bundle is called: its home folder's name."""
    return home(Path(path).resolve()).name


def save_bundle(path: Path, model, data_config: DataConfig, model_config: ModelConfig, vocab: Vocab,
                card: dict, carry: Sequence[Path] = ()) -> None:
    """Write a complete bundle atomically (an interrupted save keeps the previous bundle whole).
    `carry`: files or folders (of the bundle being replaced, of the run) that go into the new one as they
    are, hard-linked."""
    config = {"ergo_version": __version__, "data_config": to_dict(data_config),
              "model_config": to_dict(model_config), "vocab_size": len(vocab),
              "embedding_dim": int(model.enc_embedding.output_dim), "tokenizer": {**TOKENIZER,
                                                                                 "lowercase": data_config.lowercase}}
    with atomic_dir(path) as tmp:
        (tmp / "config.json").write_text(json.dumps(config, indent=2), encoding="utf-8")
        vocab.save(tmp / "vocab.json")
        save_weights_only(model, tmp / "model.weights.h5")
        (tmp / "card.json").write_text(json.dumps(card, indent=2), encoding="utf-8")
        (tmp / "card.md").write_text(_card_markdown(card), encoding="utf-8")
        for file in carry:
            link(Path(file), tmp / Path(file).name)


def link(source, target) -> None:
    """A hard link of a file, or of every file of a folder; a copy on a file system without links."""
    if Path(source).is_dir():
        shutil.copytree(source, target, copy_function=link)
        return
    try:
        os.link(source, target)
    except OSError:
        shutil.copy2(source, target)


def save_weights_only(model, path: Path) -> None:
    """Keras saves a compiled model's optimizer state with its weights (tripling the file); a reply
    needs none of it. Keras's own weights writer skips it when asked (its public save_weights cannot
    be asked; keras is pinned in requirements.txt). Building an uncompiled twin to save instead cost
    45 s in a training process (1 s elsewhere)."""
    from keras.src.saving import saving_lib
    skip = [model.optimizer] if getattr(model, "optimizer", None) is not None else None
    saving_lib.save_weights_only(model, str(path), objects_to_skip=skip)


def _card_markdown(card: dict) -> str:
    lines = ["# Model card", ""]
    lines += [f"- **{k.replace('_', ' ')}**: {v}" for k, v in card.items() if not isinstance(v, dict)]
    for k, v in card.items():
        if isinstance(v, dict):
            lines += ["", f"## {k.replace('_', ' ')}", ""] + [f"- {kk}: {vv}" for kk, vv in v.items()]
    return "\n".join(lines) + "\n"
