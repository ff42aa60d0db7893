"""The evaluation report of a bundle on a split of its data: report.json and report.md in the bundle.

- perplexity of the split (exact softmax, as in training);
- recall@1/2/5 of 10: the true reply against 9 random replies of the same split, ranked by
  log p(reply | context), by its mean per word, by the chatbot's MMI ranking, and with a reply selector
  in the bundle by the selector and by its mix with the MMI ranking (the ranking of retrieve and hybrid);
  `default_ranking` names the one the default mode ranks with;
- for each decoding mode: distinct-1/2 (distinct n-grams over all n-grams of the generated replies,
  Li et al. 2016), BLEU-4 against the references (nltk, smoothing method 1), the generic-reply rate
  (share of replies among the 10 most frequent replies of the training split), average length and
  time per reply; the references' own figures beside them;
- sample replies to a fixed list of prompts, for each mode;
- `best_mode`: the mode the README's rule picks (see `best_mode`);
- for data preprocessed from an Ubuntu v2 corpus, recall@k on its test csv's own 1-in-10 candidates.
Random choices are seeded, so a report is reproducible.
"""
from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Callable

import numpy as np
from nltk.translate.bleu_score import SmoothingFunction, corpus_bleu

from .batching import BatchIterator
from .bundle import Bundle
from .chatbot import SETTINGS, Chatbot
from .dataset import PreparedData
from .decoding import EMPTY_CONTEXT
from .errors import ErgoError
from .files import atomic_write_text
from .model import perplexity
from .ranking import CANDIDATES, RECALL_AT, choose_weight, combine, recall as recall_of, recall_rows
from .ranking import RANKING_FILE, save as save_ranking
from .retrieval import INDEX_FILE, build_index, vocab_digest
from .selector import has_selector, pool_scores, reply_keys
from .text import detokenize, tokenize

PROMPTS = ("hi! how are you?", "what do you do for a living?", "where are you from?", "do you have any pets?",
           "what did you do this weekend?", "i'm so tired today.", "what's your favorite movie?",
           "do you like music?", "tell me something about yourself.", "i just got a new job!")

# name -> settings; every other setting keeps its default (the defaults are marked in the report)
MODES = {
    "greedy": dict(mode="generate", decoder="greedy", mmi=0.0),
    "beam": dict(mode="generate", decoder="beam", mmi=0.0),
    "beam+mmi": dict(mode="generate", decoder="beam"),
    "sample": dict(mode="generate", decoder="sample", mmi=0.0),
    "retrieve": dict(mode="retrieve"),
    "hybrid": dict(mode="hybrid"),
}
SCORE_BATCH = 200


def distinct(replies: list[list[str]], n: int) -> float:
    grams = [tuple(r[i:i + n]) for r in replies for i in range(len(r) - n + 1)]
    return len(set(grams)) / len(grams) if grams else 0.0


def _generation_metrics(replies: list[list[str]], references: list[list[str]] | None, generic: set) -> dict:
    out = {"distinct_1": distinct(replies, 1), "distinct_2": distinct(replies, 2),
           "generic_rate": float(np.mean([tuple(r) in generic for r in replies])) if replies else 0.0,
           "avg_length": float(np.mean([len(r) for r in replies])) if replies else 0.0}
    if references is not None:
        out["bleu"] = corpus_bleu([[ref] for ref in references], replies,
                                  smoothing_function=SmoothingFunction().method1)
    return out


def _score_all(bot: Chatbot, contexts: list, replies: list) -> np.ndarray:
    return np.concatenate([bot.decoder.score(contexts[i:i + SCORE_BATCH], replies[i:i + SCORE_BATCH])
                           for i in range(0, len(replies), SCORE_BATCH)]) if replies else np.zeros(0)


def ranking_scores(bot: Chatbot, split: dict, n: int, rng: np.random.Generator) -> dict:
    """Scores [n, 10] of each ranking (see `candidate_scores`) for n random pairs of the split, the true
    reply first (ergo/ranking.py's recall rows)."""
    pool, rows = recall_rows(split["reply"], n, rng)
    return candidate_scores(bot, [split["context"][i] for i in pool], [split["reply"][i] for i in pool], rows)


def candidate_scores(bot: Chatbot, contexts: list, replies: list, rows: np.ndarray) -> dict:
    """Scores [n, 10] of context a against the replies rows[a], by each ranking: log p(r|c); its mean per
    word; the generator's MMI score, the mean per word minus mmi * the anti-LM's mean (ergo/chatbot.py);
    with a selector in the bundle, the selector's score and its mix with the MMI score by the bundle's weight."""
    given = _score_all(bot, [c for c in contexts for _ in range(rows.shape[1])], [replies[b] for row in rows for b in row])
    given = given.reshape(rows.shape)
    tokens = np.array([len(r) + 1 for r in replies], dtype=np.float64)  # + <eos>
    per_word = given / tokens[rows]
    anti = (_score_all(bot, [EMPTY_CONTEXT] * len(replies), replies) / tokens)[rows]
    mmi = SETTINGS["mmi"][1]
    out = {"log p(r|c)": given, "log p(r|c) per word": per_word, MMI_KEY: per_word - mmi * anti}
    if bot.selector is not None:
        out[SELECTOR_KEY] = pool_scores(bot.selector.model, contexts, replies, rows)
        out[COMBINED_KEY] = combine(out[MMI_KEY], out[SELECTOR_KEY], bot.selector_weight)
    return out


UBUNTU_V2_PAIRS = 2000  # rows of the v2 test csv scored (its 18,920 in full take minutes per ranking)


def ubuntu_v2_recall(bot: Chatbot, corpus: dict, limit: int = UBUNTU_V2_PAIRS) -> dict | None:
    """Recall@1/2/5 of 10 on the Ubuntu v2 test csv's own candidates (Ground Truth Utterance and
    Distractor_0..8), by each ranking, so that the published figures compare directly; None when the
    data was not preprocessed from an Ubuntu v2 corpus with such a file."""
    from .corpora.ubuntu import test_candidates
    path = Path(corpus.get("path", ""))
    test = (path.parent if path.suffix.lower() == ".csv" else path) / "test.csv"  # beside a named csv
    if corpus.get("format") != "ubuntu" or not test.is_file():
        return None
    contexts, replies = [], []
    lowercase, max_len = bot.bundle.data_config.lowercase, bot.bundle.data_config.max_reply_len
    for turns, candidates in test_candidates(test, limit):
        ids = [bot.vocab.encode(tokenize(c, lowercase))[:max_len] for c in candidates]
        if not all(ids) or not any(tokenize(t, lowercase) for t in turns):
            continue
        contexts.append(bot.context(turns))
        replies += ids
    if not contexts:
        return None
    rows = np.arange(len(replies)).reshape(len(contexts), CANDIDATES)
    scores = candidate_scores(bot, contexts, replies, rows)
    return {"file": str(test), "pairs": len(contexts), "recall": {k: recall_of(v) for k, v in scores.items()}}


MMI_KEY = f"MMI: per word - {SETTINGS['mmi'][1]:g} anti-LM"
SELECTOR_KEY = "selector"
COMBINED_KEY = "selector + MMI, the bundle's weight"
TUNE_PAIRS = 300  # validation pairs the selector's weight is chosen on


def tune_ranking(bundle_dir: Path, data: PreparedData, pairs: int = TUNE_PAIRS, log: Callable = print) -> dict | None:
    """Choose the weight of the selector in the ranking of retrieve and hybrid on the validation split,
    and record it in the bundle's ranking.json (ergo/ranking.py)."""
    started = time.perf_counter()
    (Path(bundle_dir) / RANKING_FILE).unlink(missing_ok=True)  # the old weight, of another selector or damaged
    bot = Chatbot(Bundle.load(bundle_dir), xla=False)
    if bot.selector is None:
        raise ErgoError(f"{bundle_dir} has no reply selector: add one with `python main.py --train-selector`")
    valid = data.split("valid")
    if len({tuple(r) for r in valid["reply"]}) < CANDIDATES:
        log(f"ranking: the validation split has fewer than {CANDIDATES} different replies to choose the selector's "
            f"weight on; retrieve and hybrid rank by the selector alone")
        return None
    scores = ranking_scores(bot, valid, pairs, np.random.default_rng(0))
    weight, tried = choose_weight(scores[MMI_KEY], scores[SELECTOR_KEY])
    ranking = save_ranking(bundle_dir, weight, tried, len(scores[MMI_KEY]), SETTINGS["mmi"][1],
                           SETTINGS["length_penalty"][1])
    log(f"ranking: selector weight {weight:g} (validation recall@1 of 10: {tried[weight]['R@1']:.3f}; selector "
        f"alone {tried[1.0]['R@1']:.3f}, generator alone {tried[0.0]['R@1']:.3f}; "
        f"{time.perf_counter() - started:.0f} s)")
    return ranking


def evaluate(bundle_dir: Path, data_dir: Path, split: str = "test", *, rank_pairs: int = 500, prompts=PROMPTS,
             generate_pairs: int = 200, seed: int = 0, log: Callable = print) -> dict:
    """Evaluate the bundle on `split` of the data it was trained on; write report.json and report.md
    into the bundle and return the report. Builds the bundle's retrieval index first if it lacks one."""
    started = time.perf_counter()
    bundle_dir, data = Path(bundle_dir), PreparedData.open(Path(data_dir))
    bundle = Bundle.load(bundle_dir)
    if vocab_digest(data.vocab()) != vocab_digest(bundle.vocab):
        raise ErgoError(f"{data.path} was not the data {bundle_dir} was trained on (the vocabularies differ)")
    if not (bundle_dir / INDEX_FILE).is_file() and not has_selector(bundle_dir):
        log(f"building the retrieval index {bundle_dir / INDEX_FILE}")
        build_index(data, bundle_dir)
    bot = Chatbot(bundle)
    pairs, train = data.split(split), data.split("train")
    if len(pairs["reply"]) < CANDIDATES:
        raise ErgoError(f"the {split} split has {len(pairs['reply'])} pairs; evaluation needs {CANDIDATES} or more")
    rng = np.random.default_rng(seed)
    vocab = bundle.vocab

    log(f"perplexity on {len(pairs['reply']):,} {split} pairs")
    ppl = perplexity(bot.model, BatchIterator(pairs, 64, seed=seed))
    log(f"recall@k of {CANDIDATES} on {min(rank_pairs, len(pairs['reply']))} pairs")
    recall = {name: recall_of(scores) for name, scores in ranking_scores(bot, pairs, rank_pairs, rng).items()}
    ubuntu = ubuntu_v2_recall(bot, data.manifest["corpus"])
    if ubuntu is not None:
        log(f"recall@k of {CANDIDATES} on {ubuntu['pairs']} rows of {ubuntu['file']} (its own candidates)")

    keys, distinct = reply_keys(train["reply"])  # the 10 most common training replies (ties: first seen)
    commonest = [tuple(vocab.decode(distinct[k])) for k in np.argsort(-np.bincount(keys), kind="stable")[:10]]
    generic = set(commonest)
    chosen = rng.choice(len(pairs["reply"]), size=min(generate_pairs, len(pairs["reply"])), replace=False)
    references = [vocab.decode(pairs["reply"][i]) for i in chosen]
    generation = {"reference": _generation_metrics(references, None, generic)}
    samples = {p: {} for p in prompts}
    for name, settings in MODES.items():
        log(f"replies by {name} to {len(chosen)} {split} contexts")
        replies, seconds = [], []
        for n, i in enumerate(chosen):
            reply = bot.respond(pairs["context"][i], **settings, **_seeded(settings, n))
            replies.append(reply.tokens)  # cased as the references are: both come from the vocabulary
            seconds.append(reply.seconds)
        generation[name] = {**_generation_metrics(replies, references, generic),
                            "seconds_p50": float(np.median(seconds))}
        for n, prompt in enumerate(prompts):
            samples[prompt][name] = bot.reply([prompt], **settings, **_seeded(settings, n)).text

    defaults = {k: spec[1] for k, spec in SETTINGS.items()}
    rankings = {name: _ranking_of({**defaults, **s}, bot) for name, s in MODES.items()}
    default = next((name for name, s in MODES.items() if all(defaults[k] == v for k, v in s.items())), None)
    report = {
        "bundle": str(bundle_dir), "data": str(data.path), "split": split, "corpus": data.manifest["corpus"]["name"],
        "pairs": len(pairs["reply"]), "perplexity": ppl, "recall_pairs": min(rank_pairs, len(pairs["reply"])),
        "recall": recall, "ubuntu_v2_test": ubuntu, "generated_pairs": len(chosen), "generation": generation,
        "default": default, "default_ranking": rankings.get(default), "rankings": rankings,
        "best_mode": best_mode(generation, recall, rankings),
        "modes": {name: {**defaults, **s} for name, s in MODES.items()},
        "generic_replies": [detokenize(list(g)) for g in commonest],
        "samples": samples, "seconds": round(time.perf_counter() - started, 1),
    }
    atomic_write_text(bundle_dir / "report.json", json.dumps(report, indent=2, ensure_ascii=False))
    atomic_write_text(bundle_dir / "report.md", markdown(report))
    return report


GENERIC_LIMIT = 0.10  # the default mode's rule: a generic-reply rate at most this


def _ranking_of(settings: dict, bot: Chatbot) -> str:
    """The key of the `recall` entry that ranks a mode's candidates (ergo/chatbot.py's _rank)."""
    if settings["mode"] != "generate" and bot.selector is not None:
        return COMBINED_KEY
    if settings["mmi"] > 0:
        return MMI_KEY
    return "log p(r|c) per word" if settings["length_penalty"] == 1 else "log p(r|c)"


def best_mode(generation: dict, recall: dict, rankings: dict) -> str | None:
    """The rule the default mode is chosen by (README, "Replies"): the highest recall@1 of its ranking
    among the modes whose generic-reply rate is at most GENERIC_LIMIT; ties go to the higher distinct-2."""
    fit = [m for m in rankings if m in generation and generation[m]["generic_rate"] <= GENERIC_LIMIT]
    return max(fit, key=lambda m: (recall[rankings[m]]["R@1"], generation[m]["distinct_2"]), default=None)


def _seeded(settings: dict, n: int) -> dict:
    """A fixed seed per reply for the sample decoder, so the report is reproducible."""
    return {"seed": n} if settings.get("decoder") == "sample" else {}


def headline(report: dict) -> str:
    """The report in a few lines, for the terminal."""
    ranking = report["default_ranking"] or next(iter(report["recall"]))
    gen = report["generation"]
    lines = [f"{report['split']} perplexity {report['perplexity']:.2f}; recall@1/2/5 of 10 "
             + "/".join(f"{v:.3f}" for v in report["recall"][ranking].values()) + f" by {ranking}"]
    for name in MODES:
        if name in gen:
            g = gen[name]
            lines.append(f"  {name:9} distinct-1 {g['distinct_1']:.3f}  distinct-2 {g['distinct_2']:.3f}  "
                         f"BLEU {g['bleu']:.4f}  generic {g['generic_rate']:.1%}  length {g['avg_length']:.1f}"
                         + ("  (default)" if name == report["default"] else ""))
    return "\n".join(lines)


def markdown(report: dict) -> str:
    gen = report["generation"]
    lines = [f"# Evaluation of {report['bundle']}", "",
             f"{report['corpus']} corpus, {report['split']} split ({report['pairs']:,} pairs); "
             f"default mode: **{report['default']}**; the rule's pick (highest recall@1 of its ranking "
             f"among modes with a generic rate of at most {GENERIC_LIMIT:.0%}): **{report['best_mode']}**.", "",
             f"- **perplexity**: {report['perplexity']:.2f}", "",
             f"## Ranking: recall@k of {CANDIDATES} ({report['recall_pairs']} pairs, 9 random distractors each)", "",
             "| scored by | " + " | ".join(f"R@{k}" for k in RECALL_AT) + " |",
             "| --- |" + " --- |" * len(RECALL_AT)]
    lines += [f"| {name}{' (default)' if name == report['default_ranking'] else ''} | "
              + " | ".join(f"{v:.3f}" for v in r.values()) + " |" for name, r in report["recall"].items()]
    ubuntu = report.get("ubuntu_v2_test")
    if ubuntu:
        lines += ["", f"## Ranking on the Ubuntu v2 test csv's own candidates ({ubuntu['pairs']} rows of {ubuntu['file']})",
                  "", "Comparable with the published recall@k of the v2 dataset (if its test.csv was not in the "
                  "preprocessed corpus, whose pairs may then sit in the training split).", "",
                  "| scored by | " + " | ".join(f"R@{k}" for k in RECALL_AT) + " |", "| --- |" + " --- |" * len(RECALL_AT)]
        lines += [f"| {name} | " + " | ".join(f"{v:.3f}" for v in r.values()) + " |" for name, r in ubuntu["recall"].items()]
    lines += ["", f"## Generated replies ({report['generated_pairs']} contexts)", "",
              "| mode | distinct-1 | distinct-2 | BLEU | generic rate | avg length | p50 seconds |",
              "| --- | --- | --- | --- | --- | --- | --- |"]
    for name, g in gen.items():
        bleu = f"{g['bleu']:.4f}" if "bleu" in g else "-"
        secs = f"{g['seconds_p50']:.3f}" if "seconds_p50" in g else "-"
        mark = " (default)" if name == report["default"] else ""
        lines.append(f"| {name}{mark} | {g['distinct_1']:.3f} | {g['distinct_2']:.3f} | {bleu} | "
                     f"{g['generic_rate']:.1%} | {g['avg_length']:.1f} | {secs} |")
    lines += ["", "Generic replies (the 10 most frequent in training): "
              + ", ".join(f'"{g}"' for g in report["generic_replies"]), "", "## Sample replies", ""]
    for prompt, by_mode in report["samples"].items():
        lines += [f"**{prompt}**", ""] + [f"- {name}: {text}" for name, text in by_mode.items()] + [""]
    lines += ["## Settings of each mode", "", "```json", json.dumps(report["modes"], indent=1), "```"]
    return "\n".join(lines) + "\n"

