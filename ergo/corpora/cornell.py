"""Cornell Movie-Dialogs: movie_lines.txt + movie_conversations.txt, fields split by ' +++$+++ '.

The files are ISO-8859-1, and lines are stored out of order: each conversation lists its line ids
(e.g. ['L194', 'L195']) and is rebuilt through that list.
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Iterator

from ..errors import CorpusError
from .base import Conversation, ReadLog, iter_lines

SEP = " +++$+++ "
ENCODING = "iso-8859-1"
LINES, CONVERSATIONS = "movie_lines.txt", "movie_conversations.txt"
_LINE_IDS = re.compile(r"^\[\s*'L\d+'(\s*,\s*'L\d+')*\s*\]$")


def find_files(path: Path) -> tuple[Path, Path] | None:
    """The two files, in `path` or any folder below it (the official zip nests them one level down)."""
    for lines in sorted(Path(path).rglob(LINES)):
        if "__MACOSX" not in lines.parts and (lines.parent / CONVERSATIONS).is_file():
            return lines, lines.parent / CONVERSATIONS
    return None


def read(path: Path, log: ReadLog, encoding: str | None = None) -> Iterator[Conversation]:
    found = find_files(path)
    if found is None:
        raise CorpusError(f"{path}: no {LINES} with {CONVERSATIONS} beside it (is this the Cornell corpus?)")
    lines_file, conversations_file = found
    encoding = encoding or ENCODING

    texts: dict[str, str] = {}
    for number, line in iter_lines(lines_file, encoding, log):
        fields = line.split(SEP)
        if len(fields) != 5 or not fields[0].startswith("L"):
            log.skip("malformed line in movie_lines.txt", f"{lines_file.name}:{number}")
            continue
        texts[fields[0].strip()] = fields[4]
        log.utterances += 1

    for number, line in iter_lines(conversations_file, encoding, log):
        fields = line.split(SEP)
        where = f"{conversations_file.name}:{number}"
        if len(fields) != 4 or not _LINE_IDS.match(fields[3].strip()):
            log.skip("malformed line in movie_conversations.txt", where)
            continue
        turns = []
        for line_id in re.findall(r"L\d+", fields[3]):
            if line_id not in texts:
                log.skip("conversation names a line that is not in movie_lines.txt", where)
            elif not texts[line_id].strip():
                log.skip("empty utterance", f"{lines_file.name}:{line_id}")
            else:
                turns.append(texts[line_id])
        yield turns
