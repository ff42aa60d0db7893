"""One catalogue for each set of choices a user names: main.py's options, the reply settings (and through them
the web page's settings panel, /api/settings and the web's checks), the model and the evaluation read them
here, so a choice is added once and described once. Named corpora live with their readers (ergo/corpora:
NAMED, READERS, download.SOURCES), presets with their settings (ergo/config.py: PRESETS)."""
from __future__ import annotations

MODES = {"generate": "the decoder's replies", "retrieve": "replies from the training corpus", "hybrid": "both"}
DECODERS = {"greedy": "the likeliest word at each step", "beam": "the n-best of a beam search, ranked",
            "sample": "replies drawn at random, ranked"}
ATTENTION = {"dot": "the decoder's state against the encoder's outputs",
             "general": "the same through a learned matrix", "additive": "Bahdanau's small network"}
SPLITS = ("valid", "test")  # the held-out splits --evaluate may use
RATED = {"up": "those with an up-vote, each cut before its first down-voted reply",
         "down": "those with a down-vote, whole", "any": "every one kept, whole"}  # --export-conversations


def described(choices: dict) -> str:
    """'a (what a is), b (...) or c (...)': a catalogue in words, for help texts and error messages."""
    *most, last = (f"{name} ({what})" for name, what in choices.items())
    return f"{', '.join(most)} or {last}" if most else last
