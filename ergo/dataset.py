"""Conversations -> (context ids, reply ids) pairs, split by conversation, pickled with a manifest.

A data folder holds:
  train.pkl valid.pkl test.pkl  {"context": [int32 arrays], "reply": [int32 arrays], "conversation": int32 array}
                                context = the last K turns joined by <sep>, cut from the left;
                                reply = the reply's word ids, without <go>/<eos> (batching adds them)
  vocab.json                    the vocabulary (ergo/vocab.py)
  embeddings.npy                float32 [vocab, dim]: row i is the vector of word i
  word2vec.bin                  the word vectors the matrix came from, in word2vec's binary format
                                (loadable with --embeddings; no pickle, unlike gensim's own .kv files)
  stats.json                    counts, unknown-token rate, skipped lines and why, embedding coverage
  manifest.json                 settings, the input's fingerprint and every file's sha256; written last

The folder is built in a temp folder and renamed into place, so it is complete or absent. A file is
read only if the manifest lists it with a matching sha256, and that catches damage, not a crafted
folder (its manifest can carry matching hashes): so the splits are unpickled by `load_arrays`, which
builds containers and plain-number numpy arrays and refuses anything else, whatever the hash says.
"""
from __future__ import annotations

import hashlib
import json
import multiprocessing
import os
import pickle
import sys
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
from numpy._core.numeric import _frombuffer as _numpy_frombuffer
from tqdm import tqdm

from . import __version__, corpora
from .config import DataConfig, from_dict, to_dict
from .corpora import Corpus
from .corpora.base import ReadLog
from .corpora.chitchat import package_file
from .embeddings import embedding_matrix, load_pretrained, train_word2vec
from .errors import CorpusError, ErgoError
from .files import atomic_dir, atomic_write_text, sha256_file
from .text import tokenize
from .vocab import SEP_ID, SPECIALS, UNK_ID, Vocab

SPLITS = ("train", "valid", "test")
FORMAT_VERSION = 1
TINY_PAIRS = 2000            # fewer training pairs than this earns a warning
PARALLEL_FROM_TURNS = 20000  # below this, starting worker processes costs more than it saves
SENTENCE_ENDS = (".", "!", "?", "...", "!!", "??", "?!", "..")
SPLIT_KEYS = ("context", "reply", "conversation")


class _DType:
    """numpy.dtype(...) as a pickle names it, held back until it is known to be plain numbers.

    numpy's own dtype.__setstate__ takes the type's flags from the file, so a crafted file could mark
    an int32 dtype as holding Python objects and have raw bytes read as object pointers. Here the
    state is only recorded; `_frombuffer` builds a fresh dtype from the checked name and byte order.
    """

    def __init__(self, name, align=False, copy=True):
        self.name, self.state, self.dtype = name, None, None

    def __setstate__(self, state):
        self.state = state

    def checked(self) -> np.dtype:
        if self.dtype is None:
            s = self.state
            if not (isinstance(self.name, str) and isinstance(s, tuple) and len(s) >= 5
                    and s[1] in ("<", ">", "|", "=") and s[2:5] == (None, None, None)):
                raise pickle.UnpicklingError(f"an unusual dtype {self.name!r}")
            dtype = np.dtype(self.name)
            if dtype.kind not in "biuf" or dtype.fields is not None or dtype.subdtype is not None:
                raise pickle.UnpicklingError(f"an array of {dtype} (only plain numbers are accepted)")
            self.dtype = dtype.newbyteorder(s[1]) if s[1] in "<>" else dtype
        return self.dtype


def _frombuffer(buf, dtype, shape, order, axis_order=None):
    """numpy._core.numeric._frombuffer, the one call numpy 2.x pickles a contiguous array as (protocol 5)."""
    if type(dtype) is not _DType or type(buf) not in (bytearray, bytes) or order not in ("C", "F", "K"):
        raise pickle.UnpicklingError("an array in an unexpected form")
    return _numpy_frombuffer(buf, dtype.checked(), shape, order, axis_order)


class _ArrayUnpickler(pickle.Unpickler):
    """Containers and numpy arrays of plain numbers, nothing else: a file that names any other global
    (os.system, builtins.eval, numpy's _reconstruct with its raw-bytes __setstate__ ...) is refused
    before it runs. numpy 2.4 pickles a contiguous array at protocol 5 as
    numpy._core.numeric._frombuffer(bytes, numpy.dtype(name), shape, order); only those two are known."""

    _ALLOWED = {("numpy._core.numeric", "_frombuffer"): _frombuffer, ("numpy", "dtype"): _DType}

    def find_class(self, module, name):
        try:
            return self._ALLOWED[module, name]
        except KeyError:
            raise pickle.UnpicklingError(f"it names {module}.{name}") from None


def load_arrays(path: Path):
    """Unpickle a file of containers and numeric arrays without running any code it names."""
    try:
        with open(path, "rb") as f:
            return _ArrayUnpickler(f).load()
    except Exception as e:  # whatever the bytes are, they are not a file this code wrote
        reason = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise ErgoError(f"{path} is not a data file ErGo wrote ({reason}); it was not loaded: "
                        f"preprocess again (python main.py --preprocess --force)") from None


def dump_arrays(value, path: Path) -> None:
    """The writer `load_arrays` reads: protocol 5, so numpy writes each array as raw bytes + dtype."""
    with open(path, "wb") as f:
        pickle.dump(value, f, protocol=5)


@dataclass
class PreparedData:
    """A finished data folder; loading checks every file against the manifest first."""

    path: Path
    manifest: dict

    @classmethod
    def open(cls, path: Path) -> "PreparedData":
        path = Path(path)
        try:
            manifest = json.loads((path / "manifest.json").read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise ErgoError(f"{path} is not preprocessed data (no manifest.json): run `python main.py --preprocess`") from None
        except ValueError as e:
            raise ErgoError(f"{path}/manifest.json is damaged ({e}); preprocess again") from None
        if manifest.get("format_version") != FORMAT_VERSION:
            raise ErgoError(f"{path} was written by another ErGo data format; preprocess again")
        return cls(path, manifest)

    @property
    def data_config(self) -> DataConfig:
        return from_dict(DataConfig, self.manifest["data_config"])

    @property
    def stats(self) -> dict:
        return json.loads((self.path / "stats.json").read_text(encoding="utf-8"))

    def _checked(self, name: str) -> Path:
        file = self.path / name
        expected = self.manifest["files"].get(name)
        if expected is None or not file.is_file() or sha256_file(file) != expected:
            raise ErgoError(f"{file} is missing or does not match its manifest; preprocess again")
        return file

    def vocab(self) -> Vocab:
        return Vocab.load(self._checked("vocab.json"))

    def split(self, name: str) -> dict:
        if name not in SPLITS:
            raise ErgoError(f"unknown split {name!r}; one of {', '.join(SPLITS)}")
        file = self._checked(f"{name}.pkl")
        split = load_arrays(file)
        if not (isinstance(split, dict) and all(k in split for k in SPLIT_KEYS)
                and len(split["context"]) == len(split["reply"]) == len(split["conversation"])):
            raise ErgoError(f"{file} does not hold a split ({', '.join(SPLIT_KEYS)} of one length); "
                            f"preprocess again (python main.py --preprocess --force)")
        return split

    def embeddings(self) -> np.ndarray:
        return np.load(self._checked("embeddings.npy"))


def fingerprint(path: Path) -> dict:
    """Names, sizes and modification times of the input files: enough to notice a changed corpus
    without reading gigabytes on every run."""
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    stats = [(str(p), p.stat().st_size, int(p.stat().st_mtime)) for p in files]
    return {"files": len(stats), "bytes": sum(s[1] for s in stats),
            "digest": _digest(stats)}


def _digest(value) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True, default=str).encode()).hexdigest()


def _tokenize_chunk(args: tuple[list[str], bool]) -> list[list[str]]:
    texts, lowercase = args
    return [tokenize(t, lowercase) for t in texts]


def tokenize_all(texts: list[str], lowercase: bool, workers: int, progress: bool) -> list[list[str]]:
    """Tokenise every turn, on all cores for a big corpus (nltk tokenising is the slow step)."""
    chunk = 2000
    chunks = [(texts[i:i + chunk], lowercase) for i in range(0, len(texts), chunk)]
    bar = tqdm(total=len(texts), desc="tokenise", unit=" turns", disable=not progress, mininterval=0.5)
    out: list[list[str]] = []
    if workers > 1 and len(texts) >= PARALLEL_FROM_TURNS:
        with multiprocessing.get_context("fork").Pool(workers) as pool:
            for tokens in pool.imap(_tokenize_chunk, chunks):
                out.extend(tokens)
                bar.update(len(tokens))
    else:
        for c in chunks:
            out.extend(_tokenize_chunk(c))
            bar.update(len(c[0]))
    bar.close()
    return out


def split_conversations(n: int, cfg: DataConfig) -> dict[str, np.ndarray]:
    """Seeded split by conversation (never by pair, so no dialog leaks between train and test)."""
    order = np.random.default_rng(cfg.seed).permutation(n)
    n_valid, n_test = round(n * cfg.valid_fraction), round(n * cfg.test_fraction)
    if n >= 3:  # even a tiny corpus gets something to validate and test on
        n_valid = max(n_valid, 1 if cfg.valid_fraction > 0 else 0)
        n_test = max(n_test, 1 if cfg.test_fraction > 0 else 0)
    if n - n_valid - n_test < 1:
        raise CorpusError(f"only {n} usable conversation(s): too few to split into train/valid/test")
    return {"valid": np.sort(order[:n_valid]), "test": np.sort(order[n_valid:n_valid + n_test]),
            "train": np.sort(order[n_valid + n_test:])}


def fit_reply(reply: list[int], max_len: int, sentence_ends: frozenset[int]) -> list[int] | None:
    """A reply that fits max_len: itself, or its leading whole sentences, or None. Cutting at a
    sentence end keeps long chat turns (several messages in a row) without teaching cut-off replies."""
    if len(reply) <= max_len:
        return reply
    for end in range(max_len, 0, -1):
        if reply[end - 1] in sentence_ends:
            return reply[:end]
    return None


def context_window(turns: Sequence[list[int]], cfg: DataConfig) -> np.ndarray:
    """The model's input for a reply to `turns`: the last K turns joined by <sep>, newest tokens kept.
    Training and every front end build it here, so the bot sees at chat time what it saw in training."""
    context: list[int] = []
    for turn in turns[-cfg.context_turns:]:
        if context:
            context.append(SEP_ID)
        context.extend(turn)
    return np.asarray(context[-cfg.max_context_len:], dtype=np.int32)


def make_pairs(conversations: Sequence[list[list[int]]], indices: np.ndarray, cfg: DataConfig,
               log: ReadLog, sentence_ends: frozenset[int]) -> dict:
    """Every turn after the first becomes a reply to the window of up to K turns before it."""
    contexts, replies, owner = [], [], []
    for c in indices:
        turns = conversations[c]
        for i in range(1, len(turns)):
            reply = fit_reply(turns[i], cfg.max_reply_len, sentence_ends)
            if reply is None:
                log.skip(f"reply longer than max_reply_len={cfg.max_reply_len} tokens with no sentence end to cut at")
                continue
            contexts.append(context_window(turns[:i], cfg))
            replies.append(np.asarray(reply, dtype=np.int32))
            owner.append(c)
    return {"context": contexts, "reply": replies, "conversation": np.asarray(owner, dtype=np.int32)}


def _unk_rate(pairs: dict) -> float:
    ids = [a for key in ("context", "reply") for a in pairs[key]]
    total = sum(len(a) for a in ids)
    return float(sum(int(np.count_nonzero(a == UNK_ID)) for a in ids) / total) if total else 0.0


def preprocess(corpus: Corpus, cfg: DataConfig, out_dir: Path, *, embeddings: Path | None = None,
               encoding: str | None = None, workers: int | None = None, progress: bool = True,
               force: bool = False) -> tuple[PreparedData, bool]:
    """Build (or reuse) the data folder for `corpus` under `cfg`. Returns (data, reused)."""
    out_dir = Path(out_dir)
    if embeddings is not None and not Path(embeddings).is_file():
        raise ErgoError(f"no such embeddings file: {embeddings}")
    key = _digest({"corpus": corpus.format, "input": fingerprint(corpus.path or package_file()),
                   "config": to_dict(cfg), "embeddings": fingerprint(Path(embeddings)) if embeddings else None,
                   "encoding": encoding, "format_version": FORMAT_VERSION, "ergo_version": __version__})
    if not force and (out_dir / "manifest.json").is_file():
        try:
            existing = PreparedData.open(out_dir)
            if existing.manifest.get("key") == key:
                return existing, True
        except ErgoError:
            pass  # damaged or old: rebuild it
    workers = workers or os.cpu_count() or 1
    timings: dict[str, float] = {}
    started = time.perf_counter()

    log = ReadLog()
    raw = [c for c in tqdm(corpora.read(corpus, log, encoding), desc=f"read {corpus.name}", unit=" conv",
                           disable=not progress, mininterval=0.5)]
    timings["read"] = time.perf_counter() - started

    t = time.perf_counter()
    flat = [turn for conv in raw for turn in conv]
    tokens = tokenize_all(flat, cfg.lowercase, workers, progress)
    conversations_tokens: list[list[list[str]]] = []
    pos = 0
    for conv in raw:
        turns = [tok for tok in tokens[pos:pos + len(conv)] if tok]
        pos += len(conv)
        if len(turns) < 2:
            log.skip("conversation with fewer than two turns")
            continue
        conversations_tokens.append(turns)
    del raw, flat, tokens
    timings["tokenise"] = time.perf_counter() - t
    where = corpus.path or "the chitchat corpus"
    if not conversations_tokens:
        skipped = "; ".join(f"{n} {r}" for r, n in log.skipped.most_common(3)) or "nothing readable"
        raise CorpusError(f"{where}: no usable conversation (each needs two turns or more); skipped: {skipped}")

    parts = split_conversations(len(conversations_tokens), cfg)
    counts = Counter(tok for c in parts["train"] for turn in conversations_tokens[c] for tok in turn)
    vocab = Vocab.build(counts, cfg.min_count, cfg.max_vocab)
    if len(vocab) == len(SPECIALS):  # else gensim stops with "you must first build vocabulary"
        raise CorpusError(f"{where}: too small to learn from: no word occurs {cfg.min_count} times or more in its "
                          f"{len(parts['train'])} training conversation(s), so there is no vocabulary to train "
                          f"word vectors or a model on; use a corpus of thousands of conversations")
    ids = [[vocab.encode(turn) for turn in conv] for conv in conversations_tokens]
    ends = frozenset(vocab.index[t] for t in SENTENCE_ENDS if t in vocab)
    pairs = {name: make_pairs(ids, parts[name], cfg, log, ends) for name in SPLITS}
    if not pairs["train"]["reply"]:
        raise CorpusError(f"{where}: no training pairs left (all replies longer than max_reply_len?)")

    t = time.perf_counter()
    if embeddings:
        vectors = load_pretrained(Path(embeddings))
    else:
        train_turns = [turn for c in parts["train"] for turn in conversations_tokens[c]]
        vectors = train_word2vec(train_turns, cfg.embedding_dim, min_count=cfg.min_count,
                                 window=cfg.w2v_window, epochs=cfg.w2v_epochs, seed=cfg.seed, workers=workers)
    matrix, coverage = embedding_matrix(vectors, vocab, cfg.seed)
    timings["word2vec"] = time.perf_counter() - t

    stats = {
        "corpus": corpus.name, "format": corpus.format, "source": str(where),
        "conversations": len(conversations_tokens),
        "utterances": log.utterances,
        "turns": sum(len(c) for c in conversations_tokens),
        "pairs": {name: len(pairs[name]["reply"]) for name in SPLITS},
        "conversations_per_split": {name: int(len(parts[name])) for name in SPLITS},
        "vocab_size": len(vocab),
        "training_tokens": int(sum(counts.values())),
        "distinct_training_words": len(counts),
        "unk_rate": {name: round(_unk_rate(pairs[name]), 5) for name in SPLITS},
        "mean_context_len": round(float(np.mean([len(a) for a in pairs["train"]["context"]])), 2),
        "mean_reply_len": round(float(np.mean([len(a) for a in pairs["train"]["reply"]])), 2),
        "embedding": {"source": str(embeddings) if embeddings else "word2vec trained on the training split",
                      "dim": int(matrix.shape[1]), "coverage": round(coverage, 5)},
        **log.as_dict(),
        "seconds": {k: round(v, 2) for k, v in timings.items()},
    }
    if stats["pairs"]["train"] < TINY_PAIRS:
        stats["warning"] = (f"tiny corpus: {stats['conversations']} conversations, {stats['pairs']['train']} "
                            f"training pairs; a model trained on it can only memorise (thousands of "
                            f"conversations are needed for a chatbot)")

    with atomic_dir(out_dir) as tmp:
        for name in SPLITS:
            dump_arrays(pairs[name], tmp / f"{name}.pkl")
        vocab.save(tmp / "vocab.json")
        np.save(tmp / "embeddings.npy", matrix)
        vectors.save_word2vec_format(str(tmp / "word2vec.bin"), binary=True)
        stats["seconds"]["total"] = round(time.perf_counter() - started, 2)
        atomic_write_text(tmp / "stats.json", json.dumps(stats, indent=2, ensure_ascii=False))
        manifest = {
            "format_version": FORMAT_VERSION, "ergo_version": __version__, "key": key,
            "corpus": {"name": corpus.name, "format": corpus.format, "path": str(where)},
            "data_config": to_dict(cfg), "vocab_size": len(vocab), "embedding_dim": int(matrix.shape[1]),
            "files": {p.name: sha256_file(p) for p in sorted(tmp.iterdir()) if p.is_file()},
        }
        atomic_write_text(tmp / "manifest.json", json.dumps(manifest, indent=2))
    return PreparedData.open(out_dir), False


def describe(data: PreparedData, reused: bool, out=sys.stdout) -> None:
    """Where it wrote what, and the headline counts."""
    s = data.stats
    verb = "up to date, reused" if reused else "written"
    print(f"{data.path}/ {verb}: {s['conversations']:,} conversations, {s['utterances']:,} utterances -> "
          f"pairs train {s['pairs']['train']:,} / valid {s['pairs']['valid']:,} / test {s['pairs']['test']:,}",
          file=out)
    print(f"  vocabulary {s['vocab_size']:,} words (unknown-token rate in valid {s['unk_rate']['valid']:.2%}), "
          f"embeddings {s['embedding']['dim']}-d, coverage {s['embedding']['coverage']:.1%}", file=out)
    if s["skipped"]:
        print("  skipped: " + "; ".join(f"{n:,} {r}" for r, n in s["skipped"].items()), file=out)
    print(f"  files: {', '.join(sorted(data.manifest['files']))}", file=out)
    if "warning" in s:
        print(f"warning: {s['warning']}", file=sys.stderr)
