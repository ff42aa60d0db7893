"""Each reader on files in the real formats, the encoding case, detection and bad input."""

import pytest

from ergo import corpora
from ergo.corpora.base import ReadLog
from ergo.errors import CorpusError
from fixtures import (JSONL, TEXT, TSV, UBUNTU_V2_TEST, UBUNTU_V2_TRAIN, YAML, chitchat_json, write_cornell,
                      write_ubuntu_v1)


def read_all(path, fmt=None, encoding=None):
    log = ReadLog()
    corpus = corpora.resolve(str(path), fmt)
    return corpus, list(corpora.read(corpus, log, encoding)), log


def test_cornell_joins_lines_through_the_id_list_and_decodes_latin1(tmp_path):
    corpus, convs, log = read_all(write_cornell(tmp_path / "cornell"))
    assert corpus.format == "cornell"
    assert convs[0] == [
        "Can we make this quick?  Roxanne Korrine and Andrew Barrett are having an incredibly horrendous "
        "public break- up on the quad.  Again.",
        "Well, I thought we'd start with pronunciation, if that's okay with you.", "Let's go.", "Forget it."]
    assert convs[1][1] == "Où est la fête? Déjà vu, señor."
    assert log.skipped["empty utterance"] == 1
    assert log.utterances == 7


def test_cornell_skips_malformed_lines_and_counts_them(tmp_path):
    folder = write_cornell(tmp_path / "c", extra_lines=["L300 +++$+++ broken"],
                           extra_conversations=["u0 +++$+++ u2 +++$+++ m0 +++$+++ not a list",
                                                "u0 +++$+++ u2 +++$+++ m0 +++$+++ ['L194', 'L999']"])
    _, convs, log = read_all(folder)
    assert log.skipped["malformed line in movie_lines.txt"] == 1
    assert log.skipped["malformed line in movie_conversations.txt"] == 1
    assert log.skipped["conversation names a line that is not in movie_lines.txt"] == 1
    assert log.examples["malformed line in movie_lines.txt"] == ["movie_lines.txt:8"]
    assert len(convs) == 3


def test_ubuntu_v1_merges_consecutive_messages_of_one_sender(tmp_path):
    corpus, convs, log = read_all(write_ubuntu_v1(tmp_path / "ubuntu"))
    assert corpus.format == "ubuntu"
    assert convs[0] == ["any ideas why java plugin takes so long to load?", "java 1.4?", "yes it's java 1.4.2",
                        "try the 1.5 beta, it loads faster"]
    assert convs[1] == ["how do i mount a usb stick?", "sudo mount /dev/sdb1 /mnt"]
    assert sum(log.skipped.values()) == 1 and "dialogs/3/2.tsv:2" in log.examples[next(iter(log.skipped))][0]


def test_ubuntu_v1_is_read_while_its_tree_is_listed(tmp_path):
    """The first dialog is read before later folders are listed: a file made after the first
    conversation came out is still read, in its sorted place (the sorted order of paths)."""
    root = write_ubuntu_v1(tmp_path / "ubuntu")
    (root / "dialogs" / "10").mkdir()
    (root / "dialogs" / "10" / "5.tsv").write_text("2005-01-02T10:00:00.000Z\ta\t\tfirst?\n"
                                                   "2005-01-02T10:00:09.000Z\tb\ta\tfirst!\n", encoding="utf-8")
    corpus = corpora.resolve(str(root))
    conversations = corpora.read(corpus, ReadLog())
    assert next(conversations) == ["first?", "first!"]  # dialogs/10 sorts before dialogs/3
    (root / "dialogs" / "3" / "0.tsv").write_text(  # dialogs/3 is not listed yet: the walk is in dialogs/10
        "2006-01-01T00:00:00.000Z\tc\t\tmade after the first was read\n"
        "2006-01-01T00:00:05.000Z\td\tc\tand still read\n", encoding="utf-8")
    rest = list(conversations)
    assert [c[0] for c in rest] == ["made after the first was read", "any ideas why java plugin takes so long to load?",
                                    "how do i mount a usb stick?"]


def test_ubuntu_v2_keeps_only_label_1_replies_and_reads_test_files(tmp_path):
    (tmp_path / "train.csv").write_text(UBUNTU_V2_TRAIN, encoding="utf-8")
    (tmp_path / "test.csv").write_text(UBUNTU_V2_TEST, encoding="utf-8")
    corpus, convs, _ = read_all(tmp_path)
    assert corpus.format == "ubuntu"
    assert ["what is my ip ?", "run ip addr"] in convs
    assert ["how do i install vim ?", "sudo apt-get install vim"] in convs
    assert ["i think we could import the old comments via rsync , but from there we need to go via email .",
            "that 's a good idea i 'll do it", "ok thanks"] in convs
    assert not any("distractor" in t for c in convs for t in c)
    _, single, _ = read_all(tmp_path / "train.csv")
    assert len(single) == 2


@pytest.mark.parametrize("name,content,fmt,expected", [
    ("d.txt", TEXT, "text", [["hi there", "hello! how are you?", "i'm fine, thanks."], ["what's your name?", "ergo."]]),
    ("d.tsv", TSV, "tsv", [["hi there", "hello!"], ["how are you?", "fine, thanks."], ["say", "something", "more"]]),
    ("d.jsonl", JSONL, "jsonl", [["hi", "hello there"], ["how are you?", "good, and you?", "great"]]),
    ("d.yml", YAML, "yaml", [["Hello", "Hi there!"], ["How are you doing?", "I am doing well.", "Glad to hear it."]]),
])
def test_user_formats_are_read_and_detected(tmp_path, name, content, fmt, expected):
    path = tmp_path / name
    path.write_text(content, encoding="utf-8")
    corpus, convs, log = read_all(path)
    assert corpus.format == fmt
    assert convs == expected
    # the same content under a neutral name is detected by its first line
    neutral = tmp_path / "corpus.txt"
    neutral.write_text(content, encoding="utf-8")
    assert corpora.detect(neutral) == fmt


def test_malformed_user_lines_are_skipped_with_their_place(tmp_path):
    (tmp_path / "d.tsv").write_text(TSV, encoding="utf-8")
    _, _, log = read_all(tmp_path / "d.tsv")
    assert log.examples["tsv line without a context and a reply separated by a tab"] == ["d.tsv:3"]
    (tmp_path / "d.jsonl").write_text(JSONL, encoding="utf-8")
    _, _, log = read_all(tmp_path / "d.jsonl")
    assert sum(log.skipped.values()) == 2


def test_chitchat_package_and_file_of_the_same_shape(tmp_path):
    corpus = corpora.resolve("chitchat")
    log = ReadLog()
    first = next(iter(corpora.read(corpus, log)))
    assert corpus.path is None and len(first) >= 2 and all(isinstance(t, str) for t in first)
    path = tmp_path / "mine.json"
    path.write_text(chitchat_json([[["hello", "how are you?"], ["fine"]]]), encoding="utf-8")
    corpus, convs, log = read_all(path)
    assert corpus.format == "chitchat" and convs == [["hello how are you?", "fine"]] and log.utterances == 3


def test_a_folder_of_user_files_reads_each_in_its_format(tmp_path):
    (tmp_path / "a.txt").write_text(TEXT, encoding="utf-8")
    (tmp_path / "b.yml").write_text(YAML, encoding="utf-8")
    corpus, convs, _ = read_all(tmp_path)
    assert corpus.format == "folder" and len(convs) == 4


def test_wrong_encoding_names_file_and_line(tmp_path):
    path = tmp_path / "latin.txt"
    path.write_bytes("hello\nca va?\nça va très bien\n".encode("iso-8859-1"))
    with pytest.raises(CorpusError, match=r"latin\.txt:3: not valid utf-8 .*--encoding"):
        read_all(path)
    _, convs, _ = read_all(path, encoding="latin-1")
    assert convs == [["hello", "ca va?", "ça va très bien"]]


def test_utf8_bom_is_ignored(tmp_path):
    path = tmp_path / "bom.txt"
    path.write_bytes("\ufeffhi\nhello\n".encode("utf-8"))
    assert read_all(path)[1] == [["hi", "hello"]]


@pytest.mark.parametrize("make,message", [
    (lambda p: p / "missing.txt", "no such corpus file or folder"),
    (lambda p: (p / "empty.txt").write_text("") or p / "empty.txt", "the file is empty"),
])
def test_bad_paths(tmp_path, make, message):
    with pytest.raises(CorpusError, match=message):
        corpora.resolve(str(make(tmp_path)))


def test_unknown_format_and_undownloaded_named_corpus(tmp_path):
    with pytest.raises(CorpusError, match="unknown format 'xml'"):
        corpora.resolve("chitchat", "xml")
    with pytest.raises(CorpusError, match="--download cornell"):
        corpora.resolve("cornell", None, tmp_path)


def test_malformed_yaml_names_the_line(tmp_path):
    path = tmp_path / "bad.yml"
    path.write_text("conversations:\n- - Hello\n  - [unclosed\n", encoding="utf-8")
    with pytest.raises(CorpusError, match=r"bad\.yml:\d+: not valid YAML"):
        read_all(path)


def test_yaml_turns_are_text_whatever_they_look_like(tmp_path):
    path = tmp_path / "t.yml"
    path.write_text("conversations:\n- - yes\n  - '1:20'\n  - 1:20\n  - 2001-13-01\n  - !!int abc\n- - [nested]\n  - hi\n",
                    encoding="utf-8")
    _, convs, log = read_all(path)
    assert convs == [["yes", "1:20", "1:20", "2001-13-01", "abc"]]
    assert log.skipped["yaml conversation that is not a list of turns"] == 1
