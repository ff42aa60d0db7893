"""Word vectors for the model's embeddings: word2vec trained with gensim on the training split, or a
user's pretrained word2vec/GloVe file, aligned into a matrix whose row i is the vector of word i."""
from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from .errors import ErgoError
from .vocab import PAD_ID, SPECIALS, Vocab

if TYPE_CHECKING:
    from gensim.models import KeyedVectors
# gensim loads inside the two functions that use it: a chatbot imports this module (through
# ergo.dataset) but never trains or reads word vectors, and gensim with scipy is ~55 MB of a web worker.


def train_word2vec(corpus_file: Path, dim: int, *, min_count: int, window: int, epochs: int, seed: int,
                   workers: int) -> KeyedVectors:
    """CBOW word2vec (gensim's default, and its fastest) over a file of one turn a line, tokens split by
    spaces: gensim reads the file in threads of its own, and no sentence is held in memory. One thread
    more than cores, as each thread also reads and parses its part of the file (docs/BENCHMARKS.md)."""
    from gensim.models import Word2Vec
    gensim_log = logging.getLogger("gensim")
    level = gensim_log.level  # its progress notes are held back while it trains, then the caller's level is back
    gensim_log.setLevel(logging.WARNING)
    try:
        model = Word2Vec(corpus_file=str(corpus_file), vector_size=dim, window=window, min_count=min_count,
                         epochs=epochs, seed=seed, workers=max(1, workers) + 1)
    finally:
        gensim_log.setLevel(level)
    return model.wv


def load_pretrained(path: Path) -> KeyedVectors:
    """A word2vec file (binary .bin or text with a header line) or a GloVe text file (no header)."""
    path = Path(path)
    if not path.is_file():
        raise ErgoError(f"no such embeddings file: {path}")
    binary = path.suffix.lower() == ".bin"
    with open(path, "rb") as f:
        first = f.readline(1 << 16).split()
    # word2vec files start with "<count> <dim>"; GloVe files start with a word and its vector.
    has_header = len(first) == 2 and all(x.isdigit() for x in first)
    if has_header:
        # gensim allocates count x dim floats before reading one: a header must fit in the file
        count, dim, size = int(first[0]), int(first[1]), path.stat().st_size
        if not 0 < count * dim * (4 if binary else 2) <= size:
            raise ErgoError(f"{path}: its header promises {count:,} vectors of {dim:,} numbers, which a file of "
                            f"{size:,} bytes cannot hold; not a word2vec file")
    elif binary or not first:
        raise ErgoError(f"{path}: not a word2vec or GloVe file (its first line is not '<count> <dim>' or a word "
                        f"and its vector)")
    from gensim.models import KeyedVectors
    try:
        vectors = KeyedVectors.load_word2vec_format(str(path), binary=binary, no_header=not has_header,
                                                    unicode_errors="replace")
    except (ValueError, EOFError, UnicodeDecodeError) as e:
        raise ErgoError(f"{path}: not a word2vec or GloVe file ({e})") from None
    if not len(vectors) or not vectors.vector_size:
        raise ErgoError(f"{path}: holds no word vectors")
    return vectors


def keyed_vectors(words, matrix: np.ndarray) -> KeyedVectors:
    """Vectors given row by row (a trained model's embedding table) as gensim's KeyedVectors."""
    from gensim.models import KeyedVectors
    words = list(words)
    vectors = KeyedVectors(int(matrix.shape[1]))
    vectors.add_vectors(words, np.asarray(matrix, dtype=np.float32))
    for i, word in enumerate(words):  # counts that keep the given order (a vocabulary's: the most frequent
        vectors.set_vecattr(word, "count", len(words) - i)  # first) when saved in word2vec's format
    return vectors


def embedding_matrix(vectors: KeyedVectors, vocab: Vocab, seed: int) -> tuple[np.ndarray, float]:
    """(matrix, coverage): rows of words with a vector copy it; other rows are small random vectors
    on the vectors' own scale; <pad> is zero. Coverage is the share of non-special words found."""
    dim = vectors.vector_size
    rng = np.random.default_rng(seed)
    scale = float(np.std(vectors.vectors)) if len(vectors) else 0.1
    matrix = rng.normal(0.0, scale, size=(len(vocab), dim)).astype(np.float32)
    matrix[PAD_ID] = 0.0
    found = 0
    for i, word in enumerate(vocab.words[len(SPECIALS):], len(SPECIALS)):
        if word in vectors.key_to_index:
            matrix[i] = vectors[word]
            found += 1
    words = len(vocab) - len(SPECIALS)
    return matrix, (found / words if words else 0.0)
