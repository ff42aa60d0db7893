"""Preprocessing: pairs, splits, pickles checked against the manifest and loaded without running code,
embeddings, reuse, atomicity, corpora too small to learn from."""
import hashlib
import json
import os
import pickle

import numpy as np
import pytest

from ergo import corpora, dataset
from ergo.config import PRESETS, override
from ergo.dataset import PreparedData, fit_reply, preprocess
from ergo.embeddings import load_pretrained
from ergo.errors import CorpusError, ErgoError
from ergo.vocab import SEP_ID
from fixtures import synthetic_conversations, write_text_corpus

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
    assert all(a.dtype == np.int32 for a in train["context"] + train["reply"])


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
    stamp = (out / "train.pkl").stat().st_mtime_ns
    again, reused = preprocess(corpus, CFG, out, progress=False)
    assert reused and (out / "train.pkl").stat().st_mtime_ns == stamp
    _, reused = preprocess(corpus, override(CFG, context_turns=1), out, progress=False)
    assert not reused
    assert PreparedData.open(out).data_config.context_turns == 1


def test_a_tampered_pickle_is_never_loaded(tmp_path, corpus):
    data, _ = preprocess(corpus, CFG, tmp_path / "out", progress=False)
    with open(data.path / "train.pkl", "wb") as f:
        pickle.dump({"evil": True}, f)
    with pytest.raises(ErgoError, match="does not match its manifest"):
        data.split("train")


class _RunsCode:
    """A pickle that calls os.system when loaded with pickle.load: what a crafted data folder holds."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def _craft(data, name, value, protocol=5):
    """Replace a split with `value`, and give the manifest its matching sha256, as an attacker would."""
    file = data.path / f"{name}.pkl"
    file.write_bytes(pickle.dumps(value, protocol=protocol))
    manifest = json.loads((data.path / "manifest.json").read_text())
    manifest["files"][file.name] = hashlib.sha256(file.read_bytes()).hexdigest()
    (data.path / "manifest.json").write_text(json.dumps(manifest))
    return PreparedData.open(data.path)


def test_a_crafted_pickle_with_a_matching_hash_never_runs(tmp_path, corpus):
    data, _ = preprocess(corpus, CFG, tmp_path / "out", progress=False)
    marker = tmp_path / "ran"
    crafted = _craft(data, "train", {"context": [_RunsCode(marker)], "reply": [], "conversation": []})
    with pytest.raises(ErgoError) as err:
        crafted.split("train")
    message = str(err.value)
    assert not marker.exists()
    assert "\n" not in message and "train.pkl" in message and "posix.system" in message
    assert "preprocess again" in message and "--force" in message


@pytest.mark.parametrize("value,protocol,reason", [
    ({"context": [np.array(["abc"])]}, 5, "only plain numbers"),
    ({"context": [np.array([1, 2], dtype=object)]}, 5, "numpy._core.multiarray._reconstruct"),
    ({"context": [np.zeros((4, 4), np.int32)[:, ::2]]}, 5, "numpy._core.multiarray._reconstruct"),
    ({"context": [np.zeros(3, np.int32)]}, 2, "numpy._core.multiarray._reconstruct"),
    ({"context": [print]}, 5, "builtins.print"),
])
def test_only_plain_number_arrays_are_rebuilt(tmp_path, corpus, value, protocol, reason):
    data, _ = preprocess(corpus, CFG, tmp_path / "out", progress=False)
    with pytest.raises(ErgoError, match=reason):
        _craft(data, "valid", value, protocol).split("valid")


def test_a_dtype_state_that_claims_objects_is_not_trusted(tmp_path):
    """numpy's dtype.__setstate__ takes the type's flags from the file: an int32 flagged as holding
    Python objects is rebuilt from its name and byte order alone."""
    honest = pickle.dumps([np.arange(3, dtype=np.int32)], protocol=5)
    state, flagged = b"J\xff\xff\xff\xffK\x00t", b"J\xff\xff\xff\xffK\x3ft"  # dtype state: ... flags=0 -> 0x3f
    assert honest.count(state) == 1
    (tmp_path / "crafted.pkl").write_bytes(honest.replace(state, flagged))
    [array] = dataset.load_arrays(tmp_path / "crafted.pkl")
    assert array.dtype == np.int32 and array.dtype.flags == np.dtype(np.int32).flags
    assert array.tolist() == [0, 1, 2]


def test_a_truncated_or_foreign_split_is_a_clear_error(tmp_path, corpus):
    data, _ = preprocess(corpus, CFG, tmp_path / "out", progress=False)
    whole = (data.path / "test.pkl").read_bytes()
    for name, raw in [("test", whole[:len(whole) // 2]), ("valid", b"not a pickle at all")]:
        file = data.path / f"{name}.pkl"
        file.write_bytes(raw)
        manifest = json.loads((data.path / "manifest.json").read_text())
        manifest["files"][file.name] = hashlib.sha256(raw).hexdigest()
        (data.path / "manifest.json").write_text(json.dumps(manifest))
        with pytest.raises(ErgoError, match=rf"{name}\.pkl is not a data file ErGo wrote"):
            PreparedData.open(data.path).split(name)
    with pytest.raises(ErgoError, match="does not hold a split"):
        _craft(data, "train", {"context": [np.zeros(2, np.int32)], "reply": []}).split("train")


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


def test_parallel_tokenising_matches_serial(monkeypatch):
    texts = [f"Hello {i}, how's it going?" for i in range(300)]
    monkeypatch.setattr(dataset, "PARALLEL_FROM_TURNS", 10)
    assert dataset.tokenize_all(texts, True, 2, False) == dataset.tokenize_all(texts, True, 1, False)


def test_a_corpus_too_small_for_word2vec_says_so_before_gensim(tmp_path):
    path = tmp_path / "two.tsv"
    path.write_text("hi there\thello!\nno tab on this line\nhow are you?\tfine, thanks.\n", encoding="utf-8")
    with pytest.raises(CorpusError, match=r"two\.tsv: too small to learn from: no word occurs 2 times") as err:
        preprocess(corpora.resolve(str(path)), override(CFG, min_count=2), tmp_path / "out", progress=False)
    assert "\n" not in str(err.value)
    assert not (tmp_path / "out").exists()
