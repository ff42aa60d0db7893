"""Downloads against a real HTTP server on 127.0.0.1 that serves archives in the publishers' exact layouts.

The server honours Range requests the way Apache does and can cut the connection part way, so resuming
is tested over real sockets; it also serves https with a certificate made for the test, and hostile
archives (links, `..` and absolute names, devices, bombs, too many members). Nothing here contacts any
address other than 127.0.0.1.
"""
from __future__ import annotations

import hashlib
import io
import re
import shutil
import socket
import ssl
import stat
import subprocess
import tarfile
import threading
import time
import zipfile
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from ergo.corpora import download as dl
from ergo.corpora.download import SOURCES, Source, download, source
from ergo.errors import DownloadError, ErgoError

CORNELL_DIR = "cornell movie-dialogs corpus"
MOVIE_LINES = [
    "L1045 +++$+++ u0 +++$+++ m0 +++$+++ BIANCA +++$+++ They do not!",
    "L1044 +++$+++ u2 +++$+++ m0 +++$+++ CAMERON +++$+++ They do to!",
    "L985 +++$+++ u0 +++$+++ m0 +++$+++ BIANCA +++$+++ I hope so.",
    "L984 +++$+++ u2 +++$+++ m0 +++$+++ CAMERON +++$+++ She okay?",
    "L197 +++$+++ u2 +++$+++ m0 +++$+++ CAMERON +++$+++ Café au lait, then.",
    "L196 +++$+++ u0 +++$+++ m0 +++$+++ BIANCA +++$+++ Not the hacking and gagging and spitting part.",
    "L195 +++$+++ u2 +++$+++ m0 +++$+++ CAMERON +++$+++ Well, I thought we'd start with pronunciation.",
    "L194 +++$+++ u0 +++$+++ m0 +++$+++ BIANCA +++$+++ Can we make this quick?",
]
MOVIE_CONVERSATIONS = [
    "u0 +++$+++ u2 +++$+++ m0 +++$+++ ['L194', 'L195', 'L196', 'L197']",
    "u0 +++$+++ u2 +++$+++ m0 +++$+++ ['L984', 'L985']",
    "u0 +++$+++ u2 +++$+++ m0 +++$+++ ['L1044', 'L1045']",
]
UBUNTU_DIALOGS = {
    "dialogs/3/1.tsv": ["2004-11-23T11:49:00.000Z\tstuNNed\t\tany ideas why java plugin takes so long to load?",
                        "2004-11-23T11:49:07.000Z\tcrimsun\tstuNNed\tjava 1.4?",
                        "2004-11-23T11:49:35.000Z\tstuNNed\tcrimsun\tyes"],
    "dialogs/3/2.tsv": ["2004-11-23T12:01:00.000Z\tjdub\t\thow do I mount an iso?",
                        "2004-11-23T12:01:30.000Z\tseb128\tjdub\tmount -o loop file.iso /mnt"],
    "dialogs/4/7.tsv": ["2005-01-02T08:00:00.000Z\tali\t\tdoes anyone use xchat?",
                        "2005-01-02T08:00:09.000Z\tbob\tali\tyes, every day"],
}


def _text(lines: list[str]) -> bytes:
    return "".join(line + "\n" for line in lines).encode("iso-8859-1")


def _zip(members: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z:
        for name, data in members.items():
            z.writestr(name, data)
    return buf.getvalue()


def _tgz(members: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as t:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            t.addfile(info, io.BytesIO(data))
    return buf.getvalue()


CORNELL_ZIP = _zip({
    f"{CORNELL_DIR}/": b"",
    f"{CORNELL_DIR}/movie_lines.txt": _text(MOVIE_LINES),
    f"{CORNELL_DIR}/movie_conversations.txt": _text(MOVIE_CONVERSATIONS),
    f"{CORNELL_DIR}/README.txt": b"Cornell Movie-Dialogs Corpus\n",
    f"__MACOSX/{CORNELL_DIR}/._movie_lines.txt": b"\x00\x05\x16\x07 resource fork",
})
UBUNTU_TGZ = _tgz({name: "\n".join(lines).encode() + b"\n" for name, lines in UBUNTU_DIALOGS.items()})


class _Handler(BaseHTTPRequestHandler):
    """Serves server.files; honours `Range: bytes=N-` unless server.ranges is off; can cut a transfer."""

    def do_GET(self):
        srv = self.server
        rng = self.headers.get("Range")
        srv.requests.append((self.path, rng))
        if self.path in srv.redirects:
            self.send_response(302)
            self.send_header("Location", srv.redirects[self.path])
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        data = srv.files.get(self.path)
        if data is None:
            self.send_error(404)
            return
        start = 0
        if rng and srv.ranges:
            start = int(re.fullmatch(r"bytes=(\d+)-", rng)[1])
            if start >= len(data):
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{len(data)}")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        else:
            self.send_response(200)
        body = data[start:]
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if srv.cut_after is not None:  # send part of the body, then hang up or go silent (once)
            body, srv.cut_after = body[:srv.cut_after], None
            self.close_connection = True
            self.wfile.write(body)
            self.wfile.flush()
            time.sleep(srv.stall)
            return
        self.wfile.write(body)

    def log_message(self, *args):
        pass


def _serve(tls: ssl.SSLContext | None = None):
    srv = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    if tls is not None:
        srv.socket = tls.wrap_socket(srv.socket, server_side=True)
    srv.files = {"/cornell.zip": CORNELL_ZIP, "/ubuntu.tgz": UBUNTU_TGZ}
    srv.requests, srv.cut_after, srv.stall, srv.ranges, srv.redirects = [], None, 0, True, {}
    srv.base = f"{'https' if tls else 'http'}://127.0.0.1:{srv.server_address[1]}"
    thread = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)
    thread.start()
    return srv


@pytest.fixture
def server():
    srv = _serve()
    yield srv
    srv.shutdown()
    srv.server_close()


@pytest.fixture(scope="module")
def certificate(tmp_path_factory):
    """A self-signed certificate for 127.0.0.1, made with the openssl command."""
    if shutil.which("openssl") is None:
        pytest.skip("no openssl command to make a test certificate")
    folder = tmp_path_factory.mktemp("tls")
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=127.0.0.1",
                    "-addext", "subjectAltName=IP:127.0.0.1", "-keyout", str(folder / "key.pem"),
                    "-out", str(folder / "cert.pem")], check=True, capture_output=True)
    return folder / "cert.pem", folder / "key.pem"


@pytest.fixture
def https_server(certificate, monkeypatch):
    """The same server behind TLS; the client trusts its certificate through SSL_CERT_FILE, as OpenSSL
    reads it for every new connection, so the download code runs exactly as it does against a publisher."""
    cert, key = certificate
    tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    tls.load_cert_chain(cert, key)
    monkeypatch.setenv("SSL_CERT_FILE", str(cert))
    srv = _serve(tls)
    yield srv
    srv.shutdown()
    srv.server_close()


def _cornell(srv, **changes) -> Source:
    fields = dict(name="cornell", url=f"{srv.base}/cornell.zip", archive="cornell.zip",
                  expected_lines={"movie_lines.txt": len(MOVIE_LINES),
                                  "movie_conversations.txt": len(MOVIE_CONVERSATIONS)})
    return Source(**{**fields, **changes})


def _ubuntu(srv, **changes) -> Source:
    fields = dict(name="ubuntu", url=f"{srv.base}/ubuntu.tgz", archive="ubuntu.tgz",
                  expected_files={"**/*.tsv": len(UBUNTU_DIALOGS)})
    return Source(**{**fields, **changes})


def _leftovers(root: Path) -> list[str]:
    """Temp folders or files an interrupted unpack could have left beside the corpus folder."""
    return sorted(p.name for p in root.iterdir() if p.name != ".downloads")


def test_cornell_download_unpack_and_check(server, tmp_path):
    src = _cornell(server, sha256=hashlib.sha256(CORNELL_ZIP).hexdigest())
    dest = download(src, tmp_path, progress=False)
    assert dest == tmp_path / "cornell"
    lines = dest / CORNELL_DIR / "movie_lines.txt"
    assert lines.read_text("iso-8859-1").splitlines() == MOVIE_LINES
    assert (dest / CORNELL_DIR / "movie_conversations.txt").read_bytes() == _text(MOVIE_CONVERSATIONS)
    assert not (dest / "__MACOSX").exists()
    assert (tmp_path / ".downloads" / "cornell.zip").read_bytes() == CORNELL_ZIP
    assert not (tmp_path / ".downloads" / "cornell.zip.part").exists()
    assert _leftovers(tmp_path) == ["cornell"]
    assert server.requests == [("/cornell.zip", None)]


def test_ubuntu_tgz_download_unpack_and_check(server, tmp_path):
    dest = download(_ubuntu(server), tmp_path, progress=False)
    for name, lines in UBUNTU_DIALOGS.items():
        assert (dest / name).read_text().splitlines() == lines


def test_second_call_does_not_download_again(server, tmp_path, capsys):
    src = _cornell(server)
    first = download(src, tmp_path, progress=False)
    assert download(src, tmp_path) == first
    assert "already complete" in capsys.readouterr().err
    assert len(server.requests) == 1

    # The corpus folder gone but the archive kept: unpack it again, still without the network.
    (first / CORNELL_DIR / "movie_lines.txt").unlink()
    assert download(src, tmp_path, progress=False) == first
    assert (first / CORNELL_DIR / "movie_lines.txt").exists()
    assert len(server.requests) == 1


def test_resume_after_the_connection_is_cut(server, tmp_path):
    server.cut_after = len(CORNELL_ZIP) // 3
    src = _cornell(server)
    with pytest.raises(DownloadError, match="resumes") as err:
        download(src, tmp_path, progress=False)
    assert "\n" not in str(err.value)
    part = tmp_path / ".downloads" / "cornell.zip.part"
    assert part.read_bytes() == CORNELL_ZIP[:len(CORNELL_ZIP) // 3]
    assert not (tmp_path / "cornell").exists()

    download(src, tmp_path, progress=False)
    assert server.requests == [("/cornell.zip", None), ("/cornell.zip", f"bytes={len(CORNELL_ZIP) // 3}-")]
    assert (tmp_path / ".downloads" / "cornell.zip").read_bytes() == CORNELL_ZIP
    assert not part.exists()
    assert (tmp_path / "cornell" / CORNELL_DIR / "movie_lines.txt").exists()


def test_stalled_transfer_times_out_and_resumes(server, tmp_path):
    server.cut_after, server.stall = 100, 1.0
    with pytest.raises(DownloadError, match="broke off after 100 bytes") as err:
        download(_cornell(server), tmp_path, progress=False, timeout=0.2)
    assert "\n" not in str(err.value)
    download(_cornell(server), tmp_path, progress=False)
    assert server.requests[-1] == ("/cornell.zip", "bytes=100-")
    assert (tmp_path / ".downloads" / "cornell.zip").read_bytes() == CORNELL_ZIP


def test_server_that_ignores_range_starts_over(server, tmp_path):
    part = tmp_path / ".downloads" / "cornell.zip.part"
    part.parent.mkdir(parents=True)
    stale = b"stale bytes from another file"
    part.write_bytes(stale)
    server.ranges = False
    download(_cornell(server), tmp_path, progress=False)
    assert server.requests == [("/cornell.zip", f"bytes={len(stale)}-")]
    assert (tmp_path / ".downloads" / "cornell.zip").read_bytes() == CORNELL_ZIP


def test_complete_part_file_answered_416_is_used(server, tmp_path):
    part = tmp_path / ".downloads" / "cornell.zip.part"
    part.parent.mkdir(parents=True)
    part.write_bytes(CORNELL_ZIP)
    download(_cornell(server), tmp_path, progress=False)
    assert server.requests == [("/cornell.zip", f"bytes={len(CORNELL_ZIP)}-")]
    assert (tmp_path / ".downloads" / "cornell.zip").read_bytes() == CORNELL_ZIP


def test_ctrl_c_mid_download_keeps_the_part_file(server, tmp_path, monkeypatch):
    class Interrupted(dl.tqdm):
        def update(self, n=1):
            super().update(n)
            raise KeyboardInterrupt

    monkeypatch.setattr(dl, "_CHUNK", 256)
    monkeypatch.setattr(dl, "tqdm", Interrupted)
    with pytest.raises(KeyboardInterrupt):
        download(_cornell(server), tmp_path, progress=False)
    assert (tmp_path / ".downloads" / "cornell.zip.part").read_bytes() == CORNELL_ZIP[:256]
    assert _leftovers(tmp_path) == []

    monkeypatch.undo()
    download(_cornell(server), tmp_path, progress=False)
    assert server.requests[-1] == ("/cornell.zip", "bytes=256-")
    assert (tmp_path / ".downloads" / "cornell.zip").read_bytes() == CORNELL_ZIP


def test_ctrl_c_mid_unpack_leaves_no_folder(server, tmp_path, monkeypatch):
    open_member = zipfile.ZipFile.open

    def interrupted(self, member, *args, **kwargs):
        if str(getattr(member, "filename", member)).endswith("movie_conversations.txt"):
            raise KeyboardInterrupt
        return open_member(self, member, *args, **kwargs)

    monkeypatch.setattr(zipfile.ZipFile, "open", interrupted)
    with pytest.raises(KeyboardInterrupt):
        download(_cornell(server), tmp_path, progress=False)
    assert _leftovers(tmp_path) == []
    assert (tmp_path / ".downloads" / "cornell.zip").exists()


def test_sha256_mismatch_is_refused(server, tmp_path):
    with pytest.raises(DownloadError, match="sha256") as err:
        download(_cornell(server, sha256="0" * 64), tmp_path, progress=False)
    assert hashlib.sha256(CORNELL_ZIP).hexdigest() in str(err.value)
    assert not (tmp_path / "cornell").exists()
    assert not (tmp_path / ".downloads" / "cornell.zip").exists()  # so the next try downloads afresh


def test_line_count_mismatch_names_the_file(server, tmp_path):
    src = _cornell(server, expected_lines={"movie_lines.txt": 304_713, "movie_conversations.txt": 3})
    with pytest.raises(DownloadError) as err:
        download(src, tmp_path, progress=False)
    message = str(err.value)
    assert "movie_lines.txt" in message and "304,713" in message and f"has {len(MOVIE_LINES)} lines" in message
    assert "movie_conversations" not in message
    assert _leftovers(tmp_path) == []


def test_file_count_mismatch(server, tmp_path):
    with pytest.raises(DownloadError, match=r"\*\*/\*\.tsv matches 3 files, expected at least 900,000"):
        download(_ubuntu(server, expected_files={"**/*.tsv": 900_000}), tmp_path, progress=False)
    assert _leftovers(tmp_path) == []


def test_a_failed_check_keeps_the_previous_corpus(server, tmp_path):
    dest = download(_cornell(server), tmp_path, progress=False)
    (dest / CORNELL_DIR / "movie_lines.txt").write_bytes(b"edited\n")
    (tmp_path / ".downloads" / "cornell.zip").unlink()
    server.files["/cornell.zip"] = _zip({f"{CORNELL_DIR}/movie_lines.txt": b"short\n"})
    with pytest.raises(DownloadError, match="movie_conversations.txt is missing"):
        download(_cornell(server), tmp_path, progress=False)
    assert (dest / CORNELL_DIR / "movie_lines.txt").read_bytes() == b"edited\n"


def test_unreachable_address_says_what_to_do_by_hand(tmp_path):
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    src = Source(name="cornell", url=f"http://127.0.0.1:{port}/cornell.zip", archive="cornell.zip")
    with pytest.raises(DownloadError) as err:
        download(src, tmp_path, progress=False, timeout=5)
    message = str(err.value)
    assert "\n" not in message
    assert src.url in message and "refused" in message.lower()
    assert "by hand" in message and str(tmp_path / "cornell") in message and "--corpus" in message
    assert not (tmp_path / "cornell").exists()


def test_http_error_is_one_line(server, tmp_path):
    src = _cornell(server, url=f"{server.base}/missing.zip")
    with pytest.raises(DownloadError, match="HTTP 404") as err:
        download(src, tmp_path, progress=False)
    assert "\n" not in str(err.value) and "by hand" in str(err.value)


def test_zip_with_a_parent_member_is_refused(server, tmp_path):
    server.files["/cornell.zip"] = _zip({f"{CORNELL_DIR}/movie_lines.txt": _text(MOVIE_LINES),
                                         "../evil.txt": b"gotcha\n"})
    with pytest.raises(DownloadError, match="unsafe member '../evil.txt'"):
        download(_cornell(server), tmp_path / "corpora", progress=False)
    assert not (tmp_path / "evil.txt").exists()
    assert not (tmp_path / "corpora" / "cornell").exists()
    assert _leftovers(tmp_path / "corpora") == []


def test_tar_with_a_parent_member_is_refused(server, tmp_path):
    server.files["/ubuntu.tgz"] = _tgz({"dialogs/3/1.tsv": b"x\n", "../evil.tsv": b"gotcha\n"})
    with pytest.raises(DownloadError, match="unsafe member '../evil.tsv'"):
        download(_ubuntu(server), tmp_path / "corpora", progress=False)
    assert not (tmp_path / "evil.tsv").exists()
    assert _leftovers(tmp_path / "corpora") == []


def _tar_member(name: str, kind: bytes = tarfile.REGTYPE, data: bytes = b"", link: str = "") -> tuple:
    info = tarfile.TarInfo(name)
    info.type, info.linkname, info.size = kind, link, len(data)
    return info, data


def _tgz_of(*members: tuple) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as t:
        for info, data in members:
            t.addfile(info, io.BytesIO(data) if info.isreg() else None)
    return buf.getvalue()


GOOD = _tar_member("dialogs/3/1.tsv", data=b"2004-11-23T11:49:00.000Z\ta\t\thi\n")


@pytest.mark.parametrize("hostile,message", [
    # a link to anywhere, then a file written "through" it: tarfile's own filter is what CVE-2025-4517 bypassed
    ((_tar_member("dialogs/out", tarfile.SYMTYPE, link="../../.."), _tar_member("dialogs/out/evil.tsv", data=b"x")),
     "'dialogs/out', which is a link"),
    ((_tar_member("dialogs/hard", tarfile.LNKTYPE, link="/etc/passwd"),), "'dialogs/hard', which is a link"),
    ((_tar_member("dialogs/tty", tarfile.CHRTYPE),), "'dialogs/tty', which is a device or fifo"),
    ((_tar_member("dialogs/pipe", tarfile.FIFOTYPE),), "'dialogs/pipe', which is a device or fifo"),
    ((_tar_member("/tmp/ergo-evil.tsv", data=b"x"),), "unsafe member '/tmp/ergo-evil.tsv'"),
    ((_tar_member("dialogs/../../evil.tsv", data=b"x"),), "unsafe member 'dialogs/../../evil.tsv'"),
    ((_tar_member("..\\..\\evil.tsv", data=b"x"),), "unsafe member"),
    ((_tar_member("dialogs/3/1.tsv", data=b"again"),), "holds 'dialogs/3/1.tsv' twice"),
])
def test_hostile_tar_members_are_refused_and_nothing_is_left(server, tmp_path, hostile, message):
    server.files["/ubuntu.tgz"] = _tgz_of(GOOD, *hostile)
    root = tmp_path / "corpora"
    with pytest.raises(DownloadError, match=message) as err:
        download(_ubuntu(server, expected_files={}), root, progress=False)
    assert "\n" not in str(err.value) and "not unpacked" in str(err.value)
    assert _leftovers(root) == []
    assert sorted(p.name for p in tmp_path.iterdir()) == ["corpora"]
    assert not Path("/tmp/ergo-evil.tsv").exists()


def test_a_tar_bomb_stops_at_the_byte_cap(server, tmp_path):
    bomb = _tar_member("dialogs/3/2.tsv", data=b"\0" * (8 << 20))  # 8 MiB of zeros: about 8 kB gzipped
    server.files["/ubuntu.tgz"] = _tgz_of(GOOD, bomb)
    assert len(server.files["/ubuntu.tgz"]) < 64 << 10
    with pytest.raises(DownloadError, match=r"unpacks to more than 1,048,576 bytes \(at 'dialogs/3/2.tsv'\)"):
        download(_ubuntu(server, expected_files={}, max_bytes=1 << 20), tmp_path, progress=False)
    assert _leftovers(tmp_path) == []


def test_too_many_members_are_refused(server, tmp_path):
    server.files["/ubuntu.tgz"] = _tgz({f"dialogs/3/{i}.tsv": b"x\n" for i in range(20)})
    with pytest.raises(DownloadError, match="holds more than 10 members"):
        download(_ubuntu(server, expected_files={}, max_members=10), tmp_path, progress=False)
    assert _leftovers(tmp_path) == []
    server.files["/cornell.zip"] = _zip({f"{CORNELL_DIR}/{i}.txt": b"x" for i in range(20)})
    with pytest.raises(DownloadError, match="holds more than 10 members"):
        download(_cornell(server, expected_lines={}, max_members=10), tmp_path, progress=False)


def test_a_tar_with_a_root_folder_entry_unpacks(server, tmp_path):
    server.files["/ubuntu.tgz"] = _tgz_of(_tar_member("./", tarfile.DIRTYPE), _tar_member("./dialogs", tarfile.DIRTYPE),
                                          _tar_member("./dialogs/3/1.tsv", data=b"x\n"))
    dest = download(_ubuntu(server, expected_files={"**/*.tsv": 1}), tmp_path, progress=False)
    assert (dest / "dialogs" / "3" / "1.tsv").read_bytes() == b"x\n"


def _zip_with(name: str, data: bytes = b"x", mode: int | None = None) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr(f"{CORNELL_DIR}/movie_lines.txt", _text(MOVIE_LINES))
        info = zipfile.ZipInfo(name)
        info.compress_type = zipfile.ZIP_DEFLATED
        if mode is not None:
            info.create_system, info.external_attr = 3, mode << 16
        z.writestr(info, data)
    return buf.getvalue()


@pytest.mark.parametrize("archive,message", [
    (_zip_with(f"{CORNELL_DIR}/link", b"/etc/passwd", stat.S_IFLNK | 0o777), "which is a link or a device"),
    (_zip_with("/tmp/ergo-evil.txt"), "unsafe member '/tmp/ergo-evil.txt'"),
    (_zip_with("..\\evil.txt"), "unsafe member '../evil.txt'"),
    (_zip_with("C:/evil.txt"), "unsafe member 'C:/evil.txt'"),
    (_zip_with(f"{CORNELL_DIR}/bomb.txt", b"\0" * (8 << 20)), "unpacks to more than 1,048,576 bytes"),
])
def test_hostile_zip_members_are_refused_before_anything_is_written(server, tmp_path, archive, message):
    server.files["/cornell.zip"] = archive
    with pytest.raises(DownloadError, match=message):
        download(_cornell(server, expected_lines={}, max_bytes=1 << 20), tmp_path / "corpora", progress=False)
    assert _leftovers(tmp_path / "corpora") == []
    assert sorted(p.name for p in tmp_path.iterdir()) == ["corpora"]
    assert not Path("/tmp/ergo-evil.txt").exists()


def test_download_over_https_checks_the_pinned_sha256(https_server, tmp_path):
    src = _cornell(https_server, sha256=hashlib.sha256(CORNELL_ZIP).hexdigest())
    assert src.url.startswith("https://127.0.0.1:")
    dest = download(src, tmp_path, progress=False)
    assert (dest / CORNELL_DIR / "movie_lines.txt").read_text("iso-8859-1").splitlines() == MOVIE_LINES


def test_a_redirect_from_https_to_http_is_refused(https_server, server, tmp_path):
    https_server.redirects["/cornell.zip"] = f"{server.base}/cornell.zip"
    with pytest.raises(DownloadError, match=r"redirected to http://127\.0\.0\.1:\d+/cornell\.zip, which is not https"):
        download(_cornell(https_server), tmp_path, progress=False)
    assert server.requests == []  # the plain-http address was never asked
    https_server.redirects["/cornell.zip"] = "/ubuntu.tgz"  # a redirect that stays on https is followed
    download(_ubuntu(https_server, url=f"{https_server.base}/cornell.zip"), tmp_path, progress=False)


def test_https_to_a_server_without_tls_is_one_clear_line(server, tmp_path):
    src = _cornell(server, url=server.base.replace("http://", "https://") + "/cornell.zip")
    with pytest.raises(DownloadError, match="cannot download https://127.0.0.1") as err:
        download(src, tmp_path, progress=False, timeout=5)
    assert "\n" not in str(err.value) and "by hand" in str(err.value)


def test_source_lookup_and_official_addresses(tmp_path):
    assert source("cornell") is SOURCES["cornell"]
    with pytest.raises(ErgoError, match="known: cornell, ubuntu"):
        source("reddit")
    with pytest.raises(ErgoError, match="known: cornell, ubuntu"):
        download("reddit", tmp_path)
    cornell, ubuntu = SOURCES["cornell"], SOURCES["ubuntu"]
    assert cornell.url == "https://www.cs.cornell.edu/~cristian/data/cornell_movie_dialogs_corpus.zip"
    assert cornell.expected_lines == {"movie_lines.txt": 304_713, "movie_conversations.txt": 83_097}
    assert cornell.sha256 == "3bde8a571f615201bc2d2453e22878090719638592f774720eddec739de8c900"
    assert ubuntu.url == "https://dataset.cs.mcgill.ca/ubuntu-corpus-1.0/ubuntu_dialogs.tgz"
    assert ubuntu.expected_files == {"**/*.tsv": 900_000}
    assert ubuntu.sha256 is None  # McGill publishes none
    assert cornell.max_members < ubuntu.max_members and cornell.max_bytes < ubuntu.max_bytes
    assert cornell.url in cornell.manual and "corpora/cornell/" in cornell.manual and "--corpus" in cornell.manual
