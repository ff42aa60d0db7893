"""Fetch Cornell and Ubuntu from their official addresses into corpora/<name>/, or say how to by hand.

A download of hundreds of megabytes gets cut off, so it goes to a `.part` file that the next try
resumes with an HTTP Range request. The archive is unpacked into a temp folder that replaces the
corpus folder only once the integrity check (line and file counts from the publishers' own figures)
has passed: a crash, a Ctrl-C or a bad archive never leaves a half-unpacked corpus behind.
Neither publisher gives a checksum, so the counts are what tells a complete corpus from a truncated one.
"""
from __future__ import annotations

import http.client
import os
import re
import sys
import tarfile
import urllib.error
import urllib.request
import zipfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from tqdm import tqdm

from .. import __version__
from ..errors import DownloadError, ErgoError
from ..files import atomic_dir, sha256_file

_CHUNK = 1 << 16
_CONTENT_RANGE = re.compile(r"bytes\s+(?:(\d+)-\d+|\*)/(\d+|\*)")


@dataclass(frozen=True)
class Source:
    """A corpus at its official address and what a complete copy of it looks like."""

    name: str                  # the folder it lands in: <dest_root>/<name>/
    url: str
    archive: str               # file name of the downloaded archive (.zip, .tgz, .tar.gz ...)
    sha256: str | None = None  # None where the publisher gives none
    # a file name found anywhere under the unpacked folder -> its exact number of lines
    expected_lines: dict[str, int] = field(default_factory=dict)
    # a glob relative to the unpacked folder -> the fewest files it must match
    expected_files: dict[str, int] = field(default_factory=dict)

    @property
    def manual(self) -> str:
        """The steps to take by hand where this machine cannot reach the address."""
        return _manual(self, Path("corpora") / self.name)


SOURCES: dict[str, Source] = {
    # The corpus README gives 304,713 utterances, one a line of movie_lines.txt; movie_conversations.txt
    # holds 83,097 conversations, one a line.
    "cornell": Source(
        name="cornell",
        url="http://www.cs.cornell.edu/~cristian/data/cornell_movie_dialogs_corpus.zip",
        archive="cornell_movie_dialogs_corpus.zip",
        expected_lines={"movie_lines.txt": 304_713, "movie_conversations.txt": 83_097},
    ),
    # The paper gives about 930,000 dialogues, one .tsv file each; fewer than 900,000 means a cut archive.
    "ubuntu": Source(
        name="ubuntu",
        url="http://cs.mcgill.ca/~jpineau/datasets/ubuntu-corpus-1.0/ubuntu_dialogs.tgz",
        archive="ubuntu_dialogs.tgz",
        expected_files={"**/*.tsv": 900_000},
    ),
}


def source(name: str) -> Source:
    """The Source called `name`; an unknown name is the user's typo, so list the known ones."""
    try:
        return SOURCES[name]
    except KeyError:
        raise ErgoError(f"unknown corpus to download: {name!r} (known: {', '.join(sorted(SOURCES))})") from None


_named = source  # download() takes a parameter called `source`, which hides this function there


def download(source: Source | str, dest_root: Path = Path("corpora"), *, progress: bool = True,
             timeout: float = 30) -> Path:
    """Download, check and unpack a corpus into dest_root/<name>/ and return that folder.

    A corpus already there that passes the check is left alone; an archive already downloaded is not
    fetched again; a `.part` file from an interrupted try is resumed.
    """
    src = source if isinstance(source, Source) else _named(source)
    dest_root = Path(dest_root)
    dest = dest_root / src.name
    if dest.is_dir() and not _problems(src, dest):
        _say(progress, f"{src.name}: {dest} is already complete; nothing to download")
        return dest

    archive = dest_root / ".downloads" / src.archive
    if archive.exists():
        _say(progress, f"{src.name}: using the archive already downloaded at {archive}")
    else:
        part = archive.with_name(archive.name + ".part")
        part.parent.mkdir(parents=True, exist_ok=True)
        _fetch(src, part, dest, progress, timeout)
        os.replace(part, archive)

    if src.sha256 and (digest := sha256_file(archive)) != src.sha256.lower():
        archive.unlink()  # a wrong archive would fail the same way on every later try
        raise DownloadError(f"{src.name}: {archive.name} has sha256 {digest}, expected {src.sha256}; "
                            f"the file was removed, run --download {src.name} again")

    with atomic_dir(dest) as tmp:
        _say(progress, f"{src.name}: unpacking {archive.name}")
        _unpack(src, archive, tmp, progress)
        if problems := _problems(src, tmp):
            raise DownloadError(f"{src.name}: the unpacked corpus fails its check: {'; '.join(problems)} "
                                f"(archive kept at {archive}; delete it to download again)")
    _say(progress, f"{src.name}: ready in {dest} (the archive stays in {archive.parent}; delete it to free space)")
    return dest


def _fetch(src: Source, part: Path, dest: Path, progress: bool, timeout: float) -> None:
    """Bring `part` up to the whole file at src.url, resuming from the bytes it already holds."""
    have = part.stat().st_size if part.exists() else 0
    headers = {"User-Agent": f"ErGo/{__version__}"}
    if have:
        headers["Range"] = f"bytes={have}-"
    try:
        response = urllib.request.urlopen(urllib.request.Request(src.url, headers=headers), timeout=timeout)
    except urllib.error.HTTPError as e:
        _, total = _content_range((e.headers or {}).get("Content-Range", ""))
        if e.code == 416 and have and total in (None, have):
            return  # an earlier try got every byte but stopped before renaming the file
        if e.code == 416 and have:
            part.unlink()  # the partial file is longer than the file on the server: start over next time
        raise _failed(src, dest, part, f"HTTP {e.code} {e.reason}") from None
    except (urllib.error.URLError, OSError, http.client.HTTPException) as e:
        raise _failed(src, dest, part, getattr(e, "reason", None) or e) from None

    with response:
        start, total, broke = 0, None, None
        if response.status == 206:
            start, total = _content_range(response.headers.get("Content-Range", ""))
            if start is None or start > have:
                raise _failed(src, dest, part, f"the server sent an unusable range "
                                                f"({response.headers.get('Content-Range')!r})")
        # else 200: the server ignored the Range header and sends the whole file from its start
        length = response.headers.get("Content-Length", "")
        if total is None and length.isdigit():
            total = start + int(length)
        with open(part, "r+b" if start else "wb") as f, \
                tqdm(total=total, initial=start, unit="B", unit_scale=True, unit_divisor=1024,
                     desc=src.archive, disable=not progress, mininterval=0.5) as bar:
            f.seek(start)
            f.truncate()
            try:
                while chunk := response.read1(_CHUNK):  # what has arrived, so a timeout loses nothing
                    f.write(chunk)
                    bar.update(len(chunk))
            except (OSError, http.client.HTTPException) as e:
                broke = e
            got = f.tell()
    if broke is not None:
        raise _failed(src, dest, part, f"the transfer broke off after {got:,} bytes ({broke})")
    if total is not None and got < total:
        raise _failed(src, dest, part, f"the connection closed after {got:,} of {total:,} bytes")


def _content_range(value: str) -> tuple[int | None, int | None]:
    """(first byte, total size) from a Content-Range header; None for what it does not say."""
    m = _CONTENT_RANGE.fullmatch(value.strip())
    if not m:
        return None, None
    return (int(m[1]) if m[1] else None), (int(m[2]) if m[2] != "*" else None)


def _unpack(src: Source, archive: Path, into: Path, progress: bool) -> None:
    """Unpack a zip or tar archive into `into`, refusing any member that would land outside it."""
    try:
        if zipfile.is_zipfile(archive):
            with zipfile.ZipFile(archive) as z:
                members = z.infolist()
                for info in members:
                    name = PurePosixPath(info.filename.replace("\\", "/"))
                    if name.is_absolute() or ".." in name.parts or re.match(r"[A-Za-z]:", info.filename):
                        raise DownloadError(f"{src.name}: {archive.name} holds an unsafe member "
                                            f"{info.filename!r}; nothing was unpacked")
                for info in tqdm(members, desc="unpacking", unit=" files", disable=not progress, mininterval=0.5):
                    if not info.filename.startswith("__MACOSX/"):  # resource forks of the Mac that zipped it
                        z.extract(info, into)
        else:
            with tarfile.open(archive, "r:*") as t:
                for member in tqdm(t, desc="unpacking", unit=" files", disable=not progress, mininterval=0.5):
                    t.extract(member, into, filter="data")  # refuses absolute paths, `..`, links outside
    except (zipfile.BadZipFile, tarfile.TarError, EOFError, zlib.error, OSError) as e:
        raise DownloadError(f"{src.name}: cannot unpack {archive} ({e}); if the archive is damaged, "
                            f"delete it and run --download {src.name} again") from None


def _problems(src: Source, root: Path) -> list[str]:
    """What makes the unpacked folder differ from a complete corpus, one phrase each; empty if nothing."""
    problems = []
    for name, expected in src.expected_lines.items():
        found = sorted(root.rglob(name))
        if not found:
            problems.append(f"{name} is missing (expected {expected:,} lines)")
        for path in found:
            if (lines := _count_lines(path)) != expected:
                problems.append(f"{path.relative_to(root)} has {lines:,} lines, expected {expected:,}")
    for pattern, minimum in src.expected_files.items():
        if (count := sum(1 for p in root.glob(pattern) if p.is_file())) < minimum:
            problems.append(f"{pattern} matches {count:,} files, expected at least {minimum:,}")
    return problems


def _count_lines(path: Path) -> int:
    """Lines as a reader sees them: newline characters, plus a last line that has none."""
    lines, last = 0, b"\n"
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            lines += block.count(b"\n")
            last = block[-1:]
    return lines + (last != b"\n")


def _manual(src: Source, dest: Path) -> str:
    return (f"to install it by hand, download {src.url}, unpack it into {dest}/ "
            f"(or pass --corpus PATH of the unpacked folder to --preprocess)")


def _failed(src: Source, dest: Path, part: Path, reason: object) -> DownloadError:
    """One line: what failed, that the partial file is kept, and what to do by hand."""
    kept = f"; {part} ({part.stat().st_size:,} bytes) is kept and the next try resumes it" \
        if part.exists() and part.stat().st_size else ""
    text = f"{src.name}: cannot download {src.url}: {reason}{kept}; {_manual(src, dest)}"
    return DownloadError(" ".join(text.split()))


def _say(progress: bool, message: str) -> None:
    if progress:
        print(message, file=sys.stderr)
