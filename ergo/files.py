"""Atomic, durable writes and checksums: a crash, a kill or a power loss never leaves a half-written file
or folder behind.

Everything is written to a temp name beside its target, fsynced (files, then their folder), and only
then renamed into place: without the fsync a power loss after the rename can leave an empty file where
the complete old one was. A folder replaced with `atomic_dir` moves its old self aside to
`.<name>.previous` first; `recover_dir` puts it back if a stop fell between the two renames, and clears
temp folders that a SIGKILL left behind.
"""
from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import tempfile
from pathlib import Path
from typing import Iterator


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_dir(path: Path) -> None:
    """Make a folder's entries (a rename, a new file) durable."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_tree(root: Path) -> None:
    for folder, _, files in os.walk(root):
        for name in files:
            fsync_file(Path(folder) / name)
        fsync_dir(Path(folder))


@contextlib.contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """Yield a temp path beside `path`; on success it is renamed over `path`, on failure removed."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(tmp)
    try:
        yield tmp
        fsync_file(tmp)
        os.replace(tmp, path)
        fsync_dir(path.parent)
    finally:
        tmp.unlink(missing_ok=True)


def atomic_write_bytes(path: Path, data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def previous_of(path: Path) -> Path:
    """Where atomic_dir keeps the folder it replaced, until the new one is in place (or for good)."""
    path = Path(path)
    return path.parent / f".{path.name}.previous"


@contextlib.contextmanager
def atomic_dir(path: Path, keep_previous: bool = False) -> Iterator[Path]:
    """Yield a temp folder beside `path`; on success it replaces `path` whole, on failure it is removed.

    The old folder, if any, is renamed to previous_of(path) first and deleted only after the new one is
    in place (kept, with `keep_previous`, as a fallback should the new one be found damaged), so at every
    moment either `path` or its previous is complete, and `recover_dir` knows which.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    previous = previous_of(path)
    try:
        yield tmp
        _fsync_tree(tmp)
        if path.exists():
            shutil.rmtree(previous, ignore_errors=True)
            os.replace(path, previous)
        os.replace(tmp, path)
        fsync_dir(path.parent)
        if not keep_previous:
            shutil.rmtree(previous, ignore_errors=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def recover_dir(path: Path, keep_previous: bool = False) -> bool:
    """After a stop that skipped atomic_dir's clean-up: the previous folder back in place if the stop fell
    between its two renames, and no temp folder left over (nor a previous that is not to be kept).
    Returns whether the previous was put back."""
    path, previous = Path(path), previous_of(path)
    older = sorted(path.parent.glob(f".{path.name}.*.old"))  # where earlier versions moved the old folder
    if not previous.is_dir() and older and (older[-1] / "previous").is_dir():
        os.replace(older[-1] / "previous", previous)
    restored = not path.exists() and previous.is_dir()
    if restored:
        os.replace(previous, path)
        fsync_dir(path.parent)
    elif previous.is_dir() and not keep_previous:
        shutil.rmtree(previous, ignore_errors=True)
    for stale in [*path.parent.glob(f".{path.name}.*.tmp"), *older]:
        shutil.rmtree(stale, ignore_errors=True) if stale.is_dir() else stale.unlink(missing_ok=True)
    return restored


def iter_files(folder: Path) -> Iterator[Path]:
    """Every file under `folder`, in sorted path order, found as the tree is listed: a folder is listed
    only when the walk reaches it, so the first file comes at once even under a million of them.
    Symlinked folders are not followed (a link loop would never end)."""
    try:
        entries = sorted(os.scandir(folder), key=lambda e: e.name)
    except OSError:
        return
    for entry in entries:
        if entry.is_dir(follow_symlinks=False):
            yield from iter_files(Path(entry.path))
        elif entry.is_file():
            yield Path(entry.path)
