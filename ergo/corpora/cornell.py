"""Cornell Movie-Dialogs: movie_lines.txt + movie_conversations.txt, fields split by ' +++$+++ '.

The files are ISO-8859-1, and lines are stored out of order: each conversation lists its line ids
(e.g. ['L194', 'L195']) and is rebuilt through that list.
"""
from __future__ import annotations

import re
from array import array
from pathlib import Path
from typing import Iterator

import numpy as np

from ..errors import CorpusError
from .base import MAX_LINE_BYTES, Conversation, ReadLog, iter_lines, iter_lines_at

SEP = " +++$+++ "
ENCODING = "iso-8859-1"
LINES, CONVERSATIONS = "movie_lines.txt", "movie_conversations.txt"
_LINE_IDS = re.compile(r"^\[\s*'L\d+'(\s*,\s*'L\d+')*\s*\]$")
_LINE_ID = re.compile(r"L\d+")


def find_files(path: Path) -> tuple[Path, Path] | None:
    """The two files, in `path` or up to two folders below it (the official zip nests them one level
    down); no deeper, so that asking of a tree of a million Ubuntu dialogs lists only its top folders."""
    candidates = [p for pattern in (LINES, f"*/{LINES}", f"*/*/{LINES}") for p in sorted(Path(path).glob(pattern))]
    for lines in candidates:
        if "__MACOSX" not in lines.parts and (lines.parent / CONVERSATIONS).is_file():
            return lines, lines.parent / CONVERSATIONS
    return None


def _zero_padded(line_id: str) -> bool:
    return line_id[1] == "0" and len(line_id) > 2


class _LineIndex:
    """Where each line of movie_lines.txt starts, by its id: the texts stay in the file, read back when a
    conversation names them (the page cache holds the file), so memory is 16 bytes a line, not the text.
    Ids are L<number>; the rare one with leading zeros ("L007" is not "L7") is kept by its name."""

    def __init__(self, path: Path, encoding: str, log: ReadLog):
        self.path, self.encoding = path, encoding
        numbers, offsets, self.named = array("q"), array("q"), {}
        for number, offset, line in iter_lines_at(path, encoding, log):
            fields = line.split(SEP)
            if len(fields) != 5 or not fields[0].startswith("L"):
                log.skip("malformed line in movie_lines.txt", f"{path.name}:{number}")
                continue
            log.utterances += 1
            line_id = fields[0].strip()
            if not _LINE_ID.fullmatch(line_id):
                continue  # no conversation can name it (they name L<digits>)
            if _zero_padded(line_id):
                self.named[line_id] = offset
            else:
                numbers.append(int(line_id[1:]))
                offsets.append(offset)
        order = np.argsort(np.frombuffer(numbers, np.int64), kind="stable")
        self.numbers = np.frombuffer(numbers, np.int64)[order]
        self.offsets = np.frombuffer(offsets, np.int64)[order]
        self.file = open(path, "rb")

    def texts(self, line_ids: list[str]) -> list[str | None]:
        """The text of each id (None: not in the file); a repeated id has its last line's text."""
        plain = [int(i[1:]) for i in line_ids]
        at = np.searchsorted(self.numbers, plain, side="right") - 1
        out = []
        for line_id, number, k in zip(line_ids, plain, at):
            if _zero_padded(line_id):
                offset = self.named.get(line_id)
            else:
                offset = int(self.offsets[k]) if k >= 0 and self.numbers[k] == number else None
            out.append(None if offset is None else self._text(offset))
        return out

    def _text(self, offset: int) -> str:
        self.file.seek(offset)
        line = self.file.readline(MAX_LINE_BYTES + 1).decode(self.encoding).rstrip("\r\n")
        return line.split(SEP)[4]  # checked when indexed

    def close(self) -> None:
        self.file.close()


def read(path: Path, log: ReadLog, encoding: str | None = None) -> Iterator[Conversation]:
    found = find_files(path)
    if found is None:
        raise CorpusError(f"{path}: no {LINES} with {CONVERSATIONS} beside it (is this the Cornell corpus?)")
    lines_file, conversations_file = found
    encoding = encoding or ENCODING
    index = _LineIndex(lines_file, encoding, log)
    try:
        for number, line in iter_lines(conversations_file, encoding, log):
            fields = line.split(SEP)
            where = f"{conversations_file.name}:{number}"
            if len(fields) != 4 or not _LINE_IDS.match(fields[3].strip()):
                log.skip("malformed line in movie_conversations.txt", where)
                continue
            line_ids = re.findall(r"L\d+", fields[3])
            turns = []
            for line_id, text in zip(line_ids, index.texts(line_ids)):
                if text is None:
                    log.skip("conversation names a line that is not in movie_lines.txt", where)
                elif not text.strip():
                    log.skip("empty utterance", f"{lines_file.name}:{line_id}")
                else:
                    turns.append(text)
            yield turns
    finally:
        index.close()
