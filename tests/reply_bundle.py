"""A trained tiny bundle with a retrieval index, and a Chatbot on it, shared by the reply tests.

Built once per test session from conftest's `tiny_bundle` (copied, so the index added here does not
change the bundle the web tests use); the data folder is preprocessed again from the same corpus and
settings, which gives the same vocabulary. Loading the Chatbot once also keeps its compiled searches.
"""
from __future__ import annotations

import shutil
from pathlib import Path

_cache: dict = {}


def reply_bundle(tiny_bundle: Path, tmp_path_factory) -> tuple[Path, object]:
    """(bundle folder with retrieval.npz, PreparedData it was trained on)."""
    if "bundle" not in _cache:
        from ergo import corpora
        from ergo.config import PRESETS
        from ergo.dataset import preprocess
        from ergo.retrieval import build_index
        from fixtures import synthetic_conversations, write_text_corpus

        tmp = tmp_path_factory.mktemp("reply-bundle")
        corpus = corpora.resolve(str(write_text_corpus(tmp / "talk.txt", synthetic_conversations(150))))
        data, _ = preprocess(corpus, PRESETS["tiny"].data, tmp / "data", progress=False)
        bundle = tmp / "bundle"
        shutil.copytree(tiny_bundle, bundle)
        build_index(data, bundle)
        _cache["bundle"] = (bundle, data)
    return _cache["bundle"]


def shared_bot(bundle: Path):
    """One Chatbot per bundle for the whole session: its searches are traced once."""
    from ergo.chatbot import Chatbot
    if bundle not in _cache:
        _cache[bundle] = Chatbot.load(bundle)
    return _cache[bundle]
