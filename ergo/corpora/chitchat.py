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

MAX_JSON_BYTES = 256 << 20  # parsed whole, at about 10x its size in memory; the package's own is 40 MB


def package_file() -> Path:
    try:
        import chitchat_dataset
    except ImportError:
        raise CorpusError("the chitchat-dataset package is not installed: pip install -r requirements.txt") from None
    return Path(chitchat_dataset._PATH)


def read(path: Path | None, log: ReadLog, encoding: str | None = None) -> Iterator[Conversation]:
    path = Path(path) if path else package_file()
    text = read_text(path, encoding or "utf-8", MAX_JSON_BYTES, "JSON")
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise CorpusError(f"{path}:{e.lineno}: not valid JSON ({e.msg})") from None
    except (RecursionError, ValueError) as e:  # nesting past the parser's depth; an integer of 4,300+ digits
        raise CorpusError(f"{path}: not a chitchat-dataset file ({type(e).__name__}: {str(e)[:80]})") from None
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
