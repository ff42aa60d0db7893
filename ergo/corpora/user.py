"""The simple formats a user can write by hand (documented with examples in corpora/README.md).

text : one turn a line, a blank line between conversations.
tsv  : one conversation a line, turns separated by tabs (so `context<TAB>reply` is a pair).
jsonl: one JSON object a line, {"turns": ["hi", "hello", ...]}.
yaml : chatterbot-style, `conversations:` holding lists of turns.

These files come from anywhere, so no input may cost more than its size: a JSON line nested too deep
is skipped; YAML aliases (`&a` ... `*a`, which let a few hundred bytes expand to millions of turns,
and which chatterbot's files never use) and YAML nested past MAX_YAML_DEPTH are refused. YAML turns
are read as text, whatever they look like.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Iterator

import yaml

from ..errors import CorpusError
from .base import Conversation, ReadLog, iter_lines, read_text

MAX_YAML_BYTES = 16 << 20  # libyaml parses a chatterbot file at several MB/s; chatterbot's own are a few kB
MAX_YAML_DEPTH = 32        # chatterbot's files nest 4 deep; YAML scanners slow down with the square of it
_PARSER = yaml.CBaseLoader if yaml.__with_libyaml__ else yaml.BaseLoader  # the same events, libyaml's ~40x faster


def _yaml_document(text: str):
    """The one document in `text` as strings, lists and dicts, built from the parser's events.

    Every scalar stays a string (a turn "yes", "1:20" or "2001-13-01" is text, not True, 4800 or a
    ValueError) and no tag builds anything else. Building from events as they arrive refuses an alias
    (which lets a few hundred bytes expand to millions of turns) or nesting past MAX_YAML_DEPTH before
    the rest of the file is even scanned."""
    stack: list[tuple[bool, list]] = []  # open collections: (is a mapping, items; a mapping's are key, value, ...)
    document = None
    for event in yaml.parse(text, Loader=_PARSER):
        if isinstance(event, yaml.AliasEvent):
            raise yaml.composer.ComposerError(None, None, "aliases (*name) are not accepted", event.start_mark)
        if isinstance(event, yaml.CollectionStartEvent):
            if len(stack) >= MAX_YAML_DEPTH:
                raise yaml.composer.ComposerError(None, None, f"nested deeper than {MAX_YAML_DEPTH} levels",
                                                  event.start_mark)
            stack.append((isinstance(event, yaml.MappingStartEvent), []))
            continue
        if isinstance(event, yaml.ScalarEvent):
            value = event.value
        elif isinstance(event, yaml.CollectionEndEvent):
            mapping, items = stack.pop()
            value = items
            if mapping:
                if not all(isinstance(key, str) for key in items[0::2]):
                    raise yaml.composer.ComposerError(None, None, "a mapping key that is not text", event.start_mark)
                value = dict(zip(items[0::2], items[1::2]))
        elif isinstance(event, yaml.DocumentStartEvent) and document is not None:
            raise yaml.composer.ComposerError(None, None, "more than one document", event.start_mark)
        else:
            continue
        if stack:
            stack[-1][1].append(value)
        else:
            document = value
    return document


def read_text_format(path: Path, log: ReadLog, encoding: str | None = None) -> Iterator[Conversation]:
    turns: list[str] = []
    for _, line in iter_lines(path, encoding or "utf-8", log):
        if line.strip():
            turns.append(line.strip())
            log.utterances += 1
        elif turns:
            yield turns
            turns = []
    if turns:
        yield turns


def read_tsv(path: Path, log: ReadLog, encoding: str | None = None) -> Iterator[Conversation]:
    for number, line in iter_lines(path, encoding or "utf-8", log):
        if not line.strip():
            continue
        turns = [t.strip() for t in line.split("\t")]
        if len(turns) < 2 or not all(turns):
            log.skip("tsv line without a context and a reply separated by a tab", f"{path.name}:{number}")
            continue
        log.utterances += len(turns)
        yield turns


def read_jsonl(path: Path, log: ReadLog, encoding: str | None = None) -> Iterator[Conversation]:
    for number, line in iter_lines(path, encoding or "utf-8", log):
        if not line.strip():
            continue
        try:
            turns = json.loads(line)["turns"]
        except (ValueError, KeyError, TypeError):
            log.skip('jsonl line that is not {"turns": [...]}', f"{path.name}:{number}")
            continue
        except RecursionError:
            log.skip("jsonl line nested too deeply", f"{path.name}:{number}")
            continue
        if not isinstance(turns, list) or not all(isinstance(t, str) for t in turns):
            log.skip("jsonl turns that are not a list of strings", f"{path.name}:{number}")
            continue
        log.utterances += len(turns)
        yield [t.strip() for t in turns if t.strip()]


def read_yaml(path: Path, log: ReadLog, encoding: str | None = None) -> Iterator[Conversation]:
    text = read_text(path, encoding or "utf-8", MAX_YAML_BYTES, "YAML")
    try:
        doc = _yaml_document(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark else str(path)
        problem = getattr(e, "problem", None) or "malformed"
        raise CorpusError(f"{where}: not valid YAML ({problem})") from None
    conversations = doc.get("conversations") if isinstance(doc, dict) else None
    if not isinstance(conversations, list):
        raise CorpusError(f"{path}: a chatterbot YAML file needs a 'conversations:' list")
    for i, turns in enumerate(conversations, 1):
        if not isinstance(turns, list) or not all(isinstance(t, str) for t in turns):
            log.skip("yaml conversation that is not a list of turns", f"{path.name}: conversation {i}")
            continue
        turns = [t.strip() for t in turns if t.strip()]
        log.utterances += len(turns)
        yield turns
