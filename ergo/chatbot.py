"""Chatbot: a trained bundle that replies to a conversation. Every front end (terminal, web,
evaluation) goes through `Chatbot.reply(history, **settings)`, so they all answer alike.

A reply is chosen among candidates: the n-best of a search (`mode` generate), replies of the nearest
training contexts (retrieve), or both (hybrid). Candidates are ranked by log p(reply | context) over
a length penalty (with the default 1: the mean per word), minus `mmi` times the reply's mean log p
per word given an empty context: the MMI-antiLM score of Li et al. 2016, per word, which demotes
replies that fit any context, such as "i don't know". With both terms per word the penalty favours
neither short nor long replies; at mmi 1 the score is the pointwise mutual information of context
and reply per word, which ranked true replies best in evaluation (recall@1, see ergo/evaluation.py).
The best candidate the safety filter lets through is shown.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

import numpy as np

from .bundle import Bundle
from .dataset import context_window
from .errors import ErgoError
from .retrieval import RetrievalIndex
from .safety import FALLBACK_REPLY, SafetyFilter
from .text import detokenize, tokenize

if TYPE_CHECKING:
    from .decoding import Candidate
# ergo.decoding (and so keras) loads with a Chatbot's model, not at import: the web app imports
# SETTINGS and check_settings in its master process, before it forks the workers.

MODES = ("generate", "retrieve", "hybrid")
DECODERS = ("greedy", "beam", "sample")


@dataclass
class Reply:
    text: str                 # what to show
    tokens: list[str]         # the reply's tokens, as the model produced them
    score: float              # mean log-probability per token under the model
    decoder: str              # which decoder chose it: greedy, beam, sample or retrieval; +mmi if reranked
    seconds: float            # time taken to reply
    settings: dict = field(default_factory=dict)  # the settings in force


# name -> (type, default, check, what a valid value is). The default mode is the one that evaluated
# best on the default corpus (highest distinct-n, lowest generic-reply rate: `main.py --evaluate`).
SETTINGS = {
    "mode": (str, "retrieve", lambda v: v in MODES,
             "generate (the decoder's replies), retrieve (replies from the training corpus) or hybrid (both)"),
    "decoder": (str, "beam", lambda v: v in DECODERS, "greedy, beam or sample"),
    "beam_size": (int, 5, lambda v: 1 <= v <= 16, "an integer from 1 to 16"),
    "length_penalty": (float, 1.0, lambda v: 0.0 <= v <= 2.0,
                       "from 0 (rank by total log-probability: short replies win) to 2; 1 ranks by the "
                       "mean log-probability per word"),
    "mmi": (float, 1.0, lambda v: 0.0 <= v <= 1.0,
            "weight of the anti-language-model penalty from 0 (off) to 1: higher avoids generic replies"),
    "max_len": (int, 20, lambda v: 1 <= v <= 100, "an integer from 1 to 100"),
    "min_len": (int, 1, lambda v: 0 <= v <= 100, "an integer from 0 to 100, at most max_len"),
    "no_repeat_ngram": (int, 3, lambda v: 0 <= v <= 6, "0 (off) or n from 1 to 6: no n-gram twice in a reply"),
    "block_context_ngram": (int, 4, lambda v: 0 <= v <= 6,
                            "0 (off) or n from 1 to 6: no n-gram of the conversation repeated in the reply"),
    "temperature": (float, 0.8, lambda v: 0.05 <= v <= 5.0, "sampling temperature from 0.05 to 5"),
    "top_k": (int, 40, lambda v: 0 <= v <= 1000, "sample among the k likeliest words: 0 (all) to 1000"),
    "top_p": (float, 0.9, lambda v: 0.0 < v <= 1.0, "sample among the likeliest words holding this share "
                                                     "of probability, above 0 and up to 1"),
    "samples": (int, 5, lambda v: 1 <= v <= 32, "replies drawn by the sample decoder, then ranked: 1 to 32"),
    "seed": (int, -1, lambda v: v >= -1, "-1 for a new draw every reply, or a number to repeat a draw"),
    "candidates": (int, 10, lambda v: 1 <= v <= 100, "replies retrieved from the corpus: 1 to 100"),
}


def check_settings(settings: dict) -> dict:
    """The full settings: defaults plus the given ones, each checked; a bad one is a clear ErgoError."""
    out = {name: spec[1] for name, spec in SETTINGS.items()}
    for name, value in settings.items():
        if name not in SETTINGS:
            raise ErgoError(f"unknown setting {name!r}; known: {', '.join(SETTINGS)}")
        kind, _, ok, valid = SETTINGS[name]
        if isinstance(value, bool) or not isinstance(value, kind) and not (kind is float and isinstance(value, int)):
            raise ErgoError(f"setting {name!r} must be {valid}, not {value!r}")
        if not ok(value):
            raise ErgoError(f"setting {name!r} must be {valid}, not {value!r}")
        out[name] = float(value) if kind is float else value
    if out["min_len"] > out["max_len"]:
        raise ErgoError(f"setting 'min_len' ({out['min_len']}) must be at most max_len ({out['max_len']})")
    return out


@dataclass
class Ranked:
    candidate: Candidate
    source: str      # greedy, beam, sample or retrieval
    rank: float      # the ranking score (higher is better)


class Chatbot:
    def __init__(self, bundle: Bundle, blocklist: Path | None = None, shortlist: int | None = None,
                 xla: bool = True):
        """`blocklist`: the safety filter's file (default: the bundle's blocklist.txt, else ergo's own);
        `shortlist` and `xla`: see `Decoder` and `row_products` (default: shortlist large vocabularies
        only; XLA on)."""
        from .decoding import Decoder
        self.bundle = bundle
        self.vocab = bundle.vocab
        self.model = bundle.build_model()
        own = bundle.path / "blocklist.txt"
        self.safety = SafetyFilter.load(blocklist if blocklist is not None else own if own.is_file() else None)
        self.decoder = Decoder(self.model, banned=self.safety.banned_ids(self.vocab), shortlist=shortlist, xla=xla)
        self.index = RetrievalIndex.load(bundle.path, self.vocab, xla=xla)
        self._rng = np.random.default_rng()

    @classmethod
    def load(cls, path: Path, blocklist: Path | None = None, shortlist: int | None = None,
             xla: bool = True) -> "Chatbot":
        return cls(Bundle.load(path), blocklist, shortlist, xla)

    @property
    def name(self) -> str:
        return self.bundle.path.resolve().parent.name if self.bundle.path.name == "best" else self.bundle.path.name

    def context(self, history: Sequence[str]) -> np.ndarray:
        """The context window of the last K turns that have words, as preprocessing builds it (it skips
        turns without tokens before it windows); only as many turns as that are tokenized."""
        cfg = self.bundle.data_config
        turns: list[list[int]] = []
        for text in reversed(history):
            if len(turns) == cfg.context_turns:
                break
            if ids := self.vocab.encode(tokenize(str(text), cfg.lowercase)):
                turns.append(ids)
        return context_window(turns[::-1], cfg)

    def reply(self, history: Sequence[str], **settings) -> Reply:
        """A reply to the last turn of `history` (the conversation so far, oldest first)."""
        started = time.perf_counter()
        settings = check_settings(settings)
        if not history or not tokenize(str(history[-1]), self.bundle.data_config.lowercase):
            raise ErgoError("nothing to reply to: the last turn has no words")
        return self.respond(self.context(history), started=started, **settings)

    def respond(self, context: np.ndarray, started: float | None = None, **settings) -> Reply:
        """A reply to a context of word ids (as `context` builds it); evaluation uses this directly."""
        started = time.perf_counter() if started is None else started
        settings = check_settings(settings)
        shown = self._first_safe(self.candidates(context, settings))
        ranked_by = settings
        if shown is None:  # every candidate blocked: look further down a wide beam before giving up
            ranked_by = dict(settings, beam_size=16, mmi=0.0)
            shown = self._first_safe(self._rank(
                self._generate(context, ranked_by, "beam", self.decoder.shortlist(context)), ranked_by))
        if shown is None:
            tokens = tokenize(FALLBACK_REPLY, lowercase=False)
            return Reply(FALLBACK_REPLY, tokens, 0.0, "fallback", time.perf_counter() - started, settings)
        best, tokens, text = shown
        label = best.source + ("+mmi" if ranked_by["mmi"] > 0 else "")
        return Reply(text, tokens, best.candidate.logp / max(best.candidate.n_tokens, 1), label,
                     time.perf_counter() - started, settings)

    def candidates(self, context: np.ndarray, settings: dict) -> list[Ranked]:
        """Every candidate for the settings' mode, best first. Retrieval goes first: the retrieved
        replies are scored by the same compiled call as the search (the context is encoded once),
        and a shortlist (for a large vocabulary) holds their words too, so all compete on one scale.
        When retrieval finds nothing (no index in the bundle, a context of unknown words, or every reply
        unusable), the retrieve mode answers by generation."""
        mode, anti = settings["mode"], settings["mmi"] > 0
        retrieved = self._retrieve(context, settings) if mode != "generate" and self.index is not None else []
        shortlist = self.decoder.shortlist(context, *(c.ids for c in retrieved))
        if mode != "retrieve" or not retrieved:
            found = self._generate(context, settings, settings["decoder"], shortlist, anti, retrieved)
        else:
            found = [(c, "retrieval") for c in self.decoder.rescore(context, retrieved, shortlist=shortlist,
                                                                   anti_lm=anti)]
        return self._rank(found, settings)

    # -- candidates ------------------------------------------------------------------------------

    def _generate(self, context, s: dict, decoder: str, shortlist, anti: bool = False,
                  retrieved: Sequence[Candidate] = ()) -> list[tuple[Candidate, str]]:
        """The decoder's candidates, then the retrieved ones scored by the same call."""
        common = dict(max_len=s["max_len"], min_len=s["min_len"], no_repeat_ngram=s["no_repeat_ngram"],
                      block_context_ngram=s["block_context_ngram"], shortlist=shortlist, anti_lm=anti,
                      also=retrieved)
        if decoder == "greedy":
            found = self.decoder.greedy(context, **common)
        elif decoder == "beam":
            found = self.decoder.beam(context, beam_size=s["beam_size"], length_penalty=s["length_penalty"],
                                      **common)
        else:
            seed = int(self._rng.integers(2**31)) if s["seed"] < 0 else s["seed"]
            found = self.decoder.sample(context, samples=s["samples"], temperature=s["temperature"],
                                        top_k=s["top_k"], top_p=s["top_p"], seed=seed, **common)
        n = len(found) - len(retrieved)
        return [(c, decoder if i < n else "retrieval") for i, c in enumerate(found)]

    def _retrieve(self, context, s: dict) -> list[Candidate]:
        """The nearest contexts' replies that the decoder could have produced (none with a banned
        word or <unk>, none shorter than min_len; cut to max_len), not yet scored."""
        from .decoding import Candidate
        banned = set(self.decoder.banned.tolist())
        found = [ids for ids, _ in self.index.search(context, s["candidates"])
                 if len(ids) >= s["min_len"] and not banned.intersection(ids)]
        return [Candidate(ids[:s["max_len"]], 0.0, len(ids) <= s["max_len"]) for ids in found]

    def _rank(self, found: list[tuple[Candidate, str]], s: dict) -> list[Ranked]:
        """Best first by log p(r|c) / length_penalty - mmi * log p(r|empty) per word; the sample
        decoder's draws and the greedy reply are ranked the same way, so all compete on one scale."""
        from .decoding import length_penalty
        ranked = [Ranked(c, source, c.logp / length_penalty(c.n_tokens, s["length_penalty"])
                         - s["mmi"] * c.anti / max(c.n_tokens, 1)) for c, source in found]
        return sorted(ranked, key=lambda r: -r.rank)

    def _first_safe(self, ranked: list[Ranked]):
        """(candidate, tokens, text) of the best candidate the safety filter lets through, or None."""
        for r in ranked:
            tokens = self.vocab.decode(r.candidate.ids)
            text = detokenize(tokens)
            if tokens and not self.safety.blocks(tokens, text):
                return r, tokens, text
        return None
