"""What every reader shares: the log of what was read and skipped, and line-by-line decoding that
names the file and line when the bytes are not in the expected encoding."""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

from ..errors import CorpusError

Conversation = list[str]  # the turns of one dialog, in order; speakers alternate

EXAMPLES_PER_REASON = 3


@dataclass
class ReadLog:
    """Counts utterances read and lines skipped (with why, and a few file:line examples for stats.json)."""

    utterances: int = 0
    skipped: Counter = field(default_factory=Counter)
    examples: dict[str, list[str]] = field(default_factory=dict)

    def skip(self, reason: str, where: str = "") -> None:
        self.skipped[reason] += 1
        seen = self.examples.setdefault(reason, [])
        if where and len(seen) < EXAMPLES_PER_REASON:
            seen.append(where)

    def as_dict(self) -> dict:
        return {"utterances": self.utterances,
                "skipped": dict(self.skipped.most_common()),
                "skipped_examples": self.examples}


def iter_lines(path: Path, encoding: str = "utf-8") -> Iterator[tuple[int, str]]:
    """(line number, text without the line break) for each line, decoding line by line so that a
    wrong encoding is reported with its exact place instead of a bare UnicodeDecodeError."""
    try:
        f = open(path, "rb")
    except OSError as e:
        raise CorpusError(f"cannot open {path}: {e.strerror}") from None
    with f:
        for number, raw in enumerate(f, 1):
            try:
                line = raw.decode(encoding)
            except UnicodeDecodeError as e:
                raise CorpusError(
                    f"{path}:{number}: not valid {encoding} (byte 0x{raw[e.start]:02x} at column {e.start + 1}); "
                    f"pass --encoding (e.g. --encoding latin-1) or convert the file to UTF-8"
                ) from None
            except LookupError:
                raise CorpusError(f"unknown encoding {encoding!r}") from None
            if number == 1:
                line = line.lstrip("\ufeff")
            yield number, line.rstrip("\r\n")


def read_text(path: Path, encoding: str = "utf-8") -> str:
    """The whole file as text, with the same precise error as iter_lines."""
    return "\n".join(line for _, line in iter_lines(path, encoding))
