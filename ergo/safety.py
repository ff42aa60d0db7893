"""The safety filter: a reply that matches the blocklist is never shown; the next best one is.

The blocklist is a text file: ergo/blocklist.txt by default, replaced by a bundle's own
blocklist.txt or by a file given to `Chatbot.load(path, blocklist=FILE)`. One entry a line: a word
or phrase matches whole tokens, case-insensitive; `re:PATTERN` is a regular expression searched in
the reply's text. Single words also go to the decoder as banned ids, so a search never spends its
beam on them; phrases and patterns are checked on every finished candidate.
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Sequence

from .errors import ErgoError
from .text import tokenize
from .vocab import Vocab

DEFAULT_BLOCKLIST = Path(__file__).with_name("blocklist.txt")
FALLBACK_REPLY = "Let's talk about something else."  # shown only when every candidate is blocked


class SafetyFilter:
    def __init__(self, phrases: Sequence[tuple[str, ...]] = (), patterns: Sequence[re.Pattern] = (),
                 source: str = ""):
        self.phrases = [p for p in phrases if p]
        self.patterns = list(patterns)
        self.source = source

    @classmethod
    def load(cls, path: Path | None = None) -> "SafetyFilter":
        path = Path(path) if path is not None else DEFAULT_BLOCKLIST
        try:
            lines = path.read_text(encoding="utf-8").splitlines()
        except OSError as e:
            raise ErgoError(f"cannot read the blocklist {path}: {e}") from None
        phrases, patterns = [], []
        for number, line in enumerate(lines, 1):
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            if line.startswith("re:"):
                try:
                    patterns.append(re.compile(line[3:], re.IGNORECASE))
                except re.error as e:
                    raise ErgoError(f"{path}:{number}: bad regular expression {line[3:]!r} ({e})") from None
            else:
                phrases.append(tuple(tokenize(line, lowercase=True)))
        return cls(phrases, patterns, str(path))

    def banned_ids(self, vocab: Vocab) -> list[int]:
        """Vocabulary ids of the one-word entries, in any case the vocabulary keeps."""
        words = {p[0] for p in self.phrases if len(p) == 1}
        return sorted(i for i, w in enumerate(vocab.words) if w.lower() in words)

    def blocks(self, tokens: Sequence[str], text: str) -> bool:
        """True when the reply (its tokens and its shown text) matches any entry."""
        lowered = [t.lower() for t in tokens]
        for phrase in self.phrases:
            n = len(phrase)
            if any(tuple(lowered[i:i + n]) == phrase for i in range(len(lowered) - n + 1)):
                return True
        return any(p.search(text) for p in self.patterns)
