"""Chatbot: a trained bundle that replies to a conversation. Every front end (terminal, web,
evaluation) goes through `Chatbot.reply(history, **settings)`, so they all answer alike.

A reply is chosen among candidates: the n-best of a search (`mode` generate), training replies
(retrieve), or both (hybrid). Retrieval takes the training replies nearest the context by the bundle's
reply selector (ergo/selector.py), or, in a bundle without one, the replies of the nearest training
contexts (ergo/retrieval.py).

The generator's score of a candidate is log p(reply | context) over a length penalty (with the
default 1: the mean per word), minus `mmi` times the reply's mean log p per word given an empty
context: the MMI-antiLM score of Li et al. 2016, per word, which demotes replies that fit any context,
such as "i don't know". With both terms per word the penalty favours neither short nor long replies.
The generate mode ranks by it alone; retrieve and hybrid, with a selector, by its mix with the
selector's score that ranked true replies best on the validation split (ergo/ranking.py).

No candidate repeats a turn of the conversation (the user's last words, the bot's own earlier replies),
and retrieved replies obey the n-gram rules that generation does. The best candidate the safety
filter lets through is shown.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Iterator, Sequence

import numpy as np

from .bundle import Bundle
from .choices import DECODERS, MODES, described
from .config import env_flag
from .dataset import context_window
from .errors import ErgoError
from .ranking import combine, selector_weight
from .retrieval import RetrievalIndex
from .safety import FALLBACK_REPLY, SafetyFilter
from .text import detokenize, tokenize
from .vocab import PAD_ID, SEP_ID

if TYPE_CHECKING:
    from .decoding import Candidate
# ergo.decoding and ergo.selector (and so keras) load with a Chatbot's model, not at import: the web
# app imports SETTINGS and check_settings in its master process, before it forks the workers.

AVOID_TURNS = 10  # turns of the conversation a reply may not repeat word for word


@dataclass
class Reply:
    text: str                 # what to show
    tokens: list[str]         # the reply's tokens, as the model produced them
    score: float              # mean log-probability per token under the model
    decoder: str              # which decoder chose it: greedy, beam, sample or retrieval; +mmi if reranked
    seconds: float            # time taken to reply
    settings: dict = field(default_factory=dict)  # the settings in force


# What a web client may ask (a Chatbot made with web=True): each setting that shapes a compiled search takes
# one of a few values, and the widest searches stop sooner, so a stranger can neither have a worker trace
# search after search (a second each, holding the model) nor ask for the costliest replies.
WEB_CHOICES = {"beam_size": (3, 5, 10), "samples": (1, 5, 10), "max_len": (10, 20, 40), "top_k": (0, 10, 40, 100)}
WEB_STEPS = 200  # on the web, the decoder's width (beam_size or samples) x max_len is at most this
# Compiled searches a web worker keeps besides the default settings' (pinned at its start; decoding.SEARCHES
# elsewhere): 40 distinct settings grew two workers by 35 MB in all with 1, 88 MB with 2 (docs/RELIABILITY.md).
WEB_SEARCHES = 1


def _on_the_web(name: str) -> str:
    *most, last = map(str, WEB_CHOICES[name])
    return f" (web clients: {', '.join(most)} or {last})"


# name -> (type, default, check, what a valid value is). The default mode is the one that evaluated
# best on the default corpus (highest distinct-n, lowest generic-reply rate: `main.py --evaluate`).
SETTINGS = {
    "mode": (str, "retrieve", lambda v: v in MODES, described(MODES)),
    "decoder": (str, "beam", lambda v: v in DECODERS, described(DECODERS)),
    "beam_size": (int, 5, lambda v: 1 <= v <= 16, "an integer from 1 to 16" + _on_the_web("beam_size")),
    "length_penalty": (float, 1.0, lambda v: 0.0 <= v <= 2.0,
                       "from 0 (rank by total log-probability: short replies win) to 2; 1 ranks by the "
                       "mean log-probability per word"),
    "mmi": (float, 1.0, lambda v: 0.0 <= v <= 1.0,
            "weight of the anti-language-model penalty from 0 (off) to 1: higher avoids generic replies"),
    "max_len": (int, 20, lambda v: 1 <= v <= 100, "an integer from 1 to 100" + _on_the_web("max_len")),
    "min_len": (int, 1, lambda v: 0 <= v <= 100, "an integer from 0 to 100, at most max_len"),
    "no_repeat_ngram": (int, 3, lambda v: 0 <= v <= 6, "0 (off) or n from 1 to 6: no n-gram twice in a reply"),
    "block_context_ngram": (int, 4, lambda v: 0 <= v <= 6,
                            "0 (off) or n from 1 to 6: no n-gram of the conversation repeated in the reply"),
    "temperature": (float, 0.8, lambda v: 0.05 <= v <= 5.0, "sampling temperature from 0.05 to 5"),
    "top_k": (int, 40, lambda v: 0 <= v <= 1000,
              "sample among the k likeliest words: 0 (all) to 1000" + _on_the_web("top_k")),
    "top_p": (float, 0.9, lambda v: 0.0 < v <= 1.0, "sample among the likeliest words holding this share "
                                                     "of probability, above 0 and up to 1"),
    "samples": (int, 5, lambda v: 1 <= v <= 32,
                "replies drawn by the sample decoder, then ranked: 1 to 32" + _on_the_web("samples")),
    "seed": (int, -1, lambda v: v >= -1, "-1 for a new draw every reply, or a number to repeat a draw"),
    "candidates": (int, 10, lambda v: 1 <= v <= 100, "replies retrieved from the corpus: 1 to 100"),
}


def choices_of(name: str) -> list | None:
    """The values a web client may give setting `name`, where they are few (a catalogue's, or WEB_CHOICES)."""
    if name in TEXT_CHOICES:
        return list(TEXT_CHOICES[name])
    return list(WEB_CHOICES[name]) if name in WEB_CHOICES else None


def streams(settings: dict) -> bool:
    """Whether a reply with these (checked) settings is drawn word by word (Chatbot.reply_stream)."""
    return settings["mode"] == "generate" and (settings["decoder"] == "greedy" or
                                               settings["decoder"] == "sample" and settings["samples"] == 1)


TEXT_CHOICES = {"mode": MODES, "decoder": DECODERS}  # the text settings and their catalogues (ergo/choices.py)


def check_settings(settings: dict, web: bool = False) -> dict:
    """The full settings: defaults plus the given ones, each checked; a bad one is a clear ErgoError.
    `web`: also within what a web client may ask (WEB_CHOICES, WEB_STEPS)."""
    out = {name: spec[1] for name, spec in SETTINGS.items()}
    for name, value in settings.items():
        if name not in SETTINGS:
            raise ErgoError(f"unknown setting {name!r}; known: {', '.join(SETTINGS)}")
        kind, _, ok, valid = SETTINGS[name]
        if kind is int and isinstance(value, float) and value.is_integer():
            value = int(value)  # JSON has one kind of number: 5.0 is the integer 5
        if isinstance(value, bool) or not isinstance(value, kind) and not (kind is float and isinstance(value, int)):
            raise ErgoError(f"setting {name!r} must be {valid}, not {value!r}")
        if not ok(value):
            raise ErgoError(f"setting {name!r} must be {valid}, not {value!r}")
        out[name] = float(value) if kind is float else value
    if out["min_len"] > out["max_len"]:
        raise ErgoError(f"setting 'min_len' ({out['min_len']}) must be at most max_len ({out['max_len']})")
    if web:
        for name, allowed in WEB_CHOICES.items():
            if out[name] not in allowed:
                raise ErgoError(f"setting {name!r} must be one of {', '.join(map(str, allowed))} for web clients, "
                                f"not {out[name]!r}")
        width = {"beam": "beam_size", "sample": "samples"}.get(out["decoder"])
        if width and out[width] * out["max_len"] > WEB_STEPS:
            raise ErgoError(f"{width} {out[width]} with max_len {out['max_len']} is more than web clients may ask: "
                            f"{width} x max_len must be at most {WEB_STEPS}")
    return out


@dataclass
class Ranked:
    candidate: Candidate
    source: str      # greedy, beam, sample or retrieval
    rank: float      # the ranking score (higher is better)
    selector: float | None = None  # the selector's score, where it ranked


class Chatbot:
    def __init__(self, bundle: Bundle, blocklist: Path | None = None, shortlist: int | None = None,
                 xla: bool | None = None, web: bool = False):
        """`blocklist`: the safety filter's file (default: the bundle's blocklist.txt, else ergo's own);
        `shortlist` and `xla`: see `Decoder` and `row_products` (default: shortlist large vocabularies
        only; XLA as ERGO_XLA says, on where it is not set); `web`: replies take only the settings a web
        client may ask (check_settings), and the decoder keeps WEB_SEARCHES compiled searches."""
        from .decoding import SEARCHES, Decoder
        xla = env_flag("ERGO_XLA", True) if xla is None else xla
        self.bundle = bundle
        self.web = web
        self.vocab = bundle.vocab
        self.model = bundle.build_model()
        own = bundle.path / "blocklist.txt"
        self.safety = SafetyFilter.load(blocklist if blocklist is not None else own if own.is_file() else None)
        self.decoder = Decoder(self.model, banned=self.safety.banned_ids(self.vocab), shortlist=shortlist, xla=xla,
                               searches=WEB_SEARCHES if web else SEARCHES)
        from .selector import Selector
        self.selector = Selector.load(bundle.path, self.vocab, xla=xla)
        self.selector_weight = selector_weight(bundle.path) if self.selector is not None else 0.0
        self.index = RetrievalIndex.load(bundle.path, self.vocab, xla=xla) if self.selector is None else None
        self._rng = np.random.default_rng()

    @classmethod
    def load(cls, path: Path, blocklist: Path | None = None, shortlist: int | None = None,
             xla: bool | None = None, web: bool = False) -> "Chatbot":
        return cls(Bundle.load(path), blocklist, shortlist, xla, web)

    @property
    def name(self) -> str:
        return self.bundle.name

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
        settings, avoid = self._prepared(history, settings)
        return self.respond(self.context(history), started=started, avoid=avoid, **settings)

    def _prepared(self, history: Sequence[str], settings: dict) -> tuple[dict, list]:
        """(the checked settings, the last turns as ids, which a reply may not repeat); an ErgoError when
        the last turn has nothing to reply to."""
        settings = check_settings(settings, self.web)
        lowercase = self.bundle.data_config.lowercase
        if not history or not tokenize(str(history[-1]), lowercase):
            raise ErgoError("nothing to reply to: the last turn has no words")
        return settings, [self.vocab.encode(tokenize(str(t), lowercase)) for t in history[-AVOID_TURNS:]]

    def reply_stream(self, history: Sequence[str], **settings) -> Iterator[str | Reply]:
        """`reply`, word by word where the reply is drawn word by word: the generate mode with the greedy
        decoder, or with the sample decoder and one sample. The iterator yields pieces of text to append
        as they come, then the Reply, the same `reply` gives. Its text is what to show at the end: the
        safety filter's phrases and the rule against repeating a turn are checked once the reply is
        whole, and may replace the streamed words. Other settings yield the Reply's text as one piece.
        A mistake in the settings or the history is an ErgoError here, before anything is yielded."""
        started = time.perf_counter()
        s, avoid = self._prepared(history, settings)
        context = self.context(history)
        if not streams(s):
            return self._whole(context, s, avoid, started)
        return self._streamed(context, s, avoid, started)

    def _whole(self, context, s: dict, avoid, started: float) -> Iterator[str | Reply]:
        reply = self.respond(context, started=started, avoid=avoid, **s)
        yield reply.text
        yield reply

    def _streamed(self, context, s: dict, avoid, started: float) -> Iterator[str | Reply]:
        sampling = None
        if s["decoder"] == "sample":
            seed = int(self._rng.integers(2**31)) if s["seed"] < 0 else s["seed"]
            sampling = dict(temperature=s["temperature"], top_k=s["top_k"], top_p=s["top_p"], seed=seed)
        tokens, shown = [], ""
        for item in self.decoder.stream(context, max_len=s["max_len"], min_len=s["min_len"],
                                        no_repeat_ngram=s["no_repeat_ngram"],
                                        block_context_ngram=s["block_context_ngram"],
                                        shortlist=self.decoder.shortlist.of(context), sampling=sampling):
            if not isinstance(item, int):
                found = [(item, s["decoder"])]
                break
            tokens += self.vocab.decode([item])
            text = detokenize(tokens)  # a later word may join an earlier one ("do" "n't"): send what is new
            piece = text[len(shown):] if text.startswith(shown) else " " + detokenize(tokens[-1:])
            shown += piece
            yield piece
        avoid = _avoided(avoid, context)
        yield self._shown(self._rank(self._fresh(found, avoid), s), context, s, avoid, started)

    def respond(self, context: np.ndarray, started: float | None = None, avoid: Sequence[Sequence[int]] = (),
                **settings) -> Reply:
        """A reply to a context of word ids (as `context` builds it); evaluation uses this directly.
        `avoid`: turns (word ids) the reply may not repeat, besides those of the context."""
        started = time.perf_counter() if started is None else started
        settings = check_settings(settings, self.web)
        avoid = _avoided(avoid, context)
        return self._shown(self.candidates(context, settings, avoid), context, settings, avoid, started)

    def _shown(self, ranked: list[Ranked], context, settings: dict, avoid: set, started: float) -> Reply:
        """The Reply of the best candidate the safety filter lets through; with none, of a wide beam's."""
        shown = self._first_safe(ranked)
        ranked_by = settings
        if shown is None:  # every candidate blocked: look further down a wide beam before giving up
            ranked_by = dict(settings, beam_size=16, mmi=0.0)
            shown = self._first_safe(self._rank(
                self._fresh(self._generate(context, ranked_by, "beam", self.decoder.shortlist.of(context)), avoid),
                ranked_by))
        if shown is None:
            tokens = tokenize(FALLBACK_REPLY, lowercase=False)
            return Reply(FALLBACK_REPLY, tokens, 0.0, "fallback", time.perf_counter() - started, settings)
        best, tokens, text = shown
        label = best.source + ("+mmi" if ranked_by["mmi"] > 0 else "") + ("+selector" if best.selector is not None else "")
        return Reply(text, tokens, best.candidate.logp / max(best.candidate.n_tokens, 1), label,
                     time.perf_counter() - started, settings)

    def candidates(self, context: np.ndarray, settings: dict, avoid: set = frozenset()) -> list[Ranked]:
        """Every candidate for the settings' mode, best first, none of them a turn in `avoid`. Retrieval
        goes first: the retrieved replies are scored by the same compiled call as the search (the context
        is encoded once), and a shortlist (for a large vocabulary) holds their words too, so all compete
        on one scale. When retrieval finds nothing (no index in the bundle, a context of unknown words, or
        every reply unusable), the retrieve mode answers by generation."""
        mode, anti = settings["mode"], settings["mmi"] > 0
        selector = self.selector if mode != "generate" else None
        vector = selector.context_vector(context) if selector is not None else None
        retrieved, known = self._retrieve(context, settings, avoid, vector) if mode != "generate" else ([], {})
        shortlist = self.decoder.shortlist.of(context, *(c.ids for c in retrieved))
        if mode != "retrieve" or not retrieved:
            found = self._generate(context, settings, settings["decoder"], shortlist, anti, retrieved)
        else:
            found = [(c, "retrieval") for c in self.decoder.rescore(context, retrieved, shortlist=shortlist,
                                                                   anti_lm=anti)]
        found = self._fresh(found, avoid)
        return self._rank(found, settings, self._selector_scores(context, found, vector, known) if selector else None)

    def _selector_scores(self, context, found: list[tuple[Candidate, str]], vector, known: dict) -> np.ndarray:
        """The selector's score of every candidate: those `known` from the index's search as they are, the
        others from its reply tower."""
        new = [c.ids for c, _ in found if tuple(c.ids) not in known]
        known.update(zip(map(tuple, new), self.selector.score(context, new, vector).tolist()))
        return np.array([known[tuple(c.ids)] for c, _ in found])

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

    def _retrieve(self, context, s: dict, avoid: set, vector) -> tuple[list[Candidate], dict]:
        """Up to `candidates` training replies the decoder could have produced (none with a banned word
        or <unk>, none shorter than min_len; cut to max_len) that obey generation's n-gram rules and
        repeat no turn in `avoid`, not yet scored by the decoder: the selector's nearest to the context's
        `vector` (and their selector scores, by ids), or without a selector the replies of the nearest
        contexts."""
        from .decoding import Candidate
        if self.selector is not None:
            found = self.selector.search(vector, RETRIEVE_POOL * s["candidates"])  # room for those refused
        elif self.index is not None:
            found = self.index.search(context, RETRIEVE_POOL * s["candidates"])
        else:
            return [], {}
        banned = set(self.decoder.banned.tolist())
        context_grams = _ngrams(np.asarray(context).tolist(), s["block_context_ngram"])
        kept, scores = [], {}
        for ids, score in found:  # best first: a reply cut to max_len keeps the best score of its cut
            cut = tuple(ids[:s["max_len"]])
            if cut in scores or len(ids) < s["min_len"] or banned.intersection(ids) or cut in avoid \
                    or not _obeys_ngram_rules(cut, s["no_repeat_ngram"], s["block_context_ngram"], context_grams):
                continue
            scores[cut] = score
            kept.append(Candidate(list(cut), 0.0, len(ids) <= s["max_len"]))
        return kept[:s["candidates"]], scores if self.selector is not None else {}

    @staticmethod
    def _fresh(found: list[tuple[Candidate, str]], avoid: set) -> list[tuple[Candidate, str]]:
        """The candidates that repeat no turn in `avoid` word for word."""
        return [(c, source) for c, source in found if tuple(c.ids) not in avoid]

    def _rank(self, found: list[tuple[Candidate, str]], s: dict, selector_scores=None) -> list[Ranked]:
        """Best first by the generator's score, log p(r|c) / length_penalty - mmi * log p(r|empty) per
        word (the sample decoder's draws and the greedy reply are ranked the same way, so all compete on
        one scale); mixed with the selector's scores, when given, by the bundle's weight."""
        from .decoding import length_penalty
        generator = [c.logp / length_penalty(c.n_tokens, s["length_penalty"]) - s["mmi"] * c.anti / max(c.n_tokens, 1)
                     for c, _ in found]
        if selector_scores is None:
            ranked = [Ranked(c, source, g) for (c, source), g in zip(found, generator)]
        else:
            ranks = combine(generator, selector_scores, self.selector_weight)
            ranked = [Ranked(c, source, float(r), float(sel))
                      for (c, source), r, sel in zip(found, ranks, selector_scores)]
        return sorted(ranked, key=lambda r: -r.rank)

    def _first_safe(self, ranked: list[Ranked]):
        """(candidate, tokens, text) of the best candidate the safety filter lets through, or None."""
        for r in ranked:
            tokens = self.vocab.decode(r.candidate.ids)
            text = detokenize(tokens)
            if tokens and not self.safety.blocks(tokens, text):
                return r, tokens, text
        return None


RETRIEVE_POOL = 4  # the selector's nearest replies looked at, per candidate wanted


def _turns(context: np.ndarray) -> list[tuple[int, ...]]:
    """The turns of a context window (word ids between <sep>s)."""
    turns, turn = [], []
    for w in np.asarray(context).tolist():
        if w == SEP_ID:
            turns.append(tuple(turn))
            turn = []
        elif w != PAD_ID:
            turn.append(w)
    return turns + [tuple(turn)]


def _avoided(avoid: Sequence[Sequence[int]], context: np.ndarray) -> set:
    """The turns a reply may not repeat word for word: those given, and the context's."""
    return {tuple(t) for t in (*avoid, *_turns(context)) if t}


def _ngrams(ids: Sequence[int], n: int) -> set:
    return {tuple(ids[i:i + n]) for i in range(len(ids) - n + 1)} if n else set()


def _obeys_ngram_rules(ids: Sequence[int], no_repeat: int, block_context: int, context_grams: set) -> bool:
    """Generation's rules, for a reply found elsewhere: no n-gram twice in it (`no_repeat`), and none
    of the context's n-grams (`block_context`)."""
    if no_repeat and len(_ngrams(ids, no_repeat)) < len(ids) - no_repeat + 1:
        return False
    return not (block_context and _ngrams(ids, block_context) & context_grams)
