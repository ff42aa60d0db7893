"""Preprocessing: pairs, splits as flat arrays checked against the manifest and loaded without running code,
the same pairs streamed as built in memory, embeddings, reuse, atomicity, corpora too small to learn from."""
import hashlib
import io
import json
import os
import pickle
from collections import Counter

import numpy as np
import pytest

from ergo import corpora, dataset
from ergo.config import PRESETS, override
from ergo.dataset import PreparedData, fit_reply, preprocess
from ergo.embeddings import load_pretrained
from ergo.errors import CorpusError, ErgoError
from ergo.splits import Ragged
from ergo.vocab import SEP_ID, Vocab
from fixtures import chitchat_json, synthetic_conversations, write_cornell, write_text_corpus, write_ubuntu_v1

CFG = override(PRESETS["tiny"].data, w2v_epochs=1)


@pytest.fixture()
def corpus(tmp_path):
    return corpora.resolve(str(write_text_corpus(tmp_path / "talk.txt", synthetic_conversations(60))))


def test_preprocess_writes_consistent_splits(tmp_path, corpus):
    data, reused = preprocess(corpus, CFG, tmp_path / "out", progress=False)
    assert not reused
    stats = data.stats
    assert stats["conversations"] == 60 and stats["utterances"] == 480
    assert sum(stats["conversations_per_split"].values()) == 60
    # 7 replies per conversation of 8 turns
    assert sum(stats["pairs"].values()) == 60 * 7
    assert stats["vocab_size"] == len(data.vocab())
    assert "tiny corpus" in stats["warning"]
    train, test = data.split("train"), data.split("test")
    assert set(train["conversation"]).isdisjoint(set(test["conversation"]))
    assert all(a.dtype == np.int32 for a in [*train["context"], *train["reply"]])


def test_context_window_joins_last_turns_with_sep_and_cuts_from_the_left(tmp_path, corpus):
    cfg = override(CFG, context_turns=2, max_context_len=6)
    data, _ = preprocess(corpus, cfg, tmp_path / "out", progress=False)
    vocab, train = data.vocab(), data.split("train")
    for ctx in train["context"]:
        assert len(ctx) <= 6 and list(ctx).count(SEP_ID) <= 1
    # "where do you live ?" follows "i like X ." - its context ends with that question
    i = next(i for i, r in enumerate(train["reply"]) if vocab.decode(r)[:3] == ["i", "live", "in"])
    assert vocab.decode(train["context"][i])[-4:] == ["do", "you", "live", "?"]


def test_fit_reply_cuts_at_a_sentence_end_or_skips():
    ends = frozenset({9})
    assert fit_reply([1, 2, 3], 5, ends) == [1, 2, 3]
    assert fit_reply([1, 9, 2, 9, 5, 6], 4, ends) == [1, 9, 2, 9]
    assert fit_reply([1, 2, 3, 4, 5, 6], 4, ends) is None


def test_embedding_matrix_row_i_is_the_vector_of_word_i(tmp_path, corpus):
    data, _ = preprocess(corpus, CFG, tmp_path / "out", progress=False)
    vocab, matrix = data.vocab(), data.embeddings()
    kv = load_pretrained(data.path / "word2vec.bin")  # the folder's vectors serve as --embeddings as they are
    assert matrix.shape == (len(vocab), CFG.embedding_dim) and matrix.dtype == np.float32
    assert not matrix[0].any()  # <pad>
    for word in ("pizza", "live", "?"):
        np.testing.assert_array_equal(matrix[vocab.index[word]], kv[word])
    assert data.stats["embedding"]["coverage"] == 1.0


def test_pretrained_glove_file_is_aligned_and_coverage_counted(tmp_path, corpus):
    glove = tmp_path / "glove.txt"
    glove.write_text("pizza 0.5 0.25 -1.0\nparis 1 2 3\nnotinvocab 9 9 9\n", encoding="utf-8")
    data, _ = preprocess(corpus, CFG, tmp_path / "out", embeddings=glove, progress=False)
    vocab, matrix = data.vocab(), data.embeddings()
    np.testing.assert_allclose(matrix[vocab.index["pizza"]], [0.5, 0.25, -1.0])
    assert matrix.shape[1] == 3
    assert 0 < data.stats["embedding"]["coverage"] < 0.2


@pytest.mark.parametrize("name,content,message", [
    ("huge.txt", b"99999999999 300\nhi 0.1\n", "promises 99,999,999,999 vectors of 300 numbers"),
    ("wide.bin", b"1 99999999999\nhi \x00\x00\x00\x00", "promises 1 vectors of 99,999,999,999"),
    ("empty.txt", b"", "not a word2vec or GloVe file"),
    ("junk.bin", b"\x89PNG\r\n", "not a word2vec or GloVe file"),
    ("short.txt", b"2 3\nhi 1 2 3\n", "not a word2vec or GloVe file"),
    ("nodim.txt", b"hi\nyo\n", "holds no word vectors"),
])
def test_a_hostile_embeddings_file_is_a_clear_error(tmp_path, name, content, message):
    (tmp_path / name).write_bytes(content)
    with pytest.raises(ErgoError, match=message) as err:
        load_pretrained(tmp_path / name)
    assert name in str(err.value) and "\n" not in str(err.value)


def test_same_inputs_reuse_output_and_changed_settings_rebuild(tmp_path, corpus):
    out = tmp_path / "out"
    first, _ = preprocess(corpus, CFG, out, progress=False)
    stamp = (out / "train.reply.ids.npy").stat().st_mtime_ns
    again, reused = preprocess(corpus, CFG, out, progress=False)
    assert reused and (out / "train.reply.ids.npy").stat().st_mtime_ns == stamp
    _, reused = preprocess(corpus, override(CFG, context_turns=1), out, progress=False)
    assert not reused
    assert PreparedData.open(out).data_config.context_turns == 1


def test_a_tampered_split_is_never_loaded(tmp_path, corpus):
    data, _ = preprocess(corpus, CFG, tmp_path / "out", progress=False)
    np.save(data.path / "train.reply.ids.npy", np.zeros(3, np.int32))
    with pytest.raises(ErgoError, match="train.reply.ids.npy is missing or does not match its manifest"):
        data.split("train")


class _RunsCode:
    """A pickle that calls os.system when loaded with pickle.load: what a crafted data folder holds."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def _craft(data, file, raw: bytes):
    """Replace one file of the folder with `raw`, and give the manifest its matching sha256, as an
    attacker would."""
    (data.path / file).write_bytes(raw)
    manifest = json.loads((data.path / "manifest.json").read_text())
    manifest["files"][file] = hashlib.sha256(raw).hexdigest()
    (data.path / "manifest.json").write_text(json.dumps(manifest))
    return PreparedData.open(data.path)


def _npy(array, allow_pickle=False) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=allow_pickle)
    return buffer.getvalue()


def test_a_crafted_split_with_a_matching_hash_never_runs_code(tmp_path, corpus):
    data, _ = preprocess(corpus, CFG, tmp_path / "out", progress=False)
    marker = tmp_path / "ran"
    evil = np.array([_RunsCode(marker)], dtype=object)
    for file, raw in [("train.context.ids.npy", _npy(evil, allow_pickle=True)),
                      ("train.reply.offsets.npy", pickle.dumps(_RunsCode(marker)))]:
        with pytest.raises(ErgoError) as err:
            _craft(data, file, raw).split("train")
        message = str(err.value)
        assert not marker.exists()
        assert "\n" not in message and f"{file} is not a data file ErGo wrote" in message
        assert "preprocess again" in message and "--force" in message
        preprocess(corpus, CFG, data.path, progress=False, force=True)


@pytest.mark.parametrize("file,array,reason", [
    ("valid.context.ids.npy", np.zeros(3, np.float64), "holds float64 of 1 dimensions"),
    ("valid.conversation.npy", np.zeros((2, 2), np.int32), "holds int32 of 2 dimensions"),
    ("valid.reply.offsets.npy", np.array([0, 10**9], np.int64), "does not index valid.reply.ids.npy"),
    ("valid.context.offsets.npy", np.array([0, 3, 1], np.int64), "does not index valid.context.ids.npy"),
    ("valid.conversation.npy", np.zeros(1, np.int32), "files of split valid are of different lengths"),
])
def test_a_split_that_does_not_hold_together_is_a_clear_error(tmp_path, corpus, file, array, reason):
    data, _ = preprocess(corpus, CFG, tmp_path / "out", progress=False)
    with pytest.raises(ErgoError, match=reason) as err:
        _craft(data, file, _npy(array)).split("valid")
    assert "\n" not in str(err.value)


def test_a_truncated_or_foreign_split_file_is_a_clear_error(tmp_path, corpus):
    data, _ = preprocess(corpus, CFG, tmp_path / "out", progress=False)
    whole = (data.path / "test.context.ids.npy").read_bytes()
    for name, file, raw in [("test", "test.context.ids.npy", whole[:len(whole) // 2]),
                            ("valid", "valid.reply.ids.npy", b"not an array at all")]:
        with pytest.raises(ErgoError, match=rf"{file} is not a data file ErGo wrote"):
            _craft(data, file, raw).split(name)


def test_splits_are_flat_arrays_and_load_memory_mapped(tmp_path, corpus):
    data, _ = preprocess(corpus, CFG, tmp_path / "out", progress=False)
    train = data.split("train")
    assert isinstance(train["context"], Ragged) and train["context"].ids.dtype == np.int32
    assert not train["context"].ids.flags.owndata  # a view of the file's map, not a copy in memory
    assert train["context"].offsets[-1] == len(train["context"].ids)
    np.testing.assert_array_equal(train["reply"][3], train["reply"].ids[train["reply"].offsets[3]:train["reply"].offsets[4]])


def test_a_folder_of_the_old_format_is_refused_and_rebuilt(tmp_path, corpus):
    out = tmp_path / "out"
    preprocess(corpus, CFG, out, progress=False)
    manifest = json.loads((out / "manifest.json").read_text())
    (out / "manifest.json").write_text(json.dumps({**manifest, "format_version": 1}))
    with pytest.raises(ErgoError, match="holds ErGo's data format 1, and this ErGo reads format 2: preprocess again"):
        PreparedData.open(out)
    data, reused = preprocess(corpus, CFG, out, progress=False)
    assert not reused and data.manifest["format_version"] == dataset.FORMAT_VERSION


def _reference_pairs(corpus, cfg):
    """The pairs and vocabulary as the in-memory code before streaming made them: every turn tokenised into
    one list, the split over the usable conversations, counts over the training ones, then pairs."""
    from ergo.corpora.base import ReadLog
    from ergo.text import tokenize
    conversations = []
    for raw in corpora.read(corpus, ReadLog()):
        turns = [t for t in (tokenize(x, cfg.lowercase) for x in raw) if t]
        if len(turns) >= 2:
            conversations.append(turns)
    parts = dataset.split_conversations(len(conversations), cfg)
    vocab = Vocab.build(Counter(w for c in parts["train"] for turn in conversations[c] for w in turn),
                        cfg.min_count, cfg.max_vocab)
    ends = frozenset(vocab.index[t] for t in dataset.SENTENCE_ENDS if t in vocab)
    pairs = {}
    for name in dataset.SPLITS:
        rows = []
        for c in parts[name]:
            ids = [vocab.encode(turn) for turn in conversations[c]]
            for i in range(1, len(ids)):
                reply = fit_reply(ids[i], cfg.max_reply_len, ends)
                if reply is not None:
                    rows.append((dataset.context_window(ids[:i], cfg).tolist(), reply, int(c)))
        pairs[name] = rows
    return vocab.words, pairs


@pytest.mark.parametrize("make", ["text", "cornell", "ubuntu_v1", "chitchat_json"])
def test_streaming_gives_the_pairs_and_vocabulary_of_the_in_memory_code(tmp_path, make, monkeypatch):
    if make == "text":
        corpus = corpora.resolve(str(write_text_corpus(tmp_path / "talk.txt", synthetic_conversations(200, seed=4))))
    elif make == "cornell":
        corpus = corpora.resolve(str(write_cornell(tmp_path / "cornell")))
    elif make == "ubuntu_v1":
        corpus = corpora.resolve(str(write_ubuntu_v1(tmp_path / "ubuntu")))
    else:
        path = tmp_path / "chitchat.json"
        path.write_text(chitchat_json([[[t] for t in c] for c in synthetic_conversations(120, seed=7)]))
        corpus = corpora.resolve(str(path))
    cfg = override(CFG, min_count=1, context_turns=3, max_reply_len=9)
    words, expected = _reference_pairs(corpus, cfg)
    monkeypatch.setattr(dataset, "PARALLEL_FROM_BYTES", 0)  # through the worker processes, as a big corpus goes
    monkeypatch.setattr(dataset, "CHUNK_TURNS", 7)            # and in many chunks
    data, _ = preprocess(corpus, cfg, tmp_path / "out", workers=2, progress=False)
    assert data.vocab().words == words
    for name in dataset.SPLITS:
        split = data.split(name)
        got = [(c.tolist(), r.tolist(), int(k)) for c, r, k in zip(split["context"], split["reply"],
                                                                    split["conversation"])]
        assert got == expected[name]
    assert sum(len(rows) for rows in expected.values()) == sum(data.stats["pairs"].values()) > 0


def test_failure_midway_leaves_the_previous_output_whole(tmp_path, corpus, monkeypatch):
    out = tmp_path / "out"
    preprocess(corpus, CFG, out, progress=False)
    before = json.loads((out / "manifest.json").read_text())

    def boom(*a, **k):
        raise KeyboardInterrupt
    monkeypatch.setattr(dataset, "embedding_matrix", boom)
    with pytest.raises(KeyboardInterrupt):
        preprocess(corpus, override(CFG, min_count=2), out, progress=False)
    assert json.loads((out / "manifest.json").read_text()) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out", "talk.txt"]  # no temp folder left


def test_no_usable_conversation_is_a_clear_error(tmp_path):
    path = tmp_path / "lonely.txt"
    path.write_text("one turn only\n\nanother lonely turn\n", encoding="utf-8")
    with pytest.raises(CorpusError, match=r"lonely\.txt: no usable conversation .*2 conversation with fewer"):
        preprocess(corpora.resolve(str(path)), CFG, tmp_path / "out", progress=False)
    assert not (tmp_path / "out").exists()


def test_a_corpus_too_small_for_word2vec_says_so_before_gensim(tmp_path):
    path = tmp_path / "two.tsv"
    path.write_text("hi there\thello!\nno tab on this line\nhow are you?\tfine, thanks.\n", encoding="utf-8")
    with pytest.raises(CorpusError, match=r"two\.tsv: too small to learn from: no word occurs 2 times") as err:
        preprocess(corpora.resolve(str(path)), override(CFG, min_count=2), tmp_path / "out", progress=False)
    assert "\n" not in str(err.value)
    assert not (tmp_path / "out").exists()
