"""A split as flat arrays: contexts and replies each one int32 array of ids end to end plus int64 offsets.

Row i of a `Ragged` is `ids[offsets[i]:offsets[i + 1]]`, so a corpus of millions of pairs costs four bytes
a token, not a Python object per turn. On disk a split is five .npy files:

    {split}.context.ids.npy  {split}.context.offsets.npy
    {split}.reply.ids.npy    {split}.reply.offsets.npy    {split}.conversation.npy

Why .npy, not the pickle the design card names: `np.load(..., allow_pickle=False)` reads a header and raw
numbers and nothing else, so no file, however crafted, runs code when it loads (a restricted unpickler
gets the same only by refusing every global but two); and the ids load memory-mapped, so training on a
corpus of millions of pairs starts at once, and the pages are shared between processes and evictable.
`SplitWriter` appends pairs to the files as they come and fills in the header's length at the end, so
writing a split never holds it in memory either.
"""
from __future__ import annotations

from array import array
from pathlib import Path
from collections.abc import Iterator, Sequence

import numpy as np

from .errors import ErgoError

IDS, OFFSETS = np.dtype("<i4"), np.dtype("<i8")
REBUILD = "preprocess again (python main.py --preprocess --force)"
PARTS = ("context", "reply")


def split_files(name: str) -> list[str]:
    """The file names of split `name`, in the order the manifest lists them."""
    return [f"{name}.{part}.{kind}.npy" for part in PARTS for kind in ("ids", "offsets")] + [f"{name}.conversation.npy"]


def even_sample(n: int, most: int, seed: int = 0) -> np.ndarray | None:
    """Past `most` of `n` rows, a seeded even sample of `most` row numbers, in order (so the rows keep
    theirs); None when all of them fit. The caps on indexes and on validation take their rows from it."""
    if n <= most:
        return None
    return np.sort(np.random.default_rng(seed).choice(n, most, replace=False))


class Ragged(Sequence):
    """Sequences of ids in one flat array: row i is ids[offsets[i]:offsets[i + 1]] (a view, not a copy)."""

    def __init__(self, ids: np.ndarray, offsets: np.ndarray):
        self.ids, self.offsets = ids, offsets

    @classmethod
    def from_rows(cls, rows: Sequence[Sequence[int]]) -> "Ragged":
        lengths = np.fromiter((len(r) for r in rows), np.int64, len(rows))
        offsets = np.zeros(len(rows) + 1, np.int64)
        np.cumsum(lengths, out=offsets[1:])
        ids = np.fromiter((t for r in rows for t in r), np.int32, int(offsets[-1]))
        return cls(ids, offsets)

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def __getitem__(self, i):
        n = len(self)
        if isinstance(i, slice):
            return [self[k] for k in range(*i.indices(n))]
        if not isinstance(i, (int, np.integer)):
            raise TypeError(f"Ragged rows are taken by an integer or a slice, not {type(i).__name__}")
        if i < 0:
            i += n
        if not 0 <= i < n:
            raise IndexError(f"row {i} of {n}")
        return self.ids[self.offsets[i]:self.offsets[i + 1]]

    def __iter__(self) -> Iterator[np.ndarray]:
        ids, offsets = self.ids, self.offsets
        for i in range(len(self)):
            yield ids[offsets[i]:offsets[i + 1]]

    def lengths(self) -> np.ndarray:
        return np.diff(self.offsets)

    def take(self, rows: np.ndarray) -> "Ragged":
        """The given rows, in that order, as a new Ragged (its ids copied into one array)."""
        rows = np.asarray(rows, np.int64)
        lengths = self.lengths()[rows]
        offsets = np.zeros(len(rows) + 1, np.int64)
        np.cumsum(lengths, out=offsets[1:])
        where = np.repeat(self.offsets[rows] - offsets[:-1], lengths) + np.arange(offsets[-1])
        return Ragged(np.ascontiguousarray(self.ids[where]), offsets)

    def rows(self) -> np.ndarray:
        """The row of each id: row i's ids are where this equals i."""
        return np.repeat(np.arange(len(self)), self.lengths())


class _IdsFile:
    """An .npy file of int32 ids written as they come: a header with a placeholder length, the ids in blocks,
    then the header again with the real length (a 1-D header is 128 bytes for any length)."""

    def __init__(self, path: Path):
        self.file = open(path, "wb")
        self.count, self.buffer = 0, array("i")
        self._header()
        self.start = self.file.tell()

    def _header(self) -> None:
        np.lib.format.write_array_header_1_0(self.file, {"descr": IDS.str, "fortran_order": False,
                                                         "shape": (self.count,)})

    def extend(self, ids: Sequence[int]) -> None:
        self.buffer.extend(ids)
        self.count += len(ids)
        if len(self.buffer) >= 1 << 18:
            self.flush()

    def flush(self) -> None:
        np.frombuffer(self.buffer, np.int32).astype(IDS, copy=False).tofile(self.file)
        self.buffer = array("i")

    def close(self) -> None:
        self.flush()
        self.file.seek(0)
        self._header()
        if self.file.tell() != self.start:  # cannot happen below 10**60 ids; a silent shift would be worse
            raise ErgoError("an .npy header changed length while it was written")
        self.file.close()


class SplitWriter:
    """Appends (context, reply, conversation) pairs of one split to its five files; offsets stay in memory
    (eight bytes a pair), ids go to disk in blocks."""

    def __init__(self, folder: Path, name: str):
        self.folder, self.name = Path(folder), name
        files = split_files(name)
        self.ids = {part: _IdsFile(self.folder / files[2 * k]) for k, part in enumerate(PARTS)}
        self.offsets = {part: array("q", [0]) for part in PARTS}
        self.conversation = array("i")

    def add(self, context: Sequence[int], reply: Sequence[int], conversation: int) -> None:
        for part, seq in zip(PARTS, (context, reply)):
            self.ids[part].extend(seq)
            self.offsets[part].append(self.offsets[part][-1] + len(seq))
        self.conversation.append(conversation)

    def __len__(self) -> int:
        return len(self.conversation)

    def close(self) -> None:
        files = split_files(self.name)
        for k, part in enumerate(PARTS):
            self.ids[part].close()
            np.save(self.folder / files[2 * k + 1], np.frombuffer(self.offsets[part], np.int64).astype(OFFSETS))
        np.save(self.folder / files[4], np.frombuffer(self.conversation, np.int32).astype(IDS))


def _load(path: Path, dtype: np.dtype, mmap: bool) -> np.ndarray:
    try:
        array_ = np.load(path, mmap_mode="r" if mmap else None, allow_pickle=False)
    except (ValueError, OSError, EOFError) as e:  # a pickle, a damaged header, a truncated file
        reason = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise ErgoError(f"{path} is not a data file ErGo wrote ({reason}); it was not loaded: {REBUILD}") from None
    if array_.dtype != dtype or array_.ndim != 1:
        raise ErgoError(f"{path} holds {array_.dtype} of {array_.ndim} dimensions, not a 1-D {dtype} array ErGo "
                        f"wrote; {REBUILD}")
    return np.asarray(array_)  # a plain ndarray view of the map: numpy's memmap subclass follows every slice


def load_split(folder: Path, name: str) -> dict:
    """{"context": Ragged, "reply": Ragged, "conversation": int32 array}, the ids memory-mapped; the files'
    shapes are checked against each other, so a slice is never read past its array."""
    files = [Path(folder) / f for f in split_files(name)]
    split: dict = {}
    for k, part in enumerate(PARTS):
        ids = _load(files[2 * k], IDS, mmap=True)
        offsets = _load(files[2 * k + 1], OFFSETS, mmap=False)
        if not (len(offsets) and offsets[0] == 0 and offsets[-1] == len(ids) and np.all(np.diff(offsets) >= 0)):
            raise ErgoError(f"{files[2 * k + 1]} does not index {files[2 * k].name}; {REBUILD}")
        split[part] = Ragged(ids, offsets)
    split["conversation"] = _load(files[4], IDS, mmap=False)
    if not len(split["context"]) == len(split["reply"]) == len(split["conversation"]):
        raise ErgoError(f"{folder}: the files of split {name} are of different lengths; {REBUILD}")
    return split
