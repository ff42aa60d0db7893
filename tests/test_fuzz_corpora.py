"""Every corpus reader on hostile input: random bytes, damaged copies of real files, wrong separators,
huge lines, deep nesting, YAML alias bombs and wrong encodings. Whatever the bytes, reading ends in
conversations (bad lines skipped and counted) or in one clean ErgoError line, never another exception.

Hypothesis runs are few and bounded (see SETTINGS) so the file stays a few seconds of the suite.
"""
from __future__ import annotations

import json
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ergo import corpora
from ergo.corpora import base, user
from ergo.corpora.base import ReadLog
from ergo.errors import CorpusError, ErgoError
from fixtures import (CORNELL_CONVERSATIONS, CORNELL_LINES, CORNELL_SEP, JSONL, TEXT, TSV, UBUNTU_V2_TRAIN, YAML,
                      chitchat_json, write_cornell, write_ubuntu_v1)

SETTINGS = settings(max_examples=30, deadline=None, derandomize=True, database=None,
                    suppress_health_check=[HealthCheck.too_slow])

UBUNTU_V1 = ("2004-11-23T11:49:00.000Z\tstuNNed\t\tany ideas why java plugin takes so long to load?\n"
             "2004-11-23T11:49:07.000Z\tcrimsun\tstuNNed\tjava 1.4?\n")
CORNELL_LINES_TXT = "\n".join(CORNELL_SEP.join((lid, uid, "m0", name, text)) for lid, uid, name, text in CORNELL_LINES)
CORNELL_CONVS_TXT = "\n".join(CORNELL_SEP.join(c) for c in CORNELL_CONVERSATIONS)
CHITCHAT = chitchat_json([[["hello", "how are you?"], ["fine"]], [["hi"], ["hey"]]])

# A file name (its suffix picks the reader, as detection does) -> a valid file of that format.
USER_FILES = {"d.txt": TEXT, "d.tsv": TSV, "d.jsonl": JSONL, "d.yml": YAML, "d.json": CHITCHAT,
              "train.csv": UBUNTU_V2_TRAIN}


def read(path: Path, fmt: str | None = None, encoding: str | None = None):
    """Resolve and read as main.py does; (conversations, log), or None after a clean one-line ErgoError."""
    try:
        corpus = corpora.resolve(str(path), fmt)
        log = ReadLog()
        conversations = list(corpora.read(corpus, log, encoding))
    except ErgoError as e:
        assert "\n" not in str(e) and (path.name in str(e) or "encoding" in str(e)), str(e)
        return None
    assert all(isinstance(c, list) and all(isinstance(t, str) for t in c) for c in conversations)
    return conversations, log


def _cornell(folder: Path, lines: bytes, conversations: bytes) -> Path:
    inner = write_cornell(folder) / "cornell movie-dialogs corpus"
    (inner / "movie_lines.txt").write_bytes(lines)
    (inner / "movie_conversations.txt").write_bytes(conversations)
    return folder


def _ubuntu_v1(folder: Path, dialog: bytes) -> Path:
    write_ubuntu_v1(folder)
    (folder / "dialogs" / "3" / "1.tsv").write_bytes(dialog)
    return folder


def _every_reader(folder: Path, data: bytes) -> None:
    """The same bytes as each user format, as a Cornell file and as an Ubuntu dialog."""
    for name in USER_FILES:
        path = folder / name
        path.write_bytes(data)
        if data:
            read(path)
    read(_cornell(folder / "cornell", data, CORNELL_CONVS_TXT.encode("latin-1")))
    read(_cornell(folder / "cornell2", CORNELL_LINES_TXT.encode("latin-1"), data))
    read(_ubuntu_v1(folder / "ubuntu", data))


@SETTINGS
@given(st.binary(max_size=3000))
def test_random_bytes(data):
    with tempfile.TemporaryDirectory() as tmp:
        _every_reader(Path(tmp), data)


@st.composite
def damaged(draw):
    """A real file of some format, cut short, with bytes spliced in, or with its separators changed."""
    text = draw(st.sampled_from([*USER_FILES.values(), UBUNTU_V1, CORNELL_LINES_TXT, CORNELL_CONVS_TXT]))
    data = text.encode("utf-8")
    cut = draw(st.integers(0, len(data)))
    how = draw(st.sampled_from(["truncate", "splice", "separators", "lines"]))
    if how == "truncate":
        return data[:cut]
    if how == "splice":
        return data[:cut] + draw(st.binary(min_size=1, max_size=64)) + data[cut:]
    if how == "separators":
        old = draw(st.sampled_from(["\t", " +++$+++ ", "\n", '"', ",", "__eou__", "__eot__", ":", "- ", "{", "["]))
        new = draw(st.sampled_from(["", " ", "\t", "\r", "\r\n", ";", "+++", '"', "\\", "\x00", "[[[", "&a ", "*a"]))
        return text.replace(old, new).encode("utf-8")
    lines = data.split(b"\n")
    return b"\n".join(draw(st.lists(st.sampled_from(lines), max_size=12)))


@SETTINGS
@given(damaged())
def test_damaged_real_files(data):
    with tempfile.TemporaryDirectory() as tmp:
        _every_reader(Path(tmp), data)


@SETTINGS
@given(st.text(alphabet=st.sampled_from("ab é\t\n\r\"',:-[]{}&*!|>#%\\\x00\x85\u2028\ufeff\U0001f600"), max_size=400),
       st.sampled_from(["utf-8", "latin-1", "cp1252", "utf-16", "utf-32-le"]))
def test_text_of_odd_characters_in_any_encoding(text, encoding):
    with tempfile.TemporaryDirectory() as tmp:
        _every_reader(Path(tmp), text.encode(encoding, "replace"))


# Scalars that YAML 1.1 would turn into dates, numbers, booleans or errors, and tags that build objects.
YAML_SCALARS = ["hi there", "yes", "no", "~", "1:20", "2001-13-01", "2001-02-30", "!!int abc", "!!float x",
                "!!bool maybe", "!!binary abc", "!!python/object/apply:os.system [ls]", "!!set {a}", "=", "<<: x",
                ".inf", "0x1F", "'quoted'", '"esc \\x"', "[a, b]", "{a: b}", "- nested", "&a x", "*a", "|", ">-"]


@SETTINGS
@given(st.lists(st.lists(st.sampled_from(YAML_SCALARS), max_size=4), max_size=4))
def test_yaml_turns_of_every_kind(conversations):
    text = "conversations:\n" + "".join(
        "- " + ("[]" if not turns else "\n  ".join(f"- {t}" for t in turns)) + "\n" for turns in conversations)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "c.yml"
        path.write_text(text, encoding="utf-8")
        read(path)


JSON = st.recursive(st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8),
                    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(
                        st.sampled_from(["turns", "messages", "text", "sender", "c0"]), inner, max_size=4),
                    max_leaves=20)


@SETTINGS
@given(st.lists(JSON, min_size=1, max_size=5))
def test_json_values_of_every_shape(values):
    with tempfile.TemporaryDirectory() as tmp:
        lines = Path(tmp) / "c.jsonl"
        lines.write_text("".join(json.dumps(v) + "\n" for v in values), encoding="utf-8")
        read(lines)
        whole = Path(tmp) / "c.json"
        whole.write_text(json.dumps(dict(enumerate(values))), encoding="utf-8")
        read(whole)


def test_a_line_past_the_cap_is_skipped_and_counted_not_held(tmp_path):
    huge = "x" * (base.MAX_LINE_BYTES + 10)
    for name, good in [("d.txt", "hi\nhello\n"), ("d.tsv", "hi\thello\n"), ("d.jsonl", '{"turns": ["hi", "hello"]}\n')]:
        path = tmp_path / name
        path.write_text(good + huge + "\n" + good, encoding="utf-8")
        conversations, log = read(path)
        assert log.skipped["line longer than 1 MiB"] == 1, name
        assert ["hi", "hello"] in conversations or ["hi", "hello", "hi", "hello"] in conversations
    folder = _ubuntu_v1(tmp_path / "ubuntu", (UBUNTU_V1 + huge).encode())
    _, log = read(folder)
    assert log.skipped["line longer than 1 MiB"] == 1
    folder = _cornell(tmp_path / "cornell", (huge + "\n" + CORNELL_LINES_TXT).encode("latin-1"),
                      CORNELL_CONVS_TXT.encode("latin-1"))
    conversations, log = read(folder)
    assert log.skipped["line longer than 1 MiB"] == 1 and len(conversations) == 2


def test_a_file_with_no_line_breaks_says_so(tmp_path):
    path = tmp_path / "blob.txt"
    path.write_bytes(b"\x89PNG" + b"x" * (base.MAX_LINE_BYTES * 2))
    conversations, log = read(path)
    assert conversations == [] and log.skipped["line longer than 1 MiB"] == 1


def test_deep_nesting_is_skipped_in_jsonl_and_refused_in_json_and_yaml(tmp_path):
    """YAML is refused at 32 levels while it is scanned: its scanners slow down with the square of the depth."""
    deep = "[" * 100_000 + "]" * 100_000
    path = tmp_path / "deep.jsonl"
    path.write_text('{"turns": ["hi", "hello"]}\n{"turns": ' + deep + "}\n", encoding="utf-8")
    conversations, log = read(path)
    assert conversations == [["hi", "hello"]] and log.skipped["jsonl line nested too deeply"] == 1
    (tmp_path / "deep.json").write_text(deep, encoding="utf-8")
    with pytest.raises(CorpusError, match=r"deep\.json: not a chitchat-dataset file \(RecursionError"):
        list(corpora.read(corpora.resolve(str(tmp_path / "deep.json")), ReadLog()))
    for line, nesting in [(1, "[" * 500_000), (2, "\n" + "- " * 500_000 + "x")]:  # flow and block nesting
        (tmp_path / "deep.yml").write_text("conversations: " + nesting, encoding="utf-8")
        with pytest.raises(CorpusError, match=rf"deep\.yml:{line}: not valid YAML \(nested deeper than 32 levels\)"):
            list(corpora.read(corpora.resolve(str(tmp_path / "deep.yml")), ReadLog()))


def test_a_yaml_alias_bomb_is_refused_before_it_expands(tmp_path):
    lines = ["conversations:", '- &a0 ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
    lines += [f"- &a{i} [{', '.join([f'*a{i - 1}'] * 9)}]" for i in range(1, 9)]  # 9**9 turns from ~700 bytes
    path = tmp_path / "bomb.yml"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    assert path.stat().st_size < 1000
    with pytest.raises(CorpusError, match=r"bomb\.yml:3: not valid YAML \(aliases \(\*name\) are not accepted\)"):
        list(corpora.read(corpora.resolve(str(path)), ReadLog()))


def test_a_yaml_file_over_its_cap_is_refused_unread(tmp_path, monkeypatch):
    path = tmp_path / "big.yml"
    path.write_text(YAML + "# padding\n" * 200, encoding="utf-8")
    monkeypatch.setattr(user, "MAX_YAML_BYTES", 1 << 10)  # the real cap is 16 MiB: too big to write here
    with pytest.raises(CorpusError, match=r"big\.yml: .* more than a YAML file may be .*JSON lines"):
        list(corpora.read(corpora.resolve(str(path)), ReadLog()))


@pytest.mark.parametrize("data,encoding,message", [
    ("hi\nhello\n".encode("utf-16"), None, "UTF-16 or UTF-32"),
    ("hi\nhello\n".encode("utf-16"), "latin-1", "UTF-16 or UTF-32"),
    ("hi\nhello\n".encode("utf-8"), "utf-16", "read as utf-16"),
    ("hi\nhello\n".encode("utf-8"), "rot13", "unknown encoding 'rot13'"),
    ("hi\nhello\n".encode("utf-8"), "no-such-codec", "unknown encoding 'no-such-codec'"),
    ("hi\nça va\n".encode("latin-1"), None, r":2: not valid utf-8 \(byte 0xe7 at column 1\)"),
])
def test_wrong_encodings_are_named(tmp_path, data, encoding, message):
    for name in ("d.txt", "d.yml", "d.json"):
        path = tmp_path / name
        path.write_bytes(data)
        with pytest.raises(CorpusError, match=message):
            list(corpora.read(corpora.resolve(str(path), "text" if name == "d.txt" else None), ReadLog(), encoding))
