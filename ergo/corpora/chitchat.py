"""The chitchat-dataset package from PyPI (7,168 conversations, MIT): the default corpus, no download.

Its dataset.json maps a conversation id to {"messages": [[{"text", "sender", "timestamp"}, ...], ...]}:
each inner list is one turn (a speaker's consecutive messages), joined here with spaces.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Iterator

from ..errors import CorpusError
from .base import Conversation, ReadLog, read_text


def package_file() -> Path:
    try:
        import chitchat_dataset
    except ImportError:
        raise CorpusError("the chitchat-dataset package is not installed: pip install -r requirements.txt") from None
    return Path(chitchat_dataset._PATH)


def read(path: Path | None, log: ReadLog, encoding: str | None = None) -> Iterator[Conversation]:
    path = Path(path) if path else package_file()
    try:
        data = json.loads(read_text(path, encoding or "utf-8"))
    except json.JSONDecodeError as e:
        raise CorpusError(f"{path}:{e.lineno}: not valid JSON ({e.msg})") from None
    if not isinstance(data, dict):
        raise CorpusError(f"{path}: expected an object of conversations like chitchat-dataset's dataset.json")
    for key, conversation in data.items():
        try:
            messages = conversation["messages"]
            turns = [" ".join(m["text"].strip() for m in turn if m["text"].strip()) for turn in messages]
        except (KeyError, TypeError, AttributeError):
            log.skip("malformed conversation", f"{path.name}:{key}")
            continue
        log.utterances += sum(len(turn) for turn in messages)
        yield [t for t in turns if t]
