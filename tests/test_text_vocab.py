"""Tokenising and the vocabulary."""
from collections import Counter

import pytest

from ergo.errors import ErgoError
from ergo.text import detokenize, normalise, tokenize
from ergo.vocab import EOS_ID, GO_ID, PAD_ID, SPECIALS, UNK_ID, Vocab


def test_tokenize_normalises_quotes_case_and_spacing():
    assert tokenize("I don\u2019t  KNOW,\twhat\u2019s up?? :)") == ["i", "don't", "know", ",", "what's", "up", "?", "?", ":)"]
    assert normalise("A\u00a0b\x07 c", lowercase=False) == "A b c"


def test_detokenize_reads_like_text():
    assert detokenize(["i", "don't", "know", ",", "do", "you", "?"]) == "I don't know, do you?"


def test_vocab_orders_by_frequency_and_respects_limits():
    counts = Counter({"b": 5, "a": 5, "c": 2, "d": 1})
    v = Vocab.build(counts, min_count=2)
    assert v.words == list(SPECIALS) + ["a", "b", "c"]
    assert len(Vocab.build(counts, min_count=1, max_size=len(SPECIALS) + 2)) == len(SPECIALS) + 2


def test_vocab_encode_decode_and_json_round_trip(tmp_path):
    v = Vocab.build(Counter("hello world hello".split()))
    ids = v.encode(["hello", "mars", "world"])
    assert ids[1] == UNK_ID
    assert v.decode([GO_ID] + ids + [EOS_ID, 7, PAD_ID]) == ["hello", "<unk>", "world"]
    v.save(tmp_path / "vocab.json")
    assert Vocab.load(tmp_path / "vocab.json").words == v.words


def test_vocab_refuses_a_file_without_the_specials(tmp_path):
    (tmp_path / "v.json").write_text('{"words": ["a", "b"]}')
    with pytest.raises(ErgoError, match="special tokens"):
        Vocab.load(tmp_path / "v.json")
