"""Preprocessing: pairs, splits, pickles checked against the manifest, embeddings, reuse, atomicity."""
import json
import pickle

import numpy as np
import pytest
from gensim.models import KeyedVectors

from ergo import corpora, dataset
from ergo.config import PRESETS, override
from ergo.dataset import PreparedData, fit_reply, preprocess
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
    kv = KeyedVectors.load(str(data.path / "word2vec.kv"))
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
