"""What every reader shares: the log of what was read and skipped, and line-by-line decoding that
names the file and line when the bytes are not in the expected encoding. Corpus files come from
anywhere, so reading is bounded: no line is held past MAX_LINE_BYTES, and a file parsed whole has a cap."""
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


MAX_LINE_BYTES = 1 << 20  # a turn, or a csv row of a whole context, is far shorter; a longer "line" is not chat
_WIDE_BOMS = (b"\xff\xfe", b"\xfe\xff")  # UTF-16 (and UTF-32 LE) byte-order marks


def _check_encoding(path: Path, encoding: str, head: bytes) -> None:
    """Refuse what line-by-line decoding would get wrong: an unknown codec, or text whose line break is
    not the single byte 0x0a (UTF-16/32), which would otherwise be split mid-character."""
    try:
        newlines = "\n\n".encode(encoding)
    except LookupError:
        raise CorpusError(f"unknown encoding {encoding!r} (e.g. utf-8, latin-1, cp1252)") from None
    wide = head.startswith(_WIDE_BOMS)
    if wide or not newlines.endswith(b"\n\n"):
        what = "UTF-16 or UTF-32 (it starts with their byte-order mark)" if wide else f"read as {encoding}"
        raise CorpusError(f"{path}: the file is {what}; ErGo reads encodings where a line break is one byte "
                          f"(UTF-8, Latin-1, cp1252 ...): convert it to UTF-8 (e.g. with iconv -t UTF-8)")


def _decode_error(path: Path, encoding: str, number: int, byte: int, column: int) -> CorpusError:
    return CorpusError(f"{path}:{number}: not valid {encoding} (byte 0x{byte:02x} at column {column}); "
                       f"pass --encoding (e.g. --encoding latin-1) or convert the file to UTF-8")


def iter_lines(path: Path, encoding: str = "utf-8", log: ReadLog | None = None) -> Iterator[tuple[int, str]]:
    """(line number, text without the line break) for each line: `iter_lines_at` without the offsets."""
    for number, _, line in iter_lines_at(path, encoding, log):
        yield number, line


def iter_lines_at(path: Path, encoding: str = "utf-8",
                  log: ReadLog | None = None) -> Iterator[tuple[int, int, str]]:
    """(line number, byte offset of its start, text without the line break) for each line, decoding line
    by line so that a wrong encoding is reported with its exact place instead of a bare UnicodeDecodeError.

    A line over MAX_LINE_BYTES (a binary file, a file without line breaks) is never held in memory
    whole: it is skipped and counted in `log`, or refused where there is no log."""
    try:
        f = open(path, "rb")
    except OSError as e:
        raise CorpusError(f"cannot open {path}: {e.strerror}") from None
    with f:
        _check_encoding(path, encoding, f.read(4))
        f.seek(0)
        number = offset = 0
        while raw := f.readline(MAX_LINE_BYTES + 1):
            number += 1
            start, offset = offset, offset + len(raw)
            if len(raw) > MAX_LINE_BYTES and not raw.endswith(b"\n"):
                while (rest := f.readline(MAX_LINE_BYTES)) and not rest.endswith(b"\n"):
                    offset += len(rest)
                offset += len(rest)
                if log is None:
                    raise CorpusError(f"{path}:{number}: a line longer than {MAX_LINE_BYTES >> 20} MiB; "
                                      f"is this a corpus file?")
                log.skip(f"line longer than {MAX_LINE_BYTES >> 20} MiB", f"{Path(path).name}:{number}")
                continue
            try:
                line = raw.decode(encoding)
            except UnicodeDecodeError as e:
                raise _decode_error(path, encoding, number, raw[e.start], e.start + 1) from None
            if number == 1:
                line = line.lstrip("\ufeff")
            yield number, start, line.rstrip("\r\n")


def read_text(path: Path, encoding: str, max_bytes: int, what: str) -> str:
    """The whole file as text, for formats parsed whole (JSON, YAML): refused over `max_bytes`, with
    the same precise place as iter_lines when the bytes are not in `encoding`."""
    try:
        size = Path(path).stat().st_size
        if size > max_bytes:
            raise CorpusError(f"{path}: {size / 2**20:,.0f} MiB is more than a {what} file may be "
                              f"({max_bytes >> 20} MiB; it is parsed whole): split it, or write it as JSON lines")
        data = Path(path).read_bytes()
    except OSError as e:
        raise CorpusError(f"cannot open {path}: {e.strerror}") from None
    _check_encoding(path, encoding, data[:4])
    try:
        text = data.decode(encoding)
    except UnicodeDecodeError as e:
        line_start = data.rfind(b"\n", 0, e.start) + 1
        number = data.count(b"\n", 0, e.start) + 1
        raise _decode_error(path, encoding, number, data[e.start], e.start - line_start + 1) from None
    return text.lstrip("\ufeff")
