"""The vocabulary: special tokens at fixed ids, then words by falling frequency; saved as JSON."""
from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Iterable, Sequence

from .errors import ErgoError
from .files import atomic_write_text

PAD, UNK, GO, EOS, SEP = "<pad>", "<unk>", "<go>", "<eos>", "<sep>"
SPECIALS = (PAD, UNK, GO, EOS, SEP)
PAD_ID, UNK_ID, GO_ID, EOS_ID, SEP_ID = range(len(SPECIALS))


class Vocab:
    """Maps tokens to ids and back. Ids 0-4 are always the special tokens, in SPECIALS order."""

    def __init__(self, words: Sequence[str]):
        if tuple(words[: len(SPECIALS)]) != SPECIALS:
            raise ErgoError(f"a vocabulary must start with the special tokens {' '.join(SPECIALS)}")
        self.words = list(words)
        self.index = {w: i for i, w in enumerate(self.words)}
        if len(self.index) != len(self.words):
            raise ErgoError("the vocabulary lists a word twice")

    @classmethod
    def build(cls, counts: Counter, min_count: int = 1, max_size: int | None = None) -> "Vocab":
        """Most frequent words first (ties broken alphabetically, so the result is reproducible)."""
        room = None if max_size is None else max(0, max_size - len(SPECIALS))
        ranked = sorted(
            (w for w, c in counts.items() if c >= min_count and w not in SPECIALS),
            key=lambda w: (-counts[w], w),
        )
        return cls(list(SPECIALS) + ranked[:room])

    def __len__(self) -> int:
        return len(self.words)

    def __contains__(self, word: str) -> bool:
        return word in self.index

    def encode(self, tokens: Iterable[str]) -> list[int]:
        get = self.index.get
        return [get(t, UNK_ID) for t in tokens]

    def decode(self, ids: Iterable[int], stop_at_eos: bool = True) -> list[str]:
        """Tokens for ids, leaving out padding and <go>, ending at the first <eos>."""
        out = []
        for i in ids:
            i = int(i)
            if i == EOS_ID and stop_at_eos:
                break
            if i in (PAD_ID, GO_ID):
                continue
            out.append(self.words[i] if 0 <= i < len(self.words) else UNK)
        return out

    def save(self, path: Path) -> None:
        atomic_write_text(Path(path), json.dumps({"words": self.words}, ensure_ascii=False))

    @classmethod
    def load(cls, path: Path) -> "Vocab":
        try:
            words = json.loads(Path(path).read_text(encoding="utf-8"))["words"]
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise ErgoError(f"cannot read vocabulary {path}: {e}") from None
        return cls(words)
