"""Ubuntu Dialogue Corpus, both published shapes.

v1: dialogs/<n>/<id>.tsv, one message a line: time, sender, recipient, text (tab-separated).
    Consecutive messages by the same sender are one turn.
v2: the ranking csv files. train.csv has Context, Utterance, Label (only Label 1 rows are real
    replies); valid.csv/test.csv have Context, Ground Truth Utterance, Distractor_0... In Context,
    `__eou__` ends an utterance and `__eot__` ends a turn.
"""
from __future__ import annotations

import csv
import sys
from pathlib import Path
from typing import Iterator

from ..errors import CorpusError
from ..files import iter_files
from .base import MAX_LINE_BYTES, Conversation, ReadLog, iter_lines

EOU, EOT = "__eou__", "__eot__"
REPLY_COLUMNS = ("Utterance", "Ground Truth Utterance")


def is_v2_csv(path: Path) -> bool:
    if path.suffix.lower() != ".csv" or not path.is_file():
        return False
    with open(path, "rb") as f:
        header = f.readline(MAX_LINE_BYTES).decode("utf-8", "replace")
    return "Context" in header and any(c in header for c in REPLY_COLUMNS)


def v1_files(path: Path) -> Iterator[Path]:
    """The dialogs' .tsv files in sorted order, as the tree is listed: v1 has about 930,000 of them, and
    the first is read before the last folder is listed."""
    return (p for p in iter_files(Path(path)) if p.suffix == ".tsv")


def read(path: Path, log: ReadLog, encoding: str | None = None) -> Iterator[Conversation]:
    path = Path(path)
    encoding = encoding or "utf-8"
    if path.is_file():
        if not is_v2_csv(path):
            raise CorpusError(f"{path}: not an Ubuntu v2 csv (its header needs Context and Utterance)")
        yield from _read_v2(path, log, encoding)
        return
    csvs = sorted(p for p in path.glob("*.csv") if is_v2_csv(p))
    if csvs:
        for p in csvs:
            yield from _read_v2(p, log, encoding)
        return
    found = False
    for file in v1_files(path):
        found = True
        yield _read_v1_dialog(file, log, encoding)
    if not found:
        raise CorpusError(f"{path}: no Ubuntu dialogs (*.tsv under dialogs/) and no v2 csv files")


def _read_v1_dialog(file: Path, log: ReadLog, encoding: str) -> Conversation:
    turns: list[str] = []
    last_sender = None
    for number, line in iter_lines(file, encoding, log):
        fields = line.split("\t", 3)
        if len(fields) != 4:
            log.skip("malformed line in an Ubuntu dialog (needs time, sender, recipient, text)",
                     f"{file}:{number}")
            continue
        sender, text = fields[1].strip(), fields[3].strip()
        if not text:
            log.skip("empty utterance", f"{file}:{number}")
            continue
        log.utterances += 1
        if sender == last_sender:
            turns[-1] += " " + text
        else:
            turns.append(text)
            last_sender = sender
    return turns


def _turns(context: str) -> list[str]:
    turns = []
    for turn in context.split(EOT):
        utterances = [u.strip() for u in turn.split(EOU) if u.strip()]
        if utterances:
            turns.append(" ".join(utterances))
    return turns


def _read_v2(file: Path, log: ReadLog, encoding: str) -> Iterator[Conversation]:
    csv.field_size_limit(sys.maxsize)
    lines = iter_lines(file, encoding, log)
    rows = csv.reader(line for _, line in lines)
    header = next(rows, [])
    reply_col = next((c for c in REPLY_COLUMNS if c in header), None)
    if "Context" not in header or reply_col is None:
        raise CorpusError(f"{file}:1: an Ubuntu v2 csv header needs Context and Utterance columns")
    context_i, reply_i = header.index("Context"), header.index(reply_col)
    label_i = header.index("Label") if "Label" in header else None
    for number, row in enumerate(rows, 2):
        if len(row) != len(header):
            log.skip("malformed csv row", f"{file.name}:{number}")
            continue
        if label_i is not None and row[label_i].strip() not in ("1", "1.0"):
            continue  # a distractor, not the reply that was really given
        turns = _turns(row[context_i]) + _turns(row[reply_i])
        log.utterances += row[context_i].count(EOU) + max(1, row[reply_i].count(EOU))
        yield turns


DISTRACTORS = tuple(f"Distractor_{i}" for i in range(9))


def test_candidates(file: Path, limit: int, encoding: str = "utf-8") -> Iterator[tuple[list[str], list[str]]]:
    """(context turns, [true reply, 9 distractors]) of the first `limit` rows of a v2 valid/test csv, the
    1-in-10 ranking task the corpus was published with; rows of another shape are skipped."""
    csv.field_size_limit(sys.maxsize)
    rows = csv.reader(line for _, line in iter_lines(file, encoding))
    header = next(rows, [])
    if "Context" not in header or "Ground Truth Utterance" not in header or not set(DISTRACTORS) <= set(header):
        return
    columns = [header.index(c) for c in ("Ground Truth Utterance", *DISTRACTORS)]
    context_i = header.index("Context")
    for n, row in enumerate(rows):
        if n >= limit:
            return
        if len(row) == len(header):
            yield _turns(row[context_i]), [row[i].replace(EOU, " ").strip() for i in columns]
