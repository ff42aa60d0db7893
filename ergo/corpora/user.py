"""The simple formats a user can write by hand (documented with examples in corpora/README.md).

text : one turn a line, a blank line between conversations.
tsv  : one conversation a line, turns separated by tabs (so `context<TAB>reply` is a pair).
jsonl: one JSON object a line, {"turns": ["hi", "hello", ...]}.
yaml : chatterbot-style, `conversations:` holding lists of turns.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Iterator

import yaml

from ..errors import CorpusError
from .base import Conversation, ReadLog, iter_lines, read_text


def read_text_format(path: Path, log: ReadLog, encoding: str | None = None) -> Iterator[Conversation]:
    turns: list[str] = []
    for _, line in iter_lines(path, encoding or "utf-8"):
        if line.strip():
            turns.append(line.strip())
            log.utterances += 1
        elif turns:
            yield turns
            turns = []
    if turns:
        yield turns


def read_tsv(path: Path, log: ReadLog, encoding: str | None = None) -> Iterator[Conversation]:
    for number, line in iter_lines(path, encoding or "utf-8"):
        if not line.strip():
            continue
        turns = [t.strip() for t in line.split("\t")]
        if len(turns) < 2 or not all(turns):
            log.skip("tsv line without a context and a reply separated by a tab", f"{path.name}:{number}")
            continue
        log.utterances += len(turns)
        yield turns


def read_jsonl(path: Path, log: ReadLog, encoding: str | None = None) -> Iterator[Conversation]:
    for number, line in iter_lines(path, encoding or "utf-8"):
        if not line.strip():
            continue
        try:
            turns = json.loads(line)["turns"]
        except (ValueError, KeyError, TypeError):
            log.skip('jsonl line that is not {"turns": [...]}', f"{path.name}:{number}")
            continue
        if not isinstance(turns, list) or not all(isinstance(t, str) for t in turns):
            log.skip("jsonl turns that are not a list of strings", f"{path.name}:{number}")
            continue
        log.utterances += len(turns)
        yield [t.strip() for t in turns if t.strip()]


def read_yaml(path: Path, log: ReadLog, encoding: str | None = None) -> Iterator[Conversation]:
    try:
        doc = yaml.safe_load(read_text(path, encoding or "utf-8"))
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark else str(path)
        problem = getattr(e, "problem", None) or "malformed"
        raise CorpusError(f"{where}: not valid YAML ({problem})") from None
    conversations = doc.get("conversations") if isinstance(doc, dict) else None
    if not isinstance(conversations, list):
        raise CorpusError(f"{path}: a chatterbot YAML file needs a 'conversations:' list")
    for i, turns in enumerate(conversations, 1):
        if not isinstance(turns, list):
            log.skip("yaml conversation that is not a list of turns", f"{path.name}: conversation {i}")
            continue
        turns = [str(t).strip() for t in turns if t is not None and str(t).strip()]
        log.utterances += len(turns)
        yield turns
