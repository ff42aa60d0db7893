"""Fetch Cornell and Ubuntu from their official addresses into corpora/<name>/, or say how to by hand.

A download of hundreds of megabytes gets cut off, so it goes to a `.part` file that the next try
resumes with an HTTP Range request. The archive is unpacked into a temp folder that replaces the
corpus folder only once the integrity check has passed: a crash, a Ctrl-C or a bad archive never
leaves a half-unpacked corpus behind.

Trust: both addresses are https, and a redirect that leaves https is refused. Cornell's archive is
pinned by sha256 (the digest that independent projects record for that exact URL); McGill publishes
no checksum for Ubuntu's and none could be confirmed here, so it has none, and https with the file
counts from the paper is what checks it. The line and file counts from the publishers' own figures
then tell a complete corpus from a truncated one.

Unpacking does not rely on tarfile's extraction filters, which unpatched Pythons (3.11.7 among them:
CVE-2025-4517 and its siblings) let crafted archives bypass. It reads member data only
(tarfile.extractfile, zipfile.open) and writes every file itself: only regular files and folders, at
relative names without `..`, drive letters or backslashes, each created anew (never through an
existing path), within a cap on bytes written and on members. So it is safe on any Python 3.10+, and
--download keeps working on the Pythons it would otherwise have to refuse.
"""
from __future__ import annotations

import http.client
import os
import re
import stat
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
    sha256: str | None = None  # None where no checksum of the official archive is known
    max_bytes: int = 1 << 30   # the most it may unpack to: a decompression bomb stops there
    max_members: int = 100_000  # the most files and folders it may hold
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
    # holds 83,097 conversations, one a line. The ~9.5 MB zip unpacks to tens of MB in a dozen files.
    "cornell": Source(
        name="cornell",
        url="https://www.cs.cornell.edu/~cristian/data/cornell_movie_dialogs_corpus.zip",
        archive="cornell_movie_dialogs_corpus.zip",
        sha256="3bde8a571f615201bc2d2453e22878090719638592f774720eddec739de8c900",
        max_bytes=256 << 20, max_members=1_000,
        expected_lines={"movie_lines.txt": 304_713, "movie_conversations.txt": 83_097},
    ),
    # The paper gives about 930,000 dialogues, one .tsv file each; fewer than 900,000 means a cut archive.
    # The ~550 MB tgz is chat text, which gzip shrinks a few times over; 8 GiB is about 15x the archive.
    "ubuntu": Source(
        name="ubuntu",
        url="https://dataset.cs.mcgill.ca/ubuntu-corpus-1.0/ubuntu_dialogs.tgz",
        archive="ubuntu_dialogs.tgz",
        max_bytes=8 << 30, max_members=2_000_000,
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

    digest = sha256_file(archive)
    if src.sha256 is None:
        _say(progress, f"{src.name}: no published sha256 to check {archive.name} against (its sha256 is {digest})")
    elif digest != src.sha256.lower():
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


class _KeepHttps(urllib.request.HTTPRedirectHandler):
    """Follow a redirect only where it keeps https: a hop to plain http would undo what https checks."""

    def redirect_request(self, req, fp, code, msg, headers, newurl):
        if req.full_url.lower().startswith("https:") and not newurl.lower().startswith("https:"):
            raise urllib.error.HTTPError(newurl, code, f"redirected to {newurl}, which is not https; refused",
                                         headers, fp)
        return super().redirect_request(req, fp, code, msg, headers, newurl)


_OPENER = urllib.request.build_opener(_KeepHttps)


def _fetch(src: Source, part: Path, dest: Path, progress: bool, timeout: float) -> None:
    """Bring `part` up to the whole file at src.url, resuming from the bytes it already holds."""
    have = part.stat().st_size if part.exists() else 0
    headers = {"User-Agent": f"ErGo/{__version__}"}
    if have:
        headers["Range"] = f"bytes={have}-"
    try:
        response = _OPENER.open(urllib.request.Request(src.url, headers=headers), timeout=timeout)
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


class _Unpacker:
    """Writes an archive's members under `root`, checking each name and kind and the running totals."""

    def __init__(self, src: Source, archive: Path, root: Path):
        self.src, self.archive, self.root = src, archive, root
        self.members = self.bytes = 0
        self.made: set[Path] = set()  # folders made so far: one mkdir each, not one per file

    def refuse(self, what: str) -> DownloadError:
        return DownloadError(f"{self.src.name}: {self.archive.name} {what}; it was not unpacked (delete it and "
                             f"run --download {self.src.name} again, or unpack it by hand)")

    def target(self, name: str, folder: bool = False) -> Path:
        """Where a member called `name` lands: a relative name of plain parts, or it is refused. Only a
        folder may be the archive's root itself ("./")."""
        parts = PurePosixPath(name).parts
        if (not (parts or folder) or name.startswith("/") or "\\" in name or "\0" in name or ".." in parts
                or re.match(r"[A-Za-z]:", name)):
            raise self.refuse(f"holds an unsafe member {name!r}")
        self.members += 1
        if self.members > self.src.max_members:
            raise self.refuse(f"holds more than {self.src.max_members:,} members")
        return self.root.joinpath(*parts)

    def claim(self, name: str, size: int) -> None:
        """Count `size` more bytes towards the cap (declared sizes before writing, real bytes while)."""
        self.bytes += size
        if self.bytes > self.src.max_bytes:
            raise self.refuse(f"unpacks to more than {self.src.max_bytes:,} bytes (at {name!r})")

    def _mkdir(self, path: Path) -> None:
        if path not in self.made:
            path.mkdir(parents=True, exist_ok=True)
            self.made.add(path)

    def folder(self, name: str) -> None:
        self._mkdir(self.target(name, folder=True))

    def file(self, name: str, stream) -> None:
        """A new regular file from `stream`; "xb" never writes through a path that already exists."""
        path = self.target(name)
        self._mkdir(path.parent)
        try:
            out = open(path, "xb")
        except FileExistsError:
            raise self.refuse(f"holds {name!r} twice") from None
        with out:
            while chunk := stream.read(_CHUNK):
                self.claim(name, len(chunk))
                out.write(chunk)


def _unpack(src: Source, archive: Path, into: Path, progress: bool) -> None:
    """Unpack a zip or tar archive into `into`, with names, kinds and sizes checked as described above."""
    unpacker = _Unpacker(src, archive, into)
    try:
        if zipfile.is_zipfile(archive):
            _unpack_zip(unpacker, progress)
        else:
            _unpack_tar(unpacker, progress)
    except (zipfile.BadZipFile, tarfile.TarError, EOFError, zlib.error, OSError, NotImplementedError) as e:
        raise DownloadError(f"{src.name}: cannot unpack {archive} ({e}); if the archive is damaged, "
                            f"delete it and run --download {src.name} again") from None


def _unpack_zip(unpacker: _Unpacker, progress: bool) -> None:
    """A zip lists every member up front, so all are checked before anything is written."""
    with zipfile.ZipFile(unpacker.archive) as z:
        members = z.infolist()
        declared = _Unpacker(unpacker.src, unpacker.archive, unpacker.root)
        for info in members:
            info.filename = info.filename.replace("\\", "/")  # written by a Windows zipper
            declared.target(info.filename, folder=info.is_dir())
            if stat.S_IFMT(info.external_attr >> 16) not in (0, stat.S_IFREG, stat.S_IFDIR):  # 0: no type given
                raise unpacker.refuse(f"holds {info.filename!r}, which is a link or a device, not a file")
            if info.flag_bits & 0x1:
                raise unpacker.refuse(f"holds {info.filename!r} encrypted")
            declared.claim(info.filename, info.file_size)
        for info in tqdm(members, desc="unpacking", unit=" files", disable=not progress, mininterval=0.5):
            if info.filename.startswith("__MACOSX/"):  # resource forks of the Mac that zipped it
                continue
            if info.is_dir():
                unpacker.folder(info.filename)
            else:
                with z.open(info) as stream:
                    unpacker.file(info.filename, stream)


def _unpack_tar(unpacker: _Unpacker, progress: bool) -> None:
    """A tar is read as a stream, member by member; a refused member stops it, and the temp folder it
    was unpacking into is removed, so a bad member after good ones leaves nothing either."""
    with tarfile.open(unpacker.archive, "r|*") as t, \
            tqdm(desc="unpacking", unit=" files", disable=not progress, mininterval=0.5) as bar:
        while (member := t.next()) is not None:
            t.members.clear()  # tarfile keeps every member it has read: hundreds of MB for Ubuntu's 930,000
            if member.isdir():
                unpacker.folder(member.name)
            elif member.isreg():
                unpacker.file(member.name, t.extractfile(member))
            else:
                kind = "a link" if member.issym() or member.islnk() else "a device or fifo"
                raise unpacker.refuse(f"holds {member.name!r}, which is {kind}, not a file")
            bar.update()


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
