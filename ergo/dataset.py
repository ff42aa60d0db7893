"""Conversations -> (context ids, reply ids) pairs, split by conversation, in flat arrays with a manifest.

A data folder holds:
  {split}.*.npy                 train, valid and test, each as flat int32 ids + int64 offsets for contexts
                                and replies, and the conversation of each pair (ergo/splits.py says why
                                .npy, read without pickle and memory-mapped); context = the last K turns
                                joined by <sep>, cut from the left; reply = its word ids, without <go>/<eos>
  vocab.json                    the vocabulary (ergo/vocab.py)
  embeddings.npy                float32 [vocab, dim]: row i is the vector of word i
  word2vec.bin                  the word vectors the matrix came from, in word2vec's binary format
                                (loadable with --embeddings; no pickle, unlike gensim's own .kv files)
  stats.json                    counts, unknown-token rate, skipped lines and why, embedding coverage
  manifest.json                 settings, the input's fingerprint and every file's sha256; written last

Memory stays flat however big the corpus: conversations stream from the reader through tokenising
worker processes into a token file on disk, chunk by chunk; the vocabulary is counted from that file,
pairs are written to the split files as they come, and word2vec trains from a file (gensim's
corpus_file) rather than from sentences in memory. Three passes over a file on disk, none over a list.

The folder is built in a temp folder and renamed into place, so it is complete or absent. A file is
read only if the manifest lists it with a matching sha256, and that catches damage, not a crafted
folder (its manifest can carry matching hashes): so nothing in it is read by a loader that can run code.
"""
from __future__ import annotations

import hashlib
import json
import multiprocessing
import os
import sys
import time
from collections import Counter, deque
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Iterable, Iterator, Sequence

import numpy as np
from tqdm import tqdm

from . import __version__, corpora
from .config import DataConfig, from_dict, to_dict
from .corpora import Corpus
from .corpora.base import ReadLog
from .corpora.chitchat import package_file
from .embeddings import embedding_matrix, load_pretrained, train_word2vec
from .errors import CorpusError, ErgoError
from .files import atomic_dir, atomic_write_text, iter_files, recover_dir, sha256_file
from .splits import SplitWriter, load_split, split_files
from .text import tokenize
from .vocab import SEP_ID, SPECIALS, UNK_ID, Vocab

if TYPE_CHECKING:
    from gensim.models import KeyedVectors

SPLITS = ("train", "valid", "test")
FORMAT_VERSION = 2            # 1: pickled lists of arrays, one per pair
TINY_PAIRS = 2000             # fewer training pairs than this earns a warning
PARALLEL_FROM_BYTES = 4 << 20  # a smaller corpus tokenises faster than worker processes start
CHUNK_TURNS = 2000            # turns sent to a tokenising worker at a time
W2V_WORDS = 20_000_000        # word2vec sees at most this many tokens in all its passes (see word2vec_epochs)
SENTENCE_ENDS = (".", "!", "?", "...", "!!", "??", "?!", "..")
TOKENS, W2V_CORPUS = "tokens.txt", "word2vec-corpus.txt"  # work files, removed before the folder is done
TOKEN_SEP = "\x1f"            # between tokens in the token file: normalising turns every control character
                              # into a space, so no token holds one (a few hold a space: "555 123 4567")


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
            raise ErgoError(f"{path} holds ErGo's data format {manifest.get('format_version')}, and this ErGo reads "
                            f"format {FORMAT_VERSION}: preprocess again (python main.py --preprocess --force)")
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
        """{"context": Ragged, "reply": Ragged, "conversation": int32 array} (ergo/splits.py)."""
        if name not in SPLITS:
            raise ErgoError(f"unknown split {name!r}; one of {', '.join(SPLITS)}")
        for file in split_files(name):
            self._checked(file)
        return load_split(self.path, name)

    def embeddings(self) -> np.ndarray:
        return np.load(self._checked("embeddings.npy"))


def fingerprint(path: Path) -> dict:
    """Names, sizes and modification times of the input files: enough to notice a changed corpus
    without reading gigabytes on every run. Hashed as the files are listed (a million names or so for
    Ubuntu v1), so no list of them is held."""
    digest, files, size = hashlib.sha256(), 0, 0
    for p in (iter_files(path) if path.is_dir() else [path]):
        st = p.stat()
        digest.update(json.dumps([str(p), st.st_size, int(st.st_mtime)]).encode() + b"\n")
        files, size = files + 1, size + st.st_size
    return {"files": files, "bytes": size, "digest": digest.hexdigest()}


def _digest(value) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True, default=str).encode()).hexdigest()


def _tokenise_chunk(args: tuple[list[list[str]], bool]) -> tuple[str, int, int, int]:
    """Conversations -> (their lines for the token file, usable conversations, their turns, short ones).
    A turn is a line of tokens split by TOKEN_SEP and a blank line ends a conversation; turns with no
    tokens are dropped, and a conversation left with fewer than two is not written."""
    conversations, lowercase = args
    lines, usable, turns, short = [], 0, 0, 0
    for conversation in conversations:
        tokenised = [TOKEN_SEP.join(tokens) for tokens in (tokenize(t, lowercase) for t in conversation) if tokens]
        if len(tokenised) < 2:
            short += 1
            continue
        usable, turns = usable + 1, turns + len(tokenised)
        lines.append("\n".join(tokenised) + "\n\n")
    return "".join(lines), usable, turns, short


def _chunks(conversations: Iterable[list[str]], turns: int) -> Iterator[list[list[str]]]:
    chunk, size = [], 0
    for conversation in conversations:
        chunk.append(conversation)
        size += len(conversation)
        if size >= turns:
            yield chunk
            chunk, size = [], 0
    if chunk:
        yield chunk


class _Tokeniser:
    """Tokenises chunks in order, in worker processes when there are several cores and a big corpus.
    At most two chunks per worker are in flight (Pool.imap would read the whole corpus ahead), and the
    workers fork before the reader holds anything, so they start small."""

    def __init__(self, workers: int):
        self.pool = multiprocessing.get_context("fork").Pool(workers) if workers > 1 else None
        self.ahead = 2 * workers

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        if self.pool is not None:
            self.pool.terminate()
            self.pool.join()

    def map(self, chunks: Iterable[tuple]) -> Iterator[tuple]:
        if self.pool is None:
            yield from map(_tokenise_chunk, chunks)
            return
        pending: deque = deque()
        for chunk in chunks:
            pending.append(self.pool.apply_async(_tokenise_chunk, (chunk,)))
            if len(pending) >= self.ahead:
                yield pending.popleft().get()
        while pending:
            yield pending.popleft().get()


def _read_token_file(path: Path) -> Iterator[list[str]]:
    """The token file's conversations, each a list of turns (a line of TOKEN_SEP-separated tokens each)."""
    turns: list[str] = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            if line == "\n":
                yield turns
                turns = []
            else:
                turns.append(line[:-1])


def tokenise_corpus(corpus: Corpus, cfg: DataConfig, log: ReadLog, encoding: str | None, out: Path, workers: int,
                    progress: bool) -> tuple[int, int]:
    """Pass 1: read and tokenise the corpus into the token file `out`; returns its conversations and turns."""
    usable = turns = 0
    bar = tqdm(desc=f"read+tokenise {corpus.name}", unit=" conv", disable=not progress, mininterval=0.5)
    with _Tokeniser(workers) as tokeniser, open(out, "w", encoding="utf-8") as f:
        chunks = ((c, cfg.lowercase) for c in _chunks(corpora.read(corpus, log, encoding), CHUNK_TURNS))
        for text, n, t, short in tokeniser.map(chunks):
            f.write(text)
            usable, turns = usable + n, turns + t
            if short:
                log.skipped["conversation with fewer than two turns"] += short
            bar.update(n + short)
            bar.set_postfix_str(f"{usable:,} kept, {turns:,} turns", refresh=False)
    bar.close()
    return usable, turns


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


def _membership(parts: dict[str, np.ndarray], n: int) -> np.ndarray:
    """The split (an index into SPLITS) of each conversation."""
    which = np.empty(n, np.int8)
    for k, name in enumerate(SPLITS):
        which[parts[name]] = k
    return which


def count_training_words(tokens: Path, which: np.ndarray, w2v_corpus: Path | None) -> Counter:
    """Pass 2: word counts of the training conversations, whose turns are also written to `w2v_corpus`
    (one a line, tokens split by spaces: gensim's LineSentence format) for word2vec; None (pretrained
    vectors) writes nothing. The few tokens with a space inside (". . .", a phone number) reach word2vec
    as their parts, and get no vector of their own."""
    counts: Counter = Counter()
    with open(w2v_corpus or os.devnull, "w", encoding="utf-8") as out:
        for c, turns in enumerate(_read_token_file(tokens)):
            if which[c] == 0:
                for turn in turns:
                    counts.update(turn.split(TOKEN_SEP))
                if w2v_corpus:
                    out.write("\n".join(turns).replace(TOKEN_SEP, " ") + "\n")
    return counts


def word2vec_epochs(wanted: int, words: int) -> int:
    """Passes of word2vec over `words` training tokens: `wanted`, but no more than W2V_WORDS words seen in
    all (at least one pass). Vectors stop improving long before a big corpus's fifth pass, which would make
    word2vec most of preprocessing's time; a corpus of chitchat's size keeps every pass it asks for."""
    return max(1, min(wanted, round(W2V_WORDS / max(words, 1))))


def fit_reply(reply: list[int], max_len: int, sentence_ends: frozenset[int]) -> list[int] | None:
    """A reply that fits max_len: itself, or its leading whole sentences, or None. Cutting at a
    sentence end keeps long chat turns (several messages in a row) without teaching cut-off replies."""
    if len(reply) <= max_len:
        return reply
    for end in range(max_len, 0, -1):
        if reply[end - 1] in sentence_ends:
            return reply[:end]
    return None


def _context_ids(turns: Sequence[Sequence[int]], cfg: DataConfig) -> list[int]:
    context: list[int] = []
    for turn in turns[-cfg.context_turns:]:
        if context:
            context.append(SEP_ID)
        context.extend(turn)
    return context[-cfg.max_context_len:]


def context_window(turns: Sequence[list[int]], cfg: DataConfig) -> np.ndarray:
    """The model's input for a reply to `turns`: the last K turns joined by <sep>, newest tokens kept.
    Training and every front end build it here, so the bot sees at chat time what it saw in training."""
    return np.asarray(_context_ids(turns, cfg), dtype=np.int32)


def write_pairs(tokens: Path, which: np.ndarray, vocab: Vocab, cfg: DataConfig, log: ReadLog, folder: Path,
                progress: bool) -> dict[str, dict]:
    """Pass 3: every turn after the first becomes a reply to the window of up to K turns before it,
    written to its split's files as it comes. Returns each split's counts for stats.json."""
    ends = frozenset(vocab.index[t] for t in SENTENCE_ENDS if t in vocab)
    writers = [SplitWriter(folder, name) for name in SPLITS]
    tally = {name: {"context_tokens": 0, "reply_tokens": 0, "unknown": 0} for name in SPLITS}
    too_long = f"reply longer than max_reply_len={cfg.max_reply_len} tokens with no sentence end to cut at"
    for c, turns in enumerate(tqdm(_read_token_file(tokens), total=len(which), desc="pairs", unit=" conv",
                                   disable=not progress, mininterval=0.5)):
        ids = [vocab.encode(turn.split(TOKEN_SEP)) for turn in turns]
        writer, counts = writers[which[c]], tally[SPLITS[which[c]]]
        for i in range(1, len(ids)):
            reply = fit_reply(ids[i], cfg.max_reply_len, ends)
            if reply is None:
                log.skip(too_long)
                continue
            context = _context_ids(ids[:i], cfg)
            writer.add(context, reply, c)
            counts["context_tokens"] += len(context)
            counts["reply_tokens"] += len(reply)
            counts["unknown"] += context.count(UNK_ID) + reply.count(UNK_ID)
    for name, writer in zip(SPLITS, writers):
        writer.close()
        tally[name]["pairs"] = len(writer)
    return tally


@dataclass(frozen=True)
class FixedVocab:
    """A vocabulary and its word vectors to encode a corpus with as they are, instead of counting one and
    training word2vec: a bundle's own, so that the bundle can be fine-tuned on the data."""

    vocab: Vocab
    vectors: KeyedVectors
    source: str  # where they come from, for stats.json

    def digest(self) -> str:
        return _digest([self.vocab.words, hashlib.sha256(self.vectors.vectors.tobytes()).hexdigest()])


def preprocess(corpus: Corpus, cfg: DataConfig, out_dir: Path, *, embeddings: Path | None = None,
               fixed: FixedVocab | None = None, encoding: str | None = None, workers: int | None = None,
               progress: bool = True, force: bool = False) -> tuple[PreparedData, bool]:
    """Build (or reuse) the data folder for `corpus` under `cfg`. Returns (data, reused)."""
    out_dir = Path(out_dir)
    if embeddings is not None and not Path(embeddings).is_file():
        raise ErgoError(f"no such embeddings file: {embeddings}")
    recover_dir(out_dir)  # a folder half-built when a run was killed, with its work files, goes first
    source = fingerprint(corpus.path or package_file())
    key = _digest({"corpus": corpus.format, "input": source,
                   "config": to_dict(cfg), "embeddings": fingerprint(Path(embeddings)) if embeddings else None,
                   "encoding": encoding, "format_version": FORMAT_VERSION, "ergo_version": __version__,
                   **({"fixed": fixed.digest()} if fixed else {})})
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
    where = corpus.path or "the chitchat corpus"
    log = ReadLog()
    with atomic_dir(out_dir) as tmp:
        tokens, w2v_corpus = tmp / TOKENS, None if embeddings or fixed else tmp / W2V_CORPUS
        n, turns = tokenise_corpus(corpus, cfg, log, encoding, tokens,
                            workers if source["bytes"] >= PARALLEL_FROM_BYTES else 1, progress)
        timings["read+tokenise"] = time.perf_counter() - started
        if not n:
            skipped = "; ".join(f"{k} {r}" for r, k in log.skipped.most_common(3)) or "nothing readable"
            raise CorpusError(f"{where}: no usable conversation (each needs two turns or more); skipped: {skipped}")

        t = time.perf_counter()
        parts = split_conversations(n, cfg)
        which = _membership(parts, n)
        counts = count_training_words(tokens, which, w2v_corpus)
        vocab = fixed.vocab if fixed else Vocab.build(counts, cfg.min_count, cfg.max_vocab)
        if len(vocab) == len(SPECIALS):  # else gensim stops with "you must first build vocabulary"
            raise CorpusError(f"{where}: too small to learn from: no word occurs {cfg.min_count} times or more in "
                              f"its {len(parts['train'])} training conversation(s), so there is no vocabulary to "
                              f"train word vectors or a model on; use a corpus of thousands of conversations")
        timings["vocabulary"] = time.perf_counter() - t

        t = time.perf_counter()
        tally = write_pairs(tokens, which, vocab, cfg, log, tmp, progress)
        tokens.unlink()
        if not tally["train"]["pairs"]:
            raise CorpusError(f"{where}: no training pairs left (all replies longer than max_reply_len?)")
        timings["pairs"] = time.perf_counter() - t

        t = time.perf_counter()
        if fixed:
            vectors = fixed.vectors
        elif embeddings:
            vectors = load_pretrained(Path(embeddings))
        else:
            w2v_epochs = word2vec_epochs(cfg.w2v_epochs, sum(counts.values()))
            vectors = train_word2vec(w2v_corpus, cfg.embedding_dim, min_count=cfg.min_count,
                                     window=cfg.w2v_window, epochs=w2v_epochs, seed=cfg.seed, workers=workers)
            w2v_corpus.unlink()
        matrix, coverage = embedding_matrix(vectors, vocab, cfg.seed)
        timings["word2vec"] = time.perf_counter() - t

        train = tally["train"]
        stats = {
            "corpus": corpus.name, "format": corpus.format, "source": str(where),
            "conversations": n,
            "utterances": log.utterances,
            "turns": turns,
            "pairs": {name: tally[name]["pairs"] for name in SPLITS},
            "conversations_per_split": {name: int(len(parts[name])) for name in SPLITS},
            "vocab_size": len(vocab),
            "training_tokens": int(sum(counts.values())),
            "distinct_training_words": len(counts),
            "unk_rate": {name: round(s["unknown"] / max(s["context_tokens"] + s["reply_tokens"], 1), 5)
                         for name, s in tally.items()},
            "mean_context_len": round(train["context_tokens"] / train["pairs"], 2),
            "mean_reply_len": round(train["reply_tokens"] / train["pairs"], 2),
            "embedding": {"source": fixed.source if fixed else str(embeddings) if embeddings else
                          "word2vec trained on the training split", "dim": int(matrix.shape[1]),
                          "coverage": round(coverage, 5), **({} if embeddings or fixed else {"word2vec_epochs": w2v_epochs})},
            **log.as_dict(),
            "seconds": {k: round(v, 2) for k, v in timings.items()},
        }
        if stats["pairs"]["train"] < TINY_PAIRS:
            stats["warning"] = (f"tiny corpus: {stats['conversations']} conversations, {stats['pairs']['train']} "
                                f"training pairs; a model trained on it can only memorise (thousands of "
                                f"conversations are needed for a chatbot)")
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


def describe(data: PreparedData, reused: bool, out=None) -> None:
    """Where it wrote what, and the headline counts, on `out` (default: sys.stdout as it is at the call)."""
    out = out or sys.stdout
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
