"""The corpus registry: which reader reads what, format detection, and named corpora.

Every reader is `read(path, log, encoding=None) -> Iterator[Conversation]`, a conversation being the
list of its turns. `resolve()` turns what the user typed (--corpus, --format) into a `Corpus`.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

from ..errors import CorpusError
from . import chitchat, cornell, ubuntu, user
from .base import MAX_LINE_BYTES, Conversation, ReadLog

Reader = Callable[..., Iterator[Conversation]]

# Corpora known by name: chitchat ships with pip, the others land in corpora/<name>/ via --download.
NAMED = ("chitchat", "cornell", "ubuntu")

_SUFFIXES = {".txt": "text", ".text": "text", ".tsv": "tsv", ".jsonl": "jsonl", ".ndjson": "jsonl",
             ".yml": "yaml", ".yaml": "yaml"}
_UBUNTU_V1_LINE = re.compile(r"^\d{4}-\d\d-\d\dT[^\t]*\t[^\t]*\t[^\t]*\t")


@dataclass(frozen=True)
class Corpus:
    name: str            # names the data folder: data/<name>/
    path: Path | None    # None: the packaged chitchat corpus
    format: str


def _read_folder(path: Path, log: ReadLog, encoding: str | None = None) -> Iterator[Conversation]:
    """A folder of the user's own files, each read in the format detected for it."""
    files = [p for p in sorted(Path(path).rglob("*")) if p.is_file() and p.suffix.lower() in _SUFFIXES]
    if not files:
        raise CorpusError(f"{path}: no corpus files in this folder ({', '.join(sorted(_SUFFIXES))})")
    for file in files:
        yield from READERS[detect(file)](file, log, encoding)


READERS: dict[str, Reader] = {
    "chitchat": chitchat.read,
    "cornell": cornell.read,
    "ubuntu": ubuntu.read,
    "text": user.read_text_format,
    "tsv": user.read_tsv,
    "jsonl": user.read_jsonl,
    "yaml": user.read_yaml,
    "folder": _read_folder,
}


def _first_line(path: Path) -> str:
    """The first line with text (its first MAX_LINE_BYTES), to tell formats apart."""
    with open(path, "rb") as f:
        while raw := f.readline(MAX_LINE_BYTES):
            if raw.strip():
                return raw.decode("utf-8", "replace").lstrip("\ufeff").strip()
    return ""


def detect(path: Path) -> str:
    """The format of a file or folder, from its layout, name and first line."""
    path = Path(path)
    if path.is_dir():
        if cornell.find_files(path):
            return "cornell"
        if any(ubuntu.is_v2_csv(p) for p in path.glob("*.csv")):
            return "ubuntu"
        first_tsv = next(ubuntu.v1_files(path), None)
        if first_tsv and _UBUNTU_V1_LINE.match(_first_line(first_tsv) + "\t"):
            return "ubuntu"
        return "folder"
    if ubuntu.is_v2_csv(path):
        return "ubuntu"
    suffix = path.suffix.lower()
    if suffix == ".json":
        return "chitchat"
    if suffix in _SUFFIXES and suffix not in (".txt", ".text"):
        return _SUFFIXES[suffix]
    first = _first_line(path)
    if first.startswith("{"):
        return "jsonl"
    if first.startswith("conversations:") or first.startswith("categories:"):
        return "yaml"
    if "\t" in first:
        return "tsv"
    return "text"


def resolve(corpus: str, fmt: str | None = None, corpora_dir: Path = Path("corpora")) -> Corpus:
    """What --corpus NAME|PATH and --format F mean, checked before any work starts."""
    if fmt is not None and fmt not in READERS:
        raise CorpusError(f"unknown format {fmt!r}; known formats: {', '.join(READERS)}")
    if corpus == "chitchat" and not Path(corpus).exists():
        return Corpus("chitchat", None, "chitchat")
    if corpus in NAMED and not Path(corpus).exists():
        path = Path(corpora_dir) / corpus
        if not path.exists():
            raise CorpusError(f"corpus {corpus!r} is not in {path}/: run `python main.py --download {corpus}`, "
                              f"or pass --corpus PATH to a copy you have")
        name = corpus
    else:
        path = Path(corpus)
        if not path.exists():
            raise CorpusError(f"no such corpus file or folder: {corpus} (named corpora: {', '.join(NAMED)})")
        name = re.sub(r"[^A-Za-z0-9_.-]+", "_", path.resolve().stem if path.is_file() else path.resolve().name)
    if path.is_file() and path.stat().st_size == 0:
        raise CorpusError(f"{path}: the file is empty")
    return Corpus(name, path, fmt or detect(path))


def read(corpus: Corpus, log: ReadLog, encoding: str | None = None) -> Iterator[Conversation]:
    return READERS[corpus.format](corpus.path, log, encoding)
