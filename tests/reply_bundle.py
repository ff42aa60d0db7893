"""A trained tiny bundle and a Chatbot on it, shared by the reply tests.

A copy of conftest's `tiny_bundle` (training wrote its retrieval index), so that reports the tests write
into it leave the web tests' bundle alone. Loading the Chatbot once also keeps its compiled searches.
"""
from __future__ import annotations

import shutil
from pathlib import Path

_cache: dict = {}


def reply_bundle(tiny_bundle: Path, tmp_path_factory) -> tuple[Path, object]:
    """(a copy of the tiny bundle, with its retrieval index, and the PreparedData it was trained on)."""
    if "bundle" not in _cache:
        from ergo.bundle import Bundle
        from ergo.dataset import PreparedData

        bundle = tmp_path_factory.mktemp("reply-bundle") / "bundle"
        shutil.copytree(tiny_bundle, bundle)
        _cache["bundle"] = (bundle, PreparedData.open(Path(Bundle.load(bundle).card["data_dir"])))
    return _cache["bundle"]


def shared_bot(bundle: Path):
    """One Chatbot per bundle for the whole session: its searches are traced once."""
    from ergo.chatbot import Chatbot
    if bundle not in _cache:
        _cache[bundle] = Chatbot.load(bundle)
    return _cache[bundle]
